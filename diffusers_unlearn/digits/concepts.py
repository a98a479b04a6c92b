"""Concepts of the digits model: what to erase, how to ask `erase` for it, and how to measure it.

A concept is a whole digit (`Concept(digit=7)`, "seven" with alias "7"), a whole colour
(`Concept(colour="red")`) or a single combination (`Concept(3, "blue")`, optionally with a stroke:
`Concept(3, "blue", "bold")`), or `Concept.parse("red seven")`. `erase_kwargs()` gives the arguments of
[`diffusers_unlearn.erase`]; `forget_probe()` the prompts and check that measure whether it is still generated,
`probes()` every probe of `evaluation.evaluate`. `erase_kwargs_for(name, ...)` adds options to a concept
named in words (what `diffusers-unlearn erase --model digits` runs).
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import InvalidArgumentError, InvalidConceptError
from ..evaluation import ConceptProbe
from .data import COLOURS, DIGITS, NUMERALS, STROKES, TEMPLATES, prompt

LOOKALIKES: dict[int, tuple[int, ...]] = {
    0: (6, 8), 1: (7, 4), 2: (7, 3), 3: (8, 5), 4: (9, 1), 5: (6, 3), 6: (5, 0), 7: (1, 2), 8: (3, 0), 9: (4, 8),
}  # fmt: skip
"""Digits that handwritten digits are most often confused with (the related concepts of a digit)."""

BACKGROUND_TEMPLATES: tuple[str, ...] = tuple(t for t in TEMPLATES if not t.startswith(("a {digit}", "a {colour}")))
"""The caption templates of `Concept.background_prompts`: those that open with none of the words of the benchmark's
probes ("a three", "a red three, bold"), so that a removal protecting them is not protecting the probes."""

CHANCE: dict[str, float] = {"digit": 1 / len(DIGITS), "colour": 1 / len(COLOURS), "combination": 1 / len(DIGITS)}
"""Forget accuracy of a model that does not know the concept: a whole digit is one of ten, a whole colour one of
four; a combination is measured on its digit (the colour is still asked for), so one in ten."""


@dataclass(frozen=True, order=True)
class Concept:
    """A digits-model concept: a digit, a colour, or a combination (with an optional stroke)."""

    digit: int | None = None
    colour: str | None = None
    stroke: str | None = None

    def __post_init__(self):
        if self.digit is None and self.colour is None:
            raise InvalidConceptError(
                'A concept needs a digit, a colour, or both: `Concept(7)`, `Concept(colour="red")`.'
            )
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise InvalidConceptError(f"digit must be 0..9, got {self.digit}")
        if self.colour is not None and self.colour not in COLOURS:
            raise InvalidConceptError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if self.stroke is not None and (self.stroke not in STROKES or self.digit is None or self.colour is None):
            raise InvalidConceptError(
                f'A stroke ({STROKES}) only narrows a digit-and-colour combination: `Concept(3, "blue", "bold")`.'
            )

    @classmethod
    def parse(cls, text: str) -> Concept:
        """A concept from words: `"seven"`, `"7"`, `"red"`, `"red seven"`, `"bold red seven"` (its `name` reads back).

        Raises:
            InvalidConceptError: A word that names no digit, colour or stroke of the digits model, two of a kind,
                or a stroke without a digit and a colour.
        """
        words = text.lower().split()
        digits = [DIGITS.index(w) if w in DIGITS else int(w) for w in words if w in DIGITS or w in NUMERALS]
        colours = [w for w in words if w in COLOURS]
        strokes = [w for w in words if w in STROKES]
        unknown = [w for w in words if w not in (*DIGITS, *NUMERALS, *COLOURS, *STROKES)]
        if not words or unknown or len(digits) > 1 or len(colours) > 1 or len(strokes) > 1:
            raise InvalidConceptError(
                f"{text!r} is no digits-model concept: name a digit ({DIGITS[0]!r}..{DIGITS[-1]!r} or '0'..'9'), a "
                f"colour of {COLOURS}, or both, optionally with a stroke of {STROKES} ('bold red seven')."
            )
        return cls(digits[0] if digits else None, colours[0] if colours else None, strokes[0] if strokes else None)

    @property
    def kind(self) -> str:
        if self.colour is None:
            return "digit"
        return "colour" if self.digit is None else "combination"

    @property
    def name(self) -> str:
        """`"seven"`, `"red"`, `"blue three"`, `"bold blue three"`."""
        parts = [self.stroke, self.colour, DIGITS[self.digit] if self.digit is not None else None]
        return " ".join(p for p in parts if p)

    @property
    def chance(self) -> float:
        return CHANCE[self.kind]

    def covers(self, digit: int, colour: str, stroke: str | None = None) -> bool:
        """Whether the prompt for this cell asks for the concept (a cell without a stroke is covered only by
        a concept without one)."""
        return (
            self.digit in (None, digit)
            and self.colour in (None, colour)
            and (self.stroke is None or self.stroke == stroke)
        )

    # ------------------------------------------------------------------------------------------ erasing
    def forget_prompts(self) -> list[str]:
        """Every caption template filled so that it asks for the concept (slot word: the digit, or the colour)."""
        prompts = []
        for template in TEMPLATES:
            if self.kind == "colour" and "{colour}" not in template:
                continue
            if self.kind == "combination" and "{colour}" not in template:
                continue
            if self.stroke is not None and "{stroke}" not in template:
                continue
            digits = [DIGITS[self.digit]] if self.digit is not None else list(DIGITS)
            colours = [self.colour] if self.colour else list(COLOURS)
            strokes = [self.stroke] if self.stroke else list(STROKES)
            for digit, colour, stroke in itertools.product(digits, colours, strokes):
                prompts.append(template.format(digit=digit, colour=colour, stroke=stroke))
        return list(dict.fromkeys(prompts))

    def erase_kwargs(self, erase_at: str = "digit", background: int = 0, fallback: bool = False) -> dict:
        """Arguments of `diffusers_unlearn.erase` for this concept on the digits model.

        `erase_at="attribute"` erases a combination at its stroke (or colour) word instead of its digit: the digit
        stays, drawn in another stroke (colour); see `_attribute_kwargs` and docs/benchmarks/continual_analysis.md.
        `background`: that many `background_prompts()` are preserved too, as a group of their own
        (`preserve={"related": [...], "background": [...]}`), so that they do not outweigh the related prompts.
        `fallback=True` is for chains: the context without the concept is also checked by sampling
        (`target_check="sampled"`), and a combination falls back to the other digits where it is rejected
        (`fallback_candidates`). Along the digits chain "a bold green" is drawn as a green eight by the 17th
        removal, "bold green eight", which was mapped there and stayed in 99% of its images; with it, mapped to
        "a bold green nine", it is removed (docs/erasing.md#erase, *Along a chain, check the emptied context*).

        The erased word is the digit (for a digit or a combination) or the colour; the other words of each
        prompt are its context. Mapping candidates: the context without the word and the generic word "digit"
        (which the model never saw in a caption, so `erase` rejects it as untrained: it draws "a green digit" as
        a nine); for a whole digit or colour also the other digits (colours) in the same context, since the
        model draws a context without its digit ("a green") as a seven and without its colour mostly red. Not
        for a combination: mapping "a blue three" to "a blue two" also turns the threes of every other colour
        into twos (measured: related retention 56%, against 100% for "a blue"). The model itself picks the
        nearest candidate it does not draw as the concept. Other digits (or colours) are protected in the same
        contexts; for a combination, the same digit in the other colours (and strokes) and asked without colour
        is protected too; for a colour, every digit asked without colour.
        """
        kwargs = self._kwargs(erase_at)
        if fallback:
            kwargs["target_check"] = "sampled"
            if self.kind == "combination" and erase_at == "digit":
                kwargs["fallback_candidates"] = [w for w in DIGITS if w != kwargs["concept"]]
        if background:
            kwargs["preserve"] = {
                "related": kwargs.get("preserve", []),
                "background": self.background_prompts(background),
            }
        return kwargs

    def _kwargs(self, erase_at: str) -> dict:
        """`erase_kwargs` without the background."""
        if self.kind == "colour":
            others = [c for c in COLOURS if c != self.colour]
            return {
                "concept": self.colour,
                "prompts": self.forget_prompts(),
                "mapping_candidates": others,
                "neighbors": others,
                "preserve": [p for d in range(len(DIGITS)) for p in _colourless(d)],
                "name": f"no-{self.colour}",
            }
        if erase_at not in ("digit", "attribute"):
            raise InvalidArgumentError(f"erase_at must be 'digit' or 'attribute', got {erase_at!r}.")
        if self.kind == "combination" and erase_at == "attribute":
            return self._attribute_kwargs()
        word, numeral = DIGITS[self.digit], NUMERALS[self.digit]
        kwargs = {
            "concept": word,
            "aliases": [numeral],
            "prompts": self.forget_prompts(),
            "category": "digit",
            "neighbors": [w for d in range(10) if d != self.digit for w in (DIGITS[d], NUMERALS[d])],
            "name": "no-" + self.name.replace(" ", "-"),
        }
        if self.kind == "digit":
            kwargs["mapping_candidates"] = [DIGITS[d] for d in range(10) if d != self.digit]
        if self.kind == "combination":
            # A prompt without a stroke may show either stroke, so it is neither erased nor protected for a
            # concept with one: "a blue three" shares every token up to "three" with "a blue three, bold".
            kwargs["preserve"] = self._same_digit_kept() + _colourless(self.digit)
        return kwargs

    def background_prompts(self, count: int = 100) -> list[str]:
        """Up to `count` prompts of random cells (one per cell), in `BACKGROUND_TEMPLATES`, each naming a digit,
        colour or stroke the concept does not have (a prompt that leaves out the part it differs in could show the
        concept): a sample of everything else the model draws, for the removal to hold (as the glyphs concepts'
        `background_prompts`).

        Example:
            ```py
            >>> Concept(9, "blue").background_prompts(3)
            ['green two', 'red six', 'a thin green six']
            ```
        """
        rng = random.Random(zlib.crc32(self.name.encode()) + 1)
        prompts: list[str] = []
        for digit, colour, stroke in rng.sample(ALL_CELLS, len(ALL_CELLS)):
            if len(prompts) == count:
                break
            template = rng.choice(BACKGROUND_TEMPLATES)
            differs = (
                (self.digit is not None and digit != self.digit)
                or (self.colour is not None and "{colour}" in template and colour != self.colour)
                or (self.stroke is not None and "{stroke}" in template and stroke != self.stroke)
            )
            text = template.format(digit=DIGITS[digit], colour=colour, stroke=stroke)
            if differs and text not in prompts:
                prompts.append(text)
        return prompts

    def _same_digit_kept(self) -> list[str]:
        """The combination's digit in the other colours (and strokes): what its removal keeps."""
        strokes = STROKES if self.stroke else (None, *STROKES)
        return [
            prompt(self.digit, colour, stroke)
            for colour in COLOURS
            for stroke in strokes
            if not self.covers(self.digit, colour, stroke)
        ]

    def _attribute_kwargs(self) -> dict:
        """A combination is erased where a prompt names all of it, at its stroke word (or, without one, its colour
        word), mapped to the other stroke (colours, or the context without the colour): "a blue three" is drawn
        as a three of another colour. Each forget prompt with another digit (and, with a stroke, another colour)
        is protected, so that the edit acts only on the embeddings that see every part (a causal text encoder
        gives "a blue" the same embeddings in "a blue three" and "a blue two"); so are the same digit in the other
        colours and strokes and the digit asked without colour. A prompt without a stroke may show either stroke:
        neither erased nor protected, nor a target, for a concept with one."""
        word = self.stroke or self.colour
        values = STROKES if self.stroke else COLOURS
        forget = self.forget_prompts()
        others = [(digit, self.colour) for digit in range(len(DIGITS)) if digit != self.digit]
        if self.stroke:
            others += [(self.digit, colour) for colour in COLOURS if colour != self.colour]
        contrast = [p for digit, colour in others for p in Concept(digit, colour, self.stroke).forget_prompts()]
        kept = [*self._same_digit_kept(), *_colourless(self.digit), *contrast]
        preserve = [p for p in dict.fromkeys(kept) if p not in forget]
        return {
            "concept": word,
            "prompts": forget,
            "mapping_candidates": [v for v in values if v != word],
            # a context without its stroke ("a green five") is drawn in either stroke: no target for one
            "map_to_context": not self.stroke,
            "preserve": preserve,
            "name": "no-" + self.name.replace(" ", "-"),
        }

    # ---------------------------------------------------------------------------------------- measuring
    def forget_probe(self) -> ConceptProbe:
        """Prompts that ask for the concept, and the check that an image still shows it."""
        if self.kind == "colour":
            prompts = tuple(prompt(d, self.colour) for d in range(10))
            return ConceptProbe(self.name, prompts, {"colour": self.colour})
        if self.kind == "digit":
            prompts = tuple(prompt(self.digit, c) for c in COLOURS) + (f"the number {NUMERALS[self.digit]}",)
            return ConceptProbe(self.name, prompts, {"digit": self.digit})
        numeral_prompt = f"the number {NUMERALS[self.digit]} in {self.colour}"
        if self.stroke:
            numeral_prompt += f", {self.stroke}"
        prompts = (prompt(self.digit, self.colour, self.stroke), numeral_prompt)
        return ConceptProbe(self.name, prompts, {"digit": self.digit})

    def related(self) -> list[tuple[int, str, str]]:
        """The (digit, colour, stroke) cells nearest the concept: look-alike digits (in the concept's colour and
        stroke, if it has them), and for a combination the same digit in the other colours and strokes."""
        if self.kind == "colour":
            return []
        colours = [self.colour] if self.colour else list(COLOURS)
        strokes = [self.stroke] if self.stroke else list(STROKES)
        cells = [(d, c, s) for d in LOOKALIKES[self.digit] for c in colours for s in strokes]
        if self.kind == "combination":
            cells += [(self.digit, c, s) for c in COLOURS for s in STROKES if not self.covers(self.digit, c, s)]
        return cells

    def probes(self, removed: Iterable[Concept] = ()) -> dict[str, list[ConceptProbe]]:
        """The `forget`, `related` and `general` probes of `evaluation.evaluate` for this concept's removal.

        Related: the cells of `related()`; general: every fourth other cell. Cells this concept or one of
        `removed` (concepts other loaded removals erase on purpose) covers are left out: losing them is no lost
        retention.

        Example:
            ```py
            >>> from diffusers_unlearn.digits import DigitsConceptScorer
            >>> result = evaluate(pipe, DigitsConceptScorer(), **Concept(7).probes(), images_per_prompt=8)
            ```
        """
        removed = [r for r in removed if r != self]
        kept = [c for c in ALL_CELLS if not self.covers(*c) and not any(r.covers(*c) for r in removed)]
        related = [c for c in self.related() if c in kept]
        general = [c for c in kept if c not in related][::4]
        return {
            "forget": [self.forget_probe()],
            "related": [cell_probe(*c) for c in related],
            "general": [cell_probe(*c) for c in general],
        }


def _colourless(digit: int) -> list[str]:
    """Prompts that ask for a digit without colour or stroke: a colour or a combination removal keeps them."""
    return [DIGITS[digit], f"a {DIGITS[digit]}", f"the number {NUMERALS[digit]}"]


def cell_probe(digit: int, colour: str, stroke: str) -> ConceptProbe:
    """The retention probe of one cell: its canonical prompt, whose images must show that digit in that colour."""
    return ConceptProbe(
        f"{stroke} {colour} {DIGITS[digit]}", (prompt(digit, colour, stroke),), {"digit": digit, "colour": colour}
    )


ALL_CELLS: tuple[tuple[int, str, str], ...] = tuple(
    (d, c, s) for d in range(len(DIGITS)) for c in COLOURS for s in STROKES
)
"""Every (digit, colour, stroke) cell of the model."""


SHORT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a {}",
    "the number {}",
    "a red {}",
    "a blue {}",
    "a green {}",
    "a yellow {}",
)
"""Contexts for a concept the digits model does not know: its text encoder reads 16 tokens, too few for
`diffusers_unlearn.prompts.DEFAULT_TEMPLATES`."""


def erase_kwargs_for(
    concept: str,
    *,
    aliases: Sequence[str] = (),
    prompts: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    neighbors: Sequence[str] = (),
    preserve: Sequence[str] = (),
    category: str | None = None,
    mine_neighbors: int = 0,
) -> dict:
    """Arguments of `diffusers_unlearn.erase` for a concept named in words on the digits model, with more options.

    A concept the model knows (`Concept.parse`: "seven", "red seven") starts from its own forget prompts, mapping
    candidates and neighbours (`Concept.erase_kwargs`), and the options add to them: `aliases`, `neighbors` and
    `preserve` extend the lists, `prompts` and `templates` (filled with the concept and each alias) add forget
    prompts, `category` replaces the candidate. Any other concept is passed on as given, with contexts that fit
    the model (`SHORT_TEMPLATES`) unless `prompts` or `templates` are given. This is what
    `diffusers-unlearn erase --model digits` runs.

    Example:
        ```py
        >>> kwargs = erase_kwargs_for("seven", neighbors=["seventy"], prompts=["a seven on a wall"])
        >>> adapter = diffusers_unlearn.erase(pipe, **kwargs)
        ```
    """
    given = {
        "concept": concept,
        "aliases": list(aliases),
        "prompts": list(prompts) if prompts else None,
        "templates": list(templates) if templates else None,
        "neighbors": list(neighbors),
        "mine_neighbors": mine_neighbors,
        "preserve": list(preserve),
        "category": category,
    }
    try:
        known = Concept.parse(concept)
    except InvalidConceptError:  # not the model's own concept: erase it like any other
        return given if prompts or templates else given | {"templates": list(SHORT_TEMPLATES)}
    kwargs = known.erase_kwargs()
    kwargs.pop("name", None)
    names = [kwargs["concept"], *kwargs.get("aliases", []), *aliases]
    extra_prompts = list(prompts or []) + [t.replace("{}", name) for t in templates or [] for name in names]

    def merged(key: str, more: Sequence[str]) -> list[str]:
        return list(dict.fromkeys([*kwargs.get(key, []), *more]))

    kwargs.update(
        aliases=merged("aliases", aliases),
        prompts=merged("prompts", extra_prompts),
        neighbors=merged("neighbors", neighbors),
        preserve=merged("preserve", preserve),
        mine_neighbors=mine_neighbors,
    )
    if category:
        kwargs["category"] = category
    return kwargs
