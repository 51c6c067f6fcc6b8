"""One light module per CLI command: ``register(subparsers)`` adds its parser, ``run(args)`` does the work
(heavy imports happen inside ``run``, so ``gen-align --help`` stays fast)."""

COMMANDS = (
    "objectives",
    "analyze",
    "encode",
    "embed",
    "train",
    "data",
    "generate",
    "calibrate",
    "download",
    "interpolate",
    "retrieve",
    "fid",
    "app",
    "mini",
)
