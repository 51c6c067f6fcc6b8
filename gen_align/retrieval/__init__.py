"""Cross-modal retrieval: metrics, scores, post-processing (InvGC/LocalAdj; IS, QB-Norm, DBNorm, dual softmax), heads
(GARE, GraviAlign), ANN search."""

from gen_align.retrieval.ann import AnnIndex, coverage, two_stage_search
from gen_align.retrieval.evaluation import compare_postprocessing, evaluate_retrieval
from gen_align.retrieval.invgc import invgc, tune_invgc
from gen_align.retrieval.metrics import query_ranks, retrieval_metrics
from gen_align.retrieval.score_normalization import db_norm, dual_softmax, inverted_softmax, querybank_norm
from gen_align.retrieval.scores import row_scorer, score

__all__ = [
    "AnnIndex",
    "compare_postprocessing",
    "coverage",
    "db_norm",
    "dual_softmax",
    "evaluate_retrieval",
    "inverted_softmax",
    "querybank_norm",
    "invgc",
    "query_ranks",
    "retrieval_metrics",
    "row_scorer",
    "score",
    "tune_invgc",
    "two_stage_search",
]
