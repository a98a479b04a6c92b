"""What the embedded toy worlds (`digits`, `glyphs`) share: tokenizer, scheduler, training loops, loading.

Each world keeps its own data, captions, architecture sizes and scorer; this module holds the parts that would
otherwise be copied between them: a CLIP BPE tokenizer in which every caption word is one token, the DDIM
scheduler, VAE training, joint UNet + text-encoder training (EMA, classifier-free dropout, checkpoints that can be
resumed), saving the pipeline, loading it offline, and turning images into scorer input.
"""

from __future__ import annotations

import copy
import importlib
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .errors import InvalidArgumentError, InvalidConceptError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from .evaluation import ConceptScorer

logger = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def build_tokenizer(folder: str | Path, words: Sequence[str], max_length: int):
    """Write a CLIP BPE vocabulary in which every word of ``words`` is one token, and load it.

    Merges build each word left to right (``"s e"``, ``"se v"``, ...); a word whose merges are pre-empted by another
    word's is moved to the front until every word encodes to exactly one token.

    Args:
        folder: Where to write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``.
        words: The caption words (lower case; CLIP's tokenizer lower-cases its input).
        max_length: ``model_max_length`` of the tokenizer.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = list(words)
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
    raise InvalidConceptError(
        f"could not make {bad} single tokens: a toy world's vocabulary needs one token per word; rename or drop them."
    )


def build_scheduler():
    """The DDIM scheduler of every toy world (scaled_linear betas, epsilon prediction, ``steps_offset=1``)."""
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


def cosine(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay, as a factor of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(
    vae,
    images: torch.Tensor,
    steps: int,
    batch_size: int,
    seed: int,
    kl_weight: float = 1e-5,
    lr: float = 1e-3,
    warmup: int = 100,
) -> float:
    """Train the VAE on images ``(N, 3, H, W)`` in [0, 1]; returns the latent scaling factor (1 / latent std)."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    bar = tqdm(range(steps), desc="vae")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup)
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


def encode_latents(vae, images: torch.Tensor, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior means and standard deviations of ``images`` in [0, 1]."""
    with torch.no_grad():
        posts = [vae.encode(images[i : i + 512] * 2 - 1).latent_dist for i in range(0, len(images), 512)]
    return torch.cat([p.mean for p in posts]) * scaling, torch.cat([p.std for p in posts]) * scaling


def train_unet(
    text_encoder,
    unet,
    tokenizer,
    scheduler,
    latent_mean: torch.Tensor,
    latent_std: torch.Tensor,
    caption: Callable[[int, random.Random], str],
    steps: int,
    batch_size: int,
    seed: int,
    max_length: int,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    dropout: float = 0.1,
    warmup: int = 300,
    checkpoint: Callable[[Any, Any, int], None] | None = None,
    checkpoint_every: int = 0,
    state_path: str | Path | None = None,
):
    """Jointly train UNet and text encoder on (scaled) latent posteriors; returns the EMA copies.

    Args:
        caption: ``caption(i, rng)``, a training caption of latent ``i``, drawn with ``rng``.
        checkpoint: Called as ``checkpoint(ema_text, ema_unet, done)`` every ``checkpoint_every`` steps.
        state_path: If given, the full training state (networks, EMA, optimiser, random states, step) is saved there
            with every checkpoint, and training resumes from it when it exists.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    cache: dict[str, list[int]] = {}

    def ids(text: str) -> list[int]:
        if text not in cache:
            cache[text] = tokenizer(text, padding="max_length", max_length=max_length, truncation=True).input_ids
        return cache[text]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    for p in [*ema_unet.parameters(), *ema_text.parameters()]:
        p.requires_grad_(False)
    pairs = list(zip(list(unet.parameters()) + list(text_encoder.parameters()),
                     list(ema_unet.parameters()) + list(ema_text.parameters()), strict=True))  # fmt: skip
    start = 0
    if state_path is not None and Path(state_path).is_file():
        state = torch.load(state_path, weights_only=False)
        for module, key in ((unet, "unet"), (text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            module.load_state_dict(state[key])
        opt.load_state_dict(state["opt"])
        g.set_state(state["generator"])
        rng.setstate(state["rng"])
        start = state["step"]
        logger.info("resumed from %s at step %d", state_path, start)

    def save_state(done: int) -> None:
        state = {
            "unet": unet.state_dict(),
            "text": text_encoder.state_dict(),
            "ema_unet": ema_unet.state_dict(),
            "ema_text": ema_text.state_dict(),
            "opt": opt.state_dict(),
            "generator": g.get_state(),
            "rng": rng.getstate(),
            "step": done,
        }
        tmp = Path(str(state_path) + ".tmp")
        torch.save(state, tmp)
        tmp.replace(state_path)

    alphas = scheduler.alphas_cumprod
    unet.train()
    text_encoder.train()
    bar = tqdm(range(start, steps), desc="unet", initial=start, total=steps)
    losses: list[float] = []
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * cosine(step, steps, warmup)
        i = torch.randint(0, len(latent_mean), (batch_size,), generator=g)
        z0 = latent_mean[i] + latent_std[i] * torch.randn(latent_mean[i].shape, generator=g)
        texts = ["" if rng.random() < dropout else caption(int(k), rng) for k in i]
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
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            if checkpoint is not None:
                checkpoint(ema_text, ema_unet, step + 1)
            if state_path is not None:
                save_state(step + 1)
    return ema_text, ema_unet


def save_pipeline(output: str | Path, vae, text_encoder, tokenizer, unet, dtype: torch.dtype, info: dict) -> None:
    """Save a ``StableDiffusionPipeline`` (DDIM, no safety checker) in ``dtype`` and ``training.json``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).eval().to(dtype),
        text_encoder=copy.deepcopy(text_encoder).eval().to(dtype),
        tokenizer=tokenizer,
        unet=copy.deepcopy(unet).eval().to(dtype),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(output, safe_serialization=True)
    (Path(output) / "training.json").write_text(json.dumps(info, indent=2) + "\n")


WORLDS: dict[str, str] = {"digits": "DigitsConceptScorer", "glyphs": "GlyphsConceptScorer"}
"""The embedded worlds (each a subpackage of `diffusers_unlearn`: `load_pipeline`, `load_scorer`, `concepts`,
`attacks`) and the name of each one's [`ConceptScorer`][diffusers_unlearn.evaluation.ConceptScorer] class."""


def concept_scorer(world: str) -> ConceptScorer:
    """The `ConceptScorer` of an embedded world, by the world's name: its shipped classifier, loaded.

    Args:
        world (`str`): One of [`WORLDS`] (`"digits"`, `"glyphs"`).

    Raises:
        InvalidArgumentError: `world` is no embedded world.

    Example:
        ```py
        >>> scorer = concept_scorer("digits")  # a digits.DigitsConceptScorer
        >>> scorer.shows(images, [{"digit": 7}] * len(images))
        ```
    """
    if world not in WORLDS:
        raise InvalidArgumentError(f"Unknown world {world!r}: use one of {list(WORLDS)}.")
    return getattr(importlib.import_module(f"{__package__}.{world}"), WORLDS[world])()


def load_pipeline(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Load a toy-world pipeline offline, without safety checker, progress bar disabled."""
    from .quiet import TORCHVISION_NOTICE, quiet

    with quiet(TORCHVISION_NOTICE):  # transformers' notice on diffusers' import of CLIP's image processor
        from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path),
        dtype=dtype,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def to_tensor(images: Any, size: int) -> torch.Tensor:
    """Images as a float ``(N, 3, size, size)`` tensor in [0, 1].

    Accepts a list of PIL images, or a numpy array / torch tensor batch ``(N, H, W, 3)`` (uint8, or float in [0, 1]);
    images of another size are resized (bilinear, antialiased).
    """
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach().cpu()
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InvalidArgumentError(
            f"expected images of shape (N, H, W, 3) (uint8 or floats in [0, 1]) or a list of PIL images, got "
            f"{tuple(x.shape)}"
        )
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    x = x.permute(0, 3, 1, 2).clamp(0, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous()


def grid(rows: list[tuple[str, np.ndarray, np.ndarray]], columns: int, size: int = 64) -> Image.Image:
    """The demos' before / after picture: one row per prompt, its label, `columns` images before, a gap,
    `columns` images after, each image shown `size` pixels wide (nearest-neighbour)."""
    label_width, gap = 190, 24
    width = label_width + 2 * columns * (size + 2) + gap
    canvas = Image.new("RGB", (width, 22 + len(rows) * (size + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((label_width, 4), "before", fill="black")
    draw.text((label_width + columns * (size + 2) + gap, 4), "after", fill="black")
    for r, (label, before, after) in enumerate(rows):
        top = 22 + r * (size + 4)
        draw.text((4, top + size // 2 - 6), label, fill="black")
        for c, image in enumerate([*before[:columns], *after[:columns]]):
            left = label_width + c * (size + 2) + (gap if c >= columns else 0)
            tile = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
            canvas.paste(tile, (left, top))
    return canvas


def ratio(now: float, before: float) -> float:
    """`now / before`, NaN where `before` is 0 (a retention "of before" in the demos' figures)."""
    return now / before if before else float("nan")
