"""Glyphs: what a step's removal costs by itself, against what it costs on the chain.

Each step asked for is made alone: its concept erased on the untouched glyphs model with the continual benchmark's
`distill, base anchor` options (the same `--distill-*` command line), and measured on that step's probes
(`continual.glyph_probes_at`, the same seeds): related and general retention, and the image-by-image test against
the untouched model (`evaluation.paired_change`). Beside it, the continual run's figures for the same step (a row
of `continual_glyphs.json`). A loss the removal makes alone is its own footprint; one it makes only on the chain is
the chain's: the two call for different remedies. With `--made chain`, each step is made again on the chain a
continual run saved (`--chain-dir`), with other seeds: how much of the chain's figure is the seed.

    python benchmarks/footprint.py --steps 8 10 11 20 <the continual row's --distill-* options>
    python benchmarks/footprint.py --steps 10 11 --seeds 1 --made chain --chain-dir DIR <the same options>
    # -> docs/benchmarks/footprint.md (and .json)
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import continual  # noqa: E402  (the glyphs sequence, probes, erase arguments and distill options)

import diffusers_unlearn as du  # noqa: E402
from diffusers_unlearn import glyphs  # noqa: E402
from diffusers_unlearn.evaluation import evaluate, paired_change  # noqa: E402
from diffusers_unlearn.glyphs import GlyphsConceptScorer  # noqa: E402
from diffusers_unlearn.glyphs import concepts as glyph_concepts  # noqa: E402

METHOD = "distill, base anchor"
CHAIN_ROW = "80 general cells (25 removals)"  # the end of the best glyphs row's label (continual_glyphs.json)
LOST_AS_KEYS = ("related_lost_as", "related_gained_from", "general_lost_as", "general_gained_from")
LOST = 0.5  # a cell counts as lost when it shows in this share fewer of its images than untouched


class Variant(NamedTuple):
    """A removal's variant: `Concept.erase_kwargs` options, and the kinds of concept they change."""

    options: dict
    kinds: tuple[str, ...]


RECIPE = "recipe"  # the sequence's own options, run for every step
VARIANTS = {
    "neighbour styles": Variant({"neighbour_styles": True}, ("identity",)),
    "character word": Variant({"erase_at": "character"}, ("identity",)),
    "character target": Variant({"character_target": "character"}, ("character",)),
    "others held": Variant({"others_held": True}, ("style", "colour", "identity")),
}


def variant_options(variant: str) -> dict:
    """`erase_kwargs` options of a variant, or of variants joined by " + " ("character word + others held")."""
    if variant == RECIPE:
        return {}
    return {k: v for part in variant.split(" + ") for k, v in VARIANTS[part].options.items()}


def variant_changes(variant: str, kind: str) -> bool:
    """Whether a variant (every part of a joined one) changes a concept of this kind."""
    return all(kind in VARIANTS[part].kinds for part in variant.split(" + "))


def parse_variant(text: str) -> str:
    """A `--variants` entry: a variant's name, or names joined by " + "."""
    parts = [part.strip() for part in text.split("+")]
    if unknown := [part for part in parts if part not in VARIANTS]:
        raise argparse.ArgumentTypeError(f"{unknown} are not variants: use {', '.join(VARIANTS)}")
    return " + ".join(parts)


def erase_step(concept, step: int, args, seed: int, variant: str, chain: Path | None):
    """Erases the step's concept on the untouched model, or on the removals `chain` holds for the steps before."""
    pipe = glyphs.load_pipeline(path=args.model)
    for earlier in range(1, step if chain else 1):
        pipe.load_unlearning(du.UnlearningAdapter.from_pretrained(chain / f"step-{earlier:02d}"), mode="fused")
    distill = continual.distill_options(args, concept)
    kwargs = continual.erase_kwargs(concept, METHOD, du.ClosedFormConfig(), distill, **variant_options(variant))
    started = time.perf_counter()
    adapter = du.erase(pipe, seed=seed, **kwargs)
    seconds = time.perf_counter() - started
    pipe.load_unlearning(adapter, mode="fused")
    return pipe, adapter, seconds


def lost_cells(cells: dict[str, float], base: dict[str, float]) -> list[str]:
    """The cells down by at least `LOST` of their images from the untouched model's `base`."""
    return sorted(c for c, v in cells.items() if base[c] - v >= LOST)


def continual_rows(steps: set[int], label_end: str) -> list[dict]:
    """The continual run's figures for `steps` (the row whose label ends with `label_end`), as rows of this
    benchmark (made on the chain, seed 0); steps it did not measure are left out."""
    path = ROOT / "docs" / "benchmarks" / "continual_glyphs.json"
    methods = json.loads(path.read_text())["methods"]
    measured = next((rows for label, rows in methods.items() if label.endswith(label_end)), [])
    rows = []
    for row in (r for r in measured if r["step"] in steps and "cells" in r):
        lost = lost_cells({c: v[0] for c, v in row["cells"].items()}, {c: v[1] for c, v in row["cells"].items()})
        figures = {k: row.get(k) for k in ("related", "general", "related_paired", "general_paired")}
        rows.append({"step": row["step"], "concept": row["concept"], "made": "on the chain (continual run)",
                     "variant": RECIPE, "seed": 0, "seconds": row["erase_seconds"],
                     "shown": row["per_concept_shown"][row["concept"]], **figures, "lost": lost,
                     **{k: row[k] for k in LOST_AS_KEYS if k in row}})  # fmt: skip
    return rows


def run(args) -> dict:
    scorer = GlyphsConceptScorer(glyphs.load_scorer(args.scorer))
    call = {"images_per_prompt": args.images, "num_inference_steps": args.sampling_steps, "progress": False,
            "guidance_scale": glyphs.GUIDANCE_SCALE}  # fmt: skip
    general_sample = glyph_concepts.general_cells(args.general_cells)
    probes = {s: continual.glyph_probes_at(list(continual.GLYPH_SEQUENCE[:s]), general_sample) for s in args.steps}
    every = {p.concept: p for _, related, general in probes.values() for p in [*related, *general]}
    untouched = evaluate(glyphs.load_pipeline(path=args.model), scorer, general=list(every.values()), **call)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = {"rows": [], "settings": settings}
    chain = continual.chain_step(args.chain_dir, METHOD, 1).parent if args.chain_dir else None
    wheres = ["alone" if made == "alone" else "on the chain" for made in args.made]
    for step in args.steps:
        concept = continual.GLYPH_SEQUENCE[step - 1]
        _, related, general = probes[step]
        variants = [RECIPE, *(v for v in args.variants if variant_changes(v, concept.kind))]
        for made, variant, seed in itertools.product(wheres, variants, args.seeds):
            pipe, adapter, seconds = erase_step(concept, step, args, seed, variant, chain if made != "alone" else None)
            result = evaluate(pipe, scorer, forget=[concept.forget_probe()], related=related, general=general, **call)
            cells = {**result.related, **result.general}
            row = {
                "step": step, "concept": concept.name, "made": made, "variant": variant, "seed": seed,
                "seconds": seconds, "shown": result.forget[concept.name],
                "related": continual.relative(result.related, untouched.general),
                "general": continual.relative(result.general, untouched.general),
                "related_paired": asdict(paired_change(untouched, result, [p.concept for p in related])),
                "general_paired": asdict(paired_change(untouched, result, [p.concept for p in general])),
                "lost": lost_cells(cells, untouched.general),
                **continual.lost_figures(untouched, result, related, general),
                "target_reach": adapter.metadata.get("figures", {}).get("target_reach"),
            }  # fmt: skip
            results["rows"].append(row)
            print(
                f"step {step:2d} {concept.name:>12} {made}, {variant}, seed {seed}: shown {row['shown']:.3f} "
                f"related {row['related']:.3f} general {row['general']:.3f} lost {row['lost']} ({seconds:.0f}s)",
                flush=True,
            )
    return results


def write_report(results: dict, args) -> None:
    settings = results["settings"]
    rows = [*results["rows"], *continual_rows({r["step"] for r in results["rows"]}, settings["chain_row"])]
    order = {"alone": 0, "on the chain": 1, "on the chain (continual run)": 2}
    rows.sort(key=lambda r: (r["step"], order[r["made"]], r["variant"] != RECIPE, r["variant"], r["seed"]))
    lines = [
        "# What a removal costs by itself, and what it costs on the chain (glyphs)",
        "",
        (
            "`python benchmarks/footprint.py` (written by it; the commands are at the end). Each step's concept "
            "is erased *alone* on the untouched glyphs model with the continual benchmark's options, and, with "
            "`--made chain`, *on the chain* that a continual run saved (the removals of the steps before, loaded "
            "as that run loaded them). Both are measured on that step's probes with the continual run's seeds. "
            "*Still shown*: share of the images of the step's own forget probe that show the concept. *On the "
            "chain (continual run)*: that run's own figures for the step (`continual_glyphs.json`, the row ending"
            ' "{chain_row}"). *Variant*: `recipe`, the concept\'s `erase_kwargs()`; `neighbour styles`, an '
            "identity's contrast prompts also in its neighbouring styles, as a group of their own; `character word`, "
            'an identity erased at its character word (`erase_at="character"`). Retention: % '
            "of the untouched model on the same cells. *Lost / gained*: images that showed their cell with the "
            "untouched model and do not now, and the reverse (one-sided sign test, bold where p < 0.05). *Cells "
            "lost*: down by at least {lost:.0%} of their images. *Lost as*: the lost images by what they show "
            "instead, *gained from*: the gained ones by what they showed untouched ({lost_as}; what the scorer "
            "read otherwise, `continual.lost_as`; rows since session 30). "
            "{images} images per prompt, {sampling_steps} DDIM steps, {general_cells} general cells."
        ).format(**settings, lost=LOST, lost_as=" / ".join(continual.LOST_AS)),
        "",
        "| step | removed | made | variant | seed | still shown | related | general | general lost / gained (p) | "
        "related lost / gained (p) | cells lost | related lost as | related gained from | general lost as | "
        "general gained from | erase s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        figures = [continual._pct(r[k]) for k in ("shown", "related", "general")]
        figures += [continual._paired_cell(r[k]) for k in ("general_paired", "related_paired")]
        cells = [r["step"], r["concept"], r["made"], r["variant"], r["seed"], *figures, ", ".join(r["lost"]) or "—"]
        cells += [" / ".join(str(n) for n in r[k].values()) if k in r else "—" for k in LOST_AS_KEYS]
        lines.append("| " + " | ".join(str(c) for c in cells) + f" | {r['seconds']:.0f} |")
    commands = results["command"] if isinstance(results["command"], list) else [results["command"]]
    lines += ["", "Commands (their rows merged):" if len(commands) > 1 else "Command:", ""]
    lines += [f"- `{command}`" for command in commands] + [""]
    args.output.write_text("\n".join(lines))


def run_and_report(run_benchmark, write, args, script: str) -> None:
    """Runs a glyphs benchmark on `args.threads` threads, then writes its json (with the seconds and the command
    that made it) beside `args.output` and its page with `write`."""
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run_benchmark(args)
    results["seconds"] = time.perf_counter() - started
    results["command"] = f"python benchmarks/{script} " + shlex.join(sys.argv[1:])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    write(results, args)
    print(f"done in {results['seconds'] / 60:.1f} min; wrote {args.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    continual.add_distill_arguments(parser)
    parser.add_argument("--steps", type=int, nargs="+", default=[], help="steps of the glyphs sequence (1-50)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="erase seeds (each step, each variant)")
    parser.add_argument(
        "--variants",
        nargs="+",
        type=parse_variant,
        default=[],
        help="also these variants of erase_kwargs(), for the kinds they change: an identity's 'neighbour styles' (its "
        "contrast prompts in its neighbouring styles held as a group of their own) and 'character word' (erased at "
        "its character word); a character's 'character target' (mapped to another character, not its kind's "
        "word); a style's, colour's or identity's 'others held' (its forget prompts in the other styles or colours "
        "held); or several joined by '+' ('character word + others held')",
    )
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument("--sampling-steps", type=int, default=10, help="DDIM steps per image")
    parser.add_argument("--general-cells", type=int, default=80, help="size of the general sample")
    parser.add_argument("--chain-row", default=CHAIN_ROW, help="end of the continual row's label to compare with")
    parser.add_argument("--made", nargs="+", choices=("alone", "chain"), default=["alone"],
                        help="make each step alone, on the chain --chain-dir holds, or both")  # fmt: skip
    parser.add_argument("--chain-dir", type=Path, default=None, help="the --chain-dir of the continual run")
    parser.add_argument("--model", type=Path, default=None, help="another trained glyphs pipeline folder")
    parser.add_argument("--scorer", type=Path, default=None, help="another trained glyphs scorer folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "footprint.md")
    parser.add_argument("--render", action="store_true", help="rewrite the report from its json, run nothing")
    args = parser.parse_args()
    if args.render:
        write_report(json.loads(args.output.with_suffix(".json").read_text()), args)
        return
    if "chain" in args.made and args.chain_dir is None:
        parser.error("--made chain loads the steps before from --chain-dir: pass the folder a continual run saved")
    if not args.steps or not all(1 <= s <= len(continual.GLYPH_SEQUENCE) for s in args.steps):
        parser.error(f"--steps are steps of the glyphs sequence: 1 to {len(continual.GLYPH_SEQUENCE)}")
    run_and_report(run, write_report, args, "footprint.py")


if __name__ == "__main__":
    main()
