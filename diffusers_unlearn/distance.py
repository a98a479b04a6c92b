"""How far apart two prompts are *for the model itself* (DESIGN §2).

Two distances, both computed with the pipeline's current weights (every loaded removal applied):

- `"score"`: the score-prediction distance `E_{x_t, t} || eps(x_t, t, a) - eps(x_t, t, b) ||^2` over
  `samples` random (latent, timestep) pairs, shared by all prompts: one denoiser call per prompt and sample.
- `"proxy"`: the distance between the key / value projections of the two prompts' token embeddings summed
  over the edited layers, `sum_l || W_l (c_a - c_b) ||^2` at aligned token positions. It needs no denoiser
  call: `sum_l W_l^T W_l` is formed once, so it costs a few matrix products.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from .families import ModelFamily
from .prompts import align, token_ids

DistanceKind = Literal["proxy", "score"]

_EXACT_GRAM_MAX_ROWS = 65536
_SAMPLED_GRAM_ROWS = 16384


class PromptBank:
    """Encodes prompts once and keeps their embeddings and token ids."""

    def __init__(self, pipe: DiffusionPipeline, family: ModelFamily, batch_size: int = 64):
        self.pipe, self.family, self.batch_size = pipe, family, batch_size
        self.tokenizer = pipe.tokenizer
        self.length = pipe.tokenizer.model_max_length
        self._embeds: dict[str, torch.Tensor] = {}
        self._pooled: dict[str, torch.Tensor] = {}
        self._ids: dict[str, list[int]] = {}
        self.predictions: dict[tuple[str, int, int], torch.Tensor] = {}  # score distance: (prompt, samples, seed)
        self.encode_seconds = 0.0  # time spent in the text encoders

    def add(self, prompts: Sequence[str]) -> None:
        """Encodes the prompts not seen yet (raises if one is too long for the tokenizer)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._embeds))
        for prompt in new:
            self._ids[prompt] = token_ids(self.tokenizer, prompt)
        started = time.perf_counter()
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            embeds, pooled = self.family.encode(self.pipe, chunk)
            for i, prompt in enumerate(chunk):
                self._embeds[prompt] = embeds[i].cpu()
                if pooled is not None:
                    self._pooled[prompt] = pooled[i].cpu()
        self.encode_seconds += time.perf_counter() - started

    def __len__(self) -> int:
        """How many prompts have been encoded."""
        return len(self._embeds)

    def embeds(self, prompt: str) -> torch.Tensor:
        """`(L, d)` float32 embeddings of a prompt, as the edited layers read them."""
        self.add([prompt])
        return self._embeds[prompt]

    def pooled(self, prompt: str) -> torch.Tensor | None:
        """Pooled embedding of a prompt, for families that have one."""
        self.add([prompt])
        return self._pooled.get(prompt)

    def ids(self, prompt: str) -> list[int]:
        self.add([prompt])
        return self._ids[prompt]

    def aligned(self, prompt_a: str, prompt_b: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `a` and `b` at the token positions that may differ, paired (see `align`)."""
        positions_a, positions_b = align(self.ids(prompt_a), self.ids(prompt_b), self.length)
        return self.embeds(prompt_a)[positions_a], self.embeds(prompt_b)[positions_b]


def projection_gram(weights: Sequence[torch.Tensor], seed: int = 0) -> torch.Tensor:
    """`sum_l W_l^T W_l` over the edited layers, float64, `(d, d)`.

    Exact up to 65,536 output rows in all (SD 1.5 has ~50k); beyond that (SDXL) an unbiased estimate from
    16,384 rows drawn uniformly, which is ample to rank distances.
    """
    total_rows = sum(w.shape[0] for w in weights)
    d = weights[0].shape[1]
    gram = torch.zeros(d, d, dtype=torch.float64)
    if total_rows <= _EXACT_GRAM_MAX_ROWS:
        for w in weights:
            w = w.double()
            gram += w.T @ w
        return gram
    generator = torch.Generator().manual_seed(seed)
    keep = _SAMPLED_GRAM_ROWS / total_rows
    for w in weights:
        rows = torch.rand(w.shape[0], generator=generator) < keep
        sample = w[rows].double()
        gram += sample.T @ sample / keep
    return gram


def proxy_distances(bank: PromptBank, gram: torch.Tensor, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
    """Key / value-projection distance for each `(a, b)` pair, float64 `(len(pairs),)`."""
    bank.add([p for pair in pairs for p in pair])  # one batched encoding
    out = torch.empty(len(pairs), dtype=torch.float64)
    for i, (a, b) in enumerate(pairs):
        ea, eb = bank.aligned(a, b)
        diff = (ea - eb).double()
        out[i] = ((diff @ gram) * diff).sum()
    return out


@torch.no_grad()
def score_distances(
    bank: PromptBank, pairs: Sequence[tuple[str, str]], samples: int = 16, seed: int = 0
) -> torch.Tensor:
    """Score-prediction distance for each `(a, b)` pair, float64 `(len(pairs),)`.

    Every prompt sees the same `samples` (latent, timestep) pairs, drawn with `seed`.
    """
    pipe, family = bank.pipe, bank.family
    denoiser = getattr(pipe, family.denoiser)
    config = denoiser.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(samples, config.in_channels, size, size, generator=generator)
    timesteps = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (samples,), generator=generator)
    latents = latents.to(pipe.device, denoiser.dtype)
    timesteps = timesteps.to(pipe.device)
    scale = getattr(pipe, "vae_scale_factor", 8)

    bank.add([p for pair in pairs for p in pair])
    predictions = bank.predictions
    todo = [p for p in dict.fromkeys(p for pair in pairs for p in pair) if (p, samples, seed) not in predictions]
    for prompt in tqdm(todo, desc="score distance", leave=False, disable=len(todo) < 16):
        embeds = bank.embeds(prompt).to(pipe.device, denoiser.dtype).expand(samples, -1, -1)
        pooled = bank.pooled(prompt)
        if pooled is not None:
            pooled = pooled.to(pipe.device, denoiser.dtype).expand(samples, -1)
        extra = family.denoiser_kwargs(pipe, pooled, size * scale, size * scale)
        prediction = denoiser(latents, timesteps, encoder_hidden_states=embeds, **extra).sample.float()
        predictions[prompt, samples, seed] = prediction

    out = torch.empty(len(pairs), dtype=torch.float64)
    for i, (a, b) in enumerate(pairs):
        difference = predictions[a, samples, seed] - predictions[b, samples, seed]
        out[i] = difference.square().sum(dim=(1, 2, 3)).mean().double()
    return out
