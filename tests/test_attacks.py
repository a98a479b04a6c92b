"""Attacks on the shipped digits model: each finds the concept on the unerased model (so it can fail), and the
hardened removal lowers what it finds. Small settings (4 images, 8 denoising steps, few iterations): seconds."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import diffusers_unlearn as du
from diffusers_unlearn import attacks, digits
from diffusers_unlearn.attacks.base import generate_prompts
from diffusers_unlearn.digits import DigitsConceptScorer
from diffusers_unlearn.digits.attacks import attack_target
from diffusers_unlearn.digits.concepts import Concept
from diffusers_unlearn.methods.harden import HardenConfig, derive_embeddings

SETTINGS = attacks.AttackSettings(images=4, steps=8, progress=False)
FAST = {
    "token_search": {"iterations": 3, "candidates": 16, "samples": 4},
    "embedding": {"iterations": 40, "samples": 4},
    "mixture": {"iterations": 40, "samples": 4},
    "learned_token": {"iterations": 25, "samples": 4},
    "revival": {"steps": 10, "images_per_concept": 2},
}


@pytest.fixture(scope="module")
def world():
    torch.manual_seed(0)
    base = digits.load_pipeline()
    hardened = digits.load_pipeline()
    adapter = du.erase(hardened, **Concept(7).erase_kwargs(), harden=HardenConfig(rounds=2))
    hardened.load_unlearning(adapter)
    target = attack_target(Concept(7))
    target = dataclasses.replace(target, paraphrases=target.paraphrases[:6], templates=target.templates[:2])
    return base, hardened, adapter, target, DigitsConceptScorer()


@pytest.mark.parametrize("attack", ["paraphrase", "token_search", "learned_token", "revival"])
def test_attack_finds_concept_and_hardening_lowers_it(world, attack):
    base, hardened, _, target, scorer = world
    options = {attack: FAST.get(attack, {})}
    kwargs = {"attacks": [attack], "settings": SETTINGS, "options": options, "reference": base}
    unerased = attacks.run_attacks(base, target, scorer, **kwargs)[attack]
    erased = attacks.run_attacks(hardened, target, scorer, **kwargs)[attack]
    assert unerased.asr >= 0.75, unerased.per_prompt
    assert erased.asr < unerased.asr - 0.4, erased.per_prompt
    assert erased.images.shape[0] == erased.hits.shape[0] == len(erased.per_prompt) * SETTINGS.images


def test_masking_attack_finds_what_a_later_removal_uncovers(world):
    """Another digit in front of "a red seven": the untouched model draws "a green three a red seven" as a three;
    once green three is erased, as a seven (the concept the three hid); a removal of seven holds it, erased after
    green three too."""
    base, _, seven, target, scorer = world
    masked = f"a green three {target.prompt}"
    assert masked in [f"{m} {target.prompt}" for m in target.maskers]
    untouched = attacks.masking_attack(base, target, scorer, settings=SETTINGS)
    assert untouched.per_prompt[masked] <= 0.25 and untouched.asr >= 0.25  # bare words in front: often a seven
    uncovered = digits.load_pipeline()
    uncovered.load_unlearning(du.erase(uncovered, **Concept(3, "green").erase_kwargs()))
    assert attacks.masking_attack(uncovered, target, scorer, settings=SETTINGS).per_prompt[masked] >= 0.75
    both = digits.load_pipeline()
    both.load_unlearning(seven)
    both.load_unlearning(du.erase(both, **Concept(3, "green").erase_kwargs()))
    held = attacks.masking_attack(both, target, scorer, settings=SETTINGS)
    assert held.asr <= 0.1, held.per_prompt
    with pytest.raises(du.InvalidConceptError, match="maskers"):
        attacks.masking_attack(base, dataclasses.replace(target, maskers=()), scorer, settings=SETTINGS)


def test_embedding_attack_recovers_what_prompts_cannot(world):
    """The documented limit (docs/security.md): the removal holds for prompts, not against an attacker who
    optimises the text embedding itself."""
    base, hardened, _, target, scorer = world
    direct = attacks.direct_attack(hardened, target, scorer, settings=SETTINGS)
    result = attacks.embedding_attack(hardened, target, scorer, reference=base, settings=SETTINGS, **FAST["embedding"])
    assert direct.asr <= 0.25
    assert result.asr >= 0.75
    assert result.details["loss"] < result.details["loss_before"]


def test_mixture_attack_reaches_a_combination_from_the_prompts_its_removal_keeps(world):
    """ "a red seven" from per-token mixtures of "a red three", "a blue seven", ...: none of them shows a red seven,
    a mixture of them does (on the unerased model), with weights that sum to one; fewer than two kept prompts are
    refused."""
    base, _, _, _, scorer = world
    target = attack_target(Concept(7, "red"))
    kept = generate_prompts(base, list(target.kept), SETTINGS)
    assert attacks.judge(scorer, kept, target.check).mean() <= 0.1
    result = attacks.mixture_attack(base, target, scorer, reference=base, settings=SETTINGS, **FAST["mixture"])
    assert result.asr >= 0.75, result.details
    assert result.details["loss"] < result.details["loss_before"]
    assert sum(result.details["weights"].values()) == pytest.approx(1.0)
    with pytest.raises(du.InvalidArgumentError, match="kept"):
        attacks.mixture_attack(base, dataclasses.replace(target, kept=target.kept[:1]), scorer, reference=base)


def test_token_search_returns_a_typable_prompt(world):
    base, _, _, target, scorer = world
    result = attacks.token_search_attack(base, target, scorer, reference=base, settings=SETTINGS, iterations=1)
    assert len(result.details["token_ids"]) == 5
    assert not set(result.details["token_ids"]) & {base.tokenizer.convert_tokens_to_ids("seven</w>")}
    assert "seven" in result.details["prompt"]
    with pytest.raises(du.InvalidArgumentError, match="no room"):
        attacks.token_search_attack(base, target, scorer, reference=base, tokens=base.tokenizer.model_max_length)


def test_search_prefix_alone_puts_its_tokens_in_front_of_the_prompt(world):
    base, _, _, target, _ = world
    reference = attacks.Reference(base, target.prompt, 2, SETTINGS)
    seven = base.tokenizer("seven", add_special_tokens=False).input_ids
    found = attacks.search_prefix(base, target.prompt, reference, tokens=3, iterations=2, candidates=8, banned=seven)
    prompt = base.tokenizer(target.prompt, add_special_tokens=False).input_ids
    assert found.ids[1:4].tolist() == found.prefix.tolist() and found.ids[4 : 4 + len(prompt)].tolist() == prompt
    assert not set(found.prefix.tolist()) & set(seven)
    assert len(found.trace) == 3 and found.trace == sorted(found.trace, reverse=True)  # a swap is kept if it helps
    assert len(found.text(base.tokenizer).split()) >= 3


def test_revival_restores_the_pipeline(world):
    _, hardened, _, target, scorer = world
    before = {k: v.clone() for k, v in hardened.unet.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    reference = hardened(target.prompt, num_inference_steps=4, generator=generator, output_type="np").images
    attacks.revival_attack(hardened, target, scorer, reference=hardened, settings=SETTINGS, steps=2)
    after = hardened.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    generator = torch.Generator().manual_seed(0)
    again = hardened(target.prompt, num_inference_steps=4, generator=generator, output_type="np").images
    np.testing.assert_array_equal(reference, again)


def test_callable_scorer_and_target_checks(world):
    base, _, _, target, _ = world
    result = attacks.direct_attack(base, target, lambda images: np.ones(len(images), bool), settings=SETTINGS)
    assert result.asr == 1.0
    with pytest.raises(ValueError, match="names none"):
        attacks.AttackTarget("seven", "a red three", {"digit": 7}, names=("seven",))
    with pytest.raises(ValueError, match="Unknown attacks"):
        attacks.run_attacks(base, target, "digits", attacks=["nope"])
    with pytest.raises(ValueError, match="reference"):
        attacks.run_attacks(base, target, "digits", attacks=["embedding"])


def test_hardening_closes_the_closed_form_preimage(world):
    """Each round makes the derived embedding reproduce less of the concept; the removal still erases."""
    _, _, adapter, _, _ = world
    leak = adapter.metadata["figures"]["harden_leak"]
    assert leak[-1] > leak[0]
    assert adapter.metadata["figures"]["forget_residual"] < 0.5
    remap = torch.zeros(4, 4, dtype=torch.float64)  # no edit: the derived embedding is the forget vector itself
    forget = torch.randn(3, 4, dtype=torch.float64)
    derived = derive_embeddings(remap, torch.eye(4, dtype=torch.float64), forget, ridge=1e-9)
    torch.testing.assert_close(derived, forget)


def test_cli_attack(world, tmp_path, capsys):
    from diffusers_unlearn.cli import ATTACK_NAMES, main

    assert ATTACK_NAMES == attacks.ATTACKS
    _, _, adapter, _, _ = world
    adapter.save_pretrained(tmp_path / "no-seven")
    argv = ["attack", "--removal", str(tmp_path / "no-seven"), "--concept", "seven", "--attack", "direct"]
    assert main([*argv, "--images", "2", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["asr"]) == {"direct"} and 0.0 <= out["asr"]["direct"] <= 1.0
    assert main(["attack", "--model", "nope", "--removal", "x", "--concept", "seven"]) == 1


def test_a_scorer_by_world_name():
    from diffusers_unlearn import glyphs
    from diffusers_unlearn.errors import InvalidArgumentError

    assert isinstance(attacks.resolve_scorer("digits"), DigitsConceptScorer)
    assert isinstance(attacks.resolve_scorer("glyphs"), glyphs.GlyphsConceptScorer)
    with pytest.raises(InvalidArgumentError, match="digits"):
        attacks.resolve_scorer("cats")


@pytest.fixture(scope="module")
def tiny_chain():
    """A tiny pipeline with two closed-form removals, the second made on top of the first, and its untouched twin."""
    from conftest import make_sd_pipeline

    from diffusers_unlearn import targets

    separation, targets.MIN_SEPARATION = targets.MIN_SEPARATION, 0.0  # random model: see conftest.py
    try:
        base, pipe = make_sd_pipeline(), make_sd_pipeline()
        cat = du.erase(pipe, "cat", neighbors=["dog", "tree"])
        pipe.load_unlearning(cat)
        dog = du.erase(pipe, "dog", neighbors=["tree", "rabbit"])
        pipe.load_unlearning(dog)
    finally:
        targets.MIN_SEPARATION = separation
    return base, pipe, cat, dog


def _embeds(pipe, prompt: str) -> torch.Tensor:
    from diffusers_unlearn.attacks.base import encode_ids, token_ids

    with torch.no_grad():
        return encode_ids(pipe, token_ids(pipe, prompt)[None]).float()


def _noise(pipe, embeds: torch.Tensor) -> torch.Tensor:
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.unet(latents, torch.tensor([100, 700]), embeds.expand(2, -1, -1)).sample


def test_inverse_embedding_undoes_the_closed_form_chain(tiny_chain):
    """`c' = M^-1 c` makes the edited model compute what the untouched one computes for `c` (why an unbounded
    embedding attack always wins against a K/V edit); `c` itself does not."""
    base, pipe, cat, dog = tiny_chain
    embeds = _embeds(base, "a photo of a cat")
    wanted = _noise(base, embeds)
    inverse = attacks.inverse_embedding(pipe, embeds)
    assert (_noise(pipe, embeds) - wanted).abs().max() > 1e-2  # the removals change the prediction
    torch.testing.assert_close(_noise(pipe, inverse.embeds), wanted, atol=1e-5, rtol=1e-5)
    # the removals themselves, in load order, give the same map; the wrong order does not
    torch.testing.assert_close(attacks.inverse_embedding([cat, dog], embeds).embeds, inverse.embeds)
    assert not torch.allclose(attacks.inverse_embedding([dog, cat], embeds).embeds, inverse.embeds, atol=1e-4)
    fused = make_fused(base, [cat, dog])
    torch.testing.assert_close(
        _noise(fused, attacks.inverse_embedding(fused, embeds).embeds), wanted, atol=1e-5, rtol=1e-5
    )


def make_fused(base, removals):
    import copy

    pipe = copy.deepcopy(base)
    pipe.load_unlearning(removals, mode="fused")
    return pipe


def test_inversion_distance_is_large_at_the_concept_only(tiny_chain):
    base, pipe, cat, _ = tiny_chain
    concept = attacks.inversion_distance(pipe, "a photo of a cat", ["cat"])
    assert concept["at_concept"] > 0.1 and concept["needed"] >= concept["at_concept"]
    untouched = attacks.inversion_distance(base, "a photo of a cat", ["cat"])  # no removal: M = I
    assert untouched["needed"] < 1e-6
    only_cat = make_fused(base, [cat])
    on_cat = attacks.inversion_distance(only_cat, "a photo of a cat", ["cat"])
    protected = attacks.inversion_distance(only_cat, "a photo of a tree", ["cat"])  # a neighbour it keeps
    assert protected["whole"] < 0.5 * on_cat["whole"]


def test_inverse_embedding_refuses_what_it_cannot_invert(tiny_chain):
    base, _, cat, dog = tiny_chain
    embeds = _embeds(base, "a cat")
    distilled = dataclasses.replace(cat, probes={k: v for k, v in cat.probes.items() if not k.startswith("remap")})
    with pytest.raises(du.InvalidArgumentError, match="no remap"):
        attacks.inverse_embedding([distilled], embeds)
    q = torch.linalg.qr(cat.probes["remap_up"])[0]  # I - Q Q^T projects span(Q) out: no inverse
    singular = dataclasses.replace(cat, probes=cat.probes | {"remap_up": -q, "remap_down": q.T.contiguous()})
    with pytest.raises(du.InvalidArgumentError, match="singular"):
        attacks.inverse_embedding([singular], embeds)
    # two removals both made on the untouched model do not compose into (I + G_1)(I + G_2)
    with pytest.raises(du.InvalidArgumentError, match="not made one on top of the other"):
        attacks.inverse_embedding(make_fused(base, [cat, _dog_on_base(base)]), embeds)


def _dog_on_base(base):
    import copy

    from diffusers_unlearn import targets

    separation, targets.MIN_SEPARATION = targets.MIN_SEPARATION, 0.0
    try:
        return du.erase(copy.deepcopy(base), "dog", neighbors=["tree", "rabbit"])
    finally:
        targets.MIN_SEPARATION = separation


def test_project_to_budget_stays_in_the_ball():
    start = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(0))
    moved = start + torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    projected = attacks.project_to_budget(moved, start, 0.1)
    ratio = (projected - start).norm(dim=-1) / start.norm(dim=-1)
    assert ratio.max() <= 0.1 + 1e-6
    near = start + 0.01 * (moved - start) / (moved - start).norm(dim=-1, keepdim=True) * start.norm(
        dim=-1, keepdim=True
    )
    torch.testing.assert_close(attacks.project_to_budget(near, start, 0.1), near)  # inside: unchanged


def test_bounded_embedding_attack_stays_within_its_budget(world):
    base, hardened, _, target, scorer = world
    options = {"iterations": 10, "samples": 2, "batch": 2}
    bounded = attacks.embedding_attack(
        hardened, target, scorer, reference=base, settings=SETTINGS, max_relative_norm=0.02, **options
    )
    free = attacks.embedding_attack(hardened, target, scorer, reference=base, settings=SETTINGS, **options)
    assert bounded.details["max_token_change"] <= 0.02 + 1e-5
    assert free.details["max_token_change"] > 0.05
    assert bounded.details["loss"] > free.details["loss"]
    with pytest.raises(du.InvalidArgumentError, match="max_relative_norm"):
        attacks.embedding_attack(hardened, target, scorer, reference=base, max_relative_norm=0)
