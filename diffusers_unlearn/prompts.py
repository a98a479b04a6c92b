"""Prompts of a removal: contexts, forget prompts, mapping candidates and token alignment.

A *context* is a prompt with a slot for the concept (`"a photo of {}"`). Forget prompts fill the slot with
the concept and each alias; mapping candidates fill it with a replacement, so every target keeps the
prompt's context (DESIGN §2, fine-grained mapping targets).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import InvalidConceptError

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}",
    "an image of {}",
    "a painting of {}",
    "a drawing of {}",
    "a close-up picture of {}",
    "a portrait of {}",
    "{} in a scene",
    "a picture of {} outside",
    "a detailed illustration of {}",
)
"""Contexts used when `erase` gets no `prompts`: generic enough for any concept a real model knows. Those too long
for a pipeline's text encoder once filled are left out for it (see [`default_templates`])."""


def _tidy(text: str) -> str:
    """Collapses the spaces and dangling punctuation left by an empty slot."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    return text.strip(" ,;:")


@dataclass(frozen=True)
class Context:
    """A prompt with one slot, `{}`, where a concept or a replacement goes."""

    template: str

    def fill(self, name: str) -> str:
        """The prompt with `name` in the slot (an empty name removes the concept from the prompt)."""
        return _tidy(self.template.replace("{}", name))


def default_templates(tokenizer, names: Sequence[str]) -> list[str]:
    """The [`DEFAULT_TEMPLATES`] whose prompts fit the text encoder with every name in the slot.

    A small text encoder (the embedded digits model reads 16 tokens) cannot read "a detailed illustration of seven";
    such contexts are dropped, and the log says which (level INFO). Pass `templates=` to `erase` to choose them.

    Args:
        tokenizer: The pipeline's (first) tokenizer.
        names (`Sequence[str]`): The concept and its aliases, as [`check_names`] returns them.

    Returns:
        `list[str]`: The fitting templates, in order. If not even `"{}"` fits, all of them: `erase` then raises
        [`InvalidConceptError`] naming the prompt that is too long.
    """
    limit = tokenizer.model_max_length
    kept = [t for t in DEFAULT_TEMPLATES if all(prompt_length(tokenizer, Context(t).fill(n)) <= limit for n in names)]
    dropped = [t for t in DEFAULT_TEMPLATES if t not in kept]
    if dropped and kept:
        logger.info(
            "The text encoder reads at most %d tokens: left out %d of the default contexts that would be longer "
            "with %s (%s); pass `templates=` to choose the contexts.",
            limit, len(dropped), " / ".join(map(repr, names)), ", ".join(map(repr, dropped)),
        )  # fmt: skip
    return kept or list(DEFAULT_TEMPLATES)


def contexts_from_prompts(prompts: Sequence[str], names: Sequence[str]) -> list[Context]:
    """Turns user prompts into contexts by finding the concept (or an alias) in each.

    Raises:
        InvalidConceptError: A prompt mentions neither the concept nor any alias.
    """
    by_length = sorted(names, key=len, reverse=True)  # "red seven" before "seven"
    pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(name) for name in by_length) + r")(?!\w)", re.IGNORECASE)
    contexts = []
    for prompt in prompts:
        match = pattern.search(prompt)
        if match is None:
            raise InvalidConceptError(
                f"Prompt {prompt!r} mentions neither the concept nor an alias ({', '.join(map(repr, names))}). "
                "Forget prompts must contain the concept so that their mapping targets keep the rest of the prompt."
            )
        template = prompt[: match.start()].replace("{}", "") + "{}" + prompt[match.end() :].replace("{}", "")
        contexts.append(Context(template))
    return contexts


def check_names(tokenizer, concept: str, aliases: Sequence[str]) -> list[str]:
    """Validates the concept and aliases against the tokenizer; returns them, concept first, deduplicated.

    Raises:
        InvalidConceptError: Empty concept, an alias that tokenizes to nothing, or tokens the text encoder
            does not know.
    """
    if not isinstance(concept, str) or not concept.strip():
        raise InvalidConceptError("The concept to erase is empty: pass the name of what to remove, e.g. 'Van Gogh'.")
    names = []
    for name in [concept, *aliases]:
        name = _tidy(name)
        if not name:
            raise InvalidConceptError(f"Alias {name!r} is empty; remove it from `aliases`.")
        content = content_ids(tokenizer, name)
        if not content:
            raise InvalidConceptError(f"{name!r} tokenizes to nothing; remove it or spell it differently.")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in content:
            raise InvalidConceptError(
                f"{name!r} contains tokens this text encoder does not know (they encode as "
                f"{tokenizer.unk_token!r}), so the model cannot have learnt it; check the spelling."
            )
        if name.lower() not in (n.lower() for n in names):
            names.append(name)
    return names


def content_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` without the begin / end tokens."""
    ids = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return list(ids)


def prompt_length(tokenizer, prompt: str) -> int:
    """Tokens of `prompt` with begin / end tokens (the tokenizer's own warning about long prompts kept quiet)."""
    return len(tokenizer(prompt, truncation=False, verbose=False).input_ids)


def token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids with begin / end tokens, unpadded; raises if the prompt is too long for the tokenizer."""
    ids = list(tokenizer(prompt, truncation=False, verbose=False).input_ids)
    if len(ids) > tokenizer.model_max_length:
        raise InvalidConceptError(
            f"Prompt {prompt!r} is {len(ids)} tokens long; the text encoder reads at most "
            f"{tokenizer.model_max_length}. Shorten it: the pipeline would silently truncate it."
        )
    return ids


def align(
    ids_a: Sequence[int], ids_b: Sequence[int], length: int, *, causal: bool = True
) -> tuple[list[int], list[int]]:
    """Pairs the token positions of prompt `a` with those of prompt `b` where their embeddings may differ.

    CLIP is causal: a shared prefix has identical embeddings, so positions are paired from the first
    differing token on. The differing middle is paired proportionally (or with the last shared token when
    `b` has no middle), and everything after it (common suffix, end token, padding) keeps its offset.

    A bidirectional encoder (T5, `causal=False`) has no such prefix: every embedding depends on the whole
    prompt, so the shared prefix is paired too, position with position; the rest is paired as above.

    Returns:
        `(positions_a, positions_b)`: equal-length lists of indices into `(length,)`-token sequences.
    """
    prefix = 0
    while prefix < min(len(ids_a), len(ids_b)) and ids_a[prefix] == ids_b[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < min(len(ids_a), len(ids_b)) - prefix
        and ids_a[len(ids_a) - 1 - suffix] == ids_b[len(ids_b) - 1 - suffix]
    ):
        suffix += 1
    middle_a = len(ids_a) - prefix - suffix
    middle_b = len(ids_b) - prefix - suffix
    positions_a, positions_b = [], []
    for i in range(prefix if causal else 0, length):
        if i < prefix:  # shared prefix of a bidirectional encoder: same token, same place
            j = i
        elif i < prefix + middle_a:
            j = prefix + (i - prefix) * middle_b // middle_a if middle_b else max(prefix - 1, 0)
        else:
            j = i - middle_a + middle_b
        positions_a.append(i)
        positions_b.append(min(j, length - 1))
    return positions_a, positions_b
