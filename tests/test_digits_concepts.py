"""Digits-model concepts: which prompts a removal covers, how it is erased and measured."""

import pytest

from diffusers_unlearn.digits import COLOURS, DIGITS, STROKES
from diffusers_unlearn.digits.concepts import (
    ALL_CELLS,
    LOOKALIKES,
    SHORT_TEMPLATES,
    Concept,
    cell_probe,
    erase_kwargs_for,
)


def test_kinds_names_and_chance():
    assert Concept(7).name == "seven" and Concept(7).kind == "digit" and Concept(7).chance == 0.1
    assert Concept(colour="red").kind == "colour" and Concept(colour="red").chance == 0.25
    assert Concept(3, "blue", "bold").name == "bold blue three"
    with pytest.raises(ValueError):
        Concept()
    with pytest.raises(ValueError):
        Concept(3, stroke="bold")


def test_covers():
    assert Concept(7).covers(7, "red", "bold") and not Concept(7).covers(1, "red", "bold")
    assert Concept(colour="red").covers(2, "red", "thin")
    triple = Concept(3, "blue", "bold")
    assert triple.covers(3, "blue", "bold") and not triple.covers(3, "blue", "thin")
    assert sum(Concept(3, "blue").covers(*cell) for cell in ALL_CELLS) == len(STROKES)
    assert len(ALL_CELLS) == 10 * len(COLOURS) * len(STROKES)


def test_erase_kwargs():
    seven = Concept(7).erase_kwargs()
    assert seven["concept"] == "seven" and seven["aliases"] == ["7"] and seven["category"] == "digit"
    assert "seven" not in seven["neighbors"] and "7" not in seven["neighbors"] and len(seven["neighbors"]) == 18
    assert all("seven" in p for p in seven["prompts"])
    red = Concept(colour="red").erase_kwargs()
    assert red["concept"] == "red" and sorted(red["neighbors"]) == sorted(set(COLOURS) - {"red"})
    assert all("red" in p for p in red["prompts"])
    combo = Concept(3, "blue").erase_kwargs()
    assert all("blue" in p and "three" in p for p in combo["prompts"])
    assert "a red three" in combo["preserve"] and not any("blue" in p for p in combo["preserve"])
    triple = Concept(3, "blue", "bold").erase_kwargs()
    assert all("bold" in p for p in triple["prompts"]) and "a blue three, thin" in triple["preserve"]


def test_erase_kwargs_with_fallback_samples_the_emptied_context_and_gives_a_combination_the_other_digits():
    combo, plain = Concept(8, "green", "bold").erase_kwargs(fallback=True), Concept(8, "green", "bold").erase_kwargs()
    assert combo["target_check"] == "sampled" and "target_check" not in plain and "fallback_candidates" not in plain
    assert combo["fallback_candidates"] == [w for w in DIGITS if w != "eight"]
    assert combo == plain | {"target_check": "sampled", "fallback_candidates": combo["fallback_candidates"]}
    seven = Concept(7).erase_kwargs(fallback=True)  # a whole digit has the other digits as candidates already
    assert seven["target_check"] == "sampled" and "fallback_candidates" not in seven


@pytest.mark.parametrize(
    "concept", [Concept(7), Concept(colour="red"), Concept(0, "blue", "thin"), Concept(9, "blue")]
)
def test_background_prompts_never_ask_for_the_concept_nor_open_like_a_probe(concept):
    background = concept.background_prompts(100)
    assert len(background) == len(set(background)) > 20 and background == concept.background_prompts(100)
    assert concept.background_prompts(5) == background[:5]
    forget = set(concept.forget_prompts())
    probes = {p for cell in ALL_CELLS for p in cell_probe(*cell).prompts} | {f"a {w}" for w in DIGITS}
    for text in background:
        assert text not in forget
        assert not any(text.startswith(p) or p.startswith(text) for p in probes), text
    preserve = concept.erase_kwargs(background=10)["preserve"]  # a group of its own beside the related prompts
    assert preserve == {"related": concept.erase_kwargs().get("preserve", []), "background": background[:10]}
    assert not set(background) & set(concept.erase_kwargs()["prompts"])


def test_background_prompts_name_a_part_the_concept_does_not_have():
    blue_thin_zero = Concept(0, "blue", "thin").background_prompts(100)
    assert "blue zero" not in blue_thin_zero and "zero" not in blue_thin_zero  # could show a thin blue zero
    assert all("zero" not in p or "bold" in p or any(c in p for c in ("red", "green", "yellow"))
               for p in blue_thin_zero)  # fmt: skip


def test_a_combination_erased_at_its_attribute_keeps_its_digit_and_its_colour_elsewhere():
    """`erase_at="attribute"`: "blue three" is erased at "blue" (mapped to another colour), and each forget prompt
    with another digit is protected, so only the embeddings that see "blue" and "three" together move."""
    combo = Concept(3, "blue").erase_kwargs(erase_at="attribute")
    assert combo["concept"] == "blue" and combo["mapping_candidates"] == ["red", "green", "yellow"]
    assert combo["prompts"] == Concept(3, "blue").forget_prompts()
    assert {"a blue two", "a two in blue", "a red three", "three"} <= set(combo["preserve"])
    assert not set(combo["prompts"]) & set(combo["preserve"])
    triple = Concept(3, "blue", "bold").erase_kwargs(erase_at="attribute")
    assert triple["concept"] == "bold" and triple["mapping_candidates"] == ["thin"]
    assert {"a bold blue two", "a bold red three", "a blue three, thin"} <= set(triple["preserve"])
    assert Concept(7).erase_kwargs(erase_at="attribute") == Concept(7).erase_kwargs()  # only combinations change
    with pytest.raises(ValueError, match="erase_at"):
        Concept(3, "blue").erase_kwargs(erase_at="colour")


def test_probes_and_related_cells():
    probe = Concept(7).forget_probe()
    assert probe.check == {"digit": 7} and "the number 7" in probe.prompts
    related = Concept(3, "blue").related()
    assert (8, "blue", "bold") in related and (3, "red", "thin") in related
    assert not any(Concept(3, "blue").covers(*cell) for cell in related)
    assert cell_probe(3, "red", "thin").check == {"digit": 3, "colour": "red"}


def test_parse_reads_back_every_name_and_refuses_the_rest():
    from diffusers_unlearn.errors import InvalidConceptError

    every = [Concept(d) for d in range(10)] + [Concept(colour=c) for c in COLOURS]
    every += [Concept(d, c, s) for d, c, s in ALL_CELLS] + [Concept(d, c) for d, c, _ in ALL_CELLS]
    assert all(Concept.parse(c.name) == c for c in every)
    assert Concept.parse("Red 7") == Concept(7, "red")
    for text in ("cat", "seven seven", "red blue", "bold seven", "", "a seven"):
        with pytest.raises(InvalidConceptError):
            Concept.parse(text)


def test_probes_leave_out_what_removals_erase_on_purpose():
    seven = Concept(7).probes()
    assert [p.check for p in seven["forget"]] == [{"digit": 7}]
    assert all(p.check["digit"] != 7 for p in seven["related"] + seven["general"])
    assert {p.check["digit"] for p in seven["related"]} == set(LOOKALIKES[7])
    with_red = Concept(7).probes([Concept(colour="red"), Concept(7)])
    kept = with_red["related"] + with_red["general"]
    assert kept and all(p.check["colour"] != "red" and p.check["digit"] != 7 for p in kept)
    assert len(with_red["related"]) < len(seven["related"])


def test_erase_kwargs_for_adds_options_to_a_known_concept_and_passes_others_on():
    plain = erase_kwargs_for("red seven")
    assert {k: v for k, v in plain.items() if k != "mine_neighbors"} == {
        k: v for k, v in Concept(7, "red").erase_kwargs().items() if k != "name"
    }
    more = erase_kwargs_for("seven", aliases=["sevens"], templates=["{} on a wall"], preserve=["a wall"], category="x")
    assert more["aliases"] == ["7", "sevens"] and more["category"] == "x" and more["preserve"][-1] == "a wall"
    assert {"seven on a wall", "7 on a wall", "sevens on a wall"} <= set(more["prompts"])
    other = erase_kwargs_for("cat", neighbors=["dog"])
    assert other["templates"] == list(SHORT_TEMPLATES) and other["neighbors"] == ["dog"] and other["prompts"] is None
    assert erase_kwargs_for("cat", prompts=["a cat"])["templates"] is None
