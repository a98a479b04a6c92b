"""Tiny Stable Diffusion and SDXL pipelines built from config, offline, with fixed seeds."""

from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"


def _text_config(**overrides) -> CLIPTextConfig:
    config = dict(
        bos_token_id=378,
        eos_token_id=379,
        pad_token_id=379,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=380,
        max_position_embeddings=24,
    )
    config.update(overrides)
    return CLIPTextConfig(**config)


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=16,
    )


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _unet(seed: int, **config) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    base = dict(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4)
    return UNet2DConditionModel(**base, norm_num_groups=16, **config)


def make_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A tiny SD 1.x-style pipeline: 32-wide CLIP text encoder, 4 cross-attention blocks (8 edited layers)."""
    unet = _unet(
        seed,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config())
    return StableDiffusionPipeline(
        unet=unet,
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """A tiny SDXL-style pipeline: two text encoders (32 + 32 wide, concatenated to 64) and pooled conditioning."""
    unet = _unet(
        seed,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(hidden_act="gelu", projection_dim=32))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=32))
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER)
    return StableDiffusionXLPipeline(
        unet=unet,
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER),
    )


@pytest.fixture
def sd_pipe() -> StableDiffusionPipeline:
    return make_sd_pipeline()


@pytest.fixture
def sdxl_pipe() -> StableDiffusionXLPipeline:
    return make_sdxl_pipeline()


def generate(pipe, prompt: str, seed: int = 0, steps: int = 2):
    """Images as a numpy array, deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=generator, output_type="np").images
