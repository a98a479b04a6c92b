"""The embedded glyphs model: shipped pipeline, vocabulary, concepts, scorer protocol, a short generation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_unlearn import glyphs
from diffusers_unlearn.errors import InvalidArgumentError
from diffusers_unlearn.evaluation import AttributeConceptScorer, ConceptScorer
from diffusers_unlearn.glyphs import GlyphsConceptScorer
from diffusers_unlearn.glyphs.concepts import Concept, cell_probe, general_cells, near_styles
from diffusers_unlearn.glyphs.data import TEMPLATES, render_glyphs, vocabulary_words


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # on a loaded 2-core machine two torch threads made a 5-step generation 50 s instead of 0.7 s
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipe():
    return glyphs.load_pipeline()


@pytest.fixture(scope="module")
def scorer():
    return glyphs.load_scorer()


def test_pipeline_loads_offline(pipe):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.text_encoder.config.hidden_size >= 256
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == glyphs.IMAGE_SIZE == 32


def test_shipped_size_under_25mb():
    root = Path(glyphs.__file__).parent
    files = [p for folder in ("model", "scorer") for p in (root / folder).rglob("*") if p.is_file()]
    assert not any(p.suffix == ".pt" or "vae_trained" in p.parts for p in files)  # no training state shipped
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20


def test_world_size_and_vocabulary(pipe):
    assert len(glyphs.CHARACTERS) >= 40 and len(glyphs.STYLES) >= 8 and len(glyphs.COLOURS) >= 8
    assert len(glyphs.BACKGROUNDS) >= 2
    assert not set(glyphs.HELD_OUT_TEMPLATES) & set(TEMPLATES)
    for word in vocabulary_words():
        assert len(pipe.tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    assert glyphs.prompt("Q", "red", "serif") == "the red letter q in serif"
    with pytest.raises(ValueError):
        glyphs.prompt("q")


@pytest.fixture(scope="module")
def held_out():
    return render_glyphs(variants=1, seed=7)  # every (character, style), jitter never seen in training


def test_scorer_on_held_out_renders(scorer, held_out):
    data = held_out
    pick = torch.arange(0, len(data.masks), 5)
    colour, background = pick % len(glyphs.COLOURS), (pick // 3) % len(glyphs.BACKGROUNDS)
    images = data.compose(pick, colour, background).permute(0, 2, 3, 1).numpy()
    out = scorer(images)
    assert (out.labels["char"] == data.char[pick].numpy()).mean() >= 0.9
    assert (out.labels["colour"] == colour.numpy()).mean() >= 0.95
    assert (out.labels["background"] == background.numpy()).mean() >= 0.95
    assert (out.labels["style"] == data.style[pick].numpy()).mean() >= 0.7
    names = list(glyphs.STYLES)
    pairs = zip(data.char[pick].tolist(), data.style[pick].tolist(), strict=True)
    checks = [{"char": glyphs.CHARACTERS[c], "style": names[s]} for c, s in pairs]
    assert GlyphsConceptScorer(scorer).shows(images, checks).mean() >= 0.7  # the conjunction of both heads


def test_vae_keeps_what_the_scorer_reads(pipe, scorer, held_out):
    from diffusers_unlearn.glyphs.data import GlyphData
    from diffusers_unlearn.glyphs.report import vae_reconstruction

    data = held_out
    pick = torch.arange(0, len(data.masks), 11)  # 30 of the 328 (character, style) masks, x 16 colour/background
    acc = vae_reconstruction(pipe, scorer, GlyphData(data.masks[pick], data.char[pick], data.style[pick]))
    assert acc["n"] == 16 * len(pick)
    # the shipped VAE (1500 steps) measured 99.8 / 95.8 / 99.3% on the full held-out set; the first one (600 steps)
    # lost style and colour (86.1 / 93.1%), which capped every generated image below the bars
    assert acc["char"] >= 0.95 and acc["colour"] >= 0.97 and acc["style"] >= 0.85


def test_conjunction_protocol():
    predicted = {"char": ["Q", "Q", "O"], "style": ["serif", "sans", "serif"]}
    scorer = AttributeConceptScorer(lambda images: predicted)
    assert isinstance(scorer, ConceptScorer)
    images = np.zeros((3, 32, 32, 3), np.float32)
    serif_q = Concept("Q", "serif").forget_probe().check
    assert scorer.shows(images, [serif_q] * 3).tolist() == [True, False, False]
    assert scorer.which(images, [{"char": "Q"}, {"style": "serif"}]).tolist() == [[1, 1], [1, 0], [0, 1]]
    with pytest.raises(KeyError):
        scorer.which(images, [{"colour": "red"}])
    # what each image shows instead of its check: nothing where it shows it, the attribute read otherwise where not
    assert scorer.misread(images, [serif_q] * 3) == [{}, {"style": "sans"}, {"char": "O"}]
    assert scorer.misread(images, [{"char": "O"}, {"style": "serif"}, {"char": "Q", "style": "sans"}]) == [
        {"char": "Q"}, {"style": "sans"}, {"char": "O", "style": "serif"}
    ]  # fmt: skip
    with pytest.raises(KeyError):
        scorer.misread(images, [{"colour": "red"}] * 3)


def test_concepts():
    q, serif, red, serif_q = Concept("Q"), Concept(style="serif"), Concept(colour="red"), Concept("Q", "serif")
    assert [c.kind for c in (q, serif, red, serif_q)] == ["character", "style", "colour", "identity"]
    assert serif_q.chance == pytest.approx(1 / (41 * 8))
    kwargs = serif_q.erase_kwargs()
    assert kwargs["concept"] == "serif" and all("q" in p.split() and "serif" in p.split() for p in kwargs["prompts"])
    assert "the letter q in sans" in kwargs["preserve"]["others"]  # the same character in another style is kept
    assert Concept("7").erase_kwargs()["aliases"] == ["seven"]
    assert all("serif" in p.split() for p in serif.erase_kwargs()["prompts"])
    assert not any(serif_q.covers(*cell) for cell in serif_q.related())
    assert ("Q", "roman", "red") in serif_q.related() and ("O", "serif", "red") in serif_q.related()
    assert serif_q.paraphrase_probe().check == {"char": "Q", "style": "serif"}
    assert cell_probe(("A", "bold", "blue")).check == {"char": "A", "style": "bold", "colour": "blue"}
    assert general_cells() == general_cells() and len(set(general_cells())) == 24
    with pytest.raises(ValueError):
        Concept(style="serif", colour="red")


def test_style_and_colour_removals_are_offered_the_others_as_targets_and_probed_without_them():
    """The emptied context ("the letter a in") is drawn in a default style / colour, which may be the one erased:
    the other styles / colours are the candidates, never the concept itself."""
    serif, red = Concept(style="serif"), Concept(colour="red")
    assert serif.erase_kwargs()["mapping_candidates"] == [s for s in glyphs.STYLES if s != "serif"]
    assert red.erase_kwargs()["mapping_candidates"] == [c for c in glyphs.COLOURS if c != "red"]
    assert "mapping_candidates" not in Concept("Q").erase_kwargs()  # a character keeps erase's own candidates
    probes = serif.probes()
    assert [p.check for p in probes["forget"]] == [serif.forget_probe().check]
    kept = probes["related"] + probes["general"]
    assert kept and all(p.check["style"] != "serif" for p in kept)
    assert {p.concept for p in probes["related"]}.isdisjoint(p.concept for p in probes["general"])


def test_generate_is_seeded_and_scored(pipe, scorer):
    prompts = [glyphs.prompt("H", "blue", "bold"), glyphs.prompt("7", "orange", "serif", "white")]

    def images():
        generators = [torch.Generator().manual_seed(i) for i in range(4)]
        return pipe([p for p in prompts for _ in range(2)], generator=generators, num_inference_steps=5,
                    output_type="np").images  # fmt: skip

    first, again = images(), images()
    assert first.shape == (4, 32, 32, 3) and np.allclose(first, again)
    out = scorer(first)
    assert len(out) == 4 and all(0 <= i < len(glyphs.CHARACTERS) for i in out.labels["char"])
    assert np.allclose(out.probs["style"].sum(-1), 1, atol=1e-4)


def test_an_identity_is_erased_where_a_prompt_names_all_of_it():
    """ "serif Q": the style word is erased (drawn in another style, the Q is no longer a serif Q), and each forget
    prompt with another character is protected, so that the edit acts only on the embeddings that see both."""
    serif_q = Concept("Q", "serif")
    kwargs = serif_q.erase_kwargs()
    assert kwargs["mapping_candidates"] == ["sans", "bold", "oblique", "italic", "typewriter"]  # not roman, heavy
    assert kwargs["map_to_context"] is False  # "the letter q" may be drawn in serif
    contrast = serif_q.contrast_prompts()
    assert "serif o" in contrast and "the serif 0" in contrast  # its look-alikes, in the same phrasing
    assert set(contrast) <= set(kwargs["preserve"]["others"])
    assert not any(serif_q.mentioned_in(p) for p in contrast)
    coloured = Concept("R", "bold", "red").contrast_prompts()
    assert any("blue" in p.split() and "r" in p.split() and "bold" in p.split() for p in coloured)  # other colours
    assert Concept("Q").contrast_prompts() == [] and Concept(style="serif").contrast_prompts() == []


def test_an_identity_can_also_protect_its_contrast_prompts_in_the_neighbouring_styles():
    """ "roman 2": "the pink 0 in roman" has "the pink 0 in serif" and "... in italic" beside it, in a group of
    their own, none asking for roman 2; off by default, and nothing for the other kinds."""
    roman_2 = Concept("2", "roman")
    own = roman_2.contrast_prompts()
    neighbours = roman_2.neighbour_style_prompts()
    assert len(neighbours) == 2 * len(own)
    assert "the pink 0 in roman" in own and {"the pink 0 in serif", "the pink 0 in italic"} <= set(neighbours)
    assert not any(roman_2.mentioned_in(p) or " roman" in f" {p}" for p in neighbours)
    assert roman_2.erase_kwargs(neighbour_styles=True)["preserve"]["neighbour styles"] == neighbours
    assert "neighbour styles" not in roman_2.erase_kwargs()["preserve"]
    for other in (Concept("Q"), Concept(style="serif"), Concept(colour="red")):
        assert other.neighbour_style_prompts() == []
        assert other.erase_kwargs(neighbour_styles=True) == other.erase_kwargs()


def test_an_identity_can_be_erased_at_its_character_word():
    """ "roman 2" with `erase_at="character"`: "2" is erased, mapped to the other digits but its look-alikes (Z, 7),
    with the same prompts and protection as at its style word; other kinds are erased at their word either way,
    and an unknown place is refused."""
    roman_2 = Concept("2", "roman")
    at_style, at_char = roman_2.erase_kwargs(), roman_2.erase_kwargs(erase_at="character")
    assert (at_style["concept"], at_char["concept"]) == ("roman", "2") and at_char["aliases"] == ["two"]
    assert at_char["mapping_candidates"] == ["0", "1", "3", "4", "5", "6", "8", "9"]
    assert Concept("R", "bold", "red").erase_kwargs(erase_at="character")["mapping_candidates"][:3] == ["a", "b", "c"]
    assert "p" not in Concept("R", "bold").erase_kwargs(erase_at="character")["mapping_candidates"]  # a look-alike
    changed = {"concept", "aliases", "mapping_candidates"}
    assert {k: v for k, v in at_style.items() if k not in changed} == {
        k: v for k, v in at_char.items() if k not in changed
    }
    for other in (Concept("Q"), Concept(style="serif"), Concept(colour="red")):
        assert other.erase_kwargs(erase_at="character") == other.erase_kwargs()
    with pytest.raises(InvalidArgumentError, match="erase_at"):
        roman_2.erase_kwargs(erase_at="colour")


def test_a_character_can_be_mapped_to_another_character_the_model_never_draws_as_it(pipe, scorer):
    """ "B" with `character_target="character"`: mapped to the other letters but those that look like it or that
    it looks like (8, R, 3; E), where the kind's word ("the red letter letter") is drawn as a B in some images;
    other kinds are unchanged, and an unknown target is refused."""
    b = Concept("B")
    assert b.erase_kwargs()["category"] == "letter" and "mapping_candidates" not in b.erase_kwargs()
    kwargs = b.erase_kwargs(character_target="character")
    assert kwargs["map_to_context"] is False and "category" not in kwargs
    assert {"a", "n", "k"} <= set(kwargs["mapping_candidates"])
    assert not {"b", "r", "e", "8", "3"} & set(kwargs["mapping_candidates"])  # look-alikes, and no digit
    assert Concept("7").erase_kwargs(character_target="character")["mapping_candidates"][:2] == ["0", "3"]  # 2: Z, 7

    def b_drawn(text):  # in how many of 16 images the untouched model draws a B for this prompt
        generators = [torch.Generator().manual_seed(i) for i in range(16)]
        images = pipe([text] * 16, generator=generators, num_inference_steps=10, output_type="np").images
        return scorer.predict(images)["char"].count("B")

    # the premise (measured: 2 and 2 of 16), and another letter of the candidates: none
    assert b_drawn("the red letter letter") + b_drawn("the red letter") >= 2
    assert b_drawn("the red letter n") == 0
    for other in (Concept("Q", "serif"), Concept(style="serif"), Concept(colour="red")):
        assert other.erase_kwargs(character_target="character") == other.erase_kwargs()
    with pytest.raises(InvalidArgumentError, match="character_target"):
        b.erase_kwargs(character_target="digit")


def test_a_style_colour_or_identity_can_hold_its_forget_prompts_in_the_other_values():
    """ "italic" with `others_held=True`: each forget prompt in every other style, none asking for italic, as a
    preserve group of its own; a colour the same in the other colours, an identity in the other styles; nothing for a
    character."""
    italic = Concept(style="italic")
    held = italic.other_value_prompts()
    forget = italic.forget_prompts()
    assert len(held) == len(forget) * (len(glyphs.STYLES) - 1)  # each forget prompt, once per other style
    assert not any(italic.mentioned_in(p) for p in held)
    in_sans = [f" {p}".replace(" sans", " italic").strip() for p in held if " sans" in f" {p}"]
    assert len(in_sans) == len(forget) and set(in_sans) == set(forget)
    assert italic.erase_kwargs(others_held=True)["preserve"]["other values"] == held
    assert "other values" not in italic.erase_kwargs()["preserve"]
    purple = Concept(colour="purple")
    assert purple.other_value_prompts() and not any(purple.mentioned_in(p) for p in purple.other_value_prompts())
    bold_s = Concept("S", "bold")  # an identity: its forget prompts in every other style, the character kept
    held = bold_s.other_value_prompts()
    assert len(held) == len(bold_s.forget_prompts()) * (len(glyphs.STYLES) - 1)
    assert not any(bold_s.mentioned_in(p) for p in held) and all(Concept("S").mentioned_in(p) for p in held)
    assert bold_s.erase_kwargs(others_held=True)["preserve"]["other values"] == held
    assert Concept("Q").other_value_prompts() == []
    assert Concept("Q").erase_kwargs(others_held=True) == Concept("Q").erase_kwargs()


def test_a_style_can_be_mapped_only_to_the_styles_that_are_not_its_neighbours():
    """`style_targets="distant"`: "heavy" is mapped to no neighbouring style (bold, serif) and not to the context
    without a style; the default keeps both; colours, identities and characters are unchanged; a bad value is
    refused."""
    heavy = Concept(style="heavy")
    anywhere, distant = heavy.erase_kwargs(), heavy.erase_kwargs(style_targets="distant")
    assert {"bold", "serif"} <= set(anywhere["mapping_candidates"]) and "map_to_context" not in anywhere
    assert set(distant["mapping_candidates"]) == set(glyphs.STYLES) - {"heavy", "bold", "serif"}
    assert distant["map_to_context"] is False
    assert {k: v for k, v in distant.items() if k not in ("mapping_candidates", "map_to_context")} == {
        k: v for k, v in anywhere.items() if k != "mapping_candidates"
    }
    for other in (Concept(colour="purple"), Concept("S", "bold"), Concept("Q")):
        assert other.erase_kwargs(style_targets="distant") == other.erase_kwargs()
    with pytest.raises(InvalidArgumentError, match="style_targets"):
        heavy.erase_kwargs(style_targets="near")


def test_a_style_can_be_mapped_away_from_its_neighbours_neighbours():
    """`style_targets="far"`: italic's neighbours are oblique and roman, theirs sans and serif; it is mapped only to
    the three styles left, never to its emptied context; other kinds are unchanged."""
    assert near_styles("italic", hops=1) == {"oblique", "roman"}
    assert near_styles("italic", hops=2) == {"oblique", "roman", "sans", "serif"}
    italic = Concept(style="italic")
    far = italic.erase_kwargs(style_targets="far")
    assert set(far["mapping_candidates"]) == {"bold", "heavy", "typewriter"} and far["map_to_context"] is False
    assert set(italic.erase_kwargs(style_targets="distant")["mapping_candidates"]) > set(far["mapping_candidates"])
    for other in (Concept(colour="purple"), Concept("S", "bold"), Concept("Q")):
        assert other.erase_kwargs(style_targets="far") == other.erase_kwargs()


def test_a_colour_can_be_mapped_only_to_the_context_without_a_colour():
    """`colour_targets="context"`: "purple" has no other colour as a candidate, only the context without a colour,
    with the target check off; the default keeps the other colours; other kinds are unchanged; a bad value is
    refused."""
    purple = Concept(colour="purple")
    anywhere, context = purple.erase_kwargs(), purple.erase_kwargs(colour_targets="context")
    assert {"blue", "pink"} <= set(anywhere["mapping_candidates"]) and "min_separation" not in anywhere
    assert context["mapping_candidates"] == [] and context["min_separation"] == 0.0
    assert context.get("map_to_context", True) is True
    assert {k: v for k, v in context.items() if k not in ("mapping_candidates", "min_separation")} == {
        k: v for k, v in anywhere.items() if k != "mapping_candidates"
    }
    for other in (Concept(style="heavy"), Concept("S", "bold"), Concept("R", "bold", "red"), Concept("Q")):
        assert other.erase_kwargs(colour_targets="context") == other.erase_kwargs()
    with pytest.raises(InvalidArgumentError, match="colour_targets"):
        purple.erase_kwargs(colour_targets="distant")


def test_a_colour_sets_its_own_target_check_threshold():
    """`colour_separation` reaches `erase(min_separation=...)` for a colour, with every candidate or with the
    context only (where it replaces the check's 0); other kinds ignore it; a threshold outside [0, 1] is refused."""
    purple = Concept(colour="purple")
    checked = purple.erase_kwargs(colour_separation=0.85)
    assert checked["min_separation"] == 0.85
    assert {k: v for k, v in checked.items() if k != "min_separation"} == purple.erase_kwargs()
    assert purple.erase_kwargs(colour_targets="context", colour_separation=0.5)["min_separation"] == 0.5
    for other in (Concept(style="heavy"), Concept("S", "bold"), Concept("R", "bold", "red"), Concept("Q")):
        assert other.erase_kwargs(colour_separation=0.85) == other.erase_kwargs()
    with pytest.raises(InvalidArgumentError, match="colour_separation"):
        purple.erase_kwargs(colour_separation=1.5)


def test_background_protection_is_ordinary_prompts_that_never_ask_for_the_concept():
    """A broad sample of other cells, in training phrasings other than the probes' canonical one."""
    for concept in (Concept("Q"), Concept(style="serif"), Concept(colour="red"), Concept("Q", "serif")):
        background = concept.background_prompts(150)
        assert len(background) == len(set(background)) == 150
        assert not any(concept.mentioned_in(p) for p in background)
        canonical = {glyphs.prompt(*cell[:1], cell[2], cell[1]) for cell in glyphs.concepts.ALL_CELLS}
        assert canonical.isdisjoint(background)
        preserve = concept.erase_kwargs(background=150)["preserve"]
        assert set(background) <= {p for group in preserve.values() for p in group}
    # a character's look-alikes are a group of their own, never in the related probes' colour and style (red sans)
    preserve = Concept("W").erase_kwargs()["preserve"]
    assert preserve["lookalikes"][:2] == ["the letter m", "the letter v"] and len(preserve["lookalikes"]) == 10
    assert not {glyphs.prompt(c, "red", "sans") for c in "MV"} & set(preserve["lookalikes"])


def test_every_kind_holds_what_the_model_draws_alike_as_a_group_of_its_own():
    """An identity: the same character in its style's neighbours and its look-alikes in its style; a style (a
    colour): other characters in its neighbouring styles (colours). Never a related probe's own prompt."""
    italic_7 = Concept("7", "italic")
    looks = italic_7.erase_kwargs()["preserve"]["lookalikes"]
    assert {"the digit 7 in oblique", "the blue digit 7 in roman", "the green digit 1 in italic"} <= set(looks)
    red_bold_r = Concept("R", "bold", "red")
    for concept in (italic_7, red_bold_r, Concept(style="typewriter"), Concept(colour="purple")):
        looks = concept.erase_kwargs()["preserve"]["lookalikes"]
        probes = {probe.prompts[0] for probe in concept.probes()["related"]}
        assert len(looks) == 12 and not probes & set(looks), concept
        assert not any(concept.mentioned_in(p) for p in looks)
    assert "the red letter r in heavy" not in red_bold_r.lookalike_prompts()  # the probes' colour is the concept's
    assert {"the pink letter q", "the blue letter r in serif"} <= set(Concept(colour="purple").lookalike_prompts())
    assert Concept("Q").background_prompts(10) == Concept("Q").background_prompts(10)  # seeded by the concept
    assert Concept("Q").mentioned_in("the letter q in red") and not Concept("Q", "serif").mentioned_in("serif o")


@pytest.mark.parametrize("name", ["serif Q", "K", "italic", "purple"])
def test_masking_prompts_fit_the_tokenizer_and_name_no_part_of_the_concept(name):
    """Every masker of a glyphs target fits in front of its seed prompt (none skipped by the masking attack), is
    made of words the tokenizer knows, and names another character than the concept's."""
    from transformers import CLIPTokenizer

    from diffusers_unlearn.glyphs.attacks import attack_target
    from diffusers_unlearn.glyphs.data import char_words

    tokenizer = CLIPTokenizer.from_pretrained(glyphs.MODEL_DIR / "tokenizer")
    concept = Concept.parse(name)
    target = attack_target(concept)
    known, own = set(vocabulary_words()), set(char_words(concept.char)) if concept.char else set()
    assert len(target.maskers) >= 8
    for masker in target.maskers:
        assert len(tokenizer(f"{masker} {target.prompt}").input_ids) <= tokenizer.model_max_length, masker
        assert set(masker.split()) <= known and not own & set(masker.split()[-1:]), masker
