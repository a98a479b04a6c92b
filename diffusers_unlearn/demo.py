"""The README's main job: erase a concept from an embedded model and show before / after.

    python -m diffusers_unlearn.demo                     # erases "seven" (alias "7")
    python -m diffusers_unlearn.demo --digit 3 --colour blue --output out/
    python -m diffusers_unlearn.demo --world glyphs --concept serif   # the glyphs model (diffusers_unlearn.glyphs)

Writes `OUTPUT/before_after.png` (rows: prompts; left: before, right: after, same seeds),
`OUTPUT/no-<concept>/` (the removal, a diffusers LoRA) and `OUTPUT/figures.json`, and prints forget accuracy,
related retention and general retention measured with the world's scorer (`run`). Runs offline in about a minute.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from .digits.data import COLOURS as DIGITS_COLOURS
from .erasure import erase
from .evaluation import evaluate, generate_images
from .toyworld import concept_scorer, grid, ratio


def run(
    world: str, concept: Any, output: Path, images_per_prompt: int = 8, steps: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Erases `concept` from an embedded model, measures before / after, writes the grid and the removal.

    Args:
        world (`str`): `"digits"` or `"glyphs"`: the package whose `load_pipeline` and scorer are used.
        concept: That world's `Concept` (`digits.Concept(7)`, `glyphs.Concept.parse("serif")`): its
            `erase_kwargs()` make the removal and its `probes()` measure it.
        output (`Path`): Folder for `before_after.png`, `figures.json` and the removal.

    Returns:
        The figures written to `figures.json`: before / after summaries, retention relative to before, erase
        seconds, rank and the first targets.
    """
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    package = importlib.import_module(f".{world}", __package__)
    pipe = package.load_pipeline()
    scorer = concept_scorer(world)
    sampler = {"num_inference_steps": steps, "guidance_scale": package.GUIDANCE_SCALE}
    call = {"images_per_prompt": images_per_prompt, "seed": seed, **sampler}
    probes = concept.probes()
    before = evaluate(pipe, scorer, **probes, **call)

    erase_started = time.perf_counter()
    adapter = erase(pipe, **concept.erase_kwargs())
    erase_seconds = time.perf_counter() - erase_started
    adapter.save_pretrained(output / adapter.name)
    pipe.load_unlearning(adapter)
    after = evaluate(pipe, scorer, **probes, **call)

    shown = list(concept.forget_probe().prompts[:3])
    shown += [p.prompts[0] for p in probes["related"][:2] + probes["general"][:2]]
    images_after = generate_images(pipe, shown, images_per_prompt=6, seed=seed, **sampler)
    pipe.unload_unlearning()
    images_before = generate_images(pipe, shown, images_per_prompt=6, seed=seed, **sampler)
    rows = [(p, images_before[6 * i : 6 * i + 6], images_after[6 * i : 6 * i + 6]) for i, p in enumerate(shown)]
    grid(rows, columns=6).save(output / "before_after.png")

    figures = {
        "concept": concept.name,
        "chance": concept.chance,
        "before": before.summary(),
        "after": after.summary(),
        "related_retention_vs_before": ratio(after.related_retention, before.related_retention),
        "general_retention_vs_before": ratio(after.general_retention, before.general_retention),
        "erase_seconds": round(erase_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 1),
        "rank": adapter.rank,
        "targets": adapter.metadata["targets"][:3],
    }
    (output / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def build_parser() -> argparse.ArgumentParser:
    """The demo's options; `diffusers-unlearn demo` takes the same ones (tests/test_cli.py keeps them equal)."""
    parser = argparse.ArgumentParser(
        description="Erase a concept from the embedded digits model; before / after.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--digit", type=int, choices=range(10), metavar="{0..9}", help="digit to erase (7 if no --colour either)"
    )
    parser.add_argument("--colour", choices=DIGITS_COLOURS, help="colour to erase, or only this colour of --digit")
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
    if args.world == "glyphs":  # only the world asked for is loaded
        from .glyphs import Concept

        concept = Concept.parse(args.concept)
    else:
        from .digits import Concept

        digit = 7 if args.digit is None and args.colour is None else args.digit
        concept = Concept(digit=digit, colour=args.colour)
    print(f"Erasing {concept.name!r} from the embedded {args.world} model ...", flush=True)
    figures = run(args.world, concept, args.output, images_per_prompt=args.images, steps=args.steps)
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
