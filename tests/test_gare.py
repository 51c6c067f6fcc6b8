"""GARE re-ranker: improvement over cosine on a synthetic gap task, batched pairs vs a double loop, closed-form
regularisers, deterministic inference, checkpoints and errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from gen_align.errors import (
    CheckpointError,
    ConfigError,
    EmbeddingError,
    GenAlignError,
    InputDataError,
    WeightsNotFoundError,
)
from gen_align.retrieval.gare import GAREConfig, GAREHead, direction_penalty, gaussian_kl, norm_penalty
from gen_align.retrieval.head_training import RetrievalHead, load_head, train_head


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than several fighting over shared cores (torch, BLAS, OpenMP)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def make_task(seed: int, n_train: int = 512, n_test: int = 256, d: int = 32, classes: int = 16, frames: int = 4):
    """Paired text/video embeddings where plain cosine is clearly imperfect: the text side carries a global
    offset plus a per-class offset (a structured modality gap), items come in near-duplicate pairs (hard
    negatives), and 10 % of the training pairs are mismatched (label noise). Videos have frame tokens."""
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
        tokens = x[:, None, :] + 0.5 * torch.randn(n, frames, d, generator=g)
        text = x + offset + centers[y] @ mixing + 0.15 * torch.randn(n, d, generator=g)
        return text, tokens.mean(dim=1), tokens

    train, test = items(n_train), items(n_test)
    text = train[0].clone()
    noisy = torch.randperm(n_train, generator=g)[: n_train // 10]
    text[noisy] = text[noisy[torch.randperm(len(noisy), generator=g)]]
    return (text, *train[1:]), test


def recall_at_1(scores: torch.Tensor) -> float:
    """Brute-force R@1 of a square score matrix whose diagonal holds the matches."""
    hits = sum(int(scores[i].argmax()) == i for i in range(scores.shape[0]))
    return hits / scores.shape[0]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).mT


def random_head(seed: int = 0, **kw) -> GAREHead:
    torch.manual_seed(seed)
    config = dict(dim=6, token_dim=5, attn_dim=8, num_heads=2, latent_dim=3)
    config.update(kw)
    head = GAREHead(GAREConfig(**config)).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return head


def layer_norm(x, norm):
    mean, var = x.mean(), x.var(unbiased=False)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def loop_pair(head: GAREHead, t, v, tokens, noise=None):
    """One pair (t_i, v_j, X_j) by hand: returns s, Δ, μ, log σ², g (no batching, no einsum)."""
    c = head.config
    e = c.width // c.num_heads
    t, v = t / t.norm(), v / v.norm()
    gap = v - t
    q = head.q_proj.weight @ gap + head.q_proj.bias
    keys, values = [], []
    for x in tokens:
        xn = layer_norm(x, head.token_norm)
        keys.append(head.k_proj.weight @ xn + head.k_proj.bias)
        values.append(head.v_proj.weight @ xn + head.v_proj.bias)
    context = torch.zeros(c.width, dtype=t.dtype)
    for h in range(c.num_heads):
        part = slice(h * e, (h + 1) * e)
        logits = torch.stack([q[part] @ key[part] / math.sqrt(e) for key in keys])
        weights = torch.exp(logits - logits.max())
        weights = weights / weights.sum()
        context[part] = sum(w * val[part] for w, val in zip(weights, values, strict=True))
    hidden = layer_norm(gap + head.out_proj.weight @ context + head.out_proj.bias, head.h_norm)
    mu = head.mu_proj.weight @ hidden + head.mu_proj.bias
    logvar = head.logvar_proj.weight @ hidden + head.logvar_proj.bias
    z = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise
    delta = head.decoder.weight @ z
    q_new = t + delta
    score = (q_new @ v) / (q_new.norm() * v.norm())
    return score, delta, mu, logvar, gap


def pair_data(seed: int = 1, a: int = 4, b: int = 5, length: int = 3):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(a, 6, generator=g, dtype=torch.float64)
    gallery = torch.randn(b, 6, generator=g, dtype=torch.float64)
    tokens = torch.randn(b, length, 5, generator=g, dtype=torch.float64)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 2] = mask[3, 1:] = False  # items with 2 and 1 real tokens
    return queries, gallery, tokens, mask


def test_gare_reranking_beats_plain_cosine():
    (text, video, tokens), (text_te, video_te, tokens_te) = make_task(seed=0)
    base = cosine(text_te, video_te)
    cos_r1 = recall_at_1(base)
    assert 0.3 < cos_r1 < 0.65  # the task leaves clear room above cosine
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=32, num_heads=4))
    history = train_head(head, {"text": text, "video": video}, tokens=tokens, epochs=10, batch_size=64, lr=3e-3, seed=0)
    assert history.steps == 10 * 8 and len(history.loss) == 10
    assert history.terms[-1]["info"] < history.terms[0]["info"]
    candidates = base.topk(10, dim=1).indices
    reranked = head.rerank(text_te, video_te, candidates, tokens=tokens_te)
    best = candidates.gather(1, reranked.argmax(dim=1, keepdim=True)).squeeze(1)
    gare_r1 = sum(int(best[i]) == i for i in range(len(best))) / len(best)
    assert gare_r1 > cos_r1 + 0.1, (cos_r1, gare_r1)


def test_untrained_head_scores_plain_cosine():
    queries, gallery, tokens, mask = pair_data()
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=6, token_dim=5, attn_dim=8, num_heads=2)).double()
    torch.testing.assert_close(head.score(queries, gallery, tokens, mask), cosine(queries, gallery))


def test_pairwise_equals_double_loop_reference():
    head = random_head()
    queries, gallery, tokens, mask = pair_data()
    out = head.pairwise(queries, gallery, tokens, mask)
    full = head.score(queries, gallery, tokens, mask, chunk_size=3)
    candidates = torch.tensor([[4, 0, 1], [2, 2, 3], [1, 4, 0], [3, 1, 2]])
    reranked = head.rerank(queries, gallery, candidates, tokens, mask, chunk_size=3)
    for i in range(queries.shape[0]):
        for j in range(gallery.shape[0]):
            s, delta, mu, logvar, gap = loop_pair(head, queries[i], gallery[j], tokens[j][mask[j]])
            torch.testing.assert_close(out.scores[i, j], s)
            torch.testing.assert_close(full[i, j], s)
            torch.testing.assert_close(out.delta[i, j], delta)
            torch.testing.assert_close(out.mu[i, j], mu)
            torch.testing.assert_close(out.logvar[i, j], logvar)
            torch.testing.assert_close(out.gap[i, j], gap)
        for slot, j in enumerate(candidates[i].tolist()):
            torch.testing.assert_close(reranked[i, slot], out.scores[i, j])


def test_sampled_pairs_equal_loop_with_the_same_noise():
    head = random_head()
    queries, gallery, tokens, mask = pair_data()
    out = head.pairwise(queries, gallery, tokens, mask, sample=True, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((4, 5, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            s, delta, *_ = loop_pair(head, queries[i], gallery[j], tokens[j][mask[j]], noise=noise[i, j])
            torch.testing.assert_close(out.scores[i, j], s)
            torch.testing.assert_close(out.delta[i, j], delta)


def test_single_token_path_uses_the_gallery_embedding():
    head = random_head(token_dim=None)
    queries, gallery, _, _ = pair_data()
    scores = head.score(queries, gallery)
    for i in range(4):
        for j in range(5):
            unit_v = gallery[j] / gallery[j].norm()
            torch.testing.assert_close(scores[i, j], loop_pair(head, queries[i], gallery[j], unit_v[None])[0])


def test_regularisers_match_closed_forms():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g).double()
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)
    assert float(gaussian_kl(torch.zeros(7), torch.zeros(7))) == 0.0
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(norm_penalty(delta, 1.0), torch.tensor([16.0, 0.0, 0.0]))
    gap = torch.tensor([1.0, 0.0])
    cases = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    expected = torch.tensor([0.0, 4.0, 3.0, math.sqrt(2.0) - 1.0])
    torch.testing.assert_close(direction_penalty(cases, gap.expand(4, 2)), expected)
    torch.testing.assert_close(direction_penalty(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2)), torch.tensor([2.0]))
    grad_at_zero = torch.zeros(1, 2, requires_grad=True)
    direction_penalty(grad_at_zero, gap[None]).sum().backward()
    assert bool(torch.isfinite(grad_at_zero.grad).all())


def test_training_loss_is_the_documented_combination():
    head = random_head(beta=0.3, lambda_eps=0.2, lambda_dir=0.5, margin=0.4, temperature=0.5)
    queries, gallery, tokens, mask = pair_data(a=5, b=5)
    loss, logs = head.training_loss(queries, gallery, tokens, mask, generator=torch.Generator().manual_seed(3))
    out = head.pairwise(queries, gallery, tokens, mask, sample=True, generator=torch.Generator().manual_seed(3))
    logits = out.scores / 0.5
    rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    cols = -torch.log_softmax(logits, dim=0).diagonal().mean()
    info = 0.5 * (rows + cols)
    kl = (0.5 * (out.mu**2 + out.logvar.exp() - 1 - out.logvar)).mean()  # per pair and latent dimension
    norm = (torch.clamp(out.delta.norm(dim=-1) - 0.4, min=0) ** 2).mean()
    pos = torch.arange(5)
    d, g = out.delta[pos, pos], out.gap[pos, pos]
    direction = (d.norm(dim=-1) - (d * g).sum(-1) / g.norm(dim=-1)).mean()
    torch.testing.assert_close(logs["info"], info)
    torch.testing.assert_close(logs["kl"], kl)
    torch.testing.assert_close(logs["norm"], norm)
    torch.testing.assert_close(logs["dir"], direction)
    torch.testing.assert_close(loss, info + 0.3 * kl + 0.2 * norm + 0.5 * direction)


def test_inference_is_deterministic_in_train_mode():
    head = random_head().train()
    queries, gallery, tokens, mask = pair_data()
    candidates = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])
    first = head.rerank(queries, gallery, candidates, tokens, mask)
    assert torch.equal(first, head.rerank(queries, gallery, candidates, tokens, mask))
    assert torch.equal(first, head.eval().rerank(queries, gallery, candidates, tokens, mask))


def test_training_is_reproducible_and_save_load_is_bit_exact(tmp_path):
    queries, gallery, tokens, mask = pair_data(a=12, b=12)
    features = {"text": queries, "video": gallery}
    heads = []
    for _ in range(2):
        head = random_head(seed=3)
        history = train_head(head, features, tokens=tokens[:12], token_mask=mask[:12], epochs=2, batch_size=5, seed=7)
        heads.append(head)
    assert history.steps == 2 * 3  # 12 rows in 3 near-equal batches per epoch
    assert all(
        torch.equal(a, b) for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values(), strict=True)
    )
    heads[0].save_pretrained(tmp_path / "gare")
    config = json.loads((tmp_path / "gare" / "config.json").read_text())
    assert config["format"] == "gen-align-retrieval-head" and config["kind"] == "gare"
    for loaded in (GAREHead.from_pretrained(tmp_path / "gare"), load_head(tmp_path / "gare")):
        assert isinstance(loaded, GAREHead) and loaded.config == heads[0].config and not loaded.training
        for (k, a), (k2, b) in zip(heads[0].state_dict().items(), loaded.state_dict().items(), strict=True):
            assert k == k2 and a.dtype == b.dtype and torch.equal(a, b)
        assert torch.equal(loaded.score(queries, gallery, tokens, mask), heads[0].score(queries, gallery, tokens, mask))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="save_pretrained"):
        load_head(tmp_path / "missing")
    head = random_head()
    head.save_pretrained(tmp_path / "h")
    (tmp_path / "h" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="re-save"):
        load_head(tmp_path / "h")
    head.save_pretrained(tmp_path / "h")
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    config["kind"] = "nope"
    (tmp_path / "h" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown retrieval head kind"):
        RetrievalHead.from_pretrained(tmp_path / "h")
    head.save_pretrained(tmp_path / "h")
    random_head(latent_dim=4).save_pretrained(tmp_path / "other")
    (tmp_path / "h" / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="wrong shapes"):
        load_head(tmp_path / "h")
    (tmp_path / "h" / "config.json").write_text('{"format": "gen-align-space"}')
    with pytest.raises(CheckpointError, match="not a gen-align retrieval head"):
        load_head(tmp_path / "h")


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(dim=6, attn_dim=7, num_heads=2), ConfigError, "divisible"),
        (dict(dim=8, beta=-1.0), ConfigError, "beta"),
        (dict(dim=0), ConfigError, "dim"),
        (dict(dim=8, margin=0.0), ConfigError, "margin"),
    ],
)
def test_bad_configs(kwargs, error, match):
    with pytest.raises(error, match=match):
        GAREConfig(**kwargs)


def test_bad_inputs_raise_clear_errors():
    head = random_head()
    queries, gallery, tokens, mask = pair_data()
    with pytest.raises(EmbeddingError, match="6-d embeddings"):
        head.score(queries[:, :5], gallery, tokens, mask)
    with pytest.raises(ConfigError, match="token features"):
        head.score(queries, gallery)  # token_dim 5 ≠ dim 6: tokens are required
    with pytest.raises(EmbeddingError, match="tokens: expected shape"):
        head.score(queries, gallery, tokens[:, :, :4])
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(EmbeddingError, match="no real token"):
        head.score(queries, gallery, tokens, empty)
    with pytest.raises(EmbeddingError, match="token_mask"):
        head.score(queries, gallery, tokens, mask.float())
    with pytest.raises(InputDataError, match=r"\[0, 5\)"):
        head.rerank(queries, gallery, torch.tensor([[0], [1], [2], [5]]), tokens, mask)
    with pytest.raises(InputDataError, match="integer"):
        head.rerank(queries, gallery, torch.zeros(4, 2), tokens, mask)
    with pytest.raises(InputDataError, match=r"\(4, K\)"):
        head.rerank(queries, gallery, torch.zeros(3, 2, dtype=torch.long), tokens, mask)
    bad = queries.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        head.score(bad, gallery, tokens, mask)


def test_train_head_input_errors():
    head = random_head(token_dim=None)
    queries, gallery, _, _ = pair_data(a=6, b=6)
    with pytest.raises(EmbeddingError, match="no \\['video'\\] entry"):
        train_head(head, {"text": queries, "image": gallery})
    with pytest.raises(EmbeddingError, match="same number of rows"):
        train_head(head, {"text": queries, "video": gallery[:5]})
    with pytest.raises(ConfigError, match="batch_size"):
        train_head(head, {"text": queries, "video": gallery}, batch_size=1)
    with pytest.raises(ConfigError, match="lr"):
        train_head(head, {"text": queries, "video": gallery}, lr=0)
    nan = queries.clone()
    nan[1, 1] = float("inf")
    with pytest.raises(EmbeddingError, match="NaN/inf"):
        train_head(head, {"text": nan, "video": gallery})
    with pytest.raises(ConfigError, match="token_mask given without tokens"):
        train_head(head, {"text": queries, "video": gallery}, token_mask=torch.ones(6, 1, dtype=torch.bool))
    assert issubclass(EmbeddingError, GenAlignError)
