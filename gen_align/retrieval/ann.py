"""Two-stage search: a FAISS index over L2-normalised gallery embeddings finds top-K candidates, a rescoring
function re-ranks them.

Index kinds: ``"flat"`` (``IndexFlatIP``, exact) and ``"ivf"`` (``IndexIVFFlat`` with inner product; ``nlist``
k-means cells, ``nprobe`` of them visited per query). An index is saved as a directory holding
``index.faiss`` and ``index.json`` (format version, kind, dim, count, nlist/nprobe, ids, the rows' norms (the index
holds unit rows; re-rankers such as GARE read the original lengths), the sha256 of the gallery as given and of the
index file, which is checked on load).

Rescoring functions take ``(rows, candidates)`` — a (c,) LongTensor of query positions and the (c, K)
LongTensor of candidate gallery positions — and return (c, K) scores (higher = better); see
:func:`cosine_rescorer` (also for an InvGC-processed gallery) and :func:`volume_rescorer` (GRAM, Eq. 12).
Coverage C_K = mean over queries of |exact top-``top`` ∩ ANN top-K| / ``top``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gen_align.checks import choice, integer
from gen_align.errors import ConfigError, EmbeddingError, InputFileError
from gen_align.io import write_bytes_atomic, write_json_atomic
from gen_align.objectives.geometry import safe_sqrt, unit_gram_determinant
from gen_align.tensors import as_embeddings, unit

__all__ = [
    "INDEX_KINDS",
    "AnnIndex",
    "gallery_sha256",
    "exact_search",
    "two_stage_search",
    "coverage",
    "cosine_rescorer",
    "volume_rescorer",
]

INDEX_KINDS = ("flat", "ivf")
FORMAT = "gen-align-ann-index"
VERSION = 1
INDEX_FILE, META_FILE = "index.faiss", "index.json"

Rescore = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _unit_float32(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    z = unit(as_embeddings(x, name), name).detach()
    return np.ascontiguousarray(z.float().cpu().numpy())


def gallery_sha256(gallery: torch.Tensor | np.ndarray) -> str:
    """sha256 of the gallery as given (shape, then the float32 rows in C order): identifies its source."""
    z = as_embeddings(gallery, "gallery").detach().float().cpu().contiguous().numpy()
    digest = hashlib.sha256(f"{z.shape[0]}x{z.shape[1]}:".encode())
    digest.update(z.tobytes())
    return digest.hexdigest()


def _default_nlist(n: int) -> int:
    """≈ 4·√N cells, but at least 39 training points per cell (FAISS' k-means minimum), and ≥ 1."""
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


class AnnIndex:
    """A FAISS inner-product index over unit gallery rows, with ids and provenance metadata."""

    def __init__(self, index: Any, meta: dict[str, Any]) -> None:
        self.index = index
        self.meta = meta

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def ids(self) -> list:
        return self.meta["ids"]

    @classmethod
    def build(
        cls,
        gallery: torch.Tensor | np.ndarray,
        ids: Sequence[str | int] | None = None,
        kind: str = "flat",
        nlist: int | None = None,
        nprobe: int | None = None,
        modality: str | None = None,
    ) -> AnnIndex:
        """Index the L2-normalised rows of ``gallery`` (N, d). ``ids`` default to row numbers. IVF: ``nlist``
        defaults to ≈ 4√N (≥ 39 points per cell), ``nprobe`` to ⌈nlist / 8⌉."""
        import faiss

        choice(kind, "index kind", INDEX_KINDS)
        vectors = _unit_float32(gallery, "gallery")
        n, d = vectors.shape
        if ids is None:
            ids = list(range(n))
        else:
            ids = [i if isinstance(i, str) else int(i) for i in ids]
            if len(ids) != n:
                raise ConfigError(f"ids: got {len(ids)} ids for a gallery of {n} rows; give one id per row.")
        meta: dict[str, Any] = {"format": FORMAT, "version": VERSION, "kind": kind, "metric": "inner_product"}
        meta.update({"normalized": True, "dim": d, "count": n, "modality": modality})
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            nlist = _default_nlist(n) if nlist is None else integer(nlist, "nlist")
            if nlist > n:
                raise ConfigError(f"nlist={nlist} exceeds the {n} gallery rows; IVF needs at least one row per cell.")
            nprobe = max(1, math.ceil(nlist / 8)) if nprobe is None else integer(nprobe, "nprobe")
            if nprobe > nlist:
                raise ConfigError(f"nprobe={nprobe} exceeds nlist={nlist}; visit at most every cell.")
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = nprobe
            meta.update({"nlist": nlist, "nprobe": nprobe})
        index.add(vectors)
        meta["ids"] = ids
        meta["gallery_sha256"] = gallery_sha256(gallery)
        # the rows' lengths, for re-rankers that read unnormalised embeddings (GARE, GraviAlign)
        raw = as_embeddings(gallery, "gallery").detach().double().cpu()
        meta["norms"] = torch.linalg.vector_norm(raw, dim=1).tolist()
        return cls(index, meta)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``index.faiss`` then ``index.json``, each atomically: a readable ``index.json`` means a
        complete index."""
        import faiss

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"{directory} exists and is not a directory; choose another --out.")
        data = faiss.serialize_index(self.index).tobytes()
        write_bytes_atomic(directory / INDEX_FILE, data, what=f"the index file {directory / INDEX_FILE}")
        meta = dict(self.meta, index_file=INDEX_FILE, index_sha256=hashlib.sha256(data).hexdigest())
        write_json_atomic(directory / META_FILE, meta)
        self.meta = meta
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AnnIndex:
        """Read an index saved by :meth:`save`; raise :class:`InputFileError` when files are missing or corrupt."""
        import faiss

        directory = Path(directory)
        hint = "Build it with `gen-align retrieve index --embeddings FILE --modality M --out DIR`."
        meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
        for path in (meta_path, index_path):
            if not path.is_file():
                raise InputFileError(f"index directory {directory}: {path.name} is missing. {hint}")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InputFileError(f"{meta_path} is not readable JSON ({err}). {hint}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise InputFileError(f"{meta_path} is not a gen-align index description. {hint}")
        if meta.get("version") != VERSION:
            raise InputFileError(
                f"{meta_path} has index format version {meta.get('version')}, expected {VERSION}. {hint}"
            )
        data = index_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("index_sha256"):
            raise InputFileError(f"{index_path} does not match the checksum in {meta_path} (corrupted). {hint}")
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as err:
            raise InputFileError(f"{index_path} is not a readable FAISS index ({err}). {hint}") from err
        if index.d != meta.get("dim") or index.ntotal != meta.get("count") or len(meta.get("ids", ())) != index.ntotal:
            raise InputFileError(f"{index_path} and {meta_path} disagree on dim / count / ids. {hint}")
        return cls(index, meta)

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (scores, gallery positions), each (Q, k), by inner product of unit rows (= cosine). IVF may
        find fewer than k items for a query: those slots hold position −1 and score −inf."""
        k = integer(k, "k")
        if k > self.count:
            raise ConfigError(f"k={k} is larger than the gallery ({self.count} items); use k ≤ {self.count}.")
        q = _unit_float32(queries, "queries")
        if q.shape[1] != self.dim:
            raise EmbeddingError(
                f"queries have dimension {q.shape[1]} but the index holds {self.dim}-d vectors; "
                "embed queries and gallery in the same space."
            )
        scores, positions = self.index.search(q, k)
        scores, positions = torch.from_numpy(scores), torch.from_numpy(positions)
        return scores.masked_fill(positions < 0, float("-inf")), positions

    def vectors(self) -> torch.Tensor:
        """The indexed unit gallery rows (N, d), float32, reconstructed from the index."""
        import faiss

        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        return torch.from_numpy(self.index.reconstruct_n(0, self.count))

    def embeddings(self) -> torch.Tensor:
        """The gallery rows at their original lengths (N, d), float32: :meth:`vectors` times the norms recorded
        at build time (equal to the indexed embeddings up to float32 rounding)."""
        norms = self.meta.get("norms")
        if not isinstance(norms, list) or len(norms) != self.count:
            raise InputFileError(
                "this index records no embedding norms (it was built by an older gen-align); rebuild it with "
                "`gen-align retrieve index` to re-rank with a head."
            )
        return self.vectors() * torch.tensor(norms, dtype=torch.float32).unsqueeze(1)

    def ids_of(self, positions: torch.Tensor) -> list[list]:
        """Gallery ids of a (Q, k) position matrix (None where the position is −1)."""
        return [[self.ids[p] if p >= 0 else None for p in row] for row in positions.tolist()]


@torch.no_grad()
def exact_search(
    queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, k: int, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k cosine (scores, positions), chunked over queries (memory chunk_size × N)."""
    k = integer(k, "k")
    integer(chunk_size, "chunk_size")
    q, g = unit(as_embeddings(queries, "queries"), "queries"), unit(as_embeddings(gallery, "gallery"), "gallery")
    if q.shape[1] != g.shape[1]:
        raise EmbeddingError(f"queries have dimension {q.shape[1]}, the gallery {g.shape[1]}.")
    if k > g.shape[0]:
        raise ConfigError(f"k={k} is larger than the gallery ({g.shape[0]} items); use k ≤ {g.shape[0]}.")
    g = g.to(q.dtype)
    parts = [(q[s : s + chunk_size] @ g.mT).topk(k, dim=1) for s in range(0, q.shape[0], chunk_size)]
    return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])


@torch.no_grad()
def two_stage_search(
    index: AnnIndex,
    queries: torch.Tensor | np.ndarray,
    k: int = 10,
    candidates: int = 100,
    rescore: Rescore | None = None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``candidates`` from the index, re-ranked by ``rescore(rows, candidate_positions)`` (default: the
    ANN cosine itself), keep the best k: returns (scores, gallery positions), each (Q, k). Candidates the
    index did not fill (position −1) score −inf and are never passed to ``rescore`` as −1 (position 0 is
    passed and its score discarded)."""
    k, candidates = integer(k, "k"), integer(candidates, "candidates")
    integer(chunk_size, "chunk_size")
    if k > candidates:
        raise ConfigError(f"k={k} exceeds candidates={candidates}; re-ranking keeps at most the candidates.")
    first_scores, first = index.search(queries, candidates)
    if rescore is None:
        return first_scores[:, :k], first[:, :k]
    missing = first < 0
    safe = first.clamp_min(0)
    out_scores, out_positions = [], []
    for start in range(0, safe.shape[0], chunk_size):
        rows = torch.arange(start, min(start + chunk_size, safe.shape[0]))
        block = rescore(rows, safe[rows])
        if tuple(block.shape) != (rows.shape[0], candidates):
            raise ConfigError(
                f"the rescoring function returned shape {tuple(block.shape)}, expected ({rows.shape[0]}, {candidates})."
            )
        block = block.float().masked_fill(missing[rows], float("-inf"))
        top = block.topk(k, dim=1)
        out_scores.append(top.values)
        out_positions.append(first[rows].gather(1, top.indices))
    return torch.cat(out_scores), torch.cat(out_positions)


@torch.no_grad()
def coverage(
    index: AnnIndex,
    queries: torch.Tensor | np.ndarray,
    candidates: int = 100,
    top: int = 10,
    gallery: torch.Tensor | np.ndarray | None = None,
) -> float:
    """C_K: the share of each query's exact top-``top`` cosine neighbours found among the index's top-K
    (K = ``candidates``), averaged over queries. The exact neighbours come from ``gallery`` if given, else
    from the vectors stored in the index."""
    exact_gallery = index.vectors() if gallery is None else gallery
    _, exact = exact_search(queries, exact_gallery, top)
    _, found = index.search(queries, candidates)
    hits = (exact.unsqueeze(2) == found.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / top)


def cosine_rescorer(queries: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray) -> Rescore:
    """Rescore by exact cosine against ``gallery`` (e.g. the output of :func:`~gen_align.retrieval.invgc.invgc`)."""
    q, g = unit(as_embeddings(queries, "queries"), "queries"), unit(as_embeddings(gallery, "gallery"), "gallery")
    if q.shape[1] != g.shape[1]:
        raise EmbeddingError(f"queries have dimension {q.shape[1]}, the gallery {g.shape[1]}.")
    g = g.detach().to(q.dtype)
    q = q.detach()

    def rescore(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cd,ckd->ck", q[rows], g[cand])

    return rescore


def volume_rescorer(
    queries: torch.Tensor | np.ndarray, gallery: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]
) -> Rescore:
    """Rescore by the GRAM score −Vol(q, g¹, …, gᵐ) (Eq. 12) of each (query, candidate tuple) pair, with the
    within-tuple cosines computed once per gallery item."""
    parts = list(gallery.values()) if isinstance(gallery, Mapping) else list(gallery)
    if not parts or isinstance(gallery, torch.Tensor):
        raise EmbeddingError("volume_rescorer: gallery must be a non-empty list (or dict) of (G, d) tensors.")
    q = unit(as_embeddings(queries, "queries"), "queries").detach()
    units = [unit(as_embeddings(p, f"gallery[{i}]"), f"gallery[{i}]").detach().to(q.dtype) for i, p in enumerate(parts)]
    if len({u.shape for u in units}) > 1 or units[0].shape[1] != q.shape[1]:
        raise EmbeddingError(
            f"volume_rescorer: gallery modalities {[tuple(u.shape) for u in units]} must share (G, d) with "
            f"d = the query dimension {q.shape[1]}."
        )
    m = len(units)
    within = {(a, b): (units[a - 1] * units[b - 1]).sum(-1) for a in range(1, m + 1) for b in range(a + 1, m + 1)}

    def rescore(rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        cosines = {(0, a): torch.einsum("cd,ckd->ck", q[rows], u[cand]) for a, u in enumerate(units, start=1)}
        cosines.update({pair: c[cand] for pair, c in within.items()})
        return -safe_sqrt(unit_gram_determinant(cosines, m + 1))

    return rescore
