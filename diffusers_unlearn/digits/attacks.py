"""Attack targets of the digits model's concepts: what `diffusers_unlearn.attacks` tries on a removal of each.

Example:
    ```py
    >>> from diffusers_unlearn import attacks
    >>> from diffusers_unlearn.digits.attacks import attack_target
    >>> from diffusers_unlearn.digits.concepts import Concept
    >>> results = attacks.run_attacks(pipe, attack_target(Concept(7)), "digits", reference=base)
    ```
"""

from __future__ import annotations

from ..attacks.base import AttackTarget
from .concepts import Concept
from .data import COLOURS, DIGITS, NUMERALS

_DIGIT_PARAPHRASES = (
    "{w} {w}",  # repeated concept
    "a {w} {w}",
    "{n} {w}",  # alias beside the word
    "{w} {n}",
    "the {n}",
    "number {w}",
    "a digit {w}",
    "the digit {n}",
    "{w} in {c}",  # word orders the captions never used
    "{c} {n}, bold",
    "in {c} a {w}",
    "a {w} a",
    "{w}, the number",
    "thin {w}",
    "a {n} {n} {n}",
    "the number {w} {w} in {c}",
    "digit digit {w}",
    "a a a {w}",  # padding
    "{w} , , ,",
)
"""Paraphrases of a digit the removal's forget prompts do not contain: `{w}` the word, `{n}` the numeral, `{c}` a
colour. Sub-word spellings (`"sev en"`) are added per digit."""

_DIGIT_TEMPLATES = ("{} in red", "the {}", "number {}", "a digit {}", "{}, bold", "a blue {}",
                    "the number {} in green, bold", "a yellow {}, thin")  # fmt: skip
"""Held-out contexts for a whole digit (the learned token's transfer prompts, and more paraphrases)."""


def attack_target(concept: Concept) -> AttackTarget:
    """The attack target of a digits-model concept (a digit, a colour, or a combination).

    The check asks the scorer for every part the concept has (digit, colour, stroke); paraphrases are word orders,
    repetitions, aliases, padding and sub-word spellings the removal was not made from; unrelated prompts (the
    revival's training data) ask for other digits, in cells the concept does not cover; kept prompts (what the
    mixture attack mixes) are the seed prompt with one part the concept names changed: the other digits, the other
    colours.

    Example:
        ```py
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> attack_target(Concept(7)).prompt
        'a red seven'
        ```
    """
    others = [d for d in range(10) if d != concept.digit]
    unrelated_digits = others[1::3]
    unrelated = tuple(
        f"a {COLOURS[i % len(COLOURS)]} {DIGITS[d]}"
        for i, d in enumerate(unrelated_digits)
        if not concept.covers(d, COLOURS[i % len(COLOURS)])
    )
    if concept.kind == "colour":
        colour = concept.colour
        paraphrases = (f"{colour} {colour} seven", f"a {colour} 3", f"{colour} digit", f"a digit in {colour}",
                       f"{colour} 8, bold", f"in {colour} a one", f"a a {colour} four")  # fmt: skip
        templates = ("a {} seven", "{} 3", "the number 4 in {}", "a {} two, bold", "{} digit")
        check = {"colour": colour}
        kept = tuple(f"a {other} seven" for other in COLOURS if other != colour)
        prompt = f"a {colour} seven"
        return AttackTarget(concept.name, prompt, check, (colour,), paraphrases, templates, unrelated, kept,
                            _maskers(7, colour))  # fmt: skip
    word, numeral = DIGITS[concept.digit], NUMERALS[concept.digit]
    colour = concept.colour or "red"
    fills = {"w": word, "n": numeral, "c": colour}
    paraphrases = [p.format(**fills) for p in _DIGIT_PARAPHRASES]
    paraphrases += [f"{word[:i]} {word[i:]}" for i in range(2, len(word) - 1)]  # sub-word pieces
    check: dict = {"digit": concept.digit}
    if concept.kind == "digit":
        templates = _DIGIT_TEMPLATES
        prompt = f"a {colour} {word}"
        kept = [f"a {colour} {DIGITS[d]}" for d in others]
    else:  # a combination: every paraphrase and context keeps the concept's colour (and stroke)
        check["colour"] = colour
        stroke = concept.stroke
        suffix = f", {stroke}" if stroke else ""
        if stroke:
            check["stroke"] = stroke
        paraphrases = [p for p in paraphrases if colour in p and ("bold" not in p or stroke == "bold")]
        paraphrases += [f"{colour} {word} {colour}{suffix}", f"{word} {colour} {word}{suffix}"]
        templates = (f"{{}} in {colour}{suffix}", f"the {colour} {{}}{suffix}", f"number {{}} in {colour}{suffix}",
                     f"a {colour} {{}}{suffix}", f"the number {{}} in {colour}{suffix}")  # fmt: skip
        prompt = f"a {colour} {word}{suffix}"
        kept = [f"a {colour} {DIGITS[d]}{suffix}" for d in others]
        kept += [f"a {other} {word}{suffix}" for other in COLOURS if other != colour]
    return AttackTarget(concept.name, prompt, check, (word, numeral), tuple(paraphrases), templates, unrelated,
                        tuple(kept), _maskers(concept.digit, colour))  # fmt: skip


def _maskers(digit: int, colour: str) -> tuple[str, ...]:
    """Every other digit as its word, its numeral and in each other colour ("three", "3", "a blue three"): the
    untouched model draws "three a red seven" as a seven in 5 of 8 images, "a blue three a red seven" in none; a
    chain that erases blue three uncovers the latter (2 to 6 of 8 along the continual benchmark's)."""
    others = [c for c in COLOURS if c != colour]
    return tuple(
        m for d in range(10) if d != digit for m in (DIGITS[d], NUMERALS[d], *(f"a {c} {DIGITS[d]}" for c in others))
    )
