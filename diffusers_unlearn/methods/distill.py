"""`method="distill"`: the LACU recipe on a LoRA adapter (DESIGN §3).

Teacher: the pipeline as loaded (its removals applied), frozen. Student: the same denoiser plus one new LoRA
adapter, so no second copy of the weights exists; the teacher's predictions are the same forward pass with the
new adapter's scaling set to zero. Losses, on latents the teacher generates in a few DDIM steps from the forget
and protected prompts, at timesteps below `max_timestep`:

    goal    = eps_teacher(x_t, t, target) - eta * (eps_teacher(x_t, t, forget) - eps_teacher(x_t, t, target))
    unlearn = || eps_student(x_t, t, forget) - goal ||^2
    replay  = || eps_student(x_t, t, protected) - eps_teacher(x_t, t, protected) ||^2
    loss    = unlearn + lambda_replay * replay + lambda_l2 * sum ||lora||^2

With `anchor="base"` the teacher of the protected prompts the caller marks `untouched` is the model without any
removal (within the caller's `untouched_model()`: `pipeline.removals_disabled`), so that the drift each removal
leaves on them cannot compound along a chain; earlier removals' forget prompts keep the chain as their teacher, so
that they stay removed.

`eta` (`negative_guidance`) points the goal past the mapping target, away from the concept. With `eta = 0`
(LACU's plain mapping) a LoRA only gets part of the way to its target, and classifier-free guidance multiplies
what is left by the guidance scale: on the digits model the concept was still generated in 97% of the images.
With `eta = 1` it is gone (docs/method.md §8). Protected prompts are replayed group by group (anchors,
neighbours, preserved prompts, earlier removals), each group drawn as often as the others whatever its size;
the earlier removals' group is shared evenly by removal, so that a removal with few prompts keeps its share.

With `harden=` ([`HardenConfig`], `methods/harden.py`), training is adversarial: at `harden.rounds` evenly spaced
steps, `harden.prompts` forget prompts' text embeddings are optimised until the student's prediction comes close to
the teacher's for the forget prompt (the embedding attack's objective), and each result joins the forget set with
the goal of the prompt it started from:

    harden  = || eps_student(x_t, t, c*) - goal(forget prompt c* started from) ||^2,   loss += weight * harden

With earlier removals (and the untouched model), training measures `earlier_undone`: per earlier removal, the
share of its effect on its forget prompts (chain minus untouched model) that the new LoRA takes back, on 4 teacher
trajectories of that removal's prompts (`erase` warns above 20%; `stack.check` counts it); `None` for a removal
whose effect there is below 0.1% of the predictions, where a share means nothing.

Removals loaded as PEFT adapters stay active next to the new one while it trains (diffusers' `add_adapter` leaves
only the new adapter active: the teacher would be the untouched model) and exactly as before once it is gone.

Training runs through `accelerate` (several processes with `accelerate launch`, mixed precision and gradient
accumulation as options). Every batch is drawn from a generator seeded by `(seed, step)`, and checkpoints hold
the adapter and the optimizer state, so a resumed run gives the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..adapter import atomic_write
from ..attacks.base import encode_ids, input_embeddings, token_ids, word_ids
from ..distance import PromptBank
from ..errors import InvalidArgumentError, ResolveError
from ..families import ModelFamily
from ..layers import active_adapters
from .descent import descend

if TYPE_CHECKING:  # harden.py's closed-form loop imports constraints, which imports methods: no import at run time
    from .harden import HardenConfig

_ADAPTER = "diffusers_unlearn_distill"  # the student's adapter name while it trains
_REPAIR = "diffusers_unlearn_repair"  # the repair's, trained after it (`DistillConfig.repair_steps`)
_CHECKPOINT = "distill_checkpoint.safetensors"
_UNMEASURABLE = 1e-3  # `earlier_undone`: an earlier removal's effect on its probes below this share of the
# predictions (their norm) has no share to take back


@dataclass
class DistillConfig:
    """Hyper-parameters of `erase(..., method="distill")`.

    Args:
        rank (`int`): LoRA rank (`lora_alpha == rank`).
        target_modules (`tuple[str, ...]`, *optional*): Module-name endings to train, e.g.
            `("attn2.to_k", "attn2.to_v", "attn1.to_q", "ff.net.2")`. Default: where the family reads the text
            (`ModelFamily.distill_targets`): the cross-attention inputs `attn2.to_k` / `attn2.to_v` of a UNet,
            the joint attention's text-stream inputs `attn.add_k_proj` / `attn.add_v_proj` of SD3 / FLUX.1.
        steps (`int`): Optimizer steps.
        batch_size (`int`): Forget and protected samples per step (each). A step runs the teacher once on all
            its samples (up to 4 x `batch_size`: targets, forget prompts, protected prompts, earlier removals) and
            the student once (up to 3 x): fewer, larger denoiser calls.
        learning_rate (`float`): AdamW learning rate.
        lambda_replay (`float`): Weight of the local replay on protected prompts.
        lambda_l2 (`float`): Weight of the L2 penalty on the LoRA weights.
        negative_guidance (`float`): How far past the mapping target the forget prompts are pushed, away from
            the concept (`eta` above; 0: match the target, as LACU).
        max_timestep (`int`): Training timesteps are drawn from `[0, max_timestep)`.
        latent_pool (`int`): Teacher trajectories generated before training (per kind: forget, protected).
        replay_pool (`int`, *optional*): Trajectories of the protected prompts (and of the earlier removals' hold)
            instead of `latent_pool`: a small group of its own gets few of them, and a prompt is held only near
            the images its trajectories drew (measured on glyphs: "italic 7" took "oblique 7" with it with 64,
            not with 256). More trajectories of the forget prompts, in turn, carry a removal further.
        sampling_steps (`int`): DDIM steps of each trajectory.
        gradient_accumulation_steps (`int`): Batches per optimizer step.
        mixed_precision (`str`): `"no"`, `"fp16"` or `"bf16"` (passed to `accelerate.Accelerator`).
        checkpoint_dir (`str`, *optional*): Where to write checkpoints; an existing checkpoint there is resumed.
        checkpoint_every (`int`): Steps between checkpoints.
        anchor (`str`): Teacher of the protected prompts on a pipeline that already carries removals: `"chain"`
            (the pipeline as loaded) or `"base"` (the untouched model, for the prompts no earlier removal erased:
            the drift of a chain cannot add up on them; measured on digits, it also brings earlier combinations
            back, docs/benchmarks/continual_analysis.md). The earlier removals' forget prompts are held to the
            chain either way.
        lambda_earlier (`float`, *optional*): Weight of a term of its own that holds the earlier removals' forget
            prompts to the chain, with its own batch and trajectories shared evenly by removal, so that the hold
            each removal gets does not thin out as the chain grows; at a quarter, half and three quarters of
            training, a removal found taken back by more than 2% (`earlier_undone`) gets its hold raised in
            proportion (at most 20x). Default: they are one group of the replay (measured on digits: the return
            of earlier removals comes a step or two later with it, docs/benchmarks/continual_analysis.md).
        earlier_push (`float`): With `lambda_earlier`, hold the earlier removals' forget prompts this share of
            their removal's effect past the chain, away from the untouched model (`chain + push * (chain -
            untouched)`): each removal on top takes back a few percent of the earlier ones whatever their hold
            (`earlier_undone`), and the push aims to give it back. 0 (the default): held to the chain.
        earlier_push_scope (`str`): Which earlier removals `earlier_push` moves: `"all"` (the default) or
            `"combinations"`, those that keep their own name in other contexts ("serif E" keeps "the letter e in
            sans"; `constraints.is_combination`): a few prompts each, which drift back one image at a time, where
            pushing a whole style or colour moves hundreds of prompts and the cells beside them
            (docs/benchmarks/continual_analysis.md).
        base_share (`float`): With `anchor="base"`, how far the teacher of the untouched prompts moves from the
            chain toward the untouched model: 1 (the default) the untouched model, 0 the chain. Pulling a protected
            prompt back to the untouched model also takes back part of the earlier removals whose side effects it
            repairs; with a share, each removal repairs that share of the drift it finds, so the drift stays
            bounded and less of the earlier removals is taken back (docs/benchmarks/continual_analysis.md).
        min_reach (`float`, *optional*): After `steps`, train on in rounds of a quarter of `steps` until the
            removal's `target_reach` (`figures["target_reach"]`: how far its noise predictions have moved, in units
            of the distance to its targets) reaches this, or `max_steps` are done; the figure is measured after
            each round (`figures["reach_trace"]`). Measured on glyphs: on a chain of 8 removals, "oblique G"
            reached 0.81 in 200 steps and stayed in 12% of the images; 1.07 in 500, and was gone. Default: `steps`
            and no more.
        max_steps (`int`, *optional*): The most steps `min_reach` may train (default: 3 x `steps`).
        earlier_protection (`float`): Replay the prompts the earlier removals protected (`earlier_protected`,
            passed by `erase`) as one more group of this weight beside this removal's groups, each of which weighs
            1: it gets that share of the replay trajectories, shared evenly by removal, then by group, and the
            replay term grows by as much, so this removal's own groups keep their weight (as
            `ClosedFormConfig.earlier_protection`); give `replay_pool` as many more trajectories, so that they
            keep theirs too. Without it, a later removal holds only its own neighbours, and an earlier removal's
            look-alikes ("red oblique 7" beside "italic 7") drift with the chain. Measured: glyphs 7 steps at the
            bars with 2 (from 5), digits 8 (from 17; docs/benchmarks/continual_analysis.md). 0 (the default): off.
        earlier_anchor (`str`): With `lambda_earlier`, the teacher of the earlier removals' forget prompts in their
            hold: `"chain"` (the default) the pipeline as loaded, so that what each later removal took back stays
            taken back; `"own"` the chain as it was right after that removal was made (the later removals
            disabled), so that the hold gives back what the later ones took and its target cannot drift along
            the chain. A prompt a later removal's concept names stays held to the chain as loaded (the later
            request wins).
        earlier_hardened (`bool`): Hold an earlier hardened removal's phrasings and prefixed prompts
            (`metadata["hardened_prompts"]`) with its forget prompts, so that later removals do not wear its
            hardening away. A held prompt whose words in front name the later removal's concept is left to it
            ("6 4 3 3 0 a blue 7", from seven's, is drawn as a blue three: held to the chain, it kept "blue three"
            in 18% of its forget images right after its removal, 6% left out). What it buys depends on the
            hardening and the model: every removal of the digits chain hardened with the other digits' words in
            front and held kept related retention at 90.8% after 25 removals (87.0% not held) and the token search
            at 0%; the glyphs chain hardened with the other characters' words in front and held let the token
            search bring serif Q back in 32.5% of images after ten removals (7.5% not held). Off by default
            (docs/erasing.md#hardened-removals).
        earlier_derived (`float`): Hold an earlier hardened removal's derived embeddings
            (`probes["hardened_embeddings"]`, which a distilled removal hardened in `HardenConfig.rounds` keeps)
            to the chain, beside its forget prompts, with this share of their weight (`lambda_earlier`; with
            `repair_steps`, the repair holds them and this removal's own too): the points its hardening closed stay
            closed while later removals train. Needs `lambda_earlier`. Measured on the glyphs chain made on from a
            first removal hardened with three rounds of derived prefixes, share 1: the token search found serif Q
            in 5% of images after 10 removals on twenty seeds (7.5% not held) and *purple* stayed removed, but
            general retention fell to 92.3% (95.9% not held); share 0.25: 15% on ten seeds, *purple* back, 93.1%;
            share 1 with twice the replay's weight, the replay anchored to the untouched model or a repair twice as
            long: 91.8-92.8%. 0 (the default): off
            (docs/erasing.md#hardened-removals).
        siblings (`bool`): Protect the `preserve` prompts one word from a forget prompt, not in the concept's
            word ("a blue six, thin" while erasing "bold blue six"), once more as a group of their own;
            `metadata["sibling_prompts"]`. Measured on the digits chain of the continual benchmark: related
            retention 96-99% at steps 1-19 (91-100% without), but an earlier removal more than 10 points above
            chance from step 16 (19 without): off by default (docs/method.md#siblings).
        earlier_overlap (`float`): With `earlier_protection`, the share of that group's weight given out by how
            far this removal's change reaches each prompt (`edit_overlap`: the forget prompts' text-embedding
            moves, carried to the prompt's tokens by their similarity to the forget prompts' tokens) instead of
            evenly by removal, group and prompt: an earlier removal's "red bold V" weighs more when "bold A" is
            made, its "red roman Q" less. 0 (the default): evenly; 1: by overlap only.
        repair_steps (`int`): After training, train a second LoRA of the same rank on top of the chain with this
            removal, for this many steps, and fold it into the removal (its rank doubles): every prompt that a
            loaded removal or this one protected (`repair`, passed by `erase`) is pulled all the way back to the
            untouched model, and every removal's forget prompts are held to the chain `repair_push` past it. Each
            removal's own replay shares its capacity with its forget term, so the drift of the cells beside the
            removals adds up along a chain; the repair spends a LoRA on that drift alone. Measured on glyphs, 400
            steps on every removal from step 22: 30 steps at the bars instead of 22, at a sixth to a quarter more
            time per removal (docs/benchmarks/continual_analysis.md, session 41). Needs `lambda_earlier` (the
            hold). 0 (the default): off.
        repair_push (`float`): With `repair_steps`, how far past the chain the repair holds every removal's forget
            prompts (as `earlier_push`, for every removal: pulling the cells back to the untouched model otherwise
            lets whole styles and colours back). Measured from the chain as it is, the push compounds when every
            removal repairs: on the glyphs chain purple's prompts, pushed at each of 29 steps, ended drawn as a
            purple roman T from step 40 (session 42); `repair_anchor="own"` measures it from each removal's own
            chain instead.
        repair_anchor (`str`): With `repair_steps`, where the repair's hold of an earlier removal's forget prompts
            starts: `"chain"` (the default) the pipeline as loaded, so that each repair pushes `repair_push` past
            the last one's push; `"own"` the chain as it was right after that removal was made (as
            `earlier_anchor="own"` holds it), so that the target is its own edit `repair_push` past, the same at
            every later step: the push cannot compound. A prompt that names a later removal's concept stays with
            the chain as loaded; the new removal's prompts are its own edit already. Measured on the glyphs chain
            from step 26: general retention 97.9% at step 50 (72.9% from the chain) and purple removed throughout
            (docs/benchmarks/continual_analysis.md, session 43). Costs one more pass over the hold's trajectories.
    """

    rank: int = 4
    target_modules: tuple[str, ...] | None = None
    steps: int = 500
    batch_size: int = 8
    learning_rate: float = 1e-3
    lambda_replay: float = 10.0
    lambda_l2: float = 1e-4
    negative_guidance: float = 1.0
    max_timestep: int = 600
    latent_pool: int = 64
    replay_pool: int | None = None
    sampling_steps: int = 10
    gradient_accumulation_steps: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    anchor: Literal["chain", "base"] = "chain"
    lambda_earlier: float | None = None
    earlier_push: float = 0.0
    earlier_push_scope: Literal["all", "combinations"] = "all"
    base_share: float = 1.0
    min_reach: float | None = None
    max_steps: int | None = None
    earlier_protection: float = 0.0
    earlier_overlap: float = 0.0
    earlier_anchor: Literal["chain", "own"] = "chain"
    earlier_hardened: bool = False
    earlier_derived: float = 0.0
    siblings: bool = False
    repair_steps: int = 0
    repair_push: float = 0.1
    repair_anchor: Literal["chain", "own"] = "chain"

    def __post_init__(self):
        sizes = [self.rank, self.steps, self.batch_size, self.latent_pool]
        if min(sizes + ([] if self.replay_pool is None else [self.replay_pool])) < 1:
            raise InvalidArgumentError(
                "rank, steps, batch_size, latent_pool and replay_pool must be positive, got "
                f"{self.rank}, {self.steps}, {self.batch_size}, {self.latent_pool}, {self.replay_pool}."
            )
        if not 0 < self.max_timestep <= 1000 or self.sampling_steps < 2:
            raise InvalidArgumentError(
                f"max_timestep must be in (0, 1000] and sampling_steps >= 2, got {self.max_timestep} and "
                f"{self.sampling_steps}."
            )
        if self.negative_guidance < 0:
            raise InvalidArgumentError(
                f"negative_guidance must be >= 0 (0: map to the target only), got {self.negative_guidance}."
            )
        if self.earlier_push < 0 or (self.earlier_push and self.lambda_earlier is None):
            raise InvalidArgumentError(
                f"earlier_push must be >= 0 and needs lambda_earlier (the hold it moves), got {self.earlier_push} "
                f"with lambda_earlier={self.lambda_earlier}."
            )
        if self.earlier_push_scope not in ("all", "combinations"):
            raise InvalidArgumentError(
                f'earlier_push_scope must be "all" or "combinations", got {self.earlier_push_scope!r}.'
            )
        if not 0.0 <= self.base_share <= 1.0:
            raise InvalidArgumentError(f"base_share must be in [0, 1] (1: the untouched model), got {self.base_share}")
        if self.min_reach is not None and self.min_reach <= 0:
            raise InvalidArgumentError(f"min_reach must be positive (1: as far as the targets), got {self.min_reach}.")
        if self.max_steps is not None and (self.min_reach is None or self.max_steps < self.steps):
            raise InvalidArgumentError(
                f"max_steps caps the training min_reach extends: it needs min_reach and must be >= steps, got "
                f"max_steps={self.max_steps} with steps={self.steps} and min_reach={self.min_reach}."
            )
        if self.anchor not in ("chain", "base"):
            raise InvalidArgumentError(f"anchor must be 'chain' or 'base', got {self.anchor!r}.")
        own_unheld = self.earlier_anchor == "own" and self.lambda_earlier is None
        if self.earlier_anchor not in ("chain", "own") or own_unheld:
            raise InvalidArgumentError(
                f"earlier_anchor must be 'chain' or 'own', and 'own' needs lambda_earlier (the hold it teaches), got "
                f"{self.earlier_anchor!r} with lambda_earlier={self.lambda_earlier}."
            )
        if self.earlier_protection < 0:
            raise InvalidArgumentError(f"earlier_protection must be >= 0 (0: off), got {self.earlier_protection}.")
        if not 0.0 <= self.earlier_overlap <= 1.0 or (self.earlier_overlap and not self.earlier_protection):
            raise InvalidArgumentError(
                f"earlier_overlap must be in [0, 1] and needs earlier_protection (the group it shares out), got "
                f"{self.earlier_overlap} with earlier_protection={self.earlier_protection}."
            )
        if self.earlier_derived < 0 or (self.earlier_derived and self.lambda_earlier is None):
            raise InvalidArgumentError(
                f"earlier_derived must be >= 0 and needs lambda_earlier (the hold whose weight it shares), got "
                f"{self.earlier_derived} with lambda_earlier={self.lambda_earlier}."
            )
        if self.repair_steps < 0 or self.repair_push < 0 or (self.repair_steps and self.lambda_earlier is None):
            raise InvalidArgumentError(
                f"repair_steps and repair_push must be >= 0, and a repair needs lambda_earlier (the hold of the "
                f"removals' forget prompts), got repair_steps={self.repair_steps}, repair_push={self.repair_push} "
                f"with lambda_earlier={self.lambda_earlier}."
            )
        if self.repair_anchor not in ("chain", "own") or (self.repair_anchor == "own" and not self.repair_steps):
            raise InvalidArgumentError(
                f"repair_anchor must be 'chain' or 'own', and 'own' needs repair_steps (the repair it anchors), got "
                f"{self.repair_anchor!r} with repair_steps={self.repair_steps}."
            )
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)


@dataclass
class DistillResult:
    """What training produced: LoRA tensors in diffusers' format, losses and figures."""

    lora: dict[str, torch.Tensor]
    losses: list[float]
    figures: dict[str, float]
    derived: tuple[torch.Tensor, list[str]] | None = None  # with `harden.rounds`: the embeddings, their prompts


def distill(
    pipe: DiffusionPipeline,
    family: ModelFamily,
    bank: PromptBank,
    pairs: list[tuple[str, str]],
    protected: Sequence[Sequence[str]],
    config: DistillConfig,
    *,
    earlier: Sequence[Sequence[str]] = (),
    earlier_protected: Sequence[Sequence[Sequence[str]]] = (),
    untouched: Collection[str] = (),
    untouched_model: Callable[[], AbstractContextManager] | None = None,
    earlier_owner: Mapping[str, int] | None = None,
    earlier_combination: Sequence[bool] = (),
    chain_at: Callable[[int], AbstractContextManager] | None = None,
    harden: HardenConfig | None = None,
    effect: Callable[[], dict] | None = None,
    repair: Sequence[Sequence[str]] = (),
    plain_pairs: int | None = None,
    earlier_derived: tuple[torch.Tensor, Sequence[str]] | None = None,
    seed: int = 0,
) -> DistillResult:
    """Trains the removal's LoRA (with `config.repair_steps`, its repair folded in); the pipeline is left exactly
    as it was.

    Args:
        pipe (`DiffusionPipeline`): The teacher (its loaded removals stay active and frozen).
        family ([`ModelFamily`]): The pipeline's family.
        bank ([`PromptBank`]): Prompt embeddings.
        pairs (`list[tuple[str, str]]`): `(forget prompt, mapping target)` pairs.
        protected (`Sequence[Sequence[str]]`): Groups of prompts to replay (anchors, neighbours, preserved
            prompts); each group is drawn as often as the others.
        earlier (`Sequence[Sequence[str]]`): The earlier removals' forget prompts, one list per removal, replayed
            so that they stay removed: together one group, drawn as often as each protected group, shared evenly
            by the removals (a removal of a combination with 16 prompts is drawn as often as one of a whole colour
            with 120; shared by prompt, the combination got 2 of 64 trajectories and came back).
        earlier_protected (`Sequence[Sequence[Sequence[str]]]`): With `config.earlier_protection`, the prompts
            the earlier removals protected, by removal and by group, replayed as one group of that weight.
        config ([`DistillConfig`]): Hyper-parameters.
        untouched (`Collection[str]`): With `config.anchor == "base"`, the protected prompts whose teacher is the
            model without any removal (the others keep the pipeline as loaded).
        untouched_model (`Callable`, *optional*): Returns a context within which the pipeline computes as the model
            without any removal; required with `untouched`.
        earlier_owner (`Mapping[str, int]`, *optional*): With `config.earlier_anchor == "own"` or
            `config.repair_anchor == "own"`, per held prompt the index of the earlier removal whose chain teaches it
            (the prompts left out: the chain as loaded).
        earlier_combination (`Sequence[bool]`): With `config.earlier_push_scope == "combinations"`, per earlier
            removal whether it erased a combination (the push moves only those removals' prompts).
        chain_at (`Callable`, *optional*): Given `n`, returns a context within which the pipeline computes with its
            first `n` removals only; required with `earlier_owner`.
        harden ([`HardenConfig`], *optional*): Adversarial training: the embeddings that still bring the concept
            back are derived in `rounds` rounds and added to the forget set (see the module's docstring).
        effect (`Callable`, *optional*): The removal's figures as the denoiser computes now, the new adapter
            active (`targets.effect_meter`); its `"target_reach"` decides when to stop with `config.min_reach`.
        repair (`Sequence[Sequence[str]]`): With `config.repair_steps`, the groups of prompts the repair pulls back
            to the untouched model (every loaded removal's protected prompts and this one's, less what a removal
            erased), each drawn as often as the others; requires `untouched_model`.
        plain_pairs (`int`, *optional*): The first `plain_pairs` of `pairs` are the forget prompts, the others a
            hardening's phrasings and prefixed prompts (`HardenConfig.phrasings`, `prefixes`): the two are
            averaged apart in the forget term, so that the forget prompts keep half of it however many prompts
            the hardening adds (drawn in with the rest, a third with `prefixes=2`, a digits combination was still
            drawn in 81-94% of its images after 500 steps). Default: all of them are forget prompts.
        earlier_derived (`tuple[torch.Tensor, Sequence[str]]`, *optional*): With `config.earlier_derived`, the
            earlier removals' derived embeddings `(m, L, d)` and the forget prompt each was derived from (its
            pooled embedding, for families that have one), held to the chain.
        seed (`int`): Seed of the latent pool, of every batch and of the hardening's draws.
    """
    from accelerate import Accelerator

    denoiser = getattr(pipe, family.denoiser)
    accelerator = Accelerator(  # a pipeline on the CPU trains there, in several processes under a launcher
        cpu=denoiser.device.type == "cpu",
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    if not _same_device(accelerator.device, denoiser.device):
        raise ResolveError(f"Move the pipeline to {accelerator.device} (pipe.to(...)) before distilling.")
    if config.min_reach is not None and effect is None:
        raise InvalidArgumentError("`config.min_reach` needs `effect`, the measure of the removal's target reach.")
    if harden is not None and config.steps <= harden.rounds:
        raise InvalidArgumentError(
            f"Hardening in {harden.rounds} rounds needs more than {harden.rounds} training steps, got {config.steps}."
        )
    targets = config.target_modules or family.distill_targets
    layers = [
        name
        for name, module in denoiser.named_modules()
        if name.endswith(targets) and isinstance(getattr(module, "base_layer", module), torch.nn.Linear)
    ]  # a layer that already carries removals as adapters is a LoRA wrapper of the Linear: the new adapter joins it
    if not layers:
        raise InvalidArgumentError(
            f"No Linear layer of the denoiser ends with {targets}: pass `DistillConfig(target_modules=...)` naming "
            "the ends of its cross-attention key / value projections."
        )
    if earlier_derived is not None and not config.earlier_derived:
        raise InvalidArgumentError("`earlier_derived` needs `config.earlier_derived` (and `lambda_earlier`).")
    derived = _derived_inputs(bank, family, *earlier_derived) if earlier_derived is not None else None
    groups = [list(dict.fromkeys(group)) for group in protected if group]
    removals = [list(dict.fromkeys(prompts)) for prompts in earlier if prompts]
    own_term = config.lambda_earlier is not None  # the earlier removals: a term of their own, or a replay group
    held = list(dict.fromkeys(p for prompts in removals for p in prompts)) if own_term else []
    kept = [[list(dict.fromkeys(g)) for g in removal if g] for removal in earlier_protected]
    kept = [removal for removal in kept if removal] if config.earlier_protection else []
    replay_groups = [group for group in [*groups, *([] if own_term else [removals])] if group]
    every_group = [*groups, *([] if own_term else removals), *(group for removal in kept for group in removal)]
    replayed = list(dict.fromkeys(p for group in every_group for p in group))
    by_overlap = config.earlier_protection * config.earlier_overlap if kept else 0.0
    amounts = [1.0] * len(replay_groups) + ([config.earlier_protection - by_overlap] if kept else [])
    weights = _group_weights([*replay_groups, *([kept] if kept else [])], replayed, amounts)
    if by_overlap:  # that share of the earlier removals' group by how far this removal's change reaches each prompt
        prompts = list(dict.fromkeys(p for removal in kept for group in removal for p in group))
        overlap = edit_overlap(bank, pairs, prompts)
        overlap = overlap if overlap.sum() > 0 else torch.ones_like(overlap)  # no change at all: evenly
        index = {p: i for i, p in enumerate(replayed)}
        weights[[index[p] for p in prompts]] += by_overlap * overlap / overlap.sum()
    # the earlier removals' protection is one more group: the replay term grows by its weight, not shared out
    replay_scale = (
        (len(replay_groups) + config.earlier_protection) / len(replay_groups) if kept and replay_groups else 1.0
    )
    bank.add([p for pair in pairs for p in pair])  # replayed prompts are encoded as the pool draws them
    count = _pool_size(config, "replay")  # the hold is a replay pool of its own
    rows = {"forget": _pool_size(config, "forget"), "replay": count * bool(replayed), "hold": count * bool(held)}
    drawn = _drawn(rows, _kept_steps(pipe, family, config), config, seed, accelerator.num_processes)
    pool = _latent_pool(pipe, family, bank, pairs, replayed, weights, config, seed, needed=drawn)
    if held:
        pool["hold"] = _latent_pool(pipe, family, bank, [], held, _group_weights([removals], held), config, seed + 2,
                                    needed={"replay": drawn["hold"]})["replay"]  # fmt: skip
    small = replace(config, latent_pool=8, replay_pool=None)
    held_out = _latent_pool(pipe, family, bank, pairs, replayed, weights, small, seed + 1)
    if config.anchor == "base" and untouched and "replay" in pool:
        if untouched_model is None:
            raise InvalidArgumentError(
                "`untouched` prompts need `untouched_model`, the context of the untouched model."
            )
        with untouched_model():
            _anchor_to_base(pipe, family, bank, pool, replayed, set(untouched), drawn["replay"])
    if held and config.earlier_anchor == "own" and earlier_owner:
        if chain_at is None:
            raise InvalidArgumentError("`earlier_owner` needs `chain_at`, the context of the chain's first removals.")
        pool["hold_own"], pool["hold_on_own"] = _own_chain(pipe, family, bank, pool["hold"], held, earlier_owner,
                                                           chain_at, drawn["hold"])  # fmt: skip
    push = torch.full((len(held),), config.earlier_push)  # per held prompt: how far past the chain it is held
    if held and config.earlier_push:
        if untouched_model is None:
            raise InvalidArgumentError("`earlier_push` needs `untouched_model`, the context of the untouched model.")
        if config.earlier_push_scope == "combinations":  # a prompt of a combination and of a style: pushed
            if len(earlier_combination) != len(earlier):
                raise InvalidArgumentError(
                    f'earlier_push_scope="combinations" needs `earlier_combination`, one flag per earlier removal: '
                    f"got {len(earlier_combination)} for {len(earlier)}."
                )
            pushed = {p for prompts, flag in zip(earlier, earlier_combination, strict=True) if flag for p in prompts}
            push *= torch.tensor([p in pushed for p in held], dtype=push.dtype)
        with untouched_model():
            pool["hold_untouched"] = _predictions(pipe, family, bank, pool["hold"], held, drawn["hold"])
    probe = None  # last: its prompts join the bank after the training pool's, which stays as it was without it
    if any(earlier) and untouched_model is not None:  # how far training undoes each earlier removal
        probe = _undo_probe(pipe, family, bank, earlier, config, seed + 3, untouched_model)
    mended = None
    if config.repair_steps:
        if untouched_model is None or not any(repair):
            raise InvalidArgumentError(
                "`config.repair_steps` needs `repair`, the prompts to pull back, and `untouched_model`, the context "
                "of the untouched model."
            )
        if config.repair_anchor == "own" and removals and (earlier_owner is None or chain_at is None):
            raise InvalidArgumentError(
                '`config.repair_anchor="own"` needs `earlier_owner` and `chain_at`: the chain of each removal.'
            )
        every_forget = [*removals, list(dict.fromkeys(f for f, _ in pairs))]
        owner = earlier_owner if config.repair_anchor == "own" else None
        mended = _repair_pool(pipe, family, bank, every_forget, repair, config, seed + 5, untouched_model, owner,
                              chain_at, accelerator.num_processes)  # fmt: skip

    active_before = active_adapters(denoiser)  # the removals (and a user's LoRAs) loaded as adapters
    _add_adapter(denoiser, _ADAPTER, layers, config.rank, seed)
    added = [_ADAPTER]
    try:
        _activate(denoiser, [*active_before, _ADAPTER])  # the teacher is the pipeline as loaded
        result = _train(accelerator, pipe, family, denoiser, bank, pairs, replayed, held, pool, held_out, layers,
                        config, harden, seed, probe, effect, replay_scale, push, plain_pairs,
                        derived=derived)  # fmt: skip
        if mended is not None:  # the repair: a second LoRA on top of the chain with this removal, folded into it
            started = time.perf_counter()
            added.append(_REPAIR)
            if config.earlier_derived and result.derived is not None:  # the repair holds this removal's too
                own = _derived_inputs(bank, family, *result.derived)
                derived = own if derived is None else _joined(derived, own)
            fixed = _repair(accelerator, pipe, family, denoiser, bank, layers, active_before, mended, config, seed + 5,
                            derived)  # fmt: skip
            result.lora = {  # rank 2r: the removal's rows, then the repair's (lora_alpha == rank keeps B @ A exact)
                key: torch.cat([value, fixed.lora[key]], dim=0 if key.endswith("lora_A.weight") else 1)
                for key, value in result.lora.items()
            }
            result.figures |= {
                "repair_steps": config.repair_steps,
                "repair_loss_first": fixed.losses[0],
                "repair_loss_last": fixed.losses[-1],
                "repair_seconds": round(time.perf_counter() - started, 3),
            }
        return result
    finally:
        _remove_adapter(denoiser, active_before, added)


def _repair_settings(config: DistillConfig) -> DistillConfig:
    """The repair's training settings: `repair_steps` steps, every pulled prompt to the untouched model."""
    return replace(
        config, steps=config.repair_steps, min_reach=None, max_steps=None, negative_guidance=0.0, anchor="base",
        base_share=1.0, earlier_anchor="chain", checkpoint_dir=None,
    )  # fmt: skip


def _repair(
    accelerator, pipe, family, denoiser, bank, layers, active_before, mended, config, seed, derived=None
) -> DistillResult:
    """Trains the repair (`DistillConfig.repair_steps`) as a second adapter on top of the chain and the new removal
    (active and frozen: the teacher), on `_repair_pool`'s pool: the pulled prompts to the untouched model, every
    removal's forget prompts held `repair_push` past the chain (with `repair_anchor="own"`, past each one's own
    chain) in the hold, and to the chain as their own forget goal (weight 1 beside the hold's `lambda_earlier`);
    `derived` (`_derived_inputs`), held to the chain beside them."""
    _add_adapter(denoiser, _REPAIR, layers, config.rank, seed)
    _activate(denoiser, [*active_before, _ADAPTER, _REPAIR])
    pool, pulled, held = mended
    settings = _repair_settings(config)
    push = torch.full((len(held),), config.repair_push)  # every removal's, whole styles and colours too
    return _train(accelerator, pipe, family, denoiser, bank, [(p, p) for p in held], pulled, held, pool, None, layers,
                  settings, None, seed, None, None, 1.0, push, name=_REPAIR, derived=derived)  # fmt: skip


def _train(
    accelerator, pipe, family, denoiser, bank, pairs, protected, held, pool, held_out, layers, config, harden, seed,
    probe, effect, replay_scale, push, plain_pairs: int | None = None, name: str = _ADAPTER, derived=None,
) -> DistillResult:  # fmt: skip
    """Trains adapter `name` (the others active stay frozen: the teacher); without `held_out`, no figures;
    `derived` (`_derived_inputs`): embeddings held to the teacher (`earlier_derived`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = {layer: denoiser.get_submodule(layer) for layer in layers}
    params = []
    for module in denoiser.modules():  # exactly the new adapter's weights train
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
    for module in wrapped.values():
        assert isinstance(module, BaseTunerLayer)
        for parameter in (module.lora_A[name].weight, module.lora_B[name].weight):
            parameter.requires_grad_(True)
            params.append(parameter)
    raw_optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    adversarial = _Adversarial()
    hold_factor = torch.ones(len(held))  # per held prompt: raised where a measure finds its removal coming back
    start, losses = _resume(config, params, raw_optimizer, harden, adversarial, hold_factor)
    model, optimizer = accelerator.prepare(denoiser, raw_optimizer)
    size = _sample_size(denoiser)
    device = accelerator.device
    rounds = {k * config.steps // (harden.rounds + 1): k - 1 for k in range(1, harden.rounds + 1)} if harden else {}
    measures = {config.steps * k // 4 for k in (1, 2, 3)} if held and probe is not None else set()

    def save(done: int) -> None:
        if accelerator.is_main_process:
            _save_checkpoint(Path(config.checkpoint_dir), done, losses, params, raw_optimizer, config, harden,
                             adversarial, hold_factor)  # fmt: skip
        accelerator.wait_for_everyone()

    def derive(index: int) -> float:  # one round of the hardening (index == harden.rounds: measured only)
        with accelerator.autocast():
            return _derive_round(denoiser, wrapped, pipe, family, bank, pairs, pool, harden, adversarial, index,
                                 seed, device, store=index < harden.rounds)  # fmt: skip

    progress = tqdm(desc="distill", initial=start, total=config.steps, disable=not accelerator.is_local_main_process)
    reaches: list[tuple[int, float]] = []
    for step in _schedule(config, start, effect, progress, reaches):
        if step in rounds and len(adversarial.leaks) == rounds[step]:  # a resumed run has its earlier rounds
            derive(rounds[step])
        if step in measures:
            undone = _undone(denoiser, wrapped, pipe, family, bank, probe, size, device)
            for i, prompt in enumerate(held):
                owners = [j for j, prompts in enumerate(probe["earlier"]) if prompt in prompts]
                worst = max((undone[j] for j in owners if undone[j] is not None), default=0.0)
                hold_factor[i] = max(float(hold_factor[i]), min(20.0, worst / 0.02))
        for micro in range(config.gradient_accumulation_steps):
            generator = _batch_generator(seed, step, micro)
            batch = _batch(pool, config.batch_size, generator, accelerator)
            with accelerator.accumulate(model), accelerator.autocast():
                forget_latents, forget_t, forget_ids = batch["forget"]
                forget = ([pairs[i][0] for i in forget_ids], forget_latents, forget_t)
                replayed = _call(protected, *batch["replay"])
                holds = [_call(held, *batch["hold"])] if held else []  # none, or one call
                eta = config.negative_guidance
                # the teacher's predictions in one call, the student's in another (a few large batches cost
                # less than many small ones): the target (and the concept, for eta), the protected prompts, the
                # earlier removals' forget prompts; the last two only on the rows whose teacher is read (not those
                # held all the way to the untouched model, nor those to their own chain)
                anchored = batch.get("replay_on_base") if config.base_share == 1.0 else None
                calls = {
                    "target": ([pairs[i][1] for i in forget_ids], forget_latents, forget_t),
                    **({"concept": forget} if eta else {}),
                    "replay": _rows(replayed, anchored),
                    **({"hold": _rows(holds[0], batch.get("hold_on_own"))} if held else {}),
                }
                calls = {key: call for key, call in calls.items() if call[0]}
                with torch.no_grad(), _student_off(wrapped, name):
                    predicted = _predict_many(denoiser, pipe, family, bank, list(calls.values()), size, device)
                taught = dict(zip(calls, predicted, strict=True))
                goal = _past_target(taught["target"], taught.get("concept"), eta)
                student, replay, *hold = _predict_many(model, pipe, family, bank, [forget, replayed, *holds], size,
                                                       device)  # fmt: skip
                keep = _fill(taught.get("replay"), anchored, replay)
                if "replay_base" in batch:  # anchor="base": the untouched model's predictions, from the pool; the
                    # teacher of those prompts, `base_share` of the way from the chain to them
                    base_keep, on_base = batch["replay_base"].to(replay), _rowwise(batch["replay_on_base"], replay)
                    toward = base_keep if anchored is not None else keep + config.base_share * (base_keep - keep)
                    keep = torch.where(on_base, toward, keep)
                unlearn_loss = _forget_loss(student, goal, forget_ids, plain_pairs)
                if adversarial.sources:  # hardening: the derived embeddings, held to their forget prompts' goals
                    unlearn_loss = unlearn_loss + harden.weight * _adversarial_loss(
                        model, denoiser, wrapped, pipe, family, bank, pairs, adversarial, forget_latents, forget_t,
                        generator, config, accelerator, size, device,
                    )  # fmt: skip
                replay_loss = (replay.float() - keep.float()).square().mean()
                l2 = sum(p.float().square().sum() for p in params)
                loss = unlearn_loss + config.lambda_replay * replay_scale * replay_loss + config.lambda_l2 * l2
                if held:  # the earlier removals' forget prompts, held to the chain
                    hold_ids = batch["hold"][2]
                    chain = _fill(taught.get("hold"), batch.get("hold_on_own"), hold[0])
                    if "hold_own" in batch:  # earlier_anchor="own": those of a removal to its own chain
                        own, on_own = batch["hold_own"].to(chain), _rowwise(batch["hold_on_own"], chain)
                        chain = torch.where(on_own, own, chain)
                    if "hold_untouched" in batch:  # a push: past the chain, away from the untouched model
                        share = _rowwise(push[hold_ids].to(chain), chain)
                        chain = chain + share * (chain - batch["hold_untouched"].to(chain))
                    error = (hold[0].float() - chain.float()).square().flatten(1).mean(1)
                    factor = hold_factor[hold_ids].to(error)
                    loss = loss + config.lambda_earlier * (error * factor).mean()
                if derived is not None:  # derived embeddings of the hardenings, on the hold's latents
                    latents, timesteps = batch["hold"][:2] if held else (forget_latents, forget_t)
                    loss = loss + config.lambda_earlier * config.earlier_derived * _derived_hold_loss(
                        model, denoiser, wrapped, pipe, family, derived, latents, timesteps, generator, accelerator,
                        name,
                    )  # fmt: skip
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
        losses.append(float(accelerator.reduce(loss.detach(), reduction="mean")))
        progress.update()
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
        if config.checkpoint_dir and (step + 1) % config.checkpoint_every == 0:
            save(step + 1)
    progress.close()
    if config.checkpoint_dir and len(losses) % config.checkpoint_every:
        save(len(losses))  # where training stopped

    figures = {}
    if held_out is not None:
        figures = _figures(
            denoiser, wrapped, pipe, family, bank, pairs, protected, held_out, size, device, config.negative_guidance
        )
    figures["loss_first"], figures["loss_last"] = losses[0], losses[-1]
    figures["steps_trained"] = len(losses)
    if reaches:
        figures["reach_trace"] = [[done, round(value, 3)] for done, value in reaches]
    if probe is not None:
        figures["earlier_undone"] = [
            None if v is None else round(v, 4)
            for v in _undone(denoiser, wrapped, pipe, family, bank, probe, size, device)
        ]
    if derived is not None:
        figures["derived_held"] = derived[0].shape[0]
    if harden is not None:
        final = derive(harden.rounds)  # what the embedding derivation still finds after training
        figures |= {
            "harden_rounds": harden.rounds,
            "harden_embeddings": len(adversarial.sources),
            "harden_leak": [round(v, 4) for v in [*adversarial.leaks, final]],
            "harden_seconds": round(adversarial.seconds, 3),
        }
    lora = {}
    for layer, module in wrapped.items():
        for part in ("lora_A", "lora_B"):
            weight = getattr(module, part)[name].weight
            lora[f"{family.denoiser}.{layer}.{part}.weight"] = weight.detach().float().cpu().clone()
    accelerator.free_memory()
    kept = None
    if adversarial.sources:  # what the hardening derived, for later removals to hold (`earlier_derived`)
        kept = torch.stack(adversarial.embeds), [pairs[i][0] for i in adversarial.sources]
    return DistillResult(lora=lora, losses=losses, figures=figures, derived=kept)


# ------------------------------------------------------------------------------------------------ helpers
def _schedule(
    config: DistillConfig, start: int, effect: Callable[[], dict] | None, progress, reaches: list
) -> Iterator[int]:
    """The training steps from `start`: `config.steps`; then, with `config.min_reach`, rounds of a quarter of them
    until the reach `effect` measures passes it or `max_steps` are done, each measure appended to `reaches` as
    `(steps done, reach)`. A run resumed past `config.steps` resumes in the round its checkpoint lies in: the
    measures before it had failed, or training would not have gone on."""
    total, increment = config.steps, max(1, config.steps // 4)
    measured = config.min_reach is not None  # `distill` checked that `effect` is given then
    cap = _step_cap(config)
    while total < min(start, cap):
        total = min(total + increment, cap)
    step = start
    while True:
        while step < total:
            yield step
            step += 1
        if not measured:
            return
        reaches.append((total, float(effect()["target_reach"])))
        if reaches[-1][1] >= config.min_reach or total >= cap:
            return
        total = min(total + increment, cap)
        progress.total = total
        progress.refresh()


def _step_cap(config: DistillConfig) -> int:
    """The most steps `_schedule` runs: `config.steps`, or with `config.min_reach` up to `max_steps`."""
    return (config.max_steps or 3 * config.steps) if config.min_reach is not None else config.steps


def _add_adapter(denoiser, name: str, layers: list[str], rank: int, seed: int) -> None:
    """Adds a LoRA adapter of `rank` on `layers`; the same seed gives the same initial adapter, hence the same run."""
    from peft import LoraConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=layers, init_lora_weights=True)
        denoiser.add_adapter(config, adapter_name=name)


@contextmanager
def _student_off(wrapped: dict, name: str = _ADAPTER) -> Iterator[None]:
    """The teacher: the same forward pass with the adapter in training contributing nothing."""
    for module in wrapped.values():
        module.scaling[name] = 0.0
    try:
        yield
    finally:
        for module in wrapped.values():
            module.scaling[name] = 1.0


def _activate(denoiser, names: list[str]) -> None:
    """Makes exactly `names` active on every PEFT layer (diffusers leaves only the last added adapter active)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            module.set_adapter(names, inference_mode=True)


def _remove_adapter(denoiser, active_before: list[str], added: list[str]) -> None:
    """Deletes the students; the adapters active before they were added are active again, exactly those."""
    denoiser.delete_adapters(added)  # never merged: diffusers' own deletion is all it needs
    if not getattr(denoiser, "peft_config", None):
        denoiser.unload_lora()  # the PEFT wrappers go too once no adapter is left
    if active_before:
        _activate(denoiser, active_before)
    denoiser.requires_grad_(False)


def _sample_size(denoiser) -> int | None:
    size = getattr(denoiser.config, "sample_size", None)  # FLUX has none: its latents are sized by the family
    return size if size is None or isinstance(size, int) else size[0]


def _same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one: `cuda` (no index) is the current CUDA device, as torch places tensors there."""
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True
    module = getattr(torch, a.type)
    return (a.index if a.index is not None else module.current_device()) == (
        b.index if b.index is not None else module.current_device()
    )


def _predict(model, pipe, family, bank, prompts, latents, timesteps, size, device) -> torch.Tensor:
    embeds = torch.stack([bank.embeds(p) for p in prompts]).to(device)
    pooled = None
    if family.pooled_layer is not None:
        pooled = torch.stack([bank.pooled(p) for p in prompts]).to(device)
    return family.denoise(pipe, model, latents, timesteps, embeds, pooled)


def _predict_many(model, pipe, family, bank, calls, size, device) -> list[torch.Tensor]:
    """`_predict` for several `(prompts, latents, timesteps)` at once: one denoiser call, split back per call."""
    prompts = [p for call in calls for p in call[0]]
    latents = torch.cat([call[1] for call in calls])
    timesteps = torch.cat([call[2] for call in calls])
    predicted = _predict(model, pipe, family, bank, prompts, latents, timesteps, size, device)
    return list(predicted.split([len(call[0]) for call in calls]))


def _goal(denoiser, pipe, family, bank, pairs, ids, latents, timesteps, size, device, eta: float) -> torch.Tensor:
    """The forget term's goal for `pairs[ids]` (call within the teacher, `_student_off`): the target's prediction,
    pushed `eta` past it, away from the forget prompt's."""
    target = _predict(denoiser, pipe, family, bank, [pairs[i][1] for i in ids], latents, timesteps, size, device)
    concept = None
    if eta:
        concept = _predict(denoiser, pipe, family, bank, [pairs[i][0] for i in ids], latents, timesteps, size, device)
    return _past_target(target, concept, eta)


def _past_target(target: torch.Tensor, concept: torch.Tensor | None, eta: float) -> torch.Tensor:
    """The target's prediction pushed `eta` past it, away from the forget prompt's (`concept`; unused at 0)."""
    return target - eta * (concept - target) if eta else target


# ------------------------------------------------------------------------------------------------ hardening
@dataclass
class _Adversarial:
    """The hardening's state: derived embeddings, the pair each started from, each round's leak, time spent."""

    embeds: list[torch.Tensor] = field(default_factory=list)  # (L, d) float32 each
    sources: list[int] = field(default_factory=list)  # index into `pairs`
    leaks: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _derive_round(
    denoiser, wrapped, pipe, family, bank, pairs, pool, harden: HardenConfig, adversarial: _Adversarial, index: int,
    seed: int, device, store: bool,
) -> float:  # fmt: skip
    """Round `index`: derives one embedding per drawn forget prompt (`_derive_by_gradient`) on `harden.samples`
    latents of the forget pool; adds them to `adversarial` if `store`. Returns the round's leak."""
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + 77_777 + index)
    sources = torch.randperm(len(pairs), generator=generator)[: harden.prompts].tolist()
    latents, timesteps, _ = pool["forget"]
    rows = torch.randint(0, latents.shape[0], (harden.samples,), generator=generator)
    cols = torch.randint(0, latents.shape[1], (harden.samples,), generator=generator)
    x, t = latents[rows, cols].to(device, denoiser.dtype), timesteps[rows, cols].to(device)
    prompts = [pairs[i][0] for i in sources]
    start = torch.stack([bank.embeds(p) for p in prompts])
    pooled = torch.stack([bank.pooled(p) for p in prompts]).to(device) if family.pooled_layer is not None else None
    n, k = len(sources), harden.samples

    def predict(embeds: torch.Tensor) -> torch.Tensor:  # (n, L, d) -> (n, k, ...): every prompt on every latent
        xs = x.repeat(n, *[1] * (x.dim() - 1))
        extra = None if pooled is None else pooled.repeat_interleave(k, 0)
        out = family.denoise(pipe, denoiser, xs, t.repeat(n), embeds.to(device).repeat_interleave(k, 0), extra)
        return out.float().view(n, k, *out.shape[1:])

    with torch.no_grad(), _student_off(wrapped):
        goal = predict(start)
    encode: Callable[[torch.Tensor], torch.Tensor] = torch.nn.Identity()  # "embedding": every token vector free
    if harden.derive == "prefix":  # only a prefix's input vectors are free: the token search's space
        start, encode = _prefix_inputs(pipe, prompts, harden.prefix_tokens, generator, device)
    derived, leak = _derive_by_gradient(lambda variable: predict(encode(variable)), start, goal, harden)
    with torch.no_grad():
        derived = encode(derived.to(device)).float()
    if store:
        adversarial.embeds += list(derived.cpu())
        adversarial.sources += sources
        adversarial.leaks.append(leak)
    adversarial.seconds += time.perf_counter() - started
    return leak


def _prefix_inputs(
    pipe, prompts: Sequence[str], tokens: int, generator: torch.Generator, device
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The token search's space made continuous (`HardenConfig(derive="prefix")`): each prompt with `tokens`
    random vocabulary tokens in front (as many as its tokenizer has room for), as the text encoder's input vectors.

    Returns:
        `(start, encode)`: the input vectors `(n, L, d_in)` float32, and the text encoder's output `(n, L, d)` for
        input vectors, of which only the prefix's are read (the prompt's own tokens stay as they are).
    """
    tokenizer = pipe.tokenizer
    layer = pipe.text_encoder.get_input_embeddings()
    limit = tokenizer.model_max_length
    special = set(tokenizer.all_special_ids)
    vocabulary = torch.tensor([i for i in range(layer.num_embeddings) if i not in special])
    rows, free = [], []
    for prompt in prompts:
        ids = token_ids(pipe, prompt)
        room = max(0, min(tokens, limit - 2 - len(word_ids(pipe, prompt))))
        prefix = vocabulary[torch.randint(len(vocabulary), (tokens,), generator=generator)][:room]
        rows.append(torch.cat([ids[:1], prefix, ids[1 : limit - room]]))  # the padding makes room for it
        free.append((torch.arange(limit) >= 1) & (torch.arange(limit) <= room))
    ids, free = torch.stack(rows).to(device), torch.stack(free)[..., None].to(device)
    with torch.no_grad():
        start = layer(ids).float()

    def encode(inputs: torch.Tensor) -> torch.Tensor:
        with input_embeddings(pipe, lambda output: torch.where(free, inputs.to(output.dtype), output)):
            return encode_ids(pipe, ids).float()

    return start, encode


def _derive_by_gradient(
    predict: Callable[[torch.Tensor], torch.Tensor],
    start: torch.Tensor,
    goal: torch.Tensor,
    harden: HardenConfig,
) -> tuple[torch.Tensor, float]:
    """Text embeddings that still bring the concept back under a trained edit, by gradient descent (distill's
    hardening; the embedding attack's objective with the teacher as the guide).

    Starting from the forget prompts' embeddings (or, with `derive="prefix"`, from their input vectors behind a
    random prefix), `harden.iterations` Adam steps move every free vector so that the edited model's noise
    predictions come close to `goal`, the unedited model's predictions for the forget prompts on the same noisy
    latents.

    Args:
        predict (`Callable`): `(n, L, d)` variable -> `(n, k, ...)` the edited model's predictions on `k` noisy
            latents, differentiable with respect to the variable.
        start (`torch.Tensor`): `(n, L, d)` where the variable starts.
        goal (`torch.Tensor`): `(n, k, ...)` the unedited model's predictions for the forget prompts.
        harden ([`HardenConfig`]): `iterations` and `learning_rate` (relative to the RMS of `start`).

    Returns:
        `(variable, leak)`: the derived `(n, L, d)` float32 variable, and `sqrt(loss after / loss at start)`:
        how far from the concept's predictions the derived embeddings still are, relative to how far the edit moved
        the forget prompts (1: no embedding near them does better than the prompts themselves; 0: the concept is
        fully recovered).
    """
    goal = goal.detach().float()
    with torch.no_grad():
        before = float((predict(start.float()) - goal).square().mean())
    derived = descend(start, lambda v: (predict(v) - goal).square().mean(), harden.iterations, harden.learning_rate,
                      desc="harden")  # fmt: skip
    with torch.no_grad():
        after = float((predict(derived) - goal).square().mean())
    return derived, (after / before) ** 0.5 if before > 0 else 0.0


def _adversarial_loss(
    model, denoiser, wrapped, pipe, family, bank, pairs, adversarial: _Adversarial, latents, timesteps, generator,
    config: DistillConfig, accelerator, size, device,
) -> torch.Tensor:  # fmt: skip
    """The hardening's forget term on one batch: derived embeddings drawn at random, on the batch's forget latents,
    each held to the goal of the forget prompt it started from."""
    picks = _picks(len(adversarial.sources), config.batch_size, generator, accelerator).tolist()
    sources = [adversarial.sources[i] for i in picks]
    with torch.no_grad(), _student_off(wrapped):
        goal = _goal(denoiser, pipe, family, bank, pairs, sources, latents, timesteps, size, device,
                     config.negative_guidance)  # fmt: skip
    embeds = torch.stack([adversarial.embeds[i] for i in picks]).to(device)
    pooled = None
    if family.pooled_layer is not None:
        pooled = torch.stack([bank.pooled(pairs[i][0]) for i in sources]).to(device)
    student = family.denoise(pipe, model, latents, timesteps, embeds, pooled)
    return (student.float() - goal.float()).square().mean()


def _picks(total: int, batch_size: int, generator: torch.Generator, accelerator) -> torch.Tensor:
    """`batch_size` indices in `range(total)` drawn at random for this process: one draw for every process from the
    shared generator, this process's slice of it."""
    draws = torch.randint(0, total, (batch_size * accelerator.num_processes,), generator=generator)
    return draws[batch_size * accelerator.process_index : batch_size * (accelerator.process_index + 1)]


def _derived_inputs(
    bank: PromptBank, family: ModelFamily, embeds: torch.Tensor, prompts: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Derived embeddings as the denoiser reads them: `(m, L, d)` float32, and the pooled embedding of the prompt
    each was derived from (families that have one), else `None`."""
    if embeds.shape[0] != len(prompts):
        raise InvalidArgumentError(f"{embeds.shape[0]} derived embeddings for {len(prompts)} prompts.")
    pooled = torch.stack([bank.pooled(p) for p in prompts]) if family.pooled_layer is not None else None
    return embeds.float(), pooled


def _joined(a: tuple, b: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Two `_derived_inputs` as one."""
    return torch.cat([a[0], b[0]]), None if a[1] is None else torch.cat([a[1], b[1]])


def _derived_hold_loss(
    model, denoiser, wrapped, pipe, family, derived: tuple, latents, timesteps, generator, accelerator, name: str
) -> torch.Tensor:  # fmt: skip
    """`DistillConfig.earlier_derived` on one batch: derived embeddings drawn at random, one per sample, the
    student's predictions held to the teacher's (the pipeline as loaded) on the same noisy latents."""
    picks = _picks(derived[0].shape[0], latents.shape[0], generator, accelerator)
    embeds = derived[0][picks].to(latents.device)
    pooled = None if derived[1] is None else derived[1][picks].to(latents.device)
    with torch.no_grad(), _student_off(wrapped, name):
        chain = family.denoise(pipe, denoiser, latents, timesteps, embeds, pooled)
    student = family.denoise(pipe, model, latents, timesteps, embeds, pooled)
    return (student.float() - chain.float()).square().mean()


def edit_overlap(bank: PromptBank, pairs: Sequence[tuple[str, str]], prompts: Sequence[str]) -> torch.Tensor:
    """How far a removal's change reaches each prompt, to first order in the text embeddings.

    Each forget prompt's tokens move toward its target's (`c_target - c_forget` at the aligned positions); a token
    `c` of another prompt moves by `sum_i (c . c_i) m_i` over those tokens `c_i` and moves `m_i` (the
    cross-covariance map), and a prompt by the mean squared norm of its tokens' moves. Prompts that share the
    forget prompts' changing words score high ("red bold V" when "bold A" is removed), others near a common floor.
    """
    moved = [bank.aligned(forget, target) for forget, target in pairs]
    sources = torch.cat([a for a, _ in moved]).double()
    cross = sources.T @ torch.cat([b - a for a, b in moved]).double() / len(sources)
    scores = {}
    for chunk in bank.chunks(list(dict.fromkeys(prompts))):  # one text-encoder call per batch, not per prompt
        scores |= {p: (embeds.double() @ cross).square().sum(-1).mean() for p, (embeds, _) in chunk.items()}
    return torch.stack([scores[p] for p in prompts])


def _group_weights(groups: list, prompts: list[str], amounts: Sequence[float] | None = None) -> torch.Tensor:
    """Drawing weight of each prompt: every group weighs the same (or its `amounts` entry), shared evenly by its
    members; a group of sub-groups (the earlier removals) shares its weight evenly by sub-group, then by prompt."""
    weight = dict.fromkeys(prompts, 0.0)

    def share(members: list, amount: float) -> None:
        for member in members:
            if isinstance(member, str):
                weight[member] += amount / len(members)
            else:
                share(member, amount / len(members))

    for group, amount in zip(groups, amounts or [1.0] * len(groups), strict=True):
        if group:
            share(group, amount)
    return torch.tensor([weight[p] for p in prompts], dtype=torch.float64)


@torch.no_grad()
def _latent_pool(
    pipe, family, bank, pairs, protected, weights, config: DistillConfig, seed: int,
    replay_ids: torch.Tensor | None = None, needed: Mapping[str, torch.Tensor] | None = None,
) -> dict:  # fmt: skip
    """Teacher trajectories from the forget and protected prompts: latents `x_t` with `t < max_timestep`.
    `needed`: per kind, the entries training draws (`_drawn`); a trajectory is followed only as far as its last
    such entry, the rest of the pool left zeros (never read). The random draws are the same either way."""
    denoiser = getattr(pipe, family.denoiser)
    size, device = _sample_size(denoiser), denoiser.device
    generator = torch.Generator().manual_seed(seed)
    pool = {}
    for kind, prompts in (("forget", [f for f, _ in pairs]), ("replay", protected)):
        if not prompts:
            continue
        count = _pool_size(config, kind)
        if kind == "replay":
            ids = replay_ids
            if ids is None:
                ids = torch.multinomial(weights, count, replacement=True, generator=generator)
        else:
            ids = torch.randint(0, len(prompts), (count,), generator=generator)
        bank.add([prompts[i] for i in ids])  # one batch
        # DDIM; flow matching for SD3 / FLUX, whose scheduler counts its steps: a fresh one per trajectory batch
        scheduler = family.sampling_scheduler(pipe, config.sampling_steps)
        latents = family.random_latents(pipe, count, generator)
        latents = (latents * getattr(scheduler, "init_noise_sigma", 1.0)).to(device, denoiser.dtype)  # flow: 1
        steps_kept = _kept_steps(pipe, family, config)
        mask = needed.get(kind) if needed else None
        # per trajectory, the last kept step drawn (-1: none); the trajectories still followed
        last = torch.full((count,), steps_kept - 1) if mask is None else _last_drawn(mask)
        rows = (last >= 0).nonzero().flatten()
        shape, latents, kept = (count, *latents.shape[1:]), latents[rows], 0
        kept_latents, kept_t = [], []
        for t in scheduler.timesteps:
            if int(t) < config.max_timestep:
                slab = torch.zeros(shape)
                slab[rows] = latents.float().cpu()
                kept_latents.append(slab)
                kept_t.append(t.expand(count).cpu())
                going = last[rows] > kept  # past their last drawn step, trajectories stop
                rows, latents, kept = rows[going], latents[going], kept + 1
            if len(rows):
                timestep = t.to(device).expand(len(rows))
                prompted = [prompts[i] for i in ids[rows].tolist()]
                prediction = _predict(denoiser, pipe, family, bank, prompted, latents, timestep, size, device)
                latents = scheduler.step(prediction, t, latents).prev_sample
        pool[kind] = (torch.stack(kept_latents, 1), torch.stack(kept_t, 1), ids)  # (n, steps kept, ...)
    return pool


def _pool_size(config: DistillConfig, kind: str) -> int:
    """Trajectories in a pool of `kind`: `latent_pool` for the forget prompts, `replay_pool` (if set) otherwise."""
    return config.latent_pool if kind == "forget" else config.replay_pool or config.latent_pool


def _last_drawn(mask: torch.Tensor) -> torch.Tensor:
    """Per row of a `(rows, steps)` mask, the last step set, -1 where none is."""
    steps = torch.arange(mask.shape[1]).expand_as(mask)
    return torch.where(mask, steps, -1).max(dim=1).values


def _repair_pool(
    pipe, family, bank, every_forget: list[list[str]], groups: Sequence[Sequence[str]], config: DistillConfig,
    seed: int, untouched_model, owner: Mapping[str, int] | None = None, chain_at=None, processes: int = 1,
) -> tuple[dict, list[str], list[str]]:  # fmt: skip
    """The repair's pool, drawn before the removal trains: the prompts to pull back (4 x the replay trajectories,
    shared evenly by group) with the untouched model's predictions, every removal's forget prompts (their own
    trajectories, and a hold as large, shared evenly by removal, with the untouched predictions its push moves
    away from; with `owner`, each earlier removal's rows also with the predictions of its own chain); those
    predictions on the entries the repair's training (`seed`, on `processes` processes) draws only.
    Returns the pool, the pulled prompts and the held ones (which are also its forget prompts, held there too)."""
    groups = [list(dict.fromkeys(group)) for group in groups if group]
    prompts = list(dict.fromkeys(p for group in groups for p in group))
    removals = [prompts for prompts in every_forget if prompts]
    held = list(dict.fromkeys(p for prompts in removals for p in prompts))
    count = 4 * _pool_size(config, "replay")
    wider = replace(config, replay_pool=count)
    rows = {"forget": _pool_size(wider, "forget"), "replay": count, "hold": count}
    drawn = _drawn(rows, _kept_steps(pipe, family, config), _repair_settings(config), seed, processes)
    pool = _latent_pool(pipe, family, bank, [(f, f) for f in held], prompts, _group_weights(groups, prompts), wider,
                        seed, needed=drawn)  # fmt: skip
    pool["hold"] = _latent_pool(pipe, family, bank, [], held, _group_weights([removals], held), wider, seed + 1,
                                needed={"replay": drawn["hold"]})["replay"]  # fmt: skip
    with untouched_model():  # every pulled row to the untouched model
        _anchor_to_base(pipe, family, bank, pool, prompts, set(prompts), drawn["replay"])
        pool["hold_untouched"] = _predictions(pipe, family, bank, pool["hold"], held, drawn["hold"])
    if owner:
        pool["hold_own"], pool["hold_on_own"] = _own_chain(pipe, family, bank, pool["hold"], held, owner, chain_at,
                                                           drawn["hold"])  # fmt: skip
    return pool, prompts, held


@torch.no_grad()
def _undo_probe(pipe, family, bank, earlier, config: DistillConfig, seed: int, untouched_model) -> dict:
    """Teacher trajectories of each earlier removal's forget prompts (4 per removal) and the untouched model's
    predictions on them: what `_undone` compares the student with."""
    generator = torch.Generator().manual_seed(seed)
    prompts, owner = [], []
    for j, removal in enumerate(earlier):
        for i in torch.randint(0, len(removal), (4,), generator=generator).tolist() if removal else []:
            prompts.append(removal[i])
            owner.append(j)
    pool = _latent_pool(pipe, family, bank, [], prompts, None, replace(config, replay_pool=len(prompts)), seed,
                        replay_ids=torch.arange(len(prompts)))  # fmt: skip
    with untouched_model():
        _anchor_to_base(pipe, family, bank, pool, prompts, set())
    latents, timesteps, _ = pool["replay"]
    return {"latents": latents, "timesteps": timesteps, "prompts": prompts, "owner": torch.tensor(owner),
            "base": pool["replay_base"], "earlier": [set(r) for r in earlier]}  # fmt: skip


@torch.no_grad()
def _undone(denoiser, wrapped, pipe, family, bank, probe: dict, size, device) -> list[float | None]:
    """Per earlier removal, the share of its effect on its forget prompts (chain minus untouched model) that the
    student takes back: the projection of the student's move onto the way back, 0 for a removal without probes,
    `None` for one whose effect on them is below `_UNMEASURABLE` of the predictions (the share would divide by ~0)."""
    steps = probe["latents"].shape[1]
    x, t = probe["latents"].flatten(0, 1), probe["timesteps"].flatten()
    prompts = [p for p in probe["prompts"] for _ in range(steps)]
    student, chain = [], []
    for rows in torch.arange(len(prompts)).split(64):  # bounded batches: 4 trajectories x steps per removal
        args = ([prompts[i] for i in rows.tolist()], x[rows].to(device, denoiser.dtype), t[rows].to(device))
        student.append(_predict(denoiser, pipe, family, bank, *args, size, device).float().cpu())
        with _student_off(wrapped):
            chain.append(_predict(denoiser, pipe, family, bank, *args, size, device).float().cpu())
    student, chain = torch.cat(student), torch.cat(chain)
    back = probe["base"].flatten(0, 1) - chain
    moved = ((student - chain) * back).flatten(1).sum(1)
    gap, size_of = back.flatten(1).square().sum(1), chain.flatten(1).square().sum(1)
    owner = probe["owner"].repeat_interleave(steps)
    shares: list[float | None] = []
    for j in range(len(probe["earlier"])):
        rows = owner == j
        if not rows.any():
            shares.append(0.0)
        elif gap[rows].sum() <= _UNMEASURABLE**2 * size_of[rows].sum():
            shares.append(None)
        else:
            shares.append(float(moved[rows].sum() / gap[rows].sum()))
    return shares


@torch.no_grad()
def _anchor_to_base(
    pipe, family, bank, pool: dict, protected: list[str], untouched: set[str], needed: torch.Tensor | None = None
) -> None:
    """Adds to the replay pool the predictions of the model as it computes now (within the caller's untouched
    model) on its latents (the `needed` entries), and which rows are held to them (whose prompt is in
    `untouched`)."""
    pool["replay_on_base"] = torch.tensor([protected[i] in untouched for i in pool["replay"][2].tolist()])
    pool["replay_base"] = _predictions(pipe, family, bank, pool["replay"], protected, needed)


@torch.no_grad()
def _own_chain(
    pipe, family, bank, entry: tuple, held: list[str], owner: Mapping[str, int], chain_at,
    needed: torch.Tensor | None = None,
) -> tuple:  # fmt: skip
    """The hold pool's predictions (the `needed` entries) with each row's prompt taught by its owner's chain
    (`chain_at(owner + 1)`: the chain right after that removal), and which rows have an owner (the others keep the
    chain as loaded)."""
    latents, timesteps, ids = entry
    row_owner = torch.tensor([owner.get(held[i], -1) for i in ids.tolist()])
    out = torch.zeros(latents.shape)  # the rows without an owner are never read
    for j in sorted(set(row_owner.tolist()) - {-1}):
        rows = (row_owner == j).nonzero().flatten()
        mine = None if needed is None else needed[rows]
        with chain_at(j + 1):
            out[rows] = _predictions(pipe, family, bank, (latents[rows], timesteps[rows], ids[rows]), held, mine)
    return out, row_owner >= 0


@torch.no_grad()
def _predictions(
    pipe, family, bank, entry: tuple, prompts: list[str], needed: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's predictions as it computes now on a pool entry's latents `(n, steps, ...)`, float on the CPU;
    with `needed` (`(n, steps)`, `_drawn`), on those entries only (the others are zeros, never read)."""
    latents, timesteps, ids = entry
    denoiser = getattr(pipe, family.denoiser)
    size, device = _sample_size(denoiser), denoiser.device
    out = torch.zeros(latents.shape)
    for col in range(latents.shape[1]):
        rows = torch.arange(len(ids)) if needed is None else needed[:, col].nonzero().flatten()
        if len(rows):
            x, t = latents[rows, col].to(device, denoiser.dtype), timesteps[rows, col].to(device)
            chosen = [prompts[i] for i in ids[rows].tolist()]
            out[rows, col] = _predict(denoiser, pipe, family, bank, chosen, x, t, size, device).float().cpu()
    return out


def _batch_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of training step `step`'s micro-batch `micro`: a run's batches depend on its seed only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 101 + micro)


def _forget_loss(student: torch.Tensor, goal: torch.Tensor, ids: list[int], plain_pairs: int | None) -> torch.Tensor:
    """The forget term: the student's squared distance to the goal; with `plain_pairs`, the mean over the forget
    prompts' samples plus the mean over the hardening's (`distill(plain_pairs=...)`)."""
    if plain_pairs is None:
        return (student.float() - goal.float()).square().mean()
    error = (student.float() - goal.float()).square().flatten(1).mean(1)
    hardened = torch.tensor([i >= plain_pairs for i in ids], device=error.device)
    return sum((error[rows].mean() for rows in (~hardened, hardened) if rows.any()), error.new_zeros(()))


def _draw(shape: torch.Size, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` pool entries `(rows, cols)` of a pool of `shape` `(trajectories, steps, ...)`, with replacement."""
    rows = torch.randint(0, shape[0], (count,), generator=generator)
    cols = torch.randint(0, shape[1], (count,), generator=generator)
    return rows, cols


def _drawn(
    rows: Mapping[str, int], steps: int, config: DistillConfig, seed: int, processes: int
) -> dict[str, torch.Tensor]:
    """Which entries of a pool of `rows` trajectories per kind (none: no such pool) and `steps` kept steps
    `_train` can draw in its longest run (`_batch`'s draws replayed, every process's), per kind. The pool follows
    its trajectories and computes the teacher's predictions it holds on those only: a repair of 400 steps draws
    fewer than 3,200 of the 15,360 entries of each of its pools."""
    kinds = [kind for kind in ("forget", "replay", "hold") if rows.get(kind)]  # `_batch`'s order
    drawn = {kind: torch.zeros(rows[kind], steps, dtype=torch.bool) for kind in kinds}
    for step in range(_step_cap(config)):
        for micro in range(config.gradient_accumulation_steps):
            generator = _batch_generator(seed, step, micro)
            for kind in kinds:
                drawn[kind][_draw(drawn[kind].shape, config.batch_size * processes, generator)] = True
    return drawn


def _kept_steps(pipe, family, config: DistillConfig) -> int:
    """The steps a pool keeps of each trajectory (`t < max_timestep`)."""
    scheduler = family.sampling_scheduler(pipe, config.sampling_steps)
    return sum(int(t) < config.max_timestep for t in scheduler.timesteps)


def _batch(pool: dict, batch_size: int, generator: torch.Generator, accelerator) -> dict:
    """One batch per process, drawn from the pool (different on each process): for each kind the pool has, in
    `_drawn`'s order ("forget", "replay", "hold"), its samples `(latents, timesteps, ids)` under the kind's name,
    and each other entry of the pool named after the kind (`"replay_base"`, `"hold_on_own"`, ...) at those samples
    (per entry `(n, steps, ...)` or per trajectory `(n,)`)."""
    batch = {}
    mine = slice(batch_size * accelerator.process_index, batch_size * (accelerator.process_index + 1))
    for kind in ("forget", "replay", "hold"):
        if kind not in pool:
            continue
        latents, timesteps, ids = pool[kind]
        rows, cols = (index[mine] for index in _draw(latents.shape, batch_size * accelerator.num_processes, generator))
        batch[kind] = (latents[rows, cols].to(accelerator.device), timesteps[rows, cols].to(accelerator.device),
                       ids[rows].tolist())  # fmt: skip
        for key, value in pool.items():
            if key.startswith(kind + "_"):
                batch[key] = (value[rows] if value.dim() == 1 else value[rows, cols]).to(accelerator.device)
    return batch


def _call(prompts: list[str], latents: torch.Tensor, timesteps: torch.Tensor, ids: list[int]) -> tuple:
    """A `_predict_many` call of a batch's samples of one kind."""
    return [prompts[i] for i in ids], latents, timesteps


def _rows(call: tuple, skipped: torch.Tensor | None) -> tuple:
    """The call's samples but the `skipped` ones (those whose teacher prediction is not read)."""
    if skipped is None:
        return call
    keep = (~skipped).nonzero().flatten()
    return [call[0][i] for i in keep.tolist()], call[1][keep], call[2][keep]


def _fill(predicted: torch.Tensor | None, skipped: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The teacher's predictions of `_rows(call, skipped)` in the call's rows, zeros where skipped (never read)."""
    if skipped is None:
        return predicted
    out = torch.zeros_like(like)
    if predicted is not None:
        out[(~skipped).nonzero().flatten()] = predicted.to(out)
    return out


def _rowwise(flags: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample flags `(n,)` shaped to broadcast over predictions like `like`."""
    return flags.view(-1, *[1] * (like.dim() - 1))


@torch.no_grad()
def _figures(denoiser, wrapped, pipe, family, bank, pairs, protected, held_out, size, device, eta) -> dict[str, float]:
    """Noise-prediction figures on held-out teacher trajectories (another seed than training): how far the forget
    prompts now are from their goals relative to before (`forget_residual`), and how much the protected
    prompts moved relative to their own predictions (`protect_drift`)."""

    def samples(kind):
        latents, timesteps, ids = held_out[kind]
        steps = latents.shape[1]
        x = latents.flatten(0, 1).to(device, denoiser.dtype)
        return x, timesteps.flatten().to(device), ids.repeat_interleave(steps).tolist()

    x, t, ids = samples("forget")
    forget, target = [pairs[i][0] for i in ids], [pairs[i][1] for i in ids]
    after = _predict(denoiser, pipe, family, bank, forget, x, t, size, device).float()
    with _student_off(wrapped):
        before = _predict(denoiser, pipe, family, bank, forget, x, t, size, device).float()
        goal = _predict(denoiser, pipe, family, bank, target, x, t, size, device).float()
    goal = goal - eta * (before - goal)
    residual = float((after - goal).norm() / (before - goal).norm().clamp_min(1e-12))
    x, t, ids = samples("replay")
    kept = [protected[i] for i in ids]
    moved = _predict(denoiser, pipe, family, bank, kept, x, t, size, device).float()
    with _student_off(wrapped):
        still = _predict(denoiser, pipe, family, bank, kept, x, t, size, device).float()
    drift = float((moved - still).norm() / still.norm().clamp_min(1e-12))
    return {"forget_residual": residual, "protect_drift": drift}


def _save_checkpoint(
    folder: Path, step: int, losses, params, optimizer, config: DistillConfig, harden, adversarial: _Adversarial,
    hold_factor: torch.Tensor,
) -> None:  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {"hold_factor": hold_factor.contiguous()} if len(hold_factor) else {}
    if adversarial.sources:  # the hardening's embeddings: derived from the student of their round, not re-derivable
        tensors["harden.embeds"] = torch.stack(adversarial.embeds).contiguous()
        tensors["harden.sources"] = torch.tensor(adversarial.sources, dtype=torch.int64)
    for index, parameter in enumerate(params):
        tensors[f"param.{index}"] = parameter.detach().float().cpu().contiguous()
        state = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                tensors[f"{key}.{index}"] = state[key].detach().float().cpu().contiguous()
    header = {
        "step": str(step),
        "losses": json.dumps(losses),
        "config": json.dumps(asdict(config), sort_keys=True),
        "harden": json.dumps(asdict(harden) if harden else None, sort_keys=True),
        "harden_leak": json.dumps(adversarial.leaks),
        "harden_seconds": str(adversarial.seconds),
    }
    atomic_write(folder / _CHECKPOINT, lambda tmp: save_file(tensors, tmp, metadata=header))


def _resume(
    config: DistillConfig, params, optimizer, harden: HardenConfig | None, adversarial: _Adversarial,
    hold_factor: torch.Tensor,
) -> tuple[int, list[float]]:  # fmt: skip
    """Restores the adapter, optimizer, hardening and hold factors from `checkpoint_dir` if a checkpoint of the
    same run is there."""
    if not config.checkpoint_dir or not (Path(config.checkpoint_dir) / _CHECKPOINT).is_file():
        return 0, []
    path = Path(config.checkpoint_dir) / _CHECKPOINT
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        header = handle.metadata()
    saved = json.loads(header["config"])
    mine = json.loads(json.dumps(asdict(config), sort_keys=True))
    differing = [
        k
        for k in mine
        if k not in ("steps", "max_steps", "checkpoint_dir", "checkpoint_every") and saved.get(k) != mine[k]
    ]
    if json.loads(header.get("harden", "null")) != json.loads(json.dumps(asdict(harden) if harden else None)):
        differing.append("harden")
    if differing:
        raise InvalidArgumentError(
            f"The checkpoint in {config.checkpoint_dir} was made with other settings ({differing}); use another "
            "checkpoint_dir or the same settings."
        )
    tensors = load_file(path)
    step = int(header["step"])
    if "harden.sources" in tensors:
        adversarial.embeds = list(tensors["harden.embeds"])
        adversarial.sources = tensors["harden.sources"].tolist()
    if "hold_factor" in tensors:
        hold_factor.copy_(tensors["hold_factor"])
    adversarial.leaks = json.loads(header.get("harden_leak", "[]"))
    adversarial.seconds = float(header.get("harden_seconds", 0.0))
    with torch.no_grad():
        for index, parameter in enumerate(params):
            parameter.copy_(tensors[f"param.{index}"].to(parameter.device, parameter.dtype))
            if f"exp_avg.{index}" in tensors:
                optimizer.state[parameter] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": tensors[f"exp_avg.{index}"].to(parameter.device),
                    "exp_avg_sq": tensors[f"exp_avg_sq.{index}"].to(parameter.device),
                }
    return step, json.loads(header["losses"])


def checkpoint_step(checkpoint_dir: str | Path) -> int | None:
    """The step a checkpoint folder holds, or `None`."""
    path = Path(checkpoint_dir) / _CHECKPOINT
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return int(handle.metadata()["step"])
