"""diffusers-unlearn: continual, locality-aware concept removal for diffusers pipelines.

Each removal is a small LoRA adapter, saved in diffusers' own format, made on top of the removals already
loaded so that earlier ones stay removed and related concepts stay intact.

Example:
    ```py
    >>> import diffusers_unlearn  # adds pipe.load_unlearning / pipe.unload_unlearning / pipe.unlearning
    >>> adapter = diffusers_unlearn.erase(pipe, "Van Gogh", neighbors=["Monet", "Cezanne"])
    >>> adapter.save_pretrained("no-van-gogh")
    >>> pipe.load_unlearning("no-van-gogh")
    ```

Importing the package is cheap (no torch, no diffusers): the public names below are imported on first use, like
diffusers' own `_LazyModule`, so that `diffusers-unlearn --help` answers at once. A new public name goes into
`_LAZY` (and `__all__`), not into an import at the top of this file.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from .errors import (
    AdapterFormatError,
    AdapterNameError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    ConcurrentUpdateError,
    DownloadError,
    InterferenceError,
    InteropError,
    InteropWarning,
    InvalidArgumentError,
    InvalidConceptError,
    InvalidTypeError,
    MissingDependencyError,
    RemovalUndoneWarning,
    ResolveError,
    UnknownCheckError,
    UnlearningError,
    UnlearningWarning,
    UnsupportedPipelineError,
    VerificationError,
    WeakRemovalWarning,
)

_LAZY: dict[str, str] = {
    "DEFAULT_TEMPLATES": "prompts",
    "FAMILIES": "families",
    "ModelFamily": "families",
    "ClosedFormConfig": "methods",
    "DistillConfig": "methods",
    "HardenConfig": "methods.harden",
    "InterferenceReport": "interference",
    "check_interference": "interference",
    "merge_deviation": "interference",
    "LoadedUnlearning": "pipeline",
    "load_unlearning": "pipeline",
    "unlearning": "pipeline",
    "unload_unlearning": "pipeline",
    "UnlearningAdapter": "adapter",
    "UnlearningStack": "stack",
    "erase": "erasure",
    "export_kohya": "export",
    "hub": "hub",  # the module itself
    "workflows": "workflows",  # the module itself
}
"""Public name -> the module (in this package) that defines it."""

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports these on first use
    from . import hub, workflows
    from .adapter import UnlearningAdapter
    from .erasure import erase
    from .export import export_kohya
    from .families import FAMILIES, ModelFamily
    from .interference import InterferenceReport, check_interference, merge_deviation
    from .methods import ClosedFormConfig, DistillConfig
    from .methods.harden import HardenConfig
    from .pipeline import LoadedUnlearning, load_unlearning, unlearning, unload_unlearning
    from .prompts import DEFAULT_TEMPLATES
    from .stack import UnlearningStack


def __getattr__(name: str):
    """Imports a public name on first use (PEP 562) and keeps it, so later lookups are plain attribute reads."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{module_name}", __name__)
    value = module if name == module_name else getattr(module, name)
    globals()[name] = value
    if _PIPELINE_UTILS in sys.modules:  # the module needed diffusers: the real pipeline members cost nothing more now
        _install_pipeline_members()
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# ------------------------------------------------------------------------ pipe.load_unlearning and friends
# `import diffusers_unlearn` must add the pipeline members whichever of diffusers and this package is imported first,
# without importing diffusers itself. Once diffusers defines `DiffusionPipeline`, three small forwarding members
# are set on it; the first use of any of them (or of any public name here) imports `.pipeline` and lets its
# `_install` put the real ones in their place.
_MEMBERS = ("load_unlearning", "unload_unlearning", "unlearning")
_PIPELINE_UTILS = "diffusers.pipelines.pipeline_utils"
_installed = False


def _install_pipeline_members():
    """Puts the real members on `DiffusionPipeline` (once) and returns the `.pipeline` module."""
    global _installed
    pipeline = importlib.import_module(".pipeline", __name__)
    if not _installed:
        _installed = True
        cls = pipeline.DiffusionPipeline
        for member in _MEMBERS:
            existing = cls.__dict__.get(member)
            if getattr(getattr(existing, "fget", existing), "_forwarding", False):
                delattr(cls, member)
        pipeline._install()
    return pipeline


def _forwarding_members(cls) -> None:
    """Sets members on `cls` (diffusers' `DiffusionPipeline`) that install the real ones on first use."""

    def load_unlearning(self, *args, **kwargs):
        return _install_pipeline_members().load_unlearning(self, *args, **kwargs)

    def unload_unlearning(self, *args, **kwargs):
        return _install_pipeline_members().unload_unlearning(self, *args, **kwargs)

    def unlearning(self):
        return _install_pipeline_members().unlearning(self)

    for function in (load_unlearning, unload_unlearning, unlearning):
        function._forwarding = True
    members = {
        "load_unlearning": load_unlearning,
        "unload_unlearning": unload_unlearning,
        "unlearning": property(unlearning, doc="The removals loaded on this pipeline (see `diffusers_unlearn`)."),
    }
    for member, value in members.items():
        if member not in cls.__dict__:
            setattr(cls, member, value)


class _AfterDiffusersPipelines(importlib.abc.MetaPathFinder):
    """Runs `_forwarding_members` on `DiffusionPipeline` as soon as diffusers has defined it."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _PIPELINE_UTILS:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _forwarding_members(module.DiffusionPipeline)

        spec.loader.exec_module = exec_module
        return spec


if _PIPELINE_UTILS in sys.modules:  # diffusers' pipelines came first: install for real
    _install_pipeline_members()
else:
    sys.meta_path.insert(0, _AfterDiffusersPipelines())


__all__ = [
    "DEFAULT_TEMPLATES",
    "FAMILIES",
    "InterferenceReport",
    "AdapterFormatError",
    "AdapterNameError",
    "AdapterNotFoundError",
    "BaseModelMismatchError",
    "ClosedFormConfig",
    "ConcurrentUpdateError",
    "DownloadError",
    "DistillConfig",
    "HardenConfig",
    "InterferenceError",
    "InteropError",
    "InteropWarning",
    "InvalidArgumentError",
    "InvalidConceptError",
    "InvalidTypeError",
    "MissingDependencyError",
    "UnknownCheckError",
    "ResolveError",
    "LoadedUnlearning",
    "ModelFamily",
    "RemovalUndoneWarning",
    "UnlearningAdapter",
    "UnlearningError",
    "UnlearningWarning",
    "UnlearningStack",
    "UnsupportedPipelineError",
    "VerificationError",
    "WeakRemovalWarning",
    "__version__",
    "check_interference",
    "erase",
    "export_kohya",
    "hub",
    "load_unlearning",
    "merge_deviation",
    "unlearning",
    "unload_unlearning",
    "workflows",
]
