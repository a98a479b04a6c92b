"""The embedded "digits" text-to-image model: a tiny, genuine ``StableDiffusionPipeline`` shipped in the package.

Trained from scratch on CPU on scikit-learn's handwritten digits, composed into 16x16 RGB images in one of
:data:`COLOURS` and :data:`STROKES` on black. Prompts combine a digit (word or numeral, ``"seven"`` / ``"7"``) with
an optional colour and stroke, following :data:`TEMPLATES`. :func:`load_scorer` returns a small CNN that tells the
digit, colour and stroke of an image; it is the ground truth of the continual-removal benchmark, and
:class:`DigitsConceptScorer` its :class:`~diffusers_unlearn.evaluation.ConceptScorer`. :class:`Concept` names what to
erase (``concepts``); ``attacks.attack_target`` what the attacks of :mod:`diffusers_unlearn.attacks` try on it.

Example:
    ```py
    >>> from diffusers_unlearn.digits import load_pipeline, load_scorer, prompt
    >>> pipe = load_pipeline()
    >>> images = pipe([prompt(7, "red")] * 8, num_inference_steps=20).images  # eight 16x16 PIL images
    >>> load_scorer()(images).digit  # array([7, 7, 7, 7, 7, 7, 7, 7])
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import toyworld
from .concepts import Concept
from .data import COLOURS, DIGITS, IMAGE_SIZE, NUMERALS, STROKES, TEMPLATES, prompt
from .scorer import DigitsConceptScorer, DigitScorer, ScorerOutput, load_scorer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

MODEL_DIR = Path(__file__).parent / "model"
"""The shipped pipeline, in diffusers ``save_pretrained`` layout (fp16 safetensors)."""

GUIDANCE_SCALE: float = 7.5
"""The classifier-free guidance scale the shipped model is measured at (Stable Diffusion's default); the glyphs
model declares its own."""


def load_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None
) -> StableDiffusionPipeline:
    """Load the shipped digits pipeline, offline (``local_files_only=True``).

    Args:
        device: Where to put the pipeline.
        dtype: The dtype to run in (weights are stored in fp16 and cast on load; fp32 is the default on CPU).
        path: Another folder saved by ``python -m diffusers_unlearn.digits.train`` (default: the shipped model).

    Returns:
        A ``StableDiffusionPipeline`` (CLIP text encoder of width 128, tiny VAE, UNet on 4x8x8 latents, DDIM) that
        makes 16x16 RGB images; no safety checker. Its progress bar is disabled.

    Example:
        ```py
        >>> pipe = load_pipeline()
        >>> g = torch.Generator().manual_seed(0)
        >>> pipe("a red seven, bold", num_inference_steps=20, generator=g).images[0].size
        (16, 16)
        ```
    """
    return toyworld.load_pipeline(path or MODEL_DIR, device, dtype)


__all__ = [
    "COLOURS",
    "DIGITS",
    "GUIDANCE_SCALE",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "NUMERALS",
    "STROKES",
    "TEMPLATES",
    "Concept",
    "DigitScorer",
    "DigitsConceptScorer",
    "ScorerOutput",
    "load_pipeline",
    "load_scorer",
    "prompt",
]
