"""Loading removals onto a pipeline: `load_unlearning`, `unload_unlearning`, `pipe.unlearning`.

Three ways to load (`mode=`): `"adapters"`, each removal an ordinary PEFT adapter (listed by
`pipe.get_list_adapters()`); `"merged"`, all of them summed exactly into one PEFT adapter (one LoRA pass at
inference whatever the stack's size); `"fused"`, added into the edited weights, underneath any PEFT wrapper, so
that no LoRA operation reaches it, with a copy of the weights kept so that unloading restores them bit for bit.
Every load is checked first (base fingerprint, layer names, shapes) and verified after (each layer carries the
expected delta); a failure anywhere rolls the pipeline back to exactly what it was.

`import diffusers_unlearn` adds `load_unlearning`, `unload_unlearning` and the read-only `unlearning`
property to `DiffusionPipeline`; nothing diffusers defines is replaced. A pipeline that carries removals also gets
guarded LoRA methods on the instance (`load_lora_weights`, `set_adapters`, `disable_lora`, `delete_adapters`,
`fuse_lora`, `unload_lora_weights`, `save_pretrained`): each calls diffusers' own method, then keeps the removals
in effect, or warns with [`InteropWarning`] / refuses with [`InteropError`] (docs/method.md, "Interop").
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import types
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Unpack

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from .adapter import FORMAT_VERSION, UnlearningAdapter, check_parents, content_id, load_removals, write_removals
from .errors import (
    AdapterFormatError,
    AdapterNameError,
    BaseModelMismatchError,
    InterferenceError,
    InteropError,
    InteropWarning,
    InvalidArgumentError,
    InvalidTypeError,
    VerificationError,
)
from .families import family_of
from .hub import HubKwargs, HubOptions
from .interference import check_interference
from .layers import active_adapters as _active_adapters
from .layers import base_linear, edited_layers, fingerprints, same_base
from .layers import denoiser_of as _denoiser
from .merge import merge_removals
from .peft_inject import load_lora_adapter

logger = logging.getLogger(__name__)

AdapterSource = str | os.PathLike | UnlearningAdapter | Mapping | Iterable[UnlearningAdapter]  # e.g. a stack
LoadMode = Literal["adapters", "merged", "fused"]

_VERIFY_RTOL = 1e-3
_STATE_ATTRIBUTE = "_diffusers_unlearn_state"  # in the pipeline's __dict__: travels with copy.deepcopy(pipe)
PROVENANCE_FOLDER = "unlearning"  # what `pipe.save_pretrained` writes next to the weights when removals are fused


@dataclass(frozen=True)
class LoadedUnlearning:
    """One removal as loaded on a pipeline (what `pipe.unlearning` lists).

    Attributes:
        name (`str`): Adapter name on the pipeline.
        concept (`str | None`): The erased concept; `None` if redacted or for a merged entry.
        mode (`str`): `"adapters"` (its own PEFT adapter), `"merged"` (one PEFT adapter holding several
            removals, listed in `members`) or `"fused"` (added into the weights).
        rank (`int`): LoRA rank.
        verified (`bool`): Re-checked each time it is read: the removal is in effect now, with exactly its stored
            weights (times `scale`). `False` while a LoRA operation has taken it out of effect, fully or in part.
        members (`tuple[str, ...]`): The removals this entry holds (several for a merged entry).
        scale (`float`): The strength it was loaded at (`load_unlearning(..., scale=)`); 1 is the removal as made.
    """

    name: str
    concept: str | None
    mode: str
    rank: int
    verified: bool
    members: tuple[str, ...] = ()
    scale: float = 1.0

    @property
    def fused(self) -> bool:
        return self.mode == "fused"


@dataclass
class _Entry:
    adapter: UnlearningAdapter  # as loaded: its B already multiplied by `scale`
    name: str
    mode: str
    members: tuple[str, ...]
    scale: float = 1.0

    @property
    def fused(self) -> bool:
        return self.mode == "fused"


@dataclass
class _State:
    base_fingerprints: dict[str, str]
    entries: list[_Entry] = field(default_factory=list)
    # layer -> its weight without our fused removals and without any PEFT-merged adapter: the weight PEFT would leave
    # once every merged adapter is unmerged, minus our fused removals. Kept true when a user's fused LoRA is baked in.
    originals: dict[str, torch.Tensor] = field(default_factory=dict)

    def peft_entries(self) -> list[_Entry]:
        return [entry for entry in self.entries if not entry.fused]


def _state(pipe: DiffusionPipeline) -> _State | None:
    return vars(pipe).get(_STATE_ATTRIBUTE)


def _set_state(pipe: DiffusionPipeline, state: _State | None) -> None:
    """Stores the state on the pipeline (so `copy.deepcopy(pipe)` copies it) and guards its LoRA methods."""
    if state is None:
        vars(pipe).pop(_STATE_ATTRIBUTE, None)
        for name in _GUARDS:
            vars(pipe).pop(name, None)
        return
    vars(pipe)[_STATE_ATTRIBUTE] = state
    for name, guard in _GUARDS.items():
        if hasattr(type(pipe), name):
            vars(pipe)[name] = types.MethodType(guard, pipe)


def loaded_adapters(pipe: DiffusionPipeline) -> list[UnlearningAdapter]:
    """The removals loaded on `pipe`, in load order (the stack a new removal is made on top of)."""
    state = _state(pipe)
    return [entry.adapter for entry in state.entries] if state else []


def base_fingerprints(pipe: DiffusionPipeline) -> dict[str, str]:
    """Fingerprints of the pipeline's base weights (`layers.fingerprints`), as they were before any removal was
    fused."""
    state = _state(pipe)
    if state is not None:
        return dict(state.base_fingerprints)
    return fingerprints(edited_layers(_denoiser(pipe), family_of(pipe)))


def unlearning(pipe: DiffusionPipeline) -> tuple[LoadedUnlearning, ...]:
    """What is loaded on `pipe`, in order, re-verified against the model now.

    Example:
        ```py
        >>> pipe.load_unlearning("no-seven")
        >>> pipe.unlearning
        (LoadedUnlearning(name='no-seven', concept='seven', mode='adapters', rank=8, verified=True, ...),)
        ```
    """
    state = _state(pipe)
    if state is None:
        return ()
    return _report(state, _verify(_denoiser(pipe), state))


@contextmanager
def removals_disabled(pipe: DiffusionPipeline, keep_first: int = 0) -> Iterator[None]:
    """Within the block the denoiser computes as if none of our removals were loaded (the untouched model, a user's
    own LoRAs kept), or only the first `keep_first` of them (the chain as it was when the next one was made); on
    exit every weight and scaling is exactly as before, also on error.

    Fused removals (and removals PEFT merged into a weight) are subtracted from a copy-backed weight; the others get
    a zero scaling. Distillation's replay held to the untouched model reads its teacher this way, and its hold of an
    earlier removal held to that removal's own chain (`DistillConfig(earlier_anchor="own")`).

    Example:
        ```py
        >>> with removals_disabled(pipe):
        ...     untouched = pipe("a red seven").images  # as before any removal
        >>> with removals_disabled(pipe, keep_first=1):
        ...     first_only = pipe("a red seven").images  # as right after the first removal was loaded
        ```
    """
    state = _state(pipe)
    if keep_first < 0:
        raise InvalidArgumentError(f"keep_first counts removals kept in effect: it must be >= 0, got {keep_first}.")
    if state is None or len(state.entries) <= keep_first:
        yield
        return
    disabled = state.entries[keep_first:]
    denoiser = _denoiser(pipe)
    saved: dict[str, torch.Tensor] = {}
    scalings: list[tuple[BaseTunerLayer, str, float]] = []

    def subtract(layer: str, delta: torch.Tensor) -> None:
        weight = base_linear(denoiser.get_submodule(layer)).weight
        if layer not in saved:
            saved[layer] = weight.detach().clone()
        weight.copy_((weight.float() - delta.to(weight.device)).to(weight.dtype))

    try:
        with torch.no_grad():
            for layer, delta in _fused_deltas(state, disabled).items():
                subtract(layer, delta)
            for entry in (entry for entry in disabled if not entry.fused):
                for layer in entry.adapter.layer_names:
                    module = denoiser.get_submodule(layer)
                    if not isinstance(module, BaseTunerLayer) or entry.name not in module.lora_A:
                        continue
                    if entry.name in module.merged_adapters:
                        subtract(layer, module.get_delta_weight(entry.name).detach().float())
                    else:
                        scalings.append((module, entry.name, module.scaling[entry.name]))
                        module.scaling[entry.name] = 0.0
        yield
    finally:
        with torch.no_grad():
            for layer, weight in saved.items():
                base_linear(denoiser.get_submodule(layer)).weight.copy_(weight)
        for module, name, scaling in scalings:
            module.scaling[name] = scaling


def _verify(denoiser, state: _State) -> list[bool]:
    """Whether each loaded entry is carried by the model now."""
    fused_total = _fused_deltas(state)  # once for all entries: the check stays linear in the stack size
    return [_is_applied(denoiser, entry, state, fused_total) for entry in state.entries]


def _report(state: _State, verified: list[bool]) -> tuple[LoadedUnlearning, ...]:
    return tuple(
        LoadedUnlearning(
            entry.name, entry.adapter.concept, entry.mode, entry.adapter.rank, ok, entry.members, entry.scale
        )
        for entry, ok in zip(state.entries, verified, strict=True)
    )


def _from_state_dict(weights: Mapping, pipe: DiffusionPipeline, name: str | None) -> UnlearningAdapter:
    """A removal from a bare LoRA state dict (`UnlearningAdapter.lora_weights`, or keys without the `unet.` prefix).

    A state dict carries no provenance: its base model cannot be checked, so it is taken to be this pipeline's.
    """
    denoiser = family_of(pipe).denoiser
    tensors = {}
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AdapterFormatError("A state dict must map LoRA key names to tensors.")
        if not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterFormatError(
                f"{key!r} is not a LoRA key: a removal's state dict holds `<layer>.lora_A.weight` and "
                "`<layer>.lora_B.weight` tensors (as `UnlearningAdapter.lora_weights`)."
            )
        tensors[key if key.startswith(denoiser + ".") else f"{denoiser}.{key}"] = value
    ranks = {value.shape[0] for key, value in tensors.items() if key.endswith("lora_A.weight") and value.ndim == 2}
    if len(ranks) != 1:
        raise AdapterFormatError(f"A removal has one rank for all its layers; this state dict has {sorted(ranks)}.")
    metadata = {
        "format_version": FORMAT_VERSION,
        "name": name or f"removal-{content_id(tensors)[:8]}",
        "rank": ranks.pop(),
        **base_fingerprints(pipe),
        "method": "unknown",
        "denoiser": denoiser,
        "concept": None,
    }
    adapter = UnlearningAdapter(lora_weights=tensors, metadata=metadata)
    adapter.validate()
    logger.info("Loading a bare state dict as removal %r: it has no provenance, its base model is not checked.", name)
    return adapter


def _scaled(adapter: UnlearningAdapter, scale: float) -> UnlearningAdapter:
    if scale == 1.0:
        return adapter
    weights = {k: v * scale if k.endswith("lora_B.weight") else v for k, v in adapter.lora_weights.items()}
    return UnlearningAdapter(lora_weights=weights, metadata=dict(adapter.metadata), probes=adapter.probes)


def _expand(
    source: AdapterSource, options: HubOptions, pipe, adapter_name: str | None, held: list[UnlearningAdapter]
) -> list[UnlearningAdapter]:
    """The removals a source stands for: one adapter, the removals of a folder or repo (whose parents may be among
    the removals `held`), or those of an iterable (an `UnlearningStack`, a list of adapters)."""
    if isinstance(source, UnlearningAdapter):
        check_parents([source], held)  # as for a folder: a parent neither on the pipeline nor listed before it
        return [source]
    if isinstance(source, Mapping):
        return [_from_state_dict(source, pipe, adapter_name)]
    if isinstance(source, str | os.PathLike):
        return load_removals(source, options, held)  # a chain or one removal, local or pulled, verified before use
    if isinstance(source, Iterable):
        removals = list(source)
        if all(isinstance(removal, UnlearningAdapter) for removal in removals):
            check_parents(removals, held)
            return removals
    raise InvalidTypeError(
        f"Cannot load a removal from {type(source).__name__}; pass a folder path or Hub repo id, an "
        "UnlearningAdapter, an UnlearningStack (or any iterable of adapters) or a LoRA state dict."
    )


def load_unlearning(
    pipe: DiffusionPipeline,
    pretrained_model_name_or_path_or_dict: AdapterSource | Sequence[AdapterSource],
    *,
    adapter_name: str | None = None,
    mode: LoadMode = "adapters",
    scale: float = 1.0,
    check: bool | Literal["warn"] = False,
    **hub_kwargs: Unpack[HubKwargs],
) -> tuple[LoadedUnlearning, ...]:
    """Loads one removal, or several in order, onto `pipe`; all or nothing.

    Each removal is checked before the pipeline is touched (format, base-model fingerprint, layer names and
    shapes, unique adapter names, not already on the pipeline as a plain LoRA) and verified after (every edited
    layer carries exactly its delta). If any step fails the pipeline is restored to its previous state and the
    error is raised. Once loaded, a removal stays in effect through diffusers' LoRA operations, or the operation
    warns ([`InteropWarning`]) or refuses ([`InteropError`]): see docs/loading.md, "Interop with diffusers".

    Args:
        pipe (`DiffusionPipeline`): A Stable Diffusion or SDXL pipeline.
        pretrained_model_name_or_path_or_dict (`str`, `os.PathLike`, `dict`, adapter, stack or a list of them):
            What to load: an [`UnlearningAdapter`] folder or object, an [`UnlearningStack`] folder / manifest /
            object (all its removals, in order), a Hub repo id (`"org/name"`) written by `push_to_hub`
            (pulled, and every file verified against the manifest's sha256, before the pipeline is touched), or a
            LoRA state dict (`"unet.<layer>.lora_A.weight"` / `lora_B`, as `UnlearningAdapter.lora_weights`; it has
            no provenance, so its base model cannot be checked).
        adapter_name (`str`, *optional*): Name on the pipeline of a single removal, or of the merged adapter
            (`mode="merged"`); defaults to the removal's own name (`"no-van-gogh"`), or `"merged-<n>-removals"`.
        mode (`str`, defaults to `"adapters"`):
            - `"adapters"`: each removal its own PEFT adapter (listed by `pipe.get_list_adapters()`);
            - `"merged"`: the removals summed exactly into one PEFT adapter: one LoRA pass at inference;
            - `"fused"`: added into the weights (no inference overhead, out of reach of every LoRA operation);
              unloading restores them exactly.
        scale (`float`, defaults to 1.0): Strength of the removals (their weight change is multiplied by it). Below
            1 the concept is only partly erased; `pipe.unlearning` reports it.
        check (`bool` or `"warn"`, defaults to `False`): Measure interference between the new removals and those
            already loaded (see [`check_interference`]) before touching the pipeline; raise on failure, or warn
            with `"warn"`.
        hub_kwargs: For Hub repo sources, the [`HubOptions`]: `revision` (branch, tag or commit; default `"main"`;
            resolved to one commit for the whole chain), `token`, `cache_dir`, `local_files_only` (with `True`, or
            `HF_HUB_OFFLINE=1`, only the cache is used), `endpoint`.

    Returns:
        `tuple[LoadedUnlearning, ...]`: everything loaded on the pipeline now, in order (as `pipe.unlearning`).

    Raises:
        AdapterNotFoundError, AdapterFormatError: The source cannot be read.
        BaseModelMismatchError: The removal was made for other base weights.
        AdapterNameError: The name is already used on the pipeline, or the removal is already on it as a LoRA.
        InterferenceError: `check=True` and the removals interfere (`error.report` has the figures).
        VerificationError: The model does not carry the edit after loading (nothing is left loaded).

    Example:
        ```py
        >>> import diffusers_unlearn
        >>> pipe = diffusers_unlearn.digits.load_pipeline()
        >>> adapter = diffusers_unlearn.erase(pipe, "seven", aliases=["7"])
        >>> adapter.save_pretrained("no-seven")
        >>> pipe.load_unlearning("no-seven", mode="fused", check=True)
        >>> pipe.unload_unlearning()
        >>> pipe.load_unlearning(adapter.lora_weights, adapter_name="no-seven")  # a bare state dict
        >>> pipe.unload_unlearning()
        >>> pipe.load_unlearning("org/no-sevens", revision="v3")  # a chain on the Hub, pinned to a tag
        ```
    """
    if mode not in ("adapters", "merged", "fused"):
        raise InvalidArgumentError(f"Unknown mode {mode!r}; use 'adapters', 'merged' or 'fused'.")
    if check not in (True, False, "warn"):
        raise InvalidArgumentError(f"check must be True, False or 'warn', got {check!r}.")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise InvalidArgumentError(f"scale must be a positive number, got {scale!r}.")
    source = pretrained_model_name_or_path_or_dict
    options = HubOptions.of(hub_kwargs)
    single = isinstance(source, str | os.PathLike | Mapping | UnlearningAdapter) or not isinstance(source, Iterable)
    sources = [source] if single else list(source)
    on_pipe, adapters = loaded_adapters(pipe), []
    for item in sources:  # a folder's parents may be on the pipeline, or among the removals listed before it
        adapters += _expand(item, options, pipe, adapter_name, held=[*on_pipe, *adapters])
    if not adapters:
        raise InvalidArgumentError("Nothing to load: the source is empty.")
    if adapter_name is not None and len(adapters) > 1 and mode != "merged":
        raise AdapterNameError("`adapter_name` names a single removal; several are loaded under their own names.")
    if mode == "merged":
        members = tuple(a.name for a in adapters)
        merged = merge_removals(adapters, "concat", name=adapter_name) if len(adapters) > 1 else adapters[0]
        entries = [_Entry(_scaled(merged, scale), adapter_name or merged.name, mode, members, scale)]
    else:
        names = [adapter_name] if adapter_name is not None else [a.name for a in adapters]
        entries = [_Entry(_scaled(a, scale), n, mode, (a.name,), scale) for a, n in zip(adapters, names, strict=True)]

    denoiser = _denoiser(pipe)
    state = _state(pipe)
    expected = base_fingerprints(pipe)
    _check_compatible(pipe, denoiser, entries, expected)
    if check:
        _check_interference(pipe, adapters, warn_only=check == "warn")

    new_state = state is None
    if new_state:
        state = _State(base_fingerprints=expected)
    snapshot = (list(state.entries), {k: v.clone() for k, v in state.originals.items()})
    active_before = _active_adapters(denoiser)
    had_peft = _has_peft(denoiser)
    weights_before = {
        layer: base_linear(denoiser.get_submodule(layer)).weight.detach().clone() for layer in _layers(entries, state)
    }
    loaded_peft: list[str] = []
    try:
        for entry in entries:
            if entry.fused:
                _fuse(denoiser, state, entry.adapter)
            else:
                loaded_peft.append(entry.name)
                _load_peft(denoiser, entry)
            state.entries.append(entry)
        if loaded_peft:  # once: activating walks every module
            _keep_in_effect(pipe, denoiser, state, active_before)
        verified = _verify(denoiser, state)  # every entry once: the new ones must hold, the report shows all
        for entry, ok in zip(state.entries[len(snapshot[0]) :], verified[len(snapshot[0]) :], strict=True):
            if not ok:
                raise VerificationError(
                    f"Removal {entry.name!r} was loaded but the model does not carry its edit; nothing was changed. "
                    "Another tool may have patched the attention layers; reload the pipeline and try again."
                )
    except BaseException:
        _rollback(denoiser, state, snapshot, weights_before, loaded_peft, active_before, had_peft)
        raise
    _set_state(pipe, state)
    logger.info("Loaded %d removal(s) (%s): %s", len(adapters), mode, ", ".join(a.name for a in adapters))
    return _report(state, verified)


def _layers(entries: list[_Entry], state: _State) -> set[str]:
    return {layer for entry in entries for layer in entry.adapter.layer_names} | set(state.originals)


def _check_interference(pipe: DiffusionPipeline, adapters: list[UnlearningAdapter], warn_only: bool) -> None:
    report = check_interference(pipe, [*loaded_adapters(pipe), *adapters])
    if report.passed:
        return
    message = "The removals interfere:\n" + str(report)
    if warn_only:
        warnings.warn(message, stacklevel=3)
        return
    raise InterferenceError(
        message + "\nMerge them with `UnlearningStack(...).merge('joint', pipe=pipe)`, re-make the later ones on top "
        "of the earlier ones, or pass check='warn' to load anyway.",
        report,
    )


def unload_unlearning(pipe: DiffusionPipeline, names: str | Sequence[str] | None = None) -> None:
    """Unloads removals from `pipe` (all of them by default), restoring fused weights exactly.

    Removals that diffusers' `fuse_lora` merged into the weights are unmerged first; a LoRA of your own, fused or
    not, is left as it is.

    Args:
        pipe (`DiffusionPipeline`): The pipeline.
        names (`str` or `list[str]`, *optional*): Adapter names to unload; default all.

    Raises:
        AdapterNameError: A name is not loaded.

    Example:
        ```py
        >>> pipe.unload_unlearning()  # back to the base model
        ```
    """
    state = _state(pipe)
    if state is None:
        if names:
            raise AdapterNameError(f"No removal is loaded; cannot unload {names!r}.")
        return
    loaded = [entry.name for entry in state.entries]
    wanted = loaded if names is None else ([names] if isinstance(names, str) else list(names))
    unknown = [name for name in wanted if name not in loaded]
    if unknown:
        raise AdapterNameError(f"Not loaded: {unknown}. Loaded removals: {loaded}.")
    denoiser = _denoiser(pipe)
    peft_names = [e.name for e in state.entries if e.name in wanted and not e.fused]
    if peft_names:
        _delete_peft(pipe, denoiser, peft_names)
    removed_fused = any(e.fused for e in state.entries if e.name in wanted)
    state.entries = [e for e in state.entries if e.name not in wanted]
    if removed_fused:
        _restore_originals(denoiser, state)
        for entry in state.entries:
            if entry.fused:
                _fuse(denoiser, state, entry.adapter)
    _set_state(pipe, state if state.entries else None)


# ------------------------------------------------------------------------------------------------ internals
def _check_compatible(pipe, denoiser, entries: list[_Entry], expected: dict[str, str]) -> None:
    state = _state(pipe)
    plain = _peft_names(denoiser) | _peft_adapter_names(pipe)
    taken = plain | {entry.name for entry in (state.entries if state else [])}
    seen = set()
    for entry in entries:
        adapter, name = entry.adapter, entry.name
        if name in taken or name in seen:
            raise AdapterNameError(
                f"An adapter named {name!r} is already loaded; pass `adapter_name=` to load it under another name, "
                "or unload the other one first."
            )
        seen.add(name)
        if not same_base(adapter.metadata, expected):
            low = denoiser.dtype in (torch.float16, torch.bfloat16)
            raise BaseModelMismatchError(
                f"Removal {name!r} was made for base weights {adapter.base_fingerprint} "
                f"({adapter.metadata.get('base_model') or 'unknown model'}), but this pipeline's are "
                f"{expected['base_fingerprint']}. Load it on the model it was made for, or erase the concept again "
                "here."
                + (
                    f" If it is that model: this pipeline runs in {str(denoiser.dtype)[6:]}, and a float16 and a "
                    "bfloat16 copy of a float32 checkpoint round its weights differently; a removal made on a "
                    "float32 pipeline loads on both."
                    if low
                    else ""
                )
            )
        for layer in adapter.layer_names:
            try:
                module = base_linear(denoiser.get_submodule(layer))
            except AttributeError:
                raise BaseModelMismatchError(f"Removal {name!r} edits {layer!r}, which this model lacks.") from None
            a, b = adapter.factors(layer)
            if a.shape[1] != module.in_features or b.shape[0] != module.out_features:
                raise BaseModelMismatchError(
                    f"Removal {name!r} has shape {tuple(b.shape[:1]) + tuple(a.shape[1:])} for {layer!r}; "
                    f"the model's layer is {(module.out_features, module.in_features)}."
                )
        for other in sorted(_peft_names(denoiser) - {e.name for e in (state.entries if state else [])}):
            if _holds(denoiser, other, adapter):
                raise AdapterNameError(
                    f"Removal {name!r} is already on the pipeline as the LoRA adapter {other!r} (loaded with "
                    f"`load_lora_weights`): loading it again would apply it twice. Remove that one first with "
                    f"`pipe.delete_adapters({other!r})`."
                )


def _has_peft(denoiser) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in denoiser.modules())


def _tuner_layers(denoiser) -> list[BaseTunerLayer]:
    return [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]


def _peft_names(denoiser) -> set[str]:
    """The PEFT adapters of the (unwrapped) denoiser, read where diffusers reads them."""
    config = getattr(denoiser, "peft_config", None)
    return set(config) if isinstance(config, dict) else set()


def _peft_adapter_names(pipe) -> set[str]:
    """Every PEFT adapter of the pipeline, the text encoders' included (diffusers' `get_list_adapters`)."""
    try:
        return {name for names in pipe.get_list_adapters().values() for name in names}
    except ValueError:  # no PEFT backend
        return set()


def _holds(denoiser, name: str, adapter: UnlearningAdapter) -> bool:
    """Whether PEFT adapter `name` holds exactly `adapter`'s factors on every one of its layers."""
    for layer in adapter.layer_names:
        module = denoiser.get_submodule(layer)
        if not isinstance(module, BaseTunerLayer) or name not in getattr(module, "lora_A", {}):
            return False
        a, b = adapter.factors(layer)
        held_a = module.lora_A[name].weight.detach()
        held_b = module.lora_B[name].weight.detach() * module.scaling[name]
        for held, expected in ((held_a, a.float()), (held_b, b.float())):
            rounding = 2 * torch.finfo(held.dtype).eps * float(expected.norm())
            if held.shape != expected.shape or not _close(held, expected, rounding):
                return False
    return True


def _load_peft(denoiser, entry: _Entry) -> None:
    """Loads a removal as a PEFT adapter, on the (unwrapped) denoiser only: through diffusers' own loader, or, where
    PEFT has wrapped the removal's layers already, by adding it to them directly (`peft_inject`: the same result
    without PEFT's walk of every module per adapter)."""
    # copies: diffusers may keep the tensors it is given as the layers' parameters, and the removal's own tensors
    # are what verification compares the layers with
    weights = {key: value.clone() for key, value in entry.adapter.lora_weights.items()}
    with warnings.catch_warnings():  # several adapters on one model is the point of a stack
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        load_lora_adapter(denoiser, weights, prefix=entry.adapter.denoiser, adapter_name=entry.name)


def _delete_peft(pipe, denoiser, names: list[str]) -> None:
    """Deletes our PEFT adapters: unmerged first (PEFT would leave a merged delta in the weight), wrappers dropped
    once the denoiser holds no adapter at all (a LoRA of the user's, here or in a text encoder, is left alone)."""
    present = [name for name in names if name in _peft_names(denoiser)]
    _unmerge(denoiser, present)
    if present and set(present) == _peft_names(denoiser):
        denoiser.unload_lora()  # all of them: what deleting each then unloading leaves, without a walk per adapter
    elif present:
        denoiser.delete_adapters(present)
    if present:
        pipe._merged_adapters = set(pipe.fused_loras) - set(present)
    if _has_peft(denoiser) and not _peft_names(denoiser):
        denoiser.unload_lora()


def _unmerge(denoiser, names: Sequence[str]) -> None:
    """Takes `names` out of the weights where diffusers' `fuse_lora` merged them; other merged adapters stay merged.

    PEFT unmerges all of a layer's merged adapters at once: the others are merged back, through PEFT, in order.
    """
    for module in _tuner_layers(denoiser):
        if any(name in module.merged_adapters for name in names):
            others = [n for n in module.merged_adapters if n not in names and n in module.lora_A]
            module.unmerge()
            if others:
                _merge(module, others)


@contextmanager
def _peft_unmerged(module):
    """While our code writes a weight, no PEFT adapter is merged into it (merged back, through PEFT, after)."""
    merged = list(module.merged_adapters) if isinstance(module, BaseTunerLayer) else []
    if merged:
        module.unmerge()
    try:
        yield
    finally:
        kept = [name for name in merged if name in module.lora_A]
        if kept:
            _merge(module, kept)


def _merge(module, names: list[str]) -> None:
    """PEFT's `merge` of `names` into one layer, without its notice that other adapters are merged already (our
    merges next to the user's are the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already following adapters were merged")
        module.merge(adapter_names=names)


def _merged_delta(module) -> torch.Tensor | float:
    """The total delta PEFT has merged into the layer's weight now (0 if none)."""
    if not isinstance(module, BaseTunerLayer):
        return 0.0
    total: torch.Tensor | float = 0.0
    for name in module.merged_adapters:
        if name in module.lora_A:
            total = total + module.get_delta_weight(name).detach().float()
    return total


def _keep_in_effect(pipe, denoiser, state: _State, active: Sequence[str]) -> None:
    """Makes `active` plus every PEFT removal active, and merges a removal wherever PEFT merged
    another adapter of the layer (a PEFT layer with a merged adapter skips its unmerged ones)."""
    ours = [entry.name for entry in state.peft_entries() if entry.name in _peft_names(denoiser)]
    names = [*[name for name in active if name not in ours], *ours]
    merged_now: set[str] = set()
    for module in _tuner_layers(denoiser):
        module.set_adapter(names, inference_mode=True)
        if module.merged:
            todo = [name for name in ours if name in module.lora_A and name not in module.merged_adapters]
            if todo:
                _merge(module, todo)
                merged_now.update(todo)
    if merged_now:
        pipe._merged_adapters = set(pipe.fused_loras) | merged_now


def _fuse(denoiser, state: _State, adapter: UnlearningAdapter) -> None:
    with torch.no_grad():
        for layer in adapter.layer_names:
            module = denoiser.get_submodule(layer)
            with _peft_unmerged(module):
                weight = base_linear(module).weight
                if layer not in state.originals:
                    state.originals[layer] = weight.detach().clone()
                weight.copy_((weight.float() + adapter.delta(layer).to(weight.device)).to(weight.dtype))


def _restore_originals(denoiser, state: _State) -> None:
    with torch.no_grad():
        for layer, original in state.originals.items():
            module = denoiser.get_submodule(layer)
            with _peft_unmerged(module):
                base_linear(module).weight.copy_(original)
    state.originals.clear()


def _bake_merges(denoiser, state: _State, names: Sequence[str] | None = None) -> None:
    """The user's merged adapters (`names`, default all) are about to lose their PEFT record (deleted, or unloaded)
    while their delta stays in the weight, as diffusers documents: count it as part of the weight underneath our
    fused removals, so that unloading those keeps it."""
    ours = {entry.name for entry in state.entries}
    with torch.no_grad():
        for layer, original in state.originals.items():
            module = denoiser.get_submodule(layer)
            if not isinstance(module, BaseTunerLayer):
                continue
            for name in module.merged_adapters:
                if name in module.lora_A and name not in ours and (names is None or name in names):
                    delta = module.get_delta_weight(name).detach().float().to(original.device)
                    state.originals[layer] = (original.float() + delta).to(original.dtype)
                    original = state.originals[layer]


def _fused_deltas(state: _State, entries: list[_Entry] | None = None) -> dict[str, torch.Tensor]:
    """Per layer, the summed change of the fused removals among `entries` (default: all loaded)."""
    total: dict[str, torch.Tensor] = {}
    for entry in state.entries if entries is None else entries:
        if entry.fused:
            for layer in entry.adapter.layer_names:
                delta = entry.adapter.delta(layer)
                total[layer] = total[layer] + delta if layer in total else delta
    return total


def _close(actual: torch.Tensor, expected: torch.Tensor, rounding: float = 0.0) -> bool:
    """`actual` equals `expected` up to `_VERIFY_RTOL` of it, plus `rounding` (the storage's rounding error)."""
    scale = expected.norm().clamp_min(1e-12)
    return bool((actual.float().cpu() - expected.cpu()).norm() <= _VERIFY_RTOL * scale + rounding + 1e-6)


def _is_applied(denoiser, entry: _Entry, state: _State, fused_total: dict[str, torch.Tensor]) -> bool:
    """Checks the layers carry the removal, as the forward pass will apply it: its own PEFT adapter (active and
    unmerged in a layer where nothing is merged, or merged into the weight), or the fused weights' total change."""
    for layer in entry.adapter.layer_names:
        module = denoiser.get_submodule(layer)
        if entry.fused:
            if layer not in state.originals:
                return False
            weight = base_linear(module).weight
            change = weight.detach().float() - state.originals[layer].float().to(weight.device) - _merged_delta(module)
            # fp16 / bf16 weights round the sum: allow one rounding of them
            rounding = 4 * torch.finfo(weight.dtype).eps * float(weight.detach().float().norm())
            if not _close(change, fused_total[layer], rounding):
                return False
        else:
            if not isinstance(module, BaseTunerLayer) or module.disable_adapters:
                return False
            if entry.name not in module.lora_A or getattr(module, "use_dora", {}).get(entry.name):
                return False
            merged = entry.name in module.merged_adapters
            if not merged and (entry.name not in module.active_adapters or module.merged):
                return False  # inactive, or skipped: PEFT applies no unmerged adapter in a layer that has a merged one
            if not _holds(denoiser, entry.name, _one_layer(entry.adapter, layer)):
                return False
    return True


def _one_layer(adapter: UnlearningAdapter, layer: str) -> UnlearningAdapter:
    a, b = adapter.factors(layer)
    prefix = f"{adapter.denoiser}.{layer}"
    return UnlearningAdapter({f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}, adapter.metadata)


def _rollback(denoiser, state, snapshot, weights_before, loaded_peft, active_before, had_peft) -> None:
    partial = [name for name in loaded_peft if name in _peft_names(denoiser)]
    _unmerge(denoiser, partial)
    if partial:
        denoiser.delete_adapters(partial)
    if not had_peft and _has_peft(denoiser):
        denoiser.unload_lora()
    with torch.no_grad():
        for layer, weight in weights_before.items():
            module = denoiser.get_submodule(layer)
            base_linear(module).weight.copy_(weight)  # as it was, PEFT merges included
    state.entries, state.originals = snapshot
    if active_before:
        for module in _tuner_layers(denoiser):
            module.set_adapter(active_before, inference_mode=True)


# ------------------------------------------------------------------------------------ guarded LoRA methods
# Installed on a pipeline's instance while it carries removals (`_set_state`); each calls diffusers' own method of
# the pipeline's class, then keeps the removals in effect, or warns / refuses. Nothing on any class is replaced.
def _names_of(state: _State, fused: bool | None = None) -> list[str]:
    return [entry.name for entry in state.entries if fused is None or entry.fused == fused]


def _full_strength(weight) -> bool:
    if weight is None:
        return True
    if isinstance(weight, dict):
        return all(_full_strength(value) for value in weight.values())
    return isinstance(weight, int | float) and float(weight) == 1.0


def _warn(message: str) -> None:
    warnings.warn(message, InteropWarning, stacklevel=3)


def _guarded_load_lora_weights(self, *args, **kwargs):
    """diffusers' `load_lora_weights`, then the removals active next to the loaded LoRA; a LoRA equal to a loaded
    removal is taken back out and refused (it would apply twice)."""
    state, denoiser = _state(self), _denoiser(self)
    before, active_before = _peft_names(denoiser), _active_adapters(denoiser)
    result = type(self).load_lora_weights(self, *args, **kwargs)
    if state is None:
        return result
    new = sorted(_peft_names(denoiser) - before)
    twice = [(name, entry.name) for name in new for entry in state.entries if _holds(denoiser, name, entry.adapter)]
    if twice:
        self.delete_adapters(new)  # guarded: none of these is ours
        _keep_in_effect(self, denoiser, state, active_before)
        lora, removal = twice[0]
        raise InteropError(
            f"This LoRA is removal {removal!r}, which `load_unlearning` already loaded: as {lora!r} it would apply "
            "the removal twice (twice its weight change), so it was not loaded. The removal is in effect already; "
            "nothing else is needed."
        )
    _keep_in_effect(self, denoiser, state, _active_adapters(denoiser))  # what diffusers activated, plus ours
    return result


def _guarded_set_adapters(self, adapter_names, adapter_weights=None):
    """diffusers' `set_adapters` with the removals it was not given added at weight 1; a removal given another weight
    is applied as asked, with a warning; fused removals are not PEFT adapters and are left out of the call."""
    state = _state(self)
    if state is None:
        return type(self).set_adapters(self, adapter_names, adapter_weights)
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    weights = list(adapter_weights) if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
    if len(weights) != len(names):
        return type(self).set_adapters(self, adapter_names, adapter_weights)  # diffusers' own error
    pairs = list(zip(names, weights, strict=True))
    fused, peft = _names_of(state, fused=True), _names_of(state, fused=False)
    weakened = [name for name, weight in pairs if name in peft and not _full_strength(weight)]
    ignored = [name for name, weight in pairs if name in fused and not _full_strength(weight)]
    pairs = [(name, weight) for name, weight in pairs if name not in fused]  # not PEFT adapters: always in effect
    pairs += [(name, 1.0) for name in peft if name not in names]
    result = None
    if pairs:  # diffusers' set_adapters([]) fails (KeyError); no adapter named: none of the user's stays active
        result = type(self).set_adapters(self, [n for n, _ in pairs], [w for _, w in pairs])
    _keep_in_effect(self, _denoiser(self), state, [n for n, _ in pairs])
    if weakened:
        _warn(
            f"set_adapters() gives removal(s) {weakened} a weight other than 1: the concept is only partly erased "
            "(pipe.unlearning shows verified=False). Leave removals out of set_adapters to keep them at full "
            "strength, or load them with load_unlearning(..., scale=) on purpose."
        )
    if ignored:
        _warn(
            f"Removal(s) {ignored} are fused into the weights: set_adapters() cannot weight them and they stay in "
            "full effect. Unload them and load them again with load_unlearning(..., scale=) to change their strength."
        )
    return result


def _guarded_disable_lora(self):
    """diffusers' `disable_lora`; it disables adapter removals too (one switch per layer): warns."""
    result = type(self).disable_lora(self)
    state = _state(self)
    peft = _names_of(state, fused=False) if state else []
    if peft:
        _warn(
            f"disable_lora() also disabled removal(s) {peft} (loaded as LoRA adapters): their concepts can be "
            "generated again until pipe.enable_lora(). To turn off only your own LoRA, call "
            "pipe.set_adapters([]) (removals stay active); removals loaded with mode='fused' are never disabled."
        )
    return result


def _guarded_delete_adapters(self, adapter_names):
    """diffusers' `delete_adapters` for the user's adapters (a fused one stays in the weights, and under our fused
    removals); a removal named here is unloaded as by `unload_unlearning`, with a warning."""
    state = _state(self)
    if state is None:
        return type(self).delete_adapters(self, adapter_names)
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    ours = [name for name in names if name in _names_of(state)]
    theirs = [name for name in names if name not in ours]
    result = None
    if theirs:
        denoiser = _denoiser(self)
        _bake_merges(denoiser, state, theirs)
        active = [name for name in _active_adapters(denoiser) if name not in theirs]
        result = type(self).delete_adapters(self, theirs)
        _keep_in_effect(self, denoiser, state, active)
    if ours:
        unload_unlearning(self, ours)
        _warn(
            f"delete_adapters() unloaded removal(s) {ours}: their concepts can be generated again. "
            "pipe.unload_unlearning() is the usual way; load them again with pipe.load_unlearning()."
        )
    return result


def _guarded_fuse_lora(self, *args, **kwargs):
    """diffusers' `fuse_lora` as asked, then every adapter removal at full strength, merged where its layer has a
    merged adapter."""
    result = type(self).fuse_lora(self, *args, **kwargs)  # exactly what the user asked, at the user's scale
    state = _state(self)
    if state is None:
        return result
    denoiser = _denoiser(self)
    ours = [name for name in _names_of(state, fused=False) if name in _peft_names(denoiser)]
    # `fuse_lora(lora_scale=s)` scales every active adapter of a layer, ours included: take ours out of the
    # weights if merged at another scale, put them back at full strength, and merge them wherever the layer has
    # a merged adapter (PEFT applies no unmerged adapter there), through PEFT
    rescaled = [
        name
        for module in _tuner_layers(denoiser)
        for name in ours
        if name in module.lora_A and module.scaling[name] != 1.0
    ]
    _unmerge(denoiser, sorted(set(rescaled)))
    for module in _tuner_layers(denoiser):
        for name in set(rescaled) & set(module.lora_A):
            module.set_scale(name, 1.0)  # the removal's B already carries its scale; lora_alpha == r
    _keep_in_effect(self, denoiser, state, _active_adapters(denoiser))
    return result


def _guarded_unload_lora_weights(self):
    """diffusers' `unload_lora_weights` for the user's LoRAs (fused ones stay in the weights); the removals stay."""
    state = _state(self)
    if state is None:
        return type(self).unload_lora_weights(self)
    denoiser = _denoiser(self)
    peft_entries = state.peft_entries()
    _unmerge(denoiser, [entry.name for entry in peft_entries])  # ours out of the weights before diffusers bakes them
    _bake_merges(denoiser, state)  # the user's fused LoRAs stay in the weights, as diffusers documents
    type(self).unload_lora_weights(self)
    missing = [entry for entry in peft_entries if entry.name not in _peft_names(denoiser)]
    for entry in missing:
        _load_peft(denoiser, entry)
    if missing:
        _keep_in_effect(self, denoiser, state, [])
        logger.info(
            "unload_lora_weights() unloaded the pipeline's own LoRAs; removals %s stay loaded "
            "(pipe.unload_unlearning() unloads them).",
            [entry.name for entry in missing],
        )


def _guarded_save_pretrained(self, save_directory, *args, **kwargs):
    """diffusers' `save_pretrained` with the fused removals' provenance next to the weights; refused while any LoRA
    adapter is loaded (diffusers would write wrapped layers that reload as meta tensors)."""
    state = _state(self)
    if state is None:
        return type(self).save_pretrained(self, save_directory, *args, **kwargs)
    denoiser = _denoiser(self)
    if _has_peft(denoiser):
        peft = _names_of(state, fused=False)
        what = f"removal(s) {peft} are loaded as LoRA adapters" if peft else "a LoRA of your own is loaded"
        raise InteropError(
            f"Cannot save: {what}, and diffusers' save_pretrained would write the LoRA-wrapped layers, which reload "
            f"as empty (meta) weights. Nothing was written. To save a pipeline with the removals baked in: "
            f"pipe.unload_unlearning(); pipe.load_unlearning(<removals>, mode='fused'); unload (or fuse_lora() then "
            f"unload_lora_weights()) your own LoRA; then pipe.save_pretrained(folder): the weights carry the removals "
            f"and folder/{PROVENANCE_FOLDER}/ their provenance. To share the removals themselves, save them with "
            f"UnlearningStack(...).save_pretrained()."
        )
    provenance = Path(save_directory) / PROVENANCE_FOLDER
    existed = provenance.exists()
    _save_provenance(state, provenance)  # first: a push_to_hub=True save uploads it with the weights
    try:
        return type(self).save_pretrained(self, save_directory, *args, **kwargs)
    except BaseException:
        if not existed:
            shutil.rmtree(provenance, ignore_errors=True)
        raise


def _save_provenance(state: _State, folder: Path) -> None:
    """The fused removals as a stack folder: what the saved weights carry, with the base model they were made for."""
    adapters = []
    for entry in state.entries:
        metadata = {**entry.adapter.metadata, "name": entry.name}
        if entry.scale != 1.0:
            metadata["hyperparameters"] = {**metadata.get("hyperparameters", {}), "load_scale": entry.scale}
        adapters.append(UnlearningAdapter(entry.adapter.lora_weights, metadata, entry.adapter.probes))
    write_removals(folder, adapters)


_GUARDS = {
    "load_lora_weights": _guarded_load_lora_weights,
    "set_adapters": _guarded_set_adapters,
    "disable_lora": _guarded_disable_lora,
    "delete_adapters": _guarded_delete_adapters,
    "fuse_lora": _guarded_fuse_lora,
    "unload_lora_weights": _guarded_unload_lora_weights,
    "save_pretrained": _guarded_save_pretrained,
}


# ----------------------------------------------------------------------------------------- pipeline methods
def _install() -> None:
    """Adds the methods to `DiffusionPipeline` without replacing anything diffusers defines."""
    additions = {
        "load_unlearning": load_unlearning,
        "unload_unlearning": unload_unlearning,
        "unlearning": property(unlearning, doc=unlearning.__doc__),
    }
    for attribute, value in additions.items():
        existing = getattr(DiffusionPipeline, attribute, None)
        if existing is None:
            setattr(DiffusionPipeline, attribute, value)
        elif existing is not value and not (isinstance(existing, property) and existing.fget is unlearning):
            logger.warning(
                "DiffusionPipeline already defines %r; use diffusers_unlearn.%s(pipe, ...)", attribute, attribute
            )
