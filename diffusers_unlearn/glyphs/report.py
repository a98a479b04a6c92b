"""Measure the glyphs pipeline with the scorer and write ``docs/benchmarks/glyphs_model.md`` and its image grid.

Usage::

    python -m diffusers_unlearn.glyphs.report [--model DIR] [--scorer DIR] [--out-dir docs/benchmarks] [--seeds 8]
        [--guidance 3.0] [--sweep 2 3 4 7.5]

Every (character, style) cell is asked once, in a colour that cycles with the cell, with the canonical training
prompt ("the red letter q in serif") and with a held-out template (:data:`HELD_OUT_TEMPLATES`, cycling); ``--seeds``
images per prompt. The bars of issue 15: asked character >= 90%, colour >= 95%, style >= 85% on training
templates; >= 80% / 90% / 75% on held-out templates. Images are drawn at the model's guidance scale
(:data:`~diffusers_unlearn.glyphs.GUIDANCE_SCALE`); ``--sweep`` also measures other scales on a quarter of the cells.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..evaluation import generate_images
from . import GUIDANCE_SCALE
from .data import CHARACTERS, COLOURS, HELD_OUT_TEMPLATES, STYLES, fill, prompt

logger = logging.getLogger(__name__)

BARS = {"training": {"char": 0.90, "colour": 0.95, "style": 0.85}, "held-out": {"char": 0.80, "colour": 0.90,
                                                                               "style": 0.75}}  # fmt: skip
"""The base-model bars: share of images whose scored attribute is the one asked."""


def cells(styles_per_char: int = len(STYLES)) -> list[tuple[str, str, str]]:
    """Each character in ``styles_per_char`` styles (all 8: every cell, 328), styles and colours cycling so that
    every style and every colour is asked about equally often."""
    names = list(STYLES)
    return [
        (char, names[(i + k) % len(names)], COLOURS[(i + 3 * k) % len(COLOURS)])
        for i, char in enumerate(CHARACTERS)
        for k in range(styles_per_char)
    ]


def measure(
    pipe,
    scorer,
    seeds: int = 8,
    steps: int = 20,
    guidance_scale: float = GUIDANCE_SCALE,
    styles_per_char: int = len(STYLES),
) -> dict:
    """Per template set, the share of images whose character / style / colour is the one asked (and all three)."""
    out = {}
    grid = cells(styles_per_char)
    for name, prompts in (
        ("training", [prompt(c, colour, s) for c, s, colour in grid]),
        ("held-out", [fill(HELD_OUT_TEMPLATES[i % len(HELD_OUT_TEMPLATES)], c, colour, s)
                      for i, (c, s, colour) in enumerate(grid)]),
    ):  # fmt: skip
        images = generate_images(
            pipe, prompts, images_per_prompt=seeds, num_inference_steps=steps, guidance_scale=guidance_scale
        )
        predicted = scorer.predict(images)
        asked = {
            "char": [c for c, _, _ in grid for _ in range(seeds)],
            "style": [s for _, s, _ in grid for _ in range(seeds)],
            "colour": [colour for _, _, colour in grid for _ in range(seeds)],
        }
        hits = {k: np.asarray(predicted[k]) == np.asarray(v) for k, v in asked.items()}
        result = {k: float(h.mean()) for k, h in hits.items()}
        result["all three"] = float((hits["char"] & hits["style"] & hits["colour"]).mean())
        result["per style"] = {
            s: float(hits["style"][np.asarray(asked["style"]) == s].mean()) for s in STYLES
        }  # fmt: skip
        result["prompts"], result["images"] = len(prompts), len(images)
        result["example prompts"] = prompts[:3]
        out[name] = result
    return out


@torch.no_grad()
def vae_reconstruction(pipe, scorer, data=None, batch_size: int = 512) -> dict[str, float]:
    """Scorer accuracy per head on held-out renders passed through the pipeline's VAE (encode, posterior mean,
    decode): the ceiling of what generated images can reach.

    Args:
        data: Renders to use (default: jitter seed 1, as :func:`~.scorer.evaluate_scorer`).
    """
    from .data import render_glyphs
    from .scorer import HEADS

    data = data or render_glyphs(variants=2, seed=1)
    x, *labels = data.all_compositions()
    vae = pipe.vae
    parts = []
    for i in range(0, len(x), batch_size):
        z = vae.encode((x[i : i + batch_size] * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
        parts.append(((vae.decode(z).sample.float().cpu() + 1) / 2).clamp(0, 1))
    score = scorer(torch.cat(parts).permute(0, 2, 3, 1))
    acc: dict[str, float] = {
        name: float((score.labels[name] == truth.numpy()).mean()) for name, truth in zip(HEADS, labels, strict=True)
    }
    acc["n"] = len(x)
    return acc


def grid_image(pipe, path: Path, steps: int = 20, seed: int = 0, guidance_scale: float = GUIDANCE_SCALE) -> None:
    """A PNG grid: one row per style, characters "A", "G", "Q", "R", "7", "&" in cycling colours, on black."""
    from PIL import Image

    chars = ["A", "G", "Q", "R", "S", "7", "3", "&", "%", "$"]
    prompts = [
        prompt(c, COLOURS[(i + j) % len(COLOURS)], s) for j, s in enumerate(STYLES) for i, c in enumerate(chars)
    ]
    images = generate_images(
        pipe, prompts, images_per_prompt=1, seed=seed, num_inference_steps=steps, guidance_scale=guidance_scale
    )
    side = images.shape[1]
    canvas = np.zeros((len(STYLES) * side, len(chars) * side, 3), dtype=np.float32)
    for k, image in enumerate(images):
        row, col = divmod(k, len(chars))
        canvas[row * side : (row + 1) * side, col * side : (col + 1) * side] = image
    big = Image.fromarray((canvas * 255).round().astype(np.uint8)).resize(
        (canvas.shape[1] * 3, canvas.shape[0] * 3), Image.NEAREST
    )
    big.save(path)


def write_report(
    results: dict,
    scorer_accuracy: dict,
    training: dict,
    out_dir: Path,
    args,
    reconstruction: dict | None = None,
    sweep: dict | None = None,
) -> Path:
    lines = [
        "# The glyphs model",
        "",
        "`diffusers_unlearn.glyphs`: a `StableDiffusionPipeline` trained here from scratch on CPU "
        "(`python -m diffusers_unlearn.glyphs.train`), shipped in the package. 41 characters (26 capitals, 10 "
        "digits, `& # % + $`) x 8 typefaces from matplotlib's fonts x 8 colours x 2 backgrounds, 32x32 RGB.",
        "",
        "Styles: " + ", ".join(f"`{s}` ({f})" for s, f in STYLES.items()) + ".",
        "",
        "Architecture: CLIPTextModel (width 256, 2 layers, 4 heads, MLP 512, max 12 tokens; every caption word one "
        "token); AutoencoderKL 32x32x3 <-> 4x8x8 (channels 16/32/32, no attention); UNet2DConditionModel on 8x8 "
        "latents (channels 48/96, cross-attention at both levels, no mid block); DDIM. Text encoder trained jointly "
        f"with the UNet (10% empty captions), EMA {training.get('ema_decay', 0.995)}.",
        "",
        "## Training",
        "",
        *training.get("notes", []),
        "",
        "```json",
        json.dumps({k: v for k, v in training.items() if k != "notes"}, indent=1),
        "```",
        "",
        "## Scorer (ground truth)",
        "",
        "A CNN with four heads (character, style, colour, background) trained on renders (jitter seeds 0 and 2, "
        "augmented); accuracy on held-out renders (jitter seed 1, every colour and background; bar 97% per head):",
        "",
        "| head | accuracy |",
        "|---|---|",
        *[f"| {k} | {100 * v:.2f}% |" for k, v in scorer_accuracy.items() if k != "n"],
        "",
        f"({scorer_accuracy.get('n')} images.)",
        "",
        "## VAE reconstruction",
        "",
        "The same held-out renders encoded by the pipeline's VAE (posterior mean) and decoded, then scored: the "
        "ceiling for generated images (what the latent space cannot carry, the UNet cannot draw).",
        "",
        "| head | accuracy |",
        "|---|---|",
        *[f"| {k} | {100 * v:.2f}% |" for k, v in (reconstruction or {}).items() if k != "n"],
        "",
        "## Base model: asked attribute recognised by the scorer",
        "",
        f"`python -m diffusers_unlearn.glyphs.report --seeds {args.seeds} --steps {args.steps} --styles-per-char "
        f"{args.styles_per_char}`: each of the 41 characters in {args.styles_per_char} of the 8 styles (styles and "
        f"colours cycling; {41 * args.styles_per_char} prompts per template set), {args.seeds} seeds per prompt, "
        f"{args.steps} DDIM steps, guidance {args.guidance} (the model's `GUIDANCE_SCALE`).",
        "",
        "| templates | character | style | colour | all three | bars (char / colour / style) | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        bars = BARS[name]
        met = all(r[k] >= v for k, v in bars.items())
        lines.append(
            f"| {name} | {100 * r['char']:.1f}% | {100 * r['style']:.1f}% | {100 * r['colour']:.1f}% | "
            f"{100 * r['all three']:.1f}% | {100 * bars['char']:.0f} / {100 * bars['colour']:.0f} / "
            f"{100 * bars['style']:.0f}% | {'yes' if met else '**no**'} |"
        )
    lines += ["", "Style recognised, per style:", "", "| style | training | held-out |", "|---|---|---|"]
    for s in STYLES:
        lines.append(
            f"| {s} | {100 * results['training']['per style'][s]:.1f}% | "
            f"{100 * results['held-out']['per style'][s]:.1f}% |"
        )
    if sweep:
        lines += [
            "",
            f"Guidance scale ({41 * 2} prompts per template set, {args.sweep_seeds} seeds: a quarter of the "
            "cells above):",
            "",
            "| guidance | training: char / style / colour | held-out: char / style / colour |",
            "|---|---|---|",
        ]
        for scale, r in sweep.items():
            parts = [" / ".join(f"{100 * r[t][k]:.1f}%" for k in ("char", "style", "colour")) for t in r]
            lines.append(f"| {scale} | {parts[0]} | {parts[1]} |")
    lines += ["", "![grid: one row per style](glyphs_grid.png)", ""]
    path = out_dir / "glyphs_model.md"
    path.write_text("\n".join(lines))
    (out_dir / "glyphs_model.json").write_text(
        json.dumps(
            {
                "base": results,
                "guidance_scale": args.guidance,
                "guidance_sweep": sweep,
                "scorer": scorer_accuracy,
                "vae_reconstruction": reconstruction,
                "training": training,
            },
            indent=1,
        )
        + "\n"
    )
    return path


def main(argv: list[str] | None = None) -> None:
    from . import MODEL_DIR, load_pipeline
    from .scorer import SCORER_DIR, evaluate_scorer, load_scorer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--scorer", type=Path, default=SCORER_DIR)
    parser.add_argument("--out-dir", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--styles-per-char", type=int, default=len(STYLES), help="cells: each character in N styles")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guidance", type=float, default=GUIDANCE_SCALE, help="classifier-free guidance scale")
    parser.add_argument("--sweep", type=float, nargs="*", default=[], help="also measure these guidance scales")
    parser.add_argument("--sweep-seeds", type=int, default=4, help="seeds per prompt of the sweep")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    pipe, scorer = load_pipeline(path=args.model), load_scorer(args.scorer)
    scorer_accuracy = evaluate_scorer(scorer)
    logger.info("scorer %s (%.0f s)", scorer_accuracy, time.time() - t0)
    reconstruction = vae_reconstruction(pipe, scorer)
    logger.info("VAE reconstruction %s (%.0f s)", reconstruction, time.time() - t0)
    results = measure(
        pipe, scorer, seeds=args.seeds, steps=args.steps, guidance_scale=args.guidance,
        styles_per_char=args.styles_per_char,
    )  # fmt: skip
    sweep = {
        scale: measure(pipe, scorer, seeds=args.sweep_seeds, steps=args.steps, guidance_scale=scale, styles_per_char=2)
        for scale in args.sweep
    }
    logger.info("guidance sweep %s", {k: {t: v[t]["colour"] for t in v} for k, v in sweep.items()})
    summary = {k: {h: v[h] for h in ("char", "style", "colour")} for k, v in results.items()}
    logger.info("base model %s (%.0f s)", summary, time.time() - t0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    grid_image(pipe, args.out_dir / "glyphs_grid.png", steps=args.steps, guidance_scale=args.guidance)
    training = json.loads((args.model / "training.json").read_text())
    path = write_report(results, scorer_accuracy, training, args.out_dir, args, reconstruction, sweep)
    logger.info("wrote %s (%.0f s)", path, time.time() - t0)


if __name__ == "__main__":
    main()
