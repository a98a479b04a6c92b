"""`UnlearningStack`: an ordered chain of removals, saved as one folder with a manifest.

On disk (DESIGN §4-5)::

    removals/
      unlearning_stack.json      # format version, base model and fingerprint, ordered entries with sha256
      adapters/001-no-seven/     # each an UnlearningAdapter folder (a diffusers LoRA)
      adapters/002-no-red/

The stack checks its removals for interference ([`check_interference`]), merges them (exact sum, SVD
compression, or a joint closed-form re-solve) and withdraws one from the middle of a chain by re-solving the
removals that were made on top of it. It drives a pipeline only through the members `import diffusers_unlearn`
gives it (`pipe.load_unlearning`, `pipe.unload_unlearning`, `pipe.unlearning`): this module does not import
`pipeline.py`, and `pipeline.py` does not import it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from diffusers import DiffusionPipeline

from .adapter import UnlearningAdapter, content_id, read_removals, write_removals
from .constraints import config_of, constraints_of, forget_pairs, joint_constraints, solve
from .errors import AdapterNameError, BaseModelMismatchError, ResolveError
from .families import family_of
from .hub import HubMixin, HubOptions
from .interference import InterferenceReport, check_interference
from .layers import denoiser_of, edited_layers, fingerprints, same_base
from .manifest import MANIFEST_NAME, WEIGHTS_NAME, manifest_path
from .merge import merge_removals, merged, merged_metadata

if TYPE_CHECKING:
    from .pipeline import LoadedUnlearning, LoadMode

__all__ = ["MANIFEST_NAME", "UnlearningStack", "is_stack"]

_JOINT_MIN_ENERGY = 0.999  # members' remaps are already truncated: keep nearly all of the joint edit


logger = logging.getLogger(__name__)


class UnlearningStack(HubMixin):
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

    def __repr__(self) -> str:
        chain = " -> ".join(self.names) if self._adapters else "empty"
        base = f", base={self._adapters[0].metadata.get('base_model')!r}" if self._adapters else ""
        return f"UnlearningStack({len(self)} removals: {chain}{base})"

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
        if self._adapters and not same_base(adapter.metadata, self._adapters[0].metadata):
            raise BaseModelMismatchError(
                f"Removal {adapter.name!r} was made for base weights {adapter.base_fingerprint}; this stack's are "
                f"{self.base_fingerprint}."
            )
        if adapter.name in self.names:
            raise AdapterNameError(f"The stack already holds a removal named {adapter.name!r}.")
        self._adapters.append(adapter)

    def remove(self, name: str, *, pipe: DiffusionPipeline | None = None, resolve: bool = True) -> UnlearningAdapter:
        """Withdraws a removal from the chain and returns it.

        Removals made on top of it (it is among their `parents`) were solved on a model that carried it: their
        weights depend on it. With `pipe`, each of them is re-solved, in order, from its stored constraints (same
        forget prompts, targets and protected prompts) on the base model with the remaining earlier removals
        loaded; the re-solved removals keep their names and record what they replace under `"resolved"`.

        Args:
            name (`str`): The removal to withdraw.
            pipe (`DiffusionPipeline`, *optional*): The base pipeline, with no removal loaded; needed when later
                removals depend on the withdrawn one. It is left as it was.
            resolve (`bool`, defaults to `True`): `False` keeps the later removals as they are (they then still
                carry a share of the withdrawn edit, as protection of its inputs).

        Raises:
            AdapterNameError: No removal of that name.
            ResolveError: Later removals depend on it and `pipe` is missing, or one of them cannot be re-solved
                (redacted or not closed-form); the stack is unchanged.

        Example:
            ```py
            >>> stack.remove("no-red", pipe=pipe)  # "no-blue-three", made on top, is re-solved without it
            ```
        """
        index = self._index(name)
        withdrawn = self._adapters[index]
        changed = {withdrawn.name}
        while True:  # made on top of it, directly or through another one, wherever they sit in the chain
            more = {a.name for a in self._adapters if any(_made_on(a, c) for c in changed)}
            if more <= changed:
                break
            changed |= more
        dependents = [a.name for a in self._adapters if a.name in changed and a is not withdrawn]
        if not dependents or not resolve:
            self._adapters = [
                _detached(adapter, withdrawn.name) if _made_on(adapter, withdrawn.name) else adapter
                for adapter in self._adapters
                if adapter is not withdrawn
            ]
            return withdrawn
        if pipe is None:
            raise ResolveError(
                f"{dependents} were made on top of {name!r}; pass `pipe=` (the base pipeline) to re-solve them "
                "without it, or `resolve=False` to keep them as they are."
            )
        if any(self._index(d) < index for d in dependents):
            raise ResolveError(
                f"{dependents} were made on top of {name!r} but some now come before it (the chain was reordered); "
                "reorder it so that every removal follows what it was made on top of, then withdraw."
            )
        for dependent in dependents:
            forget_pairs(self[dependent])  # raises now, before any work, if one cannot be re-solved
        _require_base(pipe, self, "withdraw a removal")
        chain = self._adapters[:index]
        try:
            if chain:
                pipe.load_unlearning(chain)
            for adapter in self._adapters[index + 1 :]:
                if adapter.name in dependents:
                    adapter = _resolved(pipe, adapter, withdrawn, chain)
                pipe.load_unlearning(adapter)
                chain.append(adapter)
        finally:
            pipe.unload_unlearning()
        self._adapters = chain
        return withdrawn

    def reorder(self, names: Sequence[str]) -> None:
        """Puts the removals in the given order (every name exactly once)."""
        if sorted(names) != sorted(self.names):
            raise AdapterNameError(f"reorder needs each of {self.names} exactly once, got {list(names)}.")
        self._adapters = [self[name] for name in names]

    def apply(
        self, pipe: DiffusionPipeline, *, mode: LoadMode = "adapters", check: bool | Literal["warn"] = False
    ) -> tuple[LoadedUnlearning, ...]:
        """Loads every removal onto `pipe`, in order, all or nothing (see [`load_unlearning`] for `mode`, `check`)."""
        return pipe.load_unlearning(list(self._adapters), mode=mode, check=check)

    def check(self, pipe: DiffusionPipeline, **thresholds: float) -> InterferenceReport:
        """Interference report of the removals on each other (see [`check_interference`]); no image generated.

        Example:
            ```py
            >>> report = stack.check(pipe)
            >>> print(report)  # undo matrix, collateral, verdict
            >>> report.passed
            ```
        """
        return check_interference(pipe, list(self._adapters), **thresholds)

    def merge(
        self,
        method: Literal["concat", "svd", "joint"] = "concat",
        *,
        pipe: DiffusionPipeline | None = None,
        rank: int | None = None,
        name: str | None = None,
    ) -> UnlearningAdapter:
        """Merges the chain into one removal that vanilla diffusers loads.

        Args:
            method (`str`):
                - `"concat"`: the exact sum (factors stacked; rank = sum of ranks).
                - `"svd"`: the sum compressed per layer to `rank` by a truncated SVD; the largest relative
                  Frobenius error over the layers is recorded in `metadata["figures"]["merge_error"]`.
                - `"joint"`: every member's constraints re-solved at once on the base model (closed-form members
                  only; needs `pipe`). Where the members interfere (one erases what another protects, or both
                  move the same prompts), the joint solve finds the one edit that serves all of them instead of
                  adding their edits; a protected prompt that some member erases is not protected.
            pipe (`DiffusionPipeline`, *optional*): The base pipeline with no removal loaded (`"joint"` only).
            rank (`int`, *optional*): Target rank: for `"svd"` default the largest member rank; for `"joint"`
                default the smallest keeping 99.9% of the edit, at most the sum of the member ranks.
            name (`str`, *optional*): Name of the merged removal (default `"merged-<n>-removals"`).

        Raises:
            ResolveError: `"joint"` without `pipe`, with removals loaded on it, or with members that cannot be
                re-solved.

        Example:
            ```py
            >>> merged = stack.merge("joint", pipe=pipe)
            >>> merged.save_pretrained("no-sevens")  # one diffusers LoRA for the whole chain
            ```
        """
        if method == "joint":
            return self._merge_joint(pipe, rank, name)
        return merge_removals(self._adapters, method, rank=rank, name=name)

    def _merge_joint(self, pipe: DiffusionPipeline | None, rank: int | None, name: str | None) -> UnlearningAdapter:
        if pipe is None:
            raise ResolveError("merge('joint') re-solves on the base model: pass `pipe=` (the base pipeline).")
        joint = joint_constraints(list(self))  # raises for members that cannot be re-solved
        _require_base(pipe, self, "merge('joint')")
        config = dataclasses.replace(
            config_of(self._adapters[0]),
            rank=rank,
            max_rank=sum(a.rank for a in self._adapters),
            min_energy=_JOINT_MIN_ENERGY,
        )
        solution = solve(pipe, joint, config)
        metadata = merged_metadata(self._adapters, "joint", name, solution.remap.rank, solution.figures)
        metadata["hyperparameters"] = dataclasses.asdict(config)
        return merged(solution.lora, metadata, solution.probes)

    # ------------------------------------------------------------------------------------------- files
    # `save_pretrained`, `from_pretrained` and `push_to_hub` come from `HubMixin`; these are its hooks.
    def _save_pretrained(self, save_directory: Path) -> None:
        """Every removal under `adapters/NNN-name/`, then the manifest (see [`write_removals`])."""
        write_removals(save_directory, self._adapters)

    @classmethod
    def _from_pretrained(cls, folder: Path, options: HubOptions) -> UnlearningStack:
        """The removals of a chain folder, or of a single removal's folder, verified (see [`read_removals`])."""
        return cls(read_removals(folder, options))

    def _removals(self) -> list[UnlearningAdapter]:
        return list(self._adapters)


def _made_on(adapter: UnlearningAdapter, name: str) -> bool:
    """Whether `adapter` was made with the removal `name` loaded (it is among its parents)."""
    return any(parent.get("name") == name for parent in adapter.metadata.get("parents", []))


def _detached(adapter: UnlearningAdapter, withdrawn: str) -> UnlearningAdapter:
    """A copy of `adapter` that no longer names `withdrawn` among its parents (kept as it was: `resolve=False`)."""
    metadata = copy.deepcopy(adapter.metadata)
    metadata["parents"] = [p for p in metadata.get("parents", []) if p.get("name") != withdrawn]
    metadata["detached_from"] = [*metadata.get("detached_from", []), withdrawn]
    return UnlearningAdapter(lora_weights=adapter.lora_weights, metadata=metadata, probes=adapter.probes)


def _require_base(pipe: DiffusionPipeline, stack: UnlearningStack, action: str) -> None:
    """Re-solving needs the bare base model: nothing of ours loaded, the stack's base weights."""
    if pipe.unlearning:
        raise ResolveError(
            f"To {action}, pass the base pipeline: unload its removals first (pipe.unload_unlearning())."
        )
    found = fingerprints(edited_layers(denoiser_of(pipe), family_of(pipe)))
    if stack.adapters and not same_base(stack.adapters[0].metadata, found):
        raise BaseModelMismatchError(
            f"The stack was made for base weights {stack.base_fingerprint}; this pipeline's are "
            f"{found['base_fingerprint']}."
        )


def _resolved(
    pipe: DiffusionPipeline,
    adapter: UnlearningAdapter,
    withdrawn: UnlearningAdapter,
    previous: Sequence[UnlearningAdapter],
) -> UnlearningAdapter:
    """`adapter` re-solved from its constraints on `pipe`, loaded with `previous` (its earlier removals, without
    `withdrawn`)."""
    solution = solve(
        pipe,
        constraints_of(adapter),
        config_of(adapter),
        protect_factors=[a.probes["forget_moment"] for a in previous if "forget_moment" in a.probes],
    )
    metadata = copy.deepcopy(adapter.metadata)
    metadata.update(
        rank=solution.remap.rank,
        parents=[{"name": a.name, "adapter_id": a.metadata.get("adapter_id")} for a in previous],
        figures={**adapter.metadata.get("figures", {}), **solution.figures},
        adapter_id=content_id(solution.lora),
        resolved={"withdrawn": withdrawn.name, "replaces": adapter.metadata.get("adapter_id")},
    )
    resolved = UnlearningAdapter(lora_weights=solution.lora, metadata=metadata, probes=solution.probes)
    resolved.validate()
    return resolved


def is_stack(path: str | os.PathLike) -> bool:
    """Whether `path` is a chain folder or its manifest (not a single removal's folder, which has its weights at
    the root beside its manifest)."""
    found = manifest_path(path)
    return found is not None and not (found.parent / WEIGHTS_NAME).is_file()
