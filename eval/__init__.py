"""Evaluation harness (FID, retrieval benchmarks, gap analysis, reports): ``gen_align.eval``."""
