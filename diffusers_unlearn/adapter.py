"""`UnlearningAdapter`: one removal, stored as a plain diffusers LoRA plus its provenance.

On disk (DESIGN §4)::

    no-van-gogh/
      pytorch_lora_weights.safetensors   # PEFT keys "unet.<layer>.lora_A.weight"; diffusers' own
                                         # `lora_adapter_metadata` header (LoraConfig fields only) and our
                                         # provenance under the separate header key "diffusers_unlearn"
      unlearning.json                    # the same provenance, readable without tools
      unlearning_probes.safetensors      # second moments of the forget / protected embeddings and the remap
                                         # factors, used to protect this removal later and to check interference
      unlearning_stack.json              # the manifest: the sha256 of each file above (see `manifest.py`)

Vanilla `pipe.load_lora_weights("no-van-gogh")` loads it without this package. A chain of removals is the same
files under `adapters/NNN-name/`, one manifest for all ([`write_removals`]); [`read_removals`] reads either, every
file verified against the manifest before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import AdapterFormatError, AdapterNameError, AdapterNotFoundError
from .hub import HubMixin, HubOptions, download, resolve_entries
from .layers import same_base
from .manifest import (  # noqa: F401 - sha256_file and atomic_write are re-exported for callers of this module
    FORMAT_VERSION,
    MANIFEST_NAME,
    METADATA_NAME,
    PROBES_NAME,
    WEIGHTS_NAME,
    atomic_write,
    entry_for,
    manifest_of,
    manifest_path,
    read_manifest,
    sha256_file,
    write_manifest,
)

logger = logging.getLogger(__name__)

HEADER_KEY = "diffusers_unlearn"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key: LoraConfig fields only


def slugify(text: str) -> str:
    """`"Van Gogh"` -> `"van-gogh"`."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


def content_id(lora_weights: dict[str, torch.Tensor]) -> str:
    """A short hash of the LoRA tensors' values: the `adapter_id` that chains use to name their parents."""
    digest = hashlib.sha256()
    for key in sorted(lora_weights):
        digest.update(key.encode())
        digest.update(lora_weights[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_name(name_or_path: str | os.PathLike | None) -> str | None:
    """What provenance records as `base_model`: a Hub id or a name, never a local path (which would leak a user's
    folders into published files and mean nothing elsewhere). A model shipped in this package
    (`diffusers_unlearn/<world>/model`) is recorded by its world's name (`"digits"`, `"glyphs"`); another local
    folder by its own name."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_absolute() and not text.startswith((".", "~")) and not path.exists():
        return text  # a Hub id ("org/name") or a name
    try:
        resolved = path.resolve()
        if resolved.name == "model" and resolved.parent.parent == Path(__file__).parent.resolve():
            return resolved.parent.name
    except OSError:
        pass
    return path.resolve().name or text


@dataclass
class UnlearningAdapter(HubMixin):
    """One concept removal: LoRA tensors for the denoiser plus provenance.

    Made by [`erase`]; loaded onto a pipeline with [`load_unlearning`]; saved as a diffusers LoRA.

    Args:
        lora_weights (`dict[str, torch.Tensor]`): diffusers-format LoRA state dict
            (`"unet.<layer>.lora_A.weight"` `(r, d_in)` and `"unet.<layer>.lora_B.weight"` `(d_out, r)`), with
            `lora_alpha == r`, i.e. the layer's weight change is exactly `B @ A`.
        metadata (`dict`): Provenance, see `docs/loading.md` (format version, concept or its salted hash, aliases,
            chosen targets, protected prompts, method and hyper-parameters, base fingerprint, parents, figures).
        probes (`dict[str, torch.Tensor]`): Factors of the forget / protected embedding moments and of the remap.

    Example:
        ```py
        >>> import diffusers_unlearn
        >>> adapter = diffusers_unlearn.erase(pipe, "seven", aliases=["7"])
        >>> adapter.save_pretrained("no-seven")
        >>> same = diffusers_unlearn.UnlearningAdapter.from_pretrained("no-seven")
        >>> pipe.load_lora_weights("no-seven")  # plain diffusers works too
        ```
    """

    lora_weights: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    probes: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.metadata.get("base_model") is not None:
            self.metadata["base_model"] = model_name(self.metadata["base_model"])

    def __repr__(self) -> str:
        size = sum(t.numel() * t.element_size() for t in self.lora_weights.values())
        concept = self.concept if self.concept is not None else "<redacted>"
        return (
            f"UnlearningAdapter(name={self.name!r}, concept={concept!r}, method={self.metadata.get('method')!r}, "
            f"rank={self.metadata.get('rank')}, layers={len(self.layer_names)}, size={_size(size)})"
        )

    # ----------------------------------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        """Default adapter name on a pipeline (`"no-<concept>"`, or a hash when redacted)."""
        return self.metadata["name"]

    @property
    def concept(self) -> str | None:
        """The erased concept, `None` when the removal was made with `redact=True`."""
        return self.metadata.get("concept")

    @property
    def rank(self) -> int:
        return int(self.metadata["rank"])

    @property
    def denoiser(self) -> str:
        return self.metadata.get("denoiser", "unet")

    @property
    def base_fingerprint(self) -> str:
        return self.metadata["base_fingerprint"]

    @property
    def layer_names(self) -> list[str]:
        """Edited layers, as module names inside the denoiser."""
        prefix = self.denoiser + "."
        return [
            key[len(prefix) : -len(".lora_A.weight")] for key in self.lora_weights if key.endswith(".lora_A.weight")
        ]

    def factors(self, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`(A, B)` of one layer; its weight change is `B @ A`."""
        prefix = f"{self.denoiser}.{layer}"
        return self.lora_weights[f"{prefix}.lora_A.weight"], self.lora_weights[f"{prefix}.lora_B.weight"]

    def delta(self, layer: str) -> torch.Tensor:
        """The weight change of one layer, float32 `(d_out, d_in)`."""
        a, b = self.factors(layer)
        return b.float() @ a.float()

    def lora_config(self) -> dict[str, Any]:
        """The LoraConfig fields diffusers reads from `lora_adapter_metadata` (nothing else may go there)."""
        return {"r": self.rank, "lora_alpha": self.rank, "target_modules": sorted(self.layer_names)}

    def same_as(self, other: UnlearningAdapter) -> bool:
        """Whether `other` is the same removal: same provenance, same LoRA tensors, same probes."""
        if other is self:
            return True
        if (
            self.metadata != other.metadata
            or self.lora_weights.keys() != other.lora_weights.keys()
            or self.probes.keys() != other.probes.keys()
        ):
            return False
        pairs = [(self.lora_weights, other.lora_weights), (self.probes, other.probes)]
        return all(torch.equal(x[key].detach().cpu(), y[key].detach().cpu()) for x, y in pairs for key in x)

    # ---------------------------------------------------------------------------------------------- files
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        dtype: torch.dtype | None = None,
        push_to_hub: bool = False,
        **push_kwargs: Any,
    ) -> Path:
        """Writes the removal to a folder that vanilla `pipe.load_lora_weights(folder)` also loads.

        The folder holds the three files and a manifest that pins the sha256 of each (see `manifest.py`). Every
        file is written to a temporary name and renamed into place, the manifest last.

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write (created if needed).
            dtype (`torch.dtype`, *optional*): Cast the LoRA tensors, e.g. `torch.float16` to halve the size.
            push_to_hub (`bool`, defaults to `False`): Also publish the removal with [`push_to_hub`], to
                `push_kwargs["repo_id"]` (default: the folder's name), as diffusers' `save_pretrained` does.
            push_kwargs: Passed to [`push_to_hub`] (`repo_id`, `branch`, `private`, `commit_message`, `report`,
                `token`, `endpoint`).

        Returns:
            `Path`: the folder.

        Example:
            ```py
            >>> adapter.save_pretrained("no-seven")
            >>> adapter.save_pretrained("no-seven", push_to_hub=True, repo_id="my-org/no-seven")
            ```
        """
        if dtype is None:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **push_kwargs)
        weights = {key: value.to(dtype) for key, value in self.lora_weights.items()}
        cast = UnlearningAdapter(lora_weights=weights, metadata=self.metadata, probes=self.probes)
        return cast.save_pretrained(save_directory, push_to_hub=push_to_hub, **push_kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        folder = Path(save_directory)
        self._write_files(folder)
        entry = entry_for(
            folder, ".", name=self.name, concept=self.concept, adapter_id=self.metadata.get("adapter_id")
        )
        write_manifest(folder, manifest_of([entry], **_base_of([self])))

    def _write_files(self, folder: Path) -> None:
        """The removal's own files (no manifest), each written atomically."""
        if folder.is_file():
            raise AdapterFormatError(f"{folder} is a file; save_pretrained needs a folder path.")
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in self.lora_weights.items()}
        provenance = json.dumps(self.metadata, sort_keys=True)
        lora_metadata = {f"{self.denoiser}.{k}": v for k, v in self.lora_config().items()}
        header = {"format": "pt", LORA_METADATA_KEY: json.dumps(lora_metadata, sort_keys=True), HEADER_KEY: provenance}
        probes = {k: v.detach().cpu().contiguous() for k, v in self.probes.items()}

        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata=header))
        if probes:
            atomic_write(folder / PROBES_NAME, lambda tmp: save_file(probes, tmp, metadata={"format": "pt"}))
        elif (folder / PROBES_NAME).is_file():
            (folder / PROBES_NAME).unlink()  # an earlier removal's: it would be read with this one
        atomic_write(
            folder / METADATA_NAME,
            lambda tmp: Path(tmp).write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n"),
        )

    @classmethod
    def _from_pretrained(cls, folder: Path, options: HubOptions) -> UnlearningAdapter:
        # one removal by itself: whether its parents are there is checked where it joins a pipeline or a chain
        adapters = read_removals(folder, options, alone=True)
        if len(adapters) != 1:
            raise AdapterNameError(
                f"{folder} holds a chain of {len(adapters)} removals, not one: load it with "
                "`UnlearningStack.from_pretrained` (or `pipe.load_unlearning`)."
            )
        return adapters[0]

    def _removals(self) -> list[UnlearningAdapter]:
        return [self]

    @classmethod
    def _read(cls, folder: Path) -> UnlearningAdapter:
        """Parses the removal files of `folder` (untrusted bytes: every failure is an `AdapterFormatError`).

        This checks the files' content, not their integrity: [`read_removals`] verifies them against the manifest
        first.
        """
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise AdapterNotFoundError(
                f"No removal at {folder}: expected {WEIGHTS_NAME} there. Pass the folder that "
                '`UnlearningAdapter.save_pretrained` wrote, or the id ("org/name") of a repo `push_to_hub` wrote.'
            )
        weights, header = _read_safetensors(weights_path)
        if HEADER_KEY not in header:
            raise AdapterFormatError(
                f"{weights_path} is a LoRA without diffusers-unlearn provenance; load it with "
                "`pipe.load_lora_weights` instead, or re-create it with `diffusers_unlearn.erase`."
            )
        metadata = _parse_metadata(header[HEADER_KEY], weights_path)
        sidecar = folder / METADATA_NAME
        if sidecar.is_file() and _read_json(sidecar) != metadata:
            raise AdapterFormatError(
                f"{sidecar} disagrees with the provenance inside {WEIGHTS_NAME}: one was edited by hand. "
                f"The header is authoritative; delete {METADATA_NAME} to regenerate it with save_pretrained."
            )
        probes = _read_safetensors(folder / PROBES_NAME)[0] if (folder / PROBES_NAME).is_file() else {}
        adapter = cls(lora_weights=weights, metadata=metadata, probes=probes)
        adapter.validate()
        return adapter

    def validate(self) -> None:
        """Checks that the tensors form a consistent LoRA of the recorded rank with finite values.

        Raises:
            AdapterFormatError: What is wrong, and with which key.
        """
        prefix = self.denoiser + "."
        layers = self.layer_names
        if not layers:
            raise AdapterFormatError("The removal has no LoRA tensors.")
        expected = {f"{prefix}{layer}.lora_{ab}.weight" for layer in layers for ab in "AB"}
        if set(self.lora_weights) != expected:
            odd = sorted(set(self.lora_weights) ^ expected)[:3]
            raise AdapterFormatError(f"LoRA keys are inconsistent (unpaired or unexpected: {odd}).")
        for layer in layers:
            a, b = self.factors(layer)
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
                raise AdapterFormatError(
                    f"Layer {layer}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not match rank {self.rank}."
                )
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                raise AdapterFormatError(f"Layer {layer} holds NaN or infinite values.")


def _size(count: int) -> str:
    """`"12.3 kB"`: bytes as people read them."""
    for unit in ("B", "kB", "MB"):
        if count < 1000 or unit == "MB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"  # pragma: no cover


_MAX_METADATA_BYTES = 4 * 2**20
_REQUIRED = {"name": str, "rank": int, "base_fingerprint": str, "method": str}
_OPTIONAL = {
    "denoiser": str, "family": str, "concept": (str, type(None)), "aliases": list, "targets": list,
    "protected_neighbors": list, "protected_prompts": list, "preserve": list, "forget_prompts": list,
    "hardened_prompts": list, "parents": list, "figures": dict, "hyperparameters": dict, "members": list,
    "adapter_id": str, "preserve_groups": dict, "base_fingerprint_bf16": str, "composed_targets": dict,
    "implicit_prompts": list, "sibling_prompts": list,
}  # fmt: skip


def _parse_metadata(text: str, source: Path) -> dict[str, Any]:
    """Parses and checks our provenance (versioned schema, size limit): untrusted input, typed errors only."""
    if len(text) > _MAX_METADATA_BYTES:
        raise AdapterFormatError(f"The provenance in {source} is larger than {_MAX_METADATA_BYTES} bytes.")
    try:
        metadata = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise AdapterFormatError(f"The provenance in {source} is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise AdapterFormatError(f"The provenance in {source} must be a JSON object.")
    version = metadata.get("format_version")
    if not isinstance(version, str) or version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise AdapterFormatError(
            f"{source} has format version {version or 'none'}; this release reads {FORMAT_VERSION.split('.')[0]}.x. "
            "Upgrade diffusers-unlearn to load it."
        )
    for key in _REQUIRED:
        if key not in metadata:
            raise AdapterFormatError(f"The provenance in {source} lacks the required field {key!r}.")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key in metadata and (not isinstance(metadata[key], kind) or isinstance(metadata[key], bool)):
            raise AdapterFormatError(f"The provenance in {source} has a {key!r} of the wrong type.")
    name = metadata["name"]
    if not name or len(name) > 200 or any(c in name for c in "/\\:") or name in (".", "..") or name.startswith("."):
        raise AdapterFormatError(f"The provenance in {source} has an unusable name {name!r} (it names folders).")
    if metadata["rank"] < 1:
        raise AdapterFormatError(f"The provenance in {source} has rank {metadata['rank']}; a LoRA rank is >= 1.")
    return metadata


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header of a safetensors file; any failure (corrupt bytes, bad header) is a format error."""
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises several types for corrupt files
        raise AdapterFormatError(f"{path} is not a readable safetensors file: {error}") from error
    return tensors, header


def _read_json(path: Path) -> Any:
    """A JSON file's content; invalid UTF-8 or JSON is a format error."""
    if path.stat().st_size > _MAX_METADATA_BYTES:
        raise AdapterFormatError(f"{path} is larger than {_MAX_METADATA_BYTES} bytes.")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AdapterFormatError(f"{path} is not valid JSON ({type(error).__name__}: {error}).") from error


def _base_of(adapters: Sequence[UnlearningAdapter]) -> dict[str, str | None]:
    """What a manifest records of the base model: the first removal's (all share its fingerprint)."""
    first = adapters[0].metadata if adapters else {}
    return {"base_model": first.get("base_model"), "base_fingerprint": first.get("base_fingerprint")}


# ------------------------------------------------------------------------------------- folders of removals
def read_removals(
    folder: str | os.PathLike,
    options: HubOptions | None = None,
    held: Sequence[UnlearningAdapter] = (),
    *,
    alone: bool = False,
) -> list[UnlearningAdapter]:
    """The removals a local folder holds, in order, verified: a chain, or a single removal.

    With a manifest (what `save_pretrained` and `push_to_hub` write), every file of every entry is checked against
    its sha256 before it is parsed, entries pinned in other repos are fetched at their commit (with `options`),
    and each removal must agree with its entry (name, concept, id) and with the manifest's base model; then the
    chain's parents are checked ([`check_parents`]). A folder without a manifest (written by an older release,
    or copied without it) holds one removal whose files are parsed and checked for consistency, but not against
    sha256: a warning says so.

    Args:
        folder (`str` or `os.PathLike`): The folder, its manifest, or a removal's weights file.
        options ([`HubOptions`], *optional*): For entries pinned in other repos.
        held (`Sequence[UnlearningAdapter]`): Removals the folder's removals join (those already loaded on a
            pipeline): parents among them count as held.
        alone (`bool`): The removals are read by themselves, to join a chain or a pipeline later: a parent they do
            not hold is not warned about here (`UnlearningAdapter.from_pretrained`).

    Raises:
        AdapterNotFoundError: No removal there.
        AdapterFormatError: A file does not match its sha256, or is not a valid removal or manifest.

    Example:
        ```py
        >>> [a.name for a in read_removals("removals")]
        ['no-seven', 'no-red']
        ```
    """
    root = Path(folder)
    if root.is_file():
        root = root.parent
    if manifest_path(root) is None:
        adapter = UnlearningAdapter._read(root)
        logger.warning(
            "%s has no %s: its files were parsed but not verified against sha256. Save it again to pin them.",
            root,
            MANIFEST_NAME,
        )
        return [adapter]
    manifest = read_manifest(root)  # read once: what is verified is what is loaded
    adapters = []
    for index, item in enumerate(resolve_entries(root, manifest, options or HubOptions())):
        adapter = UnlearningAdapter._read(item.folder)
        entry = item.entry
        for key, value in (("name", adapter.name), ("concept", adapter.concept)):
            if key in entry and entry[key] != value:
                raise AdapterFormatError(f"{MANIFEST_NAME} lists {key} {entry[key]!r} but its files hold {value!r}.")
        if entry.get("adapter_id") not in (None, adapter.metadata.get("adapter_id")):
            raise AdapterFormatError(
                f"{MANIFEST_NAME} lists {entry['name']!r} with another adapter_id than its files."
            )
        if index == 0:  # the manifest records the first removal's base; the others match it, at some precision
            for key in ("base_fingerprint", "base_model"):
                value = adapter.metadata.get(key)
                if manifest.get(key) is not None and manifest[key] != value:
                    raise AdapterFormatError(
                        f"Removal {adapter.name!r} records {key} {value!r}; {MANIFEST_NAME} says {manifest[key]!r}. "
                        "Refusing to load the removals: the manifest and the files disagree."
                    )
        elif not same_base(adapter.metadata, adapters[0].metadata):
            raise AdapterFormatError(
                f"Removal {adapter.name!r} was made for base weights {adapter.base_fingerprint}, "
                f"{adapters[0].name!r} for {adapters[0].base_fingerprint}: one chain holds removals of one model."
            )
        adapters.append(adapter)
    check_parents(adapters, held, warn_missing=not alone)
    return adapters


def load_removals(
    source: str | os.PathLike, options: HubOptions | None = None, held: Sequence[UnlearningAdapter] = ()
) -> list[UnlearningAdapter]:
    """The removals of a local folder or a Hub repo (downloaded at one commit), verified: see [`read_removals`]."""
    options = options or HubOptions()
    return read_removals(download(source, options), options, held)


def write_removals(save_directory: str | os.PathLike, adapters: Sequence[UnlearningAdapter]) -> Path:
    """Writes a chain: every removal under `adapters/NNN-name/`, then the manifest (last, atomically).

    Saving over an earlier save never modifies a folder the old manifest lists: a removal already saved there is
    kept as it is, and a different removal at the same position goes to a new folder (`NNN-name-<id>`). Folders no
    manifest lists are deleted only after the new manifest is in place, so a save killed at any point leaves the
    previous chain or the new one readable and verified.

    Returns:
        `Path`: the folder.
    """
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for position, adapter in enumerate(adapters, 1):
        relative = Path("adapters") / f"{position:03d}-{adapter.name}"
        if (folder / relative).exists() and not _holds(folder / relative, adapter):
            relative = relative.with_name(f"{relative.name}-{adapter.metadata.get('adapter_id', 'new')[:8]}")
        if not _holds(folder / relative, adapter):
            adapter._write_files(folder / relative)
        entries.append(
            entry_for(
                folder / relative,
                relative.as_posix(),
                name=adapter.name,
                concept=adapter.concept,
                adapter_id=adapter.metadata.get("adapter_id"),
            )
        )
    write_manifest(folder, manifest_of(entries, **_base_of(adapters)))
    listed = {entry["path"] for entry in entries}
    for stale in sorted((folder / "adapters").iterdir()) if (folder / "adapters").is_dir() else ():
        if stale.is_dir() and f"adapters/{stale.name}" not in listed:
            shutil.rmtree(stale, ignore_errors=True)
    for name in (WEIGHTS_NAME, METADATA_NAME, PROBES_NAME):  # a single removal saved here before
        (folder / name).unlink(missing_ok=True)
    return folder


def _holds(folder: Path, adapter: UnlearningAdapter) -> bool:
    """Whether `folder` already holds exactly this removal (same provenance, same tensors, same probes)."""
    if not (folder / WEIGHTS_NAME).is_file():
        return False
    try:
        return UnlearningAdapter._read(folder).same_as(adapter)
    except AdapterFormatError:
        return False


def check_parents(
    adapters: Sequence[UnlearningAdapter], held: Sequence[UnlearningAdapter] = (), *, warn_missing: bool = True
) -> None:
    """Checks the removals' recorded parents (what each was made on top of) against the chain: `adapters` and the
    removals `held` already (loaded on the pipeline they join).

    A parent the chain holds under its name but with other weights (a stale chain: the parent was re-made and this
    removal was not) and parents that form a cycle (provenance that cannot be true) are refused. A parent the chain
    does not hold at all is allowed, with a warning: the removal still erases its concept, it was just solved on a
    model that carried that parent (`warn_missing=False`: not said, for removals read alone that join a chain
    later). The order within the chain does not matter: the edits add up.

    Raises:
        AdapterFormatError: Malformed parents, a stale parent, or a cycle.
    """
    by_name: dict[str, list[UnlearningAdapter]] = {}  # a concept erased again shares its first removal's name
    for adapter in [*held, *adapters]:
        by_name.setdefault(adapter.name, []).append(adapter)
    names = {adapter.name for adapter in adapters}
    graph: dict[str, list[str]] = {}
    for adapter in adapters:
        parents = adapter.metadata.get("parents", [])
        if not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in parents):
            raise AdapterFormatError(f"Removal {adapter.name!r} has malformed `parents` in its provenance.")
        for parent in parents:
            recorded = parent.get("adapter_id")
            same = [other for other in by_name.get(parent["name"], []) if other is not adapter]
            present = next((other for other in same if other.metadata.get("adapter_id") == recorded), None)
            present = present or (same[-1] if same else None)
            if present is None:
                if warn_missing:
                    logger.warning(
                        "Removal %r was made on top of %r, which this chain does not hold; it still erases its "
                        "concept, but was solved on a model that carried %r.", adapter.name, parent["name"],
                        parent["name"],
                    )  # fmt: skip
            elif recorded and present.metadata.get("adapter_id") not in (None, recorded):
                raise AdapterFormatError(
                    f"Removal {adapter.name!r} was made on top of {parent['name']!r} with id {recorded}, but the "
                    f"chain holds a different {parent['name']!r} ({present.metadata.get('adapter_id')}): the chain is "
                    f"stale. Re-make {adapter.name!r} on top of the current {parent['name']!r}."
                )
        graph[adapter.name] = [p["name"] for p in parents if p["name"] in names and p["name"] != adapter.name]
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = " -> ".join(path[path.index(name) :] + [name])
            raise AdapterFormatError(
                f"The removals' parents form a cycle ({cycle}): a removal cannot be made on top of itself. The "
                "provenance was edited or corrupted; do not load this chain."
            )
        state[name] = 1
        for parent in graph[name]:
            visit(parent, [*path, name])
        state[name] = 2

    for name in graph:
        visit(name, [])
