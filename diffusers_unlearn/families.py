"""The model-family table: what differs between the pipelines we can edit, in one place.

A family names the denoiser that carries the text conditioning, the layers a closed-form removal edits,
and how a prompt becomes the embeddings those layers read. Adding a family (SD3, FLUX, ...) is adding an
entry to `FAMILIES`, not a rewrite: everything else works on the embeddings and on the edited layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from .errors import UnsupportedPipelineError


@dataclass(frozen=True)
class ModelFamily:
    """How one family of text-to-image pipelines is conditioned on text.

    Args:
        name (`str`): Short name recorded in adapter metadata (`"sd"`, `"sdxl"`).
        pipeline_markers (`tuple[str, ...]`): Attributes a pipeline of this family has (e.g. `text_encoder_2`).
        denoiser (`str`): The pipeline component whose layers are edited and that LoRA keys are prefixed with.
        edited_suffixes (`tuple[str, ...]`): Module-name endings of the layers that read the text embeddings.
        pooled_layer (`str | None`): The layer that reads the pooled text embedding, if the family has one.
    """

    name: str
    pipeline_markers: tuple[str, ...]
    denoiser: str = "unet"
    edited_suffixes: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    pooled_layer: str | None = None

    def encode(self, pipe: DiffusionPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts exactly as the pipeline does at inference time.

        Returns:
            `(embeds, pooled)`: float32 embeddings `(N, L, d)` that the edited layers read, and the pooled
            embeddings `(N, d_pooled)` for families that have them (else `None`).
        """
        device = pipe.device
        with torch.no_grad():
            if self.name == "sdxl":
                embeds, _, pooled, _ = pipe.encode_prompt(
                    prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
                return embeds.float(), pooled.float()
            embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
            return embeds.float(), None

    def denoiser_kwargs(self, pipe: DiffusionPipeline, pooled: torch.Tensor | None, height: int, width: int) -> dict:
        """Extra keyword arguments the denoiser needs besides latents, timestep and text embeddings."""
        if self.name != "sdxl":
            return {}
        projection_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=pooled.dtype, text_encoder_projection_dim=projection_dim
        ).to(pooled.device)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}}


STABLE_DIFFUSION = ModelFamily(name="sd", pipeline_markers=("unet", "text_encoder", "tokenizer"))
STABLE_DIFFUSION_XL = ModelFamily(
    name="sdxl",
    pipeline_markers=("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    pooled_layer="add_embedding.linear_1",
)

# Most specific first: an SDXL pipeline also has everything an SD pipeline has.
FAMILIES: tuple[ModelFamily, ...] = (STABLE_DIFFUSION_XL, STABLE_DIFFUSION)


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    """Returns the family of `pipe`, or raises [`UnsupportedPipelineError`] with what is supported."""
    for family in FAMILIES:
        if all(getattr(pipe, marker, None) is not None for marker in family.pipeline_markers) and hasattr(
            pipe, "encode_prompt"
        ):
            return family
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} cannot be edited yet: diffusers-unlearn supports UNet pipelines conditioned by "
        "CLIP text encoders (StableDiffusionPipeline for SD 1.x / 2.x, StableDiffusionXLPipeline and their "
        "img2img / inpaint variants). Transformer pipelines (SD3, FLUX) are planned."
    )
