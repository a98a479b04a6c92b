"""Adding a LoRA adapter to layers that PEFT has wrapped already, without a walk of the model per adapter.

diffusers' `load_lora_adapter` builds the adapter's `LoraConfig`, then PEFT's `inject_adapter_in_model` walks every
module of the model to find the targets and `set_peft_model_state_dict` loads the weights through the whole model's
`load_state_dict`: on an SD 1.5 UNet ~0.2-0.3 s per adapter whatever its size, growing with the adapters already
loaded (each adds modules to walk). A stack of 100 removals took ~29 s to load that way.

[`load_lora_adapter`] does the same in milliseconds when every layer the adapter edits is a PEFT LoRA `Linear`
already (the second and later removals of a stack; the first goes through diffusers): the config from diffusers' own
function, registered in `model.peft_config`; per target, in the order of PEFT's walk, what PEFT's `update_layer`
does for a plain LoRA adapter, then the weights copied in; the new adapter made the active one on every LoRA layer, as
PEFT's injection leaves it. The model ends in the state diffusers + PEFT leave it in: the same config (target modules
condensed as PEFT condenses them), the same modules and parameters (values, dtype, device, `requires_grad`, training
flag), the same active adapters, and the same random numbers drawn for the initial weights (overwritten by the
loaded ones, but drawn from the global generator, which a pipeline without a `generator` then reads).
`tests/test_fast_inject.py` compares both paths bit for bit; the first use in a process compares them once more on a
two-layer model (`_matches_peft`), so that another PEFT version that changes `update_layer` falls back instead of
diverging.

Anything this code does not reproduce exactly goes through diffusers instead: a layer not wrapped yet, a LoRA layer
with a merged adapter (PEFT's injection unmerges it), another PEFT method's layers, DoRA, LoRA biases, dropout, other
initialisations, a hotswap setup, tensor or context parallelism, a transformers model (PEFT converts their configs),
auxiliary PEFT wrappers (`modules_to_save`), an adapter name that is also part of a module name. The fast path is an
optimisation, never a different result.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import warnings
from collections.abc import Mapping

import torch
from torch import nn

try:  # private helpers of diffusers and PEFT: where a version lacks one, every load goes through diffusers
    from diffusers.loaders.peft import PeftAdapterMixin
    from diffusers.utils.peft_utils import _create_lora_config
    from peft.tuners.lora.layer import Linear as LoraLinear
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer, _find_minimal_target_modules
    from peft.utils.constants import MIN_TARGET_MODULES_FOR_OPTIMIZATION
    from peft.utils.other import AuxiliaryTrainingWrapper, get_pattern_key
except ImportError:  # pragma: no cover - depends on the installed versions
    _IMPORTED = False
else:
    _IMPORTED = True

logger = logging.getLogger(__name__)

_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def load_lora_adapter(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, prefix: str, adapter_name: str):
    """Loads a LoRA state dict as the adapter `adapter_name`: what `model.load_lora_adapter(state_dict, prefix=prefix,
    adapter_name=adapter_name)` does, without PEFT's walk of the model where the layers are wrapped already.

    Args:
        model (`nn.Module`): A diffusers model with diffusers' PEFT integration (a UNet or a transformer).
        state_dict (`dict[str, torch.Tensor]`): diffusers LoRA keys, `"<prefix>.<layer>.lora_A.weight"` and
            `lora_B`. The tensors may be kept by the model as its parameters (diffusers' path): pass copies.
        prefix (`str`): The model's key prefix in `state_dict` (`"unet"`, `"transformer"`).
        adapter_name (`str`): Name of the new adapter; it must not be loaded already.

    Example:
        ```py
        >>> from diffusers_unlearn.peft_inject import load_lora_adapter
        >>> for name, weights in removals.items():  # after the first, each takes milliseconds
        ...     load_lora_adapter(pipe.unet, weights, prefix="unet", adapter_name=name)
        ```
    """
    if not add_to_wrapped_layers(model, state_dict, prefix=prefix, adapter_name=adapter_name):
        model.load_lora_adapter(dict(state_dict), prefix=prefix, adapter_name=adapter_name)


def add_to_wrapped_layers(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, prefix: str, adapter_name: str
) -> bool:
    """Adds the adapter to LoRA layers PEFT made already, as diffusers + PEFT would; `False` (nothing changed) where
    that path does not apply exactly (see the module's docstring), and the caller uses diffusers' loader.

    Args:
        model (`nn.Module`): The model (unwrapped: no `torch.compile` wrapper).
        state_dict (`dict[str, torch.Tensor]`): As for [`load_lora_adapter`].
        prefix (`str`): The model's key prefix in `state_dict`.
        adapter_name (`str`): Name of the new adapter.

    Returns:
        `bool`: whether the adapter was added.
    """
    if not _matches_peft():
        return False
    plan = _plan(model, state_dict, prefix, adapter_name)
    if plan is None:
        return False
    _add(model, adapter_name, *plan)
    return True


def _add(model: nn.Module, adapter_name: str, config, targets: list, lora_layers: list) -> None:
    """Adds the adapter as `_plan` laid out; on any error, takes it out again and re-raises."""
    model.peft_config[adapter_name] = config
    done: list[LoraLinear] = []
    active_before = [(layer, layer._active_adapter) for layer in lora_layers]
    try:
        for key, layer, a, b in targets:  # in the order of PEFT's walk: the same random draws for the initial weights
            done.append(layer)
            _update_layer(layer, adapter_name, config, key)
            with torch.no_grad():
                layer.lora_A[adapter_name].weight.copy_(a)
                layer.lora_B[adapter_name].weight.copy_(b)
        active = [adapter_name]  # one list shared by every layer, as PEFT's `set_adapter` leaves it
        for layer in lora_layers:
            layer._active_adapter = active
        model._hf_peft_config_loaded = True
    except BaseException:
        for layer in done:
            layer.delete_adapter(adapter_name)
        for layer, active_adapter in active_before:
            layer._active_adapter = active_adapter
        model.peft_config.pop(adapter_name, None)
        raise


def _update_layer(layer: LoraLinear, adapter_name: str, config, key: str) -> None:
    """PEFT's `LoraLayer.update_layer` for a plain LoRA adapter (no dropout, DoRA, bias or variant; default
    initialisation), without its passes over every adapter of the layer: those set `requires_grad` of the other
    adapters, which PEFT's injection restores afterwards, and look for weights on the meta device.

    The new adapter's weights are trainable (`requires_grad`), as PEFT leaves an adapter it injects outside inference
    mode; `load_unlearning` then activates the removals in inference mode.
    """
    r_key = get_pattern_key(config.rank_pattern.keys(), key)
    alpha_key = get_pattern_key(config.alpha_pattern.keys(), key)
    r = config.rank_pattern.get(r_key, config.r)
    alpha = config.alpha_pattern.get(alpha_key, config.lora_alpha)
    layer.r[adapter_name] = r
    layer.lora_alpha[adapter_name] = alpha
    layer.lora_dropout[adapter_name] = nn.Identity()  # what `update(nn.ModuleDict(...))` leaves
    layer.lora_A[adapter_name] = nn.Linear(layer.in_features, r, bias=False)
    layer.lora_B[adapter_name] = nn.Linear(r, layer.out_features, bias=False)
    layer.lora_bias[adapter_name] = False
    layer.scaling[adapter_name] = alpha / math.sqrt(r) if config.use_rslora else alpha / r
    layer.use_rslora[adapter_name] = config.use_rslora
    layer.use_dora[adapter_name] = False
    layer.reset_lora_parameters(adapter_name, True)
    device, dtype = layer._get_base_layer_device_and_dtype(layer.get_base_layer())
    if device is not None:
        cast = dtype if dtype is not None and (dtype.is_floating_point or dtype.is_complex) else None
        for modules in (layer.lora_A, layer.lora_B):
            weight = modules[adapter_name].weight
            if weight.device != device or (cast is not None and weight.dtype != cast):  # else `.to` changes nothing
                modules[adapter_name] = (
                    modules[adapter_name].to(device, dtype=cast) if cast else modules[adapter_name].to(device)
                )


def _plan(model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str, adapter_name: str):
    """The config, the targets (key, layer, A, B) in walk order, and every LoRA layer; `None` if not applicable."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs or adapter_name in configs or "." in adapter_name:
        return None
    if getattr(model, "_prepare_lora_hotswap_kwargs", None) is not None:
        return None
    if getattr(model, "_parallel_config", None) is not None:  # tensor parallelism: diffusers refuses LoRA there
        return None
    if hasattr(getattr(model, "config", None), "model_type"):  # PEFT converts transformers models' configs
        return None
    if any(
        getattr(c, "kasa_config", None) is not None or getattr(c, "bias", "none") != "none" for c in configs.values()
    ):
        return None
    weights = {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}
    if not weights or not all(key.endswith(_SUFFIXES) for key in weights):
        return None
    layer_names = {key.rsplit(".lora_", 1)[0] for key in weights}
    if any(f"{name}{suffix}" not in weights for name in layer_names for suffix in _SUFFIXES):
        return None

    names, tuner_layers = _walk(model)
    if names is None:
        return None
    lora_layers = [layer for layer in tuner_layers.values() if isinstance(layer, LoraLayer)]
    if len(lora_layers) != len(tuner_layers) or any(layer.merged for layer in lora_layers):
        return None  # PEFT's `set_adapter` would unmerge, or another PEFT method is loaded: diffusers' path
    if adapter_name in _components(names) or adapter_name in ("weight", "bias"):
        return None  # PEFT's restore of `requires_grad` matches parameter names against the adapter name
    targets = []
    for key, layer in tuner_layers.items():
        if key not in layer_names:
            continue
        a, b = weights[f"{key}.lora_A.weight"], weights[f"{key}.lora_B.weight"]
        if type(layer) is not LoraLinear or layer.fan_in_fan_out or a.ndim != 2 or b.ndim != 2:
            return None
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            return None  # diffusers' path raises its own error
        targets.append((key, layer, a, b))
    if len(targets) != len(layer_names):
        return None  # a layer not wrapped yet: PEFT's injection wraps it

    rank = {f"^{key}": value.shape[1] for key, value in weights.items() if "lora_B" in key and value.ndim > 1}
    config = _create_lora_config(weights, None, None, rank, model_state_dict=None, adapter_name=adapter_name)
    if (
        config.use_dora
        or config.lora_bias
        or config.bias != "none"
        or config.lora_dropout
        or config.init_lora_weights is not True
        or config.modules_to_save
        or config.target_parameters
        or config.layer_replication
        or config.trainable_token_indices
        or config.ensure_weight_tying
        or config.inference_mode
    ):
        return None
    if any(hasattr(layer, "lora_arrow") for _, layer, _, _ in targets):
        return None
    if targets[0][1].resolve_lora_variant(config=config) is not None:
        return None
    target_modules = config.target_modules
    if isinstance(target_modules, list | set) and len(target_modules) >= MIN_TARGET_MODULES_FOR_OPTIMIZATION:
        # PEFT condenses a long target list against every other module name of the model; the names inside LoRA
        # layers can only matter if one ends like a target (an adapter or attribute named like a layer)
        inner = set(configs) | {adapter_name}
        for layer in lora_layers:
            inner.update(layer._modules)
            inner.update(layer.r)
        if not inner.isdisjoint(target.rsplit(".", 1)[-1] for target in target_modules):
            return None
        condensed = _condensed(frozenset(target_modules), names)
        if len(condensed) < len(target_modules):
            config.target_modules = set(condensed)
    return config, targets, lora_layers


def _walk(model: nn.Module) -> tuple[tuple[str, ...] | None, dict[str, BaseTunerLayer]]:
    """The names `model.named_modules()` yields, in its order, without the modules inside PEFT layers, and the PEFT
    layers by name; `(None, {})` if the model holds an auxiliary PEFT wrapper."""
    names: list[str] = []
    tuner_layers: dict[str, BaseTunerLayer] = {}
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", model)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        names.append(name)
        kind = _KINDS.get(type(module))
        if kind is None:
            kind = _KINDS[type(module)] = _kind(type(module))
        if kind == "auxiliary":
            return None, {}
        if kind == "tuner":
            tuner_layers[name] = module
            continue
        children = [
            (f"{name}.{child}" if name else child, sub) for child, sub in module._modules.items() if sub is not None
        ]
        stack.extend(reversed(children))
    return tuple(names), tuner_layers


_KINDS: dict[type, str] = {}


def _kind(cls: type) -> str:
    if issubclass(cls, AuxiliaryTrainingWrapper):
        return "auxiliary"
    return "tuner" if issubclass(cls, BaseTunerLayer) else "module"


@functools.lru_cache(maxsize=8)
def _components(names: tuple[str, ...]) -> frozenset[str]:
    return frozenset(part for name in names for part in name.split("."))


@functools.lru_cache(maxsize=8)
def _condensed(target_modules: frozenset[str], names: tuple[str, ...]) -> frozenset[str]:
    """PEFT's condensed target list (`_find_minimal_target_modules` against the other module names), as in
    `BaseTuner.inject_adapter`; the same for every removal of a stack (same layers, same model)."""
    suffixes = tuple("." + suffix for suffix in target_modules)
    others = [name for name in names if name not in target_modules and not name.endswith(suffixes)]
    return frozenset(_find_minimal_target_modules(target_modules, others))


# ------------------------------------------------------------------------------------ the check against PEFT
if _IMPORTED:

    class _Probe(nn.Module, PeftAdapterMixin):
        """Two linear layers with diffusers' PEFT integration: the smallest model `_matches_peft` can load into."""

        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(6, 5)
            self.second = nn.Linear(5, 4)


def _probe_lora(seed: int, rank: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer, (inputs, outputs) in {"first": (6, 5), "second": (5, 4)}.items():
        weights[f"probe.{layer}.lora_A.weight"] = torch.randn(rank, inputs, generator=generator)
        weights[f"probe.{layer}.lora_B.weight"] = torch.randn(outputs, rank, generator=generator)
    return weights


def _state(model: nn.Module) -> tuple:
    """What `_matches_peft` compares: the module tree, the parameters and each LoRA layer's bookkeeping."""
    modules = [(name, type(module), module.training) for name, module in model.named_modules()]
    parameters = [(name, p.dtype, p.requires_grad, p.detach().clone()) for name, p in model.named_parameters()]
    layers = [
        {
            key: value
            for key, value in vars(module).items()
            if not key.startswith("_") and not isinstance(value, nn.Module)
        }
        | {"active": module.active_adapters, "disabled": module.disable_adapters}
        for module in model.modules()
        if isinstance(module, BaseTunerLayer)
    ]
    return modules, parameters, layers, dict(model.peft_config)


def _same(stock: tuple, fast: tuple) -> bool:
    (modules, parameters, layers, configs), (fast_modules, fast_parameters, fast_layers, fast_configs) = stock, fast
    if modules != fast_modules or layers != fast_layers or configs != fast_configs:
        return False
    if [p[:3] for p in parameters] != [p[:3] for p in fast_parameters]:
        return False
    return all(torch.equal(p[3], q[3]) for p, q in zip(parameters, fast_parameters, strict=True))


@functools.cache
def _matches_peft() -> bool:
    """Whether the fast path leaves a model exactly as diffusers' `load_lora_adapter` does, with the diffusers and
    PEFT installed: checked once per process on a two-layer model (a few milliseconds; the global random state is
    left as it was)."""
    if not _IMPORTED:
        return False
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            torch.manual_seed(0)
            stock = _Probe()
            fast = copy.deepcopy(stock)
            for model in (stock, fast):
                model.load_lora_adapter(_probe_lora(1, 2), prefix="probe", adapter_name="probe-a")
            torch.manual_seed(1)
            stock.load_lora_adapter(_probe_lora(2, 3), prefix="probe", adapter_name="probe-b")
            stock_random = torch.get_rng_state()
            torch.manual_seed(1)
            plan = _plan(fast, _probe_lora(2, 3), "probe", "probe-b")
            if plan is None:
                return False
            _add(fast, "probe-b", *plan)
            matches = torch.equal(stock_random, torch.get_rng_state()) and _same(_state(stock), _state(fast))
    except Exception:  # noqa: BLE001 - any difference in the private APIs used: diffusers' path
        logger.debug("LoRA adapters load through diffusers only: the fast path failed its check", exc_info=True)
        return False
    if not matches:
        logger.debug("LoRA adapters load through diffusers only: the fast path does not match this PEFT version")
    return matches
