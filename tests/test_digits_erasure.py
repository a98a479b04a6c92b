"""Image-level proof on the embedded digits model: a removal erases its concept and spares its neighbours.

Small budgets (few images, 10 sampler steps) keep this fast; the full measurements are in benchmarks/.
"""

import json

import pytest

import diffusers_unlearn as du
from diffusers_unlearn import digits
from diffusers_unlearn.constraints import protect_groups
from diffusers_unlearn.digits.concepts import Concept, cell_probe
from diffusers_unlearn.digits.data import COLOURS, prompt
from diffusers_unlearn.digits.scorer import DigitsConceptScorer
from diffusers_unlearn.distance import PromptBank, score_distances
from diffusers_unlearn.evaluation import ConceptProbe, evaluate
from diffusers_unlearn.families import family_of
from diffusers_unlearn.prompts import Context
from diffusers_unlearn.targets import IMPLICIT_SAMPLES, IMPLICIT_SHARE, Candidate, choose_targets, implicit_prompts

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


@pytest.mark.parametrize("digit", range(10))
def test_every_digit_is_erasable_alone(pipe, scorer, digit):
    """Issue 19: erasing "nine" used to map it to "digit", a word the model never learnt and draws as a nine."""
    concept = Concept(digit)
    probe = ConceptProbe(concept.name, tuple(prompt(digit, colour) for colour in COLOURS), {"digit": digit})
    adapter = du.erase(pipe, **concept.erase_kwargs())
    assert not any("digit" in record["target"].split() for record in adapter.metadata["targets"])
    pipe.load_unlearning(adapter)
    try:
        after = evaluate(pipe, scorer, forget=[probe], images_per_prompt=8, num_inference_steps=20, progress=False)
    finally:
        pipe.unload_unlearning()
    assert after.forget_accuracy <= 0.2, (adapter.metadata["targets"][:3], after.forget)


def test_demo_writes_grid_figures_and_removal(tmp_path):
    from diffusers_unlearn import demo

    demo.main(["--output", str(tmp_path), "--images", "2", "--steps", "5"])
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["concept"] == "seven"
    assert set(figures["after"]) == {"forget_accuracy", "related_retention", "general_retention"}
    assert (tmp_path / "before_after.png").stat().st_size > 1000
    assert du.UnlearningAdapter.from_pretrained(tmp_path / "no-seven").concept == "seven"


def test_a_context_drawn_as_the_concept_is_erased_with_it(pipe, scorer):
    """The digits model draws "a red" and "the number" as sevens. Protected (`erase_implicit=False`, the default) they
    keep drawing sevens once "seven" is erased; with `erase_implicit=True` they are erased with it, and no target."""
    kwargs = {
        "templates": ["a red {}", "the number {}", "a {} in blue"], "mapping_candidates": ["four", "eight"],
        "neighbors": ["four", "eight"],
    }  # fmt: skip
    implicit = [ConceptProbe(p, (p,), {"digit": 7}) for p in ("a red", "the number")]
    assert evaluate(pipe, scorer, forget=implicit, **CALL).forget_accuracy >= 0.8  # the premise: sevens
    drawn = {}
    for erase_implicit in (False, True):
        adapter = du.erase(pipe, "seven", erase_implicit=erase_implicit, **kwargs)
        pipe.load_unlearning(adapter)
        try:
            drawn[erase_implicit] = evaluate(pipe, scorer, forget=implicit, **CALL).forget_accuracy
        finally:
            pipe.unload_unlearning()
    assert adapter.metadata["implicit_prompts"] == ["a red", "the number"]
    assert {"a red", "the number"} <= set(adapter.metadata["forget_prompts"])
    assert not {"a red", "the number"} & set(adapter.metadata["protected_prompts"])
    rebuilt = protect_groups(adapter)  # a re-solve or a later removal's hold does not protect them again
    assert "a in blue" in rebuilt["anchors"] and not {"a red", "the number"} & set(rebuilt["anchors"])
    assert not {"a red", "the number"} & {r["target"] for r in adapter.metadata["targets"]}
    assert drawn[False] >= 0.5 and drawn[True] <= 0.1, drawn


def test_a_context_drawn_in_a_spread_is_not_read_as_the_concept(pipe, scorer):
    """The model draws "a five" in a spread of colours, seldom red, but its mean noise predictions lie nearest "a red
    five": unconfirmed, the check reads it as red. Sampled from the same noise, it ends nearer a yellow or blue five
    in most trajectories, and the confirmed check leaves it out; "a red" (drawn as a seven) stays in."""
    bank = PromptBank(pipe, family_of(pipe))
    five, red = Context("a {} five"), Context("a red {}")
    assert implicit_prompts(bank, [five], ["red"], ["yellow", "blue"], confirm=0) == {five: "a five"}  # the misread
    shown = evaluate(pipe, scorer, forget=[ConceptProbe("red five", ("a five",), {"colour": "red"})], **CALL)
    assert shown.forget_accuracy <= 0.2  # the premise: seldom red
    assert implicit_prompts(bank, [five], ["red"], ["yellow", "blue"]) == {}
    assert implicit_prompts(bank, [red], ["seven"], ["eight", "five"]) == {red: "a red"}


def test_a_context_drawn_as_the_concept_with_no_other_candidate_stays_its_target_and_says_so(pipe, caplog):
    """Where the context without the concept is its context's only candidate ("a red" here: "blue {}" and
    "green {}" let it through the target check), it is mapped to and protected as before, and the log says so."""
    kwargs = {"templates": ["a red {}", "blue {}", "green {}", "yellow {}"], "neighbors": ["four", "eight"]}
    adapter = du.erase(pipe, "seven", erase_implicit=True, **kwargs)
    assert "a red" in [r["target"] for r in adapter.metadata["targets"]]
    assert "a red" not in adapter.metadata.get("implicit_prompts", [])
    assert "a red" in adapter.metadata["protected_prompts"]
    assert "'a red' is drawn as 'seven', but is the only mapping target of 'a red {}'" in caplog.text


def test_the_sampled_target_check_rejects_an_emptied_context_drawn_as_the_concept(pipe, scorer):
    """Erasing "seven" from "a {}": the mean check passes the emptied context "a" (0.94x, the threshold 0.9),
    which the digits model draws as a seven; sampled, it ends nearer the sevens than the neighbours in most
    trajectories and is rejected, and the fallback "one" takes its place."""
    bank = PromptBank(pipe, family_of(pipe))
    contexts = [Context("a {}")]

    def choose(confirm):
        found = [Candidate(""), Candidate("one", fallback=True)]
        choice = choose_targets(
            bank, contexts, ["seven"], found, ["eight", "five"], lambda pairs: score_distances(bank, pairs),
            confirm=confirm,
        )  # fmt: skip
        return choice.targets, found

    chosen, (emptied, _) = choose(confirm=0)
    assert chosen == {c: c.fill("") for c in contexts} and emptied.drawn_share is None  # the premise: passed
    shown = evaluate(pipe, scorer, forget=[ConceptProbe("seven", ("a",), {"digit": 7})], **CALL)
    assert shown.forget_accuracy >= 0.8  # the premise: "a" is drawn as a seven
    chosen, (emptied, one) = choose(confirm=IMPLICIT_SAMPLES)
    assert emptied.rejected and emptied.drawn_share > IMPLICIT_SHARE, emptied
    assert chosen == {c: c.fill("one") for c in contexts} and one.rejected is None
