"""Attacks an attacker who only writes prompts can run: the paraphrase sweep and the discrete token search."""

from __future__ import annotations

import logging
import time

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
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    limit = pipe.tokenizer.model_max_length
    prompts, skipped = [], []
    for prompt in paraphrases_of(target):
        (prompts if len(word_ids(pipe, prompt)) + 2 <= limit else skipped).append(prompt)
    if not prompts:
        raise InvalidConceptError(
            f"No paraphrase fits the tokenizer ({limit} tokens): give the target shorter `paraphrases` or `templates`."
        )
    images = generate_prompts(pipe, prompts, settings)
    return result_of("paraphrase", prompts, images, scorer, target.check, started, {"skipped": skipped})


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

    `tokens` adversarial tokens are prepended to the seed prompt and searched so that the attacked model's noise
    predictions on images of the concept match the base model's (see [`Reference`]). Each iteration takes the
    gradient of that loss with respect to a one-hot relaxation of the adversarial tokens, keeps the `top_k`
    most promising tokens per position, evaluates `candidates` single-token swaps drawn from them, and keeps the
    best if it lowers the loss (greedy coordinate gradient). The result is a real token sequence: a prompt an
    attacker who cannot touch the weights could type.

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
    base_ids = token_ids(pipe, target.prompt)
    prompt_length = len(word_ids(pipe, target.prompt))
    if prompt_length + tokens + 2 > tokenizer.model_max_length:
        raise InvalidArgumentError(
            f"{target.prompt!r} leaves no room for {tokens} adversarial tokens in {tokenizer.model_max_length}: "
            "pass fewer `tokens` or a shorter seed prompt."
        )
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    allowed = torch.ones(table.shape[0], dtype=torch.bool)
    allowed[list(tokenizer.all_special_ids)] = False
    allowed[[tokenizer.bos_token_id, tokenizer.eos_token_id]] = False
    if tokenizer.pad_token_id is not None:
        allowed[tokenizer.pad_token_id] = False
    if not allow_concept_tokens:
        allowed[[i for name in target.names for i in word_ids(pipe, name)]] = False
    allowed_ids = allowed.nonzero().flatten()
    generator = torch.Generator().manual_seed(settings.seed)
    reference_data = Reference(reference, target.prompt, samples, settings)

    positions = torch.arange(1, 1 + tokens)

    def with_adversarial(adversarial: torch.Tensor) -> torch.Tensor:  # (C, tokens) -> (C, L) ids
        ids = torch.cat([base_ids[:1], torch.zeros(tokens, dtype=torch.long), base_ids[1:-tokens]])
        ids = ids[None].repeat(adversarial.shape[0], 1)
        ids[:, positions] = adversarial
        return ids

    current = allowed_ids[torch.randint(len(allowed_ids), (tokens,), generator=generator)]
    with torch.no_grad():
        best_loss = float(reference_data.loss(pipe, encode_ids(pipe, with_adversarial(current[None])))[0])
    trace = [best_loss]
    for _ in tqdm(range(iterations), desc="token search", disable=not settings.progress, leave=False):
        one_hot = torch.zeros(tokens, table.shape[0], dtype=table.dtype, device=table.device)
        one_hot[torch.arange(tokens), current] = 1.0
        one_hot.requires_grad_(True)

        def relaxed(output: torch.Tensor, one_hot=one_hot) -> torch.Tensor:
            output = output.clone()
            output[:, positions] = (one_hot @ table)[None].to(output.dtype)
            return output

        with input_embeddings(pipe, relaxed):
            loss = reference_data.loss(pipe, encode_ids(pipe, with_adversarial(current[None])))[0]
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
                    reference_data.loss(pipe, encode_ids(pipe, with_adversarial(trials[i : i + 16])))
                    for i in range(0, candidates, 16)
                ]
            )
        index = int(losses.argmin())
        if float(losses[index]) < best_loss:
            best_loss, current = float(losses[index]), trials[index].clone()
        trace.append(best_loss)

    ids = with_adversarial(current[None])
    with torch.no_grad():
        embeds = encode_ids(pipe, ids).float()
    images = generate_embeds(pipe, embeds, settings)
    text = tokenizer.decode(ids[0, 1 : 1 + tokens + prompt_length])
    details = {"prompt": text, "token_ids": current.tolist(), "loss": trace[-1], "loss_trace": trace}
    return result_of("token_search", [text], images, scorer, target.check, started, details)
