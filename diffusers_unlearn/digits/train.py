"""Train the embedded digits text-to-image model (and its scorer) from scratch on CPU.

Usage::

    python -m diffusers_unlearn.digits.train --output DIR [--vae-steps N] [--unet-steps N] [--threads 1]
    python -m diffusers_unlearn.digits.train --scorer --output DIR [--scorer-steps N]

The pipeline is trained in two phases, all seeds fixed:

1. a tiny ``AutoencoderKL`` (16x16x3 <-> 4x8x8) on composed images (reconstruction + small KL);
2. the ``UNet2DConditionModel`` jointly with a from-scratch ``CLIPTextModel`` (epsilon prediction, 10% empty
   captions for classifier-free guidance, AdamW with warm-up and cosine decay, EMA of both networks), on latents of
   every colour/stroke composition of the training split.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import torch

from .. import toyworld
from .data import COLOURS, STROKES, DigitsData, caption, load_digits_data, vocabulary_words

logger = logging.getLogger(__name__)

BOS, EOS = toyworld.BOS, toyworld.EOS
MAX_LENGTH = 16
TEXT_WIDTH = 128


def build_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH):
    """Write a CLIP BPE vocabulary in which every word of our captions is one token, and load it
    (see [`toyworld.build_tokenizer`][diffusers_unlearn.toyworld.build_tokenizer])."""
    return toyworld.build_tokenizer(folder, vocabulary_words(), max_length)


def build_models(vocab_size: int, bos: int, eos: int, seed: int = 0):
    """Fresh text encoder, VAE and UNet with the shipped architecture."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            projection_dim=TEXT_WIDTH,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            hidden_act="quick_gelu",
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type=None,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,  # diffusers' legacy name: the number of heads (64 channels -> head width 32)
        norm_num_groups=32,
    )
    return text_encoder, vae, unet


build_scheduler = toyworld.build_scheduler


def all_compositions(data: DigitsData, idx: torch.Tensor):
    """Images (n, 3, 16, 16) in [0, 1] and (digit, colour, stroke) labels of every composition of ``idx``."""
    from .scorer import compose_all

    return compose_all(data, idx)


train_vae = toyworld.train_vae


def train_unet(
    text_encoder,
    unet,
    tokenizer,
    scheduler,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int,
    batch_size: int,
    seed: int,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    dropout: float = 0.1,
    checkpoint=None,
    checkpoint_every: int = 0,
):
    """Jointly train UNet and text encoder on (scaled) latent posteriors; returns the EMA copies."""
    digits, colours, strokes = labels

    def caption_of(i: int, rng: random.Random) -> str:
        return caption(int(digits[i]), int(colours[i]), int(strokes[i]), rng)

    return toyworld.train_unet(
        text_encoder, unet, tokenizer, scheduler, latent_mean, latent_std, caption_of, steps, batch_size, seed,
        MAX_LENGTH, lr=lr, ema_decay=ema_decay, dropout=dropout, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )  # fmt: skip


def train_pipeline(
    output: str | Path,
    vae_steps: int = 3000,
    unet_steps: int = 20000,
    batch_size: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float16,
    checkpoint_every: int = 0,
) -> Path:
    """Train every component and save a ``StableDiffusionPipeline`` to ``output`` (weights stored in ``dtype``)."""
    output = Path(output)
    t0 = time.time()
    data = load_digits_data()
    images, yd, yc, ys = all_compositions(data, data.train_idx)
    tokenizer = build_tokenizer(output / "tokenizer")
    text_encoder, vae, unet = build_models(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, seed)
    scheduler = build_scheduler()

    torch.manual_seed(seed)
    scaling = train_vae(vae, images, vae_steps, batch_size, seed)
    vae.register_to_config(scaling_factor=scaling)
    t_vae = time.time() - t0
    mean, std = toyworld.encode_latents(vae, images, scaling)

    def save(text_encoder, unet, done: int) -> None:
        info = {
            "vae_steps": vae_steps,
            "unet_steps": done,
            "batch_size": batch_size,
            "seed": seed,
            "threads": torch.get_num_threads(),
            "vae_seconds": round(t_vae, 1),
            "total_seconds": round(time.time() - t0, 1),
            "colours": list(COLOURS),
            "strokes": list(STROKES),
        }
        toyworld.save_pipeline(output, vae, text_encoder, tokenizer, unet, dtype, info)

    torch.manual_seed(seed)
    text_encoder, unet = train_unet(
        text_encoder,
        unet,
        tokenizer,
        scheduler,
        mean,
        std,
        (yd, yc, ys),
        unet_steps,
        batch_size,
        seed,
        checkpoint=save,
        checkpoint_every=checkpoint_every,
    )
    save(text_encoder, unet, unet_steps)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to write the pipeline (or the scorer) to")
    parser.add_argument("--scorer", action="store_true", help="train the scorer instead of the pipeline")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=20000)
    parser.add_argument("--scorer-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--checkpoint-every", type=int, default=0, help="save the EMA pipeline every N UNet steps")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.scorer:
        from .scorer import train_scorer

        acc = train_scorer(args.output, steps=args.scorer_steps, seed=args.seed)
        print(f"scorer held-out accuracy: {acc}  ({time.time() - t0:.0f} s)")
    else:
        dtype = torch.float32 if args.fp32 else torch.float16
        out = train_pipeline(
            args.output, args.vae_steps, args.unet_steps, args.batch_size, args.seed, dtype, args.checkpoint_every
        )
        print(f"saved pipeline to {out}  ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
