"""How much of the glyphs model one removal damages, and how much more protection buys back (issue 16).

    python benchmarks/glyphs_protection.py [--concept "serif Q"] [--cells 0 200 1000] [--images 4] [--steps 10]

Erases one concept from the embedded glyphs model with `Concept.erase_kwargs()` plus `N` extra protected prompts
(the canonical prompts of `N` random cells, none of them a probe cell or the concept itself), for each `N` of
`--cells`, and prints forget accuracy and related / general retention relative to the untouched model on the same
seeds (the probes of `Concept.probes()`). Prints only; the figures are quoted in
docs/benchmarks/continual_analysis.md.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from diffusers_unlearn import erase, glyphs
from diffusers_unlearn.evaluation import evaluate
from diffusers_unlearn.glyphs.concepts import ALL_CELLS, Concept
from diffusers_unlearn.glyphs.data import prompt
from diffusers_unlearn.toyworld import concept_scorer


def extra_protection(concept: Concept, probes: dict, count: int, seed: int = 1) -> list[str]:
    """`count` canonical prompts of random cells that are neither probe cells nor covered by `concept`."""
    probed = {p.prompts[0] for p in probes["related"] + probes["general"]}
    cells = random.Random(seed).sample(list(ALL_CELLS), len(ALL_CELLS))
    prompts = [prompt(char, colour, style) for char, style, colour in cells if not concept.covers(char, style, colour)]
    return [p for p in dict.fromkeys(prompts) if p not in probed][:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="serif Q")
    parser.add_argument("--cells", type=int, nargs="+", default=[0, 200, 1000])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, scorer = glyphs.load_pipeline(), concept_scorer("glyphs")
    concept = Concept.parse(args.concept)
    probes = concept.probes()
    call = {"images_per_prompt": args.images, "num_inference_steps": args.steps, "seed": 0, "progress": False}
    before = evaluate(pipe, scorer, **probes, **call)
    for count in args.cells:
        kwargs = concept.erase_kwargs()
        preserve = kwargs["preserve"]  # groups: the extra prompts join the one that holds the background prompts
        broad = "background" if "background" in preserve else "others"
        kwargs["preserve"] = {**preserve, broad: [*preserve[broad], *extra_protection(concept, probes, count)]}
        started = time.perf_counter()
        removal = erase(pipe, **kwargs)
        seconds = time.perf_counter() - started
        pipe.load_unlearning(removal)
        after = evaluate(pipe, scorer, **probes, **call)
        pipe.unload_unlearning()
        print(
            f"+{count} protected cells: forget {before.forget_accuracy:.2f} -> {after.forget_accuracy:.2f}, "
            f"related {after.related_retention / before.related_retention:.2f}, "
            f"general {after.general_retention / before.general_retention:.2f} of before "
            f"(rank {removal.rank}, erase {seconds:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
