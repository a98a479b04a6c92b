"""`HubOptions`: the Hub settings of a read or a push, in one typed object."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, TypedDict

from ..errors import InvalidTypeError


class HubKwargs(TypedDict, total=False):
    """The Hub keyword arguments every public loader and pusher takes (`**hub_kwargs`); see [`HubOptions`]."""

    revision: str | None
    token: str | bool | None
    cache_dir: str | os.PathLike | None
    local_files_only: bool
    endpoint: str | None


@dataclass(frozen=True)
class HubOptions:
    """Where and how to reach the Hub, as `huggingface_hub` takes it.

    Public calls take these as keyword arguments (`from_pretrained("org/name", revision="v3", token=...)`,
    `pipe.load_unlearning(..., local_files_only=True)`); they are gathered once, with [`HubOptions.of`], and
    handed to the one place that talks to the Hub.

    Args:
        revision (`str`, *optional*): Branch, tag or commit to read; default `"main"`. Resolved to one commit.
        token (`str` or `bool`, *optional*): Hub token (private repos, pushes); `None`: the stored one; `False`:
            none.
        cache_dir (`str` or `os.PathLike`, *optional*): Hub cache; default `HF_HUB_CACHE`.
        local_files_only (`bool`, defaults to `False`): Use the cache only (as `HF_HUB_OFFLINE=1` does).
        endpoint (`str`, *optional*): Hub endpoint; default `HF_ENDPOINT`.

    Example:
        ```py
        >>> HubOptions.of({"revision": "v3", "local_files_only": True})
        HubOptions(revision='v3', token=None, cache_dir=None, local_files_only=True, endpoint=None)
        ```
    """

    revision: str | None = None
    token: str | bool | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    endpoint: str | None = None

    @classmethod
    def of(cls, hub_kwargs: Mapping[str, Any]) -> HubOptions:
        """The options from a call's `**hub_kwargs`.

        Raises:
            InvalidTypeError: An argument that is not a Hub option (a typo, or an option of another call).
        """
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(hub_kwargs) - known)
        if unknown:
            raise InvalidTypeError(f"Unexpected keyword argument(s) {unknown}; the Hub options are {sorted(known)}.")
        return cls(**hub_kwargs)

    def at(self, revision: str | None) -> HubOptions:
        """The same options at another revision (e.g. the commit a branch was resolved to)."""
        return replace(self, revision=revision)


def write_options(hub_kwargs: Mapping[str, Any], branch: str | None) -> tuple[HubOptions, str | None]:
    """The options of a write to the Hub, and the branch it writes to.

    A write reads at no `revision`: the former push / append / withdraw calls named the branch `revision=`, which
    still works, with a FutureWarning (pointing at the caller of the public function that calls this).
    """
    options = HubOptions.of(hub_kwargs)
    if options.revision is not None:
        warnings.warn("`revision=` names the branch to write to: pass `branch=` instead.", FutureWarning, 3)
        branch, options = branch or options.revision, options.at(None)
    return options, branch
