"""Training of the projection heads with any registered objective (``gen-align train``)."""
