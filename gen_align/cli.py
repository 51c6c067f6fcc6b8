"""The ``gen-align`` command line: one sub-command per feature; user errors print a message, exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gen_align import __version__
from gen_align.commands import COMMANDS, help_texts
from gen_align.errors import GenAlignError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gen-align",
        description="Align text, audio and vision in one image-anchored CLIP space; generate, evaluate, retrieve.",
    )
    parser.add_argument("--version", action="version", version=f"gen-align {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gen_align.commands.{name}").register(sub)
    help_texts.attach(parser)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into a closed pipe raises nothing."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (e.g. captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gen-align`` console script and ``python -m gen_align``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except GenAlignError as err:
        print(f"gen-align {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gen-align {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`gen-align objectives --json | head`): not an error of ours
        _silence_stdout()
        return 0
