"""`gen-align objectives`: the registered training objectives and their defaults."""

from __future__ import annotations

import argparse
import json


def run(args: argparse.Namespace) -> int:
    from gen_align.objectives import list_objectives

    table = list_objectives()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, info in table.items():
        defaults = ", ".join(f"{k}={v}" for k, v in info["defaults"].items())
        print(f"{name:18s} {info['description']}\n{'':18s} defaults: {defaults}")
        if "task_presets" in info:
            presets = "; ".join(
                f"task={task}: " + ", ".join(f"{k}={v}" for k, v in values.items())
                for task, values in info["task_presets"].items()
            )
            print(f"{'':18s} task presets: {presets}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("objectives", help="list the registered training objectives and their defaults")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
