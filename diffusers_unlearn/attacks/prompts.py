"""Attacks an attacker who only writes prompts can run: the paraphrase sweep, the masking prompts and the discrete
token search."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError, InvalidConceptError
from .base import (
    AttackResult,
    AttackSettings,
    AttackTarget,
    Reference,
    Scorer,
    encode_ids,
    generate_embeds,
    generate_prompts,
    input_embeddings,
    require_sd,
    resolve_scorer,
    result_of,
    token_ids,
    word_ids,
)

logger = logging.getLogger(__name__)


def paraphrases_of(target: AttackTarget) -> list[str]:
    """The target's paraphrases, and each of its templates filled with each of its names (duplicates once)."""
    filled = [t.replace("{}", name) for t in target.templates for name in target.names]
    return list(dict.fromkeys([*target.paraphrases, *filled]))


def paraphrase_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    settings: AttackSettings | None = None,
) -> AttackResult:
    """Generates every paraphrase of the concept (held-out templates, synonyms, word orders) and scores them.

    A prompt the tokenizer cannot hold (too long) is skipped and listed in `details["skipped"]`.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline, removals loaded.
        target ([`AttackTarget`]): Its `paraphrases`, and its `templates` filled with each of its `names`.
        scorer (`ConceptScorer`, callable or `str`): Judges the images (`"digits"`, `"glyphs"` by name).
        settings ([`AttackSettings`], *optional*): Images per prompt, steps, guidance, seed.

    Returns:
        [`AttackResult`]: `asr` over all paraphrases' images; `per_prompt` the rate of each paraphrase.

    Example:
        ```py
        >>> from diffusers_unlearn import attacks
        >>> from diffusers_unlearn.digits.attacks import attack_target
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> result = attacks.paraphrase_attack(pipe, attack_target(Concept(7)), "digits")
        >>> result.asr, max(result.per_prompt.items(), key=lambda kv: kv[1])  # the worst paraphrase
        ```
    """
    return _score_prompts(
        "paraphrase", pipe, paraphrases_of(target), target, scorer, settings,
        "No paraphrase fits the tokenizer ({limit} tokens): give the target shorter `paraphrases` or `templates`.",
    )  # fmt: skip


def _score_prompts(
    attack: str,
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    target: AttackTarget,
    scorer: Scorer | str,
    settings: AttackSettings | None,
    none_fit: str,
) -> AttackResult:
    """The images of every prompt the tokenizer can hold, scored for the target (the others listed in
    `details["skipped"]`); `none_fit` (formatted with `limit`) is the error when none fits."""
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    limit = pipe.tokenizer.model_max_length
    kept, skipped = [], []
    for prompt in prompts:
        (kept if len(word_ids(pipe, prompt)) + 2 <= limit else skipped).append(prompt)
    if not kept:
        raise InvalidConceptError(none_fit.format(limit=limit))
    images = generate_prompts(pipe, kept, settings)
    return result_of(attack, kept, images, scorer, target.check, started, {"skipped": skipped})


def masking_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    settings: AttackSettings | None = None,
) -> AttackResult:
    """Writes another concept in front of the seed prompt ("a blue three a red seven") and scores the images.

    The model draws a prompt that names two concepts as one of them, the other hidden; a removal made on prompts
    that name its concept alone can leave the hidden one untouched, and when a later removal erases the concept in
    front, the hidden one comes through. On the digits model's distilled chain, *a blue three a red seven* drew no
    seven after seven's removal and sevens in 2 to 6 of 8 images once *blue three* was erased too. Prompts the
    tokenizer cannot hold are skipped and listed in `details["skipped"]`.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline, removals loaded.
        target ([`AttackTarget`]): Its `maskers`, each written in front of its `prompt`.
        scorer (`ConceptScorer`, callable or `str`): Judges the images (`"digits"`, `"glyphs"` by name).
        settings ([`AttackSettings`], *optional*): Images per prompt, steps, guidance, seed.

    Returns:
        [`AttackResult`]: `asr` over all masked prompts' images; `per_prompt` the rate of each.

    Raises:
        InvalidConceptError: A target without `maskers`, or none that fits in front of its prompt.

    Example:
        ```py
        >>> from diffusers_unlearn import attacks
        >>> from diffusers_unlearn.digits.attacks import attack_target
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> result = attacks.masking_attack(pipe, attack_target(Concept(7)), "digits")
        >>> max(result.per_prompt.items(), key=lambda kv: kv[1])  # the masked prompt that shows it most
        ```
    """
    return _score_prompts(
        "masking", pipe, [f"{masker} {target.prompt}" for masker in target.maskers], target, scorer, settings,
        f"No masker fits in front of {target.prompt!r} ({{limit}} tokens): give the target short `maskers`, the "
        'names or short prompts of other concepts ("three", "a blue three").',
    )  # fmt: skip


def token_search_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline,
    settings: AttackSettings | None = None,
    tokens: int = 5,
    iterations: int = 40,
    candidates: int = 64,
    top_k: int = 16,
    samples: int = 8,
    allow_concept_tokens: bool = False,
) -> AttackResult:
    """Discrete prompt search within the tokenizer's vocabulary, guided by the base model (UnlearnDiffAtk-style).

    `tokens` adversarial tokens are prepended to the seed prompt and searched ([`search_prefix`], greedy
    coordinate gradient) so that the attacked model's noise predictions on images of the concept match the base
    model's (see [`Reference`]). The result is a real token sequence: a prompt an attacker who cannot touch the
    weights could type.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline (Stable Diffusion 1.x / 2.x), removals loaded.
        target ([`AttackTarget`]): Its seed `prompt` is attacked.
        scorer (`ConceptScorer`, callable or `str`): Judges the images.
        reference (`DiffusionPipeline`): The same model without the removals (the guide).
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed.
        tokens (`int`): Adversarial tokens prepended (UnlearnDiffAtk uses 5).
        iterations (`int`): Search iterations (each: one gradient, `candidates` loss evaluations).
        candidates (`int`): Swaps evaluated per iteration.
        top_k (`int`): Tokens kept per position from the gradient.
        samples (`int`): Noisy latents in the objective.
        allow_concept_tokens (`bool`): Let the search use the concept's own tokens (default no: repeating the
            concept's word is the paraphrase sweep's job).

    Returns:
        [`AttackResult`]: images of the found prompt; `details` holds its token ids, text and loss trace.

    Raises:
        UnsupportedPipelineError: An SDXL pipeline.
        InvalidArgumentError: The seed prompt leaves no room for `tokens` more tokens.
    """
    require_sd(pipe, "token search")
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    tokenizer = pipe.tokenizer
    prompt_length = len(word_ids(pipe, target.prompt))
    _require_room(pipe, target.prompt, tokens)  # before the reference images are made
    banned = [i for name in target.names for i in word_ids(pipe, name)] if not allow_concept_tokens else []
    reference_data = Reference(reference, target.prompt, samples, settings)
    found = search_prefix(
        pipe, target.prompt, reference_data, tokens=tokens, iterations=iterations, candidates=candidates,
        top_k=top_k, banned=banned, seed=settings.seed, progress=settings.progress,
    )  # fmt: skip
    with torch.no_grad():
        embeds = encode_ids(pipe, found.ids[None]).float()
    images = generate_embeds(pipe, embeds, settings)
    text = tokenizer.decode(found.ids[1 : 1 + tokens + prompt_length])
    details = {"prompt": text, "token_ids": found.prefix.tolist(), "loss": found.trace[-1], "loss_trace": found.trace}
    return result_of("token_search", [text], images, scorer, target.check, started, details)


def _require_room(pipe: DiffusionPipeline, prompt: str, tokens: int) -> None:
    """Raises `InvalidArgumentError` unless `tokens` more tokens fit in front of `prompt` in the tokenizer."""
    limit = pipe.tokenizer.model_max_length
    if len(word_ids(pipe, prompt)) + tokens + 2 > limit:
        raise InvalidArgumentError(
            f"{prompt!r} leaves no room for {tokens} adversarial tokens in {limit}: "
            "pass fewer `tokens` or a shorter prompt."
        )


@dataclass
class FoundPrefix:
    """What [`search_prefix`] found: the prefix's token ids, the whole prompt's padded ids and the loss trace."""

    prefix: torch.Tensor
    ids: torch.Tensor
    trace: list[float]

    def text(self, tokenizer) -> str:
        """The prefix as words, written apart (a token that ends a word is decoded without its end mark)."""
        return " ".join(tokenizer.decode([i]).strip() for i in self.prefix.tolist())


def search_prefix(
    pipe: DiffusionPipeline,
    prompt: str,
    reference: Reference,
    *,
    tokens: int = 5,
    iterations: int = 40,
    candidates: int = 64,
    top_k: int = 16,
    banned: Sequence[int] = (),
    seed: int = 0,
    progress: bool = False,
) -> FoundPrefix:
    """The greedy coordinate gradient search of [`token_search_attack`]: `tokens` vocabulary tokens in front of
    `prompt` that bring `pipe`'s noise predictions closest to `reference`'s.

    Each iteration takes the gradient of the loss with respect to a one-hot relaxation of the prefix, keeps the
    `top_k` most promising tokens per position, evaluates `candidates` single-token swaps drawn from them and keeps
    the best if it lowers the loss. The special tokens and `banned` are never drawn. Without images or a
    scorer: what the search finds, to inspect or to train against.

    Args:
        pipe (`DiffusionPipeline`): The searched pipeline (Stable Diffusion 1.x / 2.x), removals loaded.
        prompt (`str`): The prompt the prefix goes in front of.
        reference ([`Reference`]): The base model's noise predictions the search brings `pipe`'s close to.
        tokens (`int`): Tokens of the prefix.
        iterations (`int`): Search iterations (each: one gradient, `candidates` loss evaluations).
        candidates (`int`): Swaps evaluated per iteration.
        top_k (`int`): Tokens kept per position from the gradient.
        banned (`Sequence[int]`): Token ids never drawn (the concept's own, for the attack).
        seed (`int`): Seed of the first prefix and of the swaps.
        progress (`bool`): Show a progress bar.

    Returns:
        [`FoundPrefix`]: the prefix, the prompt's padded ids with it in front, and the loss after each iteration.

    Raises:
        InvalidArgumentError: The prompt leaves no room for `tokens` more tokens.

    Example:
        ```py
        >>> from diffusers_unlearn.attacks import AttackSettings, Reference
        >>> reference = Reference(base_pipe, "a red seven", samples=8, settings=AttackSettings())
        >>> found = search_prefix(pipe, "a red seven", reference, tokens=3, iterations=10)
        >>> found.text(pipe.tokenizer), found.trace[-1]
        ```
    """
    tokenizer = pipe.tokenizer
    _require_room(pipe, prompt, tokens)
    base_ids = token_ids(pipe, prompt)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = torch.ones(table.shape[0], dtype=torch.bool)
    allowed[list(tokenizer.all_special_ids)] = False
    allowed[[tokenizer.bos_token_id, tokenizer.eos_token_id]] = False
    if tokenizer.pad_token_id is not None:
        allowed[tokenizer.pad_token_id] = False
    allowed[list(banned)] = False
    allowed_ids = allowed.nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    positions = torch.arange(1, 1 + tokens)

    def with_prefix(prefixes: torch.Tensor) -> torch.Tensor:  # (C, tokens) -> (C, L) ids
        ids = torch.cat([base_ids[:1], torch.zeros(tokens, dtype=torch.long), base_ids[1:-tokens]])
        ids = ids[None].repeat(prefixes.shape[0], 1)
        ids[:, positions] = prefixes
        return ids

    current = allowed_ids[torch.randint(len(allowed_ids), (tokens,), generator=generator)]
    with torch.no_grad():
        best_loss = float(reference.loss(pipe, encode_ids(pipe, with_prefix(current[None])))[0])
    trace = [best_loss]
    for _ in tqdm(range(iterations), desc="token search", disable=not progress, leave=False):
        one_hot = torch.zeros(tokens, table.shape[0], dtype=table.dtype, device=table.device)
        one_hot[torch.arange(tokens), current] = 1.0
        one_hot.requires_grad_(True)

        def relaxed(output: torch.Tensor, one_hot=one_hot) -> torch.Tensor:
            output = output.clone()
            output[:, positions] = (one_hot @ table)[None].to(output.dtype)
            return output

        with input_embeddings(pipe, relaxed):
            loss = reference.loss(pipe, encode_ids(pipe, with_prefix(current[None])))[0]
        (gradient,) = torch.autograd.grad(loss, [one_hot])
        gradient[:, ~allowed] = float("inf")
        promising = (-gradient).topk(min(top_k, len(allowed_ids)), dim=1).indices.cpu()  # (tokens, top_k)
        where = torch.randint(tokens, (candidates,), generator=generator)
        which = promising[where, torch.randint(promising.shape[1], (candidates,), generator=generator)]
        trials = current[None].repeat(candidates, 1)
        trials[torch.arange(candidates), where] = which
        with torch.no_grad():
            losses = torch.cat(
                [
                    reference.loss(pipe, encode_ids(pipe, with_prefix(trials[i : i + 16])))
                    for i in range(0, candidates, 16)
                ]
            )
        index = int(losses.argmin())
        if float(losses[index]) < best_loss:
            best_loss, current = float(losses[index]), trials[index].clone()
        trace.append(best_loss)
    return FoundPrefix(prefix=current, ids=with_prefix(current[None])[0], trace=trace)
