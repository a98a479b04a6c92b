"""Loading removals onto a pipeline: `load_unlearning`, `unload_unlearning`, `pipe.unlearning`.

Three ways to load (`mode=`): `"adapters"`, each removal an ordinary PEFT adapter (loaded with diffusers' own
`load_lora_weights`, so `pipe.get_list_adapters()` lists them); `"merged"`, all of them summed exactly into one
PEFT adapter (one LoRA pass at inference whatever the stack's size); `"fused"`, added into the edited weights,
with a copy of the original weights kept so that unloading restores them bit for bit. Every load is checked first (base
fingerprint, layer names, shapes) and verified after (each layer carries the expected delta); a failure
anywhere rolls the pipeline back to exactly what it was.

`import diffusers_unlearn` adds `load_unlearning`, `unload_unlearning` and the read-only `unlearning`
property to `DiffusionPipeline`; nothing diffusers defines is replaced.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from .adapter import UnlearningAdapter
from .errors import (
    AdapterNameError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    InterferenceError,
    VerificationError,
)
from .families import family_of
from .layers import base_linear, edited_layers, fingerprint

logger = logging.getLogger(__name__)

AdapterSource = str | os.PathLike | UnlearningAdapter  # or an UnlearningStack
LoadMode = Literal["adapters", "merged", "fused"]

_VERIFY_RTOL = 1e-3


@dataclass(frozen=True)
class LoadedUnlearning:
    """One removal as loaded on a pipeline (what `pipe.unlearning` lists).

    Attributes:
        name (`str`): Adapter name on the pipeline.
        concept (`str | None`): The erased concept; `None` if redacted or for a merged entry.
        mode (`str`): `"adapters"` (its own PEFT adapter), `"merged"` (one PEFT adapter holding several
            removals, listed in `members`) or `"fused"` (added into the weights).
        rank (`int`): LoRA rank.
        verified (`bool`): The layers were checked to carry the removal's exact delta after loading.
        members (`tuple[str, ...]`): The removals this entry holds (several for a merged entry).
    """

    name: str
    concept: str | None
    mode: str
    rank: int
    verified: bool
    members: tuple[str, ...] = ()

    @property
    def fused(self) -> bool:
        return self.mode == "fused"


@dataclass
class _Entry:
    adapter: UnlearningAdapter
    name: str
    mode: str
    members: tuple[str, ...]

    @property
    def fused(self) -> bool:
        return self.mode == "fused"


@dataclass
class _State:
    base_fingerprint: str
    entries: list[_Entry] = field(default_factory=list)
    originals: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> weight before any fusing


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(pipe: DiffusionPipeline) -> _State | None:
    return _STATES.get(pipe)


def loaded_adapters(pipe: DiffusionPipeline) -> list[UnlearningAdapter]:
    """The removals loaded on `pipe`, in load order (the stack a new removal is made on top of)."""
    state = _state(pipe)
    return [entry.adapter for entry in state.entries] if state else []


def base_fingerprint(pipe: DiffusionPipeline) -> str:
    """Fingerprint of the pipeline's base weights, as they were before any removal was fused."""
    state = _state(pipe)
    if state is not None:
        return state.base_fingerprint
    family = family_of(pipe)
    return fingerprint(edited_layers(getattr(pipe, family.denoiser), family))


def unlearning(pipe: DiffusionPipeline) -> tuple[LoadedUnlearning, ...]:
    """What is loaded on `pipe`, in order, re-verified against the model now.

    Example:
        ```py
        >>> pipe.load_unlearning("no-seven")
        >>> pipe.unlearning
        (LoadedUnlearning(name='no-seven', concept='seven', fused=False, rank=8, verified=True),)
        ```
    """
    state = _state(pipe)
    if state is None:
        return ()
    return _report(state, _verify(getattr(pipe, family_of(pipe).denoiser), state))


def _verify(denoiser, state: _State) -> list[bool]:
    """Whether each loaded entry is carried by the model now."""
    fused_total = _fused_deltas(state)  # once for all entries: the check stays linear in the stack size
    return [_is_applied(denoiser, entry, state, fused_total) for entry in state.entries]


def _report(state: _State, verified: list[bool]) -> tuple[LoadedUnlearning, ...]:
    return tuple(
        LoadedUnlearning(entry.name, entry.adapter.concept, entry.mode, entry.adapter.rank, ok, entry.members)
        for entry, ok in zip(state.entries, verified, strict=True)
    )


def _expand(source: AdapterSource, hub_options: dict) -> list[UnlearningAdapter]:
    """The removals a source stands for: one adapter, or every adapter of a stack, in order."""
    from . import hub
    from .stack import UnlearningStack

    if isinstance(source, UnlearningAdapter):
        return [source]
    if isinstance(source, UnlearningStack):
        return list(source.adapters)
    if isinstance(source, str | os.PathLike):
        if not os.path.exists(source) and not hub.is_repo_id(source):
            raise AdapterNotFoundError(
                f"No removal at {source!r}: pass a folder written by `UnlearningAdapter.save_pretrained` or "
                '`UnlearningStack.save_pretrained`, the id ("org/name") of a Hub repo written by `push_to_hub`, '
                "or an adapter object."
            )
        if os.path.exists(source) and hub_options["revision"] is not None:
            raise ValueError(f"`revision` applies to Hub repos; {source} is a local path.")
        return hub.load(source, **hub_options)  # a chain or one removal, local or pulled, verified before use
    raise TypeError(
        f"Cannot load a removal from {type(source).__name__}; pass a folder path, an UnlearningAdapter or an "
        "UnlearningStack."
    )


def load_unlearning(
    pipe: DiffusionPipeline,
    source: AdapterSource | Sequence[AdapterSource],
    *,
    adapter_name: str | None = None,
    mode: LoadMode = "adapters",
    check: bool | Literal["warn"] = False,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    endpoint: str | None = None,
) -> tuple[LoadedUnlearning, ...]:
    """Loads one removal, or several in order, onto `pipe`; all or nothing.

    Each removal is checked before the pipeline is touched (format, base-model fingerprint, layer names and
    shapes, unique adapter names) and verified after (every edited layer carries exactly its delta). If any
    step fails the pipeline is restored to its previous state and the error is raised.

    Args:
        pipe (`DiffusionPipeline`): A Stable Diffusion or SDXL pipeline.
        source (`str`, `os.PathLike`, [`UnlearningAdapter`], [`UnlearningStack`], or a list of them): What to
            load: an adapter folder or object, or a stack folder / manifest / object (all its removals, in order),
            or a Hub repo id (`"org/name"`) written by `push_to_hub`: pulled, and every file verified against the
            manifest's sha256, before the pipeline is touched.
        adapter_name (`str`, *optional*): Name on the pipeline of a single removal, or of the merged adapter
            (`mode="merged"`); defaults to the removal's own name (`"no-van-gogh"`), or `"merged-<n>-removals"`.
        mode (`str`, defaults to `"adapters"`):
            - `"adapters"`: each removal its own PEFT adapter (listed by `pipe.get_list_adapters()`);
            - `"merged"`: the removals summed exactly into one PEFT adapter: one LoRA pass at inference;
            - `"fused"`: added into the weights (no inference overhead); unloading restores them exactly.
        check (`bool` or `"warn"`, defaults to `False`): Measure interference between the new removals and those
            already loaded (see [`check_interference`]) before touching the pipeline; raise on failure, or warn
            with `"warn"`.
        revision (`str`, *optional*): Branch, tag or commit of a Hub repo `source`; default `"main"`. Resolved to
            one commit for the whole chain.
        token, cache_dir, local_files_only, endpoint: For Hub repos, as in `huggingface_hub.snapshot_download`;
            with `local_files_only=True` (or `HF_HUB_OFFLINE=1`) only the cache is used.

    Returns:
        `tuple[LoadedUnlearning, ...]`: everything loaded on the pipeline now, in order (as `pipe.unlearning`).

    Raises:
        AdapterNotFoundError, AdapterFormatError: The source cannot be read.
        BaseModelMismatchError: The removal was made for other base weights.
        AdapterNameError: The name is already used on the pipeline.
        InterferenceError: `check=True` and the removals interfere (`error.report` has the figures).
        VerificationError: The model does not carry the edit after loading (nothing is left loaded).

    Example:
        ```py
        >>> import diffusers_unlearn
        >>> pipe = diffusers_unlearn.digits.load_pipeline()
        >>> adapter = diffusers_unlearn.erase(pipe, "seven", aliases=["7"])
        >>> adapter.save_pretrained("no-seven")
        >>> pipe.unload_unlearning()
        >>> pipe.load_unlearning("no-seven", mode="fused", check=True)
        >>> pipe.unload_unlearning()
        >>> pipe.load_unlearning("org/no-sevens", revision="v3")  # a chain on the Hub, pinned to a tag
        ```
    """
    if mode not in ("adapters", "merged", "fused"):
        raise ValueError(f"Unknown mode {mode!r}; use 'adapters', 'merged' or 'fused'.")
    if check not in (True, False, "warn"):
        raise ValueError(f"check must be True, False or 'warn', got {check!r}.")
    sources = list(source) if isinstance(source, list | tuple) else [source]
    hub_options = dict(
        revision=revision, token=token, cache_dir=cache_dir, local_files_only=local_files_only, endpoint=endpoint
    )
    adapters = [adapter for s in sources for adapter in _expand(s, hub_options)]
    if not adapters:
        raise ValueError("Nothing to load: `source` is empty.")
    if adapter_name is not None and len(adapters) > 1 and mode != "merged":
        raise AdapterNameError("`adapter_name` names a single removal; several are loaded under their own names.")
    if mode == "merged":
        from .stack import UnlearningStack

        members = tuple(a.name for a in adapters)
        merged = UnlearningStack(adapters).merge("concat", name=adapter_name) if len(adapters) > 1 else adapters[0]
        entries = [_Entry(merged, adapter_name or merged.name, mode, members)]
    else:
        names = [adapter_name] if adapter_name is not None else [a.name for a in adapters]
        entries = [_Entry(a, name, mode, (a.name,)) for a, name in zip(adapters, names, strict=True)]

    family = family_of(pipe)
    denoiser = getattr(pipe, family.denoiser)
    state = _state(pipe)
    expected_fingerprint = base_fingerprint(pipe)
    _check_compatible(pipe, denoiser, entries, expected_fingerprint)
    if check:
        _check_interference(pipe, adapters, warn_only=check == "warn")

    new_state = state is None
    if new_state:
        state = _State(base_fingerprint=expected_fingerprint)
        _STATES[pipe] = state
    snapshot = (list(state.entries), dict(state.originals))
    active_before = _active_adapters(denoiser)
    weights_before = {
        layer: base_linear(denoiser.get_submodule(layer)).weight.detach().clone() for layer in state.originals
    }
    loaded_peft: list[str] = []
    try:
        for entry in entries:
            if entry.fused:
                _fuse(denoiser, state, entry.adapter)
            else:
                loaded_peft.append(entry.name)
                with warnings.catch_warnings():  # several adapters on one model is the point of a stack
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    # copies: diffusers may keep the tensors it is given as the layers' parameters, and the
                    # removal's own tensors are what verification compares the layers with
                    weights = {key: value.clone() for key, value in entry.adapter.lora_weights.items()}
                    pipe.load_lora_weights(weights, adapter_name=entry.name)
            state.entries.append(entry)
        if loaded_peft:  # once: activating walks every module
            _activate(denoiser, [*active_before, *loaded_peft])
        verified = _verify(denoiser, state)  # every entry once: the new ones must hold, the report shows all
        for entry, ok in zip(state.entries[len(snapshot[0]) :], verified[len(snapshot[0]) :], strict=True):
            if not ok:
                raise VerificationError(
                    f"Removal {entry.name!r} was loaded but the model does not carry its edit; nothing was changed. "
                    "Another tool may have patched the attention layers; reload the pipeline and try again."
                )
    except BaseException:
        _rollback(pipe, denoiser, state, snapshot, weights_before, loaded_peft, active_before)
        if new_state:
            del _STATES[pipe]
        raise
    logger.info("Loaded %d removal(s) (%s): %s", len(adapters), mode, ", ".join(a.name for a in adapters))
    return _report(state, verified)


def _check_interference(pipe: DiffusionPipeline, adapters: list[UnlearningAdapter], warn_only: bool) -> None:
    from .interference import check_interference

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
    denoiser = getattr(pipe, family_of(pipe).denoiser)
    peft_names = [e.name for e in state.entries if e.name in wanted and not e.fused]
    if peft_names:
        pipe.delete_adapters(peft_names)
        _drop_empty_peft_layers(pipe)
    removed_fused = any(e.fused for e in state.entries if e.name in wanted)
    state.entries = [e for e in state.entries if e.name not in wanted]
    if removed_fused:
        _restore_originals(denoiser, state)
        for entry in state.entries:
            if entry.fused:
                _fuse(denoiser, state, entry.adapter)
    if not state.entries:
        del _STATES[pipe]


# ------------------------------------------------------------------------------------------------ internals
def _check_compatible(pipe, denoiser, entries: list[_Entry], expected_fingerprint) -> None:
    state = _state(pipe)
    taken = _peft_adapter_names(pipe) | {entry.name for entry in (state.entries if state else [])}
    seen = set()
    for entry in entries:
        adapter, name = entry.adapter, entry.name
        if name in taken or name in seen:
            raise AdapterNameError(
                f"An adapter named {name!r} is already loaded; pass `adapter_name=` to load it under another name, "
                "or unload the other one first."
            )
        seen.add(name)
        if adapter.base_fingerprint != expected_fingerprint:
            raise BaseModelMismatchError(
                f"Removal {name!r} was made for base weights {adapter.base_fingerprint} "
                f"({adapter.metadata.get('base_model') or 'unknown model'}), but this pipeline's are "
                f"{expected_fingerprint}. Load it on the model it was made for, or erase the concept again here."
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


def _has_peft(denoiser) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in denoiser.modules())


def _peft_adapter_names(pipe) -> set[str]:
    family = family_of(pipe)
    if not _has_peft(getattr(pipe, family.denoiser)):
        return set()
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _drop_empty_peft_layers(pipe) -> None:
    """Once no adapter is left, removes the PEFT wrappers too: the modules are back to plain layers."""
    if _has_peft(getattr(pipe, family_of(pipe).denoiser)) and not _peft_adapter_names(pipe):
        pipe.unload_lora_weights()


def _active_adapters(denoiser) -> list[str]:
    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            return list(module.active_adapters)
    return []


def _activate(denoiser, names: list[str]) -> None:
    """Makes exactly `names` active (diffusers leaves only the last loaded adapter active)."""
    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(names, inference_mode=True)


def _fuse(denoiser, state: _State, adapter: UnlearningAdapter) -> None:
    with torch.no_grad():
        for layer in adapter.layer_names:
            weight = base_linear(denoiser.get_submodule(layer)).weight
            if layer not in state.originals:
                state.originals[layer] = weight.detach().clone()
            weight.copy_((weight.float() + adapter.delta(layer).to(weight.device)).to(weight.dtype))


def _restore_originals(denoiser, state: _State) -> None:
    with torch.no_grad():
        for layer, original in state.originals.items():
            base_linear(denoiser.get_submodule(layer)).weight.copy_(original)
    state.originals.clear()


def _fused_deltas(state: _State) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for entry in state.entries:
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
    """Checks the layers carry the removal: its own PEFT delta, or the fused weights' total change."""
    for layer in entry.adapter.layer_names:
        module = denoiser.get_submodule(layer)
        if entry.fused:
            if layer not in state.originals:
                return False
            change = base_linear(module).weight.float() - state.originals[layer].float()
            weight = base_linear(module).weight  # fp16 / bf16 weights round the sum: allow one rounding of them
            rounding = torch.finfo(weight.dtype).eps * float(weight.float().norm())
            if not _close(change, fused_total[layer], rounding):
                return False
        else:
            if not isinstance(module, BaseTunerLayer) or module.disable_adapters:
                return False
            if entry.name not in module.lora_A or entry.name not in module.active_adapters:
                return False
            if entry.name in module.merged_adapters or getattr(module, "use_dora", {}).get(entry.name):
                return False
            # The delta is scaling * B @ A: comparing the held factors with the removal's decides it, in
            # O(rank * (in + out)) instead of forming both (out, in) products. Held in the model's dtype: A and B
            # round once.
            a, b = entry.adapter.factors(layer)
            held_a = module.lora_A[entry.name].weight.detach()
            held_b = module.lora_B[entry.name].weight.detach() * module.scaling[entry.name]
            for held, expected in ((held_a, a.float()), (held_b, b.float())):
                rounding = 2 * torch.finfo(held.dtype).eps * float(expected.norm())
                if held.shape != expected.shape or not _close(held, expected, rounding):
                    return False
    return True


def _rollback(pipe, denoiser, state, snapshot, weights_before, loaded_peft, active_before) -> None:
    partial = [name for name in loaded_peft if name in _peft_adapter_names(pipe)]
    if partial:
        pipe.delete_adapters(partial)
    _drop_empty_peft_layers(pipe)
    with torch.no_grad():
        for layer, original in state.originals.items():  # fused during this call: back to the saved originals
            target = weights_before.get(layer, original)
            base_linear(denoiser.get_submodule(layer)).weight.copy_(target)
    state.entries, state.originals = snapshot
    if active_before:
        _activate(denoiser, active_before)


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
