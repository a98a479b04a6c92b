"""`UnlearningAdapter`: one removal, stored as a plain diffusers LoRA plus its provenance.

On disk (DESIGN §4)::

    no-van-gogh/
      pytorch_lora_weights.safetensors   # PEFT keys "unet.<layer>.lora_A.weight"; diffusers' own
                                         # `lora_adapter_metadata` header (LoraConfig fields only) and our
                                         # provenance under the separate header key "diffusers_unlearn"
      unlearning.json                    # the same provenance, readable without tools
      unlearning_probes.safetensors      # second moments of the forget / protected embeddings and the remap
                                         # factors, used to protect this removal later and to check interference

Vanilla `pipe.load_lora_weights("no-van-gogh")` loads it without this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import AdapterFormatError, AdapterNotFoundError

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

FORMAT_VERSION = "1.0"
WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_NAME = "unlearning.json"
PROBES_NAME = "unlearning_probes.safetensors"
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


def model_name(name_or_path: str | os.PathLike | None) -> str | None:
    """What provenance records as `base_model`: a Hub id or a name, never a local path (which would leak a user's
    folders into published files and mean nothing elsewhere). The embedded digits model is `"digits"`; another local
    folder is recorded by its name."""
    if name_or_path is None:
        return None
    text = str(name_or_path)
    path = Path(text).expanduser()
    if not path.is_absolute() and not text.startswith((".", "~")) and not path.exists():
        return text  # a Hub id ("org/name") or a name
    digits_model = Path(__file__).parent / "digits" / "model"
    try:
        if path.resolve() == digits_model.resolve():
            return "digits"
    except OSError:
        pass
    return path.resolve().name or text


@dataclass
class UnlearningAdapter:
    """One concept removal: LoRA tensors for the denoiser plus provenance.

    Made by [`erase`]; loaded onto a pipeline with [`load_unlearning`]; saved as a diffusers LoRA.

    Args:
        lora_weights (`dict[str, torch.Tensor]`): diffusers-format LoRA state dict
            (`"unet.<layer>.lora_A.weight"` `(r, d_in)` and `"unet.<layer>.lora_B.weight"` `(d_out, r)`), with
            `lora_alpha == r`, i.e. the layer's weight change is exactly `B @ A`.
        metadata (`dict`): Provenance, see `docs/api.md` (format version, concept or its salted hash, aliases,
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

        Every file is written to a temporary name and renamed into place, so an interrupted save leaves the
        previous files readable.

        Args:
            save_directory (`str` or `os.PathLike`): Folder to write (created if needed).
            dtype (`torch.dtype`, *optional*): Cast the LoRA tensors, e.g. `torch.float16` to halve the size.
            push_to_hub (`bool`, defaults to `False`): Also publish the removal with [`push_to_hub`], to
                `push_kwargs["repo_id"]` (default: the folder's name), as diffusers' `save_pretrained` does.
            push_kwargs: Passed to [`push_to_hub`] (`repo_id`, `private`, `token`, `commit_message`, `revision`,
                `report`, `endpoint`).

        Returns:
            `Path`: the folder.

        Example:
            ```py
            >>> adapter.save_pretrained("no-seven")
            >>> adapter.save_pretrained("no-seven", push_to_hub=True, repo_id="my-org/no-seven")
            ```
        """
        folder = Path(save_directory)
        if folder.is_file():
            raise AdapterFormatError(f"{folder} is a file; save_pretrained needs a folder path.")
        folder.mkdir(parents=True, exist_ok=True)
        weights = {k: (v.to(dtype) if dtype else v).detach().cpu().contiguous() for k, v in self.lora_weights.items()}
        provenance = json.dumps(self.metadata, sort_keys=True)
        lora_metadata = {f"{self.denoiser}.{k}": v for k, v in self.lora_config().items()}
        header = {"format": "pt", LORA_METADATA_KEY: json.dumps(lora_metadata, sort_keys=True), HEADER_KEY: provenance}
        probes = {k: v.detach().cpu().contiguous() for k, v in self.probes.items()}

        atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(weights, tmp, metadata=header))
        if probes:
            atomic_write(folder / PROBES_NAME, lambda tmp: save_file(probes, tmp, metadata={"format": "pt"}))
        atomic_write(
            folder / METADATA_NAME,
            lambda tmp: Path(tmp).write_text(json.dumps(self.metadata, indent=2, sort_keys=True) + "\n"),
        )
        if push_to_hub:
            self.push_to_hub(push_kwargs.pop("repo_id", folder.resolve().name), **push_kwargs)
        elif push_kwargs:
            raise TypeError(f"save_pretrained got {sorted(push_kwargs)}, which only apply with push_to_hub=True.")
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str | None = None,
        revision: str | None = None,
        report=None,
        endpoint: str | None = None,
    ) -> CommitInfo:
        """Publishes the removal to a Hub repo, its files at the root (see [`hub.push_adapter`]).

        Vanilla `pipe.load_lora_weights(repo_id)` loads the result; `from_pretrained(repo_id)` pulls it verified.

        Args:
            repo_id (`str`): `"org/name"`; created if needed.
            private (`bool`, defaults to `False`): Create the repo private.
            token (`str`, *optional*): Hub token with write access; default the stored one.
            commit_message (`str`, *optional*): Default `"Publish <name>"`.
            revision (`str`, *optional*): Branch to push to; default `"main"`.
            report ([`InterferenceReport`], *optional*): Shown in the model card.
            endpoint (`str`, *optional*): Hub endpoint; default `HF_ENDPOINT`.

        Returns:
            `huggingface_hub.CommitInfo`: the commit (`.oid`: pin it when loading).

        Example:
            ```py
            >>> info = adapter.push_to_hub("org/no-seven")
            >>> UnlearningAdapter.from_pretrained("org/no-seven", revision=info.oid)
            ```
        """
        from .hub import push_adapter

        return push_adapter(
            self,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
            report=report,
            endpoint=endpoint,
        )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        endpoint: str | None = None,
    ) -> UnlearningAdapter:
        """Reads a removal written by [`save_pretrained`], or pulls one from the Hub (see [`hub.load_adapter`]).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): The folder (or its
                `pytorch_lora_weights.safetensors`), or a Hub repo id (`"org/name"`) written by [`push_to_hub`].
            revision (`str`, *optional*): Branch, tag or commit of the Hub repo; default `"main"`.
            token, cache_dir, local_files_only, endpoint: As in `huggingface_hub.snapshot_download`.

        Raises:
            AdapterNotFoundError: No weights file there, no such repo, or not cached while offline.
            AdapterFormatError: The file is not a valid removal (see the message for what is wrong), or a pulled file
                does not match its sha256.
        """
        from . import hub  # hub imports this module

        path = pretrained_model_name_or_path
        if not os.path.exists(path) and hub.is_repo_id(path):
            return hub.load_adapter(
                path,
                revision=revision,
                token=token,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                endpoint=endpoint,
            )
        if revision is not None:
            raise ValueError(f"`revision={revision!r}` applies to Hub repos; {path} is a local path.")
        folder = Path(path)
        if folder.is_file():
            folder = folder.parent
        weights_path = folder / WEIGHTS_NAME
        if not weights_path.is_file():
            raise AdapterNotFoundError(
                f"No removal at {folder}: expected {WEIGHTS_NAME} there. Pass the folder that "
                '`UnlearningAdapter.save_pretrained` wrote, or the id ("org/name") of a repo `push_to_hub` wrote.'
            )
        try:
            with safe_open(weights_path, framework="pt") as handle:
                header = handle.metadata() or {}
                weights = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except Exception as error:  # safetensors raises several types for corrupt files
            raise AdapterFormatError(f"{weights_path} is not a readable safetensors file: {error}") from error
        if HEADER_KEY not in header:
            raise AdapterFormatError(
                f"{weights_path} is a LoRA without diffusers-unlearn provenance; load it with "
                "`pipe.load_lora_weights` instead, or re-create it with `diffusers_unlearn.erase`."
            )
        metadata = _parse_metadata(header[HEADER_KEY], weights_path)
        sidecar = folder / METADATA_NAME
        if sidecar.is_file() and json.loads(sidecar.read_text()) != metadata:
            raise AdapterFormatError(
                f"{sidecar} disagrees with the provenance inside {WEIGHTS_NAME}: one was edited by hand. "
                f"The header is authoritative; delete {METADATA_NAME} to regenerate it with save_pretrained."
            )
        probes = {}
        if (folder / PROBES_NAME).is_file():
            try:
                with safe_open(folder / PROBES_NAME, framework="pt") as handle:
                    probes = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            except Exception as error:
                raise AdapterFormatError(f"{folder / PROBES_NAME} is not a readable safetensors file.") from error
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
    "parents": list, "figures": dict, "hyperparameters": dict, "members": list, "adapter_id": str,
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
