"""Composed RGB digit images and captions built from scikit-learn's bundled handwritten digits.

Each 8x8 grey digit of :func:`sklearn.datasets.load_digits` is upscaled to 16x16, optionally dilated (``"bold"``)
and tinted with one of :data:`COLOURS` on a black background. Captions come from :data:`TEMPLATES`, with digit words
and numerals as aliases and with colour and stroke optionally omitted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidConceptError

DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
"""Digit words; the index of a word is its digit."""

NUMERALS: tuple[str, ...] = tuple(str(i) for i in range(10))
"""Numerals, aliases of :data:`DIGITS` in captions."""

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
"""Colour words; the index of a word is the colour label used by the scorer."""

STROKES: tuple[str, ...] = ("thin", "bold")
"""Stroke words; the index of a word is the stroke label used by the scorer."""

RGB: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.12, 0.08),
    "green": (0.1, 0.9, 0.15),
    "blue": (0.15, 0.35, 1.0),
    "yellow": (1.0, 0.9, 0.1),
}
"""The RGB tint of each colour (in [0, 1]); the digit's grey intensity multiplies it."""

IMAGE_SIZE = 16
"""Side of the composed (and generated) images, in pixels."""

TEMPLATES: tuple[str, ...] = (
    "{digit}",
    "a {digit}",
    "the number {digit}",
    "a {colour} {digit}",
    "{colour} {digit}",
    "a {digit} in {colour}",
    "the number {digit} in {colour}",
    "a {stroke} {digit}",
    "a {digit}, {stroke}",
    "a {colour} {digit}, {stroke}",
    "a {stroke} {colour} {digit}",
    "the number {digit} in {colour}, {stroke}",
    "a {digit} in {colour}, {stroke}",
)
"""Caption templates. Every template has ``{digit}``; ``{colour}`` and ``{stroke}`` are optional.

A template is used for an image only when the caption it makes mentions nothing the image does not have, so a
template without ``{colour}`` describes images of every colour. ``{digit}`` is filled with a word of :data:`DIGITS`
or a numeral of :data:`NUMERALS`.
"""

EXTRA_WORDS: tuple[str, ...] = ("a", "the", "number", "in", "digit", ",")
"""Words of the vocabulary that are not digits, colours or strokes."""


def vocabulary_words() -> list[str]:
    """Every word the tokenizer knows as a single token (digits, numerals, colours, strokes, template words)."""
    return [*DIGITS, *NUMERALS, *COLOURS, *STROKES, *EXTRA_WORDS]


def prompt(digit: int, colour: str | None = None, stroke: str | None = None) -> str:
    """The canonical caption of a digit, optionally with a colour and a stroke.

    Args:
        digit: The digit, 0 to 9.
        colour: One of :data:`COLOURS`, or ``None`` to leave the colour unspecified.
        stroke: One of :data:`STROKES`, or ``None`` to leave the stroke unspecified.

    Returns:
        ``"a seven"``, ``"a red seven"``, ``"a seven, bold"`` or ``"a red seven, bold"``.

    Example:
        ```py
        >>> prompt(7, "red", "bold")
        'a red seven, bold'
        >>> prompt(3)
        'a three'
        ```
    """
    if not isinstance(digit, (int, np.integer)) or isinstance(digit, bool) or not 0 <= int(digit) <= 9:
        raise InvalidConceptError(f"digit must be an int in 0..9, got {digit!r}")
    if colour is not None and colour not in COLOURS:
        raise InvalidConceptError(f"colour must be one of {COLOURS} or None, got {colour!r}")
    if stroke is not None and stroke not in STROKES:
        raise InvalidConceptError(f"stroke must be one of {STROKES} or None, got {stroke!r}")
    text = f"a {colour} {DIGITS[int(digit)]}" if colour else f"a {DIGITS[int(digit)]}"
    return f"{text}, {stroke}" if stroke else text


def caption(digit: int, colour: int, stroke: int, rng: random.Random) -> str:
    """A random training caption of an image with these labels (indices into DIGITS, COLOURS, STROKES)."""
    word = DIGITS[digit] if rng.random() < 0.6 else NUMERALS[digit]
    use_colour = rng.random() < 0.8
    use_stroke = rng.random() < 0.5
    choices = [t for t in TEMPLATES if ("{colour}" in t) == use_colour and ("{stroke}" in t) == use_stroke]
    return rng.choice(choices).format(digit=word, colour=COLOURS[colour], stroke=STROKES[stroke])


@dataclass
class DigitsData:
    """Grey 16x16 digit intensities in [0, 1] (thin and bold) with their labels and a fixed split."""

    thin: torch.Tensor  # (N, 16, 16)
    bold: torch.Tensor  # (N, 16, 16)
    labels: torch.Tensor  # (N,) int64
    train_idx: torch.Tensor
    test_idx: torch.Tensor

    def compose(self, idx: torch.Tensor, colour: torch.Tensor, stroke: torch.Tensor) -> torch.Tensor:
        """RGB images (n, 3, 16, 16) in [0, 1] of digits ``idx`` with colour and stroke indices."""
        grey = torch.where(stroke.view(-1, 1, 1).bool(), self.bold[idx], self.thin[idx])
        tint = torch.tensor([RGB[c] for c in COLOURS], dtype=grey.dtype)[colour]
        return grey[:, None] * tint[:, :, None, None]


def load_digits_data(test_fraction: float = 0.2, seed: int = 0) -> DigitsData:
    """Load sklearn's digits, upscale them to 16x16 and make the bold variant by 3x3 dilation.

    The split (stratified-free, random permutation with ``seed``) is the one used for every model shipped here: the
    text-to-image model and the scorer train on ``train_idx``; ``test_idx`` is held out for the scorer's accuracy.
    """
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8)
    up = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    thin = (up.clamp(0, 1) ** 2)[:, 0]
    pad = F.pad(up, (1, 1, 1, 1))
    plus = [pad[..., 1:-1, 1:-1], pad[..., :-2, 1:-1], pad[..., 2:, 1:-1], pad[..., 1:-1, :-2], pad[..., 1:-1, 2:]]
    bold = torch.stack(plus).amax(0).clamp(0, 1)[:, 0]  # dilation by a plus-shaped 3x3 element
    labels = torch.tensor(ds.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    n_test = int(round(test_fraction * len(labels)))
    return DigitsData(thin, bold, labels, perm[n_test:].sort().values, perm[:n_test].sort().values)
