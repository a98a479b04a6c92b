"""Image-level proof on the embedded digits model: a removal erases its concept and spares its neighbours.

Small budgets (few images, 10 sampler steps) keep this fast; the full measurements are in benchmarks/.
"""

import json

import pytest

import diffusers_unlearn as du
from diffusers_unlearn import digits
from diffusers_unlearn.digits.concepts import Concept, cell_probe
from diffusers_unlearn.evaluation import DigitsConceptScorer, evaluate

CALL = {"images_per_prompt": 6, "num_inference_steps": 10, "progress": False}


@pytest.fixture(scope="module")
def pipe():
    return digits.load_pipeline()


@pytest.fixture(scope="module")
def scorer():
    return DigitsConceptScorer()


def test_erasing_seven_removes_sevens_and_keeps_neighbours(pipe, scorer):
    seven = Concept(7)
    related = [cell_probe(1, "red", "bold"), cell_probe(2, "blue", "thin"), cell_probe(1, "yellow", "thin")]
    general = [cell_probe(5, "green", "bold"), cell_probe(0, "red", "thin")]
    probes = {"forget": [seven.forget_probe()], "related": related, "general": general}
    before = evaluate(pipe, scorer, **probes, **CALL)
    pipe.load_unlearning(du.erase(pipe, **seven.erase_kwargs()))
    try:
        after = evaluate(pipe, scorer, **probes, **CALL)
    finally:
        pipe.unload_unlearning()
    assert before.forget_accuracy >= 0.7, before
    assert after.forget_accuracy <= seven.chance + 0.1, after
    assert after.related_retention >= 0.8 * before.related_retention, (before, after)
    assert after.general_retention >= 0.8 * before.general_retention, (before, after)


def test_demo_writes_grid_figures_and_removal(tmp_path):
    from diffusers_unlearn import demo

    demo.main(["--output", str(tmp_path), "--images", "2", "--steps", "5"])
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["concept"] == "seven"
    assert set(figures["after"]) == {"forget_accuracy", "related_retention", "general_retention"}
    assert (tmp_path / "before_after.png").stat().st_size > 1000
    assert du.UnlearningAdapter.from_pretrained(tmp_path / "no-seven").concept == "seven"
