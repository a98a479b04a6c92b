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
from collections import OrderedDict
from collections.abc import Collection, Iterator, Sequence
from typing import Literal

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from .errors import InvalidConceptError
from .families import ModelFamily

DistanceKind = Literal["proxy", "score"]
Encoded = tuple[torch.Tensor, torch.Tensor | None]  # a prompt's (L, d) embeddings and pooled embedding

_EXACT_GRAM_MAX_ROWS = 65536
_SAMPLED_GRAM_ROWS = 16384
_PREDICTION_BATCH = 256  # samples per denoiser call of the score distance


class PromptBank:
    """Encodes prompts and keeps their embeddings, within a memory budget.

    Embeddings (and the score distance's noise predictions) are kept most-recently-used first up to
    `max_bytes` each; older ones are dropped and encoded again if asked for, so thousands of neighbours cost
    time, not memory. Token ids are always kept.

    Args:
        pipe (`DiffusionPipeline`): Its text encoder(s) encode the prompts.
        family ([`ModelFamily`]): The pipeline's family.
        batch_size (`int`): Prompts per text-encoder call.
        max_bytes (`int`): Budget of the embeddings kept, and separately of the noise predictions kept.
    """

    max_bytes_default = 512 * 2**20

    def __init__(
        self, pipe: DiffusionPipeline, family: ModelFamily, batch_size: int = 64, max_bytes: int | None = None
    ):
        self.pipe, self.family, self.batch_size = pipe, family, batch_size
        self.max_bytes = max_bytes or self.max_bytes_default
        self._embeds = _BoundedCache(self.max_bytes)  # prompt -> (embeds, pooled or None)
        self._ids: dict[str, tuple[list[int], ...]] = {}
        self.predictions = _BoundedCache(self.max_bytes)  # score distance: (prompt, samples, seed) -> tensor
        self.encoded = 0  # prompts encoded, re-encodings included
        self.encode_seconds = 0.0  # time spent in the text encoders
        self.predict_seconds = 0.0  # time spent in the denoiser (`noise_predictions`)

    def add(self, prompts: Sequence[str]) -> dict[str, Encoded]:
        """Encodes the prompts not held now, in batches (raises if one is too long for the tokenizer).

        Returns every requested prompt's `(embeds, pooled)`, whatever the budget keeps: of a list larger than it,
        only the last ones stay in the bank.
        """
        out = {}
        for prompt in dict.fromkeys(prompts):
            found = self._embeds.get(prompt)
            if found is not None:
                out[prompt] = found
        new = [p for p in dict.fromkeys(prompts) if p not in out]
        for prompt in new:
            self.ids(prompt)  # tokenized first: a prompt too long raises before any encoding
        started = time.perf_counter()
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            embeds, pooled = self.family.encode(self.pipe, chunk)
            for i, prompt in enumerate(chunk):
                out[prompt] = (embeds[i].cpu(), None if pooled is None else pooled[i].cpu())
                self._embeds.put(prompt, out[prompt])
            self.encoded += len(chunk)
        self.encode_seconds += time.perf_counter() - started
        return out

    def __len__(self) -> int:
        """How many prompts' embeddings are held now."""
        return len(self._embeds)

    def embeds(self, prompt: str) -> torch.Tensor:
        """`(L, d)` float32 embeddings of a prompt, as the edited layers read them."""
        return self._entry(prompt)[0]

    def pooled(self, prompt: str) -> torch.Tensor | None:
        """Pooled embedding of a prompt, for families that have one."""
        return self._entry(prompt)[1]

    def ids(self, prompt: str) -> tuple[list[int], ...]:
        """Token ids of a prompt, one list per segment of the family's text sequence (see `ModelFamily.token_ids`)."""
        if prompt not in self._ids:
            self._ids[prompt] = self.family.token_ids(self.pipe, prompt)
        return self._ids[prompt]

    def aligned(
        self,
        prompt_a: str,
        prompt_b: str,
        held: dict[str, Encoded] | None = None,
        fixed: Collection[tuple] = frozenset(),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of `a` and `b` at the token positions that may differ, paired (see `align`); from `held`
        (what `add` returned) when given.

        `fixed`: prefix keys (`ModelFamily.prefix_keys`) of protected prompts. Positions of `a` with one of them
        hold the very embedding a protected prompt has ("q in" of "q in serif" is "q in" of "q in roman"), so
        no edit can move them and keep it: they are left out, unless that leaves nothing.
        """
        positions_a, positions_b = self.family.align(self.pipe, self.ids(prompt_a), self.ids(prompt_b))
        if fixed:
            keys = self.family.prefix_keys(self.pipe, self.ids(prompt_a))
            free = [k for k, i in enumerate(positions_a) if keys[i] not in fixed]  # `None` is never fixed
            if free:
                positions_a, positions_b = [positions_a[k] for k in free], [positions_b[k] for k in free]
        embeds_a = held[prompt_a][0] if held else self.embeds(prompt_a)
        embeds_b = held[prompt_b][0] if held else self.embeds(prompt_b)
        return embeds_a[positions_a], embeds_b[positions_b]

    def chunks(self, prompts: Sequence[str]) -> Iterator[dict[str, Encoded]]:
        """The prompts' `(embeds, pooled)` in chunks of `batch_size`, each encoded in one call."""
        for start in range(0, len(prompts), self.batch_size):
            yield self.add(prompts[start : start + self.batch_size])

    def prefix_set(self, prompts: Sequence[str]) -> set[tuple]:
        """Every prefix key (`ModelFamily.prefix_keys`) of the prompts: the embeddings they pin."""
        return {key for p in prompts for key in self.family.prefix_keys(self.pipe, self.ids(p)) if key is not None}

    def moment(self, prompts: Sequence[str]) -> torch.Tensor:
        """`mean_i c_i c_i^T` over every token embedding of the prompts, float64 `(d, d)`, in bounded memory."""
        total, rows = None, 0
        for chunk in self.chunks(prompts):
            vectors = torch.cat([embeds for embeds, _ in chunk.values()]).double()
            total = vectors.T @ vectors if total is None else total + vectors.T @ vectors
            rows += vectors.shape[0]
        if total is None:
            raise InvalidConceptError("No prompts to form a moment from: pass at least one prompt.")
        return total / rows

    def _entry(self, prompt: str) -> Encoded:
        return self.add([prompt])[prompt]


class _BoundedCache:
    """A dict that keeps its most recently used values up to `max_bytes` (tensors or tuples of tensors)."""

    def __init__(self, max_bytes: int):
        self.max_bytes, self.bytes, self.peak_bytes = max_bytes, 0, 0
        self._items: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key, value) -> None:
        if key in self._items:
            self.bytes -= self._items.pop(key)[1]
        size = sum(t.numel() * t.element_size() for t in _tensors(value))
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes and len(self._items) > 1:  # the newest stays, whatever its size
            self.bytes -= self._items.popitem(last=False)[1][1]
        self.peak_bytes = max(self.peak_bytes, self.bytes)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for t in value if isinstance(t, torch.Tensor)]


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
    out = torch.empty(len(pairs), dtype=torch.float64)
    step = max(1, bank.batch_size // 2)
    for start in range(0, len(pairs), step):  # a chunk of pairs, encoded in one batch
        chunk = pairs[start : start + step]
        held = bank.add([p for pair in chunk for p in pair])
        for i, (a, b) in enumerate(chunk, start):
            ea, eb = bank.aligned(a, b, held)
            diff = (ea - eb).double()
            out[i] = ((diff @ gram) * diff).sum()
    return out


def _score_inputs(
    bank: PromptBank, samples: int, seed: int, max_side: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `samples` (latent, timestep) pairs every prompt is scored on, drawn with `seed` (latents in the layout
    the family's denoiser reads: `(samples, C, H, W)`, cropped to `max_side` if given, or packed
    `(samples, tokens, C)` for FLUX)."""
    pipe, denoiser = bank.pipe, getattr(bank.pipe, bank.family.denoiser)
    generator = torch.Generator().manual_seed(seed)
    latents = bank.family.random_latents(pipe, samples, generator)
    if max_side is not None and latents.dim() == 4:
        latents = latents[..., :max_side, :max_side]  # still standard normal; a smaller image costs less
    timesteps = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (samples,), generator=generator)
    device = pipe.device  # looked up once: diffusers walks every module for it
    return latents.to(device, denoiser.dtype), timesteps.to(device)


@torch.no_grad()
def noise_predictions(
    bank: PromptBank,
    prompts: Sequence[str],
    *,
    samples: int = 16,
    seed: int = 0,
    cache: bool = True,
    max_side: int | None = None,
) -> dict[str, torch.Tensor]:
    """The denoiser's noise predictions `(samples, C, H, W)` for each prompt, float32, on the shared samples.

    `max_side` crops the latents to at most that side (a cheaper check on large models: the text conditioning
    acts at every resolution).

    With `cache=False` nothing is read from or written to the bank's cache: for predictions of a model that is
    about to change (a removal applied for a moment), which must not be mistaken for the current model's.
    """
    pipe, family = bank.pipe, bank.family
    wanted = list(dict.fromkeys(prompts))
    key = (samples, seed, max_side)
    out = {p: found for p in wanted if cache and (found := bank.predictions.get((p, *key))) is not None}
    missing = [p for p in wanted if p not in out]
    if not missing:
        return out
    started, encoding = time.perf_counter(), bank.encode_seconds
    latents, timesteps = _score_inputs(bank, samples, seed, max_side)
    denoiser = getattr(pipe, family.denoiser)
    per_call = max(1, _PREDICTION_BATCH // samples)  # several prompts per denoiser call: one batch of samples each
    for start in range(0, len(missing), per_call):
        group = missing[start : start + per_call]
        embeds, pooled = _stacked(bank.add(group), group, samples, latents)
        repeat = (len(group),) + (1,) * (latents.dim() - 1)
        predicted = (
            family.denoise(pipe, denoiser, latents.repeat(*repeat), timesteps.repeat(len(group)), embeds, pooled)
            .float()
            .cpu()
        )
        for prompt, found in zip(group, predicted.split(samples), strict=True):
            out[prompt] = found.clone()
            if cache:
                bank.predictions.put((prompt, *key), out[prompt])
    bank.predict_seconds += time.perf_counter() - started - (bank.encode_seconds - encoding)
    return out


@torch.no_grad()
def final_latents(
    bank: PromptBank,
    prompts: Sequence[str],
    *,
    samples: int = 8,
    seed: int = 0,
    steps: int = 10,
    guidance_scale: float = 7.5,
    max_side: int | None = None,
) -> dict[str, torch.Tensor]:
    """Where sampling ends for each prompt: `samples` short DDIM trajectories (`steps`, classifier-free guidance at
    `guidance_scale`; FLUX's own guidance) from the same starting latents for every prompt, drawn with `seed`. The
    last latents `(samples, ...)`, float32 on the CPU. Two prompts' ends compared sample by sample say whether the
    model draws them alike (same noise, same layout), where their mean noise predictions may not: a prompt the model
    draws in a spread of colours has a mean prediction near one colour it seldom draws.

    Example:
        ```py
        >>> ends = final_latents(bank, ["a five", "a red five", "a yellow five"])
        >>> ends["a five"].shape
        torch.Size([8, 4, 8, 8])
        ```
    """
    pipe, family = bank.pipe, bank.family
    denoiser = getattr(pipe, family.denoiser)
    wanted = list(dict.fromkeys(prompts))
    start = family.random_latents(pipe, samples, torch.Generator().manual_seed(seed))
    if max_side is not None and start.dim() == 4:
        start = start[..., :max_side, :max_side]
    guided = guidance_scale != 1.0 and family.name != "flux"  # FLUX.1 is guidance-distilled
    encoded = bank.add(wanted + ([""] if guided else []))
    out = {}
    per_call = max(1, _PREDICTION_BATCH // (samples * (2 if guided else 1)))
    for begin in range(0, len(wanted), per_call):
        group = wanted[begin : begin + per_call]
        scheduler = family.sampling_scheduler(pipe, steps)  # a fresh one per batch: flow schedulers count steps
        repeat = (len(group),) + (1,) * (start.dim() - 1)
        latents = (start * getattr(scheduler, "init_noise_sigma", 1.0)).repeat(*repeat).to(pipe.device, denoiser.dtype)
        embeds, pooled = _stacked(encoded, group + [""] * len(group) if guided else group, samples, latents)
        for t in scheduler.timesteps:
            both = torch.cat([latents, latents]) if guided else latents
            predicted = family.denoise(pipe, denoiser, both, t.to(latents.device).expand(len(both)), embeds, pooled)
            if guided:
                conditioned, unconditioned = predicted.chunk(2)
                predicted = unconditioned + guidance_scale * (conditioned - unconditioned)
            latents = scheduler.step(predicted, t, latents).prev_sample
        for prompt, end in zip(group, latents.float().cpu().split(samples), strict=True):
            out[prompt] = end.clone()
    return out


def _stacked(
    encoded: dict, prompts: Sequence[str], samples: int, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The text embeddings (and pooled ones, where the family has them) of `prompts`, each repeated for its
    `samples` rows of one denoiser call, in `like`'s device and dtype."""
    embeds = torch.cat([encoded[p][0].to(like).expand(samples, -1, -1) for p in prompts])
    pooled = None
    if encoded[prompts[0]][1] is not None:
        pooled = torch.cat([encoded[p][1].to(like).expand(samples, -1) for p in prompts])
    return embeds, pooled


def sample_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`|| a - b ||^2` per sample of two prompts' noise predictions or trajectory ends, `(samples,)`."""
    return (a - b).square().flatten(1).sum(1)


def prediction_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """`E || a - b ||^2` over the samples of two prompts' noise predictions (see [`noise_predictions`])."""
    return float(sample_distances(a, b).mean())


def score_distances(
    bank: PromptBank, pairs: Sequence[tuple[str, str]], samples: int = 16, seed: int = 0
) -> torch.Tensor:
    """Score-prediction distance for each `(a, b)` pair, float64 `(len(pairs),)`.

    Every prompt sees the same `samples` (latent, timestep) pairs, drawn with `seed`.
    """
    out = torch.empty(len(pairs), dtype=torch.float64)
    step = max(1, bank.batch_size // 2)
    chunks = range(0, len(pairs), step)
    for start in tqdm(chunks, desc="score distance", leave=False, disable=len(chunks) < 8):
        chunk = pairs[start : start + step]
        predicted = noise_predictions(bank, [p for pair in chunk for p in pair], samples=samples, seed=seed)
        for i, (a, b) in enumerate(chunk, start):
            out[i] = prediction_distance(predicted[a], predicted[b])
    return out
