"""Attacks that try to bring an erased concept back, each judged by a scorer as an attack success rate (ASR).

Run them against any Stable Diffusion pipeline with removals loaded; the optimising attacks are guided by the same
model without the removals (`reference`). Every attack is seeded and bounded (fixed iterations), and shows a
progress bar.

| attack | needs | what it does |
|---|---|---|
| `direct` | prompts | the seed prompt itself (the removal's own test) |
| `paraphrase` | prompts | held-out templates, synonyms, word orders, repetitions, padding, sub-word spellings |
| `masking` | prompts | another concept written in front of the seed prompt ("a blue three a red seven") |
| `token_search` | prompts (search guided by the base model) | UnlearnDiffAtk-style discrete search of prefix tokens |
| `embedding` | the model's inputs | gradient descent on the text encoder's output |
| `mixture` | the model's inputs | the embedding attack confined to per-token mixtures of prompts the removal keeps |
| `learned_token` | the model's inputs | textual inversion of one token, measured in other contexts too |
| `revival` | the weights | fine-tunes a LoRA on unrelated concepts, then asks for the erased one |

The threat model is in docs/security.md.

Example:
    ```py
    >>> import diffusers_unlearn as du
    >>> from diffusers_unlearn import attacks, digits
    >>> from diffusers_unlearn.digits.attacks import attack_target
    >>> from diffusers_unlearn.digits.concepts import Concept
    >>> base, pipe = digits.load_pipeline(), digits.load_pipeline()
    >>> pipe.load_unlearning(du.erase(pipe, **Concept(7).erase_kwargs()))
    >>> results = attacks.run_attacks(pipe, attack_target(Concept(7)), "digits", reference=base)
    >>> {name: r.asr for name, r in results.items()}
    ```
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from .base import (
    AttackResult,
    AttackSettings,
    AttackTarget,
    Reference,
    Scorer,
    generate_prompts,
    judge,
    resolve_scorer,
    result_of,
)
from .embeddings import (
    InverseEmbedding,
    embedding_attack,
    inverse_embedding,
    inversion_distance,
    learned_token_attack,
    mixture_attack,
    project_to_budget,
)
from .prompts import (
    FoundPrefix,
    masking_attack,
    paraphrase_attack,
    paraphrases_of,
    search_prefix,
    token_search_attack,
)
from .revival import revival_attack

ATTACKS: tuple[str, ...] = (
    "direct", "paraphrase", "masking", "token_search", "embedding", "mixture", "learned_token", "revival",
)  # fmt: skip
"""Every attack, cheapest first."""

PROMPT_ONLY: tuple[str, ...] = ("direct", "paraphrase", "masking", "token_search")
"""The attacks whose result is a prompt anyone can type (the token search is guided by the base model)."""


def direct_attack(
    pipe: DiffusionPipeline, target: AttackTarget, scorer: Scorer | str, *, settings: AttackSettings | None = None
) -> AttackResult:
    """No attack: the seed prompt as it is (the ASR a removal's own test measures)."""
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    images = generate_prompts(pipe, [target.prompt], settings)
    return result_of("direct", [target.prompt], images, scorer, target.check, started)


def run_attacks(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline | None = None,
    attacks: Sequence[str] = ATTACKS,
    settings: AttackSettings | None = None,
    options: Mapping[str, Mapping] | None = None,
) -> dict[str, AttackResult]:
    """Runs several attacks on one target.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline, removals loaded.
        target ([`AttackTarget`]): The concept (an embedded world's: `digits.attacks.attack_target`,
            `glyphs.attacks.attack_target`).
        scorer (`ConceptScorer`, callable or `str`): Judges the images (`"digits"`, `"glyphs"` by name).
        reference (`DiffusionPipeline`, *optional*): The same model without the removals; needed by every
            attack but `direct`, `paraphrase` and `masking`.
        attacks (`Sequence[str]`): Which of [`ATTACKS`] to run.
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed (shared by all).
        options (`Mapping[str, Mapping]`, *optional*): Per attack, keyword arguments of its function
            (`{"embedding": {"iterations": 100}}`).

    Returns:
        `dict[str, AttackResult]`, in the order asked.

    Raises:
        InvalidArgumentError: An unknown attack, or one that needs `reference` without it.
    """
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    options = options or {}
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise InvalidArgumentError(f"Unknown attacks {unknown}; pass names from {list(ATTACKS)}.")
    needs_reference = [a for a in attacks if a not in ("direct", "paraphrase", "masking")]
    if needs_reference and reference is None:
        raise InvalidArgumentError(
            f"{needs_reference} are guided by the model without the removals: pass `reference` (the same pipeline "
            "without them), or run only 'direct', 'paraphrase' and 'masking'."
        )
    functions = {
        "direct": direct_attack,
        "paraphrase": paraphrase_attack,
        "masking": masking_attack,
        "token_search": token_search_attack,
        "embedding": embedding_attack,
        "mixture": mixture_attack,
        "learned_token": learned_token_attack,
        "revival": revival_attack,
    }
    results = {}
    for name in tqdm(list(attacks), desc="attacks", disable=not settings.progress):
        kwargs = dict(options.get(name, {}))
        if name in needs_reference:
            kwargs["reference"] = reference
        results[name] = functions[name](pipe, target, scorer, settings=settings, **kwargs)
    return results


__all__ = [
    "ATTACKS",
    "PROMPT_ONLY",
    "AttackResult",
    "AttackSettings",
    "AttackTarget",
    "FoundPrefix",
    "InverseEmbedding",
    "Reference",
    "Scorer",
    "direct_attack",
    "embedding_attack",
    "inverse_embedding",
    "inversion_distance",
    "judge",
    "learned_token_attack",
    "masking_attack",
    "mixture_attack",
    "paraphrase_attack",
    "paraphrases_of",
    "project_to_budget",
    "resolve_scorer",
    "revival_attack",
    "run_attacks",
    "search_prefix",
    "token_search_attack",
]
