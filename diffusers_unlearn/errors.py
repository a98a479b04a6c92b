"""Every error the package raises on purpose, in one hierarchy users can catch.

All of them derive from [`UnlearningError`]; each also derives from the built-in exception a
diffusers user would expect (`ValueError` for bad arguments, `TypeError` for arguments of the wrong kind,
`FileNotFoundError` for missing files, `ImportError` for a missing optional dependency), so existing
`except ValueError:` code keeps working. `tests/test_errors.py` walks the package's `raise` statements and keeps
it so.
"""

from __future__ import annotations


class UnlearningError(Exception):
    """Base class of every error raised by diffusers-unlearn."""


class UnsupportedPipelineError(UnlearningError, TypeError):
    """The pipeline's model family cannot be edited (yet)."""


class InvalidConceptError(UnlearningError, ValueError):
    """The concept, its aliases, prompts or neighbours cannot be used as given."""


class InvalidArgumentError(UnlearningError, ValueError):
    """An argument or a setting is out of range, unknown, or does not fit with another: a method's config
    (`ClosedFormConfig`, `DistillConfig`, `HardenConfig`), `AttackSettings`, an unknown method, distance, attack or
    scorer name, an output path of the wrong kind. The message names the argument and what it accepts."""


class InvalidTypeError(UnlearningError, TypeError):
    """An argument is of a kind the function does not take (e.g. a `DistillConfig` for `method="closed_form"`); the
    message lists the kinds it does take."""


class UnknownCheckError(InvalidArgumentError, KeyError):
    """A scorer was asked about an attribute it does not predict (a check `{"shape": ...}` for a scorer that knows
    `digit`, `colour` and `stroke`); the message lists the attributes it predicts."""


class MissingDependencyError(UnlearningError, ImportError):
    """An optional dependency of the feature asked for is not installed; the message names the `pip install`."""


class AdapterFormatError(UnlearningError, ValueError):
    """A saved removal is malformed: missing or corrupted file, unknown format version, bad tensors."""


class AdapterNotFoundError(UnlearningError, FileNotFoundError):
    """No removal was found where one was expected."""


class BaseModelMismatchError(UnlearningError, ValueError):
    """A removal was made for other base weights than the pipeline's."""


class AdapterNameError(UnlearningError, ValueError):
    """An adapter name is already in use on the pipeline, or unknown to it."""


class DownloadError(UnlearningError, OSError):
    """A download from the Hub failed part way (connection lost, server error); nothing was loaded."""


class VerificationError(UnlearningError, RuntimeError):
    """A removal was loaded but the model does not carry its edit (after a load, or after `erase` made another on
    top): refusing to pretend it is active."""


class InteropError(UnlearningError, RuntimeError):
    """A diffusers operation would silently change what a loaded removal erases (apply it twice, or write a folder
    that reloads broken); it was refused and nothing was changed. The message says what to do instead."""


class ResolveError(UnlearningError, ValueError):
    """Removals cannot be re-solved (joint merge, withdrawal): redacted, not closed-form, or no pipeline given."""


class InterferenceError(UnlearningError, ValueError):
    """Removals interfere beyond the check's thresholds; `error.report` holds the [`InterferenceReport`]."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class ConcurrentUpdateError(UnlearningError, RuntimeError):
    """A chain on the Hub changed while an update to it was prepared (another push or append landed first); nothing
    was written. `append_to_hub(..., retry=True)` re-applies an append on the new head.

    Attributes:
        repo_id (`str | None`): The repo.
        parent_commit (`str | None`): The head the update was prepared on.
    """

    def __init__(self, message: str, *, repo_id: str | None = None, parent_commit: str | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.parent_commit = parent_commit


class UnlearningWarning(UserWarning):
    """Base class of every warning diffusers-unlearn emits: something a removal depends on may not hold.

    Turn them into errors where a removal must never silently weaken:
    `warnings.simplefilter("error", diffusers_unlearn.UnlearningWarning)`.
    """


class WeakRemovalWarning(UnlearningWarning):
    """A removal barely moves its concept's noise predictions: it may not erase anything (see `erase`)."""


class RemovalUndoneWarning(UnlearningWarning):
    """A removal distilled on top of others measured, in training, that it takes back a large share of an earlier
    removal's effect on that removal's forget prompts: the earlier concept may be generated again (see `erase`)."""


class InteropWarning(UnlearningWarning):
    """A diffusers LoRA operation (`disable_lora`, `set_adapters` with a weight, `delete_adapters`, ...) took a
    loaded removal out of effect, fully or in part, as it was asked to: the concept can be generated again. The
    message names the removal and how to put it back; `pipe.unlearning` shows `verified=False` meanwhile."""
