"""The glyphs demo: erase a character, a style, a colour or a character in a style; before / after.

    python -m diffusers_unlearn.demo --world glyphs --concept serif
    python -m diffusers_unlearn.demo --world glyphs --concept "serif Q" --output out/

Writes the same files as the digits demo (`before_after.png`, `figures.json`, the removal) and prints the same
three figures, measured with the glyphs scorer (conjunction for a character in a style).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..erasure import erase
from ..evaluation import evaluate, generate_images
from ..toyworld import grid, ratio
from . import load_pipeline
from .concepts import Concept, cell_probe, general_cells
from .scorer import GlyphsConceptScorer


def run(concept: Concept, output: Path, images_per_prompt: int = 8, steps: int = 20, seed: int = 0) -> dict:
    """Erases `concept` from the glyphs model, measures before / after, writes the grid and the removal."""
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pipe, scorer = load_pipeline(), GlyphsConceptScorer()
    call = {"images_per_prompt": images_per_prompt, "num_inference_steps": steps, "seed": seed}
    related = [cell for cell in concept.related() if not concept.covers(*cell)]
    general = [cell for cell in general_cells(12) if not concept.covers(*cell) and cell not in related]
    probes = {
        "forget": [concept.forget_probe()],
        "related": [cell_probe(c) for c in related],
        "general": [cell_probe(c) for c in general],
    }
    before = evaluate(pipe, scorer, **probes, **call)
    erase_started = time.perf_counter()
    adapter = erase(pipe, **concept.erase_kwargs())
    erase_seconds = time.perf_counter() - erase_started
    adapter.save_pretrained(output / adapter.name)
    pipe.load_unlearning(adapter)
    after = evaluate(pipe, scorer, **probes, **call)

    shown = list(concept.forget_probe().prompts[:3]) + [cell_probe(c).prompts[0] for c in related[:2] + general[:2]]
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
