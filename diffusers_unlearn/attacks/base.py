"""What every attack shares: the attacked concept, the result, the scorer that judges images, generation from
prompts or from text embeddings, and the base model's noise predictions that guide the optimising attacks."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline

from .. import toyworld
from ..errors import InvalidArgumentError, InvalidConceptError, UnsupportedPipelineError
from ..evaluation import ConceptScorer, generate_images
from ..families import family_of

logger = logging.getLogger(__name__)

Scorer = ConceptScorer | Callable[[np.ndarray], np.ndarray]
"""A [`ConceptScorer`] (`shows(images, checks)`), or any callable `images (N, H, W, 3) -> bool array (N,)`."""


@dataclass(frozen=True)
class AttackTarget:
    """The concept under attack, and what an attack may use to bring it back.

    Args:
        concept (`str`): Label in reports ("seven").
        prompt (`str`): The seed prompt that asks for the concept ("a red seven"); the optimising attacks start
            from it and are measured on it.
        check (`Any`): What the scorer tests each image for (`{"digit": 7}` for the digits scorer; a
            `(text, contrast_texts)` pair for [`CLIPConceptScorer`]; ignored by a plain callable scorer).
        names (`tuple[str, ...]`): The concept's words (the concept and its aliases), as they appear in prompts.
        paraphrases (`tuple[str, ...]`): Prompts the removal was not made from that ask for the concept
            (held-out templates, synonyms, word orders): the paraphrase sweep.
        templates (`tuple[str, ...]`): Other contexts with a `{}` slot where the concept goes: the learned-token
            attack measures its token there (does it transfer?).
        unrelated (`tuple[str, ...]`): Prompts of unrelated concepts: what the revival attack fine-tunes on.
        kept (`tuple[str, ...]`): Prompts a removal of the concept must keep drawing, each one part of the
            concept away from the seed prompt ("a blue seven" and "a red three" for "a red seven"): what the
            mixture attack mixes.
        maskers (`tuple[str, ...]`): Short prompts of other concepts ("three", "a blue three"): the masking attack
            writes each in front of the seed prompt. A prompt that names two concepts is drawn as one of them;
            once a later removal erases the other, the concept it hid can come through.

    Example:
        ```py
        >>> target = AttackTarget("seven", "a red seven", {"digit": 7}, names=("seven", "7"),
        ...                       paraphrases=("a 7 in red", "the number seven, bold"),
        ...                       templates=("a blue {}", "the number {} in green, bold"),
        ...                       unrelated=("a red three", "a blue one"))
        ```
    """

    concept: str
    prompt: str
    check: Any
    names: tuple[str, ...]
    paraphrases: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    unrelated: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    maskers: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.names:
            raise InvalidConceptError(
                'An attack target needs the concept\'s words in `names` (e.g. `("seven", "7")`).'
            )
        self.context  # noqa: B018 -- raises if the seed prompt does not name the concept
        if any("{}" not in t for t in self.templates):
            raise InvalidConceptError(
                "Every template needs a '{}' slot where the concept (or the learned token) goes: "
                f"{[t for t in self.templates if '{}' not in t]} have none."
            )

    @property
    def context(self) -> str:
        """The seed prompt with its first concept word replaced by `{}` ("a red {}")."""
        pattern = r"(?<!\w)(" + "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True)) + r")(?!\w)"
        found = re.search(pattern, self.prompt, flags=re.IGNORECASE)
        if found is None:
            raise InvalidConceptError(
                f"The seed prompt {self.prompt!r} names none of {self.names} as a word: write the concept into the "
                "prompt, or add the word it uses to `names`."
            )
        return self.prompt[: found.start()] + "{}" + self.prompt[found.end() :]


@dataclass
class AttackResult:
    """What one attack found.

    Attributes:
        attack (`str`): The attack's name.
        asr (`float`): Attack success rate: share of the attack's images in which the scorer finds the concept.
        images (`np.ndarray`): `(N, H, W, 3)` floats in [0, 1], the images the ASR was judged on.
        hits (`np.ndarray`): `(N,)` bool, whether each image shows the concept.
        per_prompt (`dict[str, float]`): Success rate per attack prompt (for optimised prompts, a description).
        seconds (`float`): Wall time of the attack, generation and scoring included.
        details (`dict`): Attack-specific findings (the tokens found, the final loss, ...).
    """

    attack: str
    asr: float
    images: np.ndarray
    hits: np.ndarray
    per_prompt: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The result without the images, as plain numbers and strings (JSON-ready)."""
        return {
            "attack": self.attack,
            "asr": self.asr,
            "images": int(len(self.hits)),
            "per_prompt": self.per_prompt,
            "seconds": round(self.seconds, 3),
            "details": self.details,
        }


@dataclass
class AttackSettings:
    """How attack images are made and judged.

    Args:
        images (`int`): Images per attack prompt (image `j` from seed `seed + j`).
        steps (`int`): Denoising steps per image.
        guidance_scale (`float`): Classifier-free guidance scale.
        seed (`int`): Seed of everything random in an attack (optimisation, reference latents, images).
        batch_size (`int`): Images per pipeline call.
        progress (`bool`): Show progress bars.
    """

    images: int = 16
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0
    batch_size: int = 128
    progress: bool = True

    def __post_init__(self):
        if self.images < 1 or self.steps < 1 or self.batch_size < 1:
            raise InvalidArgumentError(
                f"images, steps and batch_size must be positive, got {self.images}, {self.steps}, {self.batch_size}."
            )


def resolve_scorer(scorer: Scorer | str) -> Scorer:
    """A scorer object from an embedded world's name (`"digits"`, `"glyphs"`: its classifier, see
    `toyworld.concept_scorer`) or the object itself.

    Raises:
        InvalidArgumentError: An unknown name.
    """
    if not isinstance(scorer, str):
        return scorer
    if scorer in toyworld.WORLDS:
        return toyworld.concept_scorer(scorer)
    raise InvalidArgumentError(
        f"Unknown scorer {scorer!r}: use an embedded world's name {list(toyworld.WORLDS)}, a ConceptScorer or a "
        "callable."
    )


def judge(scorer: Scorer, images: np.ndarray, check: Any) -> np.ndarray:
    """Whether each image shows the concept, as a bool array."""
    if len(images) == 0:
        return np.zeros(0, dtype=bool)
    if hasattr(scorer, "shows"):
        return np.asarray(scorer.shows(images, [check] * len(images)), dtype=bool)
    return np.asarray(scorer(images), dtype=bool)


def result_of(
    attack: str,
    labels: Sequence[str],
    images: np.ndarray,
    scorer: Scorer,
    check: Any,
    started: float,
    details: dict | None = None,
) -> AttackResult:
    """Scores `images` (grouped by label, equal counts) into an [`AttackResult`]."""
    hits = judge(scorer, images, check)
    per = len(hits) // max(len(labels), 1)
    per_prompt = {label: float(hits[i * per : (i + 1) * per].mean()) for i, label in enumerate(labels)}
    return AttackResult(
        attack=attack,
        asr=float(hits.mean()) if len(hits) else float("nan"),
        images=images,
        hits=hits,
        per_prompt=per_prompt,
        seconds=time.perf_counter() - started,
        details=details or {},
    )


def generate_prompts(pipe: DiffusionPipeline, prompts: Sequence[str], settings: AttackSettings) -> np.ndarray:
    """`settings.images` images per prompt, image `j` from seed `settings.seed + j`."""
    return generate_images(
        pipe,
        list(prompts),
        images_per_prompt=settings.images,
        seed=settings.seed,
        batch_size=settings.batch_size,
        progress=settings.progress,
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance_scale,
    )


def require_sd(pipe: DiffusionPipeline, attack: str) -> None:
    """The optimising attacks work on the text encoder's output; SDXL's pooled input is not attacked yet."""
    if family_of(pipe).name != "sd":
        raise UnsupportedPipelineError(
            f"The {attack} attack supports Stable Diffusion 1.x / 2.x pipelines; SDXL's pooled text input is not "
            "attacked yet. The paraphrase sweep works on every pipeline."
        )


def token_ids(pipe: DiffusionPipeline, prompt: str) -> torch.Tensor:
    """`(L,)` padded token ids of a prompt, as the pipeline tokenizes it."""
    tokenizer = pipe.tokenizer
    return tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids[0]


def word_ids(pipe: DiffusionPipeline, text: str) -> list[int]:
    """Token ids of `text` without the start / end tokens."""
    return list(pipe.tokenizer(text, add_special_tokens=False).input_ids)


@contextmanager
def input_embeddings(pipe: DiffusionPipeline, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """While active, the text encoder's token-embedding output `(B, L, d_in)` goes through `replace` first.

    This is how learned tokens and one-hot relaxations enter a text encoder that only takes token ids.
    """
    layer = pipe.text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda _module, _inputs, output: replace(output))
    try:
        yield
    finally:
        handle.remove()


def encode_ids(pipe: DiffusionPipeline, ids: torch.Tensor) -> torch.Tensor:
    """Text-encoder output `(B, L, d)` of padded token ids `(B, L)`, as the pipeline reads it (gradients kept)."""
    return pipe.text_encoder(ids.to(pipe.device))[0]


def empty_embeds(pipe: DiffusionPipeline) -> torch.Tensor:
    """`(1, L, d)` embeddings of the empty prompt (the unconditional input of classifier-free guidance)."""
    with torch.no_grad():
        return encode_ids(pipe, token_ids(pipe, "")[None]).float()


@torch.no_grad()
def generate_embeds(
    pipe: DiffusionPipeline, embeds: torch.Tensor, settings: AttackSettings, negative: torch.Tensor | None = None
) -> np.ndarray:
    """`settings.images` images per row of `embeds` `(P, L, d)`, image `j` from seed `settings.seed + j`.

    `negative` `(1, L, d)`: the unconditional input of guidance (default: the empty prompt's embeddings).
    """
    uncond = empty_embeds(pipe) if negative is None else negative.float()
    dtype = pipe.unet.dtype
    jobs = [(i, settings.seed + j) for i in range(embeds.shape[0]) for j in range(settings.images)]
    out = []
    for start in range(0, len(jobs), settings.batch_size):
        chunk = jobs[start : start + settings.batch_size]
        rows = embeds[[i for i, _ in chunk]].to(pipe.device, dtype)
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        result = pipe(
            prompt_embeds=rows,
            negative_prompt_embeds=uncond.to(pipe.device, dtype).expand(len(chunk), -1, -1),
            generator=generators,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance_scale,
            output_type="np",
        )
        out.append(np.asarray(result.images, dtype=np.float32))
    return np.concatenate(out)


class Reference:
    """The base model's noise predictions for the concept: what the optimising attacks make the attacked model
    reproduce (UnlearnDiffAtk's objective, with the base model as the teacher).

    `samples` images of `prompt` are generated by the reference pipeline (the model without the removals); each
    is noised at a random timestep, and the reference's conditional noise prediction on it is recorded. An
    attack's loss is the mean squared distance between the attacked model's predictions on the same noisy
    latents and these.

    Args:
        reference (`DiffusionPipeline`): The same model without the removals (what an attacker with the
            weights has; a prompt-only attacker uses it as a surrogate).
        prompt (`str`): The prompt that asks for the concept.
        samples (`int`): Noisy latents in the objective.
        settings ([`AttackSettings`]): Seed, steps and guidance of the reference images.
    """

    def __init__(self, reference: DiffusionPipeline, prompt: str, samples: int, settings: AttackSettings):
        generator = torch.Generator(device="cpu").manual_seed(settings.seed + 10_000)
        image_seeds = [torch.Generator(device="cpu").manual_seed(settings.seed + 20_000 + i) for i in range(samples)]
        with torch.no_grad():
            latents = reference(
                [prompt] * samples,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=image_seeds,
                output_type="latent",
            ).images.float()
            scheduler = reference.scheduler
            train_steps = scheduler.config.num_train_timesteps
            self.timesteps = torch.randint(0, train_steps, (samples,), generator=generator)
            noise = torch.randn(latents.shape, generator=generator)
            self.noisy = scheduler.add_noise(latents.cpu(), noise, self.timesteps)
            embeds = encode_ids(reference, token_ids(reference, prompt)[None]).float()
            self.targets = self._predict(reference, embeds.expand(samples, -1, -1)).detach()
        self.samples = samples

    def _predict(self, pipe: DiffusionPipeline, embeds: torch.Tensor, index: torch.Tensor | None = None):
        noisy = self.noisy if index is None else self.noisy[index]
        timesteps = self.timesteps if index is None else self.timesteps[index]
        dtype = pipe.unet.dtype
        return pipe.unet(
            noisy.to(pipe.device, dtype), timesteps.to(pipe.device), embeds.to(pipe.device, dtype)
        ).sample.float()

    def loss(self, pipe: DiffusionPipeline, embeds: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Per candidate, the mean squared distance to the reference predictions.

        Args:
            pipe (`DiffusionPipeline`): The attacked pipeline.
            embeds (`torch.Tensor`): `(C, L, d)` candidate text-encoder outputs.
            index (`torch.Tensor`, *optional*): The samples to use (default all).

        Returns:
            `(C,)` losses, differentiable with respect to `embeds`.
        """
        chosen = torch.arange(self.samples) if index is None else index
        count, k = embeds.shape[0], len(chosen)
        repeated = embeds.repeat_interleave(k, dim=0)
        predictions = self._predict(pipe, repeated, chosen.repeat(count))
        targets = self.targets[chosen].repeat(count, 1, 1, 1).to(predictions.device)
        return (predictions - targets).square().flatten(1).mean(1).view(count, k).mean(1).cpu()

    def minibatch_loss(
        self, pipe: DiffusionPipeline, embeds: torch.Tensor, batch: int, generator: torch.Generator
    ) -> torch.Tensor:
        """The loss of one candidate (`(1, L, d)`) on `batch` of the samples drawn at random by `generator`: one
        optimiser step's objective in the optimising attacks."""
        return self.loss(pipe, embeds, torch.randperm(self.samples, generator=generator)[:batch])[0]
