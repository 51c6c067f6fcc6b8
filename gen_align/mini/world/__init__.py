"""The procedural mini world: items with known (shape, colour, size, background), each rendered as a 32×32 image,
2 s of audio and a caption, deterministic from a seed (:mod:`~gen_align.mini.world.dataset`).

Pure data, like :mod:`gen_align.data`: it imports no model, so the recipes, the evaluation and the tests all read
the same ground truth.
"""
