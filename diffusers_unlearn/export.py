"""Exports for tools outside diffusers: the kohya / AUTOMATIC1111 LoRA format that ComfyUI and A1111 load.

One `.safetensors` file with, per edited layer, `lora_unet_<module path with "_">.lora_down.weight` (`A`),
`.lora_up.weight` (`B`) and `.alpha` (= rank, so the scale is 1 and the weight change is exactly `B @ A`).
Module paths keep diffusers' UNet naming, which kohya's SD 1.x LoRAs use and which ComfyUI, A1111 and diffusers'
own kohya conversion map; SDXL's pooled-text layer `add_embedding.linear_1` is written under its original-UNet
name `label_emb.0.0`, the one those tools know. FLUX.1 removals use the original (BFL / sd-scripts) names that
ComfyUI and diffusers' FLUX kohya conversion read: `context_embedder` is `txt_in`, the pooled-text layer
`vector_in.in_layer`. The names come from the family table (`ModelFamily.kohya_names`). SD3 has no such format
here: its diffusers file (`pytorch_lora_weights.safetensors`, keys `transformer.*`) is what ComfyUI loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapter import HEADER_KEY, UnlearningAdapter, atomic_write
from .errors import InvalidArgumentError, InvalidTypeError, UnsupportedPipelineError
from .families import FAMILIES, ModelFamily
from .merge import merge_removals


def kohya_state_dict(adapter: UnlearningAdapter, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The removal's LoRA tensors under kohya key names.

    Raises:
        UnsupportedPipelineError: The family has no kohya format, or a layer has no name in it (a distilled FLUX
            removal's joint-attention projections are fused `qkv` matrices in the original checkpoint).
    """
    family = _family(adapter)
    names = dict(family.kohya_names)
    tensors = {}
    for layer in adapter.layer_names:
        if family.denoiser != "unet" and layer not in names:
            raise UnsupportedPipelineError(
                f"Layer {layer!r} of removal {adapter.name!r} has no name in the kohya format of {family.name!r}; "
                "load its diffusers folder instead (ComfyUI reads diffusers-format FLUX / SD3 LoRAs)."
            )
        down, up = adapter.factors(layer)
        name = "lora_unet_" + names.get(layer, layer).replace(".", "_")
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]), dtype=dtype)
    return tensors


def export_kohya(source, path: str | os.PathLike, *, dtype: torch.dtype = torch.float16) -> Path:
    """Writes a removal, or a whole stack merged exactly, as one kohya-format LoRA file.

    Args:
        source ([`UnlearningAdapter`] or [`UnlearningStack`]): What to export (a stack is merged with
            `merge("concat")`: exact).
        path (`str` or `os.PathLike`): The `.safetensors` file to write (atomically).
        dtype (`torch.dtype`, defaults to `torch.float16`): Tensor type in the file.

    Returns:
        `Path`: the file.

    Example:
        ```py
        >>> from diffusers_unlearn.export import export_kohya
        >>> export_kohya(adapter, "no-van-gogh.safetensors")  # drop into ComfyUI/models/loras or A1111
        >>> pipe.load_lora_weights("no-van-gogh.safetensors")  # diffusers reads it too
        ```
    """
    adapter = source
    if not isinstance(source, UnlearningAdapter) and isinstance(source, Iterable):  # a stack: its exact sum
        removals = list(source)
        if removals and all(isinstance(removal, UnlearningAdapter) for removal in removals):
            adapter = merge_removals(removals, "concat")
    if not isinstance(adapter, UnlearningAdapter):
        raise InvalidTypeError(
            f"export_kohya takes an UnlearningAdapter or an UnlearningStack, not {type(source).__name__}."
        )
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidArgumentError(f"{path} should end in .safetensors: that is the file the other tools look for.")
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a folder; pass the path of the file to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = kohya_state_dict(adapter, dtype)
    header = {
        "format": "pt",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(adapter.rank),
        "ss_network_alpha": str(adapter.rank),
        "ss_base_model_version": _family(adapter).kohya_base,
        HEADER_KEY: json.dumps(adapter.metadata, sort_keys=True),
    }
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def _family(adapter: UnlearningAdapter) -> ModelFamily:
    """The removal's family, with a kohya format (removals made before families were recorded: SD / SDXL)."""
    name = adapter.metadata.get("family") or "sd"
    family = next((f for f in FAMILIES if f.name == name), None)
    if family is None or family.kohya_names is None:
        raise UnsupportedPipelineError(
            f"Removal {adapter.name!r} is for {name!r}, which has no kohya export; its diffusers folder "
            "(`save_pretrained`) is what ComfyUI and diffusers load."
        )
    return family
