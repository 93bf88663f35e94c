"""Layers that only point down: an import-graph check over the package's subpackages.

Layers, lowest first: base (config, models, masks, data, loss, schedules, fileio, distributed,
hostmem), the DeepSpeed backend, then checkpoint / interop / eval / observability / perf, then
train, launch, cli. A module may import its own layer or a lower one; no two subpackages may
import each other, even through others (no cycles). Imports inside functions count too.
"""

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.fast

PACKAGE = REPO / "ijepa_ds"
LAYERS = [
    ["config", "models", "masks", "data", "loss", "schedules", "fileio", "distributed", "hostmem"],
    ["backend"],
    ["checkpoint", "interop", "eval", "observability", "perf"],
    ["train"],
    ["launch"],
    ["cli"],
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# The package root may import anything, and so may any ``__main__`` module (``python -m
# ijepa_ds.train`` is the CLI's ``train``): entry points sit above every layer.
ENTRY_POINTS = {"__init__", "__main__", "__version__"}
# Exceptions, listed one by one so that any other upward import or cycle fails the test.
KNOWN_UPWARD: set[str] = set()
KNOWN_CYCLES: set[tuple[str, str]] = set()


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges(package: Path = PACKAGE) -> dict[str, set[tuple[str, str]]]:
    """unit -> {(imported unit, file)} for every ``ijepa_ds`` import in ``package``."""
    edges: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        src = _unit(".".join(p for p in rel.parts if p != "__init__") or "ijepa_ds")
        if src in ENTRY_POINTS or rel.parts[-1] == "__main__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for name in names:
                if name.startswith("ijepa_ds.") and _unit(name) != src:
                    edges.setdefault(src, set()).add((_unit(name), str(path.relative_to(package))))
    return edges


def upward_imports(edges) -> list[str]:
    return sorted(
        f"{where}: {src} (layer {LAYER[src]}) imports {dst} (layer {LAYER[dst]})"
        for src, targets in edges.items()
        for dst, where in targets
        if LAYER[dst] > LAYER[src]
    )


def cycles(edges) -> list[tuple[str, str]]:
    graph = {src: {dst for dst, _ in targets} for src, targets in edges.items()}

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            node = todo.pop()
            if node == b:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    units = sorted(graph)
    return [
        (a, b)
        for i, a in enumerate(units)
        for b in units[i + 1 :]
        if reaches(a, b) and reaches(b, a)
    ]


def test_every_subpackage_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    units = {u for u in units if not u.startswith("__") and u != "py"} - ENTRY_POINTS
    assert units <= set(LAYER), sorted(units - set(LAYER))


def test_imports_only_point_down():
    assert set(upward_imports(import_edges())) - KNOWN_UPWARD == set()


def test_no_cycles_between_subpackages():
    assert set(cycles(import_edges())) - KNOWN_CYCLES == set()


def test_the_check_catches_an_upward_import_and_a_cycle(tmp_path):
    pkg = tmp_path / "ijepa_ds"
    for unit, body in {
        "checkpoint": "from ijepa_ds.train import x\n",
        "train": "import ijepa_ds.checkpoint\n",
    }.items():
        (pkg / unit).mkdir(parents=True)
        (pkg / unit / "__init__.py").write_text(body)
    edges = import_edges(pkg)
    assert upward_imports(edges) == [
        "checkpoint/__init__.py: checkpoint (layer 2) imports train (layer 3)"
    ]
    assert cycles(edges) == [("checkpoint", "train")]


def importers_of(top: str, package: Path = PACKAGE) -> list[str]:
    """Files of ``package`` (relative paths) that import module ``top`` or one below it."""

    def imported(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        return [node.module or ""] if isinstance(node, ast.ImportFrom) else []

    return [
        str(p.relative_to(package))
        for p in sorted(package.rglob("*.py"))
        if any(
            name.split(".")[0] == top
            for node in ast.walk(ast.parse(p.read_text()))
            for name in imported(node)
        )
    ]


def test_only_the_backend_imports_deepspeed():
    importers = importers_of("deepspeed")
    assert importers and all(p.startswith("backend/") for p in importers), importers


def test_only_the_cli_knows_argparse():
    importers = importers_of("argparse")
    assert importers and all(p.startswith("cli/") for p in importers), importers


def test_every_file_the_code_cites_is_in_the_repo():
    """Docstrings cite ``docs/*.md`` and ``ijepa_ds/...`` paths: each must exist."""
    cited = set()
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        cited.update(re.findall(r"\b(docs/[\w./-]+\.md)\b", text))
        cited.update(re.findall(r"`(ijepa_ds/[\w/]+\.py)`", text))
    missing = sorted(c for c in cited if not (PACKAGE.parent / c).exists())
    assert cited and missing == [], missing
