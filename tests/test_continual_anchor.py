"""Continual removal (issue 16): the chain's map, protection held to the untouched model, earlier protection.

On the tiny SD pipeline, whose text embeddings are random: what each piece must move and what it must hold, on
the key / value outputs of the edited layers (image-level figures are in docs/benchmarks/continual.md).
"""

import pytest
import torch
from conftest import make_sd_pipeline

import diffusers_unlearn as du
from diffusers_unlearn.adapter import UnlearningAdapter
from diffusers_unlearn.constraints import (
    Constraints,
    chain_map,
    composed_targets,
    earlier_protected,
    earlier_protected_groups,
    erased_by,
    forget_pairs,
    hold_removed,
    is_combination,
)
from diffusers_unlearn.families import family_of
from diffusers_unlearn.layers import current_weight, edited_layers
from diffusers_unlearn.prompts import Context

pytestmark = pytest.mark.random_targets  # see conftest.py

DOG = ["a photo of a dog", "a painting of a dog", "dog"]
CAT = ["a photo of a cat", "a painting of a cat", "cat"]


def outputs(pipe, prompts):
    """Key / value outputs of every edited layer for the prompts, concatenated."""
    family = family_of(pipe)
    embeds, _ = family.encode(pipe, prompts)
    return torch.cat([(embeds @ current_weight(m).T).flatten() for m in edited_layers(pipe.unet, family).values()])


def weights(pipe):
    return {n: current_weight(m).clone() for n, m in edited_layers(pipe.unet, family_of(pipe)).items()}


def test_chain_map_is_the_loaded_removals_remap():
    pipe = make_sd_pipeline()
    base = weights(pipe)
    assert chain_map([]) is None
    for concept in ("cat", "tree"):
        pipe.load_unlearning(du.erase(pipe, concept, neighbors=["dog", "rabbit"]), mode="fused")
    chain = chain_map(du.pipeline.loaded_adapters(pipe)).float()
    assert (chain - torch.eye(chain.shape[0])).norm() > 0.01  # the removals did something
    for name, weight in weights(pipe).items():  # W_now == W_base @ M
        assert torch.allclose(weight, base[name] @ chain, atol=1e-4), name
    without_remap = UnlearningAdapter(lora_weights={}, metadata={}, probes={})
    assert chain_map([without_remap]) is None  # a distilled removal is no remap: no map


def _drifted_pipe():
    """Base pipeline, and the same with a careless first removal that moves the dog prompts (no protection)."""
    base_pipe, pipe = make_sd_pipeline(), make_sd_pipeline()
    careless = du.erase(pipe, "cat", neighbors=["dog"], config=du.ClosedFormConfig(lambda_protect=0.0))
    pipe.load_unlearning(careless, mode="fused")
    return base_pipe, pipe


def test_base_anchor_repairs_drift_and_keeps_earlier_removal():
    base_pipe, pipe = _drifted_pipe()
    untouched, drifted, first_removed = outputs(base_pipe, DOG), outputs(pipe, DOG), outputs(pipe, CAT)
    drift = (drifted - untouched).norm()
    assert drift > 0.05 * untouched.norm()

    after = {}
    for anchor in ("chain", "base"):
        config = du.ClosedFormConfig(anchor=anchor)
        # "cat" among the neighbours: held where the chain put it (erased), not pulled back to the untouched cat
        second = du.erase(pipe, "tree", neighbors=["dog", "rabbit", "cat"], config=config)
        pipe.load_unlearning(second, mode="fused")
        after[anchor] = (outputs(pipe, DOG), outputs(pipe, CAT))
        pipe.unload_unlearning(second.name)
    # what it must move: the dog prompts (protected by the second removal) back toward the untouched model
    assert (after["base"][0] - untouched).norm() < 0.5 * drift
    assert (after["chain"][0] - untouched).norm() > 0.8 * drift  # held where the first removal left them
    # what it must hold: the cat prompts stay where the first removal put them
    # (the repair shares token directions with the cat prompts: measured 35% of the first edit moved, chain: 10%)
    assert (after["base"][1] - first_removed).norm() < 0.5 * (first_removed - outputs(base_pipe, CAT)).norm()


def test_earlier_protection_keeps_what_earlier_removals_protected():
    pipe = make_sd_pipeline()
    first = du.erase(pipe, "cat", neighbors=["rabbit", "horse"])
    pipe.load_unlearning(first, mode="fused")
    kept = [p for p in first.metadata["protected_prompts"] if "rabbit" in p]
    before = outputs(pipe, kept)
    moved, reach = {}, {}
    for weight in (0.0, 4.0):  # the second removal does not protect "rabbit" itself
        second = du.erase(pipe, "tree", neighbors=["dog"], config=du.ClosedFormConfig(earlier_protection=weight))
        moved[weight] = float((outputs_with(pipe, second, kept) - before).norm() / before.norm())
        reach[weight] = 1 - second.metadata["figures"]["forget_residual"]
    assert moved[4.0] < 0.6 * moved[0.0], moved  # what it must hold: the prompts the first removal protected
    assert reach[4.0] > 0.5 * reach[0.0], reach  # what it must still move: its own concept


def outputs_with(pipe, adapter, prompts):
    pipe.load_unlearning(adapter, mode="fused")
    try:
        return outputs(pipe, prompts)
    finally:
        pipe.unload_unlearning(adapter.name)


def test_earlier_protected_drops_what_the_new_removal_erases():
    earlier = UnlearningAdapter(
        lora_weights={},
        metadata={"protected_prompts": ["", "a red three", "a blue three", "a red two", "a four"]},
        probes={},
    )
    forget = {Context("a blue {}"): ["a blue three"]}
    own = {"preserve": ["a red three"]}
    # "a blue three" is erased now; "a red three" names "three" but this removal protects it itself
    assert earlier_protected([earlier], ["three", "3"], own, forget) == ["", "a red three", "a red two", "a four"]
    assert earlier_protected([earlier], ["three"], {}, forget) == ["", "a red two", "a four"]
    # by group, for distillation's replay: the same prompts, where each removal's groups had them
    earlier.metadata |= {"targets": [{"context": "a red {}", "target": "a red two"}], "protected_neighbors": [],
                         "preserve": ["a red three", "a blue three", "a four"]}  # fmt: skip
    assert earlier_protected_groups([earlier], ["three"], {}, forget) == [[["", "a red two", "a red"], ["a four"]]]


def test_hold_removed_splits_groups_by_what_was_erased():
    earlier = UnlearningAdapter(lora_weights={}, metadata={"forget_prompts": ["a blue three"]}, probes={})
    constraints = Constraints(protect={"neighbors": ["a blue seven", "a blue two", "a blue three", "a red two"]})
    hold_removed(constraints, [earlier], {"seven"})
    assert constraints.protect == {
        "neighbors": ["a blue two", "a red two"],
        "neighbors (removed)": ["a blue seven", "a blue three"],
    }
    assert constraints.weights == {"neighbors": 0.5, "neighbors (removed)": 0.5}
    assert constraints.current == {"neighbors (removed)"}


def test_erased_by_finds_prompts_that_ask_for_an_earlier_combination():
    """A removal's forget prompts are a sample: a prompt asking for an earlier "serif Q" in another phrasing is
    erased too (held to the chain, never pulled back to the untouched model); one naming only part of it is not."""
    serif_q = UnlearningAdapter(
        lora_weights={},
        metadata={
            "concept": "serif",
            "aliases": ["serifed"],
            "targets": [{"context": "the letter q in {}", "target": "the letter q in sans"},
                        {"context": "{} q", "target": "sans q"}],
            "protected_prompts": ["serif o", "the letter q in sans"],
            "forget_prompts": ["the letter q in serif", "serif q"],
        },
        probes={},
    )  # fmt: skip
    erased = erased_by([serif_q])
    assert erased("serif q") and erased("the blue letter q in serif") and erased("serifed q on white")
    assert not erased("the letter q in sans") and not erased("the letter o in serif") and not erased("a cat")
    global_k = UnlearningAdapter(
        lora_weights={},
        metadata={"concept": "k", "targets": [{"context": "the letter {}", "target": "the letter"}],
                  "protected_prompts": ["the letter x"], "forget_prompts": ["the letter k"]},
        probes={},
    )  # fmt: skip
    assert erased_by([serif_q, global_k])("blue k in bold") and not erased_by([global_k])("serif q")
    redacted = UnlearningAdapter(lora_weights={}, metadata={"forget_prompts": ["a red seven"]}, probes={})
    assert erased_by([redacted])("a red seven") and not erased_by([redacted])("a blue seven")


def italic_seven(**metadata) -> UnlearningAdapter:
    """An earlier removal of "italic 7" made at its character word: the 7 drawn as a 4, in italic."""
    return UnlearningAdapter(
        lora_weights={},
        metadata={
            "concept": "7",
            "targets": [{"context": "italic {}", "target": "italic 4"},
                        {"context": "the digit {} in italic", "target": "the digit 4 in italic"}],
            "protected_prompts": ["roman 7", "italic 3"],
            "forget_prompts": ["italic 7", "the digit 7 in italic"],
            **metadata,
        },
        probes={},
    )  # fmt: skip


def test_compose_targets_keeps_an_earlier_removals_change_in_a_later_target():
    """Erasing the style italic after "italic 7": a target that still draws the 7 takes the earlier 4 (the later
    removal changes only the style); prompts the earlier removal did not erase keep their targets, and so do
    prompts of an earlier removal of a whole style."""
    pairs = [
        ("the digit 7 in italic", "the digit 7 in roman"),
        ("yellow italic 7", "yellow roman 7"),  # not one of its forget prompts, but asks for italic 7
        ("the 7, italic", "the 7, roman"),  # in none of its contexts: the replacement most of its targets use
        ("italic g", "roman g"),
    ]
    composed = composed_targets(pairs, ["italic"], [italic_seven()])
    assert composed == {
        "the digit 7 in italic": "the digit 4 in roman",
        "yellow italic 7": "yellow roman 4",
        "the 7, italic": "the 4, roman",
    }
    # not used: a replacement that names this removal's concept, a target an earlier removal erased, or a
    # redacted earlier removal (it names nothing)
    assert (
        composed_targets(
            pairs, ["italic"], [italic_seven(targets=[{"context": "italic {}", "target": "italic italic"}])]
        )
        == {}
    )
    roman_four = UnlearningAdapter(lora_weights={}, metadata={"forget_prompts": ["yellow roman 4"]}, probes={})
    assert composed_targets(pairs, ["italic"], [italic_seven(), roman_four]) == {
        "the digit 7 in italic": "the digit 4 in roman",
        "the 7, italic": "the 4, roman",
    }
    redacted = UnlearningAdapter(lora_weights={}, metadata={"forget_prompts": ["italic 7"]}, probes={})
    assert composed_targets(pairs, ["italic"], [redacted]) == {}
    # an earlier removal of a whole style: "italic 7" erased later, at its character word, keeps its own target
    italic = UnlearningAdapter(
        lora_weights={},
        metadata={"concept": "italic", "targets": [{"context": "{} 7", "target": "roman 7"}],
                  "protected_prompts": ["roman 7", "bold 7"], "forget_prompts": ["italic 7"]},
        probes={},
    )  # fmt: skip
    assert composed_targets([("italic 7", "italic 4")], ["7"], [italic]) == {}


def test_is_combination_reads_whether_a_removal_kept_its_name_elsewhere():
    whole_style = UnlearningAdapter(
        lora_weights={}, metadata={"concept": "italic", "protected_prompts": ["roman 7"]}, probes={}
    )
    redacted = UnlearningAdapter(lora_weights={}, metadata={"protected_prompts": ["roman 7"]}, probes={})
    assert is_combination(italic_seven()) and not is_combination(whole_style) and not is_combination(redacted)


def test_erase_maps_a_prompt_both_removals_ask_for_to_a_target_with_both_changes(sd_pipe, tmp_path):
    """A combination ("red cat", drawn as a red dog) then its colour ("red"): "a red cat" is mapped to "a green
    dog", not "a green cat", and the removal's provenance and re-solve pairs say so."""
    first = du.erase(
        sd_pipe, "cat", templates=["a red {}", "a photo of a red {}"], mapping_candidates=["dog"],
        map_to_context=False, preserve=["a blue cat"],
    )  # fmt: skip
    sd_pipe.load_unlearning(first)
    kwargs = {"templates": ["a {} cat", "a {} bird"], "mapping_candidates": ["green"], "map_to_context": False}
    assert "composed_targets" not in du.erase(sd_pipe, "red", compose_targets=False, **kwargs).metadata
    second = du.erase(sd_pipe, "red", **kwargs)  # on by default
    assert [t["target"] for t in second.metadata["targets"]] == ["a green cat", "a green bird"]
    assert second.metadata["composed_targets"] == {"a red cat": "a green dog"}
    assert dict(forget_pairs(second)) == {"a red cat": "a green dog", "a red bird": "a green bird"}
    second.save_pretrained(tmp_path)
    assert dict(forget_pairs(UnlearningAdapter.from_pretrained(tmp_path))) == dict(forget_pairs(second))


def test_config_checks_the_new_fields():
    with pytest.raises(du.errors.InvalidArgumentError):
        du.ClosedFormConfig(anchor="untouched")
    with pytest.raises(du.errors.InvalidArgumentError):
        du.ClosedFormConfig(earlier_protection=-1)


def test_a_combination_removal_leaves_its_word_a_target():
    """A removal that protects its word in other contexts ("blue three" keeps "a red three") did not remove the
    word: later removals may still map to it; a whole-concept removal's word is refused."""

    def rejected(first_kwargs):
        pipe = make_sd_pipeline()
        pipe.load_unlearning(du.erase(pipe, "cat", neighbors=["rabbit"], **first_kwargs), mode="fused")
        second = du.erase(pipe, "dog", mapping_candidates=["cat"], neighbors=["horse"])
        return next(c["rejected"] for c in second.metadata["target_candidates"] if c["candidate"] == "cat")

    assert rejected({"templates": ["a red {}"], "preserve": ["a blue cat"]}) is None
    assert "removed earlier" in rejected({"templates": ["a red {}", "{}"]})


def test_a_concept_an_earlier_removal_maps_to_this_one_is_no_target():
    """After "red cat" -> "a red dog", "dog" is not mapped back to "cat" (the two removals would swap); after
    "red cat" -> "a red bird" it may be, and so may a "dog" whose contexts share no word with "a red {}"."""

    def dog_after(cat_target, dog_templates=("a green {}", "a red {}")):
        pipe = make_sd_pipeline()
        first = du.erase(pipe, "cat", templates=["a red {}"], mapping_candidates=[cat_target], map_to_context=False,
                         neighbors=["rabbit"], preserve=["a blue cat"])  # fmt: skip
        pipe.load_unlearning(first, mode="fused")
        second = du.erase(pipe, "dog", templates=list(dog_templates), mapping_candidates=["cat", "horse"],
                          map_to_context=False, neighbors=["rabbit"])  # fmt: skip
        return {c["candidate"]: c["rejected"] for c in second.metadata["target_candidates"]}

    assert "would swap" in dog_after("dog")["cat"]  # "a", in every context of both
    assert dog_after("bird")["cat"] is None
    assert dog_after("dog", ["green {}", "one green {}"])["cat"] is None


def test_a_neighbour_erased_in_the_context_is_no_reference_for_the_target_check():
    """Rule 2 compares a candidate with the nearest *other* concept; one a loaded removal erased in that context is
    drawn as that removal's target now, which may be the candidate itself."""

    def separation(templates):
        pipe = make_sd_pipeline()
        first = du.erase(pipe, "cat", templates=["a red {}"], neighbors=["rabbit"], preserve=["a blue cat"])
        pipe.load_unlearning(first, mode="fused")
        second = du.erase(pipe, "dog", templates=templates, neighbors=["cat"])
        return next(c["separation"] for c in second.metadata["target_candidates"] if c["checked"])

    assert separation(["a red {}"]) is None  # "a red cat" is erased: no neighbour left to compare with
    assert separation(["a blue {}"]) is not None  # "a blue cat" is not
