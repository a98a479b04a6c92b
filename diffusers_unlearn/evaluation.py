"""Measuring a removal by generating images: forget accuracy, related retention, general retention.

A *probe* is a concept with the prompts that ask for it and a *check* that a scorer can test on an image
(for the digits model `{"digit": 7, "colour": "red"}`, for real models a text and its contrast texts).

- forget accuracy: share of images, generated from a removed concept's prompts, that still show it
  (lower is better; "chance" is what a model that never learnt the concept would score);
- related retention: share of images of neighbouring concepts that still show what their prompt asks;
- general retention: the same for unrelated concepts.

Every image of prompt `p` is generated with the seed `seed + j` (`j` = its index), so two evaluations of the
same probes (before / after a removal, step `t` / step `t + 1`) compare images made from the same noise.
Scorers are pluggable ([`ConceptScorer`]): [`AttributeConceptScorer`] for the embedded worlds (each world's own
lives in its package: `digits.DigitsConceptScorer`, `glyphs.GlyphsConceptScorer`), [`CLIPConceptScorer`] for real
models.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from .errors import InvalidArgumentError, UnknownCheckError


@dataclass(frozen=True)
class ConceptProbe:
    """A concept to measure: the prompts that ask for it and what its images must show.

    Args:
        concept (`str`): Label in reports ("seven", "blue three").
        prompts (`tuple[str, ...]`): Prompts that ask for the concept.
        check (`Any`): What the scorer tests each image for; its meaning is the scorer's.
    """

    concept: str
    prompts: tuple[str, ...]
    check: Any


@runtime_checkable
class ConceptScorer(Protocol):
    """Tells, for each image, whether it shows what its check describes."""

    def shows(self, images: np.ndarray, checks: Sequence[Any]) -> np.ndarray:
        """`images` `(N, H, W, 3)` floats in [0, 1], one check per image; returns a bool array `(N,)`."""
        ...


@dataclass
class EvaluationResult:
    """Per-concept rates and their means. Rates are shares of images in [0, 1].

    Attributes:
        forget (`dict[str, float]`): Per removed concept, share of images still showing it.
        related (`dict[str, float]`): Per related concept, share of images showing it.
        general (`dict[str, float]`): Per general concept, share of images showing it.
        images_per_prompt (`int`): Images generated per prompt.
        shown (`dict[str, np.ndarray]`): Per concept of any group, whether each of its images shows it (bool, in
            prompt order, image `j` of a prompt from seed `seed + j`): what `paired_change` compares.
        misread (`dict[str, list[dict]]`): With a scorer that reads attributes ([`AttributeConceptScorer`]), per
            concept and image (in the order of `shown`), the attributes of its check read otherwise and what was
            read (`{"style": "roman"}` for a serif Q drawn in roman; `{}` where the image shows it): what a lost
            image shows instead. Empty with other scorers.
    """

    forget: dict[str, float] = field(default_factory=dict)
    related: dict[str, float] = field(default_factory=dict)
    general: dict[str, float] = field(default_factory=dict)
    images_per_prompt: int = 0
    shown: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    misread: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    @property
    def forget_accuracy(self) -> float:
        return _mean(self.forget)

    @property
    def related_retention(self) -> float:
        return _mean(self.related)

    @property
    def general_retention(self) -> float:
        return _mean(self.general)

    def summary(self) -> dict[str, float]:
        """The three means, as a dict (NaN where a group is empty)."""
        return {
            "forget_accuracy": self.forget_accuracy,
            "related_retention": self.related_retention,
            "general_retention": self.general_retention,
        }


@dataclass(frozen=True)
class PairedChange:
    """How the images of some concepts changed between two evaluations made from the same seeds.

    Attributes:
        lost (`int`): Images that showed their concept before and do not now.
        gained (`int`): Images that did not show it before and do now.
        images (`int`): Images compared.
        p_value (`float`): One-sided exact sign test (McNemar's): the chance of losing at least `lost` of the
            `lost + gained` images that changed if each change were a coin flip, as when a change only reshuffles
            which images of borderline concepts succeed. Small: the loss is the change's, not the seed's.
    """

    lost: int
    gained: int
    images: int
    p_value: float


def paired_change(
    before: EvaluationResult, after: EvaluationResult, concepts: Sequence[str] | None = None
) -> PairedChange:
    """Compares two evaluations image by image (same probes, seeds and images per prompt; e.g. the untouched model
    and a chain of removals): which images stopped or started showing their concept.

    A retention figure changes by chance too (other seeds move it by a few points); pairing each image with the one
    made from the same noise before the change separates a change's own loss from that noise.

    Args:
        before, after ([`EvaluationResult`]): The two evaluations.
        concepts (`Sequence[str]`, *optional*): The concepts to compare (default: every concept of `before`).

    Returns:
        [`PairedChange`]

    Raises:
        InvalidArgumentError: A concept missing from either evaluation, or with other image counts.

    Example:
        ```py
        >>> cells = digits.Concept(7).probes()["general"]
        >>> before = evaluate(pipe, scorer, general=cells, images_per_prompt=8)
        >>> pipe.load_unlearning(adapter)
        >>> after = evaluate(pipe, scorer, general=cells, images_per_prompt=8)
        >>> change = paired_change(before, after)
        >>> change.lost, change.gained, change.p_value < 0.05  # images lost / gained; a real loss?
        ```
    """
    names = list(before.shown) if concepts is None else list(concepts)
    lost = gained = images = 0
    for name in names:
        if name not in before.shown or name not in after.shown:
            raise InvalidArgumentError(f"{name!r} is not in both evaluations: compare the concepts both measured.")
        was, now = before.shown[name], after.shown[name]
        if was.shape != now.shape:
            raise InvalidArgumentError(
                f"{name!r} has {was.size} images before and {now.size} after: evaluate both with the same prompts "
                "and images_per_prompt."
            )
        lost += int((was & ~now).sum())
        gained += int((~was & now).sum())
        images += was.size
    changed = lost + gained
    p_value = sum(math.comb(changed, k) for k in range(lost, changed + 1)) / 2**changed
    return PairedChange(lost=lost, gained=gained, images=images, p_value=float(p_value))


def _mean(values: Mapping[str, float]) -> float:
    return float(np.mean(list(values.values()))) if values else float("nan")


@torch.no_grad()
def generate_images(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    *,
    images_per_prompt: int = 20,
    seed: int = 0,
    batch_size: int = 200,
    progress: bool = True,
    **pipeline_kwargs,
) -> np.ndarray:
    """Generates `images_per_prompt` images per prompt, image `j` of every prompt from seed `seed + j`.

    Returns:
        `np.ndarray` `(len(prompts) * images_per_prompt, H, W, 3)`, floats in [0, 1], grouped by prompt.

    Example:
        ```py
        >>> images = generate_images(pipe, ["a red seven", "a blue three"], images_per_prompt=4,
        ...                          num_inference_steps=20)
        >>> images.shape
        (8, 16, 16, 3)
        ```
    """
    jobs = [(prompt, seed + j) for prompt in prompts for j in range(images_per_prompt)]
    out = []
    for start in tqdm(range(0, len(jobs), batch_size), desc="generating", disable=not progress, leave=False):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(s) for _, s in chunk]
        result = pipe(prompt=[p for p, _ in chunk], generator=generators, output_type="np", **pipeline_kwargs)
        out.append(np.asarray(result.images, dtype=np.float32))
    return np.concatenate(out) if out else np.zeros((0, 1, 1, 3), np.float32)


def evaluate(
    pipe: DiffusionPipeline,
    scorer: ConceptScorer,
    *,
    forget: Sequence[ConceptProbe] = (),
    related: Sequence[ConceptProbe] = (),
    general: Sequence[ConceptProbe] = (),
    images_per_prompt: int = 20,
    seed: int = 0,
    batch_size: int = 200,
    progress: bool = True,
    **pipeline_kwargs,
) -> EvaluationResult:
    """Generates images for every probe's prompts (with whatever removals are loaded) and scores them.

    Args:
        pipe (`DiffusionPipeline`): The pipeline, removals loaded or not.
        scorer ([`ConceptScorer`]): Tests what an image shows.
        forget, related, general (`Sequence[ConceptProbe]`): The removed, neighbouring and unrelated concepts.
        images_per_prompt (`int`): Images per prompt (image `j` from seed `seed + j`).
        batch_size (`int`): Images per pipeline call.
        progress (`bool`): Show a progress bar.
        **pipeline_kwargs: Passed to the pipeline call (`num_inference_steps`, `guidance_scale`, ...).

    Returns:
        [`EvaluationResult`]

    Example:
        ```py
        >>> from diffusers_unlearn import digits, evaluation
        >>> pipe = digits.load_pipeline()
        >>> seven = evaluation.ConceptProbe("seven", ("a seven", "a red 7"), {"digit": 7})
        >>> result = evaluation.evaluate(pipe, digits.DigitsConceptScorer(), forget=[seven],
        ...                              images_per_prompt=10)
        >>> result.forget_accuracy  # before any removal: close to 1
        ```
    """
    groups = {"forget": list(forget), "related": list(related), "general": list(general)}
    probes = [probe for group in groups.values() for probe in group]
    prompts = [prompt for probe in probes for prompt in probe.prompts]
    # a prompt shared by several probes (the same prompts under two checks) is generated once: image j of a
    # prompt always comes from seed `seed + j`, so the images are the same either way
    unique = list(dict.fromkeys(prompts))
    generated = generate_images(
        pipe,
        unique,
        images_per_prompt=images_per_prompt,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        **pipeline_kwargs,
    )
    position = {prompt: i for i, prompt in enumerate(unique)}
    images = generated[[position[p] * images_per_prompt + j for p in prompts for j in range(images_per_prompt)]]
    checks = [probe.check for probe in probes for _ in probe.prompts for _ in range(images_per_prompt)]
    hits = np.asarray(scorer.shows(images, checks), dtype=bool)
    misread = scorer.misread(images, checks) if isinstance(scorer, AttributeConceptScorer) else None
    result = EvaluationResult(images_per_prompt=images_per_prompt)
    start = 0
    for name, group in groups.items():
        rates = getattr(result, name)
        for probe in group:
            count = len(probe.prompts) * images_per_prompt
            rates[probe.concept] = float(hits[start : start + count].mean()) if count else float("nan")
            result.shown[probe.concept] = hits[start : start + count]
            if misread is not None:
                result.misread[probe.concept] = misread[start : start + count]
            start += count
    return result


class AttributeConceptScorer:
    """The [`ConceptScorer`] of the embedded worlds (`digits`, `glyphs`): a check names attributes and their values
    (`{"char": "Q", "style": "serif"}`); an image shows it when the world's classifier predicts *every* one of them.

    A check with several attributes is a conjunction, as a vision-language judge asked "is there a serif Q?" would
    answer: a Q in another style does not show "serif Q". World-specific code stays in the world's subpackage: a
    world gives `predict`, its classifier's predicted value per attribute per image.

    Args:
        predict (`Callable`): `predict(images)` with `images` `(N, H, W, 3)` in [0, 1], returning a mapping from
            each attribute name to the `N` predicted values.

    Example:
        ```py
        >>> from diffusers_unlearn.glyphs import load_scorer
        >>> scorer = AttributeConceptScorer(load_scorer().predict)
        >>> scorer.which(images, [{"char": "Q"}, {"char": "Q", "style": "serif"}])  # (N, 2) bool
        ```
    """

    def __init__(self, predict: Callable[[np.ndarray], Mapping[str, Sequence[Any]]]):
        self.predict = predict

    def which(self, images: np.ndarray, checks: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Which of a set of concepts each image shows: a bool array `(N, len(checks))`."""
        predicted = self.predict(images)
        out = np.ones((len(images), len(checks)), dtype=bool)
        for j, check in enumerate(checks):
            _known_attributes(check, predicted)
            for key, value in check.items():
                out[:, j] &= np.asarray([v == value for v in predicted[key]], dtype=bool)
        return out

    def shows(self, images: np.ndarray, checks: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Whether image `i` shows `checks[i]`: a bool array `(N,)`."""
        _one_check_per_image(images, checks)
        unique = list({tuple(sorted(c.items())): None for c in checks})
        index = {key: j for j, key in enumerate(unique)}
        table = self.which(images, [dict(key) for key in unique])
        return table[np.arange(len(checks)), [index[tuple(sorted(c.items()))] for c in checks]]

    def misread(self, images: np.ndarray, checks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Per image, the attributes of `checks[i]` the classifier read otherwise, with the value it read: `{}`
        where the image shows its check, `{"style": "roman"}` where a serif Q came out roman. What a lost image
        shows instead (a neighbouring style, another character, another colour).

        Example:
            ```py
            >>> scorer.misread(images, [{"char": "Q", "style": "serif"}] * len(images))
            [{}, {'style': 'roman'}, {'char': 'O'}]
            ```
        """
        _one_check_per_image(images, checks)
        predicted = self.predict(images)
        for check in {tuple(sorted(c)) for c in checks}:
            _known_attributes(check, predicted)
        read = {k: [v.item() if isinstance(v, np.generic) else v for v in values] for k, values in predicted.items()}
        return [{k: read[k][i] for k, v in check.items() if read[k][i] != v} for i, check in enumerate(checks)]


def _known_attributes(check: Sequence[str] | Mapping[str, Any], predicted: Mapping[str, Sequence[Any]]) -> None:
    for key in check:
        if key not in predicted:
            raise UnknownCheckError(
                f"the scorer does not predict {key!r}: a check may name {sorted(predicted)} (any subset)"
            )


def _one_check_per_image(images: np.ndarray, checks: Sequence[Any]) -> None:
    if len(checks) != len(images):
        raise InvalidArgumentError(
            f"one check per image: {len(images)} images, {len(checks)} checks (use `which` for a table of checks)"
        )


class CLIPConceptScorer:
    """[`ConceptScorer`] for real models: an image shows a concept when CLIP finds it closer to the concept's
    text than to every contrast text. A check is `(text, contrast_texts)`.

    Args:
        model (`transformers.CLIPModel`): Any CLIP model (e.g. `openai/clip-vit-large-patch14`).
        tokenizer: Its tokenizer.
        batch_size (`int`): Images per forward pass.

    Example:
        ```py
        >>> from transformers import CLIPModel, CLIPTokenizer
        >>> scorer = CLIPConceptScorer(CLIPModel.from_pretrained(name), CLIPTokenizer.from_pretrained(name))
        >>> check = ("a painting by Van Gogh", ["a painting by Monet", "a painting"])
        >>> scorer.shows(images, [check] * len(images))
        ```
    """

    _MEAN = (0.48145466, 0.4578275, 0.40821073)
    _STD = (0.26862954, 0.26130258, 0.27577711)

    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @torch.no_grad()
    def _image_features(self, images: np.ndarray) -> torch.Tensor:
        size = self.model.config.vision_config.image_size
        pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False)
        pixels = (pixels - torch.tensor(self._MEAN)[:, None, None]) / torch.tensor(self._STD)[:, None, None]
        features = [
            _features(self.model.get_image_features(pixel_values=pixels[i : i + self.batch_size]))
            for i in range(0, len(pixels), self.batch_size)
        ]
        return torch.nn.functional.normalize(torch.cat(features), dim=-1)

    @torch.no_grad()
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        return torch.nn.functional.normalize(_features(self.model.get_text_features(**tokens)), dim=-1)

    def shows(self, images: np.ndarray, checks: Sequence[tuple[str, Sequence[str]]]) -> np.ndarray:
        image_features = self._image_features(images)
        texts = list(dict.fromkeys(t for text, contrast in checks for t in (text, *contrast)))
        text_features = dict(zip(texts, self._text_features(texts), strict=True))
        out = np.zeros(len(checks), dtype=bool)
        for i, (text, contrast) in enumerate(checks):
            similarity = float(image_features[i] @ text_features[text])
            out[i] = all(similarity > float(image_features[i] @ text_features[c]) for c in contrast)
        return out


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output from `get_*_features`; older versions return the tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


_MOVED = {
    "DigitsConceptScorer": "diffusers_unlearn.digits",
    "GlyphsConceptScorer": "diffusers_unlearn.glyphs",
}
"""World scorers that lived here, and the world package they live in now (issue 14: no world code in the core)."""


def __getattr__(name: str):
    """Deprecated aliases: `evaluation.DigitsConceptScorer` (which docs/api.md showed) and `GlyphsConceptScorer`
    still import, with a `FutureWarning` naming their home."""
    if name in _MOVED:
        warnings.warn(
            f"diffusers_unlearn.evaluation.{name} moved to {_MOVED[name]}: import it from there "
            f"(`from {_MOVED[name]} import {name}`); the alias here will be removed.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
