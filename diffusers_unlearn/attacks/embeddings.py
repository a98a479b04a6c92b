"""Attacks that need more than prompts: a free text embedding, and a learned input token (textual inversion).

Both optimise, by gradient descent, an input the attacked model reads so that its noise predictions on images
of the concept match the base model's ([`Reference`]), as in "Circumventing Concept Erasure Methods for
Text-to-Image Generative Models" (Pham et al., 2024).
"""

from __future__ import annotations

import logging
import time

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from ..errors import InvalidConceptError
from .base import (
    AttackResult,
    AttackSettings,
    AttackTarget,
    Reference,
    Scorer,
    encode_ids,
    generate_embeds,
    input_embeddings,
    require_sd,
    resolve_scorer,
    result_of,
    token_ids,
    word_ids,
)

logger = logging.getLogger(__name__)


def embedding_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline,
    settings: AttackSettings | None = None,
    iterations: int = 200,
    learning_rate: float = 1e-2,
    samples: int = 8,
    batch: int = 4,
) -> AttackResult:
    """Continuous prompt-embedding attack: optimises the text encoder's output itself.

    Starting from the seed prompt's embeddings, every token vector is optimised with Adam so that the attacked
    model reproduces the base model's noise predictions for the concept. This needs access to the pipeline's
    inputs below the tokenizer (anyone who runs the model locally has it); no prompt produces the result.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline (Stable Diffusion 1.x / 2.x), removals loaded.
        target ([`AttackTarget`]): Its seed `prompt` is the starting point.
        scorer (`ConceptScorer`, callable or `str`): Judges the images.
        reference (`DiffusionPipeline`): The same model without the removals (the guide).
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed.
        iterations (`int`): Optimiser steps.
        learning_rate (`float`): Adam learning rate, relative to the embeddings' scale (their RMS).
        samples (`int`): Noisy latents in the objective.
        batch (`int`): Noisy latents per optimiser step.

    Returns:
        [`AttackResult`]: images of the optimised embedding; `details` the loss before and after, and how far
        the embedding moved (relative L2).
    """
    require_sd(pipe, "embedding")
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    reference_data = Reference(reference, target.prompt, samples, settings)
    with torch.no_grad():
        start = encode_ids(pipe, token_ids(pipe, target.prompt)[None]).float()
    scale = float(start.square().mean().sqrt())
    variable = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([variable], lr=learning_rate * scale)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        initial = float(reference_data.loss(pipe, variable)[0])
    for _ in tqdm(range(iterations), desc="embedding attack", disable=not settings.progress, leave=False):
        index = torch.randperm(samples, generator=generator)[:batch]
        loss = reference_data.loss(pipe, variable, index)[0]
        optimizer.zero_grad()
        (gradient,) = torch.autograd.grad(loss, [variable])
        variable.grad = gradient
        optimizer.step()
    with torch.no_grad():
        final = float(reference_data.loss(pipe, variable)[0])
    embeds = variable.detach()
    moved = float((embeds - start).norm() / start.norm())
    images = generate_embeds(pipe, embeds, settings)
    details = {"loss_before": initial, "loss": final, "relative_change": moved}
    return result_of("embedding", [f"embedding of {target.prompt!r}"], images, scorer, target.check, started, details)


def learned_token_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline,
    settings: AttackSettings | None = None,
    iterations: int = 200,
    learning_rate: float = 5e-2,
    samples: int = 8,
    batch: int = 4,
) -> AttackResult:
    """Learned-token attack (textual inversion): one new input token, placed where the concept's word was.

    The token's input embedding is learned on the seed prompt ("a red <v>") so that the attacked model
    reproduces the base model's predictions; it is then measured there and in each of the target's
    `templates` ("a blue <v>", "the number <v> in green, bold"): a token that transfers is a reusable key to the
    concept, shareable like any textual-inversion embedding.

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline (Stable Diffusion 1.x / 2.x), removals loaded.
        target ([`AttackTarget`]): Its seed `prompt` (where the token is learned) and `templates` (transfer).
        scorer (`ConceptScorer`, callable or `str`): Judges the images.
        reference (`DiffusionPipeline`): The same model without the removals (the guide).
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed.
        iterations (`int`): Optimiser steps.
        learning_rate (`float`): Adam learning rate, relative to the token embeddings' RMS.
        samples (`int`): Noisy latents in the objective.
        batch (`int`): Noisy latents per optimiser step.

    Returns:
        [`AttackResult`]: `asr` over the seed prompt and every template; `per_prompt` each of them (with `<v>`
        for the learned token); `details["transfer_asr"]` over the templates alone.
    """
    require_sd(pipe, "learned-token")
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    reference_data = Reference(reference, target.prompt, samples, settings)
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    placeholder = word_ids(pipe, target.names[0])[0]
    contexts = list(dict.fromkeys([target.context, *target.templates]))

    def placed(context: str) -> tuple[torch.Tensor, int]:
        """Token ids of the context with the placeholder in the slot, and the slot's position."""
        before, _, after = context.partition("{}")
        head = word_ids(pipe, before) if before.strip() else []
        tail = word_ids(pipe, after) if after.strip() else []
        ids = token_ids(pipe, "")
        body = [ids[0].item(), *head, placeholder, *tail, ids[1].item()]
        if len(body) > len(ids):
            raise InvalidConceptError(
                f"{context!r} is too long for the tokenizer ({len(ids)} tokens with the placeholder): use shorter "
                "`templates` in the target."
            )
        ids[: len(body)] = torch.tensor(body)
        return ids, 1 + len(head)

    seed_ids, seed_position = placed(target.context)
    variable = table[placeholder].clone().float().requires_grad_(True)
    scale = float(table.float().square().mean().sqrt())
    optimizer = torch.optim.Adam([variable], lr=learning_rate * scale)
    generator = torch.Generator().manual_seed(settings.seed)

    def encode(ids: torch.Tensor, position: int) -> torch.Tensor:
        def replace(output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, position] = variable.to(output.dtype)
            return output

        with input_embeddings(pipe, replace):
            return encode_ids(pipe, ids[None])

    with torch.no_grad():
        initial = float(reference_data.loss(pipe, encode(seed_ids, seed_position))[0])
    for _ in tqdm(range(iterations), desc="learned token", disable=not settings.progress, leave=False):
        index = torch.randperm(samples, generator=generator)[:batch]
        loss = reference_data.loss(pipe, encode(seed_ids, seed_position), index)[0]
        (gradient,) = torch.autograd.grad(loss, [variable])
        optimizer.zero_grad()
        variable.grad = gradient
        optimizer.step()
    with torch.no_grad():
        final = float(reference_data.loss(pipe, encode(seed_ids, seed_position))[0])
        embeds = torch.cat([encode(*placed(c)).float() for c in contexts])
    images = generate_embeds(pipe, embeds, settings)
    labels = [c.replace("{}", "<v>") for c in contexts]
    result = result_of("learned_token", labels, images, scorer, target.check, started)
    transfer = [result.per_prompt[label] for label in labels[1:]]
    result.details = {
        "loss_before": initial,
        "loss": final,
        "seed_asr": result.per_prompt[labels[0]],
        "transfer_asr": sum(transfer) / len(transfer) if transfer else float("nan"),
        "token_norm_ratio": float(variable.detach().norm() / table[placeholder].float().norm()),
    }
    return result
