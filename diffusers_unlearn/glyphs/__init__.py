"""The embedded "glyphs" text-to-image model: a tiny, genuine ``StableDiffusionPipeline`` shipped in the package.

Trained from scratch on CPU on renders of 41 characters (:data:`CHARACTERS`: the capitals, the digits and five
symbols) in 8 typefaces that ship with matplotlib (:data:`STYLES`: ``"serif"``, ``"typewriter"``, ``"italic"``,
...), in 8 :data:`COLOURS` on 2 :data:`BACKGROUNDS`, 32x32 RGB. Prompts follow :data:`TEMPLATES` ("the red letter q
in serif", "serif q", "capital q in typewriter type", ...); :data:`HELD_OUT_TEMPLATES` are phrasings never used in
training. :func:`load_scorer` returns a CNN that tells the character, style, colour and background of an image;
it is the ground truth of the continual-removal benchmark (``python benchmarks/continual.py --world glyphs``), and
:class:`GlyphsConceptScorer` its :class:`~diffusers_unlearn.evaluation.ConceptScorer`. :class:`Concept` names what to
erase (``concepts``); ``attacks.attack_target`` what the attacks of :mod:`diffusers_unlearn.attacks` try on it.

The article "a" is not in the vocabulary: CLIP's tokenizer lower-cases its input, so "a" would be both the article
and the letter A. Templates use "the" instead.

Example:
    ```py
    >>> from diffusers_unlearn.glyphs import load_pipeline, load_scorer, prompt
    >>> pipe = load_pipeline()
    >>> images = pipe([prompt("Q", "red", "serif")] * 8, num_inference_steps=20).images  # eight 32x32 images
    >>> load_scorer()(images).names("char")  # mostly 'Q'
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .. import toyworld
from .concepts import Concept
from .data import (
    BACKGROUNDS,
    CHARACTERS,
    COLOURS,
    HELD_OUT_TEMPLATES,
    IMAGE_SIZE,
    STYLES,
    TEMPLATES,
    prompt,
)
from .scorer import GlyphsConceptScorer, GlyphScore, GlyphScorer, load_scorer

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

MODEL_DIR = Path(__file__).parent / "model"
"""The shipped pipeline, in diffusers ``save_pretrained`` layout (fp16 safetensors)."""

GUIDANCE_SCALE: float = 3.0
"""The classifier-free guidance scale the shipped model draws its attributes best at; pass it to the pipeline
(``guidance_scale=GUIDANCE_SCALE``). Stable Diffusion's 7.5 is too strong for this small model: it drifts colours
to their neighbours (docs/benchmarks/glyphs_model.md measures both)."""


def load_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, path: str | Path | None = None
) -> StableDiffusionPipeline:
    """Load the shipped glyphs pipeline, offline (``local_files_only=True``).

    Args:
        device: Where to put the pipeline.
        dtype: The dtype to run in (weights are stored in fp16 and cast on load; fp32 is the default on CPU).
        path: Another folder saved by ``python -m diffusers_unlearn.glyphs.train`` (default: the shipped model).

    Returns:
        A ``StableDiffusionPipeline`` (CLIP text encoder of width 256, tiny VAE 32x32x3 <-> 4x8x8, UNet, DDIM) that
        makes 32x32 RGB images; no safety checker. Its progress bar is disabled.

    Example:
        ```py
        >>> pipe = load_pipeline()
        >>> g = torch.Generator().manual_seed(0)
        >>> image = pipe("the red letter q in serif", guidance_scale=GUIDANCE_SCALE, generator=g).images[0]
        >>> image.size
        (32, 32)
        ```
    """
    return toyworld.load_pipeline(path or MODEL_DIR, device, dtype)


__all__ = [
    "BACKGROUNDS",
    "CHARACTERS",
    "COLOURS",
    "GUIDANCE_SCALE",
    "HELD_OUT_TEMPLATES",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "STYLES",
    "TEMPLATES",
    "Concept",
    "GlyphScore",
    "GlyphScorer",
    "GlyphsConceptScorer",
    "load_pipeline",
    "load_scorer",
    "prompt",
]
