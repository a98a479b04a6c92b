"""The README's main job: erase a concept from the embedded digits model and show before / after.

    python -m diffusers_unlearn.demo                     # erases "seven" (alias "7")
    python -m diffusers_unlearn.demo --digit 3 --colour blue --output out/
    python -m diffusers_unlearn.demo --world glyphs --concept serif   # the glyphs model (diffusers_unlearn.glyphs)

Writes `OUTPUT/before_after.png` (rows: prompts; left: before, right: after, same seeds),
`OUTPUT/no-<concept>/` (the removal, a diffusers LoRA) and `OUTPUT/figures.json`, and prints forget accuracy,
related retention and general retention measured with the digits scorer. Runs offline in about a minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from . import digits
from .digits.concepts import ALL_CELLS, Concept, cell_probe
from .erasure import erase
from .evaluation import DigitsConceptScorer, evaluate, generate_images

_SCALE = 4  # 16x16 images shown at 64x64


def grid(rows: list[tuple[str, np.ndarray, np.ndarray]], columns: int) -> Image.Image:
    """One row per prompt: its label, `columns` images before, a gap, `columns` images after."""
    size = digits.IMAGE_SIZE * _SCALE
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


def run(concept: Concept, output: Path, images_per_prompt: int = 8, steps: int = 20, seed: int = 0) -> dict:
    """Erases `concept` from the digits model, measures before / after, writes the grid and the removal."""
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = digits.load_pipeline()
    scorer = DigitsConceptScorer()
    call = {"images_per_prompt": images_per_prompt, "num_inference_steps": steps, "seed": seed}
    related_cells = [cell for cell in concept.related() if not concept.covers(*cell)]
    general_cells = [c for c in ALL_CELLS if not concept.covers(*c) and c not in related_cells][::4]
    probes = {
        "forget": [concept.forget_probe()],
        "related": [cell_probe(*c) for c in related_cells],
        "general": [cell_probe(*c) for c in general_cells],
    }
    before = evaluate(pipe, scorer, **probes, **call)

    erase_started = time.perf_counter()
    adapter = erase(pipe, **concept.erase_kwargs())
    erase_seconds = time.perf_counter() - erase_started
    adapter.save_pretrained(output / adapter.name)
    pipe.load_unlearning(adapter)
    after = evaluate(pipe, scorer, **probes, **call)

    shown = list(concept.forget_probe().prompts[:3])
    shown += [cell_probe(*c).prompts[0] for c in (related_cells[:2] + general_cells[:2])]
    images_after = generate_images(pipe, shown, images_per_prompt=6, num_inference_steps=steps, seed=seed)
    pipe.unload_unlearning()
    images_before = generate_images(pipe, shown, images_per_prompt=6, num_inference_steps=steps, seed=seed)
    rows = [(p, images_before[6 * i : 6 * i + 6], images_after[6 * i : 6 * i + 6]) for i, p in enumerate(shown)]
    grid(rows, columns=6).save(output / "before_after.png")

    figures = {
        "concept": concept.name,
        "chance": concept.chance,
        "before": before.summary(),
        "after": after.summary(),
        "related_retention_vs_before": _ratio(after.related_retention, before.related_retention),
        "general_retention_vs_before": _ratio(after.general_retention, before.general_retention),
        "erase_seconds": round(erase_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 1),
        "rank": adapter.rank,
        "targets": adapter.metadata["targets"][:3],
    }
    (output / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _ratio(now: float, before: float) -> float:
    return now / before if before else float("nan")


def build_parser() -> argparse.ArgumentParser:
    """The demo's options; `diffusers-unlearn demo` takes the same ones (tests/test_cli.py keeps them equal)."""
    parser = argparse.ArgumentParser(
        description="Erase a concept from the embedded digits model; before / after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--digit", type=int, choices=range(10), metavar="{0..9}", help="digit to erase (7 if no --colour either)"
    )
    parser.add_argument("--colour", choices=digits.COLOURS, help="colour to erase, or only this colour of --digit")
    parser.add_argument(
        "--output", type=Path, default=Path("unlearning-demo"), help="folder for the grid, figures and removal"
    )
    parser.add_argument("--images", type=int, default=8, help="images per prompt for the figures")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps")
    parser.add_argument("--world", choices=("digits", "glyphs"), default="digits", help="which embedded model")
    parser.add_argument(
        "--concept", default="serif", help='glyphs: a character, style, colour or both ("Q", "serif", "serif Q")'
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Runs the demo from the command line (`python -m diffusers_unlearn.demo --help`)."""
    args = build_parser().parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.world == "glyphs":
        from .glyphs import concepts as glyph_concepts
        from .glyphs import demo as glyph_demo

        concept, run_world = glyph_concepts.Concept.parse(args.concept), glyph_demo.run
    else:
        digit = 7 if args.digit is None and args.colour is None else args.digit
        concept, run_world = Concept(digit=digit, colour=args.colour), run
    print(f"Erasing {concept.name!r} from the embedded {args.world} model ...", flush=True)
    figures = run_world(concept, args.output, images_per_prompt=args.images, steps=args.steps)
    b, a = figures["before"], figures["after"]
    print(
        f"\nforget accuracy  {100 * b['forget_accuracy']:5.1f}% -> {100 * a['forget_accuracy']:5.1f}%"
        f"   (share of images still showing {concept.name!r}; chance {100 * concept.chance:.0f}%)\n"
        f"related concepts {100 * b['related_retention']:5.1f}% -> {100 * a['related_retention']:5.1f}%"
        f"   ({100 * figures['related_retention_vs_before']:.0f}% of before)\n"
        f"general concepts {100 * b['general_retention']:5.1f}% -> {100 * a['general_retention']:5.1f}%"
        f"   ({100 * figures['general_retention_vs_before']:.0f}% of before)\n"
        f"erase took {figures['erase_seconds']:.2f}s (rank {figures['rank']}); "
        f"all done in {figures['total_seconds']}s\n"
        f"wrote {args.output / 'before_after.png'}, {args.output / 'figures.json'} and the removal in "
        f"{args.output}/no-{concept.name.replace(' ', '-')}/"
    )


if __name__ == "__main__":
    main()
