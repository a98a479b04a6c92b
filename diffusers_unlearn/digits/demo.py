"""The digits demo, the README's main job: erase a digit, a colour or both; before / after.

    python -m diffusers_unlearn.demo                     # erases "seven" (alias "7")
    python -m diffusers_unlearn.demo --digit 3 --colour blue --output out/

Writes `OUTPUT/before_after.png` (rows: prompts; left: before, right: after, same seeds),
`OUTPUT/no-<concept>/` (the removal, a diffusers LoRA) and `OUTPUT/figures.json`, and gives forget accuracy,
related retention and general retention measured with the digits scorer. Runs offline in about a minute.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..erasure import erase
from ..evaluation import evaluate, generate_images
from ..toyworld import grid, ratio
from . import load_pipeline
from .concepts import Concept
from .scorer import DigitsConceptScorer


def run(concept: Concept, output: Path, images_per_prompt: int = 8, steps: int = 20, seed: int = 0) -> dict:
    """Erases `concept` from the digits model, measures before / after, writes the grid and the removal."""
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe = load_pipeline()
    scorer = DigitsConceptScorer()
    call = {"images_per_prompt": images_per_prompt, "num_inference_steps": steps, "seed": seed}
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
        "related_retention_vs_before": ratio(after.related_retention, before.related_retention),
        "general_retention_vs_before": ratio(after.general_retention, before.general_retention),
        "erase_seconds": round(erase_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 1),
        "rank": adapter.rank,
        "targets": adapter.metadata["targets"][:3],
    }
    (output / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    return figures
