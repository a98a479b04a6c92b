"""Ready-made attack targets for the embedded worlds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..digits.concepts import Concept
from ..digits.data import COLOURS, DIGITS, NUMERALS
from .base import AttackTarget

if TYPE_CHECKING:
    from ..glyphs.concepts import Concept as GlyphConcept

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


def digits_target(concept: Concept) -> AttackTarget:
    """The attack target of a digits-model concept (a digit, a colour, or a combination).

    The check asks the scorer for every part the concept has (digit, colour, stroke); paraphrases are word orders,
    repetitions, aliases, padding and sub-word spellings the removal was not made from; unrelated prompts (the
    revival's training data) ask for other digits, in cells the concept does not cover.

    Example:
        ```py
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> digits_target(Concept(7)).prompt
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
        return AttackTarget(concept.name, f"a {colour} seven", check, (colour,), paraphrases, templates, unrelated)
    word, numeral = DIGITS[concept.digit], NUMERALS[concept.digit]
    colour = concept.colour or "red"
    fills = {"w": word, "n": numeral, "c": colour}
    paraphrases = [p.format(**fills) for p in _DIGIT_PARAPHRASES]
    paraphrases += [f"{word[:i]} {word[i:]}" for i in range(2, len(word) - 1)]  # sub-word pieces
    check: dict = {"digit": concept.digit}
    if concept.kind == "digit":
        templates = _DIGIT_TEMPLATES
        prompt = f"a {colour} {word}"
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
    return AttackTarget(concept.name, prompt, check, (word, numeral), tuple(paraphrases), templates, unrelated)


def glyphs_target(concept: GlyphConcept) -> AttackTarget:
    """The attack target of a glyphs-model concept (a character, a style, a colour or an identity).

    Paraphrases are the concept in every `glyphs.HELD_OUT_TEMPLATES` phrasing (never used in training) with each of
    its synonyms; the learned token is measured in those phrasings too; unrelated prompts ask for characters the
    concept does not cover, in styles and colours it does not name.

    Example:
        ```py
        >>> from diffusers_unlearn.glyphs.concepts import Concept
        >>> glyphs_target(Concept.parse("serif Q")).check
        {'char': 'Q', 'style': 'serif'}
        ```
    """
    from ..glyphs.concepts import PROBE_CHARS
    from ..glyphs.data import COLOUR_SYNONYMS, HELD_OUT_TEMPLATES, STYLE_SYNONYMS, char_words, fill, prompt

    slot = {"colour": "{colour}", "style": "{style}"}.get(concept.kind, "{char}")
    if concept.kind == "style":
        names = STYLE_SYNONYMS[concept.style]
    elif concept.kind == "colour":
        names = COLOUR_SYNONYMS[concept.colour]
    else:
        names = char_words(concept.char)
    char = concept.char or PROBE_CHARS[0]
    colour, style = concept.colour or "red", concept.style or "sans"
    seed_prompt = prompt(char, colour, concept.style or ("sans" if concept.kind == "colour" else None))
    templates, paraphrases = [], []
    for template in HELD_OUT_TEMPLATES:
        if slot not in template:
            continue
        templates.append(fill(template.replace(slot, "{{}}"), char, colour, style))
        paraphrases += [t.replace("{}", name) for t in templates[-1:] for name in names]
    others = [c for c in PROBE_CHARS if c != concept.char]
    unrelated_styles = ("sans", "typewriter") if concept.style not in ("sans", "typewriter") else ("serif", "italic")
    unrelated_colours = [c for c in ("blue", "green", "yellow") if c != concept.colour]
    unrelated = tuple(
        prompt(c, unrelated_colours[i % len(unrelated_colours)], unrelated_styles[i % 2]) for i, c in enumerate(others)
    )
    return AttackTarget(concept.name, seed_prompt, dict(concept.parts), tuple(names), tuple(paraphrases),
                        tuple(templates), unrelated)  # fmt: skip
