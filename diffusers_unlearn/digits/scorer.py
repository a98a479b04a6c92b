"""A small CNN that tells the digit, colour and stroke of a 16x16 RGB image (composed or generated)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import toyworld
from ..evaluation import AttributeConceptScorer
from .data import COLOURS, DIGITS, IMAGE_SIZE, STROKES, DigitsData, load_digits_data

logger = logging.getLogger(__name__)

SCORER_DIR = Path(__file__).parent / "scorer"
"""Where the shipped scorer weights (``model.safetensors``) and ``config.json`` live."""


class ScorerNet(nn.Module):
    """Three-headed CNN: 16x16 RGB in [0, 1] -> logits for digit (10), colour (4) and stroke (2)."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        self.width, self.hidden = width, hidden
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
        )
        self.digit = nn.Linear(hidden, len(DIGITS))
        self.colour = nn.Linear(hidden, len(COLOURS))
        self.stroke = nn.Linear(hidden, len(STROKES))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.digit(h), self.colour(h), self.stroke(h)


@dataclass
class ScorerOutput:
    """Per-image predictions of :class:`DigitScorer`.

    Attributes:
        digit: ``(N,)`` int64 array, the predicted digit (0-9, an index into ``DIGITS``).
        colour: ``(N,)`` int64 array, an index into ``COLOURS``.
        stroke: ``(N,)`` int64 array, an index into ``STROKES``.
        digit_probs: ``(N, 10)`` float32 softmax probabilities.
        colour_probs: ``(N, 4)`` float32 softmax probabilities.
        stroke_probs: ``(N, 2)`` float32 softmax probabilities.
    """

    digit: np.ndarray
    colour: np.ndarray
    stroke: np.ndarray
    digit_probs: np.ndarray
    colour_probs: np.ndarray
    stroke_probs: np.ndarray

    def __len__(self) -> int:
        return len(self.digit)

    @property
    def colour_names(self) -> list[str]:
        """The predicted colours as words of ``COLOURS``."""
        return [COLOURS[i] for i in self.colour]

    @property
    def stroke_names(self) -> list[str]:
        """The predicted strokes as words of ``STROKES``."""
        return [STROKES[i] for i in self.stroke]

    @property
    def digit_names(self) -> list[str]:
        """The predicted digits as words of ``DIGITS``."""
        return [DIGITS[i] for i in self.digit]


def to_tensor(images: Any) -> torch.Tensor:
    """Images as a float (N, 3, 16, 16) tensor in [0, 1].

    Accepts a list of PIL images, or a numpy array / torch tensor batch ``(N, H, W, 3)`` (uint8, or float in [0, 1]);
    images of another size are resized (bilinear) to 16x16.
    """
    return toyworld.to_tensor(images, IMAGE_SIZE)


class DigitScorer:
    """Callable wrapper of :class:`ScorerNet`: images in, :class:`ScorerOutput` out.

    Example:
        ```py
        >>> from diffusers_unlearn.digits import load_pipeline, load_scorer, prompt
        >>> pipe, scorer = load_pipeline(), load_scorer()
        >>> images = pipe([prompt(7, "red")] * 4, num_inference_steps=20).images
        >>> out = scorer(images)
        >>> out.digit, out.colour_names  # e.g. (array([7, 7, 7, 7]), ['red', 'red', 'red', 'red'])
        ```
    """

    def __init__(self, net: ScorerNet, batch_size: int = 1024) -> None:
        self.net = net.eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Any) -> ScorerOutput:
        """Score a list of PIL images or a ``(N, H, W, 3)`` uint8/float array or tensor."""
        x = to_tensor(images)
        outs: list[list[torch.Tensor]] = [[], [], []]
        for i in range(0, len(x), self.batch_size):
            for acc, logits in zip(outs, self.net(x[i : i + self.batch_size]), strict=True):
                acc.append(logits.float().softmax(-1))
        sizes = (len(DIGITS), len(COLOURS), len(STROKES))
        probs = [torch.cat(o).numpy() if o else np.zeros((0, n), np.float32) for o, n in zip(outs, sizes, strict=True)]
        return ScorerOutput(*(p.argmax(-1).astype(np.int64) for p in probs), *probs)


def load_scorer(path: str | Path | None = None) -> DigitScorer:
    """Load the shipped scorer (or one saved by :func:`train_scorer` at ``path``).

    Example:
        ```py
        >>> scorer = load_scorer()
        >>> scorer(np.zeros((1, 16, 16, 3), np.uint8)).digit.shape
        (1,)
        ```
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else SCORER_DIR
    config = json.loads((folder / "config.json").read_text())
    net = ScorerNet(width=config["width"], hidden=config["hidden"])
    net.load_state_dict({k: v.float() for k, v in load_file(folder / "model.safetensors").items()})
    return DigitScorer(net)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 1-pixel shifts, brightness, per-channel tint jitter and noise, so generated images score well."""
    n = len(x)
    dx, dy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    x = x * torch.empty(n, 1, 1, 1).uniform_(0.7, 1.15, generator=g)
    x = x * (1 + torch.empty(n, 3, 1, 1).uniform_(-0.12, 0.12, generator=g))
    x = x + 0.04 * torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def compose_all(data: DigitsData, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (digit image, colour, stroke) combination of ``idx``: images and digit/colour/stroke labels."""
    nc, ns = len(COLOURS), len(STROKES)
    ii = idx.repeat_interleave(nc * ns)
    cc = torch.arange(nc).repeat_interleave(ns).repeat(len(idx))
    ss = torch.arange(ns).repeat(nc * len(idx))
    return data.compose(ii, cc, ss), data.labels[ii], cc, ss


def evaluate_scorer(scorer: DigitScorer, data: DigitsData | None = None) -> dict[str, float]:
    """Accuracy per attribute on every colour/stroke composition of the held-out digits."""
    data = data or load_digits_data()
    x, yd, yc, ys = compose_all(data, data.test_idx)
    out = scorer(x.permute(0, 2, 3, 1))
    return {
        "digit": float((out.digit == yd.numpy()).mean()),
        "colour": float((out.colour == yc.numpy()).mean()),
        "stroke": float((out.stroke == ys.numpy()).mean()),
        "n": len(x),
    }


def train_scorer(output: str | Path, steps: int = 3000, batch_size: int = 256, seed: int = 0) -> dict[str, float]:
    """Train the scorer on the training split (with augmentation) and save it to ``output``.

    Returns the held-out accuracy per attribute (see :func:`evaluate_scorer`).
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data = load_digits_data()
    x, yd, yc, ys = compose_all(data, data.train_idx)
    net = ScorerNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="scorer")
    for _ in bar:
        i = torch.randint(0, len(x), (batch_size,), generator=g)
        ld, lc, ls = net(augment(x[i], g))
        loss = F.cross_entropy(ld, yd[i]) + F.cross_entropy(lc, yc[i]) + F.cross_entropy(ls, ys[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    acc = evaluate_scorer(DigitScorer(net), data)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    config = {"width": net.width, "hidden": net.hidden, "steps": steps, "seed": seed, "heldout_accuracy": acc}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("scorer held-out accuracy %s", acc)
    return acc


class DigitsConceptScorer(AttributeConceptScorer):
    """[`ConceptScorer`][diffusers_unlearn.evaluation.ConceptScorer] for the digits model; a check is a dict of the
    attributes that must all match.

    Keys: `"digit"` (int 0-9), `"colour"` (one of `digits.COLOURS`), `"stroke"` (one of `digits.STROKES`).

    Example:
        ```py
        >>> scorer = DigitsConceptScorer()
        >>> scorer.shows(images, [{"digit": 7, "colour": "red"}] * len(images))
        ```
    """

    def __init__(self, scorer: DigitScorer | None = None):
        self._scorer = scorer or load_scorer()
        super().__init__(self._predict)

    def _predict(self, images: Any) -> dict[str, list]:
        out = self._scorer(images)
        return {"digit": [int(d) for d in out.digit], "colour": out.colour_names, "stroke": out.stroke_names}
