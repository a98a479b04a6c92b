"""Train the embedded glyphs text-to-image model (and its scorer) from scratch on CPU.

Usage::

    python -m diffusers_unlearn.glyphs.train [--output DIR] [--vae-steps N] [--unet-steps N] [--threads 2]
    python -m diffusers_unlearn.glyphs.train --scorer [--output DIR] [--scorer-steps N]

Training is seeded and resumable: the UNet phase writes the full training state to ``OUTPUT/train_state.pt`` (and
the EMA pipeline to ``OUTPUT``) every ``--checkpoint-every`` steps; running the same command again continues from
there (the VAE, once trained, is read back from ``OUTPUT/vae_trained``). The state file and ``vae_trained`` are
deleted when training completes, so that ``OUTPUT`` holds only the pipeline.

1. a tiny ``AutoencoderKL`` (32x32x3 <-> 4x8x8, 1500 steps of 64) on rendered glyphs (reconstruction + small KL);
2. the ``UNet2DConditionModel`` jointly with a from-scratch ``CLIPTextModel`` of width 256, 2 layers (epsilon
   prediction, 10% empty captions for classifier-free guidance, AdamW with warm-up and cosine decay, EMA 0.999 of
   both), UNet channels 48 / 96, 20000 steps of 32.

Sized for the budget of issue 15 (<= 90 minutes on 2 CPU cores): the shipped model's run took 81 minutes on one
thread with the other core busy (VAE 0.31 s per step of 64, UNet phase 0.22 s per step of 32). Its wall time and
its bars are in ``docs/benchmarks/glyphs_model.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import time
from pathlib import Path

import torch

from .. import toyworld
from .data import BACKGROUNDS, CHARACTERS, COLOURS, STYLES, caption, render_glyphs, vocabulary_words

logger = logging.getLogger(__name__)

MAX_LENGTH = 12
TEXT_WIDTH = 256
TEXT_LAYERS = 2
DEFAULT_OUTPUT = Path(__file__).parent / "model"


def build_models(vocab_size: int, bos: int, eos: int, seed: int = 0):
    """Fresh text encoder, VAE and UNet with the shipped architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)  # each component from the same seed, so that a VAE trained alone is the same VAE
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_WIDTH,
            intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            projection_dim=TEXT_WIDTH,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            hidden_act="quick_gelu",
        )
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        mid_block_add_attention=False,
    )
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,  # diffusers' legacy name: the number of heads
        norm_num_groups=16,
    )
    return text_encoder, vae, unet


def train_pipeline(
    output: str | Path = DEFAULT_OUTPUT,
    vae_steps: int = 1500,
    unet_steps: int = 20000,
    batch_size: int = 32,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    checkpoint_every: int = 1000,
    variants: int = 4,
    ema_decay: float = 0.999,
) -> Path:
    """Train every component and save a ``StableDiffusionPipeline`` to ``output`` (weights stored in ``dtype``)."""
    from diffusers import AutoencoderKL

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    state_path = output / "train_state.pt"
    t0 = time.time()
    data = render_glyphs(variants=variants, seed=0)
    images, y_char, y_style, y_colour, y_background = data.all_compositions()
    logger.info("rendered %d images in %.0f s", len(images), time.time() - t0)
    tokenizer = toyworld.build_tokenizer(output / "tokenizer", vocabulary_words(), MAX_LENGTH)
    text_encoder, vae, unet = build_models(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, seed)
    scheduler = toyworld.build_scheduler()
    vae_file = output / "vae_trained"

    if vae_file.is_dir():  # resuming: the VAE phase is done
        vae = AutoencoderKL.from_pretrained(vae_file).float().eval()
        scaling = vae.config.scaling_factor
        t_vae = json.loads((vae_file / "seconds.json").read_text())["seconds"]
    else:
        torch.manual_seed(seed)
        scaling = toyworld.train_vae(vae, images, vae_steps, 64, seed, lr=2e-3, warmup=50)
        vae.register_to_config(scaling_factor=scaling)
        vae.save_pretrained(vae_file)
        t_vae = time.time() - t0
        (vae_file / "seconds.json").write_text(json.dumps({"seconds": round(t_vae, 1)}) + "\n")
    mean, std = toyworld.encode_latents(vae, images, scaling)

    def info(done: int) -> dict:
        return {
            "vae_steps": vae_steps,
            "unet_steps": done,
            "unet_steps_planned": unet_steps,
            "batch_size": batch_size,
            "seed": seed,
            "variants": variants,
            "ema_decay": ema_decay,
            "threads": torch.get_num_threads(),
            "vae_seconds": round(t_vae, 1),
            "total_seconds_this_run": round(time.time() - t0, 1),
            "characters": "".join(CHARACTERS),
            "styles": STYLES,
            "colours": list(COLOURS),
            "backgrounds": list(BACKGROUNDS),
        }

    def save(text_encoder, unet, done: int) -> None:
        toyworld.save_pipeline(output, vae, text_encoder, tokenizer, unet, dtype, info(done))

    def caption_of(i: int, rng: random.Random) -> str:
        return caption(int(y_char[i]), int(y_style[i]), int(y_colour[i]), int(y_background[i]), rng)

    torch.manual_seed(seed)
    text_encoder, unet = toyworld.train_unet(
        text_encoder,
        unet,
        tokenizer,
        scheduler,
        mean,
        std,
        caption_of,
        unet_steps,
        batch_size,
        seed,
        MAX_LENGTH,
        lr=1e-3,
        ema_decay=ema_decay,
        warmup=300,
        checkpoint=save,
        checkpoint_every=checkpoint_every,
        state_path=state_path,
    )
    save(text_encoder, unet, unet_steps)
    state_path.unlink(missing_ok=True)
    shutil.rmtree(vae_file, ignore_errors=True)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None, help="folder to write the pipeline (or the scorer) to")
    parser.add_argument("--scorer", action="store_true", help="train the scorer instead of the pipeline")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=20000)
    parser.add_argument("--scorer-steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="save state and EMA pipeline every N steps")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.scorer:
        from .scorer import SCORER_DIR, train_scorer

        acc = train_scorer(args.output or SCORER_DIR, steps=args.scorer_steps, seed=args.seed)
        logger.info("scorer held-out accuracy: %s  (%.0f s)", acc, time.time() - t0)
    else:
        dtype = torch.float32 if args.fp32 else torch.float16
        out = train_pipeline(
            args.output or DEFAULT_OUTPUT,
            args.vae_steps,
            args.unet_steps,
            args.batch_size,
            args.seed,
            dtype,
            args.checkpoint_every,
        )
        logger.info("saved pipeline to %s  (%.0f s)", out, time.time() - t0)


if __name__ == "__main__":
    main()
