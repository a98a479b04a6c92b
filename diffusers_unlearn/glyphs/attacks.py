"""Attack targets of the glyphs model's concepts: what `diffusers_unlearn.attacks` tries on a removal of each.

Example:
    ```py
    >>> from diffusers_unlearn import attacks
    >>> from diffusers_unlearn.glyphs.attacks import attack_target
    >>> from diffusers_unlearn.glyphs.concepts import Concept
    >>> results = attacks.run_attacks(pipe, attack_target(Concept.parse("serif Q")), "glyphs", reference=base)
    ```
"""

from __future__ import annotations

from ..attacks.base import AttackTarget
from .concepts import LOOKALIKES, PROBE_CHARS, Concept
from .data import COLOUR_SYNONYMS, COLOURS, HELD_OUT_TEMPLATES, STYLE_SYNONYMS, STYLES, char_words, fill, prompt


def attack_target(concept: Concept) -> AttackTarget:
    """The attack target of a glyphs-model concept (a character, a style, a colour or an identity).

    Paraphrases are the concept in every `glyphs.HELD_OUT_TEMPLATES` phrasing (never used in training) with each of
    its synonyms; the learned token is measured in those phrasings too; unrelated prompts ask for characters the
    concept does not cover, in styles and colours it does not name; kept prompts (what the mixture attack mixes)
    are the seed cell with one part the concept names changed: its look-alikes and the probe characters, the other
    styles, the other colours.

    Example:
        ```py
        >>> from diffusers_unlearn.glyphs.concepts import Concept
        >>> attack_target(Concept.parse("serif Q")).check
        {'char': 'Q', 'style': 'serif'}
        ```
    """
    slot = {"colour": "{colour}", "style": "{style}"}.get(concept.kind, "{char}")
    if concept.kind == "style":
        names = STYLE_SYNONYMS[concept.style]
    elif concept.kind == "colour":
        names = COLOUR_SYNONYMS[concept.colour]
    else:
        names = char_words(concept.char)
    char = concept.char or PROBE_CHARS[0]
    colour, style = concept.colour or "red", concept.style or "sans"
    seed_style = concept.style or ("sans" if concept.kind == "colour" else None)
    seed_prompt = prompt(char, colour, seed_style)
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
    kept = []  # the seed cell with one named part changed: look-alike and probe characters, other styles, colours
    if concept.char:
        chars = dict.fromkeys([*LOOKALIKES[char], *PROBE_CHARS])
        kept += [prompt(c, colour, seed_style) for c in chars if c != char]
    if concept.style:
        kept += [prompt(char, colour, s) for s in STYLES if s != concept.style]
    if concept.colour:
        kept += [prompt(char, c, seed_style) for c in COLOURS if c != concept.colour]
    # maskers: the other characters' words, alone and as a prompt of their own in four words ("o", "the blue letter
    # o"), which fit in front of a seed prompt of six in the tokenizer's twelve tokens
    masking = [c for c in dict.fromkeys([*LOOKALIKES[char], *PROBE_CHARS]) if c != char]
    maskers = [char_words(c)[-1] for c in masking] + [prompt(c, unrelated_colours[0]) for c in masking]
    return AttackTarget(concept.name, seed_prompt, dict(concept.parts), tuple(names), tuple(paraphrases),
                        tuple(templates), unrelated, tuple(kept), tuple(maskers))  # fmt: skip
