"""Cross-modal retrieval: metrics, scores, post-processing (InvGC/LocalAdj), heads (GARE, GraviAlign), ANN search."""
