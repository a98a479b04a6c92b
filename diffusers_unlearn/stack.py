"""`UnlearningStack`: an ordered chain of removals, saved as one folder with a manifest.

On disk (DESIGN §4-5)::

    removals/
      unlearning_stack.json      # format version, base model and fingerprint, ordered entries with sha256
      adapters/001-no-seven/     # each an UnlearningAdapter folder (a diffusers LoRA)
      adapters/002-no-red/

The stack checks its removals for interference ([`check_interference`]), merges them (exact sum, SVD
compression, or a joint closed-form re-solve) and withdraws one from the middle of a chain by re-solving the
removals that were made on top of it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from diffusers import DiffusionPipeline

from .adapter import FORMAT_VERSION, WEIGHTS_NAME, UnlearningAdapter, atomic_write, content_id, sha256_file
from .constraints import config_of, constraints_of, forget_pairs, joint_constraints, moment_factor, solve
from .errors import (
    AdapterFormatError,
    AdapterNameError,
    BaseModelMismatchError,
    ResolveError,
    UnlearningError,
)
from .interference import InterferenceReport, check_interference
from .pipeline import (
    LoadedUnlearning,
    LoadMode,
    base_fingerprint,
    load_unlearning,
    loaded_adapters,
    unload_unlearning,
)

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

MANIFEST_NAME = "unlearning_stack.json"
_JOINT_MIN_ENERGY = 0.999  # members' remaps are already truncated: keep nearly all of the joint edit


logger = logging.getLogger(__name__)


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
        if adapter.name in self.names:
            raise AdapterNameError(f"The stack already holds a removal named {adapter.name!r}.")
        if self._adapters and adapter.base_fingerprint != self.base_fingerprint:
            raise BaseModelMismatchError(
                f"Removal {adapter.name!r} was made for base weights {adapter.base_fingerprint}; this stack's are "
                f"{self.base_fingerprint}."
            )
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
                load_unlearning(pipe, chain)
            for adapter in self._adapters[index + 1 :]:
                if adapter.name in dependents:
                    adapter = _resolved(pipe, adapter, withdrawn)
                load_unlearning(pipe, adapter)
                chain.append(adapter)
        finally:
            unload_unlearning(pipe)
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
        return load_unlearning(pipe, list(self._adapters), mode=mode, check=check)

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
        if not self._adapters:
            raise ValueError("The stack is empty: nothing to merge.")
        if method == "joint":
            return self._merge_joint(pipe, rank, name)
        if method not in ("concat", "svd"):
            raise ValueError(f"Unknown merge method {method!r}; available: 'concat', 'svd', 'joint'.")
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
        probes = {}
        for key in ("forget_moment", "protect_moment"):  # the members' mean moment, as the chain protects them
            factors_ = [a.probes[key].double() for a in self if key in a.probes]
            if factors_:
                probes[key] = moment_factor(sum(f.T @ f for f in factors_) / len(factors_))
        metadata = self._merged_metadata(method, name, merged_rank, {"merge_error": worst_error})
        return self._merged(weights, metadata, probes)

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
        metadata = self._merged_metadata("joint", name, solution.remap.rank, solution.figures)
        metadata["hyperparameters"] = dataclasses.asdict(config)
        return self._merged(solution.lora, metadata, solution.probes)

    def _merged_metadata(self, method: str, name: str | None, rank: int, figures: dict) -> dict:
        first = self._adapters[0].metadata
        return {
            "format_version": FORMAT_VERSION,
            "name": name or f"merged-{len(self)}-removals",
            "concept": None,
            "redacted": any(a.concept is None for a in self._adapters),
            "method": f"merge:{method}",
            "members": [
                {"name": a.name, "concept": a.concept, "adapter_id": a.metadata.get("adapter_id")} for a in self
            ],
            "family": first.get("family"),
            "denoiser": first.get("denoiser", "unet"),
            "base_model": first.get("base_model"),
            "base_fingerprint": self.base_fingerprint,
            "rank": rank,
            "figures": figures,
        }

    @staticmethod
    def _merged(weights: dict, metadata: dict, probes: dict) -> UnlearningAdapter:
        merged = UnlearningAdapter(lora_weights=weights, metadata=metadata, probes=probes)
        merged.metadata["adapter_id"] = content_id(weights)
        merged.validate()
        return merged

    # ------------------------------------------------------------------------------------------- files
    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **push_kwargs) -> Path:
        """Writes every removal under `adapters/NNN-name/`, then the manifest (last, atomically).

        Saving over an earlier save never modifies a folder the old manifest lists: a removal already saved there
        is kept as it is, and a different removal at the same position goes to a new folder
        (`NNN-name-<id>`). Folders no manifest lists are deleted only after the new manifest is in place, so a
        save killed at any point leaves the previous chain or the new one readable and verified.

        Args:
            save_directory (`str` or `os.PathLike`): The stack folder (created if needed).
            push_to_hub (`bool`, defaults to `False`): Also publish the chain with [`push_to_hub`], to
                `push_kwargs["repo_id"]` (default: the folder's name), as diffusers' `save_pretrained` does.
            push_kwargs: Passed to [`push_to_hub`] (`repo_id`, `private`, `token`, `commit_message`, `revision`,
                `report`, `parent_commit`, `endpoint`).

        Returns:
            `Path`: the folder.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for position, adapter in enumerate(self._adapters, 1):
            relative = Path("adapters") / f"{position:03d}-{adapter.name}"
            if (folder / relative).exists() and not _holds(folder / relative, adapter):
                relative = relative.with_name(f"{relative.name}-{adapter.metadata.get('adapter_id', 'new')[:8]}")
            if not _holds(folder / relative, adapter):
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
        listed = {entry["path"] for entry in entries}
        for stale in sorted((folder / "adapters").iterdir()) if (folder / "adapters").is_dir() else ():
            if stale.is_dir() and f"adapters/{stale.name}" not in listed:
                shutil.rmtree(stale, ignore_errors=True)
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
        report: InterferenceReport | None = None,
        parent_commit: str | None = None,
        endpoint: str | None = None,
    ) -> CommitInfo:
        """Publishes the chain to a Hub repo in one commit: `adapters/NNN-name/` per removal, the manifest (sha256
        of every file) and a model card (see [`hub.push_stack`]; to add one removal later, [`hub.append_to_hub`]).

        Args:
            repo_id (`str`): `"org/name"`; created if needed.
            private, token, commit_message, revision, endpoint: As in [`UnlearningAdapter.push_to_hub`].
            report ([`InterferenceReport`], *optional*): Shown in the model card, e.g. `stack.check(pipe)`.
            parent_commit (`str`, *optional*): Write only if the branch still points to this commit.

        Returns:
            `huggingface_hub.CommitInfo`: the commit.

        Raises:
            ConcurrentUpdateError: The branch moved past `parent_commit`; nothing was written.

        Example:
            ```py
            >>> stack.push_to_hub("org/no-sevens", report=stack.check(pipe))
            >>> pipe.load_unlearning("org/no-sevens")
            ```
        """
        from .hub import push_stack

        return push_stack(
            self,
            repo_id,
            private=private,
            token=token,
            commit_message=commit_message,
            revision=revision,
            report=report,
            parent_commit=parent_commit,
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
    ) -> UnlearningStack:
        """Reads a stack folder (or its manifest), checking every weights file against its recorded sha256, or
        pulls a chain from the Hub (see [`hub.load_stack`]: every file verified, entries kept in other repos fetched
        at their pinned commit).

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): A folder written by [`save_pretrained`] (or its
                manifest), or a Hub repo id (`"org/name"`).
            revision (`str`, *optional*): Branch, tag or commit of the Hub repo; default `"main"`.
            token, cache_dir, local_files_only, endpoint: As in `huggingface_hub.snapshot_download`.

        Raises:
            AdapterNotFoundError: No manifest, a listed adapter folder is missing, no such repo, or not cached while
                offline.
            AdapterFormatError: Malformed manifest, unknown format version, or a weights file that does not
                match its sha256 (modified after the stack was saved).
        """
        from . import hub

        path = pretrained_model_name_or_path
        if revision is not None and os.path.exists(path):
            raise ValueError(f"`revision={revision!r}` applies to Hub repos; {path} is a local path.")
        # one reader for local and pulled chains: manifest schema, every listed file against its sha256, names, and
        # the chain's base fingerprint
        return hub.load_stack(
            path,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            endpoint=endpoint,
        )


def _holds(folder: Path, adapter: UnlearningAdapter) -> bool:
    """Whether `folder` already holds exactly this removal (same provenance, same tensors, same probes)."""
    if not (folder / WEIGHTS_NAME).is_file():
        return False
    try:
        saved = UnlearningAdapter.from_pretrained(folder)
    except UnlearningError:
        return False
    same_probes = saved.probes.keys() == adapter.probes.keys() and all(
        torch.equal(saved.probes[k].cpu(), adapter.probes[k].detach().cpu()) for k in saved.probes
    )
    return (
        saved.metadata == adapter.metadata
        and content_id(saved.lora_weights) == content_id(adapter.lora_weights)
        and same_probes
    )


def check_parents(adapters: Sequence[UnlearningAdapter]) -> None:
    """Checks the removals' recorded parents (what each was made on top of) against the chain.

    A parent the chain holds under its name but with other weights (a stale chain: the parent was re-made and this
    removal was not) and parents that form a cycle (provenance that cannot be true) are refused. A parent the chain
    does not hold at all is allowed, with a warning: the removal still erases its concept, it was just solved on a
    model that carried that parent. The order within the chain does not matter: the edits add up.

    Raises:
        AdapterFormatError: Malformed parents, a stale parent, or a cycle.
    """
    by_name = {adapter.name: adapter for adapter in adapters}
    graph: dict[str, list[str]] = {}
    for adapter in adapters:
        parents = adapter.metadata.get("parents", [])
        if not all(isinstance(p, dict) and isinstance(p.get("name"), str) for p in parents):
            raise AdapterFormatError(f"Removal {adapter.name!r} has malformed `parents` in its provenance.")
        for parent in parents:
            held, recorded = by_name.get(parent["name"]), parent.get("adapter_id")
            if held is None:
                logger.warning(
                    "Removal %r was made on top of %r, which this chain does not hold; it still erases its concept, "
                    "but was solved on a model that carried %r.", adapter.name, parent["name"], parent["name"]
                )  # fmt: skip
            elif recorded and held.metadata.get("adapter_id") not in (None, recorded):
                raise AdapterFormatError(
                    f"Removal {adapter.name!r} was made on top of {parent['name']!r} with id {recorded}, but the "
                    f"chain holds a different {parent['name']!r} ({held.metadata.get('adapter_id')}): the chain is "
                    f"stale. Re-make {adapter.name!r} on top of the current {parent['name']!r}."
                )
        graph[adapter.name] = [p["name"] for p in parents if p["name"] in by_name]
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
    if loaded_adapters(pipe):
        raise ResolveError(
            f"To {action}, pass the base pipeline: unload its removals first (pipe.unload_unlearning())."
        )
    if base_fingerprint(pipe) != stack.base_fingerprint:
        raise BaseModelMismatchError(
            f"The stack was made for base weights {stack.base_fingerprint}; this pipeline's are "
            f"{base_fingerprint(pipe)}."
        )


def _resolved(pipe: DiffusionPipeline, adapter: UnlearningAdapter, withdrawn: UnlearningAdapter) -> UnlearningAdapter:
    """`adapter` re-solved from its constraints on `pipe` as loaded now (its earlier removals, without `withdrawn`)."""
    previous = loaded_adapters(pipe)
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
    """Whether `path` is a stack folder or a stack manifest."""
    path = Path(path)
    return (path / MANIFEST_NAME).is_file() or (path.is_file() and path.name == MANIFEST_NAME)
