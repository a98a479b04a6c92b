"""Revival: ordinary fine-tuning on unrelated concepts, then asking for the erased one ("Unstable Unlearning",
Suriyakumar et al., 2024, found that a few hundred steps on unrelated images bring erased concepts back)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from diffusers import DiffusionPipeline
from torch import nn
from tqdm.auto import tqdm

from ..errors import InvalidArgumentError
from .base import AttackResult, AttackSettings, AttackTarget, Scorer, generate_prompts, resolve_scorer, result_of

logger = logging.getLogger(__name__)

_TRAINED = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
            "attn2.to_out.0")  # fmt: skip


class _HookLoRA(nn.Module):
    """A LoRA added to a layer's output through a forward hook: it leaves the layer (and any PEFT adapter or
    fused removal on it) untouched, and removing the hook restores the model exactly."""

    def __init__(self, layer: nn.Module, rank: int, generator: torch.Generator):
        super().__init__()
        weight = layer.base_layer.weight if hasattr(layer, "base_layer") else layer.weight
        out_features, in_features = weight.shape
        self.down = nn.Parameter(torch.randn(rank, in_features, generator=generator) / in_features**0.5)
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    def hook(self, _module, inputs, output):
        return output + (inputs[0] @ self.down.T.to(output.dtype)) @ self.up.T.to(output.dtype)


@contextmanager
def _hooked_lora(unet: nn.Module, rank: int, seed: int) -> Iterator[list[nn.Parameter]]:
    generator = torch.Generator().manual_seed(seed)
    handles, parameters = [], []
    try:
        for name, module in unet.named_modules():
            if name.endswith(_TRAINED) and (isinstance(module, nn.Linear) or hasattr(module, "base_layer")):
                lora = _HookLoRA(module, rank, generator).to(unet.device)
                handles.append(module.register_forward_hook(lora.hook))
                parameters += [lora.down, lora.up]
        yield parameters
    finally:
        for handle in handles:
            handle.remove()


def revival_attack(
    pipe: DiffusionPipeline,
    target: AttackTarget,
    scorer: Scorer | str,
    *,
    reference: DiffusionPipeline | None = None,
    data: Sequence[tuple[str, np.ndarray]] | None = None,
    settings: AttackSettings | None = None,
    steps: int = 100,
    rank: int = 4,
    learning_rate: float = 1e-3,
    batch: int = 8,
    images_per_concept: int = 8,
) -> AttackResult:
    """Fine-tunes a LoRA on unrelated concepts for `steps` steps, then asks for the erased concept.

    The LoRA (rank `rank` on every attention projection of the UNet) is trained with the ordinary denoising
    loss on images of unrelated concepts only; the erased concept is never shown. The pipeline is restored
    exactly afterwards (the LoRA lives in forward hooks that are removed).

    Args:
        pipe (`DiffusionPipeline`): The attacked pipeline, removals loaded (any load mode).
        target ([`AttackTarget`]): Its seed `prompt` is asked for after fine-tuning; its `unrelated` prompts are
            the training concepts when `data` is not given.
        scorer (`ConceptScorer`, callable or `str`): Judges the images.
        reference (`DiffusionPipeline`, *optional*): Generates the unrelated images when `data` is not given
            (stands in for an attacker's own photos of other things).
        data (`Sequence[tuple[str, np.ndarray]]`, *optional*): `(prompt, images (N, H, W, 3) in [0, 1])` pairs to
            fine-tune on instead.
        settings ([`AttackSettings`], *optional*): Images, steps, guidance, seed.
        steps (`int`): Fine-tuning steps.
        rank (`int`): LoRA rank.
        learning_rate (`float`): AdamW learning rate.
        batch (`int`): Images per step.
        images_per_concept (`int`): Images generated per unrelated prompt when `data` is not given.

    Returns:
        [`AttackResult`]: images of the seed prompt after fine-tuning; `details` the final training loss.
    """
    settings = settings or AttackSettings()
    scorer = resolve_scorer(scorer)
    started = time.perf_counter()
    unet, device = pipe.unet, pipe.device
    generator = torch.Generator().manual_seed(settings.seed)
    latents, prompts = _training_latents(pipe, target, reference, data, settings, images_per_concept)
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(sorted(set(prompts)), device, 1, do_classifier_free_guidance=False)
    row = {p: i for i, p in enumerate(sorted(set(prompts)))}
    prompt_rows = torch.tensor([row[p] for p in prompts])
    scheduler = pipe.scheduler
    was_training = unet.training
    with _hooked_lora(unet, rank, settings.seed) as parameters:
        optimizer = torch.optim.AdamW(parameters, lr=learning_rate)
        losses = []
        for _ in tqdm(range(steps), desc="revival fine-tuning", disable=not settings.progress, leave=False):
            index = torch.randint(len(latents), (batch,), generator=generator)
            noise = torch.randn(latents[index].shape, generator=generator)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
            noisy = scheduler.add_noise(latents[index], noise, timesteps)
            dtype = unet.dtype
            predicted = unet(
                noisy.to(device, dtype), timesteps.to(device), embeds[prompt_rows[index]].to(device, dtype)
            ).sample.float()
            loss = (predicted - noise.to(device)).square().mean()
            optimizer.zero_grad()
            gradients = torch.autograd.grad(loss, parameters)
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.grad = gradient
            optimizer.step()
            losses.append(float(loss.detach()))
        unet.train(was_training)
        images = generate_prompts(pipe, [target.prompt], settings)
    details = {"steps": steps, "final_loss": float(np.mean(losses[-10:])) if losses else float("nan")}
    details["training_prompts"] = sorted(set(prompts))
    return result_of("revival", [target.prompt], images, scorer, target.check, started, details)


@torch.no_grad()
def _training_latents(pipe, target, reference, data, settings, images_per_concept):
    """Latents and prompts of the unrelated images the revival fine-tunes on."""
    if data is not None:
        latents, prompts = [], []
        vae = pipe.vae
        for prompt, images in data:
            pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() * 2 - 1
            encoded = vae.encode(pixels.to(pipe.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
            latents.append(encoded.float().cpu())
            prompts += [prompt] * len(images)
        return torch.cat(latents), prompts
    if reference is None or not target.unrelated:
        raise InvalidArgumentError(
            "The revival attack needs `data`, or a `reference` pipeline and the target's `unrelated` prompts: pass "
            "one of them."
        )
    prompts = [p for p in target.unrelated for _ in range(images_per_concept)]
    generators = [torch.Generator().manual_seed(settings.seed + 30_000 + i) for i in range(len(prompts))]
    latents = []
    for start in range(0, len(prompts), settings.batch_size):
        latents.append(
            reference(
                prompts[start : start + settings.batch_size],
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=generators[start : start + settings.batch_size],
                output_type="latent",
            )
            .images.float()
            .cpu()
        )
    return torch.cat(latents), prompts
