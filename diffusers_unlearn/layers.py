"""The layers a removal edits: discovery, their current weights, and the base-model fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

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
    """The weight the layer applies now, float32 on the CPU (where the closed-form math runs, whatever the pipeline's
    device): base weight plus every active, unmerged LoRA delta.

    Merged (fused) adapters are already inside the base weight, disabled adapters contribute nothing.
    """
    weight = base_linear(module).weight.detach().float()
    if isinstance(module, BaseTunerLayer) and not module.disable_adapters:
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}) and name not in module.merged_adapters:
                weight = weight + module.get_delta_weight(name).detach().float()
    return weight.cpu()


FINGERPRINT_KEYS: dict[str, torch.dtype] = {
    "base_fingerprint": torch.float16,
    "base_fingerprint_bf16": torch.bfloat16,
}
"""The fingerprints a removal records, by metadata key, and the precision each hashes the weights at."""


def fingerprint(layers: dict[str, nn.Module], dtype: torch.dtype = torch.float16) -> str:
    """A short hash of the base weights of the edited layers (PEFT deltas excluded), rounded to `dtype`.

    Rounded to float16, the same checkpoint loaded in float32 or float16 gives the same hash; rounded to bfloat16,
    loaded in float32 or bfloat16. Retrained or fine-tuned weights give another.
    """
    digest = hashlib.sha256()
    for name, module in layers.items():
        weight = base_linear(module).weight.detach()
        digest.update(f"{name}:{tuple(weight.shape)};".encode())
        digest.update(weight.to("cpu", dtype).contiguous().view(torch.int16).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def fingerprints(layers: dict[str, nn.Module]) -> dict[str, str]:
    """Every fingerprint of [`FINGERPRINT_KEYS`]: what a removal records of the weights it was made on."""
    return {key: fingerprint(layers, dtype) for key, dtype in FINGERPRINT_KEYS.items()}


def same_base(recorded: Mapping[str, Any], found: Mapping[str, Any]) -> bool:
    """Whether two records of base weights (a removal's metadata, a pipeline's [`fingerprints`]) name the same ones.

    They do when a fingerprint both record is equal: float16 matches a float32 or float16 copy of a checkpoint,
    bfloat16 a bfloat16 copy of a float32 one. (A removal written before the bfloat16 fingerprint has only the
    first.) A float16 and a bfloat16 copy of a float32 checkpoint round some weights differently and match neither:
    a removal made on a float32 pipeline records both and loads on either.
    """
    return any(recorded.get(key) is not None and recorded.get(key) == found.get(key) for key in FINGERPRINT_KEYS)
