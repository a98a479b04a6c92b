"""The API docs match the code: every signature they show, and every call in their examples, against `inspect`.

docs/api.md is the whole public API on one page; the guide pages (`GUIDES`) say it in full. What counts, in inline
code and in code blocks of those pages:

- a *signature*: `name(parameters)` with defaults (`=`), a `*`, `**kwargs` or a return (`-> Type`), e.g.
  `adapter.save_pretrained(save_directory, *, dtype=None, push_to_hub=False, **push_kwargs) -> Path`. Its
  parameters must be the real ones, in order, with the same kinds (positional / keyword-only / `*args` /
  `**kwargs`) and the same defaults. A trailing `...` parameter means "and more" (a prefix is shown), and a
  default written `...` is not compared;
- a *call* (an example: `stack.check(pipe)`, or any call in a Python code block): it must bind to the real
  signature, so a documented argument the code does not take (`fuse=True`) fails.

`name` is resolved as `diffusers_unlearn.X`, a public name, `pipe.X` (the pipeline member: `diffusers_unlearn.X`
without its `pipe` argument), `adapter.X` / `UnlearningAdapter.X`, `stack.X` / `UnlearningStack.X`, `report.X`
(`InterferenceReport`), `hub.X`, or a name of `diffusers_unlearn.evaluation` / `.digits` / `.digits.concepts`.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

import diffusers_unlearn as du

DOCS = Path(__file__).resolve().parents[1] / "docs"
API = DOCS / "api.md"
GUIDES = ("erasing.md", "loading.md", "stacks.md", "models.md", "evaluation.md", "hub.md")
"""Pages whose signatures and calls are checked as api.md's are."""
_INSTANCES = {
    "pipe": None,  # pipeline members: the module-level function, `pipe` bound
    "adapter": "UnlearningAdapter",
    "stack": "UnlearningStack",
    "report": "InterferenceReport",
}
_MODULES = ("diffusers_unlearn", "diffusers_unlearn.evaluation", "diffusers_unlearn.digits",
            "diffusers_unlearn.digits.concepts")  # fmt: skip
_NAME = re.compile(r"(?<![\w.])([A-Za-z_][\w.]*)\(")


def resolve(qualified: str, context: str | None = None):
    """`(object, drop_first)`: the documented callable, and whether its first parameter is implied (`pipe.X`).

    `context` is the module the section is about (its heading names it): bare names are looked up there first.
    """
    parts = qualified.split(".")
    if parts[0] == "diffusers_unlearn":
        parts = parts[1:]
    if not parts:
        return None, False
    head, rest = parts[0], parts[1:]
    if head in _INSTANCES and rest:
        if head == "pipe":
            return getattr(du, rest[0], None) if len(rest) == 1 else None, True
        owner = getattr(du, _INSTANCES[head])
        found = getattr(owner, rest[0], None) if len(rest) == 1 else None
        is_static = isinstance(inspect.getattr_static(owner, rest[0], None), (classmethod, staticmethod))
        return found, found is not None and not is_static and inspect.isfunction(found)
    for module_name in ([context, f"{context}.concepts"] if context else []) + list(_MODULES):
        found = _module(module_name)
        for part in parts:
            found = getattr(found, part, None) or (
                _module(f"{found.__name__}.{part}") if inspect.ismodule(found) else None
            )
            if found is None:
                break
        if found is not None and callable(found) and getattr(found, "__module__", "").startswith("diffusers_unlearn"):
            unbound = len(parts) > 1 and inspect.isclass(getattr(du, parts[0], None)) and inspect.isfunction(found)
            return found, unbound  # `UnlearningAdapter.save_pretrained(...)`: `self` is implied
    return None, False


def _module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def real_parameters(found, drop_first: bool) -> list[inspect.Parameter]:
    parameters = list(inspect.signature(found).parameters.values())
    return parameters[1:] if drop_first else parameters


def _parenthesised(text: str):
    """`(name, text between the parentheses, return annotation or None)` for each `name(...)` in `text`."""
    for match in _NAME.finditer(text):
        depth, quote, i = 1, None, match.end()
        while i < len(text) and depth:
            char = text[i]
            if quote:
                quote = None if char == quote else quote
            elif char in "\"'":
                quote = char
            elif char in "([{":
                depth += 1
            elif char in ")]}":
                depth -= 1
            i += 1
        if not depth:
            returned = re.match(r"\s*->\s*([\w\[\]., |]+)", text[i:])
            yield match.group(1), text[match.end() : i - 1], returned.group(1).strip() if returned else None


def documented(text: str, context: str | None = None):
    """`(name, parameters, return, is_signature, object, drop_first)` for each `name(...)` in `text` that resolves."""
    for name, params, returned in _parenthesised(text):
        found, drop_first = resolve(name, context)
        if found is None:
            continue
        listed = re.sub(r"(^|,)\s*\.\.\.\s*$", "", params.strip())
        tree = _parameters(listed)
        defaults = [*tree.defaults, *(d for d in tree.kw_defaults if d is not None)] if tree else []
        names = [a.arg for a in tree.args + tree.kwonlyargs] if tree else []
        real = [p.name for p in real_parameters(found, drop_first)] if tree else []
        signature_like = tree is not None and (
            returned is not None  # `-> Type`, `*`, `**kwargs` or a trailing `...` mark a signature;
            or tree.vararg is not None
            or tree.kwarg is not None
            or bool(tree.kwonlyargs)
            or listed != params.strip()
            or (names == real and all(map(_literal, defaults)))  # so does listing every parameter with literals
        )  # else it is a call (`ClosedFormConfig(rank=4)`, `stack.remove(name, pipe=pipe)`), checked by binding
        yield name, params, returned, signature_like, found, drop_first


def sections() -> list[tuple[str, str | None]]:
    """`(text, module)` per `##` section of docs/api.md and the guides; `module` is the one its heading names."""
    found = []
    text = "\n".join((DOCS / page).read_text() for page in ("api.md", *GUIDES))
    for part in re.split(r"^(?=## )", text, flags=re.MULTILINE):
        heading = re.match(r"## .*?`(diffusers_unlearn(?:\.\w+)+)`", part)
        found.append((part, heading.group(1) if heading else None))
    return found


def spans() -> list[tuple[str, str | None]]:
    """Inline code spans, and the text of code blocks that are not valid Python (signature blocks), with the module
    of their section."""
    found = []
    for text, module in sections():
        blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
        outside = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
        found += [(span.replace("\n", " "), module) for span in re.findall(r"`([^`]+)`", outside)]  # may wrap
        for _, code in blocks:
            try:
                ast.parse(code)
            except SyntaxError:
                found.append((code, module))
    return found


def python_blocks() -> list[tuple[str, str | None]]:
    parsed = []
    for text, module in sections():
        for code in re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            try:
                ast.parse(code)
            except SyntaxError:
                continue
            parsed.append((code, module))
    return parsed


def _default(text: str):
    import torch

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return eval(text, {"torch": torch, "diffusers_unlearn": du})  # names the docs use, e.g. torch.float32


def compare(name: str, params: str, found, drop_first: bool) -> list[str]:
    """What differs between a documented parameter list and the real one ([] when they match)."""
    listed = re.sub(r"(^|,)\s*\.\.\.\s*$", "", params.strip())
    open_ended = listed != params.strip()
    tree = _parameters(listed)
    kinds = inspect.Parameter
    doc = [(a.arg, kinds.POSITIONAL_OR_KEYWORD) for a in tree.args]
    doc += [(tree.vararg.arg, kinds.VAR_POSITIONAL)] if tree.vararg else []
    doc += [(a.arg, kinds.KEYWORD_ONLY) for a in tree.kwonlyargs]
    doc += [(tree.kwarg.arg, kinds.VAR_KEYWORD)] if tree.kwarg else []
    defaults = dict(zip([a.arg for a in tree.args][len(tree.args) - len(tree.defaults) :], tree.defaults, strict=True))
    defaults |= {a.arg: d for a, d in zip(tree.kwonlyargs, tree.kw_defaults, strict=True) if d is not None}
    real = real_parameters(found, drop_first)
    problems = []
    shown = [(p.name, p.kind) for p in real][: len(doc)] if open_ended else [(p.name, p.kind) for p in real]
    if doc != shown:
        problems.append(f"{name}: documented {[n for n, _ in doc]} ({_kinds(doc)}), real {[p.name for p in real]} "
                        f"({_kinds([(p.name, p.kind) for p in real])})")  # fmt: skip
        return problems
    for parameter in real:
        if parameter.name not in defaults:  # a default may go unmentioned (a field list); a wrong one may not
            continue
        node = defaults[parameter.name]
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            continue  # "mode=...": default not shown
        if parameter.default is inspect.Parameter.empty:
            problems.append(f"{name}: {parameter.name} is documented with a default but is required")
            continue
        if isinstance(node, ast.BinOp):  # method="concat" | "svd" | "joint": the default is the first
            while isinstance(node, ast.BinOp):
                node = node.left
        value = _default(ast.unparse(node))
        if value != parameter.default:
            problems.append(f"{name}: {parameter.name} defaults to {parameter.default!r}, documented {value!r}")
    return problems


def _literal(node: ast.AST) -> bool:
    """A default as signatures write them: a constant, a container of them, `torch.float32`, `"a" | "b"`."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, (ast.Tuple, ast.List)):
        return all(map(_literal, node.elts))
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "torch"
    if isinstance(node, ast.BinOp):
        return _literal(node.left) and _literal(node.right)
    return False


def _parameters(text: str) -> ast.arguments | None:
    try:
        return ast.parse(f"def f({text}): pass").body[0].args
    except SyntaxError:
        return None


def _kinds(pairs) -> str:
    return ", ".join(str(kind).split(".")[-1].lower() for _, kind in pairs)


def test_documented_signatures_match_the_code():
    problems, checked = [], []
    for span, module in spans():
        for name, params, _, signature_like, found, drop_first in documented(span, module):
            if signature_like:  # else a call with values (`stack.remove("no-red", pipe=pipe)`), checked below
                problems += compare(name, params, found, drop_first)
                checked.append(name)
    assert not problems, "the API docs disagree with the code:\n" + "\n".join(problems)
    for expected in ("diffusers_unlearn.erase", "adapter.save_pretrained", "UnlearningAdapter.from_pretrained",
                     "stack.save_pretrained", "UnlearningStack.from_pretrained"):  # fmt: skip
        assert expected in checked, f"docs/api.md shows no signature of {expected}"
    assert any(name.endswith("load_unlearning") for name in checked)


def _bind(name: str, call: ast.Call, found, drop_first: bool) -> str | None:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None  # *args / **kwargs in the example: cannot be checked statically
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):
        return None
    if drop_first:
        signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    elided = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in call.args)  # `f(repo_id, ...)`
    positional = [a for a in call.args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
    try:
        bind = signature.bind_partial if elided else signature.bind
        bind(*[None] * len(positional), **{k.arg: None for k in call.keywords})
    except TypeError as error:
        return f"{name}({ast.unparse(call)[len(name) + 1 :]}: {error}"
    named = {p.name for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD}
    unknown = {k.arg for k in call.keywords} - named - set(du.hub.HubKwargs.__annotations__)
    if "hub_kwargs" in signature.parameters and unknown:  # `**hub_kwargs` takes the Hub options only
        return f"{name}({ast.unparse(call)[len(name) + 1 :]}: {sorted(unknown)} are not Hub options"
    return None


def _calls(code: str, context: str | None = None):
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            found, drop_first = resolve(name, context)
            if found is not None:
                yield name, node, found, drop_first


def test_documented_calls_bind_to_the_code():
    problems = []
    sources = python_blocks()
    for span, module in spans():
        try:
            sources.append((ast.unparse(ast.parse(span.strip(), mode="eval")), module))
        except SyntaxError:
            continue
    for source, module in sources:
        for name, call, found, drop_first in _calls(source, module):
            problem = _bind(name, call, found, drop_first)
            problems += [problem] if problem else []
    assert not problems, "the API docs call the API with arguments it does not take:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", [n for n in du.__all__ if not n.startswith("_")])
def test_every_public_name_is_documented(name):
    assert re.search(rf"\b{re.escape(name)}\b", API.read_text()), f"docs/api.md does not mention {name}"


def test_the_checker_catches_a_wrong_signature():
    """The comparison itself: a removed argument, a renamed one, a wrong default, a missing keyword-only marker."""
    save = du.UnlearningAdapter.save_pretrained
    assert compare("s", "save_directory, *, dtype=None, push_to_hub=False, **push_kwargs", save, True) == []
    assert compare("s", "save_directory, ...", save, True) == []
    assert compare("s", "dir, *, dtype=None, push_to_hub=False, **push_kwargs", save, True)
    assert compare("s", "save_directory, *, dtype=None, push_to_hub=True, **push_kwargs", save, True)
    assert compare("s", "save_directory, dtype=None, push_to_hub=False, **push_kwargs", save, True)
    call = ast.parse("pipe.load_unlearning('x', fuse=True)").body[0].value
    found, drop_first = resolve("pipe.load_unlearning")
    assert _bind("pipe.load_unlearning", call, found, drop_first) is not None


def test_repr_is_one_line_and_names_what_matters(tmp_path):
    import torch

    a = torch.zeros(2, 8)
    b = torch.zeros(4, 2)
    weights = {"unet.x.attn2.to_k.lora_A.weight": a, "unet.x.attn2.to_k.lora_B.weight": b}
    metadata = {"name": "no-seven", "concept": "seven", "method": "closed_form", "rank": 2,
                "base_fingerprint": "f", "base_model": str(tmp_path)}  # fmt: skip
    adapter = du.UnlearningAdapter(lora_weights=weights, metadata=metadata)
    text = repr(adapter)
    assert "\n" not in text and len(text) < 200
    for part in ("no-seven", "seven", "closed_form", "rank=2", "layers=1", "96 B"):
        assert part in text, (part, text)
    assert adapter.metadata["base_model"] == tmp_path.name  # a name, never the absolute local path
    three = du.UnlearningAdapter(lora_weights=weights, metadata={**metadata, "name": "no-three"})
    stack = du.UnlearningStack([adapter, three])
    assert repr(stack) == f"UnlearningStack(2 removals: no-seven -> no-three, base={tmp_path.name!r})"


def test_report_table_keeps_full_names_and_heatmap_shares_one_scale(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import torch

    names = ["no-blue-three-bold", "no-blue-three-thin"]  # alike in their first 10 characters
    zero = torch.zeros(2, 2)
    report = du.InterferenceReport(names, zero, torch.tensor([[0.0, 0.9], [0.1, 0.0]]), zero, torch.zeros(2),
                                   torch.tensor([0.9, 0.1]), torch.zeros(2), 0.2, 0.5, 0.5)  # fmt: skip
    table = str(report)
    assert all(table.count(n) >= 2 for n in names)  # in the header and as a row label
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    report.plot(tmp_path / "heat.png")
    images = [axis.images[0] for axis in figures[0].axes if axis.images]
    assert len(images) == 3 and len({image.get_clim() for image in images}) == 1
    outlined = [len(axis.patches) for axis in figures[0].axes if axis.images]
    assert outlined == [0, 1, 0]  # shift 0.9 > 0.5: one cell outlined
