"""Gradio modality-interpolation demo: ``gen_align.app``."""
