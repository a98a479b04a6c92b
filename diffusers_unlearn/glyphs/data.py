"""Rendered glyph images and their captions: characters x typefaces x colours x backgrounds, 32x32 RGB.

Each character of :data:`CHARACTERS` is rendered in each typeface of :data:`STYLES` (fonts that ship with
matplotlib, read with Pillow), cropped to its ink, scaled to a fixed height with a little random jitter (position and
scale), and composed in one of :data:`COLOURS` on one of :data:`BACKGROUNDS`. Captions come from :data:`TEMPLATES`;
:data:`HELD_OUT_TEMPLATES` are never used in training and measure how far the model generalises to new phrasings.

Rendering needs matplotlib (for its font files); everything that only reads the shipped model does not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidConceptError

LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
DIGIT_CHARS: tuple[str, ...] = tuple("0123456789")
SYMBOLS: tuple[str, ...] = ("&", "#", "%", "+", "$")
CHARACTERS: tuple[str, ...] = LETTERS + DIGIT_CHARS + SYMBOLS
"""The 41 characters; the index of a character is its label for the scorer."""

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYMBOL_WORDS: dict[str, str] = {"&": "ampersand", "#": "hash", "%": "percent", "+": "plus", "$": "dollar"}

STYLES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "bold": "DejaVuSans-Bold.ttf",
    "oblique": "DejaVuSans-Oblique.ttf",
    "serif": "DejaVuSerif.ttf",
    "italic": "cmti10.ttf",
    "typewriter": "cmtt10.ttf",
    "heavy": "DejaVuSerif-Bold.ttf",
    "roman": "cmr10.ttf",
}
"""Style word -> matplotlib font file; the order is the scorer's style label."""

STYLE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "sans": ("sans", "plain"),
    "bold": ("bold",),
    "oblique": ("oblique", "slanted"),
    "serif": ("serif",),
    "italic": ("italic",),
    "typewriter": ("typewriter",),
    "heavy": ("heavy",),
    "roman": ("roman", "classic"),
}
"""Words that name each style in captions (the first is the style's name)."""

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
"""Colour words; the index of a word is its label for the scorer."""

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
}

RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.1, 0.1),
    "orange": (1.0, 0.55, 0.0),
    "yellow": (1.0, 0.9, 0.1),
    "green": (0.1, 0.75, 0.15),
    "cyan": (0.0, 0.85, 0.9),
    "blue": (0.15, 0.3, 1.0),
    "purple": (0.6, 0.15, 0.9),
    "pink": (1.0, 0.45, 0.75),
}
"""The RGB of each colour (in [0, 1])."""

BACKGROUNDS: tuple[str, ...] = ("black", "white")
"""Background words; the index of a word is its label for the scorer."""

BACKGROUND_RGB: dict[str, tuple[float, float, float]] = {"black": (0.0, 0.0, 0.0), "white": (1.0, 1.0, 1.0)}

IMAGE_SIZE = 32
"""Side of the rendered (and generated) images, in pixels."""

TEMPLATES: tuple[str, ...] = (
    "{char}",
    "the {kind} {char}",
    "capital {char}",
    "{colour} {char}",
    "the {colour} {char}",
    "{char} in {colour}",
    "{style} {char}",
    "the {style} {char}",
    "{char} in {style}",
    "the {kind} {char} in {style}",
    "{colour} {style} {char}",
    "the {colour} {char} in {style}",
    "{colour} {char} in {style} type",
    "the {colour} {kind} {char} in {style}",
    "the {style} {char} in {colour}",
    "{style} {kind} {char} in {colour}",
    "{char} on {background}",
    "{colour} {char} on {background}",
    "the {style} {char} on {background}",
    "{colour} {style} {char} on {background}",
    "the {colour} {char} in {style} on {background}",
    "the {kind} {char} in {colour} on {background}",
    "the {style} {char} in {colour} on {background}",
)
"""Training caption templates. ``{char}`` is the character (or, for a digit or a symbol, sometimes its word);
``{kind}`` is ``letter``, ``digit`` or ``symbol``; ``{colour}``, ``{style}`` and ``{background}`` are optional: a
template is used for an image only if it names nothing the image does not show (``capital`` only for letters)."""

HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "{char} in {colour} , {style}",
    "{style} type , {colour} {char}",
    "the {char} , {colour} , in {style}",
    "{char} {colour} {style}",
    "in {style} , the {kind} {char} in {colour}",
    "{colour} {kind} {char} , {style} type",
)
"""Templates (and word orders) never used in training, built only from words the model knows: the paraphrase
probes of the benchmarks. Every one names the character, the colour and the style."""

EXTRA_WORDS: tuple[str, ...] = ("the", "in", "on", "type", "letter", "digit", "symbol", "capital", ",")
"""Vocabulary words that name no character, style, colour or background."""


def kind_of(char: str) -> str:
    """``"letter"``, ``"digit"`` or ``"symbol"``."""
    if char in LETTERS:
        return "letter"
    return "digit" if char in DIGIT_CHARS else "symbol"


def char_words(char: str) -> tuple[str, ...]:
    """The words that name a character: the character itself (lower-cased by the tokenizer), and for a digit or a
    symbol its word (``"7"``, ``"seven"``; ``"&"``, ``"ampersand"``)."""
    if char in DIGIT_CHARS:
        return (char, DIGIT_WORDS[int(char)])
    if char in SYMBOL_WORDS:
        return (char, SYMBOL_WORDS[char])
    return (char.lower(),)


def vocabulary_words() -> list[str]:
    """Every word the tokenizer knows as a single token."""
    words = [w for c in CHARACTERS for w in char_words(c)]
    words += [w for ws in STYLE_SYNONYMS.values() for w in ws] + [w for ws in COLOUR_SYNONYMS.values() for w in ws]
    words += [*BACKGROUNDS, *EXTRA_WORDS]
    return list(dict.fromkeys(words))


def fill(
    template: str, char: str, colour: str | None = None, style: str | None = None, background: str | None = None
) -> str:
    """Fill a template with canonical words (the character itself, the first synonym of style and colour).

    Raises:
        InvalidConceptError: if the template needs a slot that is ``None``.
    """
    values = {"char": char_words(char)[0], "kind": kind_of(char), "colour": colour, "style": style}
    values["background"] = background
    for key, value in values.items():
        if "{" + key + "}" in template and value is None:
            raise InvalidConceptError(
                f"template {template!r} needs {key}: pass it, or use a template without {{{key}}}."
            )
    return template.format(**values)


def prompt(char: str, colour: str | None = None, style: str | None = None, background: str | None = None) -> str:
    """The canonical caption of a character, optionally with a colour, a style and a background.

    Args:
        char: One of :data:`CHARACTERS` (``"Q"``, ``"7"``, ``"&"``).
        colour: One of :data:`COLOURS`, or ``None``.
        style: One of :data:`STYLES`, or ``None``.
        background: One of :data:`BACKGROUNDS`, or ``None``.

    Returns:
        ``"the letter q"``, ``"the red letter q in serif"``, ``"the red letter q in serif on white"``, ...

    Example:
        ```py
        >>> prompt("Q", "red", "serif")
        'the red letter q in serif'
        >>> prompt("7")
        'the digit 7'
        ```
    """
    if char not in CHARACTERS:
        raise InvalidConceptError(f"char must be one of {''.join(CHARACTERS)}, got {char!r}")
    if colour is not None and colour not in COLOURS:
        raise InvalidConceptError(f"colour must be one of {COLOURS} or None, got {colour!r}")
    if style is not None and style not in STYLES:
        raise InvalidConceptError(f"style must be one of {tuple(STYLES)} or None, got {style!r}")
    if background is not None and background not in BACKGROUNDS:
        raise InvalidConceptError(f"background must be one of {BACKGROUNDS} or None, got {background!r}")
    text = f"the {colour + ' ' if colour else ''}{kind_of(char)} {char_words(char)[0]}"
    if style:
        text += f" in {style}"
    return f"{text} on {background}" if background else text


def caption(char: int, style: int, colour: int, background: int, rng: random.Random) -> str:
    """A random training caption of an image with these labels (indices into the vocabularies)."""
    c = CHARACTERS[char]
    use = {
        "colour": rng.random() < 0.75,
        "style": rng.random() < 0.7,
        "background": rng.random() < 0.35,
    }
    choices = [
        t
        for t in TEMPLATES
        if all(("{" + k + "}" in t) == v for k, v in use.items()) and ("capital" not in t or c in LETTERS)
    ]
    words = char_words(c)
    return rng.choice(choices).format(
        char=words[0] if len(words) == 1 or rng.random() < 0.6 else words[1],
        kind=kind_of(c),
        colour=rng.choice(COLOUR_SYNONYMS[COLOURS[colour]]),
        style=rng.choice(STYLE_SYNONYMS[list(STYLES)[style]]),
        background=BACKGROUNDS[background],
    )


def font_path(style: str) -> Path:
    """The matplotlib font file of a style (needs matplotlib)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / STYLES[style]


def render_mask(
    char: str, style: str, dx: int = 0, dy: int = 0, scale: float = 1.0, box: int = 26, oversample: int = 4
) -> np.ndarray:
    """A 32x32 float mask in [0, 1] of a character in a style: ink cropped, scaled to ``box * scale`` pixels high
    (at most 1.15 box wide), centred, shifted by ``(dx, dy)`` pixels, rendered ``oversample`` times larger and
    box-filtered down."""
    from PIL import Image, ImageDraw, ImageFont

    hi, side = oversample, IMAGE_SIZE
    font = ImageFont.truetype(str(font_path(style)), 48 * hi)
    canvas = Image.new("L", (96 * hi, 96 * hi), 0)
    ImageDraw.Draw(canvas).text((16 * hi, 8 * hi), char, font=font, fill=255)
    glyph = canvas.crop(canvas.getbbox())
    w, h = glyph.size
    k = min(box * hi * scale / h, box * hi * 1.15 / w)
    glyph = glyph.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
    out = Image.new("L", (side * hi, side * hi), 0)
    out.paste(glyph, ((side * hi - glyph.size[0]) // 2 + dx * hi, (side * hi - glyph.size[1]) // 2 + dy * hi))
    return np.asarray(out.resize((side, side), Image.BOX), dtype=np.float32) / 255.0


@dataclass
class GlyphData:
    """Grey masks of every (character, style) in several jittered variants, with labels.

    Attributes:
        masks: ``(N, 32, 32)`` float masks in [0, 1].
        char: ``(N,)`` character labels; style: ``(N,)`` style labels.
    """

    masks: torch.Tensor
    char: torch.Tensor
    style: torch.Tensor

    def compose(self, idx: torch.Tensor, colour: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        """RGB images ``(n, 3, 32, 32)`` in [0, 1]: mask ``idx`` in ``colour`` on ``background`` (label indices)."""
        m = self.masks[idx][:, None]
        fg = torch.tensor([RGB[c] for c in COLOURS])[colour][:, :, None, None]
        bg = torch.tensor([BACKGROUND_RGB[b] for b in BACKGROUNDS])[background][:, :, None, None]
        return bg * (1 - m) + fg * m

    def all_compositions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every mask in every colour on every background: images and char/style/colour/background labels."""
        nc, nb = len(COLOURS), len(BACKGROUNDS)
        ii = torch.arange(len(self.masks)).repeat_interleave(nc * nb)
        cc = torch.arange(nc).repeat_interleave(nb).repeat(len(self.masks))
        bb = torch.arange(nb).repeat(nc * len(self.masks))
        return self.compose(ii, cc, bb), self.char[ii], self.style[ii], cc, bb


def render_glyphs(variants: int = 4, seed: int = 0, jitter: bool = True) -> GlyphData:
    """Render every (character, style) ``variants`` times with random jitter (shift up to 2 px, scale 0.85-1).

    The text-to-image model and the scorer train on ``seed=0``; the scorer's held-out renders use another seed.
    """
    rng = np.random.default_rng(seed)
    masks, chars, styles = [], [], []
    for si, style in enumerate(STYLES):
        for ci, char in enumerate(CHARACTERS):
            for v in range(variants):
                if jitter and (v > 0 or seed != 0):
                    dx, dy = (int(x) for x in rng.integers(-2, 3, size=2))
                    scale = float(rng.uniform(0.85, 1.0))
                else:
                    dx, dy, scale = 0, 0, 1.0
                masks.append(render_mask(char, style, dx, dy, scale))
                chars.append(ci)
                styles.append(si)
    return GlyphData(torch.tensor(np.stack(masks)), torch.tensor(chars), torch.tensor(styles))
