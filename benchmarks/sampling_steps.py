"""Glyphs: at which sampling steps a removal acts, and where it costs the cells beside it.

A step's concept is erased alone on the untouched glyphs model (the continual benchmark's `distill, base anchor`
options: the same `--distill-*` command line, as `footprint.py`), and its images are sampled with the removal
active at some DDIM steps and the untouched model at the others (the UNet swapped between steps through the
pipeline's `callback_on_step_end`). Measured at each choice of steps: the concept's own forget probe; for a concept
with a style, 40 other characters in that style and their twins in its nearest style (`STYLE_NEIGHBOURS`), the
cells a removal at the style word moves; else its related cells. A step where the removal alone removes the concept
and costs the cells is where a replay has to hold them (docs/benchmarks/continual_analysis.md, session 33).

    python benchmarks/sampling_steps.py --step 11 <the continual row's --distill-* options>
    # -> docs/benchmarks/sampling_steps.md (and .json)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from diffusers import DDIMScheduler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import continual  # noqa: E402  (the glyphs sequence and its distill options)
import footprint  # noqa: E402  (a step's removal made alone)

from diffusers_unlearn import glyphs  # noqa: E402
from diffusers_unlearn.evaluation import evaluate  # noqa: E402
from diffusers_unlearn.glyphs import GlyphsConceptScorer  # noqa: E402
from diffusers_unlearn.glyphs import concepts as glyph_concepts  # noqa: E402
from diffusers_unlearn.glyphs.data import CHARACTERS, COLOURS  # noqa: E402

BESIDE = 40
"""Other characters in the concept's style measured (and as many twins in its nearest style)."""


def beside_cells(concept) -> dict[str, list]:
    """The cells a removal of `concept` may cost, by group: other characters in its style and their twins in the
    nearest style (a fixed draw), or its related cells for a concept without a style."""
    if concept.style is None:
        return {"related cells": [c for c in concept.related() if not concept.covers(*c)]}
    rng = random.Random(1)
    others = [c for c in CHARACTERS if c != concept.char]
    own = [(char, concept.style, rng.choice(COLOURS)) for char in rng.sample(others, BESIDE)]
    near = glyph_concepts.STYLE_NEIGHBOURS[concept.style][0]
    return {f"other characters in {concept.style}": own, f"their twins in {near}": [(c, near, k) for c, _, k in own]}


def schedules(count: int) -> list[tuple[int, ...]]:
    """Which steps the removal is active at: none, every one, each alone, and the first k (2 to count - 2)."""
    steps = tuple(range(count))
    return [(), steps, *((s,) for s in steps), *(steps[:k] for k in range(2, count - 1))]


def run(args) -> dict:
    scorer = GlyphsConceptScorer(glyphs.load_scorer(args.scorer))
    concept = continual.GLYPH_SEQUENCE[args.step - 1]
    groups = {name: [glyph_concepts.cell_probe(c) for c in cells] for name, cells in beside_cells(concept).items()}
    untouched_unet = glyphs.load_pipeline(path=args.model).unet
    pipe, adapter, seconds = footprint.erase_step(concept, args.step, args, 0, "recipe", None)
    erased_unet = pipe.unet
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(args.sampling_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    rows = []
    for active in schedules(args.sampling_steps):
        unets = [erased_unet if s in active else untouched_unet for s in range(args.sampling_steps)]
        pipe.unet = unets[0]
        swap = _swapper(unets)
        result = evaluate(
            pipe, scorer, forget=[concept.forget_probe()], general=[p for g in groups.values() for p in g],
            images_per_prompt=args.images, num_inference_steps=args.sampling_steps, progress=False,
            guidance_scale=glyphs.GUIDANCE_SCALE, callback_on_step_end=swap,
        )  # fmt: skip
        row = {"active": [timesteps[s] for s in active], "shown": result.forget[concept.name]}
        row |= {name: sum(result.general[p.concept] for p in g) / len(g) for name, g in groups.items()}
        rows.append(row)
        print(f"active at {row['active'] or 'no step'}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()
                                                                      if k != "active"), flush=True)  # fmt: skip
    pipe.unet = erased_unet
    reach = adapter.metadata.get("figures", {}).get("target_reach")
    return {"step": args.step, "concept": concept.name, "timesteps": timesteps, "groups": list(groups), "rows": rows,
            "erase_seconds": seconds, "target_reach": reach}  # fmt: skip


def _swapper(unets: list):
    """A `callback_on_step_end` that puts in the UNet of the next step (after the last step: of the first)."""

    def swap(pipeline, index, timestep, tensors):
        pipeline.unet = unets[(index + 1) % len(unets)]
        return tensors

    return swap


def _steps(active: list[int], timesteps: list[int]) -> str:
    if not active:
        return "no step (untouched)"
    if len(active) == len(timesteps):
        return "every step"
    if len(active) == 1:
        return f"t = {active[0]} only"
    return f"t = {active[0]} ... {active[-1]} (the first {len(active)})"


def write_report(results: dict, args) -> None:
    groups = results["groups"]
    lines = [
        "# At which sampling steps a removal acts",
        "",
        "`python benchmarks/sampling_steps.py` (written by it; the command is at the end). The glyphs sequence's "
        f"step {results['step']}, **{results['concept']}**, erased alone on the untouched model with the continual "
        "benchmark's options, sampled with the removal active at some DDIM steps and the untouched model at the "
        f"others ({len(results['timesteps'])} steps: t = {', '.join(map(str, results['timesteps']))}). Each figure "
        "is the share of images that show what their prompt asks for: the concept's own forget probe (*still "
        "drawn*), and the cells beside it. Analysis: [continual_analysis.md](continual_analysis.md), session 33.",
        "",
        "| removal active at | still drawn | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for row in results["rows"]:
        cells = [f"{row['shown']:.1%}", *(f"{row[g]:.1%}" for g in groups)]
        lines.append(f"| {_steps(row['active'], results['timesteps'])} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{results['command']}` ({results['seconds'] / 60:.0f} min).", ""]
    args.output.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    continual.add_distill_arguments(parser)
    parser.add_argument("--step", type=int, default=11, help="step of the glyphs sequence (1-50; 11: roman 2)")
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--sampling-steps", type=int, default=10, help="DDIM steps per image")
    parser.add_argument("--model", type=Path, default=None, help="another trained glyphs pipeline folder")
    parser.add_argument("--scorer", type=Path, default=None, help="another trained glyphs scorer folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "sampling_steps.md")
    parser.add_argument("--render", action="store_true", help="rewrite the report from its json, run nothing")
    args = parser.parse_args()
    if args.render:
        write_report(json.loads(args.output.with_suffix(".json").read_text()), args)
        return
    if not 1 <= args.step <= len(continual.GLYPH_SEQUENCE):
        parser.error(f"--step is a step of the glyphs sequence: 1 to {len(continual.GLYPH_SEQUENCE)}")
    footprint.run_and_report(run, write_report, args, "sampling_steps.py")


if __name__ == "__main__":
    main()
