"""The packages are layers and imports point one way: schemas -> config -> runtime -> {ingress, workers,
registry, history} -> cli. Read from the source (ast), so an import added anywhere, even inside a function,
is seen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "modelbus"
LAYERS = {
    "schemas": 0,
    "config": 1,
    "runtime": 2,
    "ingress": 3,
    "workers": 3,
    "registry": 3,
    "history": 3,
    "cli": 4,
}
# imports between packages of one layer that are part of the design (everything else between peers is not)
PEER_IMPORTS = {
    # the NSQL worker keeps a copy of the task history in its embedded engine (history: datasets)
    ("workers", "history"),
}


def imported_packages(source: str) -> set[str]:
    """The modelbus packages (``modelbus.<package>``) a module's source imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "modelbus" and len(parts) > 1:
                found.add(parts[1])
    return found


def violations(package: str, imported: set[str]) -> list[str]:
    """Which of ``imported`` a module of ``package`` may not import."""
    mine = LAYERS[package]
    return sorted(
        other
        for other in imported
        if other != package
        and (LAYERS[other] > mine or (LAYERS[other] == mine and (package, other) not in PEER_IMPORTS))
    )


def modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def test_every_package_is_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer_or_a_peer(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    assert violations(package, imported_packages(path.read_text())) == []


def test_the_rule_catches_an_upward_import_and_a_peer_import() -> None:
    runtime = "from modelbus.workers.nsql.guard import check\nimport modelbus.schemas.chat\n"
    assert violations("runtime", imported_packages(runtime)) == ["workers"]
    history = "def f():\n    from modelbus.workers.nsql import names\n"
    assert violations("history", imported_packages(history)) == ["workers"]
    assert violations("workers", imported_packages("from modelbus.history.sink import HistorySink")) == []
    assert violations("ingress", imported_packages("from modelbus.registry import Registry")) == ["registry"]
