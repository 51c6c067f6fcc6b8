"""The retrieval table: InvGC-family rows (AvgPool's p grid) against invgc itself, InvGC's Tables 1–2 similarity
measures against a NumPy double loop, score normalisations, heads over the whole gallery and as two-stage
re-rankers (ranking, coverage C_K, deviation) against per-query loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_align.diagnostics import degeneration_score, similarity_measures
from gen_align.errors import ConfigError, EmbeddingError
from gen_align.retrieval.evaluation import (
    AVGPOOL_PERCENTS,
    compare_heads,
    compare_postprocessing,
    compare_score_normalizations,
    evaluate_retrieval,
    two_stage_ranking,
)
from gen_align.retrieval.gare import GAREConfig, GAREHead
from gen_align.retrieval.invgc import invgc, neighbour_count
from gen_align.retrieval.metrics import retrieval_metrics
from gen_align.retrieval.score_normalization import db_norm, dual_softmax, inverted_softmax, querybank_norm


def normalise(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(260, 12, generator=g, dtype=torch.float64)
    hub = torch.randn(12, generator=g, dtype=torch.float64)
    query = latent + 0.7 * torch.randn(260, 12, generator=g, dtype=torch.float64)
    gallery = latent + 0.7 * torch.randn(260, 12, generator=g, dtype=torch.float64) + 1.5 * hub
    return {"query": query[:60], "gallery": gallery[:60], "train_query": query[60:], "train_gallery": gallery[60:]}


def measures_reference(x, ref=None, ks=(1, 10)):
    """MeanSim / MeanSim@k by a double loop: every pair but (i, i) (self within a set, the pair across sets)."""
    x = normalise(np.asarray(x))
    r = x if ref is None else normalise(np.asarray(ref))
    rows = []
    for i in range(len(x)):
        rows.append([float(x[i] @ r[j]) for j in range(len(r)) if j != i])
    out = {"MeanSim": float(np.mean([s for row in rows for s in row]))}
    for k in ks:
        out[f"MeanSim@{k}"] = float(np.mean([np.mean(sorted(row, reverse=True)[:k]) for row in rows]))
    return out


def test_similarity_measures_match_the_double_loop(data):
    within = similarity_measures(data["gallery"], block_size=7)
    expected = measures_reference(data["gallery"])
    assert within == pytest.approx(expected)
    assert within["MeanSim@1"] == pytest.approx(degeneration_score(data["gallery"]))  # MeanSim@1 = Δ_deg
    across = similarity_measures(data["gallery"], data["query"], block_size=11)
    assert across == pytest.approx(measures_reference(data["gallery"], data["query"]))
    # sets of different sizes have no pairs to exclude
    unpaired = similarity_measures(data["gallery"][:5], data["query"], ks=(3,))
    sims = normalise(data["gallery"][:5].numpy()) @ normalise(data["query"].numpy()).T
    assert unpaired["MeanSim"] == pytest.approx(sims.mean())
    assert unpaired["MeanSim@3"] == pytest.approx(np.sort(sims, axis=1)[:, -3:].mean())
    assert set(similarity_measures(data["gallery"][:4])) == {"MeanSim", "MeanSim@1", "MeanSim@3"}  # k capped


def test_postprocessing_rows_with_fixed_rates_equal_invgc(data):
    args = (data["query"], data["gallery"], data["train_query"], data["train_gallery"])
    report = compare_postprocessing(*args, rates=(0.2, 0.3), k_percent=5)
    avgpool = [f"+AvgPool (p={p:g}%)" for p in AVGPOOL_PERCENTS]
    assert list(report) == ["cosine", *avgpool, "+InvGC", "+InvGC w/ LocalAdj"]
    assert avgpool == ["+AvgPool (p=10%)", "+AvgPool (p=25%)", "+AvgPool (p=50%)", "+AvgPool (p=100%)"]
    q = torch.from_numpy(normalise(data["query"].numpy()))
    g = torch.from_numpy(normalise(data["gallery"].numpy()))
    assert report["cosine"]["metrics"] == pytest.approx(retrieval_metrics(q @ g.T))
    assert report["cosine"]["gallery"] == pytest.approx(measures_reference(g))
    assert report["cosine"]["gallery_query"] == pytest.approx(measures_reference(g, q))
    rows = {"+InvGC": ("full", 5), "+InvGC w/ LocalAdj": ("local", 5)}
    rows |= {name: ("avgpool", p) for name, p in zip(avgpool, AVGPOOL_PERCENTS, strict=True)}
    for name, (adjacency, percent) in rows.items():
        processed = invgc(data["gallery"], data["train_gallery"], data["train_query"], 0.2, 0.3, adjacency, percent)
        assert report[name]["metrics"] == pytest.approx(retrieval_metrics(q @ processed.T)), name
        assert report[name]["gallery"] == pytest.approx(measures_reference(processed)), name
        assert report[name]["gallery_query"] == pytest.approx(measures_reference(processed, q)), name
    # AvgPool with unit edge weights (App. C.4) at rate r / k is the same gallery
    k = neighbour_count(200, 25)
    assert report["+AvgPool (p=25%)"]["r_g_paper"] == pytest.approx(0.2 / k)
    x = normalise(data["gallery"].numpy())
    banks = [normalise(data[m].numpy()) for m in ("train_gallery", "train_query")]
    parts = []
    for bank, r in zip(banks, (0.2 / k, 0.3 / k), strict=True):
        sims = x @ bank.T
        top = np.argsort(-sims, axis=1)[:, :k]
        message = np.stack([bank[row].sum(axis=0) for row in top])  # weight 1 on each neighbour
        parts.append(normalise(x - r * message))
    unit_weights = normalise(0.5 * (parts[0] + parts[1]))
    assert retrieval_metrics(q @ torch.from_numpy(unit_weights).T) == pytest.approx(
        report["+AvgPool (p=25%)"]["metrics"]
    )


def test_postprocessing_tunes_every_row_on_a_validation_split(data):
    args = (data["query"], data["gallery"], data["train_query"], data["train_gallery"])
    report = compare_postprocessing(*args, val_size=40, grid=(0.0, 0.5), avgpool_percents=(10, 100))
    for name in ("+AvgPool (p=10%)", "+AvgPool (p=100%)", "+InvGC", "+InvGC w/ LocalAdj"):
        assert report[name]["tuning"]["val_size"] == 40
        assert report[name]["tuning"]["R@1"] >= report[name]["tuning"]["baseline_R@1"]
        assert report[name]["r_g"] in (0.0, 0.5) and report[name]["r_q"] in (0.0, 0.5)
    with pytest.raises(ConfigError, match="val_size"):
        compare_postprocessing(*args, val_size=200)
    with pytest.raises(ConfigError, match="AvgPool p"):
        compare_postprocessing(*args, rates=(0.1, 0.1), avgpool_percents=(0,))
    assert list(compare_postprocessing(data["query"], data["gallery"])) == ["cosine"]  # no banks: cosine only


def test_score_normalization_rows(data):
    report = compare_score_normalizations(data["query"], data["gallery"], data["train_query"], data["train_gallery"])
    assert list(report) == ["+IS", "+QB-Norm", "+DBNorm", "+DSL"]
    q, g, tq, tg = (
        torch.from_numpy(normalise(data[m].numpy())) for m in ("query", "gallery", "train_query", "train_gallery")
    )
    s, qb, gb = q @ g.T, tq @ g.T, tg @ g.T
    expected = {
        "+IS": inverted_softmax(s, qb),
        "+QB-Norm": querybank_norm(s, qb),
        "+DBNorm": db_norm(s, qb, gb),
        "+DSL": dual_softmax(s),
    }
    for name, scores in expected.items():
        assert report[name]["metrics"] == pytest.approx(retrieval_metrics(scores)), name
    assert list(compare_score_normalizations(data["query"], data["gallery"])) == ["+DSL"]


def test_two_stage_ranking_orders_candidates_first():
    static = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7]])
    candidates = torch.tensor([[0, 4, 2]])
    rescored = torch.tensor([[-5.0, 2.0, 1.0]])  # the head prefers item 4, then 2, then 0
    ranking = two_stage_ranking(static, candidates, rescored)
    assert torch.argsort(ranking[0], descending=True).tolist() == [4, 2, 0, 3, 1]


def test_heads_over_the_gallery_and_as_two_stage_rerankers(data):
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=12, num_heads=2)).double()
    report = compare_heads(data["query"], data["gallery"], {"GARE": head}, candidates=8, top=5)
    full = head.score(data["query"], data["gallery"])
    assert report["GARE"]["metrics"] == pytest.approx(retrieval_metrics(full))
    q = normalise(data["query"].numpy())
    g = normalise(data["gallery"].numpy())
    cos = q @ g.T
    ranks, covered, deviations = [], [], []
    for i in range(len(q)):
        shortlist = list(np.argsort(-cos[i])[:8])
        reranked = sorted(shortlist, key=lambda j: -float(full[i, j]))
        rest = [j for j in np.argsort(-cos[i]) if j not in shortlist]
        order = reranked + rest
        ranks.append(order.index(i) + 1)
        best = list(np.argsort(-full[i].numpy())[:5])
        covered.append(len(set(best) & set(shortlist)) / 5)
        deviations += list(np.abs(full[i].numpy() - cos[i]))
    two = report["GARE two-stage"]
    assert two["metrics"]["R@1"] == pytest.approx(100 * np.mean(np.array(ranks) <= 1))
    assert two["metrics"]["MnR"] == pytest.approx(np.mean(ranks))
    assert two["coverage"] == {"K": 8, "top": 5, "C_K": pytest.approx(np.mean(covered))}
    assert report["GARE"]["deviation"]["mean"] == pytest.approx(np.mean(deviations))
    assert report["GARE"]["deviation"]["p95"] == pytest.approx(np.percentile(deviations, 95))


def test_evaluate_retrieval_has_every_row(data):
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=12, num_heads=2)).double()
    args = (data["query"], data["gallery"], data["train_query"], data["train_gallery"])
    report = evaluate_retrieval(*args, heads={"GARE": head}, candidates=10, rates=(0.1, 0.1))
    assert list(report)[-7:] == ["+InvGC w/ LocalAdj", "+IS", "+QB-Norm", "+DBNorm", "+DSL", "GARE", "GARE two-stage"]
    assert all(set(entry["metrics"]) >= {"R@1", "R@5", "R@10", "MdR", "MnR"} for entry in report.values())


def test_every_row_takes_multi_positive_ground_truth(data):
    """Positives = every gallery item of the query's class (here: rows grouped by index mod 6)."""
    classes = torch.arange(60) % 6
    gt = classes[:, None] == classes[None, :]
    torch.manual_seed(0)
    head = GAREHead(GAREConfig(dim=12, num_heads=2)).double()
    args = (data["query"], data["gallery"], data["train_query"], data["train_gallery"])
    report = evaluate_retrieval(*args, heads={"GARE": head}, candidates=10, rates=(0.1, 0.1), gt=gt)
    q = torch.from_numpy(normalise(data["query"].numpy()))
    g = torch.from_numpy(normalise(data["gallery"].numpy()))
    assert report["cosine"]["metrics"] == pytest.approx(retrieval_metrics(q @ g.T, gt))
    assert report["+DSL"]["metrics"] == pytest.approx(retrieval_metrics(dual_softmax(q @ g.T), gt))
    assert report["GARE"]["metrics"] == pytest.approx(retrieval_metrics(head.score(data["query"], data["gallery"]), gt))
    assert report["cosine"]["metrics"]["R@1"] > evaluate_retrieval(*args, rates=(0.1, 0.1))["cosine"]["metrics"]["R@1"]


def test_similarity_measures_refuse_bad_inputs(data):
    with pytest.raises(ConfigError, match="at least one pair"):
        similarity_measures(data["gallery"][:1])  # one row has no neighbour but itself
    with pytest.raises(EmbeddingError, match="dimension|d"):
        similarity_measures(data["gallery"], data["query"][:, :5])
    with pytest.raises(ConfigError, match="k"):
        similarity_measures(data["gallery"], ks=(0,))
