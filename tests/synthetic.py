"""Synthetic removals for tests of loading mechanics: random low-rank factors on the layers a removal edits.

They are recorded for the pipeline's base weights like a real removal, so every check of `load_unlearning` applies,
but they take no solve: tests of loading, unloading and LoRA interop do not depend on how a removal is made.
"""

from __future__ import annotations

import torch

import diffusers_unlearn as du
from diffusers_unlearn.pipeline import base_fingerprints


def lora_factors(denoiser, layers: list[str], rank: int, seed: int, relative: float) -> dict[str, torch.Tensor]:
    """A diffusers LoRA state dict whose delta on each layer has norm `relative` x the layer's weight norm."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in layers:
        weight = denoiser.get_submodule(layer).weight.detach()
        a = torch.randn(rank, weight.shape[1], generator=generator)
        b = torch.randn(weight.shape[0], rank, generator=generator)
        b *= relative * weight.norm() / (b @ a).norm()
        weights[f"unet.{layer}.lora_A.weight"], weights[f"unet.{layer}.lora_B.weight"] = a, b
    return weights


def edited(pipe) -> list[str]:
    """The layers a removal edits on a UNet pipeline."""
    return [name for name, _ in pipe.unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))]


def synthetic_removal(pipe, concept: str, seed: int = 1, rank: int = 4, relative: float = 0.5) -> du.UnlearningAdapter:
    """A removal named `no-<concept>` for `pipe`'s base weights."""
    metadata = {
        "format_version": "1.0",
        "name": f"no-{concept}",
        "concept": concept,
        "rank": rank,
        **base_fingerprints(pipe),
        "method": "closed_form",
        "denoiser": "unet",
        "family": "sd",
    }
    return du.UnlearningAdapter(lora_factors(pipe.unet, edited(pipe), rank, seed, relative), metadata)
