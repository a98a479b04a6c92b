"""Changing a chain published on the Hub: [`append`] a removal, [`remove`] one; each is one conditional commit.

Both read the chain at the branch head (verified, as every read is), change it through `UnlearningStack`'s own
`append` / `remove`, and write it back with `parent_commit=<that head>`: if anything landed in between, the Hub
refuses the commit and nothing is overwritten. Removals the change does not touch (and entries pinned in other
repos) are kept as they are, not uploaded again.

To publish a removal or a whole chain, use their `push_to_hub`; to read one, `from_pretrained` or
`pipe.load_unlearning`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Unpack

from huggingface_hub import CommitInfo, constants

from .adapter import UnlearningAdapter, load_removals, read_removals
from .errors import AdapterNameError, BaseModelMismatchError, ConcurrentUpdateError, InvalidArgumentError
from .hub.card import CARD_NAME, model_card
from .hub.commit import commit_files
from .hub.download import ResolvedEntry, download, head
from .hub.download import resolve_entries as _resolve_entries
from .hub.options import HubKwargs, HubOptions, write_options
from .manifest import (
    MANIFEST_NAME,
    entry_for,
    files_of,
    is_commit,
    is_repo_id,
    join,
    manifest_bytes,
    manifest_of,
    manifest_path,
    read_manifest,
)
from .stack import UnlearningStack

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from .interference import InterferenceReport

logger = logging.getLogger(__name__)

__all__ = ["append", "remove"]

DEFAULT_RETRIES = 3


@dataclass
class _Item:
    """One removal of a chain being written: its manifest entry, and a local folder to upload (or `None`)."""

    adapter: UnlearningAdapter
    entry: dict[str, Any]
    upload: Path | None = None


def append(
    repo_id: str,
    removal: UnlearningAdapter | str | os.PathLike,
    *,
    source_revision: str | None = None,
    retry: bool | int = False,
    branch: str | None = None,
    commit_message: str | None = None,
    report: InterferenceReport | None = None,
    **hub_kwargs: Unpack[HubKwargs],
) -> CommitInfo:
    """Appends one removal to a chain on the Hub, safely against concurrent appends.

    The chain is read at the branch head, checked (every file, base fingerprint, unique names) and written back with
    `parent_commit=head`: if another append landed in between, the Hub refuses the commit and nothing is
    overwritten. With `retry`, the append is re-applied on the new head.

    Args:
        repo_id (`str`): The chain's repo, `"org/name"` (publish it first with `push_to_hub`).
        removal ([`UnlearningAdapter`], `str` or `os.PathLike`): The removal: an object or folder (its files are
            uploaded into the chain), or another repo's id: then the chain references it, pinned to the commit
            `source_revision` points to now, with the sha256 of its files.
        source_revision (`str`, *optional*): Branch, tag or commit of `removal` when it is a repo id; resolved to a
            commit once, and that commit is recorded.
        retry (`bool` or `int`, defaults to `False`): On a concurrent update, re-read and retry (`True`:
            `DEFAULT_RETRIES` times, or that many times). A warning names the removals that landed meanwhile,
            which the new removal was not made on top of.
        branch (`str`, *optional*): The chain's branch; default `"main"`.
        commit_message (`str`, *optional*): Default `"Append <name>"`.
        report ([`InterferenceReport`], *optional*): Interference check of the whole new chain, for the card.
        hub_kwargs: [`HubOptions`]: `token`, `endpoint`, `cache_dir`.

    Returns:
        `CommitInfo`: the new commit.

    Raises:
        ConcurrentUpdateError: The chain moved while appending, and `retry` is off or used up; nothing was written.
        AdapterNameError: The chain already holds a removal of that name.
        BaseModelMismatchError: The removal was made for other base weights than the chain's.
        AdapterNotFoundError, AdapterFormatError: The chain or the removal cannot be read or verified.

    Example:
        ```py
        >>> pipe.load_unlearning("org/no-sevens")
        >>> red = diffusers_unlearn.erase(pipe, "red")  # made on top of the chain
        >>> append("org/no-sevens", red, retry=True)
        >>> append("org/no-sevens", "org/no-cat", source_revision="v2")  # pinned reference
        ```
    """
    options, branch = write_options(hub_kwargs, branch)
    branch = branch or constants.DEFAULT_REVISION
    attempts = 1 + (DEFAULT_RETRIES if retry is True else int(retry))
    if attempts < 1:
        raise InvalidArgumentError(f"`retry` must be a bool or a number of retries >= 0, got {retry!r}.")
    seen: set[str] | None = None
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(removal, UnlearningAdapter):
            new = _staged(removal, Path(scratch), "")
        else:
            new = _pin(str(removal), source_revision, options, Path(scratch))
        for attempt in range(1, attempts + 1):
            current = head(repo_id, options, branch=branch, hint="publish the chain first (`push_to_hub`), ")
            items = _read_chain(repo_id, options, current)
            stack = UnlearningStack([item.adapter for item in items])
            if seen is not None:
                _warn_unseen(new.adapter, [n for n in stack.names if n not in seen])
            seen = set(stack.names)
            try:
                stack.append(new.adapter)
            except AdapterNameError as error:
                raise AdapterNameError(f"{repo_id!r} already holds a removal named {new.adapter.name!r}.") from error
            except BaseModelMismatchError as error:
                raise BaseModelMismatchError(f"{error} (the chain {repo_id!r})") from error
            for position, item in enumerate(items, 1):  # a single removal at the root becomes the chain's first
                if item.entry["path"] == "." and "repo_id" not in item.entry:
                    item.entry = {**item.entry, "path": f"adapters/{position:03d}-{item.adapter.name}"}
            if "repo_id" not in new.entry:
                new.entry["path"] = f"adapters/{len(items) + 1:03d}-{new.adapter.name}"
            message = commit_message or f"Append {new.adapter.name}"
            try:
                return _commit_chain(repo_id, [*items, new], options, branch, current, message, report)
            except ConcurrentUpdateError:
                if attempt == attempts:
                    raise
                logger.info("%s moved while appending %s; retrying on the new head", repo_id, new.adapter.name)
    raise ConcurrentUpdateError(f"{repo_id!r} moved while appending; nothing was written.")  # pragma: no cover


def remove(
    repo_id: str,
    name: str,
    *,
    pipe: DiffusionPipeline | None = None,
    resolve: bool = True,
    branch: str | None = None,
    commit_message: str | None = None,
    report: InterferenceReport | None = None,
    **hub_kwargs: Unpack[HubKwargs],
) -> CommitInfo:
    """Withdraws a removal from a chain on the Hub: a new commit without it (see [`UnlearningStack.remove`]).

    Removals made on top of it are re-solved without it when `pipe` (the base pipeline) is given, and uploaded;
    untouched entries (including references to other repos) are kept as they are. The commit is conditional on
    the head that was read (`parent_commit`). Earlier commits still hold the removal: withdrawing it stops new
    pulls of the branch from loading it, it does not erase history.

    Args:
        repo_id (`str`): The chain's repo.
        name (`str`): The removal to withdraw.
        pipe (`DiffusionPipeline`, *optional*), resolve (`bool`): As in [`UnlearningStack.remove`].
        branch, commit_message, report, hub_kwargs: As in [`append`].

    Raises:
        ConcurrentUpdateError: The chain moved meanwhile; nothing was written.
        AdapterNameError, ResolveError: As in [`UnlearningStack.remove`].

    Example:
        ```py
        >>> remove("org/no-sevens", "no-red", pipe=pipe)
        ```
    """
    options, branch = write_options(hub_kwargs, branch)
    branch = branch or constants.DEFAULT_REVISION
    current = head(repo_id, options, branch=branch)
    items = _read_chain(repo_id, options, current)
    stack = UnlearningStack([item.adapter for item in items])
    stack.remove(name, pipe=pipe, resolve=resolve)
    with tempfile.TemporaryDirectory() as scratch:
        kept = []
        for position, adapter in enumerate(stack, 1):  # `remove` keeps the objects it does not change
            same = next((item for item in items if item.adapter is adapter), None)
            kept.append(same or _staged(adapter, Path(scratch), f"adapters/{position:03d}-{adapter.name}"))
        return _commit_chain(repo_id, kept, options, branch, current, commit_message or f"Remove {name}", report)


# ------------------------------------------------------------------------------------------------ internals
def _read_chain(repo_id: str, options: HubOptions, commit: str) -> list[_Item]:
    """The chain at `commit`, verified, with the manifest entries to keep (empty if the repo has no manifest)."""
    folder = download(repo_id, options.at(commit))
    if manifest_path(folder) is None:
        return []
    entries = read_manifest(folder)["entries"]
    adapters = read_removals(folder, options)
    return [
        _Item(adapter, dict(entry), folder if entry["path"] == "." and "repo_id" not in entry else None)
        for adapter, entry in zip(adapters, entries, strict=True)
    ]


def _staged(adapter: UnlearningAdapter, scratch: Path, path: str) -> _Item:
    """The removal's files written under `scratch`, to be uploaded to `path` in the repo."""
    folder = Path(tempfile.mkdtemp(dir=scratch))
    adapter._write_files(folder)
    entry = entry_for(
        folder, path, name=adapter.name, concept=adapter.concept, adapter_id=adapter.metadata.get("adapter_id")
    )
    return _Item(adapter, entry, upload=folder)


def _pin(source: str, source_revision: str | None, options: HubOptions, scratch: Path) -> _Item:
    """A removal to append: a local folder (uploaded into the chain) or a Hub repo pinned to one commit."""
    if Path(source).exists() or not is_repo_id(source):  # a local folder (or nothing: AdapterNotFoundError)
        if source_revision is not None:
            raise InvalidArgumentError(f"`source_revision` applies to Hub repos; {source} is a local folder.")
        return _staged(_single(load_removals(source), source), scratch, "")
    commit = source_revision or constants.DEFAULT_REVISION
    if not is_commit(commit):  # a branch or tag, resolved once: this commit is what the chain records
        commit = head(source, options, branch=commit)
    folder = download(source, options.at(commit))
    adapter = _single(read_removals(folder, options), f"{source}@{commit[:10]}")
    if manifest_path(folder) is None:  # a removal saved by other means: pinned by the sha256 of its files now
        entry = entry_for(
            folder, ".", name=adapter.name, concept=adapter.concept, adapter_id=adapter.metadata.get("adapter_id")
        )
    else:
        (entry,) = read_manifest(folder)["entries"]
    if "repo_id" not in entry:
        entry = {**entry, "repo_id": source, "revision": commit}
    return _Item(adapter, dict(entry))


def _single(adapters: list[UnlearningAdapter], source: str) -> UnlearningAdapter:
    if len(adapters) != 1:
        raise AdapterNameError(
            f"{source} holds a chain of {len(adapters)} removals; a chain entry references one. Append its "
            "removals one by one, or publish the one you want with `push_to_hub`."
        )
    return adapters[0]


def _commit_chain(
    repo_id: str,
    items: list[_Item],
    options: HubOptions,
    branch: str,
    parent_commit: str,
    message: str,
    report: InterferenceReport | None,
) -> CommitInfo:
    """One commit writing the chain `items` on top of `parent_commit`: new files, manifest, card, stale files gone."""
    adapters = [item.adapter for item in items]
    UnlearningStack(adapters)  # one base model, unique names
    files: dict[str, Path | bytes] = {}
    keep = set()
    for item in items:
        if "repo_id" in item.entry:
            continue
        for name in files_of(item.entry):
            path_in_repo = join(item.entry["path"], name)
            keep.add(path_in_repo)
            if item.upload is not None:
                files[path_in_repo] = item.upload / name
    entries = [item.entry for item in items]
    first = adapters[0].metadata if adapters else {}
    manifest = manifest_of(entries, base_model=first.get("base_model"), base_fingerprint=first.get("base_fingerprint"))
    files[MANIFEST_NAME] = manifest_bytes(manifest)
    files[CARD_NAME] = str(model_card(adapters, repo_id=repo_id, entries=entries, report=report)).encode()
    return commit_files(
        repo_id, files, options=options, parent_commit=parent_commit, message=message, branch=branch, keep=keep
    )


def _warn_unseen(adapter: UnlearningAdapter, landed: list[str]) -> None:
    parents = {parent["name"] for parent in adapter.metadata.get("parents", [])}
    unseen = [name for name in landed if name not in parents]
    if unseen:
        warnings.warn(
            f"While appending {adapter.name!r}, {unseen} landed on the chain first; {adapter.name!r} was not made on "
            "top of them. Check the chain for interference: `UnlearningStack.from_pretrained(repo).check(pipe)`.",
            stacklevel=3,
        )


# ------------------------------------------------------------------------------ deprecated (`hub.<name>`)
# The former `diffusers_unlearn.hub` functions whose call changed; `hub.__getattr__` warns and returns these.
def _push_stack(
    stack: UnlearningStack | Sequence[UnlearningAdapter], repo_id: str, *, revision: str | None = None, **kwargs
) -> CommitInfo:
    return UnlearningStack(stack).push_to_hub(repo_id, branch=revision, **kwargs)


def _push_adapter(adapter: UnlearningAdapter, repo_id: str, *, revision: str | None = None, **kwargs) -> CommitInfo:
    return adapter.push_to_hub(repo_id, branch=revision, **kwargs)


def _load(source: str | os.PathLike, **hub_kwargs: Unpack[HubKwargs]) -> list[UnlearningAdapter]:
    return load_removals(source, HubOptions.of(hub_kwargs))


def _resolve_stack(folder: str | os.PathLike, **hub_kwargs: Unpack[HubKwargs]) -> list[ResolvedEntry]:
    root = Path(folder).parent if Path(folder).is_file() else Path(folder)
    return _resolve_entries(root, read_manifest(root), HubOptions.of(hub_kwargs))
