"""Imports point one way (docs/architecture.md): read from the source with `ast`, nothing imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "diffusers_unlearn"

# module -> modules it must not import, at module level or inside a function (TYPE_CHECKING blocks aside)
FORBIDDEN = {
    "manifest": {"hub", "adapter", "stack", "pipeline", "workflows"},
    "hub": {"adapter", "stack", "pipeline", "workflows", "merge", "erasure"},
    "adapter": {"stack", "pipeline", "workflows", "merge", "erasure"},
    "merge": {"stack", "pipeline", "workflows"},
    "stack": {"pipeline", "workflows", "erasure"},
    "pipeline": {"stack", "workflows", "erasure"},
    "methods": {"pipeline", "stack", "workflows", "erasure"},
    "interference": {"pipeline", "stack"},
    "constraints": {"pipeline", "stack"},
    "export": {"pipeline", "stack"},
}
CORE = set(FORBIDDEN) | {"errors", "layers", "families", "workflows", "peft_inject", "erasure"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: list[str]) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of the package's own modules, as their first component.

    `package`: the path of the package `path` is in, below `diffusers_unlearn` (`[]` for a top-level module).
    """
    tree = ast.parse(path.read_text())

    def target(node: ast.ImportFrom) -> set[str]:
        if node.level == 0:
            if not (node.module or "").startswith("diffusers_unlearn"):
                return set()
            parts = node.module.split(".")[1:]
        else:
            parts = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
        if parts:
            return {parts[0]}
        return {alias.name for alias in node.names}  # `from . import hub`

    top, late = set(), set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            top |= target(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            late |= {name for sub in ast.walk(node) if isinstance(sub, ast.ImportFrom) for name in target(sub)}
    return top, late


MODULES = {path: _name(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _imports_of(path: Path) -> tuple[set[str], set[str]]:
    name = MODULES[path].split(".") if MODULES[path] else []
    return _imports(path, name if path.name == "__init__.py" else name[:-1])


@pytest.mark.parametrize("path", [p for p, name in MODULES.items() if name.split(".")[0] in FORBIDDEN], ids=str)
def test_lower_modules_do_not_import_higher_ones(path):
    top, late = _imports_of(path)
    owner = MODULES[path].split(".")[0]
    assert not (top | late) & FORBIDDEN[owner], f"{MODULES[path]} imports {sorted((top | late) & FORBIDDEN[owner])}"


@pytest.mark.parametrize("path", [p for p, name in MODULES.items() if name.split(".")[0] in CORE], ids=str)
def test_core_modules_import_nothing_of_the_package_inside_a_function(path):
    _, late = _imports_of(path)
    assert not late, f"{MODULES[path]} imports {sorted(late)} inside a function: fix the ownership, not the import"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("from .adapter import A\n\ndef f():\n    from .pipeline import load_unlearning\n")
    assert _imports(module, []) == ({"adapter"}, {"pipeline"})
    assert _imports(module, ["hub"]) == ({"hub"}, {"hub"})  # `.adapter` inside hub/ is hub.adapter
