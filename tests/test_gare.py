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
from gen_align.retrieval.gare import GAREConfig, GAREHead
from gen_align.retrieval.gare_losses import (
    directional_diversity,
    gap_alignment_penalty,
    gaussian_kl,
    trust_region_penalty,
    video_conditioned_kl,
)
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
    config = dict(dim=6, attn_dim=8, num_heads=2, temporal_layers=2, temporal_heads=3, max_frames=4)
    config.update(kw)
    head = GAREHead(GAREConfig(**config)).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return head


def layer_norm(x, norm):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def attention(q, keys, values, heads):
    """Multi-head attention of one query vector over a list of key/value vectors, by hand."""
    e = q.shape[0] // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        part = slice(h * e, (h + 1) * e)
        logits = torch.stack([q[part] @ key[part] / math.sqrt(e) for key in keys])
        weights = torch.exp(logits - logits.max())
        weights = weights / weights.sum()
        out[part] = sum(w * val[part] for w, val in zip(weights, values, strict=True))
    return out


def temporal_reference(head: GAREHead, frames):
    """C = F + Enc(F + P) for one item's real frames, layer by layer (pre-LN self-attention, GELU MLP)."""
    x = frames + head.temporal.positions[: frames.shape[0]]
    for layer in head.temporal.encoder.layers:
        w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias
        d = x.shape[1]
        h = layer_norm(x, layer.norm1)
        q, k, v = (h @ w[s * d : (s + 1) * d].T + b[s * d : (s + 1) * d] for s in range(3))
        mixed = torch.stack([attention(q[i], k, v, layer.self_attn.num_heads) for i in range(x.shape[0])])
        x = x + mixed @ layer.self_attn.out_proj.weight.T + layer.self_attn.out_proj.bias
        h = layer_norm(x, layer.norm2)
        x = x + F.gelu(h @ layer.linear1.weight.T + layer.linear1.bias) @ layer.linear2.weight.T + layer.linear2.bias
    return frames + x


def loop_pair(head: GAREHead, t, v, tokens, noise=None):
    """One pair (t_i, v_j, C_j) by hand: returns s, Δ, g (no batching, no einsum)."""
    c = head.config
    if c.normalize:
        t, v = t / t.norm(), v / v.norm()
    query_side = c.delta_side == "query"
    gap = v - t if query_side else t - v
    q = head.q_proj.weight @ layer_norm(gap, head.query_norm) + head.q_proj.bias
    keys = [head.k_proj.weight @ layer_norm(x, head.context_norm) + head.k_proj.bias for x in tokens]
    values = [head.v_proj.weight @ layer_norm(x, head.context_norm) + head.v_proj.bias for x in tokens]
    delta = head.out_proj.weight @ attention(q, keys, values, c.num_heads) + head.out_proj.bias
    if c.ffn:
        hidden = F.gelu(head.ffn[0].weight @ layer_norm(gap + delta, head.ffn_norm) + head.ffn[0].bias)
        delta = delta + head.ffn[2].weight @ hidden + head.ffn[2].bias
    if c.bottleneck == "pair":
        mu = head.mu_proj.weight @ delta + head.mu_proj.bias
        logvar = head.logvar_proj.weight @ delta + head.logvar_proj.bias
        delta = head.decoder.weight @ (mu if noise is None else mu + torch.exp(0.5 * logvar) * noise)
    a, b = (t + delta, v) if query_side else (t, v + delta)
    return (a @ b) / (a.norm() * b.norm()), delta, gap


def pair_data(seed: int = 1, a: int = 4, b: int = 5, length: int = 3):
    g = torch.Generator().manual_seed(seed)
    queries = 3.0 * torch.randn(a, 6, generator=g, dtype=torch.float64)
    frames = 3.0 * torch.randn(b, length, 6, generator=g, dtype=torch.float64)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 2] = mask[3, 1:] = False  # items with 2 and 1 real frames
    return queries, frames, mask


def item_context(head: GAREHead, frames, mask, j):
    tokens = temporal_reference(head, frames[j][mask[j]]) if head.temporal is not None else frames[j][mask[j]]
    return tokens.mean(dim=0), tokens


def test_gare_reranking_beats_plain_cosine():
    (text, video, tokens), (text_te, video_te, tokens_te) = make_task(seed=0)
    base = cosine(text_te, video_te)
    cos_r1 = recall_at_1(base)
    assert 0.3 < cos_r1 < 0.65  # the task leaves clear room above cosine
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=32, num_heads=4, temporal_layers=1))
    history = train_head(head, {"text": text, "video": tokens}, epochs=10, batch_size=64, lr=3e-3, seed=0)
    assert history.steps == 10 * 8 and len(history.loss) == 10
    assert history.terms[-1]["info"] < history.terms[0]["info"]
    static = head.gallery_embeddings(tokens_te)
    candidates = cosine(text_te, static).topk(10, dim=1).indices
    reranked = head.rerank(text_te, tokens_te, candidates)
    best = candidates.gather(1, reranked.argmax(dim=1, keepdim=True)).squeeze(1)
    gare_r1 = sum(int(best[i]) == i for i in range(len(best))) / len(best)
    assert gare_r1 > cos_r1 + 0.1, (cos_r1, gare_r1)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"delta_side": "gallery"},
        {"ffn": False, "temporal_layers": 0},
        {"bottleneck": "pair", "latent_dim": 3, "normalize": True},
    ],
    ids=["paper", "gallery-side", "no-ffn-raw-frames", "pair-bottleneck-normalised"],
)
def test_pairwise_with_frames_equals_double_loop_reference(variant):
    head = random_head(**variant)
    queries, frames, mask = pair_data()
    out = head.pairwise(queries, frames, mask)
    full = head.score(queries, frames, mask, chunk_size=3)
    candidates = torch.tensor([[4, 0, 1], [2, 2, 3], [1, 4, 0], [3, 1, 2]])
    reranked = head.rerank(queries, frames, candidates, mask, chunk_size=3)
    static = head.gallery_embeddings(frames, mask)
    for j in range(frames.shape[0]):
        v, tokens = item_context(head, frames, mask, j)
        expected_v = v / v.norm() if head.config.normalize else v
        torch.testing.assert_close(static[j], expected_v)
        for i in range(queries.shape[0]):
            s, delta, gap = loop_pair(head, queries[i], v, tokens)
            torch.testing.assert_close(out.scores[i, j], s)
            torch.testing.assert_close(full[i, j], s)
            torch.testing.assert_close(out.delta[i, j], delta)
            torch.testing.assert_close(out.gap[i, j], gap)
    for i in range(queries.shape[0]):
        for slot, j in enumerate(candidates[i].tolist()):
            torch.testing.assert_close(reranked[i, slot], out.scores[i, j])


def test_sampled_pair_bottleneck_equals_loop_with_the_same_noise():
    head = random_head(bottleneck="pair", latent_dim=3)
    queries, frames, mask = pair_data()
    out = head.pairwise(queries, frames, mask, sample=True, generator=torch.Generator().manual_seed(5))
    noise = torch.randn((4, 5, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for i in range(4):
        for j in range(5):
            v, tokens = item_context(head, frames, mask, j)
            s, delta, _ = loop_pair(head, queries[i], v, tokens, noise=noise[i, j])
            torch.testing.assert_close(out.scores[i, j], s)
            torch.testing.assert_close(out.delta[i, j], delta)


def test_embedding_gallery_is_its_own_single_token():
    head = random_head()
    queries, frames, _ = pair_data()
    gallery = frames[:, 0]
    scores = head.score(queries, gallery)
    for i in range(4):
        for j in range(5):
            torch.testing.assert_close(scores[i, j], loop_pair(head, queries[i], gallery[j], gallery[j][None])[0])
    # the query projection cannot matter with one token (softmax over one key is 1) ...
    with torch.no_grad():
        head.q_proj.weight.mul_(3.0)
    torch.testing.assert_close(head.score(queries, gallery), scores)
    # ... but Δ still depends on the pair through the FFN, which reads the gap
    delta = head.pairwise(queries, gallery).delta.detach()
    assert float((delta[0] - delta[1]).abs().max()) > 1e-3


def test_video_conditioned_kl_matches_torch_distributions():
    delta = torch.randn(7, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, std = delta.mean(dim=0), delta.std(dim=0)  # over the queries (texts) of each gallery item
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    )
    torch.testing.assert_close(video_conditioned_kl(delta), reference.sum(-1).mean() / 4)  # per dimension
    # N(0, I) increments give ≈ 0; an increment constant over the texts is finite (σ² floored)
    assert float(video_conditioned_kl(torch.zeros(3, 2, 4))) > 0
    assert math.isfinite(float(video_conditioned_kl(torch.zeros(3, 2, 4))))


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(3, 4, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g).double()
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
    ).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), reference)
    assert float(gaussian_kl(torch.zeros(7), torch.zeros(7))) == 0.0


def test_directional_diversity_is_the_mean_pairwise_cosine():
    delta = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    delta[1, 2] = 0.0  # a zero increment has no direction and counts as cosine 0
    for anchor_dim in (0, 1):
        per_anchor = []
        anchors = delta if anchor_dim == 0 else delta.transpose(0, 1)
        for row in anchors:
            n = row.shape[0]
            cosines = [
                0.0
                if row[j].norm() == 0 or row[k].norm() == 0
                else float(row[j] @ row[k] / (row[j].norm() * row[k].norm()))
                for j in range(n)
                for k in range(n)
                if j != k
            ]
            per_anchor.append(sum(cosines) / (n * (n - 1)))
        expected = torch.tensor(sum(per_anchor) / len(per_anchor), dtype=torch.float64)
        torch.testing.assert_close(directional_diversity(delta, anchor_dim), expected)
    shared = torch.ones(2, 3, 4)  # one shared shift: cosine 1 everywhere
    torch.testing.assert_close(directional_diversity(shared, 0), torch.tensor(1.0))


def test_trust_region_and_gap_alignment_closed_forms():
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    anchor = torch.tensor([10.0, 1.0, 2.0])
    torch.testing.assert_close(trust_region_penalty(delta, anchor, 0.3), torch.tensor([0.04, 0.04, 0.0]))
    gap = torch.tensor([1.0, 0.0])
    cases = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    expected = torch.tensor([0.0, 4.0, 3.0, math.sqrt(2.0) - 1.0])
    torch.testing.assert_close(gap_alignment_penalty(cases, gap.expand(4, 2)), expected)
    torch.testing.assert_close(
        gap_alignment_penalty(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2)), torch.tensor([2.0])
    )
    grad_at_zero = torch.zeros(1, 2, requires_grad=True)
    gap_alignment_penalty(grad_at_zero, gap[None]).sum().backward()
    assert bool(torch.isfinite(grad_at_zero.grad).all())


@pytest.mark.parametrize("side", ["query", "gallery"])
def test_training_loss_is_the_documented_combination(side):
    head = random_head(beta=0.3, lambda_eps=0.2, lambda_dir=0.5, trust_radius=0.2, temperature=0.5, delta_side=side)
    queries, frames, mask = pair_data(a=5, b=5)
    loss, logs = head.training_loss(queries, frames, mask)
    out = head.pairwise(queries, frames, mask)
    logits = out.scores / 0.5
    rows = -torch.log_softmax(logits, dim=1).diagonal().mean()
    cols = -torch.log_softmax(logits, dim=0).diagonal().mean()
    info = 0.5 * (rows + cols)
    mean, var = out.delta.mean(dim=0), out.delta.var(dim=0)  # over the queries, per gallery item
    kl = (0.5 * (mean**2 + var - 1 - var.log())).sum(-1).mean() / 6
    if side == "query":
        anchor_norm = queries.norm(dim=-1)[:, None]
    else:
        anchor_norm = head.gallery_embeddings(frames, mask).norm(dim=-1)[None, :]
    norm = (torch.clamp(out.delta.norm(dim=-1) / anchor_norm - 0.2, min=0) ** 2).mean()
    units = F.normalize(out.delta, dim=-1)
    if side == "gallery":
        units = units.transpose(0, 1)
    gram = units @ units.mT  # (anchor, partner, partner)
    direction = ((gram.sum((1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(1)) / 20).mean()
    torch.testing.assert_close(logs["info"], info)
    torch.testing.assert_close(logs["kl"], kl)
    torch.testing.assert_close(logs["norm"], norm)
    torch.testing.assert_close(logs["dir"], direction)
    torch.testing.assert_close(loss, info + 0.3 * kl + 0.2 * norm + 0.5 * direction)


def test_earlier_variant_losses_behind_options():
    head = random_head(bottleneck="pair", latent_dim=3, direction="gap", beta=0.3, lambda_dir=0.5, lambda_eps=0.0)
    queries, frames, mask = pair_data(a=5, b=5)
    loss, logs = head.training_loss(queries, frames, mask, generator=torch.Generator().manual_seed(3))
    out = head.pairwise(queries, frames, mask, sample=True, generator=torch.Generator().manual_seed(3))
    kl = (0.5 * (out.mu**2 + out.logvar.exp() - 1 - out.logvar)).mean()  # per pair and latent dimension
    pos = torch.arange(5)
    d, g = out.delta[pos, pos], out.gap[pos, pos]
    direction = (d.norm(dim=-1) - (d * g).sum(-1) / g.norm(dim=-1)).mean()
    torch.testing.assert_close(logs["kl"], kl)
    torch.testing.assert_close(logs["dir"], direction)
    torch.testing.assert_close(loss, logs["info"] + 0.3 * kl + 0.5 * direction)


def test_untrained_pair_bottleneck_scores_plain_cosine():
    queries, frames, mask = pair_data()
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=6, num_heads=2, temporal_layers=0, bottleneck="pair")).double()
    static = head.gallery_embeddings(frames, mask)
    torch.testing.assert_close(head.score(queries, frames, mask), cosine(queries, static))


def test_embeddings_keep_their_norms_unless_normalize():
    head = random_head(temporal_layers=0)
    queries, frames, _ = pair_data()
    gallery = frames[:, 0]
    scores = head.score(queries, gallery)
    assert not torch.allclose(head.score(queries * 4.0, gallery), scores)  # the norms matter for Δ
    unit_head = random_head(temporal_layers=0, normalize=True)
    torch.testing.assert_close(unit_head.score(queries * 4.0, gallery), unit_head.score(queries, gallery))


def test_inference_is_deterministic_in_train_mode():
    head = random_head(bottleneck="pair", latent_dim=3).train()
    queries, frames, mask = pair_data()
    candidates = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4]])
    first = head.rerank(queries, frames, candidates, mask)
    assert torch.equal(first, head.rerank(queries, frames, candidates, mask))
    assert torch.equal(first, head.eval().rerank(queries, frames, candidates, mask))


def test_training_is_reproducible_and_save_load_is_bit_exact(tmp_path):
    queries, frames, mask = pair_data(a=12, b=12)
    features = {"text": queries, "video": frames}
    heads = []
    for _ in range(2):
        head = random_head(seed=3)
        history = train_head(head, features, frame_mask=mask, epochs=2, batch_size=5, seed=7)
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
        assert torch.equal(loaded.score(queries, frames, mask), heads[0].score(queries, frames, mask))


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
    random_head(attn_dim=4).save_pretrained(tmp_path / "other")
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
        (dict(dim=8, trust_radius=0.0), ConfigError, "trust_radius"),
        (dict(dim=6, num_heads=2, temporal_heads=4), ConfigError, "temporal_heads"),
        (dict(dim=8, delta_side="both"), ConfigError, "delta_side"),
        (dict(dim=8, bottleneck="text"), ConfigError, "bottleneck"),
        (dict(dim=8, direction="align"), ConfigError, "direction"),
        (dict(dim=8, ffn="yes"), ConfigError, "ffn"),
    ],
)
def test_bad_configs(kwargs, error, match):
    with pytest.raises(error, match=match):
        GAREConfig(**kwargs)


def test_bad_inputs_raise_clear_errors():
    head = random_head()
    queries, frames, mask = pair_data()
    with pytest.raises(EmbeddingError, match="6-d embeddings"):
        head.score(queries[:, :5], frames, mask)
    with pytest.raises(EmbeddingError, match="6-d embeddings"):
        head.score(queries, frames[:, :, :4])
    with pytest.raises(EmbeddingError, match="positions for 4"):
        head.score(queries, torch.randn(5, 6, 6, dtype=torch.float64))
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(EmbeddingError, match="no real frame"):
        head.score(queries, frames, empty)
    with pytest.raises(EmbeddingError, match="frame_mask"):
        head.score(queries, frames, mask.float())
    with pytest.raises(ConfigError, match="frame_mask given with"):
        head.score(queries, frames[:, 0], mask)
    with pytest.raises(InputDataError, match=r"\[0, 5\)"):
        head.rerank(queries, frames, torch.tensor([[0], [1], [2], [5]]), mask)
    with pytest.raises(InputDataError, match="integer"):
        head.rerank(queries, frames, torch.zeros(4, 2), mask)
    with pytest.raises(InputDataError, match=r"\(4, K\)"):
        head.rerank(queries, frames, torch.zeros(3, 2, dtype=torch.long), mask)
    bad = queries.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(EmbeddingError, match="NaN"):
        head.score(bad, frames, mask)
    with pytest.raises(EmbeddingError, match="NaN"):
        head.score(queries, frames.masked_fill(~mask[..., None], float("nan")))
    with pytest.raises(EmbeddingError, match="all-zero"):
        head.score(torch.zeros(2, 6, dtype=torch.float64), frames, mask)


def test_train_head_input_errors():
    head = random_head()
    queries, frames, mask = pair_data(a=6, b=6)
    gallery = frames[:, 0]
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
    with pytest.raises(ConfigError, match="frame_mask given with"):
        train_head(head, {"text": queries, "video": gallery}, frame_mask=torch.ones(6, 1, dtype=torch.bool))
    with pytest.raises(EmbeddingError, match="frame_mask: expected shape"):
        train_head(head, {"text": queries, "video": frames}, frame_mask=mask[:, :2])
    with pytest.raises(EmbeddingError, match="floating-point"):
        train_head(head, {"text": queries, "video": torch.ones(6, 3, 6, dtype=torch.long)})
    assert issubclass(EmbeddingError, GenAlignError)


def test_step_size_error_is_the_rebuttals_closed_form():
    head = random_head()
    head.step_size_diagnostics = True
    queries, frames, mask = pair_data(a=5, b=5)
    loss, _ = head.training_loss(queries, frames, mask)
    delta0 = head._last_batch[3]
    grad = torch.autograd.grad(loss, delta0, retain_graph=True)[0]
    before = delta0.detach().clone()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05)
    loss.backward()
    optimizer.step()
    stats = head.after_step()
    after = head.pairwise(queries, frames, mask).delta.detach()
    errors = {"step_err_pos": [], "step_err_neg": []}
    for i in range(5):
        for j in range(5):
            g_hat = grad[i, j] / grad[i, j].norm()
            p, eps = float(before[i, j] @ g_hat), float(after[i, j].norm())
            disc = p * p - float(before[i, j].norm()) ** 2 + eps * eps
            if disc < 0:
                continue
            alpha = p + math.sqrt(disc)
            eta = float((after[i, j] - before[i, j]).norm())
            errors["step_err_pos" if i == j else "step_err_neg"].append(abs(eta - alpha))
    assert set(stats) == {k for k, v in errors.items() if v}
    for key, values in errors.items():
        if values:
            assert stats[key] == pytest.approx(sum(values) / len(values))
    assert head.after_step() == {}  # one report per step


def test_train_head_logs_the_step_size_error():
    head = random_head(seed=1)
    head.step_size_diagnostics = True
    queries, frames, mask = pair_data(a=8, b=8)
    history = train_head(head, {"text": queries, "video": frames}, frame_mask=mask, epochs=2, batch_size=4, lr=1e-2)
    assert all("step_err_pos" in terms and math.isfinite(terms["step_err_pos"]) for terms in history.terms)
    with pytest.raises(ConfigError, match="bottleneck='video'"):
        pair = random_head(bottleneck="pair", latent_dim=3)
        pair.step_size_diagnostics = True
        pair.training_loss(queries[:4], frames[:4], mask[:4])
