"""The files of a removal on disk, and the manifest that pins them: the one reader, writer and verifier.

A folder written by `UnlearningAdapter.save_pretrained` or `UnlearningStack.save_pretrained` (locally, or pushed to
the Hub) holds a manifest, `unlearning_stack.json`, whose entries pin the sha256 of every file of every removal::

    {"format_version": "1.0", "base_model": "digits", "base_fingerprint": "…",
     "entries": [{"name": "no-seven", "path": "adapters/001-no-seven", "sha256": "<weights>",
                  "files": {"pytorch_lora_weights.safetensors": "…", "unlearning.json": "…",
                            "unlearning_probes.safetensors": "…"},
                  "concept": "seven", "adapter_id": "…"}]}

A single removal is an entry at `"path": "."`; an entry may live in another Hub repo (`"repo_id"` and a pinned
`"revision"` commit). Nothing here reads tensors or touches the network: [`read_manifest`] checks the manifest's
bytes and schema, [`verify`] checks a folder's files against an entry (every byte, before anything parses them),
[`entry_for`] and [`write_manifest`] write them. Every failure is an [`AdapterFormatError`].
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import AdapterFormatError, AdapterNotFoundError

FORMAT_VERSION = "1.0"
MANIFEST_NAME = "unlearning_stack.json"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_NAME = "unlearning.json"
PROBES_NAME = "unlearning_probes.safetensors"
REMOVAL_FILES = (WEIGHTS_NAME, METADATA_NAME, PROBES_NAME)
"""Every file a removal may have, in the order they are written."""

MAX_MANIFEST_BYTES = 16 * 2**20

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP_KEYS = {"format_version", "base_model", "base_fingerprint", "entries"}
_ENTRY_KEYS = {"name", "path", "sha256", "files", "concept", "adapter_id", "repo_id", "revision"}


# ------------------------------------------------------------------------------------------------- bytes
def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Calls `write(tmp_path)` then renames the result onto `path`: readers see the old file or the new one.

    The file gets the mode any new file gets (0o666 less the umask, usually 644), not `mkstemp`'s private 600.
    """
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def is_repo_id(source: str | os.PathLike) -> bool:
    """Whether `source` reads as a Hub repo id (`"org/name"`) rather than a local path.

    Example:
        ```py
        >>> is_repo_id("org/no-van-gogh"), is_repo_id("./removals")
        (True, False)
        ```
    """
    return isinstance(source, str) and bool(_REPO_ID.match(source)) and ".." not in source


def is_commit(revision: object) -> bool:
    """Whether `revision` is a full commit id (40 hex digits), as pinned entries record."""
    return isinstance(revision, str) and bool(_COMMIT.match(revision))


def join(path: str, name: str) -> str:
    """`name` inside an entry's `path`, as a path in the repo (`"."` is the root)."""
    return name if path in ("", ".") else f"{path.rstrip('/')}/{name}"


# -------------------------------------------------------------------------------------------- manifest
def manifest_path(folder: str | os.PathLike) -> Path | None:
    """The manifest of `folder` (or `folder` itself when it is the manifest); `None` if there is none."""
    path = Path(folder)
    if path.is_file():
        return path if path.name == MANIFEST_NAME else None
    path = path / MANIFEST_NAME
    return path if path.is_file() else None


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks a manifest (`unlearning_stack.json`) from a folder or the file itself.

    The bytes are untrusted: invalid UTF-8 or JSON, a document of the wrong shape, an unknown or newer format
    version, an unknown field, an unsafe path, a sha256 that is not one, or an entry in another repo that is not
    pinned to a commit are all refused.

    Raises:
        AdapterNotFoundError: No manifest there.
        AdapterFormatError: What is wrong, and where.

    Example:
        ```py
        >>> [e["name"] for e in read_manifest("removals")["entries"]]
        ['no-seven', 'no-red']
        ```
    """
    path = manifest_path(folder)
    if path is None:
        raise AdapterNotFoundError(f"No {MANIFEST_NAME} in {folder}: it is not a folder of removals.")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise AdapterFormatError(f"{path} is larger than {MAX_MANIFEST_BYTES} bytes: not a manifest.")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterFormatError(f"{path} is not valid JSON ({type(error).__name__}: {error}).") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        raise AdapterFormatError(f"{path} is not a manifest: expected an object with a list of `entries`.")
    version = manifest.get("format_version")
    if not isinstance(version, str) or not _readable(version):
        raise AdapterFormatError(
            f"{path} has format version {version!r}; this release reads {FORMAT_VERSION} and older "
            f"{FORMAT_VERSION.split('.')[0]}.x versions. Upgrade diffusers-unlearn to read it."
        )
    _known_keys(manifest, _TOP_KEYS, version, str(path))
    for key in ("base_model", "base_fingerprint"):
        if not isinstance(manifest.get(key), str | None):
            raise AdapterFormatError(f"{path}: `{key}` must be a string or null.")
    names = set()
    for entry in manifest["entries"]:
        _check_entry(entry, path, version)
        if entry["name"] in names:
            raise AdapterFormatError(f"{path} lists {entry['name']!r} twice.")
        names.add(entry["name"])
    return manifest


def _readable(version: str) -> bool:
    """Same major version, and not newer than this release writes."""
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        return False
    ours = tuple(int(part) for part in FORMAT_VERSION.split("."))
    return major == ours[0] and minor <= ours[1]


def _known_keys(document: dict, known: set[str], version: str, where: str) -> None:
    unknown = sorted(set(document) - known)
    if unknown and version == FORMAT_VERSION:
        raise AdapterFormatError(f"{where}: unknown field(s) {unknown} (format version {version} has none).")


def _check_entry(entry: Any, source: Path, version: str) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("path"), str):
        raise AdapterFormatError(f"{source}: every entry needs a `name` and a `path`; got {entry!r:.200}.")
    where = f"{source}, entry {entry['name']!r}"
    _known_keys(entry, _ENTRY_KEYS, version, where)
    path = PurePosixPath(entry["path"])
    if path.is_absolute() or ".." in path.parts or "\\" in entry["path"]:
        raise AdapterFormatError(f"{where}: the path {entry['path']!r} must be relative and stay inside its repo.")
    files = files_of(entry)
    if not isinstance(files, dict) or not files or any(name not in REMOVAL_FILES for name in files):
        raise AdapterFormatError(f"{where}: `files` must map some of {list(REMOVAL_FILES)} to their sha256.")
    digests = [entry.get("sha256"), *files.values()]
    if not all(isinstance(d, str) and _SHA256.match(d) for d in digests) or files.get(WEIGHTS_NAME) != entry["sha256"]:
        raise AdapterFormatError(
            f"{where}: `sha256` (and `files`) must hold the hex sha256 of each file, consistently."
        )
    for key in ("concept", "adapter_id"):
        if not isinstance(entry.get(key), str | None):
            raise AdapterFormatError(f"{where}: `{key}` must be a string or null.")
    if ("repo_id" in entry) != ("revision" in entry):
        raise AdapterFormatError(f"{where}: an entry in another repo needs both `repo_id` and `revision`.")
    if "repo_id" in entry and not (is_repo_id(entry["repo_id"]) and is_commit(entry["revision"])):
        raise AdapterFormatError(
            f"{where}: `revision` must pin a commit (40 hex digits) of a repo id `org/name`, got "
            f"{entry['repo_id']!r} @ {entry['revision']!r}. Branches and tags are resolved when the entry is written."
        )


def files_of(entry: dict[str, Any]) -> dict[str, str]:
    """File name -> sha256 of an entry (entries written before every file was pinned list the weights only)."""
    return entry.get("files", {WEIGHTS_NAME: entry.get("sha256")})


def verify(folder: Path, entry: dict[str, Any], where: str) -> None:
    """Checks every file of `entry` in `folder` against its sha256, before anything parses it.

    A removal file that is not listed may not sit beside them (it would be read but not verified); an entry that
    pins the weights only (written by an older release) is accepted with the files it lists.

    Raises:
        AdapterFormatError: A listed file is missing or differs from its sha256, or an unlisted one is present.
    """
    files = files_of(entry)
    for name in REMOVAL_FILES:
        path = folder / name
        if name not in files:
            if "files" in entry and path.is_file():
                raise AdapterFormatError(
                    f"{where}/{name} is not listed in {MANIFEST_NAME}: it was added after the removals were "
                    "written. Refusing to load it; remove the file or save the removals again."
                )
            continue
        if not path.is_file():
            raise AdapterFormatError(f"{where}/{name} is missing; {MANIFEST_NAME} lists it.")
        if sha256_file(path) != files[name]:
            raise AdapterFormatError(
                f"{where}/{name} does not match the sha256 in {MANIFEST_NAME}: it was modified after it was "
                "written. Refusing to load it; restore the file (or delete it from the cache to download it again) "
                "or save the removals again."
            )


def entry_for(folder: Path, path: str, *, name: str, concept: str | None, adapter_id: str | None) -> dict[str, Any]:
    """The manifest entry of the removal files in `folder`, to be found at `path`: the sha256 of every file.

    Example:
        ```py
        >>> entry_for(Path("removals/adapters/001-no-seven"), "adapters/001-no-seven", name="no-seven", ...)
        {'name': 'no-seven', 'path': 'adapters/001-no-seven', 'sha256': '…', 'files': {…}, ...}
        ```
    """
    files = {file: sha256_file(folder / file) for file in REMOVAL_FILES if (folder / file).is_file()}
    if WEIGHTS_NAME not in files:
        raise AdapterNotFoundError(f"No {WEIGHTS_NAME} in {folder}: nothing to list in a manifest.")
    return {
        "name": name,
        "path": path,
        "sha256": files[WEIGHTS_NAME],
        "files": files,
        "concept": concept,
        "adapter_id": adapter_id,
    }


def manifest_of(entries: Sequence[dict[str, Any]], *, base_model: str | None, base_fingerprint: str | None) -> dict:
    """A manifest document: the format version, the base model the removals were made for, the entries in order."""
    return {
        "format_version": FORMAT_VERSION,
        "base_model": base_model,
        "base_fingerprint": base_fingerprint,
        "entries": list(entries),
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """How a manifest is written: indented JSON and a final newline."""
    return (json.dumps(manifest, indent=2) + "\n").encode()


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    """Writes `folder/unlearning_stack.json` atomically (readers see the old manifest or the new one)."""
    data = manifest_bytes(manifest)
    path = folder / MANIFEST_NAME
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path
