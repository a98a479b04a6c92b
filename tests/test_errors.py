"""Every error the package raises is one of `diffusers_unlearn.errors`' classes (issue 14, point 4).

The test reads the package's source (no import of the modules it checks) and looks at every `raise` statement:
`raise X(...)`, `raise X` and `raise X(...) from error` must name a subclass of `UnlearningError`; a bare `raise`
and `raise error` of an exception caught by an enclosing `except ... as error` re-raise what came in and are fine.
The few built-ins Python itself requires are allowed by name below, each with its reason.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import NamedTuple

import pytest

from diffusers_unlearn import errors

PACKAGE = Path(errors.__file__).parent

OURS = {
    name
    for name, value in vars(errors).items()
    if inspect.isclass(value) and issubclass(value, errors.UnlearningError)
}
"""The class names a `raise` may use."""

ALLOWED: dict[tuple[str, str], str] = {
    ("__getattr__", "AttributeError"): "PEP 562 and the data model: `__getattr__` (of a module or a class) must "
    "raise AttributeError for an unknown name; hasattr, getattr(x, name, default) and the import machinery rely on it",
    ("<abstract>", "NotImplementedError"): "an abstract method (a body that is only the raise) tells a subclass "
    "what to implement",
}
"""(enclosing function, exception) -> why the built-in is the right error there, in any module of the package."""


def _name(node: ast.expr) -> str | None:
    """`X` of `X`, `X(...)`, `errors.X`, `errors.X(...)`; None for anything else (a call's result, a subscript)."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class Raise(NamedTuple):
    line: int
    function: str
    name: str | None  # the exception class's name, None where it cannot be told from the source
    source: str
    only: bool  # the only statement of its function (besides a docstring)
    reraise: bool = False  # `raise`, or `raise error` inside `except ... as error`


class _Raises(ast.NodeVisitor):
    """Collects one `Raise` per `raise` statement of a module."""

    def __init__(self):
        self.functions: list[ast.AST] = []
        self.caught: list[str] = []
        self.found: list[Raise] = []
        self.assigned: dict[str, str | None] = {}

    def visit_FunctionDef(self, node):
        self.functions.append(node)
        outer = self.assigned
        self.assigned = {}
        self.generic_visit(node)
        self.assigned = outer
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ExceptHandler(self, node):
        self.caught.append(node.name or "")
        self.generic_visit(node)
        self.caught.pop()

    def visit_Assign(self, node):  # `error = SomeError(...)` then `raise error`
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.assigned[target.id] = _name(node.value) if isinstance(node.value, ast.Call) else None
        self.generic_visit(node)

    def visit_Raise(self, node):
        function = self.functions[-1] if self.functions else None
        where = function.name if function is not None else "<module>"
        body = [s for s in function.body if not isinstance(s, ast.Expr) or not isinstance(s.value, ast.Constant)]
        only = function is not None and len(body) == 1 and body[0] is node
        source = ast.unparse(node).splitlines()[0]
        if node.exc is None or (isinstance(node.exc, ast.Name) and node.exc.id in self.caught):
            self.found.append(Raise(node.lineno, where, None, source, only, reraise=True))
        elif isinstance(node.exc, ast.Name) and node.exc.id in self.assigned:
            self.found.append(Raise(node.lineno, where, self.assigned[node.exc.id], source, only))
        else:
            self.found.append(Raise(node.lineno, where, _name(node.exc), source, only))


def _allowed(found: Raise) -> tuple[str, str] | None:
    """The allow-list entry that covers a raise, if any."""
    keys = [(found.function, found.name)] + ([("<abstract>", found.name)] if found.only else [])
    return next((key for key in keys if key in ALLOWED), None)


def offending_raises(root: Path = PACKAGE) -> list[str]:
    """`file:line in function: source` of every `raise` that names no `UnlearningError` class and is not allowed."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        visitor = _Raises()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for found in visitor.found:
            if found.reraise or found.name in OURS or _allowed(found) is not None:
                continue
            problems.append(f"{relative}:{found.line} in {found.function}: {found.source}")
    return problems


def test_every_raise_in_the_package_is_an_errors_class():
    problems = offending_raises()
    files = sorted({p.split(":")[0] for p in problems})
    assert not problems, (
        f"{len(problems)} raise(s) in {files} use no class of diffusers_unlearn/errors.py (add one there if none "
        "fits, deriving from UnlearningError and the built-in callers expect):\n" + "\n".join(problems)
    )


def test_the_allow_list_is_still_needed():
    """An allow-list entry whose raise is gone would hide a future one: each must still match a raise."""
    used = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        visitor = _Raises()
        visitor.visit(ast.parse(path.read_text()))
        used |= {_allowed(r) for r in visitor.found}
    assert set(ALLOWED) <= used, f"stale allow-list entries: {sorted(set(ALLOWED) - used)}"


def test_the_walker_catches_what_it_should(tmp_path):
    """The checker itself, on a small package: each kind of raise it must flag, and each it must let through."""
    (tmp_path / "mod.py").write_text(
        "from . import errors\n"
        "def bad_value():\n    raise ValueError('x')\n"
        "def bad_bare_class():\n    raise KeyError\n"
        "def bad_from(e):\n    raise RuntimeError('y') from e\n"
        "def bad_assigned():\n    error = TypeError('z')\n    raise error\n"
        "def bad_not_only():\n    x = 1\n    raise NotImplementedError\n"
        "def good_ours():\n    raise errors.InvalidArgumentError('a')\n"
        "def good_ours_from(e):\n    raise AdapterFormatError('b') from e\n"
        "def good_assigned():\n    error = InvalidTypeError('c')\n    raise error\n"
        "def good_reraise():\n    try:\n        pass\n    except OSError as error:\n        raise error\n"
        "def good_bare_reraise():\n    try:\n        pass\n    except OSError:\n        raise\n"
        "def good_abstract(self):\n    '''Subclasses implement it.'''\n    raise NotImplementedError\n"
    )
    flagged = [p.split(" in ")[1].split(":")[0] for p in offending_raises(tmp_path)]
    assert flagged == ["bad_value", "bad_bare_class", "bad_from", "bad_assigned", "bad_not_only"]


@pytest.mark.parametrize("name", sorted(OURS))
def test_every_error_is_exported_and_documented(name):
    import diffusers_unlearn

    assert name in diffusers_unlearn.__all__ and getattr(diffusers_unlearn, name) is getattr(errors, name)
    assert (errors.__dict__[name].__doc__ or "").strip(), f"{name} has no docstring"
