"""`erase`: the closed-form removal's mechanics on tiny SD and SDXL pipelines.

Random tiny models have degenerate text embeddings, so these tests check the mechanics (targets reached,
protection working, stacking), not image-level quality: that is measured on the digits model.
"""

import warnings

import pytest
import torch
from conftest import generate, make_sd_pipeline, make_sdxl_pipeline, noise_predictions

import diffusers_unlearn as du
from diffusers_unlearn import digits, erasure
from diffusers_unlearn.constraints import protect_groups
from diffusers_unlearn.distance import PromptBank, score_distances
from diffusers_unlearn.families import family_of
from diffusers_unlearn.layers import current_weight, edited_layers
from diffusers_unlearn.methods.harden import prefixed, rephrased

pytestmark = pytest.mark.random_targets  # see conftest.py

NEIGHBORS = ["dog", "tree", "rabbit"]
PROTECTED = ["", "a photo of a dog", "a painting of a tree", "dog", "a drawing of a rabbit"]
PIPELINES = {"sd": make_sd_pipeline, "sdxl": make_sdxl_pipeline}


def kv_outputs(pipe, prompts, deltas=None):
    """Key / value outputs of every edited layer, `(layers, N, L, out)` stacked per layer in a list."""
    family = family_of(pipe)
    embeds, _ = family.encode(pipe, prompts)
    outputs = []
    for name, module in edited_layers(pipe.unet, family).items():
        weight = current_weight(module) + (deltas[name] if deltas else 0)
        outputs.append(embeds @ weight.T)
    return outputs


def relative_change(pipe, adapter, prompts):
    before = kv_outputs(pipe, prompts)
    after = kv_outputs(pipe, prompts, {n: adapter.delta(n) for n in adapter.layer_names if "attn2" in n})
    num = sum((a - b).square().sum(dim=(1, 2)) for a, b in zip(after, before, strict=True))
    den = sum(b.square().sum(dim=(1, 2)) for b in before)
    return (num / den).sqrt()


def forget_residuals(pipe, adapter, concept):
    """Per forget prompt: remaining distance to its target after the edit, over the distance before."""
    family = family_of(pipe)
    bank = PromptBank(pipe, family)
    layers = edited_layers(pipe.unet, family)
    residuals = []
    for record in adapter.metadata["targets"]:
        forget, target = bank.aligned(record["context"].replace("{}", concept).strip(), record["target"])
        gap = left = 0.0
        for name, module in layers.items():
            weight = current_weight(module)
            gap += ((forget - target) @ weight.T).square().sum()
            left += (forget @ (weight + adapter.delta(name)).T - target @ weight.T).square().sum()
        residuals.append(float((left / gap).sqrt()))
    return torch.tensor(residuals)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_forget_moves_to_targets_and_protection_is_local(family):
    pipe = PIPELINES[family]()
    protected = du.erase(pipe, "cat", neighbors=NEIGHBORS)
    unprotected = du.erase(pipe, "cat", neighbors=NEIGHBORS, config=du.ClosedFormConfig(lambda_protect=0.0))

    residuals = forget_residuals(pipe, protected, "cat")
    assert (residuals < 0.8).all(), residuals  # every forget prompt moves toward its target
    progress = 1 - residuals.mean()

    drift = relative_change(pipe, protected, PROTECTED)
    drift_unprotected = relative_change(pipe, unprotected, PROTECTED)
    assert drift.max() <= progress / 5, (drift, progress)
    assert drift.mean() * 2.5 <= drift_unprotected.mean(), (drift, drift_unprotected)
    # the empty prompt (classifier-free guidance) is always protected
    assert "" in protected.metadata["protected_prompts"]


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_second_removal_keeps_the_first_removed(family):
    pipe = PIPELINES[family]()
    first = du.erase(pipe, "cat", neighbors=NEIGHBORS)
    pipe.load_unlearning(first)
    first_prompts = [r["context"].replace("{}", "cat").strip() for r in first.metadata["targets"]]
    after_first = torch.cat([o.flatten() for o in kv_outputs(pipe, first_prompts)])

    second = du.erase(pipe, "dog", neighbors=["cat", "horse"])
    assert second.metadata["parents"] == [{"name": "no-cat", "adapter_id": first.metadata["adapter_id"]}]
    pipe.load_unlearning(second)
    after_both = torch.cat([o.flatten() for o in kv_outputs(pipe, first_prompts)])
    # the second removal barely moves what the first one set: "cat" stays mapped where it was
    undo = (after_both - after_first).norm() / after_first.norm()
    first_edit = relative_change(pipe, first, first_prompts).mean()
    assert undo < 0.25 * first_edit, (undo, first_edit)
    assert [u.name for u in pipe.unlearning] == ["no-cat", "no-dog"]
    assert all(u.verified for u in pipe.unlearning)


def test_targets_are_chosen_per_context_from_candidates(sd_pipe):
    adapter = du.erase(
        sd_pipe, "cat", aliases=["pikachu"], mapping_candidates=["a dog", "a rabbit"], category="an animal"
    )
    records = adapter.metadata["targets"]
    assert len(records) == len(du.DEFAULT_TEMPLATES)
    for record in records:
        options = [record["context"].replace("{}", c).strip() for c in ("a dog", "a rabbit", "an animal", "")]
        assert record["target"] in [" ".join(o.split()) for o in options]
    assert adapter.metadata["aliases"] == ["pikachu"]
    assert "a photo of pikachu" in adapter.metadata["forget_prompts"]


def test_user_prompts_and_score_distance(sd_pipe):
    prompts = ["a photo of a cat on a hill", "a cat in the city"]
    adapter = du.erase(sd_pipe, "cat", prompts=prompts, mapping_candidates=["dog"], distance="score")
    contexts = [r["context"] for r in adapter.metadata["targets"]]
    assert contexts == ["a photo of a {} on a hill", "a {} in the city"]
    assert adapter.metadata["hyperparameters"]["distance"] == "score"


def test_neighbors_ranked_top_k_and_mined(sd_pipe):
    adapter = du.erase(sd_pipe, "cat", neighbors=["dog", "tree", "rabbit", "car"], protect_top_k=2, mine_neighbors=2)
    ranking = adapter.metadata["protected_neighbors"]
    assert len(ranking) == 2
    assert ranking[0]["distance"] <= ranking[1]["distance"]
    mined = du.erase(sd_pipe, "cat", mine_neighbors=3).metadata["protected_neighbors"]
    assert len(mined) == 3 and all(m["neighbor"].isalpha() for m in mined)


def test_rank_and_lora_alpha(sd_pipe):
    adapter = du.erase(sd_pipe, "cat", config=du.ClosedFormConfig(rank=4))
    assert adapter.rank == 4 and adapter.lora_config()["lora_alpha"] == 4
    assert 0 < adapter.metadata["figures"]["rank_energy"] <= 1
    for layer in adapter.layer_names:
        a, b = adapter.factors(layer)
        assert a.shape[0] == 4 and b.shape[1] == 4


def test_sdxl_edits_pooled_path(sdxl_pipe):
    """SDXL also conditions on the pooled text embedding; leaving it unedited lets the concept leak back."""
    adapter = du.erase(sdxl_pipe, "cat", neighbors=NEIGHBORS)
    assert "add_embedding.linear_1" in adapter.layer_names
    assert adapter.metadata["figures"]["pooled_forget_residual"] < 0.8
    kv_only = du.UnlearningAdapter(
        {k: v for k, v in adapter.lora_weights.items() if "add_embedding" not in k},
        {**adapter.metadata, "name": "kv-only"},
    )
    pairs = [(r["context"].replace("{}", "cat").strip(), r["target"]) for r in adapter.metadata["targets"]]

    def gap_to_targets():  # noise-prediction distance from each forget prompt to its target
        return score_distances(PromptBank(sdxl_pipe, family_of(sdxl_pipe)), pairs, samples=8).mean()

    before = gap_to_targets()
    sdxl_pipe.load_unlearning(kv_only)
    after_kv = gap_to_targets()
    sdxl_pipe.unload_unlearning()
    sdxl_pipe.load_unlearning(adapter)
    after_both = gap_to_targets()
    assert after_kv < before and after_both < 0.75 * after_kv, (before, after_kv, after_both)


def test_redacted_removal_hides_the_concept(sd_pipe, tmp_path):
    adapter = du.erase(sd_pipe, "pikachu", aliases=["cat"], redact=True)
    assert adapter.concept is None and adapter.name.startswith("removal-")
    folder = adapter.save_pretrained(tmp_path / "r")
    for path in folder.iterdir():
        assert b"pikachu" not in path.read_bytes().lower(), path.name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concept": "  "}, "empty"),
        ({"concept": "café"}, "does not know"),
        ({"concept": "cat", "aliases": [" "]}, "empty"),
        ({"concept": "cat", "prompts": ["a photo of a dog"]}, "mentions neither"),
        ({"concept": "cat", "prompts": ["a cat " + "and a dog " * 12]}, "tokens long"),
        ({"concept": "cat", "neighbors": ["dog", "Cat"]}, "both erased and protected"),
    ],
)
def test_bad_input_raises_clearly_and_changes_nothing(sd_pipe, kwargs, message):
    before = generate(sd_pipe, "a photo of a cat")
    with pytest.raises(du.InvalidConceptError, match=message):
        du.erase(sd_pipe, **kwargs)
    assert (generate(sd_pipe, "a photo of a cat") == before).all()
    assert sd_pipe.unlearning == ()


def test_unsupported_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    with pytest.raises(du.UnsupportedPipelineError, match="StableDiffusionPipeline"):
        du.erase(pipe, "cat")


def test_anchor_maps_every_prompt_to_one_target(sd_pipe):
    adapter = du.erase(sd_pipe, "cat", anchor="")
    assert {r["target"] for r in adapter.metadata["targets"]} == {""}


@pytest.mark.long
def test_thousands_of_neighbors_are_processed_in_bounded_memory(sd_pipe, monkeypatch):
    """A small budget for the prompt bank gives the same removal as an unbounded one, and the bank never holds
    more than its budget: embeddings are dropped and encoded again instead of piling up."""
    vocabulary = sorted(
        w.removesuffix("</w>") for w in sd_pipe.tokenizer.get_vocab() if w.endswith("</w>") and w[:-4].isalpha()
    )
    words = [w for w in vocabulary if len(w) >= 2 and w != "cat"][:40]
    neighbors = [f"{a} {b}" for a in words for b in words if a != b][:400]  # x 8 contexts: 3,200 prompts
    banks = []

    class RecordedBank(PromptBank):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            banks.append(self)

    monkeypatch.setattr(erasure, "PromptBank", RecordedBank)
    unbounded = du.erase(sd_pipe, "cat", neighbors=neighbors)
    one_prompt = banks[0].embeds("cat").numel() * 4
    monkeypatch.setattr(RecordedBank, "max_bytes_default", 40 * one_prompt)
    bounded = du.erase(sd_pipe, "cat", neighbors=neighbors)

    assert len(bounded.metadata["protected_neighbors"]) == len(neighbors)
    assert banks[0].encoded == len(banks[0]) > 8 * len(neighbors)  # unbounded: everything kept, encoded once
    assert banks[1]._embeds.peak_bytes <= 40 * one_prompt < banks[0]._embeds.peak_bytes / 50
    assert banks[1].encoded > banks[0].encoded  # the price: encoding again
    for key, value in unbounded.lora_weights.items():
        torch.testing.assert_close(bounded.lora_weights[key], value, rtol=1e-4, atol=1e-6)

    # the score distance's noise predictions are bounded the same way
    few = neighbors[:24]
    monkeypatch.setattr(RecordedBank, "max_bytes_default", 10 * one_prompt)
    small = du.erase(sd_pipe, "cat", neighbors=few, distance="score", distance_samples=4)
    predictions = banks[2].predictions
    assert predictions.peak_bytes <= 10 * one_prompt and len(predictions) < 8 * len(few)
    monkeypatch.setattr(RecordedBank, "max_bytes_default", PromptBank.max_bytes_default)
    large = du.erase(sd_pipe, "cat", neighbors=few, distance="score", distance_samples=4)
    ranked = [(r["neighbor"], r["distance"]) for r in small.metadata["protected_neighbors"]]
    expected = [(r["neighbor"], r["distance"]) for r in large.metadata["protected_neighbors"]]
    assert [n for n, _ in ranked] == [n for n, _ in expected]
    assert [d for _, d in ranked] == pytest.approx([d for _, d in expected], rel=1e-5)


def test_embeddings_a_protected_prompt_shares_are_left_out_of_the_forget_term(sd_pipe):
    """CLIP is causal: "a cat in" has the same embeddings in "a cat in red" and "a cat in blue". Erasing the first
    while protecting the second cannot move them and keep them, so only "red" and what follows are edited."""
    bank = PromptBank(sd_pipe, family_of(sd_pipe))
    forget, target, protected = "a cat in red", "a dog in red", "a cat in blue"
    all_rows, _ = bank.aligned(forget, target)
    rows, targets = bank.aligned(forget, target, fixed=bank.prefix_set([protected]))
    assert rows.shape[0] == all_rows.shape[0] - 2  # "cat" and "in" left out
    assert torch.equal(rows, all_rows[2:]) and torch.equal(rows[0], bank.embeds(forget)[4])  # from "red" on
    # the forget prompt itself protected pins all its tokens: its padding (which sees the whole prompt) remains
    padding, _ = bank.aligned(forget, target, fixed=bank.prefix_set([forget]))
    assert torch.equal(padding, all_rows[-(bank.embeds(forget).shape[0] - len(bank.ids(forget)[0])) :])
    # padding sees the whole prompt: never pinned by another prompt
    keys = family_of(sd_pipe).prefix_keys(sd_pipe, bank.ids(forget))
    assert keys[len(bank.ids(forget)[0])] is None and keys[1] == (0, tuple(bank.ids(forget)[0][:2]))


def test_an_erase_holds_the_protected_prompt_that_shares_the_forget_prompts_prefix(sd_pipe):
    """The shared embeddings ("a cat in") are not pulled toward the target, so the protected prompt that shares
    them keeps them far better than the forget prompt's own distinct embeddings move."""
    adapter = du.erase(
        sd_pipe, "cat", prompts=["a cat in red"], mapping_candidates=["dog"], preserve=["a cat in blue"]
    )
    bank = PromptBank(sd_pipe, family_of(sd_pipe))
    edit = (adapter.probes["remap_up"] @ adapter.probes["remap_down"]).double()
    embeds = bank.embeds("a cat in red").double()
    shared, distinct = embeds[2:4], embeds[4:6]  # "cat in" (pinned by "a cat in blue") / "red <eos>"
    moved = lambda rows: (rows @ edit.T).norm(dim=1)  # noqa: E731
    assert moved(shared).max() < 0.4 * moved(distinct).min()  # 0.17 vs 0.78 (0.69 vs 0.78 without the rule)


def test_a_preserve_group_of_its_own_is_not_drowned_by_a_large_one(sd_pipe, tmp_path):
    """`preserve` as a mapping: each group weighs as much as the anchors or the neighbours, so a prompt in a group
    of its own moves about as little as when it is the only one preserved, and far less than when it is one of
    17 preserved prompts; the groups are recorded, and a re-solve (`protect_groups`) rebuilds them."""
    background = [f"a {c} {t}" for c in ("red", "blue", "green", "yellow") for t in ("tree", "house", "car", "bird")]
    kept = "a photo of rabbit"
    bank = PromptBank(sd_pipe, family_of(sd_pipe))

    def erased(preserve) -> tuple[du.UnlearningAdapter, float]:
        adapter = du.erase(
            sd_pipe, "cat", templates=["a photo of {}", "a {} outside"], mapping_candidates=["dog"], preserve=preserve
        )
        edit = (adapter.probes["remap_up"] @ adapter.probes["remap_down"]).double()
        return adapter, float((bank.embeds(kept).double() @ edit.T).norm())

    _, alone = erased([kept])
    _, drowned = erased([kept, *background])
    grouped, own_group = erased({"kept": [kept], "background": background})
    assert own_group < 1.2 * alone and own_group < 0.75 * drowned  # 1.24 / 1.18 / 2.02
    assert grouped.metadata["preserve"] == [kept, *background]
    assert grouped.metadata["preserve_groups"] == {"kept": [kept], "background": background}
    grouped.save_pretrained(tmp_path / "grouped")
    groups = protect_groups(du.UnlearningAdapter.from_pretrained(tmp_path / "grouped"))
    assert groups["preserve/kept"] == [kept] and groups["preserve/background"] == background
    assert "preserve" not in groups
    for wrong in ("a photo of rabbit", {"kept": "a photo of rabbit"}):  # a text, not a list: refused up front
        with pytest.raises(du.InvalidTypeError, match="preserve"):
            du.erase(sd_pipe, "cat", templates=["a photo of {}"], preserve=wrong)


def test_phrasings_teach_the_removal_other_word_orders(sd_pipe):
    """`HardenConfig(phrasings=k)`: each forget prompt's words in k other orders (commas between some) join the
    forget set with its target, so the removal reaches phrasings its templates never used."""
    tokenizer = sd_pipe.tokenizer
    pairs = [("a photo of cat", "a photo of dog")]
    phrasings = rephrased(pairs, 3, tokenizer, exclude={"cat a photo of"}, seed=0)
    assert phrasings == rephrased(pairs, 3, tokenizer, exclude={"cat a photo of"}, seed=0)  # seeded
    assert len(phrasings) == 3 and {t for _, t in phrasings} == {"a photo of dog"}
    for text, _ in phrasings:  # the same words in another order, none a prompt already taken
        assert sorted(text.replace(",", "").split()) == ["a", "cat", "of", "photo"]
        assert text not in ("a photo of cat", "cat a photo of")
    assert rephrased([("cat", "dog")], 3, tokenizer) == []  # one word has no other order

    def moved_to_target(phrasings_count: int) -> tuple[float, float]:
        harden = du.HardenConfig(rounds=1, phrasings=phrasings_count)
        adapter = du.erase(sd_pipe, "cat", templates=["a photo of {}"], neighbors=["dog"], harden=harden)
        target = adapter.metadata["targets"][0]["target"]
        trained = [f for f, _ in rephrased([("a photo of cat", target)], 3, tokenizer, seed=0)]  # erase's seed, 0
        before = noise_predictions(sd_pipe, [*trained, target, "a photo of dog"])
        sd_pipe.load_unlearning(adapter)
        after = noise_predictions(sd_pipe, [*trained, target, "a photo of dog"])
        sd_pipe.unload_unlearning()
        left = [float((after[i] - before[-2]).norm() / (before[i] - before[-2]).norm()) for i in range(3)]
        return sum(left) / 3, float((after[-1] - before[-1]).norm() / before[-1].norm())

    (plain, plain_dog), (phrased, phrased_dog) = moved_to_target(0), moved_to_target(3)
    # what it must move: the phrasings, much nearer their target (measured: 0.76 -> 0.45 of the way left)
    assert phrased < 0.8 * plain
    # what it must hold: the neighbour (measured: moved 1.1% -> 1.9%)
    assert phrased_dog < max(0.05, 3 * plain_dog)


def test_prefixes_teach_the_removal_the_prompt_behind_other_tokens(sd_pipe):
    """`HardenConfig(prefixes=k)`: k copies of each forget prompt behind random vocabulary tokens join the forget
    set, the same tokens in front of the target: what a discrete token search writes in front of the prompt.
    Whether that carries over to the prefixes an attack finds is measured by benchmarks/robustness.py."""
    tokenizer = sd_pipe.tokenizer
    pairs = [("a photo of cat", "a photo of dog")]
    made = prefixed(pairs, 4, tokenizer, ["cat"], tokens=3, seed=0)
    assert made == prefixed(pairs, 4, tokenizer, ["cat"], tokens=3, seed=0) and len(made) == 4  # seeded
    cat = set(tokenizer("cat", add_special_tokens=False).input_ids)
    for text, target in made:  # the same tokens in front of prompt and target, never the concept's
        prefix = text.removesuffix(" a photo of cat")
        assert target == f"{prefix} a photo of dog" and not cat & set(tokenizer(prefix).input_ids)
    long = prefixed([("a photo of cat " * 15, "x")], 1, tokenizer, ["cat"], tokens=3)
    assert all(len(tokenizer(text).input_ids) <= tokenizer.model_max_length for text, _ in long)  # cut to fit

    sizes = {}
    for prefixes in (0, 4):  # every forget pair gets its prefixed copies (here one pair: "a photo of cat")
        harden = du.HardenConfig(rounds=1, prefixes=prefixes, prefix_tokens=3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            adapter = du.erase(sd_pipe, "cat", templates=["a photo of {}"], neighbors=["dog"], harden=harden)
        said = [str(w.message) for w in caught if issubclass(w.category, du.WeakRemovalWarning)]
        assert any("hardened with phrasings or prefixes in closed form" in m for m in said) == bool(prefixes)
        sizes[prefixes] = adapter.metadata["figures"]["forget_pairs"]
    assert sizes == {0: 1, 4: 5}


def test_prefix_words_are_the_only_words_put_in_front():
    """`HardenConfig(prefix_words=...)`: the prefixes are drawn from the given words, never the concept's own;
    a word list without prefixes to draw is refused."""
    from transformers import CLIPTokenizer

    from diffusers_unlearn import glyphs

    tokenizer = CLIPTokenizer.from_pretrained(glyphs.MODEL_DIR / "tokenizer")
    pairs = [("the red letter q in serif", "the red letter g in serif")]
    words = ("roman", "italic", "serif", "q")
    made = prefixed(pairs, 6, tokenizer, ["q in serif"], tokens=2, seed=1, words=words)
    assert made and made == prefixed(pairs, 6, tokenizer, ["q in serif"], tokens=2, seed=1, words=words)
    seen = set()
    for text, target in made:
        prefix = text.removesuffix(" the red letter q in serif")
        assert target == f"{prefix} the red letter g in serif"
        seen.update(prefix.split())
    assert seen <= {"roman", "italic"} and seen  # drawn from the words, the concept's own left out
    with pytest.raises(du.InvalidArgumentError, match="prefixes"):
        du.HardenConfig(prefix_words=("roman",))
    with pytest.raises(du.InvalidArgumentError, match="list of words"):
        du.HardenConfig(prefixes=1, prefix_words="roman")
    with pytest.raises(du.InvalidArgumentError, match="No prefix word"):
        prefixed(pairs, 1, tokenizer, ["q"], words=("q",))


def test_prefixes_never_reopen_an_earlier_removal():
    """A prefix that makes a hardened removal's prompt or target ask for an earlier removal's concept is drawn
    again: erasing "red" after "blue three", "blue thin a red three" -> "blue thin a green three" would teach the
    chain to draw blue threes (the hardened digits chains drew blue three again in half its images)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(digits.MODEL_DIR / "tokenizer")
    pairs = [("a red three", "a green three"), ("the number three in red", "the number three in yellow")]
    words, asks = ("blue", "yellow", "thin", "a"), lambda prompt: {"blue", "three"} <= set(prompt.split())
    free = prefixed(pairs, 8, tokenizer, ["red"], tokens=2, seed=0, words=words)
    kept = prefixed(pairs, 8, tokenizer, ["red"], tokens=2, seed=0, words=words, avoid=asks)
    assert any(asks(text) for text, _ in free)  # blue drawn in front of a three, without `avoid`
    assert not any(asks(text) or asks(target) for text, target in kept) and len(kept) >= len(free) - 2

    pipe = make_sd_pipeline()
    harden = du.HardenConfig(rounds=0, prefixes=4, prefix_words=("cat", "big", "small"))
    dog = {"templates": ["a photo of {}"], "neighbors": ["bird"], "harden": harden}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", du.WeakRemovalWarning)  # the closed form hardened with prefixes
        alone = du.erase(pipe, "dog", **dog).metadata["hardened_prompts"]
        pipe.load_unlearning(du.erase(pipe, "cat", templates=["a photo of {}"], neighbors=["bird"]))
        after_cat = du.erase(pipe, "dog", **dog).metadata["hardened_prompts"]
    assert any("cat" in p.split() for p in alone) and after_cat  # "cat" drawn, until "cat" is erased
    assert not any("cat" in p.split() for p in after_cat)


def test_prefixes_never_make_the_target_ask_for_the_concept():
    """With `asks`, a prefix that makes the target ask for this removal's concept is drawn again: erasing serif Q
    (by its style word, in the contexts of q), "q the red letter g in serif" would train toward a serif q."""
    from transformers import CLIPTokenizer

    from diffusers_unlearn import glyphs

    tokenizer = CLIPTokenizer.from_pretrained(glyphs.MODEL_DIR / "tokenizer")
    pairs = [("the red letter q in serif", "the red letter g in serif"), ("serif q", "serif g")]
    words, asks = ("q", "seven", "a", "roman"), lambda prompt: {"q", "serif"} <= set(prompt.split())
    free = prefixed(pairs, 8, tokenizer, ["serif"], tokens=2, seed=0, words=words)
    kept = prefixed(pairs, 8, tokenizer, ["serif"], tokens=2, seed=0, words=words, asks=asks)
    assert any(asks(target) for _, target in free)  # q drawn in front, without `asks`
    assert not any(asks(target) for _, target in kept) and len(kept) >= len(free) - 2


def test_figures_split_a_removals_time_between_encoders_and_denoiser():
    """The target check and the effect figures call the denoiser: their time is recorded apart from the encoding."""
    pipe = make_sd_pipeline()
    figures = du.erase(pipe, "cat", neighbors=["dog"]).metadata["figures"]
    assert figures["predict_seconds"] > 0 and figures["encode_seconds"] > 0
    assert figures["predict_seconds"] + figures["encode_seconds"] <= figures["seconds"]
