"""A small CNN that tells the character, style, colour and background of a 32x32 RGB glyph image."""

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

from ..evaluation import AttributeConceptScorer
from ..toyworld import to_tensor
from .data import BACKGROUNDS, CHARACTERS, COLOURS, IMAGE_SIZE, STYLES, GlyphData, render_glyphs

logger = logging.getLogger(__name__)

SCORER_DIR = Path(__file__).parent / "scorer"
"""Where the shipped scorer weights (``model.safetensors``) and ``config.json`` live."""

HEADS: dict[str, tuple[str, ...]] = {
    "char": CHARACTERS,
    "style": tuple(STYLES),
    "colour": COLOURS,
    "background": BACKGROUNDS,
}
"""The scorer's heads and the value each class index stands for."""


class GlyphScorerNet(nn.Module):
    """Four-headed CNN: 32x32 RGB in [0, 1] -> logits for character (41), style (8), colour (8), background (2)."""

    def __init__(self, width: int = 24, hidden: int = 256) -> None:
        super().__init__()
        self.width, self.hidden = width, hidden
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 16x16
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),  # 8x8
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),  # 4x4
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * 16, hidden),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, len(values)) for name, values in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


@dataclass
class GlyphScore:
    """Per-image predictions of :class:`GlyphScorer`.

    Attributes:
        labels: Per head (``"char"``, ``"style"``, ``"colour"``, ``"background"``), an ``(N,)`` int64 array of
            class indices into :data:`HEADS`.
        probs: Per head, ``(N, classes)`` float32 softmax probabilities.
    """

    labels: dict[str, np.ndarray]
    probs: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.labels["char"])

    def names(self, head: str) -> list[str]:
        """The predicted values of one head as words (characters as themselves: ``"Q"``, ``"7"``)."""
        return [HEADS[head][i] for i in self.labels[head]]


class GlyphScorer:
    """Callable wrapper of :class:`GlyphScorerNet`: images in, :class:`GlyphScore` out.

    Example:
        ```py
        >>> from diffusers_unlearn.glyphs import load_pipeline, load_scorer, prompt
        >>> pipe, scorer = load_pipeline(), load_scorer()
        >>> images = pipe([prompt("Q", "red", "serif")] * 4, num_inference_steps=20).images
        >>> scorer(images).names("style")  # e.g. ['serif', 'serif', 'serif', 'serif']
        ```
    """

    def __init__(self, net: GlyphScorerNet, batch_size: int = 512) -> None:
        self.net = net.eval()
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Any) -> GlyphScore:
        """Score a list of PIL images or an ``(N, H, W, 3)`` uint8/float array or tensor."""
        x = to_tensor(images, IMAGE_SIZE)
        outs: dict[str, list[torch.Tensor]] = {name: [] for name in HEADS}
        for i in range(0, len(x), self.batch_size):
            for name, logits in self.net(x[i : i + self.batch_size]).items():
                outs[name].append(logits.float().softmax(-1))
        probs = {
            name: torch.cat(o).numpy() if o else np.zeros((0, len(HEADS[name])), np.float32)
            for name, o in outs.items()
        }
        return GlyphScore({name: p.argmax(-1).astype(np.int64) for name, p in probs.items()}, probs)

    def predict(self, images: Any) -> dict[str, list[str]]:
        """Per head, the predicted value of each image: the attribute map of the scorer protocol
        (:class:`diffusers_unlearn.evaluation.AttributeConceptScorer`)."""
        score = self(images)
        return {name: score.names(name) for name in HEADS}


def load_scorer(path: str | Path | None = None) -> GlyphScorer:
    """Load the shipped scorer (or one saved by :func:`train_scorer` at ``path``).

    Example:
        ```py
        >>> scorer = load_scorer()
        >>> scorer(np.zeros((1, 32, 32, 3), np.uint8)).labels["char"].shape
        (1,)
        ```
    """
    from safetensors.torch import load_file

    folder = Path(path) if path is not None else SCORER_DIR
    config = json.loads((folder / "config.json").read_text())
    net = GlyphScorerNet(width=config["width"], hidden=config["hidden"])
    net.load_state_dict({k: v.float() for k, v in load_file(folder / "model.safetensors").items()})
    return GlyphScorer(net)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 1-pixel shifts, brightness and tint jitter, occasional blur and noise, so generated images score
    well."""
    n = len(x)
    dx, dy = (torch.randint(-1, 2, (2,), generator=g)).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    blur = torch.rand(n, 1, 1, 1, generator=g) < 0.15
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(blur, 0.5 * x + 0.5 * soft, x)
    x = x * torch.empty(n, 1, 1, 1).uniform_(0.85, 1.1, generator=g)
    x = x * (1 + torch.empty(n, 3, 1, 1).uniform_(-0.08, 0.08, generator=g))
    x = x + 0.04 * torch.randn(x.shape, generator=g) * torch.rand(n, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


def evaluate_scorer(scorer: GlyphScorer, data: GlyphData | None = None) -> dict[str, float]:
    """Accuracy per head on held-out renders (jitter drawn with seed 1; the scorer trains on seeds 0 and 2)."""
    data = data or render_glyphs(variants=2, seed=1)
    x, y_char, y_style, y_colour, y_background = data.all_compositions()
    score = scorer(x.permute(0, 2, 3, 1))
    truth = {"char": y_char, "style": y_style, "colour": y_colour, "background": y_background}
    acc: dict[str, float] = {name: float((score.labels[name] == truth[name].numpy()).mean()) for name in HEADS}
    acc["n"] = len(x)
    return acc


def train_scorer(
    output: str | Path, steps: int = 4000, batch_size: int = 64, seed: int = 0, lr: float = 3e-3
) -> dict[str, float]:
    """Train the scorer on renders (jitter seeds 0 and 2, with augmentation) and save it to ``output``.

    Returns the held-out accuracy per head (see :func:`evaluate_scorer`).
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    parts = [render_glyphs(variants=4, seed=0), render_glyphs(variants=4, seed=2)]
    data = GlyphData(*(torch.cat([getattr(p, k) for p in parts]) for k in ("masks", "char", "style")))
    nc, nb = len(COLOURS), len(BACKGROUNDS)
    net = GlyphScorerNet()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="scorer")
    for _ in bar:
        i = torch.randint(0, len(data.masks), (batch_size,), generator=g)
        colour = torch.randint(0, nc, (batch_size,), generator=g)
        background = torch.randint(0, nb, (batch_size,), generator=g)
        logits = net(augment(data.compose(i, colour, background), g))
        truth = {"char": data.char[i], "style": data.style[i], "colour": colour, "background": background}
        loss = sum(F.cross_entropy(logits[name], truth[name]) for name in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    acc = evaluate_scorer(GlyphScorer(net))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / "model.safetensors")
    config = {"width": net.width, "hidden": net.hidden, "steps": steps, "seed": seed, "heldout_accuracy": acc}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    logger.info("scorer held-out accuracy %s", acc)
    return acc


class GlyphsConceptScorer(AttributeConceptScorer):
    """[`ConceptScorer`][diffusers_unlearn.evaluation.ConceptScorer] for the glyphs model; a check is a dict of the
    attributes that must all match.

    Keys: `"char"` (one of `glyphs.CHARACTERS`, e.g. `"Q"`), `"style"`, `"colour"`, `"background"`.

    Example:
        ```py
        >>> scorer = GlyphsConceptScorer()
        >>> scorer.shows(images, [{"char": "Q", "style": "serif"}] * len(images))
        ```
    """

    def __init__(self, scorer: GlyphScorer | None = None):
        self._scorer = scorer or load_scorer()
        super().__init__(self._scorer.predict)
