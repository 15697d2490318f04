"""The package's layers, checked on the source: what runs at a site (apps/) imports nothing of the
driver (flow/), and the round loop, persistence and results (flow/rounds, flow/persist,
flow/results) never import the commands layer (flow/commands). Every import counts, those inside
functions included, and so does a module name given to importlib.import_module or __import__."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _package(path: Path) -> list[str]:
    """The dotted package of a file under the repository, as `fedgrid.<folder>...`."""
    return ["fedgrid", *path.relative_to(REPO).parent.parts]


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones made absolute."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x / from ..y import z
                base = _package(path)[:len(_package(path)) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            # `from fedgrid import flow` imports fedgrid.flow: name each imported name under the module
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__"):
                out.append((node.lineno, node.args[0].value))
    return sorted(out)


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offenders(folders: list[str], forbidden: str) -> list[str]:
    return [f"{p.relative_to(REPO)}:{line}: imports {mod}" for folder in folders for p in _modules(folder)
            for line, mod in imported(p) if _under(mod, forbidden)]


def test_the_checker_sees_imports_everywhere_in_a_file(tmp_path):
    """Inside functions, relative, `from fedgrid import flow`, and importlib: all are found."""
    d = tmp_path / "apps"
    d.mkdir()
    f = d / "x.py"
    f.write_text("import os\n"
                 "def f():\n    from fedgrid.flow.rounds import validate\n"
                 "from fedgrid import flow\n"
                 "import importlib\nimportlib.import_module('fedgrid.flow.persist')\n")
    got = [mod for _, mod in imported(f)]
    assert [m for m in got if _under(m, "fedgrid.flow")] == ["fedgrid.flow.rounds.validate", "fedgrid.flow",
                                                             "fedgrid.flow.persist"]


def test_site_code_imports_nothing_of_the_driver():
    """A site installs and imports apps/ only: an import of flow/ there (even one inside a function,
    reached only on some path) would pull the driver's dependencies into every worker, or fail."""
    assert _modules("apps"), "no apps/ modules found"
    assert _offenders(["apps"], "fedgrid.flow") == []


@pytest.mark.parametrize("folder", ["flow/rounds", "flow/persist", "flow/results"])
def test_the_round_loop_persistence_and_results_never_import_the_commands(folder):
    """flow/commands/ is the top layer (the CLI and the Python API): it imports the rounds, the
    persistence and the results; nothing below imports it back."""
    assert _modules(folder), f"no {folder}/ modules found"
    assert _offenders([folder], "fedgrid.flow.commands") == []
