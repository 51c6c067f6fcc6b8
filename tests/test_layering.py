"""The layout rule of docs/architecture.md: a lower floor never imports a higher one, and no modules import each other
in a circle (imports inside functions count; ``if TYPE_CHECKING:`` blocks do not, they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "gen_align": "gen_align",
    "pipelines": "gen_align.pipelines",
    "eval": "gen_align.eval",
    "app": "gen_align.app",
}
FLOORS = (  # lowest first; the longest matching prefix places a module
    ("foundation", ("gen_align.errors", "gen_align.checks", "gen_align.io", "gen_align.tensors", "gen_align.weights",
                    "gen_align.module_checkpoint")),
    ("parts", ("gen_align.objectives", "gen_align.diagnostics", "gen_align.encoders", "gen_align.data",
               "gen_align.heads", "gen_align.presets", "gen_align.mini.world")),
    ("space", ("gen_align.space", "gen_align.feature_extraction", "gen_align.aligned_embeddings", "gen_align.train",
               "gen_align.retrieval")),
    ("pipelines", ("gen_align.pipelines",)),
    ("applications", ("gen_align.eval", "gen_align.app", "gen_align.mini")),
    ("commands", ("gen_align.commands", "gen_align.cli", "gen_align.__main__")),
)  # fmt: skip
PACKAGE_FACADE = "gen_align"  # gen_align/__init__.py: names resolved lazily by import path, above every floor


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if "weights" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def floor(module: str) -> int | None:
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(FLOORS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1] if matches else None


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """The gen_align modules ``module`` imports at run time, with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(prefix + ([node.module] if node.module else []))
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found += [(c, node.lineno) for c in candidates if c in known and c != module]
    return found


def test_every_module_has_a_floor():
    assert [m for m in modules() if m != PACKAGE_FACADE and floor(m) is None] == []


def test_no_lower_floor_imports_a_higher_one():
    known = modules()
    upward = [
        f"{module} ({FLOORS[floor(module)][0]}) imports {target} ({FLOORS[floor(target)][0]}) at line {line}"
        for module, path in known.items()
        if module != PACKAGE_FACADE
        for target, line in imports(module, path, known)
        if floor(target) is not None and floor(target) > floor(module)
    ]
    assert upward == []


def test_no_import_cycles():
    known = modules()
    graph = {module: {target for target, _ in imports(module, path, known)} for module, path in known.items()}
    cycles = []
    for start in graph:  # a path back to the start through the import graph is a cycle
        stack, seen = [(start, (start,))], set()
        while stack:
            node, trail = stack.pop()
            for target in graph[node]:
                if target == start:
                    cycles.append(" -> ".join((*trail, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*trail, target)))
    assert cycles == []
