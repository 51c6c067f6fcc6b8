"""Frozen backbones and input decoding: CLIP text/vision towers, BEATs audio, audio/image/text I/O."""
