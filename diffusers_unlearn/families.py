"""The model-family table: what differs between the pipelines we can edit, in one place.

A family names the denoiser that carries the text conditioning, the layers a closed-form removal edits, how a
prompt becomes the embeddings those layers read, how its tokens line up with another prompt's, and how the
denoiser is called. Adding a family is adding an entry to `FAMILIES`, not a rewrite: everything else works on
the embeddings and on the edited layers.

| family | pipelines | edited layers | pooled text input |
|--------|-----------|---------------|-------------------|
| `sd`   | `StableDiffusionPipeline` (1.x / 2.x) | every `attn2.to_k`, `attn2.to_v` | - |
| `sdxl` | `StableDiffusionXLPipeline` | every `attn2.to_k`, `attn2.to_v` | `add_embedding.linear_1` (pooled columns) |
| `sd3`  | `StableDiffusion3Pipeline` (SD3 / SD3.5) | `context_embedder` | `time_text_embed.text_embedder.linear_1` |
| `flux` | `FluxPipeline` (FLUX.1) | `context_embedder` | `time_text_embed.text_embedder.linear_1` |

In the transformer families (SD3, FLUX.1) the text embedding enters the denoiser only through the linear
`context_embedder` (`encoder_hidden_states = self.context_embedder(encoder_hidden_states)` in both
`SD3Transformer2DModel.forward` and `FluxTransformer2DModel.forward`), and the pooled CLIP embedding only through
`time_text_embed.text_embedder.linear_1`. A closed-form removal is a linear remap `c -> c + G c` of the text
embedding, so on these models it is one LoRA on `context_embedder` (`B A = W G`) plus one on the pooled layer:
diffusers' own `SD3LoraLoaderMixin` / `FluxLoraLoaderMixin` load both (keys `transformer.context_embedder.*`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from torch import nn

from .errors import InvalidConceptError, UnsupportedPipelineError
from .prompts import align, token_ids


@dataclass(frozen=True)
class TextSegment:
    """One tokenizer's stretch of the token sequence the edited layers read.

    Args:
        tokenizer (`str`): The pipeline attribute holding the tokenizer (`"tokenizer"`, `"tokenizer_3"`).
        length (`int | None`): Tokens in the stretch: the pipeline's default `max_sequence_length` for T5 (at most
            the tokenizer's `model_max_length`: lower it there to make removals for shorter sequences); `None`:
            the tokenizer's `model_max_length` (CLIP: 77).
        causal (`bool`): Whether the encoder is causal (CLIP): then a shared prefix has identical embeddings and
            is left out of the forget term. T5 is not: every position depends on the whole prompt, so every
            position is paired (see [`prompts.align`]).
        truncates (`bool`): The pipeline silently truncates longer prompts here (CLIP beside a longer T5); else a
            prompt too long is refused.
    """

    tokenizer: str
    length: int | None = None
    causal: bool = True
    truncates: bool = False

    def size(self, pipe: DiffusionPipeline) -> int:
        tokenizer = getattr(pipe, self.tokenizer, None)
        if tokenizer is None:  # an optional encoder left out (SD3 without T5): the pipeline pads zeros
            return self.length or 0
        return min(self.length, tokenizer.model_max_length) if self.length else tokenizer.model_max_length


@dataclass(frozen=True)
class ModelFamily:
    """How one family of text-to-image pipelines is conditioned on text (the UNet families' behaviour).

    Args:
        name (`str`): Short name recorded in adapter metadata (`"sd"`, `"sdxl"`, `"sd3"`, `"flux"`).
        pipeline_markers (`tuple[str, ...]`): Attributes a pipeline of this family has (e.g. `text_encoder_2`).
        denoiser (`str`): The pipeline component whose layers are edited and that LoRA keys are prefixed with.
        denoiser_classes (`tuple[str, ...]`): Class names the denoiser (or one of its bases) must have; empty: any.
        edited_suffixes (`tuple[str, ...]`): Module-name endings of the layers that read the text embeddings.
        pooled_layer (`str | None`): The layer that reads the pooled text embedding, if the family has one.
        segments (`tuple[TextSegment, ...]`): The stretches of the embedding sequence, in order.
        distill_targets (`tuple[str, ...]`): Layers `method="distill"` trains by default (where the text is read).
        kohya_names (`tuple[tuple[str, str], ...] | None`): `(diffusers name, original-checkpoint name)` of edited
            layers for the kohya export (`lora_unet_<name>`); layers not listed keep their diffusers name. `None`:
            no kohya format for this family.
        kohya_base (`str`): `ss_base_model_version` written in kohya exports.
    """

    name: str
    pipeline_markers: tuple[str, ...]
    denoiser: str = "unet"
    denoiser_classes: tuple[str, ...] = ()
    edited_suffixes: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    pooled_layer: str | None = None
    segments: tuple[TextSegment, ...] = (TextSegment("tokenizer"),)
    distill_targets: tuple[str, ...] = ("attn2.to_k", "attn2.to_v")
    kohya_names: tuple[tuple[str, str], ...] | None = ()
    kohya_base: str = ""

    def matches(self, pipe: DiffusionPipeline) -> bool:
        """Whether `pipe` belongs to this family."""
        if not hasattr(pipe, "encode_prompt"):
            return False
        if not all(getattr(pipe, marker, None) is not None for marker in self.pipeline_markers):
            return False
        if not self.denoiser_classes:
            return True
        return any(cls.__name__ in self.denoiser_classes for cls in type(getattr(pipe, self.denoiser)).__mro__)

    # --------------------------------------------------------------------------------------------- text
    def encode(self, pipe: DiffusionPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encodes prompts exactly as the pipeline does at inference time.

        Returns:
            `(embeds, pooled)`: float32 embeddings `(N, L, d)` that the edited layers read, and the pooled
            embeddings `(N, d_pooled)` for families that have them (else `None`).
        """
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompts, pipe.device, 1, do_classifier_free_guidance=False)
        return embeds.float(), None

    def token_ids(self, pipe: DiffusionPipeline, prompt: str) -> tuple[list[int], ...]:
        """The prompt's token ids per segment, unpadded (truncated where the pipeline truncates).

        Raises:
            InvalidConceptError: The prompt is too long for a segment the pipeline would truncate silently.
        """
        out = []
        for segment in self.segments:
            tokenizer = getattr(pipe, segment.tokenizer, None)
            if tokenizer is None:  # an optional encoder left out (SD3 without T5): zeros, paired as they are
                out.append([])
                continue
            length = segment.size(pipe)
            if segment.truncates:
                ids = list(tokenizer(prompt, truncation=False).input_ids)
                out.append(ids[: length - 1] + ids[-1:] if len(ids) > length else ids)
            elif segment.length is None:
                out.append(token_ids(tokenizer, prompt))
            else:
                ids = list(tokenizer(prompt, truncation=False).input_ids)
                if len(ids) > length:
                    raise InvalidConceptError(
                        f"Prompt {prompt!r} is {len(ids)} tokens long for {segment.tokenizer}; this family's "
                        f"removals are made at max_sequence_length={length}. Shorten it: the pipeline would "
                        "silently truncate it."
                    )
                out.append(ids)
        return tuple(out)

    def align(
        self, pipe: DiffusionPipeline, ids_a: tuple[list[int], ...], ids_b: tuple[list[int], ...]
    ) -> tuple[list[int], list[int]]:
        """Pairs the positions of prompt `a` with those of `b`, segment by segment (see [`prompts.align`])."""
        positions_a, positions_b, offset = [], [], 0
        for segment, a, b in zip(self.segments, ids_a, ids_b, strict=True):
            length = segment.size(pipe)
            pa, pb = align(a, b, length, causal=segment.causal)
            positions_a += [offset + i for i in pa]
            positions_b += [offset + j for j in pb]
            offset += length
        return positions_a, positions_b

    def prefix_keys(self, pipe: DiffusionPipeline, ids: tuple[list[int], ...]) -> list[tuple | None]:
        """Per position of the embedding sequence, what alone determines its embedding, where that is a prefix.

        In a causal segment the embedding at token `k` depends only on tokens `0..k`: two prompts with the same
        key at a position have the same embedding there. Positions of bidirectional segments and padding (which
        sees the whole prompt) get `None`.
        """
        keys: list[tuple | None] = []
        for index, (segment, segment_ids) in enumerate(zip(self.segments, ids, strict=True)):
            length = segment.size(pipe)
            for k in range(length):
                causal = segment.causal and k < len(segment_ids)
                keys.append((index, tuple(segment_ids[: k + 1])) if causal else None)
        return keys

    # ---------------------------------------------------------------------------------------- denoiser
    def random_latents(self, pipe: DiffusionPipeline, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` standard-normal latents in the layout the denoiser reads, on the CPU."""
        config = getattr(pipe, self.denoiser).config
        size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
        return torch.randn(count, config.in_channels, size, size, generator=generator)

    def denoise(
        self,
        pipe: DiffusionPipeline,
        model: nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        embeds: torch.Tensor,
        pooled: torch.Tensor | None,
    ) -> torch.Tensor:
        """The denoiser's prediction (`model`: the denoiser, possibly wrapped) at scheduler timesteps `[0, 1000)`."""
        scale = getattr(pipe, "vae_scale_factor", 8)
        extra = self.denoiser_kwargs(pipe, pooled, latents.shape[-2] * scale, latents.shape[-1] * scale)
        return model(latents, timesteps, encoder_hidden_states=embeds, **extra).sample

    def denoiser_kwargs(self, pipe: DiffusionPipeline, pooled: torch.Tensor | None, height: int, width: int) -> dict:
        """Extra keyword arguments the UNet needs besides latents, timestep and text embeddings."""
        return {}

    def sampling_scheduler(self, pipe: DiffusionPipeline, steps: int):
        """A scheduler for short teacher trajectories (`method="distill"`), timesteps set."""
        scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        scheduler.set_timesteps(steps)
        return scheduler


@dataclass(frozen=True)
class _SDXLFamily(ModelFamily):
    """SDXL: two CLIP encoders, concatenated; the pooled embedding enters through `add_embedding`."""

    def encode(self, pipe, prompts):
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        return embeds.float(), pooled.float()

    def denoiser_kwargs(self, pipe, pooled, height, width):
        projection_dim = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=pooled.dtype, text_encoder_projection_dim=projection_dim
        ).to(pooled.device)
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids.repeat(pooled.shape[0], 1)}}


@dataclass(frozen=True)
class _FlowTransformerFamily(ModelFamily):
    """Transformer families trained by flow matching (SD3, FLUX.1): `max_sequence_length` is the T5 segment's."""

    def max_sequence_length(self, pipe: DiffusionPipeline) -> int:
        """The T5 sequence length removals are made at (and the pipeline should be called with)."""
        return self.segments[-1].size(pipe)

    def sampling_scheduler(self, pipe, steps):
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        if scheduler.config.get("use_dynamic_shifting"):
            tokens = self.random_latents(pipe, 1, torch.Generator().manual_seed(0))[0].numel()
            scheduler.set_timesteps(steps, mu=_flux_shift(tokens // _packed_channels(pipe, self), scheduler.config))
        else:
            scheduler.set_timesteps(steps)
        return scheduler


@dataclass(frozen=True)
class _SD3Family(_FlowTransformerFamily):
    """SD3 / SD3.5: CLIP-L + CLIP-G (77 tokens, padded to the T5 width) followed by T5 (256 tokens)."""

    def encode(self, pipe, prompts):
        with torch.no_grad():
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, prompt_3=None, device=pipe.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length(pipe),
            )  # fmt: skip
        return embeds.float(), pooled.float()

    def denoise(self, pipe, model, latents, timesteps, embeds, pooled):
        return model(
            hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds, pooled_projections=pooled,
            return_dict=False,
        )[0]  # fmt: skip


@dataclass(frozen=True)
class _FluxFamily(_FlowTransformerFamily):
    """FLUX.1: T5 (512 tokens) is the sequence; CLIP's pooled embedding the vector input. Latents are packed."""

    def encode(self, pipe, prompts):
        with torch.no_grad():
            embeds, pooled, _ = pipe.encode_prompt(
                prompt=prompts, prompt_2=None, device=pipe.device, num_images_per_prompt=1,
                max_sequence_length=self.max_sequence_length(pipe),
            )  # fmt: skip
        return embeds.float(), pooled.float()

    def random_latents(self, pipe, count, generator):
        side = pipe.default_sample_size // 2  # packed: 2 x 2 latent patches per token
        return torch.randn(count, side * side, _packed_channels(pipe, self), generator=generator)

    def denoise(self, pipe, model, latents, timesteps, embeds, pooled):
        side = math.isqrt(latents.shape[1])
        image_ids = pipe._prepare_latent_image_ids(latents.shape[0], side, side, latents.device, latents.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        config = getattr(pipe, self.denoiser).config
        guidance = None
        if config.guidance_embeds:  # FLUX.1 dev's default guidance
            guidance = torch.full((latents.shape[0],), 3.5, device=latents.device, dtype=torch.float32)
        return model(
            hidden_states=latents, timestep=timesteps.to(latents.dtype) / 1000, guidance=guidance,
            pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids,
            return_dict=False,
        )[0]  # fmt: skip


def _packed_channels(pipe, family: ModelFamily) -> int:
    return getattr(pipe, family.denoiser).config.in_channels


def _flux_shift(image_tokens: int, config) -> float:
    """`mu` of the dynamic timestep shift, as `FluxPipeline` computes it."""
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    slope = (high - low) / (top - base)
    return image_tokens * slope + low - slope * base


STABLE_DIFFUSION = ModelFamily(name="sd", pipeline_markers=("unet", "text_encoder", "tokenizer"), kohya_base="sd_v1")
STABLE_DIFFUSION_XL = _SDXLFamily(
    name="sdxl",
    pipeline_markers=("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    pooled_layer="add_embedding.linear_1",
    kohya_names=(("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2")),
    kohya_base="sdxl_base_v1-0",
)
STABLE_DIFFUSION_3 = _SD3Family(
    name="sd3",
    pipeline_markers=("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    denoiser="transformer",
    denoiser_classes=("SD3Transformer2DModel",),
    edited_suffixes=("context_embedder",),
    pooled_layer="time_text_embed.text_embedder.linear_1",
    segments=(TextSegment("tokenizer", truncates=True), TextSegment("tokenizer_3", length=256, causal=False)),
    distill_targets=("attn.add_k_proj", "attn.add_v_proj"),
    kohya_names=None,
)
FLUX = _FluxFamily(
    name="flux",
    pipeline_markers=("transformer", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
    denoiser="transformer",
    denoiser_classes=("FluxTransformer2DModel",),
    edited_suffixes=("context_embedder",),
    pooled_layer="time_text_embed.text_embedder.linear_1",
    segments=(TextSegment("tokenizer_2", length=512, causal=False),),
    distill_targets=("attn.add_k_proj", "attn.add_v_proj"),
    kohya_names=(("context_embedder", "txt_in"), ("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")),
    kohya_base="flux1",
)

# Most specific first: an SDXL pipeline also has everything an SD pipeline has.
FAMILIES: tuple[ModelFamily, ...] = (STABLE_DIFFUSION_3, FLUX, STABLE_DIFFUSION_XL, STABLE_DIFFUSION)


def family_of(pipe: DiffusionPipeline) -> ModelFamily:
    """Returns the family of `pipe`, or raises [`UnsupportedPipelineError`] with what is supported."""
    for family in FAMILIES:
        if family.matches(pipe):
            return family
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__} cannot be edited yet: diffusers-unlearn supports StableDiffusionPipeline (SD 1.x / "
        "2.x), StableDiffusionXLPipeline, StableDiffusion3Pipeline (SD3 / SD3.5) and FluxPipeline (FLUX.1), and "
        "their img2img / inpaint variants. FLUX.2 and Qwen-Image are not supported yet (docs/reference.md)."
    )
