"""The one place that decides "local folder or Hub repo?", downloads a repo at one commit, and turns a manifest's
entries into verified local folders."""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import AdapterNotFoundError, DownloadError, InvalidArgumentError, InvalidTypeError
from ..manifest import files_of, is_repo_id, join, verify
from .options import HubKwargs, HubOptions


@dataclass(frozen=True)
class ResolvedEntry:
    """One manifest entry, downloaded and verified (every file against its sha256).

    Attributes:
        entry (`dict`): The entry as written in the manifest.
        folder (`Path`): Local folder holding the removal's files.
        repo_id (`str | None`): The repo it lives in; `None` for the manifest's own folder.
        revision (`str | None`): The commit it is pinned to (40 hex digits); `None` for the manifest's own folder.
    """

    entry: dict[str, Any]
    folder: Path
    repo_id: str | None = None
    revision: str | None = None


def download(
    source: str | os.PathLike,
    options: HubOptions | None = None,
    *,
    allow_patterns: list[str] | None = None,
    **hub_kwargs: Unpack[HubKwargs],
) -> Path:
    """A local folder holding `source` at one commit: a local path is returned as is, a Hub repo id is downloaded.

    A branch or tag is resolved to a commit once, by `snapshot_download`; the returned folder is the cache's
    `snapshots/<commit>` folder, so `folder.name` is the commit that was downloaded. With `local_files_only=True`
    or `HF_HUB_OFFLINE=1` nothing is requested: the cached snapshot is used (`refs/<revision>` maps a branch or tag
    to its commit).

    Args:
        source (`str` or `os.PathLike`): A local folder (or file), or `"org/name"` on the Hub.
        options ([`HubOptions`], *optional*): Revision, token, cache, offline switch and endpoint; or pass them as
            keyword arguments (`download("org/name", revision="v3")`).
        allow_patterns (`list[str]`, *optional*): Download only these files (see `snapshot_download`).

    Returns:
        `Path`: the folder (or the local file that was passed).

    Raises:
        AdapterNotFoundError: No such folder or repo, no such revision, or not cached while offline.
        InvalidArgumentError: A `revision` for a local folder.
        DownloadError: The transfer failed part way (after `huggingface_hub`'s own retries).

    Example:
        ```py
        >>> folder = download("org/no-sevens", revision="v3")
        >>> folder.name  # the commit "v3" pointed to
        '4f0c...'
        ```
    """
    if options is not None and hub_kwargs:
        raise InvalidTypeError("Pass the Hub options either as `options=` or as keyword arguments, not both.")
    options = options or HubOptions.of(hub_kwargs)
    local = Path(source)
    if local.exists():
        if options.revision is not None:
            raise InvalidArgumentError(
                f"`revision={options.revision!r}` applies to Hub repos; {local} is a local path."
            )
        return local
    if not is_repo_id(str(source)):
        raise AdapterNotFoundError(
            f'No folder at {str(source)!r}, and it is not a Hub repo id ("org/name"). Pass a folder written by '
            "save_pretrained, or the id of a repo written by push_to_hub."
        )
    repo_id, endpoint = str(source), options.endpoint
    offline = options.local_files_only or offline_mode()
    try:
        folder = snapshot_download(
            repo_id,
            revision=options.revision,
            token=options.token,
            cache_dir=options.cache_dir,
            local_files_only=offline,
            endpoint=endpoint,
            allow_patterns=allow_patterns,
        )
    except RepositoryNotFoundError as error:
        raise AdapterNotFoundError(
            f"No Hub repo {repo_id!r}{_at(endpoint)}: check the name, and pass `token=` if it is private."
        ) from error
    except RevisionNotFoundError as error:
        raise AdapterNotFoundError(
            f"{repo_id!r} has no revision {options.revision!r}{_at(endpoint)}: pass one of its branches, tags or "
            "commits."
        ) from error
    except LocalEntryNotFoundError as error:
        raise AdapterNotFoundError(_not_cached(repo_id, options, offline, error)) from error
    except (HfHubHTTPError, OSError, *transport_errors()) as error:
        raise DownloadError(
            f"Downloading {repo_id!r}{_at(endpoint)} failed part way ({type(error).__name__}: {error}); nothing was "
            "loaded and no partial file is kept. Retry; huggingface_hub already resumed the transfer several times."
        ) from error
    return Path(folder)


def resolve_entries(root: Path, manifest: dict[str, Any], options: HubOptions) -> list[ResolvedEntry]:
    """Every entry of a manifest read from `root` as a local folder, each file verified against its sha256.

    Entries in `root` are checked where they are; entries pinned in other repos are downloaded at their commit
    (only their files) and checked the same way. Nothing is parsed: a file that fails its sha256 is never read.

    Raises:
        AdapterFormatError: A file is missing or does not match its sha256, or an unlisted removal file is present.
        AdapterNotFoundError, DownloadError: A pinned repo cannot be fetched (or is not cached while offline).
    """
    resolved = []
    for entry in manifest["entries"]:
        if "repo_id" in entry:
            snapshot = download(
                entry["repo_id"],
                options.at(entry["revision"]),
                allow_patterns=[join(entry["path"], name) for name in files_of(entry)],
            )
            item = ResolvedEntry(entry, snapshot / entry["path"], entry["repo_id"], entry["revision"])
            where = f"{entry['repo_id']}@{entry['revision'][:10]}:{entry['path']}"
        else:
            item = ResolvedEntry(entry, root / entry["path"])
            where = entry["path"] if entry["path"] != "." else str(root)
        verify(item.folder, entry, where)
        resolved.append(item)
    return resolved


def head(repo_id: str, options: HubOptions, *, branch: str | None = None, hint: str = "") -> str:
    """The commit a branch or tag of `repo_id` points to now (`branch`, else `options.revision`, else `"main"`).

    Raises:
        AdapterNotFoundError: No such repo, branch or tag.
    """
    revision = branch or options.revision or constants.DEFAULT_REVISION
    try:
        return api(options).repo_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError as error:
        raise AdapterNotFoundError(
            f"No Hub repo {repo_id!r}{_at(options.endpoint)}: {hint}check the name, or pass `token=` if it is private."
        ) from error
    except RevisionNotFoundError as error:
        raise AdapterNotFoundError(f"{repo_id!r} has no branch or tag {revision!r}{_at(options.endpoint)}.") from error


def api(options: HubOptions) -> HfApi:
    """The `HfApi` client for these options (endpoint and token)."""
    return HfApi(endpoint=options.endpoint, token=options.token)


def offline_mode() -> bool:
    """Whether `HF_HUB_OFFLINE` is on (read the way the installed `huggingface_hub` reads it)."""
    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx; httpx2 from version 2)."""
    found = []
    for name in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(name).TransportError)
    return tuple(found)


def _at(endpoint: str | None) -> str:
    return f" on {endpoint}" if endpoint else ""


def _not_cached(repo_id: str, options: HubOptions, offline: bool, error: Exception) -> str:
    where = f"{repo_id!r} (revision {options.revision or 'main'!r})"
    cache = options.cache_dir or constants.HF_HUB_CACHE
    if offline:
        switch = "HF_HUB_OFFLINE=1 is set" if offline_mode() else "local_files_only=True was passed"
        return (
            f"{where} is not in the Hugging Face cache at {cache}, and downloads are off ({switch}). Download it "
            f"once with network access (e.g. `UnlearningStack.from_pretrained({repo_id!r})` or "
            f"`hf download {repo_id}`), point HF_HUB_CACHE / cache_dir to a cache that holds it, or pass a local "
            f"folder written by save_pretrained. ({error})"
        )
    return (
        f"{where} could not be reached and is not in the Hugging Face cache at {cache}. Check the network and the "
        f"endpoint, or load it from a cache or folder that holds it. ({error})"
    )
