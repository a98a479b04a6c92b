"""Attacks that need more than prompts: a free text embedding, and a learned input token (textual inversion).

Both optimise, by gradient descent, an input the attacked model reads so that its noise predictions on images
of the concept match the base model's ([`Reference`]), as in "Circumventing Concept Erasure Methods for
Text-to-Image Generative Models" (Pham et al., 2024).

Against closed-form removals no optimisation is needed: such a chain edits every layer that reads the text
embedding as `W -> W M` with one matrix `M = (I + G_1) ... (I + G_n)`, so the embedding `c' = M^-1 c` makes the
edited model compute exactly what the untouched model computes for `c` ([`inverse_embedding`]). How far `c'` is
from `c` ([`inversion_distance`]) is the budget an attacker who may perturb the embedding needs; the embedding
attack takes such a budget (`max_relative_norm`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from ..adapter import UnlearningAdapter
from ..errors import InvalidArgumentError, InvalidConceptError
from ..methods.descent import descend
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
    max_relative_norm: float | None = None,
) -> AttackResult:
    """Continuous prompt-embedding attack: optimises the text encoder's output itself.

    Starting from the seed prompt's embeddings, every token vector is optimised with Adam so that the attacked
    model reproduces the base model's noise predictions for the concept. This needs access to the pipeline's
    inputs below the tokenizer (anyone who runs the model locally has it); no prompt produces the result.

    With `max_relative_norm = eps`, the attacker's budget is bounded: after every step each token vector is
    projected back into the ball `||c'_t - c_t|| <= eps * ||c_t||` around the seed prompt's vector `c_t`. Against
    closed-form removals, a budget at least the [`inversion_distance`] contains the exact inverse.

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
        max_relative_norm (`float`, *optional*): Per-token budget `eps` relative to each token vector's norm;
            `None` (default): unbounded.

    Returns:
        [`AttackResult`]: images of the optimised embedding; `details` the loss before and after, how far the
        embedding moved (relative L2 of the whole embedding, and the largest relative change of one token), and
        the budget.

    Raises:
        InvalidArgumentError: A budget that is not a positive number.
    """
    require_sd(pipe, "embedding")
    if max_relative_norm is not None and not max_relative_norm > 0:
        raise InvalidArgumentError(f"max_relative_norm must be a positive number or None, got {max_relative_norm}.")
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    reference_data = Reference(reference, target.prompt, samples, settings)
    with torch.no_grad():
        start = encode_ids(pipe, token_ids(pipe, target.prompt)[None]).float()
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        initial = float(reference_data.loss(pipe, start)[0])

    def loss(variable: torch.Tensor) -> torch.Tensor:  # on a minibatch of the noisy latents
        return reference_data.minibatch_loss(pipe, variable, batch, generator)

    budget = None if max_relative_norm is None else (lambda v: project_to_budget(v, start, max_relative_norm))
    embeds = descend(start, loss, iterations, learning_rate, project=budget, desc="embedding attack",
                     progress=settings.progress)  # fmt: skip
    with torch.no_grad():
        final = float(reference_data.loss(pipe, embeds)[0])
    moved = float((embeds - start).norm() / start.norm())
    token_change = float(token_distance(embeds, start).max())
    images = generate_embeds(pipe, embeds, settings)
    details = {
        "loss_before": initial,
        "loss": final,
        "relative_change": moved,
        "max_token_change": token_change,
        "max_relative_norm": max_relative_norm,
    }
    return result_of("embedding", [f"embedding of {target.prompt!r}"], images, scorer, target.check, started, details)


def mixture_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline,
    settings: AttackSettings | None = None,
    iterations: int = 200,
    learning_rate: float = 0.1,
    samples: int = 8,
    batch: int = 4,
) -> AttackResult:
    """Embedding attack confined to what the removal keeps: per token, a mixture of the `kept` prompts' embeddings.

    The text encoder's outputs of `target.kept` (prompts a removal must keep drawing, each one part of the concept
    away from it: "the red letter o in serif" and "the red letter q in sans" for "a serif Q") are mixed token by
    token with convex weights (a softmax over the prompts at each position), and the weights are optimised like
    the embedding attack so that the attacked model reproduces the base model's noise predictions for the seed
    prompt. A removal must keep each of these prompts; whether it also refuses the mixtures in between says how
    much of the embedding attack's success lies between what it keeps. Measured on glyphs (docs/security.md): the
    removal of the character K refuses them (12% of images, hardened 0%), that of serif Q does not (88%, hardened
    75%: mixtures of serif O and sans Q draw it).

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline (Stable Diffusion 1.x / 2.x), removals loaded.
        target ([`AttackTarget`]): Its seed `prompt` is what the mixture must reproduce; its `kept` prompts are
            what it mixes (at least two).
        scorer (`ConceptScorer`, callable or `str`): Judges the images.
        reference (`DiffusionPipeline`): The same model without the removals (the guide).
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed.
        iterations (`int`): Optimiser steps on the mixture weights (their logits, starting from an even mix).
        learning_rate (`float`): Adam learning rate on the logits.
        samples (`int`): Noisy latents in the objective.
        batch (`int`): Noisy latents per optimiser step.

    Returns:
        [`AttackResult`]: images of the optimised mixture; `details` the loss of the even mix and of the
        optimised one, and each kept prompt's mean weight over the token positions.

    Raises:
        InvalidArgumentError: A target with fewer than two `kept` prompts.

    Example:
        ```py
        >>> from diffusers_unlearn import attacks, digits
        >>> from diffusers_unlearn.digits.attacks import attack_target
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> base = digits.load_pipeline()
        >>> result = attacks.mixture_attack(base, attack_target(Concept(7, "red")), "digits", reference=base)
        >>> result.asr, result.details["weights"]
        ```
    """
    require_sd(pipe, "mixture")
    if len(target.kept) < 2:
        raise InvalidArgumentError(
            f"The mixture attack mixes the prompts a removal keeps: give the target at least two `kept` prompts "
            f"(the embedded worlds' `attack_target` does), got {list(target.kept)}."
        )
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    reference_data = Reference(reference, target.prompt, samples, settings)
    with torch.no_grad():
        vertices = torch.cat([encode_ids(pipe, token_ids(pipe, prompt)[None]).float().cpu() for prompt in target.kept])
    generator = torch.Generator().manual_seed(settings.seed)

    def mixed(logits: torch.Tensor) -> torch.Tensor:  # (K, L) logits -> (1, L, d) embeddings
        return (logits.softmax(0)[..., None] * vertices).sum(0, keepdim=True)

    def loss(logits: torch.Tensor) -> torch.Tensor:  # on a minibatch of the noisy latents
        return reference_data.minibatch_loss(pipe, mixed(logits), batch, generator)

    even = torch.zeros(vertices.shape[:2])
    logits = descend(even, loss, iterations, learning_rate, scale=1.0, desc="mixture attack",
                     progress=settings.progress)  # fmt: skip
    with torch.no_grad():
        initial, final = (float(reference_data.loss(pipe, mixed(v))[0]) for v in (even, logits))
        embeds = mixed(logits)
    images = generate_embeds(pipe, embeds, settings)
    weights = logits.softmax(0).mean(1)
    details = {"loss_before": initial, "loss": final, "weights": dict(zip(target.kept, weights.tolist(), strict=True))}
    return result_of("mixture", [f"mixture of {len(target.kept)} kept prompts"], images, scorer, target.check,
                     started, details)  # fmt: skip


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
    generator = torch.Generator().manual_seed(settings.seed)

    def encode(token: torch.Tensor, ids: torch.Tensor, position: int) -> torch.Tensor:
        def replace(output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            output[:, position] = token.to(output.dtype)
            return output

        with input_embeddings(pipe, replace):
            return encode_ids(pipe, ids[None])

    def loss(token: torch.Tensor) -> torch.Tensor:  # on a minibatch of the noisy latents
        return reference_data.minibatch_loss(pipe, encode(token, seed_ids, seed_position), batch, generator)

    start = table[placeholder].float()
    with torch.no_grad():
        initial = float(reference_data.loss(pipe, encode(start, seed_ids, seed_position))[0])
    token = descend(start, loss, iterations, learning_rate, scale=float(table.float().square().mean().sqrt()),
                    desc="learned token", progress=settings.progress)  # fmt: skip
    with torch.no_grad():
        final = float(reference_data.loss(pipe, encode(token, seed_ids, seed_position))[0])
        embeds = torch.cat([encode(token, *placed(c)).float() for c in contexts])
    images = generate_embeds(pipe, embeds, settings)
    labels = [c.replace("{}", "<v>") for c in contexts]
    result = result_of("learned_token", labels, images, scorer, target.check, started)
    transfer = [result.per_prompt[label] for label in labels[1:]]
    result.details = {
        "loss_before": initial,
        "loss": final,
        "seed_asr": result.per_prompt[labels[0]],
        "transfer_asr": sum(transfer) / len(transfer) if transfer else float("nan"),
        "token_norm_ratio": float(token.norm() / table[placeholder].float().norm()),
    }
    return result


def token_distance(embeds: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Per token, `||embeds_t - start_t|| / ||start_t||`: `(..., L)` from `(..., L, d)`."""
    return (embeds - start).norm(dim=-1) / start.norm(dim=-1).clamp_min(1e-12)


def project_to_budget(embeds: torch.Tensor, start: torch.Tensor, max_relative_norm: float) -> torch.Tensor:
    """Each token vector of `embeds` moved to the nearest point of the ball `||e_t - s_t|| <= eps * ||s_t||`.

    Args:
        embeds (`torch.Tensor`): `(..., L, d)` perturbed embeddings.
        start (`torch.Tensor`): `(..., L, d)` the embeddings the budget is measured from.
        max_relative_norm (`float`): `eps`.

    Returns:
        `torch.Tensor` of the shape of `embeds`: unchanged where inside the ball, on its surface elsewhere.
    """
    delta = embeds - start
    norms = delta.norm(dim=-1, keepdim=True)
    limit = max_relative_norm * start.norm(dim=-1, keepdim=True)
    return start + delta * (limit / norms.clamp_min(1e-12)).clamp(max=1.0)


@dataclass
class InverseEmbedding:
    """The embedding that undoes a chain of closed-form removals ([`inverse_embedding`]).

    Attributes:
        embeds (`torch.Tensor`): `(..., L, d)` float32: `c' = M^-1 c`. Given to the edited model (as
            `prompt_embeds`), its cross-attention keys and values are the untouched model's for `c`.
        distance (`torch.Tensor`): `(..., L)`: per token, `||c'_t - c_t|| / ||c_t||`, the relative budget an
            attacker needs to reach `c'` from `c` at that position.
        map (`torch.Tensor`): `(d, d)` float64: the chain's map `M` on the text embedding.
    """

    embeds: torch.Tensor
    distance: torch.Tensor
    map: torch.Tensor


def inverse_embedding(
    source: DiffusionPipeline | UnlearningAdapter | Sequence[UnlearningAdapter], embeds: torch.Tensor
) -> InverseEmbedding:
    """The text embedding that makes a model with closed-form removals compute what the untouched model computes.

    A closed-form removal edits every layer that reads the text embedding (every cross-attention key and value)
    as `W -> W (I + G)`, with one low-rank remap `G = up @ down` of the embedding (kept in the removal's probes).
    A chain made one removal on top of the other gives `W_base M`, `M = (I + G_1) ... (I + G_n)`; so
    `c' = M^-1 c` gives every edited layer `W_base M c' = W_base c`, exactly. This is why an unbounded embedding
    attack always wins against such an edit: the inverse exists, whatever the remap. Its size relative to `c` (the
    `distance`) is what a norm-bounded attacker must be allowed.

    Only the token embeddings (`prompt_embeds`) are inverted; SDXL's pooled input is not.

    Args:
        source (`DiffusionPipeline`, [`UnlearningAdapter`] or a sequence of them): A pipeline with removals
            loaded (their load order and `scale` are used, and the map is checked against the edited layers'
            weights), or the removals themselves in load order.
        embeds (`torch.Tensor`): `(..., L, d)` text-encoder outputs, e.g. of the prompt that asks for the concept.

    Returns:
        [`InverseEmbedding`]: the embedding `c'`, its per-token distance from `embeds`, and the map `M`.

    Raises:
        InvalidArgumentError: A removal without a stored remap (distilled, merged, or made by another tool: its
            edit is not a remap of the embedding), a chain whose weights are not `W_base M` (removals not made on
            top of each other), a singular map, or embeddings of another width.

    Example:
        ```py
        >>> import diffusers_unlearn as du
        >>> from diffusers_unlearn import attacks, digits
        >>> from diffusers_unlearn.digits.concepts import Concept
        >>> pipe = digits.load_pipeline()
        >>> pipe.load_unlearning(du.erase(pipe, **Concept(7).erase_kwargs()))
        >>> c, uncond = pipe.encode_prompt("a red seven", "cpu", 1, True)
        >>> inverse = attacks.inverse_embedding(pipe, c)
        >>> negative = attacks.inverse_embedding(pipe, uncond).embeds  # guidance's input goes through M too
        >>> pipe(prompt_embeds=inverse.embeds, negative_prompt_embeds=negative).images  # the untouched model's seven
        >>> float(inverse.distance.max())  # ~98: c' is far from c (see `inversion_distance`)
        ```
    """
    if isinstance(source, DiffusionPipeline):
        adapters, scales = _loaded(source)
    elif isinstance(source, UnlearningAdapter):
        adapters, scales = [source], [1.0]
    else:
        adapters = list(source)
        scales = [1.0] * len(adapters)
    width = embeds.shape[-1]
    chain = torch.eye(width, dtype=torch.float64)
    for adapter, scale in zip(adapters, scales, strict=True):
        if "remap_up" not in adapter.probes or "remap_down" not in adapter.probes:
            raise InvalidArgumentError(
                f"Removal {adapter.name!r} stores no remap of the text embedding (a distilled or merged removal, "
                "or one made by another tool): its edit has no inverse embedding. Use `embedding_attack` to "
                "search for one."
            )
        up, down = adapter.probes["remap_up"].double(), adapter.probes["remap_down"].double()
        if up.shape[0] != width:
            raise InvalidArgumentError(
                f"Removal {adapter.name!r} remaps {up.shape[0]}-wide text embeddings; these are {width} wide."
            )
        chain = chain @ (torch.eye(width, dtype=torch.float64) + scale * up @ down)
    singular = torch.linalg.svdvals(chain)
    if singular[-1] <= 1e-6 * singular[0]:
        raise InvalidArgumentError(
            "The removals' map on the text embedding is singular (condition number "
            f"{float(singular[0] / singular[-1]):.2g}): no embedding undoes it; some directions are erased for every "
            "input."
        )
    if isinstance(source, DiffusionPipeline):
        _check_map(source, adapters, chain)
    original = embeds.detach().double().cpu()
    inverse = torch.linalg.solve(chain, original.reshape(-1, width).T).T.reshape(original.shape)
    return InverseEmbedding(embeds=inverse.float(), distance=token_distance(inverse, original).float(), map=chain)


def inversion_distance(pipe: DiffusionPipeline, prompt: str, words: Sequence[str] = ()) -> dict[str, float]:
    """How far the embedding that undoes a pipeline's closed-form removals is from a prompt's own.

    Args:
        pipe (`DiffusionPipeline`): A Stable Diffusion pipeline with closed-form removals loaded.
        prompt (`str`): The prompt (e.g. the seed prompt of the concept).
        words (`Sequence[str]`): The concept's words; `at_concept` is measured at their tokens in the prompt.

    Returns:
        `dict`: `at_concept` the largest relative distance `||c'_t - c_t|| / ||c_t||` at the concept's tokens (nan
        without `words` found in the prompt); `needed` the largest over every position the model reads (padding
        included): a per-token budget (`embedding_attack(..., max_relative_norm=)`) at least this large contains
        the exact inverse; `whole` the relative distance of the whole embedding.

    Raises:
        InvalidArgumentError: As [`inverse_embedding`].
    """
    require_sd(pipe, "inversion")
    ids = token_ids(pipe, prompt)
    with torch.no_grad():
        embeds = encode_ids(pipe, ids[None]).float().cpu()
    inverse = inverse_embedding(pipe, embeds)
    distance = inverse.distance[0]
    positions = [i for word in words for w in word_ids(pipe, word) for i in (ids == w).nonzero().flatten().tolist()]
    at_concept = float(distance[positions].max()) if positions else float("nan")
    whole = float((inverse.embeds.double() - embeds.double()).norm() / embeds.double().norm())
    return {"at_concept": at_concept, "needed": float(distance.max()), "whole": whole}


def _loaded(pipe: DiffusionPipeline) -> tuple[list[UnlearningAdapter], list[float]]:
    """The removals loaded on `pipe` in load order, with the scale each was loaded at."""
    from ..pipeline import loaded_adapters, unlearning

    return loaded_adapters(pipe), [row.scale for row in unlearning(pipe)]


@torch.no_grad()
def _check_map(pipe: DiffusionPipeline, adapters: Sequence[UnlearningAdapter], chain: torch.Tensor) -> None:
    """Checks that every edited layer reading the text embedding computes `W_base M` (loaded entries' LoRA `B`
    already carry their scale): removals not made on top of each other compose otherwise."""
    from ..families import family_of
    from ..layers import denoiser_of, edited_layers

    family = family_of(pipe)
    denoiser = denoiser_of(pipe)
    width = chain.shape[0]
    for name, module in edited_layers(denoiser, family).items():
        deltas = [
            a.lora_weights[f"{family.denoiser}.{name}.lora_B.weight"].double()
            @ a.lora_weights[f"{family.denoiser}.{name}.lora_A.weight"].double()
            for a in adapters
            if f"{family.denoiser}.{name}.lora_A.weight" in a.lora_weights
        ]
        if not deltas or deltas[0].shape[1] != width:
            continue
        parameter = next(module.parameters())
        probe = torch.eye(width, dtype=parameter.dtype, device=parameter.device)
        effective = (module(probe) - module(torch.zeros_like(probe))).double().cpu().T
        change = sum(deltas)
        base = effective - change
        error = float((base @ (chain - torch.eye(width, dtype=torch.float64)) - change).norm())
        tolerance = 1e-2 * float(change.norm()) + 1e-3 * float(effective.norm()) * (parameter.dtype != torch.float32)
        if error > tolerance + 1e-6:
            raise InvalidArgumentError(
                f"The removals loaded on this pipeline do not compose into one remap of the text embedding at "
                f"{name!r} (relative error {error / max(float(change.norm()), 1e-12):.2g}): they were not made one "
                "on top of the other (or another LoRA changes the layer). Pass the removals themselves to "
                "`inverse_embedding` to invert their stored remaps."
            )
