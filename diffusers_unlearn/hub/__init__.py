"""Hugging Face Hub transport: options, the local-or-Hub resolver, model cards, commits, and the mixin that gives
`UnlearningAdapter` and `UnlearningStack` their `from_pretrained` / `save_pretrained` / `push_to_hub`.

Everything network goes through `huggingface_hub` (`snapshot_download`, `HfApi.create_commit` with
`parent_commit`, `ModelCard`); nothing here speaks HTTP itself, and nothing here knows what a removal holds: the
manifest is read and checked by `diffusers_unlearn.manifest`, and the chain workflows that change a published
chain (`append`, `remove`) live in `diffusers_unlearn.workflows`. See docs/architecture.md.

Public here: [`HubOptions`] (and `HubKwargs`, the keyword arguments it is made from), [`download`] (the one
"local folder or Hub repo?" resolver), [`resolve_entries`] (a manifest's entries as verified local folders, for
audits), [`model_card`] and [`HubMixin`]. The commit helpers are in `hub.commit`.

The functions this module held before (`load_stack`, `load_adapter`, `load`, `push_stack`, `push_adapter`,
`append_to_hub`, `revoke`, `resolve_stack`, `read_manifest`) are kept as deprecated aliases (`FutureWarning`).
"""

from __future__ import annotations

import importlib
import warnings

from .card import model_card
from .download import ResolvedEntry, download, resolve_entries
from .mixin import HubMixin
from .options import HubKwargs, HubOptions

_DEPRECATED = {
    # former name: (module, what it is now, what to call instead)
    "load_stack": ("stack", "UnlearningStack.from_pretrained", "UnlearningStack.from_pretrained(source, ...)"),
    "load_adapter": ("adapter", "UnlearningAdapter.from_pretrained", "UnlearningAdapter.from_pretrained(source, ...)"),
    "load": ("workflows", "_load", "UnlearningStack.from_pretrained(source, ...) or pipe.load_unlearning(source)"),
    "push_stack": ("workflows", "_push_stack", "UnlearningStack(...).push_to_hub(repo_id, branch=..., ...)"),
    "push_adapter": ("workflows", "_push_adapter", "adapter.push_to_hub(repo_id, branch=..., ...)"),
    "append_to_hub": ("workflows", "append", "diffusers_unlearn.workflows.append(repo_id, removal, branch=..., ...)"),
    "revoke": ("workflows", "remove", "diffusers_unlearn.workflows.remove(repo_id, name, branch=..., ...)"),
    "resolve_stack": ("workflows", "_resolve_stack", "hub.resolve_entries(folder, read_manifest(folder), options)"),
    "read_manifest": ("manifest", "read_manifest", "diffusers_unlearn.manifest.read_manifest(folder)"),
    "is_repo_id": ("manifest", "is_repo_id", "diffusers_unlearn.manifest.is_repo_id(text)"),
}


def __getattr__(name: str):
    """The deprecated names of the former `hub` module: a `FutureWarning`, then the function that replaced it."""
    if name not in _DEPRECATED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute, instead = _DEPRECATED[name]
    warnings.warn(
        f"diffusers_unlearn.hub.{name} is deprecated and will be removed; use {instead}.", FutureWarning, stacklevel=2
    )
    value = importlib.import_module(f"..{module_name}", __name__)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


__all__ = ["HubKwargs", "HubMixin", "HubOptions", "ResolvedEntry", "download", "model_card", "resolve_entries"]
