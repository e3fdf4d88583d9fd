"""Every import points down: the layer contracts in pyproject.toml, checked over the real imports
(import-linter builds the graph from the source, deferred imports inside functions included)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_import_points_down(monkeypatch, capsys):
    from importlinter.cli import lint_imports

    monkeypatch.chdir(ROOT)
    code = lint_imports(no_cache=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.count(" KEPT") == len(CONFIG["contracts"]) >= 4


def test_the_contracts_list_no_exceptions_and_leave_no_module_out():
    """No ``ignore_imports`` anywhere, and every module of ablate sits in a layer of the top
    contract: a new module cannot escape the check by not being listed."""
    assert all(
        "ignore_imports" not in c and "unmatched_ignore_imports_alerting" not in c
        for c in CONFIG["contracts"]
    )
    top = next(c for c in CONFIG["contracts"] if c["id"] == "layers")
    listed = {name.strip() for layer in top["layers"] for name in layer.split("|")}
    modules = {p.stem for p in (ROOT / "ablate").glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in (ROOT / "ablate").glob("*/__init__.py")}
    assert listed == modules | packages
