"""Concepts of the glyphs model: what to erase, how to ask `erase` for it, and how to measure it.

A concept is a whole character (`Concept("Q")`), a whole style (`Concept(style="serif")`), a whole colour
(`Concept(colour="red")`) or an *identity*: a character in a style (`Concept("Q", "serif")`, "a serif Q"),
optionally in a colour too (`Concept("Q", "serif", "red")`). `erase_kwargs()` gives the arguments of
[`diffusers_unlearn.erase`]; `forget_probe()` the prompts and the check that measure whether the model still
makes it: for an identity the check is the conjunction of its parts (the image shows "a serif Q" only if it shows
a Q *and* the serif style), as a vision-language judge asked "is there a serif Q?" would answer.
"""

from __future__ import annotations

import itertools
import random
import zlib
from dataclasses import dataclass

from ..errors import InvalidArgumentError, InvalidConceptError
from ..evaluation import ConceptProbe
from .data import (
    CHARACTERS,
    COLOUR_SYNONYMS,
    COLOURS,
    HELD_OUT_TEMPLATES,
    LETTERS,
    STYLE_SYNONYMS,
    STYLES,
    TEMPLATES,
    char_words,
    fill,
    kind_of,
    prompt,
)

LOOKALIKES: dict[str, tuple[str, ...]] = {
    "A": ("4", "H"), "B": ("8", "R", "3"), "C": ("G", "O"), "D": ("O", "0"), "E": ("F", "B"), "F": ("E", "P"),
    "G": ("C", "6"), "H": ("N", "#"), "I": ("1", "L", "T"), "J": ("I", "U"), "K": ("X", "R"), "L": ("I", "1"),
    "M": ("W", "N"), "N": ("M", "H"), "O": ("0", "Q", "D"), "P": ("R", "F"), "Q": ("O", "0"), "R": ("P", "K"),
    "S": ("5", "$", "8"), "T": ("7", "I"), "U": ("V", "J"), "V": ("U", "Y"), "W": ("M", "V"), "X": ("K", "+"),
    "Y": ("V", "T"), "Z": ("2", "7"), "0": ("O", "D", "Q"), "1": ("I", "7", "L"), "2": ("Z", "7"),
    "3": ("8", "B"), "4": ("A", "+"), "5": ("S", "6"), "6": ("G", "5"), "7": ("1", "T", "Z"), "8": ("B", "3", "S"),
    "9": ("6", "P"), "&": ("8", "$"), "#": ("H", "+"), "%": ("X", "0"), "+": ("X", "#"), "$": ("S", "5"),
}  # fmt: skip
"""Characters most easily confused with each character (its related concepts)."""

STYLE_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "sans": ("bold", "oblique"), "bold": ("heavy", "sans"), "oblique": ("italic", "sans"),
    "serif": ("roman", "heavy"), "italic": ("oblique", "roman"), "typewriter": ("roman", "serif"),
    "heavy": ("bold", "serif"), "roman": ("serif", "italic"),
}  # fmt: skip
"""The nearest styles of each style."""


def near_styles(style: str, hops: int = 1) -> set[str]:
    """The styles within `hops` steps of `style` along `STYLE_NEIGHBOURS` (`hops=2`: its neighbours and theirs),
    `style` left out.

    Example:
        ```py
        >>> sorted(near_styles("italic", hops=2))
        ['oblique', 'roman', 'sans', 'serif']
        ```
    """
    near = {style}
    for _ in range(hops):
        near |= {n for s in near for n in STYLE_NEIGHBOURS[s]}
    return near - {style}


COLOUR_NEIGHBOURS: dict[str, tuple[str, ...]] = {
    "red": ("orange", "pink"), "orange": ("red", "yellow"), "yellow": ("orange", "green"),
    "green": ("cyan", "yellow"), "cyan": ("green", "blue"), "blue": ("cyan", "purple"),
    "purple": ("blue", "pink"), "pink": ("red", "purple"),
}  # fmt: skip
"""The nearest colours of each colour."""

PROBE_CHARS: tuple[str, ...] = ("A", "G", "Q", "R", "3", "7", "&", "%")
"""The characters that probe a whole style or a whole colour."""

Cell = tuple[str, str, str]
"""A (character, style, colour) cell of the model."""

ALL_CELLS: tuple[Cell, ...] = tuple(itertools.product(CHARACTERS, STYLES, COLOURS))
"""Every (character, style, colour) cell."""


@dataclass(frozen=True, order=True)
class Concept:
    """A glyphs-model concept: a character, a style, a colour, or an identity (character in a style).

    Args:
        char: One of `CHARACTERS` (`"Q"`, `"7"`, `"&"`), or `None`.
        style: One of `STYLES`, or `None`.
        colour: One of `COLOURS`, or `None` (with a character and a style: narrows the identity).
    """

    char: str | None = None
    style: str | None = None
    colour: str | None = None

    def __post_init__(self):
        given = [x is not None for x in (self.char, self.style, self.colour)]
        if not any(given):
            raise InvalidConceptError(
                'A concept needs a character, a style or a colour: `Concept("Q")`, `Concept.parse("serif Q")`.'
            )
        if self.char is not None and self.char not in CHARACTERS:
            raise InvalidConceptError(f"char must be one of {''.join(CHARACTERS)}, got {self.char!r}")
        if self.style is not None and self.style not in STYLES:
            raise InvalidConceptError(f"style must be one of {tuple(STYLES)}, got {self.style!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise InvalidConceptError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if sum(given) > 1 and (self.char is None or self.style is None):
            raise InvalidConceptError(
                'Combinations are a character in a style (optionally in a colour): `Concept("Q", "serif", "red")`.'
            )

    @classmethod
    def parse(cls, text: str) -> Concept:
        """A concept from words: `"Q"`, `"serif"`, `"red"`, `"serif Q"`, `"red serif Q"` (a digit or symbol by
        itself or its word: `"7"`, `"seven"`, `"&"`, `"ampersand"`).

        Raises:
            InvalidConceptError: if a word names nothing of the glyphs model.
        """
        char = style = colour = None
        names = {w: c for c in CHARACTERS for w in (c, *char_words(c)[1:])}
        for word in text.split():
            if word in names or word.upper() in names:
                char = names.get(word, names.get(word.upper()))
            elif any(word.lower() in words for words in STYLE_SYNONYMS.values()):
                style = next(s for s, words in STYLE_SYNONYMS.items() if word.lower() in words)
            elif any(word.lower() in words for words in COLOUR_SYNONYMS.values()):
                colour = next(c for c, words in COLOUR_SYNONYMS.items() if word.lower() in words)
            else:
                raise InvalidConceptError(
                    f'{word!r} is no character, style or colour of the glyphs model: use words like "Q", "seven", '
                    f'"&", a style of {tuple(STYLES)} or a colour of {COLOURS}.'
                )
        return cls(char, style, colour)

    @property
    def kind(self) -> str:
        """`"character"`, `"style"`, `"colour"` or `"identity"`."""
        if self.char is not None:
            return "identity" if self.style is not None else "character"
        return "style" if self.style is not None else "colour"

    @property
    def name(self) -> str:
        """`"Q"`, `"serif"`, `"red"`, `"serif Q"`, `"red serif Q"`."""
        return " ".join(p for p in (self.colour, self.style, self.char) if p)

    @property
    def parts(self) -> dict[str, str]:
        """The scorer check of the concept: every attribute it names."""
        return {k: v for k, v in (("char", self.char), ("style", self.style), ("colour", self.colour)) if v}

    @property
    def chance(self) -> float:
        """Share of images that would show the concept by chance: the product over its parts of one in the
        number of values of that part."""
        sizes = {"char": len(CHARACTERS), "style": len(STYLES), "colour": len(COLOURS)}
        out = 1.0
        for part in self.parts:
            out /= sizes[part]
        return out

    def covers(self, char: str, style: str, colour: str) -> bool:
        """Whether a (character, style, colour) cell is an instance of the concept."""
        return self.char in (None, char) and self.style in (None, style) and self.colour in (None, colour)

    # ------------------------------------------------------------------------------------------ erasing
    def forget_prompts(self, limit: int = 48) -> list[str]:
        """Training templates filled so that they ask for the concept (at most `limit`, a fixed sample)."""
        return [fill(*slots) for slots in self._forget_slots(limit)]

    def contrast_prompts(self, limit: int = 48, others: int = 40, style: str | None = None) -> list[str]:
        """For an identity, its forget prompts with another character (its look-alikes and `others` more) or,
        coloured, another colour: what the removal must keep. Empty for other kinds. `style`: filled in that style
        instead of the identity's own (`neighbour_style_prompts`).

        Protected, they pin every embedding a forget prompt shares with them ("serif" of "serif q" is "serif" of
        "serif o"), so that the edit acts only where the prompt names the whole identity.
        """
        if self.kind != "identity":
            return []
        rng = random.Random(zlib.crc32(self.name.encode()))
        rest = [c for c in CHARACTERS if c not in LOOKALIKES[self.char]]
        chars = [*LOOKALIKES[self.char], *rng.sample(rest, min(others, len(rest)))]
        prompts = []
        for template, char, colour, own_style, background in self._forget_slots(limit):
            filled = style or own_style
            for other in chars:
                if other != char and ("capital" not in template or other in LETTERS):
                    prompts.append(fill(template, other, colour, filled, background))
            if self.colour is not None:
                prompts += [fill(template, char, other, filled, background) for other in COLOURS if other != colour]
        return list(dict.fromkeys(prompts))

    def other_value_prompts(self) -> list[str]:
        """For a style (a colour), its forget prompts in each other style (colour): "the red letter a in sans" beside
        "the red letter a in italic"; for an identity, its forget prompts in each other style ("the s in sans"
        beside "the s in bold"). Empty for a character.

        A style's forget prompts ask for the probe characters in it; the model draws some of them alike in other
        styles (italic A and sans A), and a removal that holds only the characters without a style takes those with
        it (measured: "italic" alone loses blue, cyan and pink sans A). An identity holds its character in the other
        styles in one canonical phrasing only; in its forget prompts' phrasings "bold S" kept one more related cell on
        a chain of 15 removals (docs/benchmarks/continual_analysis.md, session 37).
        """
        if self.kind == "character":
            return []
        values = [v for v in (COLOURS if self.kind == "colour" else STYLES) if v not in (self.style, self.colour)]
        prompts = []
        for template, char, colour, style, background in self._forget_slots(48):
            for other in values:
                slots = (other, style) if self.kind == "colour" else (colour, other)
                prompts.append(fill(template, char, *slots, background))
        return list(dict.fromkeys(prompts))

    def neighbour_style_prompts(self) -> list[str]:
        """For an identity, its contrast prompts in its neighbouring styles (`STYLE_NEIGHBOURS`): for "roman 2",
        "the pink 0 in serif" and "the pink 0 in italic" beside "the pink 0 in roman". Empty for other kinds.

        The model draws those styles alike ("serif" and "roman" barely differ on round glyphs), so a removal of
        the identity that protects only its own style takes other characters of the neighbouring ones with it
        (measured: "roman 2" alone costs "red serif O" and "green serif A", docs/benchmarks/footprint.md). With
        them protected it meets the retention bars alone; on a chain of removals it did not add steps at the bars
        (docs/benchmarks/continual_analysis.md, session 29).
        """
        if self.kind != "identity":
            return []
        return list(dict.fromkeys(p for s in STYLE_NEIGHBOURS[self.style] for p in self.contrast_prompts(style=s)))

    def background_prompts(self, count: int = 200) -> list[str]:
        """`count` prompts of random cells the concept does not cover, in the training templates other than the
        canonical one (the probes' phrasing): a sample of everything else the model draws, for the removal to hold.

        A removal edits a 256-wide text space that every one of the model's ~330 words shares; the prompts it
        protects near the concept pin only a few of its directions, and the rest of the vocabulary moves with the
        edit unless a broad sample of ordinary prompts holds it (docs/benchmarks/continual_analysis.md).
        """
        rng = random.Random(zlib.crc32(self.name.encode()) + 1)
        templates = [t for t in TEMPLATES if t != "the {colour} {kind} {char} in {style}"]
        prompts: list[str] = []
        for char, style, colour in rng.sample(list(ALL_CELLS), len(ALL_CELLS)):
            if len(prompts) == count:
                break
            template = rng.choice(templates)
            if self.covers(char, style, colour) or ("capital" in template and char not in LETTERS):
                continue
            text = fill(template, char, colour, style, rng.choice(("black", "white")))
            if not self.mentioned_in(text) and text not in prompts:
                prompts.append(text)
        return prompts

    def mentioned_in(self, text: str) -> bool:
        """Whether a prompt names every part of the concept (and so asks for it, in some reading)."""
        words = set(text.lower().split())
        names = {
            "char": {w.lower() for w in char_words(self.char)} if self.char else set(),
            "style": set(STYLE_SYNONYMS[self.style]) if self.style else set(),
            "colour": set(COLOUR_SYNONYMS[self.colour]) if self.colour else set(),
        }
        return all(words & names[part] for part in self.parts)

    def _forget_slots(self, limit: int) -> list[tuple[str, str, str, str, str]]:
        """`(template, char, colour, style, background)` of distinct forget prompts (at most `limit`, a fixed
        sample)."""
        rng = random.Random(zlib.crc32(self.name.encode()))
        slot = {"character": "{char}", "style": "{style}", "colour": "{colour}"}.get(self.kind)
        templates = [
            t
            for t in TEMPLATES
            if (slot is None or slot in t)
            and (self.kind != "identity" or ("{style}" in t and (self.colour is None or "{colour}" in t)))
        ]
        slots, seen = [], set()
        chars = [self.char] if self.char else list(PROBE_CHARS)
        for template, char in itertools.product(templates, chars):
            if "capital" in template and char not in LETTERS:
                continue
            colour = self.colour or rng.choice(COLOURS)
            style = self.style or rng.choice(list(STYLES))
            filled = (template, char, colour, style, rng.choice(("black", "white")))
            text = fill(*filled)
            if text not in seen:
                seen.add(text)
                slots.append(filled)
        return slots if len(slots) <= limit else sorted(rng.sample(slots, limit), key=slots.index)

    def erase_kwargs(
        self, background: int = 200, neighbour_styles: bool = False, erase_at: str = "style",
        character_target: str = "category", others_held: bool = False, style_targets: str = "any",
        colour_targets: str = "any", colour_separation: float | None = None,
    ) -> dict:  # fmt: skip
        """Arguments of `diffusers_unlearn.erase` for this concept on the glyphs model.

        The erased word is the character, the style word or the colour word, with its synonyms as aliases; the
        other characters (styles, colours) are its neighbours, and for a style or a colour the other styles or
        colours are its mapping candidates. A style or a colour keeps the characters asked without it. An identity
        ("serif Q") is erased at its style word, mapped to a style other than its neighbours (`STYLE_NEIGHBOURS`;
        not to the context without a style, which the model may draw in this one), with `contrast_prompts()`
        protected so that only the embeddings that see the whole identity move; it keeps the same character in the
        other styles and without a style, and its look-alikes in the same style. Every concept keeps what the model
        draws most like it (`lookalike_prompts()`) as a preserve group of its own, and protects `background`
        prompts of other cells (`background_prompts()`). With `neighbour_styles`, an identity also protects its
        contrast prompts in its neighbouring styles (`neighbour_style_prompts()`) as a group of their own.

        `erase_at="character"` erases an identity at its character word instead ("2" where the prompt asks for "the
        pink 2 in roman"), mapped to another character of its kind that is not one of its look-alikes, so that it
        draws "the pink 3 in roman", with the same prompts protected. What a removal loses follows the word it
        erases: at the style word, images of other characters in a neighbouring style ("roman 2" turns red roman Q
        serif); at the character word, images of other characters drawn as another character. Measured, the
        character word kept roman 2 and italic 7 at the bars alone but cost four other identities general cells,
        and a chain of them held the bars for no step (docs/benchmarks/continual_analysis.md, session 31): the
        style word stays the default. Mapped to its target without the push past it
        (`DistillConfig(negative_guidance=0)`), every identity measured at its character word is removed alone and
        keeps its cells (at its style word it is not removed), and a chain keeps its related cells longer but lets
        its removals back sooner (session 38). Other kinds are erased at their own word either way.

        A character ("B") is mapped to its kind's word ("the red letter b" to "the red letter letter"), or with
        `character_target="character"` to another character of its kind that neither looks like it nor is looked
        like by it ("the red letter n"). The model draws the kind's word as some character, sometimes this one:
        "the red letter letter" shows B in 2 of 16 images and E in 5-6, so a removal mapped there keeps drawing B in
        a share of its images however far it trains (docs/benchmarks/continual_analysis.md, session 36).

        `others_held=True`: a style, a colour or an identity also holds its forget prompts in every other style
        (colour) as a group of their own (`other_value_prompts()`), as an identity holds its contrast prompts.

        `style_targets="distant"` maps a style, as an identity, only to the styles that are not its neighbours: not
        to them ("heavy" to "bold" or "serif") nor to the context without a style. Measured late in the glyphs chain
        (docs/benchmarks/continual_analysis.md, session 42): heavy, mapped mostly to serif, bold and no style, reached
        0.47 of the way to its targets in 600 steps and was still drawn in 44% of its images; mapped to sans,
        oblique and roman, in 3%, with the same retention. The default (`"any"`) keeps every other style
        and the emptied context as candidates, as the earlier chains were made. `style_targets="far"` also leaves
        out the neighbours' neighbours (`near_styles(style, hops=2)`): measured on the glyphs chain
        (continual_analysis.md, session 48), italic mapped to serif, a neighbour of its neighbour roman, turned red
        roman E into a serif E in 10 of 32 images more; mapped to heavy, in none, and italic was removed either way.

        `colour_targets="context"` maps a colour only to the context without a colour ("the purple letter g" to
        "the letter g"), which the model draws in any of the eight colours, and turns off the target check
        (`erase(min_separation=0)`), which reads that spread's mean prediction as nearest purple (0.8 of the way
        to the nearest other colour) though the model draws purple there in at most 6 of 48 images. Measured on
        the glyphs chain (docs/benchmarks/continual_analysis.md, session 46): mapped to other colours (pink and
        blue, or only the colours that are not its neighbours), purple reached 1.1-1.3 of the way to its targets
        and was still drawn in 39-52% of its images, its canonical prompt ("the purple letter g") the least
        changed; mapped to the context, in 5-9%. Orange mapped to the context is not removed (session 47:
        reach 0.50, 55-68% of its images) where mapped to its neighbour yellow it is; every candidate with
        the target check at 0.85 removed both.

        `colour_separation` sets that check's threshold for a colour (`erase(min_separation=...)`; `None`: erase's
        default, 0 with `colour_targets="context"`): how far from the colour a candidate's noise predictions must
        be, as a share of its distance to the nearest other colour. Other kinds ignore it.

        Example:

        ```py
        >>> from diffusers_unlearn.glyphs.concepts import Concept
        >>> Concept("2", "roman").erase_kwargs(erase_at="character")["concept"]
        '2'
        ```
        """
        if erase_at not in ("style", "character"):
            raise InvalidArgumentError(f"erase_at must be 'style' or 'character', got {erase_at!r}.")
        if style_targets not in ("any", "distant", "far"):
            raise InvalidArgumentError(f"style_targets must be 'any', 'distant' or 'far', got {style_targets!r}.")
        if colour_targets not in ("any", "context"):
            raise InvalidArgumentError(f"colour_targets must be 'any' or 'context', got {colour_targets!r}.")
        if colour_separation is not None and not 0 <= colour_separation <= 1:
            raise InvalidArgumentError(f"colour_separation must be in [0, 1], got {colour_separation}.")
        if character_target not in ("category", "character"):
            raise InvalidArgumentError(
                f"character_target must be 'category' or 'character', got {character_target!r}."
            )
        name = "no-" + self.name.replace(" ", "-")
        background = self.background_prompts(background)
        if self.kind in ("style", "colour"):
            synonyms = STYLE_SYNONYMS if self.kind == "style" else COLOUR_SYNONYMS
            word = self.style if self.kind == "style" else self.colour
            others = [w for key, words in synonyms.items() if key != word for w in words]
            distant = self.kind == "style" and style_targets != "any"
            excluded = near_styles(word, hops=1 if style_targets == "distant" else 2) if distant else set()
            to_context = self.kind == "colour" and colour_targets == "context"
            separation = colour_separation if self.kind == "colour" else None
            if separation is None and to_context:  # the check reads a context drawn in every colour as this one
                separation = 0.0
            preserve = [prompt(c) for c in PROBE_CHARS] + [f"the {kind_of(c)} {char_words(c)[0]}" for c in "BX5"]
            return {
                "concept": word,
                "aliases": list(synonyms[word][1:]),
                "prompts": self.forget_prompts(),
                # the emptied context is drawn in a default style / colour, which may be this one (sans, red):
                # the other styles / colours are targets the model draws as something else
                "mapping_candidates": []
                if to_context
                else [key for key in synonyms if key != word and key not in excluded],
                **({"map_to_context": False} if distant else {}),
                **({"min_separation": separation} if separation is not None else {}),
                "neighbors": others,
                "preserve": {
                    "lookalikes": self.lookalike_prompts(),
                    "others": list(dict.fromkeys([*preserve, *background])),
                    **({"other values": self.other_value_prompts()} if others_held else {}),
                },
                "name": name,
            }
        if self.kind == "identity":  # the style word where the prompt names the whole identity: drawn in another
            # style, the character is no longer "a serif Q" (edits where a prompt names only part are refused: the
            # contrast prompts pin them)
            same_char = [prompt(self.char, self.colour, s) for s in STYLES if s != self.style]
            lookalikes = [prompt(c, self.colour, self.style) for c in LOOKALIKES[self.char]]
            if erase_at == "character":  # drawn as another character of its kind, not one that looks like it
                words = char_words(self.char)
                others = [c for c in CHARACTERS if c != self.char and c not in LOOKALIKES[self.char]]
                erased = {
                    "concept": words[0],
                    "aliases": list(words[1:]),
                    "mapping_candidates": [char_words(c)[0] for c in others if kind_of(c) == kind_of(self.char)],
                }
            else:
                erased = {
                    "concept": self.style,
                    "aliases": list(STYLE_SYNONYMS[self.style][1:]),
                    # not a neighbouring style: the model barely tells serif from roman on round glyphs, so mapping
                    # "serif Q" to roman carries the serif O and 0 with it; nor the context without its style,
                    # drawn in a default style that may be this one ("red r" half the time bold)
                    "mapping_candidates": [s for s in STYLES if s not in (self.style, *STYLE_NEIGHBOURS[self.style])],
                }
            return {
                **erased,
                "prompts": self.forget_prompts(),
                "map_to_context": False,
                # what the model draws alike (the character in the neighbouring styles, the look-alikes in this
                # style) in a group of their own: among the other prompts "italic 7" took "oblique 7" with it
                "preserve": {
                    "lookalikes": self.lookalike_prompts(),
                    "others": list(
                        dict.fromkeys(
                            [prompt(self.char), *same_char, *lookalikes, *self.contrast_prompts(), *background]
                        )
                    ),
                    **({"neighbour styles": self.neighbour_style_prompts()} if neighbour_styles else {}),
                    **({"other values": self.other_value_prompts()} if others_held else {}),
                },
                "name": name,
            }
        words = char_words(self.char)
        if character_target == "character":  # another character of its kind, far from it in both directions
            alike = {*LOOKALIKES[self.char], *(c for c, looks in LOOKALIKES.items() if self.char in looks)}
            others = [c for c in CHARACTERS if c != self.char and c not in alike and kind_of(c) == kind_of(self.char)]
            target = {"mapping_candidates": [char_words(c)[0] for c in others], "map_to_context": False}
        else:
            target = {"category": kind_of(self.char)}
        return {
            "concept": words[0],
            "aliases": list(words[1:]),
            "prompts": self.forget_prompts(),
            **target,
            "neighbors": [w for c in CHARACTERS if c != self.char for w in char_words(c)[:1]],
            # the look-alikes in a group of their own: among every other character (the neighbours) they weigh
            # little, and "W" alone kept a quarter of its related cells (M and V; continual_analysis.md, session 20)
            "preserve": {"lookalikes": self.lookalike_prompts(), "background": background},
            "name": name,
        }

    def lookalike_prompts(self) -> list[str]:
        """What the model draws most like the concept without it being the concept, in colours the related probes
        do not use (they are red, or the identity's colour; sans for a character): the measure stays one the
        removal was not trained on.

        A character: its look-alikes, without colour and style and in blue / green, serif / bold. An identity: the
        same character in its style's neighbours and its first two look-alikes in its style, without colour and in
        two other colours. A style (a colour): Q and R in its neighbouring styles (colours), without colour (style)
        and in two others.

        Example:
            ```py
            >>> Concept(char="W").lookalike_prompts()[:3]
            ['the letter m', 'the letter v', 'the blue letter m in serif']
            >>> Concept("7", "italic").lookalike_prompts()[:3]
            ['the digit 7 in oblique', 'the blue digit 7 in oblique', 'the green digit 7 in oblique']
            ```
        """
        if self.kind == "character":
            looks = LOOKALIKES[self.char]
            return [prompt(c) for c in looks] + [
                prompt(c, colour, style) for c in looks for colour in ("blue", "green") for style in ("serif", "bold")
            ]
        if self.kind == "style":  # the probes: A and G in the neighbouring styles, green
            return [prompt(c, colour, s) for c in PROBE_CHARS[2:4] for s in STYLE_NEIGHBOURS[self.style]
                    for colour in (None, "blue", "yellow")]  # fmt: skip
        if self.kind == "colour":  # the probes: A and G in sans, the neighbouring colours
            return [prompt(c, n, style) for c in PROBE_CHARS[2:4] for n in COLOUR_NEIGHBOURS[self.colour]
                    for style in (None, "serif", "bold")]  # fmt: skip
        probe_colour = self.colour or "red"
        colours = [None, *[c for c in ("blue", "green", "yellow") if c != probe_colour][:2]]
        cells = [(self.char, s) for s in STYLE_NEIGHBOURS[self.style]]
        cells += [(c, self.style) for c in LOOKALIKES[self.char][:2]]
        return [prompt(char, colour, style) for char, style in cells for colour in colours]

    # ---------------------------------------------------------------------------------------- measuring
    def forget_probe(self) -> ConceptProbe:
        """Prompts that ask for the concept (two phrasings), and the check that an image still shows it."""
        if self.kind == "character":
            prompts = (prompt(self.char, "red"), prompt(self.char, "blue", "sans"))
        elif self.kind in ("style", "colour"):
            prompts = tuple(prompt(c, self.colour or "green", self.style) for c in PROBE_CHARS[:4])
        else:
            colour = self.colour or "red"
            prompts = (prompt(self.char, colour, self.style), fill("{colour} {style} {char}", self.char, colour,
                                                                       self.style))  # fmt: skip
        return ConceptProbe(self.name, prompts, self.parts)

    def paraphrase_probe(self) -> ConceptProbe:
        """The concept asked with :data:`HELD_OUT_TEMPLATES` (phrasings never used in training)."""
        chars = [self.char] if self.char else list(PROBE_CHARS[:3])
        prompts = []
        for i, (template, char) in enumerate(itertools.product(HELD_OUT_TEMPLATES[:3], chars)):
            colour = self.colour or COLOURS[i % len(COLOURS)]
            style = self.style or "sans"
            prompts.append(fill(template, char, colour, style))
        return ConceptProbe(self.name, tuple(prompts[:3]), self.parts)

    def related(self) -> list[Cell]:
        """The cells nearest the concept that it does not cover: same character in other styles, same style on
        other characters (look-alikes), look-alike characters, neighbouring styles or colours."""
        colour = self.colour or "red"
        if self.kind == "colour":
            return [(c, "sans", n) for c in PROBE_CHARS[:2] for n in COLOUR_NEIGHBOURS[self.colour]]
        if self.kind == "style":
            return [(c, n, "green") for c in PROBE_CHARS[:2] for n in STYLE_NEIGHBOURS[self.style]]
        if self.kind == "character":
            return [(c, "sans", colour) for c in LOOKALIKES[self.char]]
        cells = [(self.char, s, colour) for s in STYLE_NEIGHBOURS[self.style]]
        cells += [(c, self.style, colour) for c in LOOKALIKES[self.char][:2]]
        return cells

    def probes(self, general: int = 12) -> dict[str, list[ConceptProbe]]:
        """The `forget`, `related` and `general` probes of `evaluation.evaluate` for this concept's removal.

        Related: the cells of `related()` it does not cover; general: the first `general` cells of
        `general_cells` that are neither covered nor related.

        Example:
            ```py
            >>> from diffusers_unlearn.glyphs import GlyphsConceptScorer
            >>> result = evaluate(pipe, GlyphsConceptScorer(), **Concept(style="serif").probes(), images_per_prompt=8)
            ```
        """
        related = [cell for cell in self.related() if not self.covers(*cell)]
        kept = [cell for cell in general_cells(general) if not self.covers(*cell) and cell not in related]
        return {
            "forget": [self.forget_probe()],
            "related": [cell_probe(c) for c in related],
            "general": [cell_probe(c) for c in kept],
        }


def cell_probe(cell: Cell) -> ConceptProbe:
    """The retention probe of one cell: its canonical prompt, whose images must show that character in that style
    and colour."""
    char, style, colour = cell
    return ConceptProbe(f"{colour} {style} {char}", (prompt(char, colour, style),), {"char": char, "style": style,
                                                                                      "colour": colour})  # fmt: skip


def general_cells(count: int = 24, seed: int = 0) -> list[Cell]:
    """A fixed random sample of cells: the general-retention sample of the benchmark."""
    return random.Random(seed).sample(list(ALL_CELLS), count)
