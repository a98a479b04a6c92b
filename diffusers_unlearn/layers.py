"""The layers a removal edits: discovery, their current weights, and the base-model fingerprint."""

from __future__ import annotations

import hashlib

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .families import ModelFamily, family_of


def unwrap(module: nn.Module) -> nn.Module:
    """The model under `torch.compile` (`_orig_mod`) or `DataParallel` / `DistributedDataParallel` (`module`)."""
    while True:
        if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
            module = module.module
        elif isinstance(vars(module).get("_modules", {}).get("_orig_mod"), nn.Module):  # torch.compile's wrapper
            module = module._orig_mod
        else:
            return module


def denoiser_of(pipe) -> nn.Module:
    """The pipeline's denoiser, unwrapped: what every edit, check and PEFT call of ours acts on."""
    return unwrap(getattr(pipe, family_of(pipe).denoiser))


def active_adapters(denoiser: nn.Module) -> list[str]:
    """The PEFT adapters active on the denoiser now, in order (PEFT activates them on every LoRA layer alike)."""
    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            return list(module.active_adapters)
    return []


def edited_layers(denoiser: nn.Module, family: ModelFamily) -> dict[str, nn.Module]:
    """Maps module name to module for every layer `family` edits, in the denoiser's module order.

    A layer already wrapped by PEFT (another LoRA is loaded) is returned as the wrapper; see [`base_linear`].
    """
    layers = {}
    for name, module in denoiser.named_modules():
        if name.endswith(family.edited_suffixes) and isinstance(module, nn.Linear | BaseTunerLayer):
            layers[name] = module
    return layers


def pooled_layer(denoiser: nn.Module, family: ModelFamily) -> nn.Module | None:
    """The layer that reads the pooled text embedding, for families that have one."""
    if family.pooled_layer is None:
        return None
    return denoiser.get_submodule(family.pooled_layer)


def base_linear(module: nn.Module) -> nn.Linear:
    """The plain `nn.Linear` under any PEFT wrapper."""
    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def current_weight(module: nn.Module) -> torch.Tensor:
    """The weight the layer applies now, float32: base weight plus every active, unmerged LoRA delta.

    Merged (fused) adapters are already inside the base weight, disabled adapters contribute nothing.
    """
    weight = base_linear(module).weight.detach().float()
    if isinstance(module, BaseTunerLayer) and not module.disable_adapters:
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}) and name not in module.merged_adapters:
                weight = weight + module.get_delta_weight(name).detach().float()
    return weight


def fingerprint(layers: dict[str, nn.Module]) -> str:
    """A short hash of the base weights of the edited layers (PEFT deltas excluded).

    Weights are hashed after rounding to float16, so the same checkpoint loaded in float32 or float16 gives the
    same fingerprint, while retrained or fine-tuned weights give another.
    """
    digest = hashlib.sha256()
    for name, module in layers.items():
        weight = base_linear(module).weight.detach()
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
        digest.update(weight.to("cpu", torch.float16).contiguous().view(torch.int16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]
