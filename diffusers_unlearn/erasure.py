"""`erase`: one locality-aware removal, made on top of whatever is loaded on the pipeline (DESIGN §2-3)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
import time
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal

import torch
from diffusers import DiffusionPipeline

from . import __version__
from .adapter import FORMAT_VERSION, UnlearningAdapter, content_id, slugify
from .constraints import (
    PRESERVE_GROUP,
    SIBLINGS,
    Constraints,
    asks_for_concept,
    chain_map,
    composed_targets,
    concept_hash_of,
    earlier_protected,
    earlier_protected_groups,
    embedding_probes,
    erased_by,
    hold_removed,
    is_combination,
    mapped_here,
    names_of,
    names_pattern,
    one_word_apart,
    preserve_groups,
    protect_groups,
    solve,
    targets_by_prompt,
)
from .distance import DistanceKind, PromptBank, projection_gram, proxy_distances, score_distances
from .errors import (
    InvalidArgumentError,
    InvalidConceptError,
    InvalidTypeError,
    RemovalUndoneWarning,
    UnsupportedPipelineError,
    VerificationError,
    WeakRemovalWarning,
)
from .families import STABLE_DIFFUSION, family_of
from .layers import current_weight, edited_layers
from .methods.closed_form import ClosedFormConfig
from .methods.distill import DistillConfig, distill
from .methods.harden import HardenConfig, harden_solve, prefixed, rephrased
from .pipeline import base_fingerprints, loaded_adapters, removals_disabled, unlearning
from .prompts import Context, check_names, contexts_from_prompts, default_templates
from .targets import (
    IMPLICIT_SAMPLES,
    Candidate,
    choose_targets,
    effect_meter,
    implicit_prompts,
    removal_effect,
    weakness,
)

logger = logging.getLogger(__name__)

_MINING_POOL = 200
UNDONE_WARNING = 0.2
"""Share of an earlier removal's effect a distilled removal may take back before `erase` warns
(`RemovalUndoneWarning`). The interference check sums these shares along the chain and fails from a lower
`undo_threshold` (0.05): no single step of a measured chain took back 20%, their sum brought removals back."""


def erase(
    pipe: DiffusionPipeline,
    concept: str,
    *,
    aliases: Sequence[str] = (),
    prompts: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    mapping_candidates: Sequence[str] | None = None,
    map_to_context: bool = True,
    fallback_candidates: Sequence[str] = (),
    erase_implicit: bool = False,
    category: str | None = None,
    anchor: str | None = None,
    neighbors: Sequence[str] | None = None,
    mine_neighbors: int = 0,
    protect_top_k: int | None = None,
    preserve: Sequence[str] | Mapping[str, Sequence[str]] = (),
    method: Literal["closed_form", "distill"] = "closed_form",
    distance: DistanceKind | None = None,
    distance_samples: int = 16,
    min_separation: float | None = None,
    target_check: Literal["mean", "sampled"] = "mean",
    config: ClosedFormConfig | DistillConfig | None = None,
    harden: HardenConfig | bool = False,
    compose_targets: bool = True,
    redact: bool = False,
    name: str | None = None,
    seed: int = 0,
) -> UnlearningAdapter:
    """Makes a removal of `concept` for `pipe`, on top of the removals already loaded on it.

    The pipeline is not modified: load the returned adapter with `pipe.load_unlearning(adapter)`.

    1. *Forget prompts*: each context (from `prompts`, else `templates`) filled with the concept and each alias.
    2. *Fine-grained targets*: per context, the candidate (each of `mapping_candidates` in the context, the
       context without the concept unless `map_to_context=False`, `category` in the context) nearest to the
       forget prompts for the model itself, by `distance`. Aliases share their context's target.
    3. *Local protection*: `neighbors` (plus `mine_neighbors` words mined from the vocabulary) ranked by the
       same distance; the nearest `protect_top_k` are protected in every context, as are the empty prompt,
       the chosen targets, the contexts without the concept, `preserve`, and every removal already loaded.
    4. *Closed-form solve* on the cross-attention key / value projections (and, for SDXL, the pooled-text
       input of `add_embedding`), factored into a LoRA with `lora_alpha == r`.

    Args:
        pipe (`DiffusionPipeline`): A Stable Diffusion (1.x / 2.x) or SDXL pipeline, removals possibly loaded.
        concept (`str`): What to remove, as prompts name it ("Van Gogh", "seven").
        aliases (`Sequence[str]`): Other names of the concept ("7"); removed along with it.
        prompts (`Sequence[str]`, *optional*): Forget prompts, each mentioning the concept or an alias.
        templates (`Sequence[str]`, *optional*): Contexts with a `{}` slot, used when `prompts` is not given;
            default the `DEFAULT_TEMPLATES` that fit the text encoder with the concept in the slot.
        mapping_candidates (`Sequence[str]`, *optional*): Replacements the concept may be mapped to
            ("a rabbit", "an animal"); placed into each context.
        map_to_context (`bool`, defaults to `True`): Whether the context without the concept is a candidate too.
            Turn it off for an attribute whose absence leaves the choice to the model (a stroke, a size): the
            model draws "a green five" bold half the time, so mapping "a green five, bold" there keeps half
            of the bold fives; `mapping_candidates` (["thin"]) are then the only targets.
        fallback_candidates (`Sequence[str]`): Candidates taken only in a context whose other candidates are all
            rejected by the target check, and not where a loaded removal erased them (their prompt there is its
            forget prompt, drawn as its target). Erasing a combination ("bold green eight") is best mapped to its
            context without the concept ("a bold green"); where a chain has made that context draw the concept
            (the digits chain, by its 17th removal), another digit ("a bold green nine") still removes it. Given
            as `mapping_candidates`, they would be taken wherever nearer.
        erase_implicit (`bool`, defaults to `False`): Also erase each context without the concept that the model
            draws as the concept (by the target check's measure, in that context), instead of protecting it: it
            joins the forget prompts with its context's target, and is listed in `metadata["implicit_prompts"]`
            (where it is its context's only candidate, it stays the target and protected, and the log says so).
            The digits model draws "a red" as a seven: protected, it kept drawing sevens after "seven" was erased,
            and a token search found sevens along the chain through it; with it, none on five seeds after ten
            removals (docs/method.md#implicit-prompts). Each context so found is confirmed by sampling it (8 short
            trajectories of its prompt, the concept's and its neighbours', from the same noise): the mean noise
            predictions read "a five", which the model draws in a spread of colours, as red. Off by default: it
            costs four noise predictions per context and the trajectories of the contexts found (digits: "red",
            120 contexts found, 95 s on one thread beside another run, against 45 s for the removal itself).
        category (`str`, *optional*): A generic category ("a cartoon character"), also a candidate.
        anchor (`str`, *optional*): Map every forget prompt to this one prompt instead (the coarse target of
            ESD / UCE, e.g. `""`); turns fine-grained targets off. For comparisons, not recommended.
        neighbors (`Sequence[str]`, *optional*): Related concepts to keep intact ("Monet", "Pikachu's friends").
        mine_neighbors (`int`): How many more neighbours to mine from the tokenizer vocabulary (0: none).
        protect_top_k (`int`, *optional*): Protect only the nearest `k` neighbours (default all).
        preserve (`Sequence[str]` or `Mapping[str, Sequence[str]]`): Further prompts to keep unchanged (general
            prompts). A mapping gives groups of them, each weighing as much as the anchors or the neighbours
            whatever its size: `{"related": [...12 prompts], "background": [...64 prompts]}` keeps a large
            sample of everything else from drowning the few prompts that matter most.
        method (`str`): `"closed_form"` (seconds on a CPU) or `"distill"` (a LoRA trained by teacher-student
            distillation, LACU-style: for concepts beyond the cross-attention inputs; a GPU for real models).
        distance (`str`, *optional*): `"proxy"` (key / value projections, no denoiser call; the default for
            `"closed_form"`) or `"score"` (noise-prediction distance over `distance_samples` random latent /
            timestep pairs; the default for `"distill"`).
        distance_samples (`int`): Random latents of the score distance and of the target check. The check's
            denoiser calls are most of a removal of a large model on a CPU: 4 makes them 4x cheaper, and noisier.
        min_separation (`float`, *optional*): How far from the concept a candidate's noise predictions must be, as
            a share of their distance to the nearest other concept, for it to be a target (default
            `targets.MIN_SEPARATION`, 0.9); 0 turns that check off. The check compares mean predictions: a
            context the model draws in a spread of values ("the letter a", in any of eight colours) sits amid
            them, nearest the most central one, though it draws that one no more than the others (glyphs:
            "purple" at 0.8, in at most 6 of 48 images).
        target_check (`str`, defaults to `"mean"`): `"sampled"` checks the context without the concept again
            where the mean predictions pass it: 8 short trajectories a checked context, from the same noise as
            the concept's and its two nearest neighbours'; ending nearer the concept's in more than half of them,
            it is rejected. The mean misses a context a chain has drawn as the concept when the neighbours'
            predictions lie near it too: "bold green eight" was mapped to "a bold green", a green eight by then,
            and stayed in 99% of its images (docs/erasing.md). Costs those trajectories for that candidate.
        config ([`ClosedFormConfig`] or [`DistillConfig`], *optional*): The method's settings (solve weights;
            training steps, target modules, accelerate options, checkpoints), and the one place to set the LoRA
            rank: `ClosedFormConfig(rank=4)` (default: the smallest keeping 99% of the edit, at most 12) or
            `DistillConfig(rank=4)`.
        harden ([`HardenConfig`] or `bool`): Derive the embeddings that still regenerate the concept under the
            removal and erase them too (`True`: `HardenConfig()`, 3 rounds), so that the removal holds better
            against prompt-search and embedding attacks (`diffusers_unlearn.attacks`). Closed form: RECE-like
            rounds after the solve, in closed form (a few solves more). Distill: adversarial training, embeddings
            derived by gradient steps during training (the derivations and one more forward pass per step). See
            docs/erasing.md#hardened-removals and docs/benchmarks/robustness.md.
        compose_targets (`bool`): Where a forget prompt also asks for an earlier combination's concept ("the
            digit 7 in italic", erasing italic after "italic 7" was mapped to "italic 4"), map it to a target
            carrying that removal's change too ("the digit 4 in roman", not "the digit 7 in roman"), so that this
            removal changes only what it removes; recorded in `metadata["composed_targets"]`. Measured on the
            glyphs chain: it keeps italic 7 out, and with the earlier removals' hold pushed the chain holds one
            step more (docs/method.md#a-target-keeps-what-earlier-removals-changed-compose_targetstrue). On the
            digits 25-step sequence it changes no target (no later prompt asks for an earlier combination). `False`:
            each target as chosen for this removal alone.
        redact (`bool`): Keep the concept, aliases and forget prompts out of the saved files (a salted hash
            identifies the concept instead).
        name (`str`, *optional*): Adapter name; default `"no-<concept>"`.
        seed (`int`): Seed of the score distance's samples.

    Returns:
        [`UnlearningAdapter`]: the removal, with its chosen targets, protected set and figures in `metadata`.

    Raises:
        UnsupportedPipelineError: The pipeline's family cannot be edited.
        InvalidConceptError: Empty concept, unknown tokens, prompts without the concept or too long,
            a neighbour equal to the concept.
        InvalidArgumentError: An unknown `method` or `distance`; `harden=` with no more distill steps than rounds.
        InvalidTypeError: A `config` of another method than `method`; a `harden` that is neither a `bool` nor a
            [`HardenConfig`]; a `preserve` that is a string, or a mapping to something else than lists of prompts.

    Example:
        ```py
        >>> import diffusers_unlearn
        >>> from diffusers_unlearn import digits
        >>> pipe = digits.load_pipeline()
        >>> adapter = diffusers_unlearn.erase(
        ...     pipe, "seven", aliases=["7"], templates=["a {}", "the number {}", "a red {}"],
        ...     category="digit", neighbors=["one", "four", "nine"])
        >>> [t["target"] for t in adapter.metadata["targets"]]  # the model's own choice per context
        >>> pipe.load_unlearning(adapter)
        ```
    """
    started = time.perf_counter()
    configs = {"closed_form": ClosedFormConfig, "distill": DistillConfig}
    if method not in configs:
        raise InvalidArgumentError(f"Unknown method {method!r}; use 'closed_form' or 'distill'.")
    distance = distance or ("score" if method == "distill" else "proxy")
    if distance not in ("proxy", "score"):
        raise InvalidArgumentError(f"Unknown distance {distance!r}; use 'proxy' or 'score'.")
    config = config or configs[method]()
    if not isinstance(config, configs[method]):
        raise InvalidTypeError(f"method={method!r} takes a {configs[method].__name__}, got {type(config).__name__}.")
    harden = HardenConfig() if harden is True else (harden or None)
    if harden is not None and not isinstance(harden, HardenConfig):
        raise InvalidTypeError(f"harden= takes True or a HardenConfig, got {type(harden).__name__}.")
    preserved = preserve_groups(preserve)
    if min_separation is not None and not 0 <= min_separation <= 1:
        raise InvalidArgumentError(f"min_separation must be in [0, 1] (0: no check), got {min_separation}.")
    if target_check not in ("mean", "sampled"):
        raise InvalidArgumentError(f"Unknown target_check {target_check!r}; use 'mean' or 'sampled'.")
    if not map_to_context and anchor is None and not mapping_candidates and not category:
        raise InvalidArgumentError(
            "map_to_context=False leaves no mapping target: pass `mapping_candidates` (or `category`), or drop it."
        )

    family = family_of(pipe)
    if harden is not None and harden.derive == "prefix" and harden.rounds:
        if method != "distill":
            raise InvalidArgumentError(
                "HardenConfig(derive='prefix') is distill's: the closed form derives whole embeddings in closed "
                "form. Use method='distill', or leave derive at 'embedding'."
            )
        if family is not STABLE_DIFFUSION:
            raise UnsupportedPipelineError(
                f"HardenConfig(derive='prefix') reads a prefix through one CLIP text encoder (Stable Diffusion "
                f"1.x / 2.x); this is a {family.name} pipeline: leave derive at 'embedding'."
            )
    denoiser = getattr(pipe, family.denoiser)
    layers = edited_layers(denoiser, family)
    names = check_names(pipe.tokenizer, concept, aliases)
    lowered = {n.lower() for n in names}
    if prompts is not None:
        if not prompts:
            raise InvalidConceptError("`prompts` is empty: pass forget prompts or leave it out to use templates.")
        contexts = list(dict.fromkeys(contexts_from_prompts(prompts, names)))
    else:
        contexts = [Context(t) for t in dict.fromkeys(templates or default_templates(pipe.tokenizer, names))]
        if not all("{}" in c.template for c in contexts):
            raise InvalidConceptError("Every template needs a '{}' slot where the concept goes.")

    neighbor_words = [n.strip() for n in (neighbors or ()) if n.strip()]
    clashes = [n for n in neighbor_words if n.lower() in lowered]
    if clashes:
        raise InvalidConceptError(
            f"{clashes} would be both erased and protected; remove them from `neighbors` (or from `aliases`)."
        )

    bank = PromptBank(pipe, family)
    forget_prompts = {c: [c.fill(n) for n in names] for c in contexts}
    bank.add([p for ps in forget_prompts.values() for p in ps])

    weights = {layer: current_weight(module) for layer, module in layers.items()}
    gram = projection_gram(list(weights.values()))

    def distances(pairs: list[tuple[str, str]]) -> torch.Tensor:
        if distance == "score":
            return score_distances(bank, pairs, samples=distance_samples, seed=seed)
        return proxy_distances(bank, gram, pairs)

    # local protection first: neighbours ranked by the removal's distance, nearest first; the target check
    # compares candidates with the nearest of them.
    def ranked(words: list[str]) -> list[tuple[str, float]]:
        if not words:
            return []
        pairs = [(c.fill(concept), c.fill(n)) for n in words for c in contexts]
        scores = distances(pairs).view(len(words), len(contexts)).mean(dim=1)
        return [(words[i], float(scores[i])) for i in scores.argsort().tolist()]

    neighbor_ranking = ranked(neighbor_words)
    if mine_neighbors:
        mined = ranked(_mine_vocabulary(pipe, names, neighbor_words, mine_neighbors * 4))[:mine_neighbors]
        neighbor_ranking = sorted(neighbor_ranking + mined, key=lambda item: item[1])
    if protect_top_k is not None:
        neighbor_ranking = neighbor_ranking[:protect_top_k]

    # fine-grained mapping targets: one per context, shared by the concept and its aliases, never a candidate
    # the model draws as the concept itself, nor one removed earlier (targets.py).
    previous = loaded_adapters(pipe)
    in_effect = {loaded.name for loaded in unlearning(pipe) if loaded.verified}  # and so after, checked below
    erased = {p for a in previous for p in a.metadata.get("forget_prompts", [])}  # what earlier removals took out
    # a removal that protects its own word in other contexts ("blue three" keeps "a red three") did not remove it
    removed = {n.lower() for a in previous if not is_combination(a) for n in names_of(a)}
    if anchor is not None:
        candidates = [Candidate(anchor, fixed=True)]
    else:
        words = [*(mapping_candidates or ()), *([""] if map_to_context else []), *([category] if category else [])]
        candidates = [Candidate(word) for word in dict.fromkeys(words) if word.lower() not in lowered]
        candidates += [
            Candidate(word, fallback=True)
            for word in dict.fromkeys(fallback_candidates)
            if word.lower() not in lowered and word not in words
        ]
    bank.add([p for c in contexts for p in dict.fromkeys(k.fill(c) for k in candidates)])  # one batched encoding
    nearest = [n for n, _ in neighbor_ranking]
    implicit = {}  # contexts without the concept that the model draws as it: erased too (targets.implicit_prompts)
    if erase_implicit and anchor is None:
        implicit = implicit_prompts(
            bank, contexts, names, nearest, erased=erased, min_separation=min_separation, samples=distance_samples,
            seed=seed,
        )  # fmt: skip
    choice = choose_targets(
        bank, contexts, names, candidates, nearest, distances,
        removed=removed, erased=erased, mapped_here=mapped_here(previous, names, contexts),
        min_separation=min_separation, samples=distance_samples, seed=seed, avoid=set(implicit.values()),
        confirm=IMPLICIT_SAMPLES if target_check == "sampled" else 0,
    )  # fmt: skip
    targets = choice.targets
    for context, prompt in list(implicit.items()):
        if targets[context] == prompt:  # its context's only candidate: its target and protected, as before
            logger.warning(
                "%r is drawn as %r, but is the only mapping target of %r: mapped to and kept. Pass "
                "`mapping_candidates` the model draws as other concepts.", prompt, concept, context.template,
            )  # fmt: skip
            del implicit[context]
        else:  # mapped with the forget prompts of its context, not protected
            forget_prompts[context] = [*forget_prompts[context], prompt]
    # Three groups (or more: one per `preserve` group), each weighing the same in the objective whatever its size:
    # a handful of `preserve` prompts must not be drowned by hundreds of neighbour prompts.
    groups = {
        "anchors": [""] + list(targets.values()) + [c.fill("") for c in contexts if c not in implicit],
        "neighbors": [context.fill(n) for n, _ in neighbor_ranking for context in contexts],
        **preserved,
    }
    if method == "distill" and config.siblings:  # the preserve prompts one word from a forget prompt, once more
        kept = [p for prompts in preserved.values() for p in prompts]
        groups[SIBLINGS] = one_word_apart(kept, [p for prompts in forget_prompts.values() for p in prompts], names)
    groups = {name: list(dict.fromkeys(prompts)) for name, prompts in groups.items() if prompts}
    protected = {p for prompts in groups.values() for p in prompts}
    # 4. the edit, on top of every removal already loaded.
    pairs = [(prompt, targets[context]) for context in contexts for prompt in forget_prompts[context]]
    # where a forget prompt asks for an earlier removal's concept too, its target carries that removal's change
    composed = composed_targets(pairs, names, previous) if compose_targets else {}
    pairs = [(prompt, composed.get(prompt, target)) for prompt, target in pairs]
    bank.add(list(composed.values()))
    erased_earlier = erased_by(previous)  # asks for what a loaded removal erased
    asks = asks_for_concept(names, contexts, protected)  # asks for what this removal erases
    hardened: list[str] = []  # the forget prompts a hardening adds (saved: later removals may hold them too)
    plain_pairs = len(pairs)
    if harden is not None and (harden.phrasings or harden.prefixes):
        # other word orders of the forget prompts (what a paraphrase tries), then random tokens in front of them
        # (what a discrete token search tries); the forget prompts are in the bank already
        phrasings = rephrased(pairs, harden.phrasings, pipe.tokenizer, exclude=protected, seed=seed)
        bank.add([f for f, _ in phrasings])
        pairs += phrasings
        more = prefixed(
            pairs, harden.prefixes, pipe.tokenizer, names, harden.prefix_tokens, protected, seed, harden.prefix_words,
            avoid=erased_earlier, asks=asks,
        )  # fmt: skip  # no prefix that reopens an earlier removal, nor one whose target asks for this concept
        bank.add([p for pair in more for p in pair])
        pairs += more
        hardened = [prompt for prompt, _ in phrasings + more]
    derive = harden if harden is not None and harden.rounds else None  # rounds=0: the prompts above only
    derived_prompts: list[str] = []  # distill with `derive`: the prompts its derived embeddings started from
    if method == "closed_form":
        solve_kwargs = {
            "protect_factors": [a.probes["forget_moment"] for a in previous if "forget_moment" in a.probes],
            "bank": bank,
            "weights": weights,
            "gram": gram,
            "chain": chain_map(previous) if previous and config.anchor == "base" else None,
        }
        constraints = Constraints(forget=[pairs], protect=dict(groups))
        if previous and config.earlier_protection > 0:  # what earlier removals kept, unless this one erases it
            constraints.protect["earlier"] = earlier_protected(previous, names, groups, forget_prompts)
            constraints.weights["earlier"] = config.earlier_protection
        if solve_kwargs["chain"] is not None:  # held to the untouched model, except what was erased since
            hold_removed(constraints, previous, removed)
        if derive is None:
            solution, harden_figures = solve(pipe, constraints, config, **solve_kwargs), {}
        else:  # methods/harden.py: derive the embeddings that still regenerate the concept, erase them, re-solve
            solution, harden_figures = harden_solve(pipe, constraints, config, derive, **solve_kwargs)
        lora, probes, edit_rank = solution.lora, solution.probes, solution.remap.rank
        figures = {**solution.figures, **harden_figures}
    else:  # replay the earlier removals' forget prompts too, so that they stay removed; not those that ask for
        # this concept ("a red seven" after "seven", when erasing "red"). Neither held nor protected: the prompts
        # an earlier removal draws as this concept ("a red nine, bold" as "a yellow nine, bold", when erasing
        # "bold yellow nine"); the later request wins
        drawn_as_it = {p for a in previous for p, target in targets_by_prompt(a).items() if asks(target)}
        earlier = [
            [
                p
                for p in replayed_forget_prompts(a, config.earlier_hardened, names)
                if not asks(p) and p not in drawn_as_it
            ]
            for a in previous
        ]
        replayed = [kept for prompts in groups.values() if (kept := [p for p in prompts if p not in drawn_as_it])]
        kept_earlier = []  # what the earlier removals protected, by removal and group, with earlier_protection
        if previous and config.earlier_protection > 0:
            kept_earlier = [
                [[p for p in group if p not in drawn_as_it] for group in removal]
                for removal in earlier_protected_groups(previous, names, groups, forget_prompts)
            ]
        untouched: set[str] = set()
        if config.anchor == "base":  # held to the untouched model: what no earlier removal erased
            every = [*groups.values(), *(group for removal in kept_earlier for group in removal)]
            untouched = {p for prompts in every for p in prompts if not erased_earlier(p)}
        repair = []  # with repair_steps: what every removal protected, less what any of them erased
        if config.repair_steps:
            every = [*groups.values(), *(group for a in previous for group in protect_groups(a).values())]
            held_back = {p for prompts in forget_prompts.values() for p in prompts} | drawn_as_it
            repair = [
                kept
                for prompts in every
                if (kept := [p for p in prompts if p not in held_back and not asks(p) and not erased_earlier(p)])
            ]
        derived = earlier_derived(previous, asks, drawn_as_it) if config.earlier_derived else None
        # with min_reach: the predictions before, measured now; the effect of the LoRA as it trains, later
        effect = effect_meter(bank, choice, concept) if config.min_reach is not None else None
        owned = config.earlier_anchor == "own" or config.repair_anchor == "own"
        owner = earlier_owners(previous, earlier) if owned else None
        result = distill(
            pipe, family, bank, pairs, replayed, config, earlier=earlier, earlier_protected=kept_earlier,
            untouched=untouched, untouched_model=lambda: removals_disabled(pipe), earlier_owner=owner,
            earlier_combination=[is_combination(a) for a in previous],
            chain_at=lambda n: removals_disabled(pipe, keep_first=n), harden=derive, effect=effect, repair=repair,
            plain_pairs=plain_pairs if hardened else None, earlier_derived=derived, seed=seed,
        )  # fmt: skip
        lora, figures = result.lora, result.figures
        edit_rank = config.rank * (2 if config.repair_steps else 1)  # the repair's rows follow the removal's
        if "earlier_undone" in figures:  # by the earlier removal's id, as `parents` names it
            figures["earlier_undone"] = {  # a removal with no measurable effect on its probes is left out
                a.metadata.get("adapter_id") or a.name: v
                for a, v in zip(previous, figures["earlier_undone"], strict=True)
                if v is not None
            }
        probes = embedding_probes(bank, pairs, groups)
        if result.derived is not None and not redact:  # for later removals to hold (`earlier_derived`)
            probes[HARDENED_EMBEDDINGS], derived_prompts = result.derived[0].half(), result.derived[1]
    figures = {
        **figures,
        "forget_pairs": len(pairs),  # with a hardening's phrasings and prefixes
        **removal_effect(bank, choice, lora, concept),  # targets.py: how far the concept moved
        "seconds": round(time.perf_counter() - started, 3),
        "encode_seconds": round(bank.encode_seconds, 3),
        "predict_seconds": round(bank.predict_seconds, 3),
        "prompts_encoded": bank.encoded,
    }

    metadata = _metadata(
        pipe, family, concept, names, redact, name, method, config, edit_rank, choice, neighbor_ranking,
        groups, previous, figures, distance, forget_prompts, composed, implicit,
    )  # fmt: skip
    if harden is not None:
        metadata["hyperparameters"]["harden"] = dataclasses.asdict(harden)
        metadata["hardened_prompts"] = [] if redact else hardened
    if derived_prompts:
        metadata["hardened_embedding_prompts"] = derived_prompts
    adapter = UnlearningAdapter(lora_weights=lora, metadata=metadata, probes=probes)
    adapter.metadata["adapter_id"] = content_id(lora)
    logger.info(
        "Erased %r in %.2fs (rank %d, concept shift %s)", concept, figures["seconds"], edit_rank,
        figures["concept_shift"],
    )  # fmt: skip
    reason = weakness(figures)
    short = method == "distill" and config.min_reach is not None and figures["target_reach"] < config.min_reach
    if short and not reason:  # trained up to max_steps and still short of what the user asked for
        reason = f"moved {figures['target_reach']:.2f} of the way to its targets (below min_reach={config.min_reach})"
    if reason:
        remedy = "lower the protection (`ClosedFormConfig`)"
        if method == "distill":
            remedy = (
                f"train it for more than {figures['steps_trained']} steps (`DistillConfig(max_steps=...)`)"
                if config.min_reach is not None
                else "train it until it gets there (`DistillConfig(min_reach=1.0)`)"
            )
        warnings.warn(
            WeakRemovalWarning(
                f"The removal {adapter.name!r} barely moves {concept!r}: its noise predictions {reason}, so it may "
                "not erase it. Check its targets (`adapter.metadata['targets']`), pass `mapping_candidates` the "
                f"model draws as other concepts, or {remedy}."
            ),
            stacklevel=2,
        )
    if hardened and method == "closed_form":
        warnings.warn(
            WeakRemovalWarning(
                f"The removal {adapter.name!r} was hardened with phrasings or prefixes in closed form, which can "
                "leave its concept drawn: on the digits model a combination's removal so hardened drew it in 88% of "
                "its images (19% without). Measure it (`diffusers_unlearn.evaluation.evaluate`) or harden it with "
                '`method="distill"`.'
            ),
            stacklevel=2,
        )
    names = {a.metadata.get("adapter_id") or a.name: a.name for a in previous}
    for earlier, share in (figures.get("earlier_undone") or {}).items():
        if share > UNDONE_WARNING:
            warnings.warn(
                RemovalUndoneWarning(
                    f"The removal {adapter.name!r} takes back {100 * share:.0f}% of {names[earlier]!r}'s effect on "
                    f"its forget prompts (noise predictions, above {100 * UNDONE_WARNING:.0f}%): that concept may be "
                    "generated again. Make this removal with `DistillConfig(lambda_earlier=10.0)` or "
                    '`anchor="chain"`, and measure the earlier concept (`evaluate`); `stack.check(pipe)` adds these '
                    "shares up along the chain."
                ),
                stacklevel=2,
            )
    lost = [loaded.name for loaded in unlearning(pipe) if loaded.name in in_effect and not loaded.verified]
    if lost:  # a removal that silently stops working is the one thing erase must never leave behind
        raise VerificationError(
            f"Making {adapter.name!r} left {lost} out of effect on the pipeline (a bug of diffusers-unlearn: please "
            "report it). Reload them before generating: `pipe.unload_unlearning()`, then `pipe.load_unlearning(...)`."
        )
    return adapter


def earlier_owners(previous: Sequence[UnlearningAdapter], earlier: Sequence[Sequence[str]]) -> dict[str, int]:
    """Per earlier forget prompt, the index of the last removal that erased it, unless a removal after that one
    names its concept in the prompt ("the red letter k" after "red" was removed): the chain right after the owner
    teaches it with `DistillConfig(earlier_anchor="own")`, and that chain still drew the later concept there."""
    patterns = [names_pattern(names) if (names := names_of(a)) else None for a in previous]
    owner = {p: j for j, prompts in enumerate(earlier) for p in prompts}  # the last one wins
    return {
        p: j
        for p, j in owner.items()
        if not any(pattern is None or pattern.search(p) for pattern in patterns[j + 1 :])
    }


def _mine_vocabulary(pipe, names: list[str], exclude: list[str], count: int) -> list[str]:
    """Whole words of the vocabulary whose input embeddings are closest (cosine) to the concept's."""
    tokenizer = pipe.tokenizer
    table = pipe.text_encoder.get_input_embeddings().weight.detach().float()
    concept_ids = [i for n in names for i in tokenizer(n, add_special_tokens=False).input_ids]
    query = table[concept_ids].mean(0)
    skip = {w.lower() for w in [*names, *exclude]} | {w.lower() for n in names for w in n.split()}
    words, ids = [], []
    for token, index in tokenizer.get_vocab().items():
        word = token.removesuffix("</w>")
        if token.endswith("</w>") and word.isalpha() and len(word) >= 3 and word.lower() not in skip:
            words.append(word)
            ids.append(index)
    if not words:
        return []
    similarity = torch.nn.functional.cosine_similarity(table[ids], query[None], dim=1)
    top = similarity.topk(min(count, _MINING_POOL, len(words))).indices.tolist()
    return [words[i] for i in top]


def replayed_forget_prompts(
    adapter: UnlearningAdapter, hardened: bool = False, names: Sequence[str] = ()
) -> list[str]:
    """What a later distilled removal holds removed for an earlier one: its forget prompts, and with `hardened`
    (`DistillConfig.earlier_hardened`) those its hardening added (`hardened_prompts`: other word orders, words in
    front).

    With `names` (the later removal's concept and aliases), a hardened prompt that names the later concept where the
    earlier removal's own names do not is left out: its words in front ask for it ("6 4 3 3 0 a blue 7", from
    seven's hardening, is drawn as a blue three), and held to the chain it would keep the later concept drawn: on
    the digits chain 18% of blue three's forget images still showed it right after its removal, 6% with them left
    out (docs/erasing.md#hardened-removals).
    """
    extra = adapter.metadata.get("hardened_prompts", []) if hardened else []
    if names and not set(names) & set(names_of(adapter)):
        later = names_pattern(names)
        extra = [p for p in extra if not later.search(p)]
    return [*adapter.metadata.get("forget_prompts", []), *extra]


HARDENED_EMBEDDINGS = "hardened_embeddings"
"""The probe of a distilled removal hardened in rounds: its derived embeddings `(m, L, d)` float16, one per prompt of
`metadata["hardened_embedding_prompts"]` (the forget prompt each was derived from)."""


def earlier_derived(
    previous: Sequence[UnlearningAdapter], asks: Callable[[str], bool], drawn_as_it: Collection[str] = ()
) -> tuple[torch.Tensor, list[str]] | None:
    """The loaded removals' derived embeddings (`DistillConfig.earlier_derived`) and the forget prompt of each, less
    those derived from a prompt that `asks` for the later concept or that an earlier removal draws as it (as
    `replayed_forget_prompts` leaves them out); `None` if there are none."""
    embeds, prompts = [], []
    for adapter in previous:
        if HARDENED_EMBEDDINGS not in adapter.probes:
            continue
        sources = adapter.metadata.get("hardened_embedding_prompts", [])
        keep = [i for i, p in enumerate(sources) if not asks(p) and p not in drawn_as_it]
        embeds.append(adapter.probes[HARDENED_EMBEDDINGS][keep].float())
        prompts += [sources[i] for i in keep]
    return (torch.cat(embeds), prompts) if prompts else None


def _metadata(
    pipe, family, concept, names, redact, name, method, config, rank, choice, neighbor_ranking,
    groups, previous, figures, distance, forget_prompts, composed, implicit,
) -> dict:  # fmt: skip
    salt = secrets.token_hex(8)
    concept_hash = concept_hash_of(salt, concept)
    protected = list(dict.fromkeys(p for prompts in groups.values() for p in prompts))
    preserved = {g: prompts for g, prompts in groups.items() if g == "preserve" or g.startswith(PRESERVE_GROUP)}
    metadata = {
        "format_version": FORMAT_VERSION,
        "library": f"diffusers-unlearn {__version__}",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "name": name or (f"removal-{concept_hash[7:15]}" if redact else f"no-{slugify(concept)}"),
        "redacted": redact,
        "concept": None if redact else concept,
        "concept_hash": concept_hash,
        "concept_salt": salt,
        "aliases": [] if redact else names[1:],
        "forget_prompts": [] if redact else [p for ps in forget_prompts.values() for p in ps],
        "targets": choice.records,
        **({"composed_targets": composed} if composed and not redact else {}),
        **({"implicit_prompts": list(implicit.values())} if implicit and not redact else {}),
        **({"sibling_prompts": groups[SIBLINGS]} if groups.get(SIBLINGS) and not redact else {}),
        "target_candidates": [c.record() for c in choice.candidates],
        "protected_neighbors": [{"neighbor": n, "distance": d} for n, d in neighbor_ranking],
        "protected_prompts": protected,
        "preserve": list(dict.fromkeys(p for prompts in preserved.values() for p in prompts)),
        "method": method,
        "hyperparameters": {**dataclasses.asdict(config), "distance": distance},
        "family": family.name,
        "denoiser": family.denoiser,
        "base_model": getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path"),
        **base_fingerprints(pipe),
        "rank": rank,
        "parents": [{"name": a.name, "adapter_id": a.metadata.get("adapter_id")} for a in previous],
        "figures": figures,
    }
    if redact:  # the targets and protected prompts are contexts without the concept, but a user prompt
        # may name it twice: drop any record that still mentions a name.
        lowered = [n.lower() for n in names]
        metadata["targets"] = [r for r in choice.records if not any(n in r["context"].lower() for n in lowered)]
        metadata["target_candidates"] = [
            r for r in metadata["target_candidates"] if not any(n in r["candidate"].lower() for n in lowered)
        ]
        for key in ("protected_prompts", "preserve"):
            metadata[key] = [p for p in metadata[key] if not any(n in p.lower() for n in lowered)]
    named = {g.removeprefix(PRESERVE_GROUP): prompts for g, prompts in preserved.items() if g != "preserve"}
    if named:  # which preserve prompt was in which group, for a re-solve (`constraints.protect_groups`)
        kept = set(metadata["preserve"])
        metadata["preserve_groups"] = {name: [p for p in prompts if p in kept] for name, prompts in named.items()}
    return metadata
