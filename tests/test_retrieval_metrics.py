"""Retrieval metrics against a brute-force full argsort (ties, several positives, chunked and callable paths),
and the score functions against their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from gen_align.errors import ConfigError, InputDataError
from gen_align.objectives.gram import gram_similarity
from gen_align.objectives.gravi import gravi_score
from gen_align.retrieval.metrics import metrics_table, query_ranks, retrieval_metrics
from gen_align.retrieval.scores import SCORES, row_scorer, score


def reference(sim, positive):
    """Full argsort per row; equal scores put negatives before positives (the pessimistic rule)."""
    sim, positive = np.asarray(sim, dtype=np.float64), np.asarray(positive, dtype=bool)
    ranks, aps = [], []
    for s, p in zip(sim, positive, strict=True):
        order = np.lexsort((p, -s))  # primary: score descending; ties: negatives (False) first
        positions = np.flatnonzero(p[order]) + 1
        ranks.append(positions[0])
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
    ranks, aps = np.array(ranks), np.array(aps)
    return (
        ranks,
        aps,
        {
            "R@1": 100 * np.mean(ranks <= 1),
            "R@5": 100 * np.mean(ranks <= 5),
            "R@10": 100 * np.mean(ranks <= 10),
            "MdR": np.median(ranks),
            "MnR": np.mean(ranks),
            "mAP": 100 * np.mean(aps),
        },
    )


def check(sim, positive, gt, full=None, **kwargs):
    ranks, aps = query_ranks(sim, gt, **kwargs)
    ref_ranks, ref_aps, ref = reference(sim if full is None else full, positive)
    np.testing.assert_array_equal(ranks, ref_ranks)
    np.testing.assert_allclose(aps, ref_aps, rtol=1e-12)
    return ref


def test_diagonal_float_scores_match_full_sort():
    rng = np.random.default_rng(0)
    sim = rng.standard_normal((37, 37)) + 2.0 * np.eye(37)
    ref = check(sim, np.eye(37, dtype=bool), None, chunk_size=8)
    got = retrieval_metrics(torch.from_numpy(sim), chunk_size=8)
    assert got["queries"] == 37
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-12)


def test_ties_and_several_positives_with_all_gt_formats():
    rng = np.random.default_rng(1)
    sim = rng.integers(0, 4, size=(23, 31)).astype(np.float32)  # many ties
    lists = [sorted(rng.choice(31, size=rng.integers(1, 6), replace=False).tolist()) for _ in range(23)]
    positive = np.zeros((23, 31), dtype=bool)
    for i, row in enumerate(lists):
        positive[i, row] = True
    for gt in (positive, torch.from_numpy(positive), lists):
        check(sim, positive, gt, chunk_size=5)


def test_ties_with_one_positive_per_query():
    rng = np.random.default_rng(6)
    sim = rng.integers(0, 3, size=(19, 19)).astype(np.float32)
    check(sim, np.eye(19, dtype=bool), None, chunk_size=4)
    check(sim, np.eye(19, dtype=bool), np.eye(19, dtype=bool), chunk_size=4)  # same answer by the general path


def test_many_positives_use_the_sort_path():
    rng = np.random.default_rng(2)
    sim = rng.integers(0, 6, size=(9, 80)).astype(np.float64)
    positive = rng.random((9, 80)) < 0.4  # ≈ 32 positives per row: more than the counting passes
    positive[:, 0] = True
    check(sim, positive, positive, chunk_size=4)


def test_index_array_and_twenty_captions_per_video():
    rng = np.random.default_rng(3)
    videos, captions = 6, 20
    sim = rng.standard_normal((videos * captions, videos))  # text → video: caption i shows video i // 20
    owner = np.repeat(np.arange(videos), captions)
    positive = owner[:, None] == np.arange(videos)[None, :]
    check(sim, positive, owner, chunk_size=32)
    check(sim.T.copy(), positive.T, [list(range(v * captions, (v + 1) * captions)) for v in range(videos)])


def test_callable_scores_equal_the_matrix_path():
    rng = np.random.default_rng(4)
    q, g = torch.from_numpy(rng.standard_normal((45, 8))), torch.from_numpy(rng.standard_normal((45, 8)))
    fn, count = row_scorer("cosine", q, g)
    full = cosine_similarity(q.numpy(), g.numpy())
    check(fn, np.eye(45, dtype=bool), None, num_queries=count, chunk_size=7, full=full)
    assert retrieval_metrics(fn, num_queries=count, chunk_size=7) == pytest.approx(retrieval_metrics(full))


def test_constant_scores_rank_pessimistically():
    ranks, aps = query_ranks(torch.zeros(4, 10), [[0], [1, 2], [3], [0, 1, 2, 3]])
    assert ranks.tolist() == [10, 9, 10, 7]
    assert aps[0] == pytest.approx(0.1)


def test_integer_scores_are_accepted():
    sim = torch.tensor([[3, 1, 2], [0, 5, 5]])
    assert query_ranks(sim, [0, 2])[0].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("sim", "gt", "kwargs", "message"),
    [
        (torch.zeros(3, 4), None, {}, "square"),
        (torch.zeros(3, 3), torch.zeros(3, 4, dtype=torch.bool), {}, "shape"),
        (
            torch.zeros(3, 3),
            torch.eye(3, dtype=torch.bool).logical_and(torch.tensor([1, 1, 0]).bool()[:, None]),
            {},
            "no correct",
        ),
        (torch.zeros(3, 3), [[0], [7], [1]], {}, "out of range"),
        (torch.zeros(3, 3), [[0], [-1], [1]], {}, "non-negative"),
        (torch.zeros(3, 3), [[0], [1]], {}, "per query"),
        (torch.zeros(3, 3), torch.zeros(3), {}, "dtype"),
        (torch.tensor([[0.0, float("nan")], [1.0, 0.0]]), None, {}, "NaN"),
        (torch.zeros(0, 3), None, {}, "non-empty"),
        (lambda rows: torch.zeros(1, 3), None, {}, "num_queries"),
        (lambda rows: torch.zeros(1, 3), None, {"num_queries": 3}, "returned shape"),
    ],
)
def test_bad_inputs_raise_input_data_error(sim, gt, kwargs, message):
    with pytest.raises(InputDataError, match=message):
        retrieval_metrics(sim, gt, **kwargs)


def test_bad_chunk_size_and_ks():
    with pytest.raises(ConfigError):
        retrieval_metrics(torch.eye(3), chunk_size=0)
    with pytest.raises(ConfigError):
        retrieval_metrics(torch.eye(3), ks=(0,))


def test_metrics_table_formats_rows():
    table = metrics_table({"cosine": {"R@1": 50.0, "R@5": 75.25, "R@10": 100.0, "MdR": 1.5, "MnR": 2.0}})
    assert table.splitlines()[0] == "| method | R@1 | R@5 | R@10 | MdR | MnR |"
    assert table.splitlines()[2] == "| cosine | 50.0 | 75.2 | 100.0 | 1.5 | 2.0 |"


# ---------------------------------------------------------------- score functions


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(5)
    return {m: torch.randn(11, 6, generator=g, dtype=torch.float64) for m in ("text", "audio", "video")}


def test_cosine_and_volume_scores(batch):
    np.testing.assert_allclose(
        score("cosine", batch["text"], batch["audio"]).numpy(), cosine_similarity(batch["text"], batch["audio"])
    )
    expected = gram_similarity(batch["text"], [batch["audio"], batch["video"]])
    torch.testing.assert_close(score("volume", batch["text"], {"a": batch["audio"], "v": batch["video"]}), expected)


def test_centroid_score_is_cosine_to_the_weighted_centroid(batch):
    unit = {m: z / z.norm(dim=1, keepdim=True) for m, z in batch.items()}
    centroid = 0.75 * unit["audio"] + 0.25 * unit["video"]
    expected = cosine_similarity(batch["text"], centroid)
    got = score(
        "centroid", batch["text"], {"audio": batch["audio"], "video": batch["video"]}, weights={"audio": 3, "video": 1}
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10)


def test_gravi_score_matches_objective(batch):
    var_q, var_g = batch["audio"].abs() + 0.1, batch["video"].abs() + 0.1
    expected = gravi_score(batch["text"], var_q, batch["audio"], var_g, temperature=0.1)
    torch.testing.assert_close(
        score("gravi", (batch["text"], var_q), (batch["audio"], var_g), temperature=0.1), expected
    )


@pytest.mark.parametrize("method", SCORES)
def test_row_scorer_blocks_equal_the_full_matrix(batch, method):
    var = batch["video"].abs() + 0.1
    query = (batch["text"], var) if method == "gravi" else batch["text"]
    gallery = {
        "cosine": batch["audio"],
        "volume": [batch["audio"], batch["video"]],
        "centroid": {"audio": batch["audio"], "video": batch["video"]},
        "gravi": (batch["audio"], var),
    }[method]
    fn, count = row_scorer(method, query, gallery)
    assert count == 11
    blocks = torch.cat([fn(slice(s, min(s + 4, 11))) for s in range(0, 11, 4)])
    torch.testing.assert_close(blocks, score(method, query, gallery))


def test_unknown_score_method(batch):
    with pytest.raises(ConfigError, match="score method"):
        score("dot", batch["text"], batch["audio"])
