"""gen-align: one image-anchored CLIP embedding space for text, audio and vision.

Encoders are aligned with the UniAlign objective (or its baselines); the same embeddings drive unCLIP
image decoders, FID evaluation and cross-modal retrieval.
"""

__version__ = "0.1.0"
