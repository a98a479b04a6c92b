"""Mapping targets: a candidate the model draws as the concept itself is never chosen, and `erase` says loudly
when its removal barely moves the concept.

A random tiny pipeline draws two words alike only if their token embeddings are alike, so the fixture makes a
candidate the concept's twin by copying the concept's token embedding into it (with a little noise).
"""

import warnings

import pytest
import torch
from conftest import make_flux_pipeline, make_sd3_pipeline, make_sd_pipeline, make_sdxl_pipeline

import diffusers_unlearn as du
from diffusers_unlearn import targets
from diffusers_unlearn.distance import PromptBank, final_latents, score_distances
from diffusers_unlearn.errors import InvalidArgumentError, InvalidConceptError, WeakRemovalWarning
from diffusers_unlearn.families import family_of
from diffusers_unlearn.prompts import Context

TEMPLATES = ["a photo of a {}", "a painting of a {}", "a drawing of a {}", "a {} on a hill"]
NEIGHBORS = ["dog", "tiger", "horse"]


def set_embedding(pipe, word: str, value: torch.Tensor) -> None:
    (token,) = pipe.tokenizer(word, add_special_tokens=False).input_ids
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[token] = value


def embedding(pipe, word: str) -> torch.Tensor:
    (token,) = pipe.tokenizer(word, add_special_tokens=False).input_ids
    return pipe.text_encoder.get_input_embeddings().weight[token].detach().clone()


@pytest.fixture(scope="module")
def pipe():
    pipe = make_sd_pipeline()
    twin = embedding(pipe, "cat") + 0.002 * torch.randn(
        embedding(pipe, "cat").shape, generator=torch.Generator().manual_seed(0)
    )
    set_embedding(pipe, "car", twin)  # "car" is drawn (almost exactly) as "cat"
    set_embedding(pipe, "flower", 0.1 * embedding(pipe, "flower"))  # "flower" is an untrained, near-empty word
    return pipe


def candidates(adapter) -> dict[str, dict]:
    return {record["candidate"]: record for record in adapter.metadata["target_candidates"]}


def test_a_candidate_drawn_as_the_concept_or_untrained_is_never_chosen(pipe):
    adapter = du.erase(
        pipe, "cat", templates=TEMPLATES, mapping_candidates=["car", "flower", "rabbit", "bird"], neighbors=NEIGHBORS
    )
    chosen = {record["target"] for record in adapter.metadata["targets"]}
    assert not any("car" in t or "flower" in t for t in chosen), chosen
    found = candidates(adapter)
    assert found["flower"]["rejected"].startswith("untrained"), found["flower"]
    assert found["car"]["checked"] and found["car"]["rejected"].startswith("drawn as the concept"), found
    assert found["car"]["separation"] < targets.MIN_SEPARATION
    # every candidate that was chosen passed the check, with its measured separation recorded
    for label, record in found.items():
        if label and any(label in t for t in chosen):
            assert record["checked"] and record["rejected"] is None and record["separation"] >= targets.MIN_SEPARATION


def test_without_the_rules_the_twin_would_be_chosen(pipe, monkeypatch):
    """The rejection is what keeps the twin out: it is the nearest candidate by the removal's own distance
    (`erase(min_separation=0)` turns the check off)."""
    monkeypatch.setattr(targets, "UNTRAINED_NORM_RATIO", 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = du.erase(
            pipe, "cat", templates=TEMPLATES, mapping_candidates=["car", "rabbit", "bird"], neighbors=NEIGHBORS,
            min_separation=0.0,
        )  # fmt: skip
    chosen = [record["target"] for record in adapter.metadata["targets"]]
    assert all("car" in t for t in chosen), chosen
    # ... and the removal then barely moves the concept: erase says so, loudly, with our own warning
    assert adapter.metadata["figures"]["concept_shift"] < targets.WEAK_SHIFT
    weak = [w for w in caught if issubclass(w.category, WeakRemovalWarning)]
    assert weak and "barely moves 'cat'" in str(weak[0].message)
    # the stack's check reports it per member, and fails
    report = du.UnlearningStack([adapter]).check(pipe)
    assert adapter.name in report.weak and not report.passed
    assert any("barely moved its own concept" in line for line in report.failures()), report.failures()


def test_min_separation_out_of_range_is_refused(pipe):
    with pytest.raises(InvalidArgumentError, match="min_separation"):
        du.erase(pipe, "cat", templates=TEMPLATES, mapping_candidates=["rabbit"], min_separation=1.5)


def test_a_removal_that_moves_the_concept_reports_its_shift(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakRemovalWarning)
        adapter = du.erase(
            pipe, "cat", templates=TEMPLATES, mapping_candidates=["rabbit", "bird"], neighbors=NEIGHBORS
        )
    figures = adapter.metadata["figures"]
    assert figures["concept_shift"] >= targets.WEAK_SHIFT and figures["target_reach"] > 0.5, figures
    assert du.UnlearningStack([adapter]).check(pipe).weak == {}


def test_without_neighbours_a_removal_short_of_its_targets_is_weak(pipe, monkeypatch):
    """No neighbours, no `concept_shift`: the check falls back to how far the removal got towards its targets."""
    kwargs = {"templates": TEMPLATES, "mapping_candidates": ["rabbit", "bird"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeakRemovalWarning)
        adapter = du.erase(pipe, "cat", **kwargs)
    figures = adapter.metadata["figures"]
    assert figures["concept_shift"] is None and figures["target_reach"] >= targets.WEAK_REACH, figures
    monkeypatch.setattr(targets, "WEAK_REACH", figures["target_reach"] + 0.01)  # the same removal, a stricter bar
    with pytest.warns(WeakRemovalWarning, match="of the way to its targets"):
        short = du.erase(pipe, "cat", **kwargs)
    report = du.UnlearningStack([short]).check(pipe)
    assert "no neighbours" in report.weak[short.name] and not report.passed


def test_no_usable_candidate_raises_and_names_the_rejected_ones(pipe):
    with pytest.raises(InvalidConceptError, match="'car': drawn as the concept"):
        du.erase(pipe, "cat", prompts=["cat"], anchor="car", neighbors=NEIGHBORS)


def test_map_to_context_false_keeps_the_emptied_context_out_of_the_targets(pipe):
    """An attribute whose absence leaves the choice to the model ("a green five" is drawn bold half the time) must
    not be mapped to its emptied context: with `map_to_context=False` only the given candidates are targets."""
    kwargs = {"templates": TEMPLATES, "mapping_candidates": ["bird"], "neighbors": NEIGHBORS}
    emptied = {t.replace(" {}", "").replace("{} ", "") for t in TEMPLATES}
    bird = embedding(pipe, "bird")
    set_embedding(pipe, "bird", 40 * bird)  # a candidate far from "cat": the emptied context is nearer
    try:
        default = du.erase(pipe, "cat", **kwargs)
        adapter = du.erase(pipe, "cat", map_to_context=False, **kwargs)
    finally:
        set_embedding(pipe, "bird", bird)
    assert {r["target"] for r in default.metadata["targets"]} & emptied  # the premise: it is chosen by default
    chosen = [r["target"] for r in adapter.metadata["targets"]]
    assert chosen and all("bird" in t for t in chosen), chosen
    assert "" not in candidates(adapter)


def test_map_to_context_false_without_candidates_is_refused(pipe):
    with pytest.raises(du.errors.InvalidArgumentError, match="no mapping target"):
        du.erase(pipe, "cat", templates=TEMPLATES, map_to_context=False)


def test_a_fallback_candidate_is_taken_only_where_every_other_candidate_is_rejected(pipe):
    """The concept's twin "car" is rejected: the fallback "bird" takes its place; beside "rabbit", which passes,
    "bird" is never taken, even where it is nearer (made so by lengthening "rabbit")."""
    kwargs = {"templates": TEMPLATES, "neighbors": NEIGHBORS, "map_to_context": False}
    adapter = du.erase(pipe, "cat", mapping_candidates=["car"], fallback_candidates=["bird"], **kwargs)
    assert {r["target"] for r in adapter.metadata["targets"]} == {t.format("bird") for t in TEMPLATES}
    found = candidates(adapter)
    assert found["car"]["rejected"].startswith("drawn as the concept") and found["bird"]["fallback"], found
    rabbit = embedding(pipe, "rabbit")
    set_embedding(pipe, "rabbit", 40 * rabbit)  # "rabbit" far from "cat": "bird" is nearer
    try:
        as_candidate = du.erase(pipe, "cat", mapping_candidates=["rabbit", "bird"], **kwargs)
        as_fallback = du.erase(pipe, "cat", mapping_candidates=["rabbit"], fallback_candidates=["bird"], **kwargs)
    finally:
        set_embedding(pipe, "rabbit", rabbit)
    assert all("bird" in r["target"] for r in as_candidate.metadata["targets"])  # the premise: bird is nearer
    assert all("rabbit" in r["target"] for r in as_fallback.metadata["targets"])


def test_a_fallback_a_loaded_removal_erased_in_a_context_is_not_taken_there(pipe):
    """Where a loaded removal erased the fallback "bird" (its prompt in one context is that removal's forget
    prompt, drawn as its target), "bird" is passed over there for "rabbit", and still taken in the others."""
    bank = PromptBank(pipe, family_of(pipe))
    contexts = [Context(t) for t in TEMPLATES]

    def choose(erased):
        found = [targets.Candidate("car"), targets.Candidate("bird", fallback=True)]
        found.append(targets.Candidate("rabbit", fallback=True))
        return targets.choose_targets(
            bank, contexts, ["cat"], found, NEIGHBORS, lambda pairs: score_distances(bank, pairs), erased=erased
        ).targets

    nearest = choose(erased=())
    (context, bird), *_ = [(c, t) for c, t in nearest.items() if "bird" in t]  # the premise: some are "bird"
    chosen = choose(erased={bird})
    assert chosen == {**nearest, context: context.fill("rabbit")}, chosen


def test_an_unknown_target_check_is_refused(pipe):
    with pytest.raises(InvalidArgumentError, match="target_check"):
        du.erase(pipe, "cat", templates=TEMPLATES, mapping_candidates=["rabbit"], target_check="median")


@pytest.mark.parametrize("make", ["sd", "sdxl", "sd3", "flux"])
def test_final_latents_end_alike_only_for_alike_prompts(make):
    """The confirmation of implicit prompts samples every prompt from the same noise: the same prompt ends in the
    same place, another prompt elsewhere, on every family (FLUX's packed latents, flow schedulers, SDXL's pooled
    text)."""
    pipe = {"sd": make_sd_pipeline, "sdxl": make_sdxl_pipeline, "sd3": make_sd3_pipeline, "flux": make_flux_pipeline}
    pipe = pipe[make]()
    bank = PromptBank(pipe, family_of(pipe))
    ends = final_latents(bank, ["a photo of a cat", "a drawing of a horse"], samples=2, steps=2)
    again = final_latents(bank, ["a drawing of a horse", "a photo of a cat"], samples=2, steps=2)
    assert ends["a photo of a cat"].shape[0] == 2 and torch.isfinite(ends["a photo of a cat"]).all()
    torch.testing.assert_close(ends["a photo of a cat"], again["a photo of a cat"])
    assert not torch.allclose(ends["a photo of a cat"], ends["a drawing of a horse"])
