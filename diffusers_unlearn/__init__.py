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
"""

__version__ = "0.1.0"

from . import hub
from . import pipeline as _pipeline  # noqa: E402
from .adapter import UnlearningAdapter
from .erasure import erase
from .errors import (
    AdapterFormatError,
    AdapterNameError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    ConcurrentUpdateError,
    DownloadError,
    InterferenceError,
    InvalidConceptError,
    ResolveError,
    UnlearningError,
    UnsupportedPipelineError,
    VerificationError,
)
from .export import export_kohya
from .families import FAMILIES, ModelFamily
from .interference import InterferenceReport, check_interference, merge_deviation
from .methods import ClosedFormConfig, DistillConfig
from .pipeline import LoadedUnlearning, load_unlearning, unlearning, unload_unlearning
from .prompts import DEFAULT_TEMPLATES
from .stack import UnlearningStack

_pipeline._install()

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
    "InterferenceError",
    "InvalidConceptError",
    "ResolveError",
    "LoadedUnlearning",
    "ModelFamily",
    "UnlearningAdapter",
    "UnlearningError",
    "UnlearningStack",
    "UnsupportedPipelineError",
    "VerificationError",
    "__version__",
    "check_interference",
    "erase",
    "export_kohya",
    "hub",
    "load_unlearning",
    "merge_deviation",
    "unlearning",
    "unload_unlearning",
]
