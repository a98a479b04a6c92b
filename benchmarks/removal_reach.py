"""Does a removal's own figure say whether it removed anything? Single glyphs removals: `target_reach` against images.

Each of the first 16 removals of the glyphs continual sequence is made alone on the untouched glyphs model (the
continual benchmark's arguments for `ours`) and measured by conjunction (the scorer finds every part of the concept)
on its forget probe, before and after. Beside it: the removal's own figures from `erase` (`target_reach`, and
`concept_shift` when it has neighbours) and whether it warned. This calibrates `targets.WEAK_REACH`, the bar below
which a removal without neighbours warns that it may erase nothing.

    python benchmarks/removal_reach.py     # -> docs/benchmarks/removal_reach.md
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import continual  # noqa: E402  (the glyphs sequence and erase arguments)

import diffusers_unlearn as du  # noqa: E402
from diffusers_unlearn import glyphs  # noqa: E402
from diffusers_unlearn.evaluation import evaluate  # noqa: E402
from diffusers_unlearn.glyphs import GlyphsConceptScorer  # noqa: E402
from diffusers_unlearn.targets import WEAK_REACH  # noqa: E402

REMOVALS = 16
IMAGES = 4


def main() -> None:
    torch.set_num_threads(1)
    started = time.perf_counter()
    scorer = GlyphsConceptScorer(glyphs.load_scorer())
    call = {"images_per_prompt": IMAGES, "num_inference_steps": 10, "progress": False,
            "guidance_scale": glyphs.GUIDANCE_SCALE}  # fmt: skip
    lines = [
        "# Does a removal know when it removed nothing? (`target_reach` against images)",
        "",
        f"`python benchmarks/removal_reach.py` (written by it): the first {REMOVALS} removals of the glyphs continual "
        f"sequence, each made alone on the untouched glyphs model, {IMAGES} images per forget prompt, 10 DDIM steps, "
        f"guidance {glyphs.GUIDANCE_SCALE}. *Shown*: share of the forget probe's images with every part of the "
        "concept. *Reach* and *shift*: the removal's own figures (`adapter.metadata['figures']`); a removal without "
        f"neighbours has no shift and warns below a reach of {WEAK_REACH} (`targets.WEAK_REACH`).",
        "",
        "| concept | shown before | shown after | target reach | concept shift | warned |",
        "|---|---|---|---|---|---|",
    ]
    for concept in continual.GLYPH_SEQUENCE[:REMOVALS]:
        pipe = glyphs.load_pipeline()
        probe = concept.forget_probe()
        before = evaluate(pipe, scorer, forget=[probe], **call).forget[probe.concept]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adapter = du.erase(pipe, **continual.erase_kwargs(concept, "ours", du.ClosedFormConfig()))
        warned = any(issubclass(w.category, du.WeakRemovalWarning) for w in caught)
        pipe.load_unlearning(adapter, mode="fused")
        after = evaluate(pipe, scorer, forget=[probe], **call).forget[probe.concept]
        figures = adapter.metadata["figures"]
        shift = "-" if figures["concept_shift"] is None else f"{figures['concept_shift']:.2f}"
        line = (
            f"| {concept.name} | {100 * before:.0f}% | {100 * after:.0f}% | {figures['target_reach']:.2f} | {shift} "
            f"| {'yes' if warned else 'no'} |"
        )
        print(line, flush=True)
        lines.append(line)
    lines += ["", f"{(time.perf_counter() - started) / 60:.1f} min on one thread.", ""]
    (ROOT / "docs" / "benchmarks" / "removal_reach.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
