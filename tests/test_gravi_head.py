"""GraviAlign heads: improvement over cosine on a synthetic gap task, scores and loss vs a per-pair loop,
initialisation, checkpoints and errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from gen_align.errors import CheckpointError, ConfigError, EmbeddingError, InputDataError
from gen_align.retrieval.gare import GAREHead
from gen_align.retrieval.gravi_head import GraviAlignConfig, GraviAlignHead
from gen_align.retrieval.head_training import load_head, train_head


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than several fighting over shared cores (torch, BLAS, OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def make_task(seed: int, n_train: int = 512, n_test: int = 256, d: int = 32, classes: int = 16):
    """Paired text/image embeddings with a global and a per-class text offset (structured modality gap),
    near-duplicate item pairs (hard negatives) and 10 % mismatched training pairs (label noise)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g)
    mixing = torch.randn(d, d, generator=g) / math.sqrt(d)
    offset = F.normalize(torch.randn(d, generator=g), dim=0) * math.sqrt(d)

    def items(n):
        y = torch.randint(classes, (n // 2,), generator=g)
        base = centers[y] + 0.6 * torch.randn(n // 2, d, generator=g)
        twin = base + 0.35 * torch.randn(n // 2, d, generator=g)
        x = torch.stack([base, twin], 1).reshape(n, d)
        y = y.repeat_interleave(2)
        image = x + 0.25 * torch.randn(n, d, generator=g)
        text = x + offset + centers[y] @ mixing + 0.15 * torch.randn(n, d, generator=g)
        return text, image

    (text, image), test = items(n_train), items(n_test)
    noisy = torch.randperm(n_train, generator=g)[: n_train // 10]
    text = text.clone()
    text[noisy] = text[noisy[torch.randperm(len(noisy), generator=g)]]
    return (text, image), test


def recall_at_1(scores: torch.Tensor) -> float:
    """Brute-force R@1 of a square score matrix whose diagonal holds the matches."""
    return sum(int(scores[i].argmax()) == i for i in range(scores.shape[0])) / scores.shape[0]


def random_head(seed: int = 0, **kw) -> GraviAlignHead:
    torch.manual_seed(seed)
    config = dict(query_dim=5, gallery_dim=4, dim=4, hidden_dim=6)
    config.update(kw)
    head = GraviAlignHead(GraviAlignConfig(**config)).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return head


def loop_gaussian(head, x):
    """(μ, σ²) of one feature vector by hand: LayerNorm → Linear → GELU → Linear, split, residual, softplus."""
    norm, first, _, _, last = head.net.net
    xn = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + norm.eps) * norm.weight + norm.bias
    hidden = first.weight @ xn + first.bias
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
    out = last.weight @ hidden + last.bias
    mu, raw = out[: head.dim], out[head.dim :]
    if head.residual:
        mu = mu + x
    return mu, torch.log1p(torch.exp(raw)) + head.min_variance


def loop_score(mu_q, var_q, mu_g, var_g, temperature):
    """A + B + C of one pair, term by term over dimensions."""
    a = float(mu_q @ mu_g) / (float(mu_q.norm()) * float(mu_g.norm())) / temperature
    b = c = 0.0
    for d in range(len(mu_q)):
        s = float(var_q[d] + var_g[d])
        b -= 0.5 * float(mu_q[d] - mu_g[d]) ** 2 / s
        c -= 0.5 * math.log(s)
    return a + b + c


def test_gravi_heads_beat_plain_cosine():
    (text, image), (text_te, image_te) = make_task(seed=0)
    cos_r1 = recall_at_1(F.normalize(text_te, dim=-1) @ F.normalize(image_te, dim=-1).mT)
    assert 0.3 < cos_r1 < 0.65
    torch.manual_seed(0)
    head = GraviAlignHead(GraviAlignConfig(query_dim=32, gallery_dim=32, hidden_dim=64))
    history = train_head(head, {"text": text, "image": image}, epochs=20, batch_size=128, lr=3e-3, seed=0)
    assert history.loss[-1] < 0.5 * history.loss[0]
    head_r1 = recall_at_1(head.score(text_te, image_te))
    assert head_r1 > cos_r1 + 0.1, (cos_r1, head_r1)


@torch.no_grad()
def test_scores_equal_a_per_pair_loop():
    head = random_head()
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(3, 5, generator=g, dtype=torch.float64)
    gallery = torch.randn(4, 4, generator=g, dtype=torch.float64)
    scores = head.score(queries, gallery)
    assert not head.query_head.residual and head.gallery_head.residual  # 5 → 4 has no skip; 4 → 4 has one
    for i in range(3):
        mu_q, var_q = loop_gaussian(head.query_head, queries[i])
        torch.testing.assert_close(head.encode(queries[i : i + 1], "query")[0][0], mu_q)
        torch.testing.assert_close(head.encode(queries[i : i + 1], "query")[1][0], var_q)
        for j in range(4):
            mu_g, var_g = loop_gaussian(head.gallery_head, gallery[j])
            expected = loop_score(mu_q, var_q, mu_g, var_g, head.config.temperature)
            assert float(scores[i, j]) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_loss_is_symmetric_infonce_over_gravi_scores():
    head = random_head(gallery_dim=5, dim=5, temperature=0.5)
    g = torch.Generator().manual_seed(2)
    queries, gallery = torch.randn(4, 5, generator=g).double(), torch.randn(4, 5, generator=g).double()
    loss, logs = head.training_loss(queries, gallery)
    scores = head(queries, gallery)
    rows = [-(scores[i, i] - torch.logsumexp(scores[i], 0)) for i in range(4)]
    cols = [-(scores[j, j] - torch.logsumexp(scores[:, j], 0)) for j in range(4)]
    torch.testing.assert_close(logs["q2g"], sum(rows) / 4)
    torch.testing.assert_close(logs["g2q"], sum(cols) / 4)
    torch.testing.assert_close(loss, 0.5 * (sum(rows) + sum(cols)) / 4)
    loss.backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in head.parameters())


def test_fresh_residual_head_starts_at_the_identity():
    torch.manual_seed(0)
    head = GraviAlignHead(GraviAlignConfig(query_dim=8, gallery_dim=8, kind="linear", min_variance=1e-3))
    x = torch.randn(5, 8)
    mu, var = head.encode(x, "query")
    assert torch.equal(mu, x)
    torch.testing.assert_close(var, torch.full((5, 8), math.log(2.0) + 1e-3))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    head = random_head(kind="linear")
    head.save_pretrained(tmp_path / "gravi")
    for loaded in (GraviAlignHead.from_pretrained(tmp_path / "gravi"), load_head(tmp_path / "gravi")):
        assert isinstance(loaded, GraviAlignHead) and loaded.config == head.config
        for (k, a), (k2, b) in zip(head.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
        x, y = torch.randn(3, 5).double(), torch.randn(2, 4).double()
        assert torch.equal(loaded.score(x, y), head.score(x, y))
    with pytest.raises(CheckpointError, match="'gravi-align' head, not a 'gare' head"):
        GAREHead.from_pretrained(tmp_path / "gravi")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(query_dim=4, gallery_dim=5, residual=True), "residual=True"),
        (dict(query_dim=4, gallery_dim=4, kind="conv"), "head kind"),
        (dict(query_dim=4, gallery_dim=4, temperature=0), "temperature"),
        (dict(query_dim=4, gallery_dim=4, min_variance=-1.0), "min_variance"),
    ],
)
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GraviAlignConfig(**kwargs)


def test_bad_inputs_raise_clear_errors():
    head = random_head()
    with pytest.raises(EmbeddingError, match="5-d query features"):
        head.score(torch.randn(2, 4).double(), torch.randn(2, 4).double())
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        head.score(torch.full((2, 5), float("nan")).double(), torch.randn(2, 4).double())
    with pytest.raises(ConfigError, match="drop frame_mask"):
        head.training_loss(torch.randn(2, 5).double(), torch.randn(2, 4).double(), frame_mask=torch.ones(2, 1).bool())
    with pytest.raises(ConfigError, match="side"):
        head.encode(torch.randn(2, 5), "video")
    with pytest.raises(EmbeddingError, match="shape \\(B, d\\)"):
        head.score(torch.randn(5).double(), torch.randn(2, 4).double())
    queries, gallery = torch.randn(2, 5).double(), torch.randn(3, 4).double()
    with pytest.raises(InputDataError, match=r"\[0, 3\)"):
        head.rerank(queries, gallery, torch.tensor([[0, 3], [1, 2]]))
    with pytest.raises(InputDataError, match=r"\(2, K\)"):
        head.rerank(queries, gallery, torch.tensor([[0, 1]]))


def test_rerank_scores_equal_the_full_matrix_at_the_candidates():
    head = random_head()
    queries, gallery = torch.randn(4, 5).double(), torch.randn(6, 4).double()
    candidates = torch.tensor([[5, 0], [2, 2], [1, 4], [3, 0]])
    torch.testing.assert_close(
        head.rerank(queries, gallery, candidates), head.score(queries, gallery).gather(1, candidates)
    )


def test_train_head_on_a_tiny_set_keeps_two_pairs_per_batch():
    head = random_head(gallery_dim=5, dim=5)
    features = {"text": torch.randn(3, 5).double(), "image": torch.randn(3, 5).double()}
    history = train_head(head, features, epochs=2, batch_size=2, seed=0)
    assert history.steps == 2 and all(math.isfinite(v) for v in history.loss) and not head.training
