"""Tiny Stable Diffusion, SDXL, SD3 and FLUX.1 pipelines built from config, offline, with fixed seeds."""

import json
import os
from pathlib import Path

# One thread per test process: the models are tiny, and on a shared 2-core machine two threads beside another job
# made the distillation tests 3.5x slower (289 s against 93 s for test_harden_distill + test_continual_anchor).
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

TOKENIZER = Path(__file__).parent / "fixtures" / "tokenizer"
torch.set_num_threads(1)  # one thread per process: the suite runs in two processes (`pytest -n 2`), one per core


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


# ------------------------------------------------------------------------------ transformer pipelines (SD3, FLUX.1)
def kill_distill_at_batch(monkeypatch, batch: int):
    """Makes distillation's `batch`-th batch raise `KeyboardInterrupt` (a run killed during training); returns
    the real batch function, to put back with `monkeypatch.setattr` before resuming."""
    from diffusers_unlearn.methods import distill as distill_module

    calls = {"n": 0}
    real = distill_module._batch

    def killed(*args):
        calls["n"] += 1
        if calls["n"] == batch:
            raise KeyboardInterrupt("killed")
        return real(*args)

    monkeypatch.setattr(distill_module, "_batch", killed)
    return real


def make_t5_tokenizer(max_length: int = 96) -> T5TokenizerFast:
    """A T5 tokenizer built offline: a word-level `tokenizers` model over the whole words of the CLIP fixture's
    vocabulary (so every prompt the tests use tokenizes in both), `</s>` appended, `<pad>` = 0. Its
    `model_max_length` (96, above CLIP's 77) caps the T5 sequence removals are made at, to keep tests fast."""
    clip_vocab = json.loads((TOKENIZER / "vocab.json").read_text())
    words = ["<pad>", "</s>", "<unk>"] + sorted({t.removesuffix("</w>") for t in clip_vocab if t.endswith("</w>")})
    model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=max_length,
    )  # fmt: skip


def _t5(seed: int, width: int) -> T5EncoderModel:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(make_t5_tokenizer()), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip
    return T5EncoderModel(config).eval()  # built from config it is in training mode: dropout on


def _flow_vae(latent_channels: int, **config) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035, **config,
    )  # fmt: skip


def make_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A tiny SD3-style pipeline: two CLIP encoders (32 + 32 wide, pooled 64), a 64-wide T5, one joint block.

    The text sequence the transformer reads is CLIP (24 tokens, padded to 64 columns) then T5 (96 tokens).
    """
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=32))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(hidden_act="gelu", projection_dim=32))
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(4),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
        text_encoder_2=text_encoder_2,
        tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER),
        text_encoder_3=_t5(seed + 2, 64),
        tokenizer_3=make_t5_tokenizer(),
    )


def make_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A tiny FLUX.1-style pipeline: CLIP (32 wide, pooled) and a 32-wide T5 (96 tokens), one double and one
    single block, guidance embedding (as FLUX.1 dev). `default_sample_size` is 8: 8 x 8 pixels (this VAE does not
    downsample)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(hidden_act="gelu", projection_dim=32))
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flow_vae(1),
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER),
        text_encoder_2=_t5(seed + 2, 32),
        tokenizer_2=make_t5_tokenizer(),
    )
    pipe.default_sample_size = 8
    return pipe


def generate_transformer(pipe, prompt: str, seed: int = 0, steps: int = 2):
    """Images of a tiny SD3 / FLUX pipeline (8 x 8 pixels) as a numpy array, deterministic for a seed."""
    generator = torch.Generator().manual_seed(seed)
    size = pipe.default_sample_size * pipe.vae_scale_factor
    return pipe(
        prompt, num_inference_steps=steps, generator=generator, output_type="np", height=size, width=size,
        max_sequence_length=pipe.tokenizer_3.model_max_length if hasattr(pipe, "tokenizer_3") else
        pipe.tokenizer_2.model_max_length,
    ).images  # fmt: skip


@pytest.fixture(autouse=True)
def _target_check_on_random_models(request, monkeypatch):
    """Tests marked `random_targets` erase from random tiny models, which draw every word about as differently
    from every other: whether a mapping candidate is "drawn as the concept" is noise there, so that rule (not the
    untrained-word rule) is off. test_targets.py builds a meaningful case on purpose; tests on the trained digits
    model keep it (marker `trained_model` where their module is marked `random_targets`)."""
    node = request.node
    if node.get_closest_marker("random_targets") and not node.get_closest_marker("trained_model"):
        monkeypatch.setattr("diffusers_unlearn.targets.MIN_SEPARATION", 0.0)


def noise_predictions(pipe, prompts, seed=7, latents_from=None) -> torch.Tensor:
    """The UNet's predictions for `prompts` on latents the untouched model generates (its own DDIM trajectories
    from other seeds than training, at timesteps below 600), shared by all prompts; with `latents_from`, on that
    pipeline's trajectories (what a chain draws for them)."""
    from diffusers_unlearn import DistillConfig
    from diffusers_unlearn.distance import PromptBank
    from diffusers_unlearn.families import family_of
    from diffusers_unlearn.methods.distill import _latent_pool

    bank = PromptBank(pipe, family_of(pipe))
    config = DistillConfig(latent_pool=8, sampling_steps=5)
    weights = torch.ones(len(prompts), dtype=torch.float64)
    drawer = latents_from or pipe
    pool = _latent_pool(drawer, family_of(drawer), PromptBank(drawer, family_of(drawer)), [], prompts, weights, config,
                        seed)  # fmt: skip
    latents, timesteps, _ = pool["replay"]
    latents, timesteps = latents.flatten(0, 1), timesteps.flatten()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            embeds = bank.embeds(prompt)[None].expand(len(latents), -1, -1)
            out.append(pipe.unet(latents, timesteps, encoder_hidden_states=embeds).sample)
    return torch.stack(out)


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` run first (the others keep their order): with `-n 2` the two workers then end
    together, where a long test drawn last would run alone while the other worker waits."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
