"""`UnlearningStack`: an ordered chain of removals, saved as one folder with a manifest.

On disk (DESIGN §4-5)::

    removals/
      unlearning_stack.json      # format version, base model and fingerprint, ordered entries with sha256
      adapters/001-no-seven/     # each an UnlearningAdapter folder (a diffusers LoRA)
      adapters/002-no-red/

Interference checks, the joint re-solve and withdrawal with re-solve are planned (see the stack issue); this
module holds the chain, its files, its loading and the exact / SVD merges.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from diffusers import DiffusionPipeline

from .adapter import FORMAT_VERSION, WEIGHTS_NAME, UnlearningAdapter, atomic_write, sha256_file
from .errors import AdapterFormatError, AdapterNameError, AdapterNotFoundError, BaseModelMismatchError

MANIFEST_NAME = "unlearning_stack.json"


class UnlearningStack:
    """An ordered chain of [`UnlearningAdapter`]s for one base model.

    Args:
        adapters (`Sequence[UnlearningAdapter]`): The removals, oldest first.

    Example:
        ```py
        >>> stack = UnlearningStack()
        >>> stack.append(diffusers_unlearn.erase(pipe, "seven", aliases=["7"]))
        >>> stack.save_pretrained("removals")
        >>> pipe.load_unlearning("removals")  # the whole chain, in order, all or nothing
        ```
    """

    def __init__(self, adapters: Sequence[UnlearningAdapter] = ()):
        self._adapters: list[UnlearningAdapter] = []
        for adapter in adapters:
            self.append(adapter)

    # ------------------------------------------------------------------------------------------- chain
    @property
    def adapters(self) -> tuple[UnlearningAdapter, ...]:
        return tuple(self._adapters)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self._adapters]

    @property
    def base_fingerprint(self) -> str | None:
        return self._adapters[0].base_fingerprint if self._adapters else None

    def __len__(self) -> int:
        return len(self._adapters)

    def __iter__(self) -> Iterator[UnlearningAdapter]:
        return iter(self._adapters)

    def __getitem__(self, key: int | str) -> UnlearningAdapter:
        if isinstance(key, str):
            return self._adapters[self._index(key)]
        return self._adapters[key]

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise AdapterNameError(f"No removal named {name!r} in the stack; it holds {self.names}.")
        return self.names.index(name)

    def append(self, adapter: UnlearningAdapter) -> None:
        """Adds a removal at the end (typically one made with the stack loaded on the pipeline).

        Raises:
            AdapterNameError: The name is already in the stack.
            BaseModelMismatchError: The removal was made for other base weights than the stack's.
        """
        if adapter.name in self.names:
            raise AdapterNameError(f"The stack already holds a removal named {adapter.name!r}.")
        if self._adapters and adapter.base_fingerprint != self.base_fingerprint:
            raise BaseModelMismatchError(
                f"Removal {adapter.name!r} was made for base weights {adapter.base_fingerprint}; this stack's are "
                f"{self.base_fingerprint}."
            )
        self._adapters.append(adapter)

    def remove(self, name: str) -> UnlearningAdapter:
        """Takes a removal out of the chain and returns it. Later removals are kept as they are (re-solving
        them without it is planned)."""
        return self._adapters.pop(self._index(name))

    def reorder(self, names: Sequence[str]) -> None:
        """Puts the removals in the given order (every name exactly once)."""
        if sorted(names) != sorted(self.names):
            raise AdapterNameError(f"reorder needs each of {self.names} exactly once, got {list(names)}.")
        self._adapters = [self[name] for name in names]

    def apply(self, pipe: DiffusionPipeline, *, fuse: bool = False):
        """Loads every removal onto `pipe`, in order, all or nothing (see [`load_unlearning`])."""
        from .pipeline import load_unlearning

        return load_unlearning(pipe, list(self._adapters), fuse=fuse)

    def check(self, pipe: DiffusionPipeline, **thresholds):
        """Interference report of the removals on each other (see [`check_interference`]); no image generated.

        Example:
            ```py
            >>> report = stack.check(pipe)
            >>> print(report)  # undo matrix, collateral, verdict
            >>> report.passed
            ```
        """
        from .interference import check_interference

        return check_interference(pipe, list(self._adapters), **thresholds)

    def merge(self, method: str = "concat", *, rank: int | None = None, name: str | None = None) -> UnlearningAdapter:
        """Merges the chain into one removal that vanilla diffusers loads.

        Args:
            method (`str`): `"concat"`: the exact sum (factors stacked; rank = sum of ranks).
                `"svd"`: the sum compressed per layer to `rank` by a truncated SVD; the relative Frobenius error
                of each layer is recorded in `metadata["figures"]["merge_error"]` (the largest).
                (`"joint"`, a re-solve of all members' constraints, is not there yet.)
            rank (`int`, *optional*): Target rank for `"svd"` (default: the largest member rank).
            name (`str`, *optional*): Name of the merged removal (default `"merged-<n>-removals"`).
        """
        import torch

        if not self._adapters:
            raise ValueError("The stack is empty: nothing to merge.")
        if method not in ("concat", "svd"):
            raise ValueError(f"Unknown merge method {method!r}; available: 'concat', 'svd' ('joint' is planned).")
        denoiser = self._adapters[0].denoiser
        layers = list(dict.fromkeys(layer for a in self._adapters for layer in a.layer_names))
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        worst_error = 0.0
        for layer in layers:
            members = [a.factors(layer) for a in self._adapters if layer in a.layer_names]
            down = torch.cat([a_.float() for a_, _ in members])
            up = torch.cat([b_.float() for _, b_ in members], dim=1)
            if method == "svd":
                target = rank or max(a.rank for a in self._adapters)
                delta = up @ down
                u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
                up, down = u[:, :target] * sv[:target], vh[:target]
                kept = (up @ down - delta).norm() / delta.norm().clamp_min(1e-30)
                worst_error = max(worst_error, float(kept))
            factors[layer] = (down, up)
        merged_rank = max(d.shape[0] for d, _ in factors.values())
        weights = {}
        for layer, (down, up) in factors.items():  # pad to one rank: diffusers' LoraConfig has one r
            pad = merged_rank - down.shape[0]
            weights[f"{denoiser}.{layer}.lora_A.weight"] = torch.nn.functional.pad(down, (0, 0, 0, pad))
            weights[f"{denoiser}.{layer}.lora_B.weight"] = torch.nn.functional.pad(up, (0, pad))
        first = self._adapters[0].metadata
        metadata = {
            "format_version": FORMAT_VERSION,
            "name": name or f"merged-{len(self)}-removals",
            "concept": None,
            "redacted": any(a.concept is None for a in self._adapters),
            "method": f"merge:{method}",
            "members": [
                {"name": a.name, "concept": a.concept, "adapter_id": a.metadata.get("adapter_id")} for a in self
            ],
            "family": first.get("family"),
            "denoiser": denoiser,
            "base_model": first.get("base_model"),
            "base_fingerprint": self.base_fingerprint,
            "rank": merged_rank,
            "figures": {"merge_error": worst_error},
        }
        probes = {}
        moments = [a.probes["forget_moment"] for a in self if "forget_moment" in a.probes]
        if moments:  # later removals must protect every member's forget inputs
            probes["forget_moment"] = torch.cat([m.float() for m in moments])
        merged = UnlearningAdapter(lora_weights=weights, metadata=metadata, probes=probes)
        merged.validate()
        return merged

    # ------------------------------------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Writes every removal under `adapters/NNN-name/`, then the manifest (last, atomically): a reader sees
        the previous manifest or the complete new one."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for position, adapter in enumerate(self._adapters, 1):
            relative = Path("adapters") / f"{position:03d}-{adapter.name}"
            adapter.save_pretrained(folder / relative)
            entries.append(
                {
                    "name": adapter.name,
                    "path": relative.as_posix(),
                    "sha256": sha256_file(folder / relative / WEIGHTS_NAME),
                    "concept": adapter.concept,
                    "adapter_id": adapter.metadata.get("adapter_id"),
                }
            )
        first = self._adapters[0].metadata if self._adapters else {}
        manifest = {
            "format_version": FORMAT_VERSION,
            "base_model": first.get("base_model"),
            "base_fingerprint": self.base_fingerprint,
            "entries": entries,
        }
        text = json.dumps(manifest, indent=2) + "\n"
        atomic_write(folder / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))
        return folder

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> UnlearningStack:
        """Reads a stack folder (or its manifest), checking every weights file against its recorded sha256.

        Raises:
            AdapterNotFoundError: No manifest, or a listed adapter folder is missing.
            AdapterFormatError: Malformed manifest, unknown format version, or a weights file that does not
                match its sha256 (modified after the stack was saved).
        """
        manifest_path = Path(path)
        if manifest_path.is_dir():
            manifest_path = manifest_path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise AdapterNotFoundError(f"No {MANIFEST_NAME} at {path}: pass a folder written by save_pretrained.")
        try:
            manifest = json.loads(manifest_path.read_text())
            version, entries = str(manifest["format_version"]), list(manifest["entries"])
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise AdapterFormatError(f"{manifest_path} is not a valid stack manifest: {error}") from error
        if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
            raise AdapterFormatError(f"{manifest_path} has format version {version}; upgrade diffusers-unlearn.")
        adapters = []
        for entry in entries:
            folder = manifest_path.parent / entry["path"]
            if not (folder / WEIGHTS_NAME).is_file():
                raise AdapterNotFoundError(f"The stack lists {entry['path']}, which is missing.")
            if sha256_file(folder / WEIGHTS_NAME) != entry["sha256"]:
                raise AdapterFormatError(
                    f"{entry['path']}/{WEIGHTS_NAME} does not match the sha256 in {MANIFEST_NAME}: it was modified "
                    "after the stack was saved. Refusing to load it; restore the file or re-save the stack."
                )
            adapters.append(UnlearningAdapter.from_pretrained(folder))
        return cls(adapters)


def is_stack(path: str | os.PathLike) -> bool:
    """Whether `path` is a stack folder or a stack manifest."""
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (path.is_file() and path.name == MANIFEST_NAME)
