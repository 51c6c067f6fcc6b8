"""Datasets, manifests and the feature cache."""
