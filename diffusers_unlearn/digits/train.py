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
import copy
import json
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import COLOURS, STROKES, DigitsData, caption, load_digits_data, vocabulary_words

logger = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16
TEXT_WIDTH = 128


def build_tokenizer(folder: str | Path, max_length: int = MAX_LENGTH):
    """Write a CLIP BPE vocabulary in which every word of our captions is one token, and load it.

    Merges build each word left to right (``"s e"``, ``"se v"``, ...); a word whose merges are pre-empted by another
    word's is moved to the front until every word encodes to exactly one token.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = vocabulary_words()
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    def chain(word: str) -> list[str]:
        symbols = [*word[:-1], word[-1] + "</w>"]
        out, current = [], symbols[0]
        for s in symbols[1:]:
            out.append(f"{current} {s}")
            current += s
        return out

    chars = sorted({c for w in words for c in w})
    for c in chars:
        add(c)
    for c in chars:
        add(c + "</w>")
    merges: list[str] = []
    for w in words:
        for m in chain(w):
            if m not in merges:
                merges.append(m)
            add(m.replace(" ", ""))
    for w in words:
        add(w + "</w>")
    add(BOS)
    add(EOS)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0) + "\n")
    config = {
        "model_max_length": max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    for _ in range(len(words) + 1):
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        bad = [w for w in words if len(tokenizer(w, add_special_tokens=False).input_ids) != 1]
        if not bad:
            return tokenizer
        for w in bad:
            mine = chain(w)
            merges = mine + [m for m in merges if m not in mine]
    raise RuntimeError(f"could not make single-token words: {bad}")


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


def build_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def all_compositions(data: DigitsData, idx: torch.Tensor):
    """Images (n, 3, 16, 16) in [0, 1] and (digit, colour, stroke) labels of every composition of ``idx``."""
    from .scorer import compose_all

    return compose_all(data, idx)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int, seed: int, kl_weight: float = 1e-5) -> float:
    """Train the VAE on images in [0, 1]; returns the latent scaling factor (1 / std of the latents)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    bar = tqdm(range(steps), desc="vae")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = 1e-3 * _cosine(step, steps, 100)
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=None)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x, reduction="sum") / batch_size
        kl = posterior.kl().mean()
        loss = rec_loss + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(mse=f"{rec_loss.item() / x[0].numel():.5f}", kl=f"{kl.item():.0f}")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(images[i : i + 512] * 2 - 1).latent_dist.mean for i in range(0, len(images), 512)])
    return float(1.0 / z.std())


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
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer(text, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
        return cache[text]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    for p in [*ema_unet.parameters(), *ema_text.parameters()]:
        p.requires_grad_(False)
    pairs = list(zip(list(unet.parameters()) + list(text_encoder.parameters()),
                     list(ema_unet.parameters()) + list(ema_text.parameters()), strict=True))  # fmt: skip
    alphas = scheduler.alphas_cumprod
    digits, colours, strokes = labels
    unet.train()
    text_encoder.train()
    bar = tqdm(range(steps), desc="unet")
    losses: list[float] = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * _cosine(step, steps, 300)
        i = torch.randint(0, len(latent_mean), (batch_size,), generator=g)
        z0 = latent_mean[i] + latent_std[i] * torch.randn(latent_mean[i].shape, generator=g)
        texts = [
            "" if rng.random() < dropout else caption(int(d), int(c), int(s), rng)
            for d, c, s in zip(digits[i], colours[i], strokes[i], strict=True)
        ]
        input_ids = torch.tensor([ids(t) for t in texts])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(input_ids).last_hidden_state
        pred = unet(zt, t, cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p, e in pairs:
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-200:]) / len(losses[-200:]):.4f}")
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(ema_text, ema_unet, step + 1)
    return ema_text, ema_unet


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
    from diffusers import StableDiffusionPipeline

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
    with torch.no_grad():
        posts = [vae.encode(images[i : i + 512] * 2 - 1).latent_dist for i in range(0, len(images), 512)]
    mean = torch.cat([p.mean for p in posts]) * scaling
    std = torch.cat([p.std for p in posts]) * scaling

    def save(text_encoder, unet, done: int) -> None:
        pipe = StableDiffusionPipeline(
            vae=copy.deepcopy(vae).eval().to(dtype),
            text_encoder=copy.deepcopy(text_encoder).eval().to(dtype),
            tokenizer=tokenizer,
            unet=copy.deepcopy(unet).eval().to(dtype),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(output, safe_serialization=True)
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
        (output / "training.json").write_text(json.dumps(info, indent=2) + "\n")

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
