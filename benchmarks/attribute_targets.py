"""A stroke combination erased at its stroke word, with and without the context-without-the-stroke as a target.

"a green five" is drawn bold half the time, so mapping "a green five, bold" there keeps half of the bold green
fives; `erase(..., map_to_context=False)` leaves only the other stroke as a target. Each removal is made alone on
the untouched digits model (`Concept.erase_kwargs(erase_at="attribute")`) and measured by conjunction (digit,
colour and stroke all shown), with related and general retention as in `benchmarks/continual.py`.

    python benchmarks/attribute_targets.py     # -> docs/benchmarks/attribute_targets.md
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import continual  # noqa: E402  (probes and the conjunction check of the continual benchmark)

import diffusers_unlearn as du  # noqa: E402
from diffusers_unlearn import digits  # noqa: E402
from diffusers_unlearn.digits import DigitsConceptScorer  # noqa: E402
from diffusers_unlearn.digits.concepts import Concept  # noqa: E402
from diffusers_unlearn.evaluation import evaluate  # noqa: E402

CONCEPTS = (Concept(5, "green", "bold"), Concept(0, "blue", "thin"), Concept(9, "yellow", "bold"))
IMAGES = 8


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    scorer = DigitsConceptScorer()
    call = {"images_per_prompt": IMAGES, "num_inference_steps": 20, "progress": False}
    lines = [
        "# Attribute targets: a stroke is not mapped to the context without it",
        "",
        f"`python benchmarks/attribute_targets.py` (written by it): {IMAGES} images per prompt, 20 DDIM steps; each "
        "removal made alone on the untouched digits model at its stroke word (`Concept.erase_kwargs(erase_at="
        '"attribute")`). *Shown*: share of the forget prompts\' images with digit, colour and stroke all shown; '
        "retention relative to the untouched model on the same prompts and seeds.",
        "",
        "| concept | `map_to_context` | shown before | shown after | related | general | targets (first 3) |",
        "|---|---|---|---|---|---|---|",
    ]
    for concept in CONCEPTS:
        probe = continual.conjunction_probe(concept)
        _, related, general = continual.probes_at([concept])
        before = evaluate(digits.load_pipeline(), scorer, forget=[probe], related=related, general=general, **call)
        for map_to_context in (True, False):
            pipe = digits.load_pipeline()
            adapter = du.erase(pipe, **concept.erase_kwargs(erase_at="attribute") | {"map_to_context": map_to_context})
            pipe.load_unlearning(adapter, mode="fused")
            after = evaluate(pipe, scorer, forget=[probe], related=related, general=general, **call)
            targets = sorted({r["target"] for r in adapter.metadata["targets"]})[:3]
            line = (
                f"| {concept.name} | {map_to_context} | {100 * before.forget[probe.concept]:.0f}% "
                f"| {100 * after.forget[probe.concept]:.0f}% "
                f"| {100 * continual.relative(after.related, before.related):.0f}% "
                f"| {100 * continual.relative(after.general, before.general):.0f}% "
                f"| {', '.join(repr(t) for t in targets)} |"
            )
            print(line, flush=True)
            lines.append(line)
    lines += ["", f"{(time.perf_counter() - started) / 60:.1f} min on one thread.", ""]
    (ROOT / "docs" / "benchmarks" / "attribute_targets.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
