"""The mini world, in three rooms and the shipped weights:

* :mod:`gen_align.mini.world` — the procedural tri-modal dataset with known attributes (pure data);
* :mod:`gen_align.mini.recipes` — the tiny models with the real architectures, and how they are trained;
* :mod:`gen_align.mini.evaluate` — the paper's generation experiment reproduced on them (``gen-align mini eval``);
* :mod:`gen_align.mini.shipped` and ``weights/`` — the shipped ``mini`` preset, the embedded offline default.
"""
