"""Hugging Face Hub: publish removals and chains, pull them back verified, append safely (DESIGN §5).

Everything network goes through `huggingface_hub` (`HfApi.create_repo`, `HfApi.create_commit` with
`parent_commit`, `snapshot_download`, `hf_hub_download`, `ModelCard`); nothing here speaks HTTP itself.

A repo written here holds::

    README.md                          # model card: base_model, library_name diffusers, tags, removals, figures
    unlearning_stack.json              # manifest: ordered entries, each pinned by the sha256 of every file
    pytorch_lora_weights.safetensors   # a single removal (`push_adapter`): its files at the root, so that
    unlearning.json                    #   vanilla `pipe.load_lora_weights("org/repo")` loads it
    unlearning_probes.safetensors
    adapters/001-no-cat/...            # a chain (`push_stack`, `append_to_hub`): one folder per removal

A manifest entry may live in another repo: `{"name": ..., "repo_id": "org/no-cat", "revision": "<40-hex commit>",
"path": ".", "sha256": ..., "files": {...}}`. Branches and tags are resolved to a commit once, when the entry is
written; a pull downloads exactly that commit, checks every file's sha256 and the base-model fingerprint, and only
then returns the removals (loading is all or nothing).

Every function takes `endpoint=` (default: `HF_ENDPOINT`, read by `huggingface_hub` at import) and `token=`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import torch
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .adapter import FORMAT_VERSION, METADATA_NAME, PROBES_NAME, WEIGHTS_NAME, UnlearningAdapter, sha256_file
from .errors import (
    AdapterFormatError,
    AdapterNameError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    ConcurrentUpdateError,
    DownloadError,
)
from .stack import MANIFEST_NAME, UnlearningStack, check_parents

if TYPE_CHECKING:
    from .interference import InterferenceReport

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
ADAPTER_FILES = (WEIGHTS_NAME, METADATA_NAME, PROBES_NAME)
CARD_TAGS = ["lora", "concept-erasure", "unlearning", "diffusers-unlearn", "text-to-image"]
DEFAULT_RETRIES = 3

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Removals = UnlearningStack | UnlearningAdapter | Sequence[UnlearningAdapter]


@dataclass(frozen=True)
class ResolvedEntry:
    """One manifest entry, downloaded and verified (every file against its sha256).

    Attributes:
        entry (`dict`): The entry as written in the manifest.
        folder (`Path`): Local folder holding the removal's files.
        repo_id (`str | None`): The repo it lives in; `None` for the chain's own folder.
        revision (`str | None`): The commit it is pinned to (40 hex digits); `None` for the chain's own folder.
    """

    entry: dict[str, Any]
    folder: Path
    repo_id: str | None = None
    revision: str | None = None


@dataclass
class _Item:
    """One removal of a chain being written: its manifest entry, and a local folder to upload (or `None`)."""

    adapter: UnlearningAdapter
    entry: dict[str, Any]
    upload: Path | None = None


# ------------------------------------------------------------------------------------------------- download
def is_repo_id(source: str | os.PathLike) -> bool:
    """Whether `source` reads as a Hub repo id (`"org/name"`) rather than a local path.

    Example:
        ```py
        >>> is_repo_id("org/no-van-gogh"), is_repo_id("./removals")
        (True, False)
        ```
    """
    return isinstance(source, str) and bool(_REPO_ID.match(source)) and ".." not in source


def _offline() -> bool:
    check = getattr(constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(constants.HF_HUB_OFFLINE)


def download(
    repo_id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local folder holding `repo_id_or_dir` at one commit (a local folder is returned as is).

    A branch or tag is resolved to a commit once, by `snapshot_download`; the returned folder is the cache's
    `snapshots/<commit>` folder, so `folder.name` is the commit that was downloaded. With `local_files_only=True`
    or `HF_HUB_OFFLINE=1` nothing is requested: the cached snapshot is used (`refs/<revision>` maps a branch or tag
    to its commit).

    Args:
        repo_id_or_dir (`str` or `os.PathLike`): `"org/name"` on the Hub, or a local folder.
        revision (`str`, *optional*): Branch, tag or commit; default `"main"`.
        token (`str` or `bool`, *optional*): Hub token (private repos); default the stored one.
        cache_dir (`str` or `os.PathLike`, *optional*): Hub cache; default `HF_HUB_CACHE`.
        local_files_only (`bool`, defaults to `False`): Use the cache only.
        endpoint (`str`, *optional*): Hub endpoint; default `HF_ENDPOINT`.
        allow_patterns (`list[str]`, *optional*): Download only these files (see `snapshot_download`).

    Returns:
        `Path`: the folder.

    Raises:
        AdapterNotFoundError: No such folder or repo, no such revision, or not cached while offline.

    Example:
        ```py
        >>> folder = download("org/no-sevens", revision="v3")
        >>> folder.name  # the commit "v3" pointed to
        '4f0c...'
        ```
    """
    local = Path(repo_id_or_dir)
    if local.exists():
        if revision is not None:
            raise ValueError(f"`revision={revision!r}` applies to Hub repos; {local} is a local folder.")
        return local
    if not is_repo_id(str(repo_id_or_dir)):
        raise AdapterNotFoundError(
            f'No folder at {str(repo_id_or_dir)!r}, and it is not a Hub repo id ("org/name"). Pass a folder written '
            "by save_pretrained, or the id of a repo written by push_to_hub."
        )
    repo_id = str(repo_id_or_dir)
    offline = local_files_only or _offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
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
            f"{repo_id!r} has no revision {revision!r}{_at(endpoint)}: pass one of its branches, tags or commits."
        ) from error
    except LocalEntryNotFoundError as error:
        raise AdapterNotFoundError(_not_cached(repo_id, revision, cache_dir, offline, error)) from error
    except (HfHubHTTPError, OSError, *_transport_errors()) as error:
        raise DownloadError(
            f"Downloading {repo_id!r}{_at(endpoint)} failed part way ({type(error).__name__}: {error}); nothing was "
            "loaded and no partial file is kept. Retry; huggingface_hub already resumed the transfer several times."
        ) from error
    return Path(folder)


def _transport_errors() -> tuple[type[Exception], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx; httpx2 from version 2)."""
    found = []
    for name in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(importlib.import_module(name).TransportError)
    return tuple(found)


def _at(endpoint: str | None) -> str:
    return f" on {endpoint}" if endpoint else ""


def _not_cached(repo_id: str, revision: str | None, cache_dir, offline: bool, error: Exception) -> str:
    where = f"{repo_id!r} (revision {revision or 'main'!r})"
    cache = cache_dir or constants.HF_HUB_CACHE
    if offline:
        switch = "HF_HUB_OFFLINE=1 is set" if _offline() else "local_files_only=True was passed"
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


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a chain manifest (`unlearning_stack.json`) from a folder or the file itself.

    Raises:
        AdapterNotFoundError: No manifest there.
        AdapterFormatError: Malformed manifest, unknown format version, an unsafe path, a sha256 that is not one,
            or an entry in another repo that is not pinned to a commit.

    Example:
        ```py
        >>> [e["name"] for e in read_manifest(download("org/no-sevens"))["entries"]]
        ['no-seven', 'no-red']
        ```
    """
    path = Path(folder)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise AdapterNotFoundError(f"No {MANIFEST_NAME} in {path.parent}: it is not a chain of removals.")
    try:
        manifest = json.loads(path.read_text())
        version, entries = str(manifest["format_version"]), manifest["entries"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise AdapterFormatError(f"{path} is not a valid stack manifest: {error}") from error
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise AdapterFormatError(f"{path} has format version {version}; upgrade diffusers-unlearn to read it.")
    if not isinstance(entries, list):
        raise AdapterFormatError(f"{path}: `entries` must be a list.")
    for entry in entries:
        _check_entry(entry, path)
    return manifest


def _check_entry(entry: Any, source: Path) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("path"), str):
        raise AdapterFormatError(f"{source}: every entry needs a `name` and a `path`; got {entry!r}.")
    where = f"{source}, entry {entry['name']!r}"
    path = PurePosixPath(entry["path"])
    if path.is_absolute() or ".." in path.parts or "\\" in entry["path"]:
        raise AdapterFormatError(f"{where}: the path {entry['path']!r} must be relative and stay inside its repo.")
    files = entry.get("files", {WEIGHTS_NAME: entry.get("sha256")})
    if not isinstance(files, dict) or any(name not in ADAPTER_FILES for name in files):
        raise AdapterFormatError(f"{where}: `files` must map some of {list(ADAPTER_FILES)} to their sha256.")
    digests = [entry.get("sha256"), *files.values()]
    if not all(isinstance(d, str) and _SHA256.match(d) for d in digests) or files.get(WEIGHTS_NAME) != entry["sha256"]:
        raise AdapterFormatError(
            f"{where}: `sha256` (and `files`) must hold the hex sha256 of each file, consistently."
        )
    if ("repo_id" in entry) != ("revision" in entry):
        raise AdapterFormatError(f"{where}: an entry in another repo needs both `repo_id` and `revision`.")
    if "repo_id" in entry and not (is_repo_id(entry["repo_id"]) and _COMMIT.match(str(entry["revision"]))):
        raise AdapterFormatError(
            f"{where}: `revision` must pin a commit (40 hex digits) of a repo id `org/name`, got "
            f"{entry['repo_id']!r} @ {entry['revision']!r}. Branches and tags are resolved when the entry is written."
        )


def _join(path: str, name: str) -> str:
    return name if path in ("", ".") else f"{path.rstrip('/')}/{name}"


def _verify(folder: Path, entry: dict[str, Any], where: str) -> None:
    """Every file of the entry against its sha256; no unlisted adapter file may sit beside them."""
    files = entry.get("files", {WEIGHTS_NAME: entry["sha256"]})
    for name in ADAPTER_FILES:
        path = folder / name
        if name not in files:
            if "files" in entry and path.is_file():
                raise AdapterFormatError(
                    f"{where}/{name} is not listed in {MANIFEST_NAME}: it was added after the chain was written. "
                    "Refusing to load it; remove the file or re-publish the chain."
                )
            continue
        if not path.is_file():
            raise AdapterNotFoundError(f"{where}/{name} is missing; the manifest lists it.")
        if sha256_file(path) != files[name]:
            raise AdapterFormatError(
                f"{where}/{name} does not match the sha256 in {MANIFEST_NAME}: it was modified after the chain was "
                "written. Refusing to load it; restore the file (or delete it from the cache to download it again) "
                "or re-publish the chain."
            )


def resolve_stack(
    folder: str | os.PathLike,
    *,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> list[ResolvedEntry]:
    """Downloads the removals a manifest lists (its own folder's, and those pinned in other repos) and verifies them.

    Entries with `repo_id` are fetched at their pinned commit with `snapshot_download` (only their files). Every
    file is checked against its sha256 before this returns; nothing is loaded.

    Args:
        folder (`str` or `os.PathLike`): The chain's local folder (see [`download`]) or its manifest.
        token, cache_dir, local_files_only, endpoint: As in [`download`].

    Returns:
        `list[ResolvedEntry]`: the entries in chain order, each with the local folder of its files.

    Raises:
        AdapterNotFoundError: A listed file or repo is missing (or not cached while offline).
        AdapterFormatError: The manifest is malformed, or a file does not match its sha256.

    Example:
        ```py
        >>> for item in resolve_stack(download("org/no-sevens")):
        ...     print(item.entry["name"], item.repo_id, item.revision)
        no-seven None None
        no-red org/no-red 4f0c...
        ```
    """
    root = Path(folder)
    if root.is_file():
        root = root.parent
    hub = {"token": token, "cache_dir": cache_dir, "local_files_only": local_files_only, "endpoint": endpoint}
    return _resolve_entries(root, read_manifest(root), **hub)


def _resolve_entries(
    root: Path, manifest: dict[str, Any], *, token=None, cache_dir=None, local_files_only: bool = False, endpoint=None
) -> list[ResolvedEntry]:
    resolved = []
    for entry in manifest["entries"]:
        if "repo_id" in entry:
            files = entry.get("files", {WEIGHTS_NAME: entry["sha256"]})
            snapshot = download(
                entry["repo_id"],
                revision=entry["revision"],
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                endpoint=endpoint,
                allow_patterns=[_join(entry["path"], name) for name in files],
            )
            item = ResolvedEntry(entry, snapshot / entry["path"], entry["repo_id"], entry["revision"])
            where = f"{entry['repo_id']}@{entry['revision'][:10]}:{entry['path']}"
        else:
            item = ResolvedEntry(entry, root / entry["path"])
            where = entry["path"] if entry["path"] != "." else str(root)
        _verify(item.folder, entry, where)
        resolved.append(item)
    return resolved


def _load_items(
    folder: Path, *, token=None, cache_dir=None, local_files_only: bool = False, endpoint=None
) -> list[_Item]:
    """A chain's removals, verified (files, names, base fingerprint, parents) and loaded."""
    root = folder.parent if folder.is_file() else folder
    manifest = read_manifest(root)  # read once: what is verified is what is loaded
    items = []
    for resolved in _resolve_entries(
        root, manifest, token=token, cache_dir=cache_dir, local_files_only=local_files_only, endpoint=endpoint
    ):
        adapter = UnlearningAdapter.from_pretrained(resolved.folder)
        name = resolved.entry["name"]
        if adapter.name != name:
            raise AdapterFormatError(f"{MANIFEST_NAME} lists {name!r} but its files hold {adapter.name!r}.")
        expected = manifest.get("base_fingerprint")
        if expected is not None and adapter.base_fingerprint != expected:
            raise BaseModelMismatchError(
                f"Removal {name!r} was made for base weights {adapter.base_fingerprint}; the chain is for {expected}. "
                "Refusing to load the chain."
            )
        items.append(_Item(adapter, dict(resolved.entry)))
    check_parents([item.adapter for item in items])
    return items


def load_stack(
    repo_id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> UnlearningStack:
    """Pulls a chain from the Hub (or a local folder), verified before anything can touch a pipeline.

    Every file is checked against its sha256 in the manifest, entries in other repos are fetched at their pinned
    commit, and every removal must carry the chain's base-model fingerprint. Load the result with
    `pipe.load_unlearning(stack)`, which also checks the fingerprint against the pipeline first.

    Args:
        repo_id_or_dir (`str` or `os.PathLike`): `"org/name"` or a local chain folder.
        revision, token, cache_dir, local_files_only, endpoint: As in [`download`].

    Raises:
        AdapterNotFoundError: No such repo / revision / folder, not cached while offline, or no manifest there.
        AdapterFormatError: A file does not match its sha256, or the manifest is malformed.
        BaseModelMismatchError: A removal was made for other base weights than the chain's.

    Example:
        ```py
        >>> stack = load_stack("org/no-sevens", revision="v3")
        >>> pipe.load_unlearning(stack)
        ```
    """
    folder = download(
        repo_id_or_dir,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        endpoint=endpoint,
    )
    items = _load_items(folder, token=token, cache_dir=cache_dir, local_files_only=local_files_only, endpoint=endpoint)
    return UnlearningStack([item.adapter for item in items])


def load_adapter(
    repo_id_or_dir: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> UnlearningAdapter:
    """Pulls a single removal (a repo written by [`push_adapter`], or a chain of one), verified.

    Raises:
        AdapterNotFoundError, AdapterFormatError, BaseModelMismatchError: As in [`load_stack`].
        AdapterNameError: The repo holds a chain of several removals (use [`load_stack`]).

    Example:
        ```py
        >>> adapter = load_adapter("org/no-seven")
        ```
    """
    return _single(
        load(
            repo_id_or_dir,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            endpoint=endpoint,
        ),
        repo_id_or_dir,
    )


def _single(adapters: list[UnlearningAdapter], source) -> UnlearningAdapter:
    if len(adapters) != 1:
        raise AdapterNameError(
            f"{source} holds a chain of {len(adapters)} removals, not one: load it with "
            "`UnlearningStack.from_pretrained` (or `pipe.load_unlearning`)."
        )
    return adapters[0]


def load(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> list[UnlearningAdapter]:
    """The removals a repo or folder holds, in order, verified: what `pipe.load_unlearning("org/name")` loads.

    A folder or repo with a manifest gives its chain; one without gives its single removal.

    Example:
        ```py
        >>> adapters = load("org/no-sevens", revision="v3")
        >>> pipe.load_unlearning(adapters)
        ```
    """
    folder = download(
        source,
        revision=revision,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        endpoint=endpoint,
    )
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent
    if (folder / MANIFEST_NAME).is_file():
        items = _load_items(
            folder, token=token, cache_dir=cache_dir, local_files_only=local_files_only, endpoint=endpoint
        )
        return [item.adapter for item in items]
    return [UnlearningAdapter.from_pretrained(folder)]


def _adapters_of(removals: Removals) -> list[UnlearningAdapter]:
    if isinstance(removals, UnlearningAdapter):
        return [removals]
    return list(removals)


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def _concept_cell(adapter: UnlearningAdapter) -> str:
    if adapter.metadata.get("members"):
        return "merged: " + ", ".join(m["name"] for m in adapter.metadata["members"])
    if adapter.metadata.get("redacted") or adapter.concept is None:
        return "*redacted*"
    return _cell(adapter.concept)


def _location(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "repo_id" in entry:
        return f"`{entry['repo_id']}` @ `{entry['revision'][:10]}` `{entry['path']}`"
    return f"`{entry['path']}`"


def _vanilla_lines(repo: str, adapters: list[UnlearningAdapter], entries: list[dict[str, Any]] | None) -> list[str]:
    lines = []
    for index, adapter in enumerate(adapters):
        entry = entries[index] if entries else {"path": "." if len(adapters) == 1 else f"adapters/{index + 1:03d}"}
        args = [repr(entry.get("repo_id", repo))]
        if "revision" in entry:
            args.append(f"revision={entry['revision']!r}")
        if entry["path"] != ".":
            args.append(f"subfolder={entry['path']!r}")
        args += [f"weight_name={WEIGHTS_NAME!r}", f"adapter_name={adapter.name!r}"]
        lines.append(f"pipe.load_lora_weights({', '.join(args)})")
    names = [a.name for a in adapters]
    lines.append(f"pipe.set_adapters({names!r})  # diffusers leaves only the last loaded adapter active otherwise")
    return lines


def model_card(
    removals: Removals,
    *,
    repo_id: str | None = None,
    entries: list[dict[str, Any]] | None = None,
    report: InterferenceReport | None = None,
) -> ModelCard:
    """The model card (`README.md`) of a removal or chain, written with `ModelCard` / `ModelCardData`.

    Card data: `base_model` (when the removals record a Hub id), `library_name: diffusers`, tags `lora`,
    `concept-erasure`, `unlearning`. Body: the ordered table of removals (redacted ones shown as redacted), the
    figures recorded in each adapter, the interference verdict when `report` is given, and how to load it with
    and without diffusers-unlearn.

    Args:
        removals ([`UnlearningStack`], [`UnlearningAdapter`] or a list of them): What the repo holds, in order.
        repo_id (`str`, *optional*): The repo, for the usage snippets.
        entries (`list[dict]`, *optional*): The manifest entries (for where each removal's files are).
        report ([`InterferenceReport`], *optional*): The chain's interference check, e.g. `stack.check(pipe)`.

    Example:
        ```py
        >>> card = model_card(stack, repo_id="org/no-sevens", report=stack.check(pipe))
        >>> card.data.tags
        ['lora', 'concept-erasure', 'unlearning', 'diffusers-unlearn', 'text-to-image']
        >>> card.save("README.md")
        ```
    """
    adapters = _adapters_of(removals)
    repo = repo_id or "<repo_id>"
    first = adapters[0].metadata if adapters else {}
    base_model = first.get("base_model")
    hub_base = base_model if isinstance(base_model, str) and is_repo_id(base_model) else None
    data = ModelCardData(base_model=hub_base, library_name="diffusers", tags=list(CARD_TAGS))

    lines = [
        f"# {repo}: {len(adapters)} concept removal{'s' if len(adapters) != 1 else ''}",
        "",
        "Made with diffusers-unlearn: each removal is a LoRA adapter on the denoiser's cross-attention, made on top "
        "of the ones before it; they apply in this order.",
        "",
        f"- Base model: `{base_model or 'not recorded'}`",
        f"- Base weights fingerprint: `{first.get('base_fingerprint', 'n/a')}` (checked before loading)",
        f"- Model family: `{first.get('family', 'n/a')}`",
        "",
        "## Removals",
        "",
        "| # | Removal | Concept | Method | Rank | Made on top of | Files |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, adapter in enumerate(adapters):
        parents = ", ".join(p["name"] for p in adapter.metadata.get("parents", [])) or "base model"
        entry = entries[index] if entries else None
        lines.append(
            f"| {index + 1} | `{adapter.name}` | {_concept_cell(adapter)} | {adapter.metadata.get('method', '')} | "
            f"{adapter.rank} | {_cell(parents)} | {_location(entry)} |"
        )
    figure_keys = list(
        dict.fromkeys(
            key
            for adapter in adapters
            for key, value in adapter.metadata.get("figures", {}).items()
            if isinstance(value, int | float)
        )
    )
    if figure_keys:
        lines += [
            "",
            "## Figures recorded in the adapters",
            "",
            "| Removal | " + " | ".join(figure_keys) + " |",
            "|---" * (len(figure_keys) + 1) + "|",
        ]
        for adapter in adapters:
            figures = adapter.metadata.get("figures", {})
            cells = [_cell(figures[key]) if key in figures else "" for key in figure_keys]
            lines.append(f"| `{adapter.name}` | " + " | ".join(cells) + " |")
    lines += ["", "## Interference", ""]
    if report is None:
        lines.append(
            "Not recorded with this upload. Measure it with `UnlearningStack.from_pretrained(repo).check(pipe)`."
        )
    else:
        verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.failures())
        lines += [f"Verdict: **{verdict}**", "", "```text", str(report), "```"]
    base = base_model or "<base model>"
    lines += [
        "",
        "## Usage",
        "",
        "With diffusers-unlearn (every file checked against its sha256 and the base weights against the "
        "fingerprint before the pipeline is touched; pin a commit with `revision=` for reproducible results):",
        "",
        "```py",
        "import diffusers_unlearn  # adds pipe.load_unlearning",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({base!r})",
        f"pipe.load_unlearning({repo!r}, revision='main')",
        "```",
        "",
        "With diffusers alone (no verification):",
        "",
        "```py",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({base!r})",
        *_vanilla_lines(repo, adapters, entries),
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


# ----------------------------------------------------------------------------------------------------- push
def _entry(adapter: UnlearningAdapter, folder: Path, path: str) -> dict[str, Any]:
    files = {name: sha256_file(folder / name) for name in ADAPTER_FILES if (folder / name).is_file()}
    return {
        "name": adapter.name,
        "path": path,
        "sha256": files[WEIGHTS_NAME],
        "files": files,
        "concept": adapter.concept,
        "adapter_id": adapter.metadata.get("adapter_id"),
    }


def _staged(adapter: UnlearningAdapter, scratch: Path, path: str) -> _Item:
    """The removal saved under `scratch`, to be uploaded to `path` in the repo."""
    folder = adapter.save_pretrained(Path(tempfile.mkdtemp(dir=scratch)))
    return _Item(adapter, _entry(adapter, folder, path), upload=folder)


def _head(api: HfApi, repo_id: str, revision: str, *, chain: bool = True) -> str:
    """The commit `revision` (branch or tag) of `repo_id` points to now: the one read, and recorded."""
    try:
        return api.repo_info(repo_id, revision=revision).sha
    except RepositoryNotFoundError as error:
        first = "publish the chain first (`push_stack` / `UnlearningStack.push_to_hub`), " if chain else ""
        raise AdapterNotFoundError(
            f"No Hub repo {repo_id!r}{_at(api.endpoint)}: {first}check the name, or pass `token=` if it is private."
        ) from error
    except RevisionNotFoundError as error:
        raise AdapterNotFoundError(f"{repo_id!r} has no branch or tag {revision!r}{_at(api.endpoint)}.") from error


def _prepare_repo(api: HfApi, repo_id: str, branch: str, private: bool) -> str:
    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    return _head(api, repo_id, branch)


def _commit_chain(
    api: HfApi,
    repo_id: str,
    *,
    branch: str,
    head: str,
    items: list[_Item],
    commit_message: str,
    report: InterferenceReport | None = None,
) -> CommitInfo:
    """One commit writing the chain `items` on top of `head`: new files, manifest, card, stale files removed.

    Raises:
        ConcurrentUpdateError: `branch` no longer points to `head` (the Hub answers 412); nothing was written.
    """
    adapters = [item.adapter for item in items]
    fingerprints = {a.base_fingerprint for a in adapters}
    if len(fingerprints) > 1:
        raise BaseModelMismatchError(f"The removals were made for different base weights: {sorted(fingerprints)}.")
    operations: list[CommitOperationAdd | CommitOperationDelete] = []
    keep = {CARD_NAME, MANIFEST_NAME}
    for item in items:
        if "repo_id" in item.entry:
            continue
        for name in item.entry["files"]:
            path_in_repo = _join(item.entry["path"], name)
            keep.add(path_in_repo)
            if item.upload is not None:
                operations.append(CommitOperationAdd(path_in_repo, str(item.upload / name)))
    current = api.list_repo_files(repo_id, revision=head)
    ours = [p for p in current if p.startswith("adapters/") or p in ADAPTER_FILES]
    operations += [CommitOperationDelete(p) for p in sorted(ours) if p not in keep]
    first = adapters[0].metadata if adapters else {}
    manifest = {
        "format_version": FORMAT_VERSION,
        "base_model": first.get("base_model"),
        "base_fingerprint": first.get("base_fingerprint"),
        "entries": [item.entry for item in items],
    }
    entries = [item.entry for item in items]
    card = model_card(adapters, repo_id=repo_id, entries=entries, report=report)
    operations += [
        CommitOperationAdd(MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode()),
        CommitOperationAdd(CARD_NAME, str(card).encode()),
    ]
    try:
        info = api.create_commit(
            repo_id, operations, commit_message=commit_message, revision=branch, parent_commit=head
        )
    except HfHubHTTPError as error:
        if error.response is not None and error.response.status_code == 412:
            raise ConcurrentUpdateError(
                f"{repo_id!r} (branch {branch!r}) moved past {head[:10]} while this update was prepared: another "
                "push or append landed first, and nothing was written. Call `append_to_hub(..., retry=True)` to "
                "re-apply the append on the new head, or pull the chain again and re-check it.",
                repo_id=repo_id,
                parent_commit=head,
            ) from error
        raise
    logger.info("Wrote %d removal(s) to %s@%s (commit %s)", len(items), repo_id, branch, info.oid)
    return info


def push_stack(
    stack: UnlearningStack | Sequence[UnlearningAdapter],
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    report: InterferenceReport | None = None,
    parent_commit: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Publishes a chain: one commit with `adapters/NNN-name/` per removal, the manifest and the model card.

    The repo (and the branch `revision`) is created if needed. The chain replaces the removals the branch held;
    other files stay, and the history keeps earlier chains (pull them by commit).

    Args:
        stack ([`UnlearningStack`] or list of [`UnlearningAdapter`]): The removals, oldest first.
        repo_id (`str`): `"org/name"`.
        private (`bool`, defaults to `False`): Create the repo private.
        token (`str`, *optional*): Hub token with write access; default the stored one.
        commit_message (`str`, *optional*): Default `"Publish <n> removals"`.
        revision (`str`, *optional*): Branch to push to; default `"main"`.
        report ([`InterferenceReport`], *optional*): Interference check to show in the card (`stack.check(pipe)`).
        parent_commit (`str`, *optional*): Write only if the branch still points to this commit.
        endpoint (`str`, *optional*): Hub endpoint; default `HF_ENDPOINT`.

    Returns:
        `CommitInfo`: the commit (`.oid` is its id: pin it when loading).

    Raises:
        ConcurrentUpdateError: The branch moved past `parent_commit`; nothing was written.

    Example:
        ```py
        >>> info = push_stack(stack, "org/no-sevens", report=stack.check(pipe))
        >>> load_stack("org/no-sevens", revision=info.oid)
        ```
    """
    return _push(
        _adapters_of(stack),
        repo_id,
        root=False,
        private=private,
        token=token,
        commit_message=commit_message,
        revision=revision,
        report=report,
        parent_commit=parent_commit,
        endpoint=endpoint,
    )


def push_adapter(
    adapter: UnlearningAdapter,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    report: InterferenceReport | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Publishes one removal with its files at the repo root, so that vanilla `pipe.load_lora_weights(repo_id)`
    loads it; a manifest of one entry pins their sha256 for verified pulls. Arguments as in [`push_stack`].

    Example:
        ```py
        >>> adapter = diffusers_unlearn.erase(pipe, "seven", aliases=["7"])
        >>> push_adapter(adapter, "org/no-seven")
        >>> pipe.load_lora_weights("org/no-seven")  # plain diffusers works too
        ```
    """
    return _push(
        [adapter],
        repo_id,
        root=True,
        private=private,
        token=token,
        commit_message=commit_message,
        revision=revision,
        report=report,
        parent_commit=None,
        endpoint=endpoint,
    )


def _push(
    adapters: list[UnlearningAdapter],
    repo_id: str,
    *,
    root: bool,
    private: bool,
    token: str | None,
    commit_message: str | None,
    revision: str | None,
    report: InterferenceReport | None,
    parent_commit: str | None,
    endpoint: str | None,
) -> CommitInfo:
    if not adapters:
        raise ValueError("Nothing to push: the chain is empty.")
    UnlearningStack(adapters)  # one base model, unique names
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or constants.DEFAULT_REVISION
    head = _prepare_repo(api, repo_id, branch, private)
    if parent_commit is not None and parent_commit != head:
        raise ConcurrentUpdateError(
            f"{repo_id!r} (branch {branch!r}) is at {head[:10]}, not at the expected {parent_commit[:10]}: it changed "
            "since you read it. Pull it again and re-apply your change.",
            repo_id=repo_id,
            parent_commit=parent_commit,
        )
    with tempfile.TemporaryDirectory() as scratch:
        items = [
            _staged(adapter, Path(scratch), "." if root else f"adapters/{position:03d}-{adapter.name}")
            for position, adapter in enumerate(adapters, 1)
        ]
        message = commit_message or (f"Publish {adapters[0].name}" if root else f"Publish {len(adapters)} removals")
        return _commit_chain(
            api, repo_id, branch=branch, head=head, items=items, commit_message=message, report=report
        )


def _pin(source: str, source_revision: str | None, *, token, cache_dir, endpoint, scratch: Path) -> _Item:
    """A removal to append: a local folder (uploaded into the chain) or a Hub repo pinned to one commit."""
    if Path(source).exists():
        if source_revision is not None:
            raise ValueError(f"`source_revision` applies to Hub repos; {source} is a local folder.")
        adapter = _single(load(source), source)
        return _staged(adapter, scratch, "")
    if not is_repo_id(source):
        raise AdapterNotFoundError(f'No folder at {source!r}, and it is not a Hub repo id ("org/name").')
    commit = source_revision or constants.DEFAULT_REVISION
    if not _COMMIT.match(commit):  # a branch or tag, resolved once: this commit is what the chain records
        commit = _head(HfApi(endpoint=endpoint, token=token), source, commit, chain=False)
    hub = {"token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    try:
        manifest_file = hf_hub_download(source, MANIFEST_NAME, revision=commit, **hub)
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 404:
            raise
        # a removal saved by other means: its files at the root, verified by their provenance only
        folder = download(source, revision=commit, allow_patterns=list(ADAPTER_FILES), **hub)
        adapter = UnlearningAdapter.from_pretrained(folder)
        entry = {**_entry(adapter, folder, "."), "repo_id": source, "revision": commit}
        return _Item(adapter, entry)
    folder = Path(manifest_file).parent
    entries = read_manifest(folder)["entries"]
    if len(entries) != 1:
        raise AdapterNameError(
            f"{source}@{commit[:10]} holds a chain of {len(entries)} removals; a chain entry references one. Append "
            "its removals one by one, or publish the one you want with `push_adapter`."
        )
    if "repo_id" not in entries[0]:
        files = entries[0].get("files", {WEIGHTS_NAME: entries[0]["sha256"]})
        patterns = [MANIFEST_NAME, *(_join(entries[0]["path"], name) for name in files)]
        download(source, revision=commit, allow_patterns=patterns, **hub)
    (item,) = _load_items(folder, **hub)
    entry = dict(item.entry)
    if "repo_id" not in entry:
        entry.update(repo_id=source, revision=commit)
    return _Item(item.adapter, entry)


def append_to_hub(
    repo_id: str,
    removal: UnlearningAdapter | str | os.PathLike,
    *,
    source_revision: str | None = None,
    retry: bool | int = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    report: InterferenceReport | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Appends one removal to a chain on the Hub, safely against concurrent appends.

    The chain is read at the branch head, checked (every file, base fingerprint, unique names) and written back with
    `create_commit(..., parent_commit=head)`: if another append landed in between, the Hub refuses the commit and
    nothing is overwritten. With `retry`, the append is re-applied on the new head.

    Args:
        repo_id (`str`): The chain's repo, `"org/name"` (it must exist: publish it with [`push_stack`]).
        removal ([`UnlearningAdapter`], `str` or `os.PathLike`): The removal: an object or folder (its files are
            uploaded into the chain), or another repo's id: then the chain references it, pinned to the commit
            `source_revision` points to now, with the sha256 of its files.
        source_revision (`str`, *optional*): Branch, tag or commit of `removal` when it is a repo id; resolved to a
            commit once, and that commit is recorded.
        retry (`bool` or `int`, defaults to `False`): On a concurrent update, re-read and retry (`True`:
            `DEFAULT_RETRIES` times, or that many times). A warning names the removals that landed meanwhile,
            which the new removal was not made on top of.
        revision (`str`, *optional*): The chain's branch; default `"main"`.
        token, endpoint: As in [`push_stack`]; cache_dir: as in [`download`].
        commit_message (`str`, *optional*): Default `"Append <name>"`.
        report ([`InterferenceReport`], *optional*): Interference check of the whole new chain, for the card.

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
        >>> append_to_hub("org/no-sevens", red, retry=True)
        >>> append_to_hub("org/no-sevens", "org/no-cat", source_revision="v2")  # pinned reference
        ```
    """
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or constants.DEFAULT_REVISION
    attempts = 1 + (DEFAULT_RETRIES if retry is True else int(retry))
    if attempts < 1:
        raise ValueError(f"`retry` must be a bool or a number of retries >= 0, got {retry!r}.")
    hub = {"token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    seen: set[str] | None = None
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(removal, UnlearningAdapter):
            new = _staged(removal, Path(scratch), "")
        else:
            new = _pin(str(removal), source_revision, scratch=Path(scratch), **hub)
        for attempt in range(attempts):
            head = _head(api, repo_id, branch)
            folder = download(repo_id, revision=head, **hub)
            items = _load_items(folder, **hub) if (folder / MANIFEST_NAME).is_file() else []
            names = [item.adapter.name for item in items]
            if items and new.adapter.base_fingerprint != items[0].adapter.base_fingerprint:
                raise BaseModelMismatchError(
                    f"Removal {new.adapter.name!r} was made for base weights {new.adapter.base_fingerprint}; the "
                    f"chain {repo_id!r} is for {items[0].adapter.base_fingerprint}."
                )
            if new.adapter.name in names:
                raise AdapterNameError(f"{repo_id!r} already holds a removal named {new.adapter.name!r}.")
            if seen is not None:
                _warn_unseen(new.adapter, [n for n in names if n not in seen])
            seen = set(names)
            for position, item in enumerate(items, 1):  # a single removal at the root becomes the chain's first
                if item.entry["path"] == "." and "repo_id" not in item.entry:
                    item.entry = {**item.entry, "path": f"adapters/{position:03d}-{item.adapter.name}"}
                    item.upload = folder
            if "repo_id" not in new.entry:
                new.entry["path"] = f"adapters/{len(items) + 1:03d}-{new.adapter.name}"
            message = commit_message or f"Append {new.adapter.name}"
            try:
                return _commit_chain(
                    api, repo_id, branch=branch, head=head, items=[*items, new], commit_message=message, report=report
                )
            except ConcurrentUpdateError:
                if attempt + 1 == attempts:
                    raise
                logger.info("%s moved while appending %s; retrying on the new head", repo_id, new.adapter.name)
    raise AssertionError("unreachable")  # pragma: no cover


def _warn_unseen(adapter: UnlearningAdapter, landed: list[str]) -> None:
    parents = {parent["name"] for parent in adapter.metadata.get("parents", [])}
    unseen = [name for name in landed if name not in parents]
    if unseen:
        warnings.warn(
            f"While appending {adapter.name!r}, {unseen} landed on the chain first; {adapter.name!r} was not made on "
            "top of them. Check the chain for interference: `UnlearningStack.from_pretrained(repo).check(pipe)`.",
            stacklevel=3,
        )


def revoke(
    repo_id: str,
    name: str,
    *,
    pipe=None,
    resolve: bool = True,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    report: InterferenceReport | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Withdraws a removal from a chain on the Hub: a new commit without it (see [`UnlearningStack.remove`]).

    Removals made on top of it are re-solved without it when `pipe` (the base pipeline) is given, and uploaded;
    untouched entries (including references to other repos) are kept as they are. The commit is conditional on
    the head that was read (`parent_commit`). Earlier commits still hold the removal: revoking stops new pulls of
    the branch from loading it, it does not erase history.

    Args:
        repo_id (`str`): The chain's repo.
        name (`str`): The removal to withdraw.
        pipe (`DiffusionPipeline`, *optional*), resolve (`bool`): As in [`UnlearningStack.remove`].
        revision, token, commit_message, report, cache_dir, endpoint: As in [`append_to_hub`].

    Raises:
        ConcurrentUpdateError: The chain moved meanwhile; nothing was written.
        AdapterNameError, ResolveError: As in [`UnlearningStack.remove`].

    Example:
        ```py
        >>> revoke("org/no-sevens", "no-red", pipe=pipe)
        ```
    """
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or constants.DEFAULT_REVISION
    hub = {"token": token, "cache_dir": cache_dir, "endpoint": endpoint}
    head = _head(api, repo_id, branch)
    folder = download(repo_id, revision=head, **hub)
    items = _load_items(folder, **hub)
    stack = UnlearningStack([item.adapter for item in items])
    stack.remove(name, pipe=pipe, resolve=resolve)
    with tempfile.TemporaryDirectory() as scratch:
        kept = []
        for position, adapter in enumerate(stack, 1):
            same = next((item for item in items if _same(item.adapter, adapter)), None)
            kept.append(same or _staged(adapter, Path(scratch), f"adapters/{position:03d}-{adapter.name}"))
        return _commit_chain(
            api, repo_id, branch=branch, head=head, items=kept, commit_message=commit_message or f"Revoke {name}",
            report=report,
        )  # fmt: skip


def _same(a: UnlearningAdapter, b: UnlearningAdapter) -> bool:
    if a is b:
        return True
    if (
        a.metadata != b.metadata
        or a.lora_weights.keys() != b.lora_weights.keys()
        or a.probes.keys() != b.probes.keys()
    ):
        return False
    tensors = [(a.lora_weights, b.lora_weights), (a.probes, b.probes)]
    return all(torch.equal(x[key], y[key]) for x, y in tensors for key in x)
