"""Mapping targets (DESIGN §2, first idea): which prompt each forget prompt is mapped to, checked by the model.

The nearest candidate the model finds can be the concept itself under another name: on the digits model the
generic word "digit" was never in a training caption, and "a green digit" is drawn as a nine, so erasing
"nine" by mapping it there removed nothing. Two rules keep such a candidate from being chosen:

1. *Untrained or near-empty words are not targets*: a candidate word whose input token embeddings are less than
   half as long as those of the concept and its neighbours (words the model does know) is rejected.
2. *A target must be measurably another concept*, by the model's own noise predictions on a sample of the
   removal's contexts (`CHECK_CONTEXTS`, latents cropped to `CHECK_LATENT_SIDE`, `distance_samples` samples):
   the candidate must not be nearer the concept (or an alias) than `MIN_SEPARATION` times its distance to the
   nearest other concept (the protected neighbours nearest the concept). A candidate the model treats as the
   concept is drawn as it. Without neighbours there is nothing to compare with, and only rule 1 applies.

A concept a loaded removal erased is no target either (after "seven" -> "four", "seven" is drawn as a four); a
removal that protects its own word in other contexts ("blue three" keeps "a red three") did not erase the word.
Nor is a concept that a loaded removal maps to this one in some context (after "cyan roman +" -> "the cyan $ in
roman", "+" is no target of "roman $"): mapped back, the two removals would swap, the earlier one's hold drawing
its prompts as this concept while the new one trains this concept toward them (on the glyphs chain "roman $"
mapped to "+" stalled at 0.56-0.69 of the way and stayed in 56% of its images; mapped to "#", removed;
docs/benchmarks/continual_analysis.md, sessions 43 and 45). Only an earlier removal whose contexts share with this
one's a word that all of them hold counts ("roman" in "cyan roman +" and "roman $"; not "serif #", after which
"roman $" mapped to "#" is removed: session 46).

*Implicit prompts*: a context without the concept can be drawn as the concept itself. The digits model draws
every prompt without a digit ("a red", "the number", "a thin") as a seven. Protected, as the contexts without the
concept are, "a red" kept drawing sevens once "seven" was erased; a later removal mapped there ("yellow eight" to
"a yellow") drew its prompts as sevens; and a token search found sevens through them along the chain ("yellow
yellow yellow , blue a red seven": 27.5% of its images after 10 removals on five seeds). [`implicit_prompts`]
finds them, context by context, by rule 2's kind of measure confirmed by sampling (a mean prediction misreads a
context drawn in a spread), and `erase(erase_implicit=True)` (off by default)
erases them with the concept, mapped to their context's target, which is the context itself only where it has no other
candidate (then it is protected as before, and the log says so; docs/method.md#implicit-prompts).

Each context takes the nearest candidate by the removal's own distance that passes both rules (rule 2 runs only
on candidates that would be chosen). When none is left, `erase` raises and says which were rejected and why.
With `confirm` (`erase(target_check="sampled")`), the context without the concept is checked again by sampling
where the mean passes it ([`drawn_shares`]): a chain can make it draw the concept while pulling the neighbours'
predictions near it too (the digits chain's "a bold green", a green eight by its 17th removal). *Fallback*
candidates (`erase(fallback_candidates=...)`) come after every other, and not where a loaded removal erased them.

After the solve, [`removal_effect`] measures how far the removal moved the forget prompts' noise predictions
(the removal applied for a moment; no image is generated) relative to the concept-target distance and to the
concept-neighbour distance measured here, and `erase` warns loudly when the concept barely moves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .adapter import UnlearningAdapter
from .distance import PromptBank, final_latents, noise_predictions, prediction_distance, sample_distances
from .errors import InvalidConceptError
from .layers import base_linear
from .prompts import Context

logger = logging.getLogger(__name__)

CHECK_CONTEXTS = 4
"""Contexts (spread over the removal's list) on which candidates are checked and the removal's effect measured."""
CHECK_NEIGHBORS = 8
"""Nearest protected neighbours a candidate is compared with."""
CHECK_LATENT_SIDE = 16
"""Latent side the check's noise predictions are made at (latents are cropped: 16 keeps SD 1.5's check cheap)."""
MIN_SEPARATION = 0.9
"""A candidate whose predictions are nearer the concept's than this share of their distance to the nearest other
concept (a protected neighbour) is drawn as the concept, and rejected."""
IMPLICIT_SAMPLES = 8
"""Trajectories per prompt that confirm an implicit prompt ([`implicit_prompts`])."""
IMPLICIT_SHARE = 0.5
"""The context without the concept must end nearer the concept's end than its neighbours' in more than this share
of them."""
IMPLICIT_GUIDANCE = 7.5
"""Guidance of those trajectories (diffusers' default for Stable Diffusion)."""
UNTRAINED_NORM_RATIO = 0.5
"""A word whose token embeddings are shorter than this share of the known words' is untrained or near-empty."""
WEAK_SHIFT = 0.7
"""`concept_shift` below which a removal is reported as weak (see [`removal_effect`])."""
WEAK_REACH = 0.6
"""Without neighbours (no `concept_shift`), `target_reach` below which a removal is reported as weak. Measured on
the glyphs model (16 single removals, 4 images per prompt): the two that removed nothing reached 0.39 and 0.56 of
the way to their targets, every removal that reached 0.64 or more removed 50-100% of its images."""


@dataclass
class Candidate:
    """One kind of mapping target: a word put into every context (`""`: the context without the concept), or,
    for a coarse anchor, one fixed prompt.

    Attributes:
        label (`str`): The word, or the anchor prompt.
        fixed (`bool`): The same prompt in every context (an anchor).
        fallback (`bool`): Taken only where every other candidate of a context is rejected, and not in a context
            where a loaded removal erased it (`erase(fallback_candidates=...)`).
        separation (`float | None`): Mean distance of the candidate to the forget prompts over the checked
            contexts, relative to the nearest neighbour's (`None`: no neighbour to compare with, or not checked).
        rejected (`str | None`): Why it cannot be a target, or `None`.
        checked (`bool`): Whether the model-behaviour check ran (only candidates that would be chosen are checked).
        drawn_share (`float | None`): With a sampled check (`choose_targets(confirm=...)`), the share of its
            trajectories that end nearer the concept's than its neighbours' (`None`: not sampled).
    """

    label: str
    fixed: bool = False
    fallback: bool = False
    separation: float | None = None
    rejected: str | None = None
    checked: bool = False
    drawn_share: float | None = None

    def fill(self, context: Context) -> str:
        return self.label if self.fixed else context.fill(self.label)

    def record(self) -> dict:
        return {
            "candidate": self.label,
            "checked": self.checked,
            "separation": self.separation,
            "rejected": self.rejected,
            **({"fallback": True} if self.fallback else {}),
            **({"drawn_share": self.drawn_share} if self.drawn_share is not None else {}),
        }


@dataclass
class TargetChoice:
    """The chosen target of every context, the candidates' check, and the references of the effect check.

    Attributes:
        targets (`dict[Context, str]`): Target prompt per context.
        records (`list[dict]`): Per context, the target and its distance (stored in the removal's metadata).
        candidates (`list[Candidate]`): Every candidate with its separation and why it was rejected, if it was.
        checked (`list[Context]`): The contexts the check ran on.
        neighbor_distance (`dict[Context, float]`): Per checked context, the forget prompt's distance to its
            nearest protected neighbour (empty without neighbours).
        samples (`int`), seed (`int`): The score distance's samples.
    """

    targets: dict[Context, str]
    records: list[dict]
    candidates: list[Candidate]
    checked: list[Context]
    neighbor_distance: dict[Context, float] = field(default_factory=dict)
    samples: int = 16
    seed: int = 0


def choose_targets(
    bank: PromptBank,
    contexts: Sequence[Context],
    names: Sequence[str],
    candidates: Sequence[Candidate],
    neighbors: Sequence[str],
    distances: Callable[[list[tuple[str, str]]], torch.Tensor],
    *,
    removed: Collection[str] = (),
    erased: Collection[str] = (),
    mapped_here: Collection[str] = (),
    min_separation: float | None = None,
    samples: int = 16,
    seed: int = 0,
    avoid: Collection[str] = (),
    confirm: int = 0,
) -> TargetChoice:
    """Checks the candidates (module docstring), then gives each context its nearest candidate left.

    Args:
        bank ([`PromptBank`]): Encodes the prompts; its pipeline is the model the removal is made for.
        contexts (`Sequence[Context]`): The removal's contexts.
        names (`Sequence[str]`): The concept, then its aliases.
        candidates (`Sequence[Candidate]`): Mapping candidates.
        neighbors (`Sequence[str]`): Protected neighbour words, nearest first.
        distances (`Callable`): The removal's distance, `(a, b)` pairs to a tensor; chooses among candidates.
        removed (`Collection[str]`): Concepts and aliases of the removals loaded on the pipeline, lower-case: not
            targets (the model no longer draws them), and not the "other concepts" of rule 2.
        erased (`Collection[str]`): Forget prompts of the loaded removals. A neighbour erased in a checked context
            is not "another concept" of rule 2: the model now draws it as its removal's target, which may be the
            very candidate checked ("a yellow eight, bold" after "yellow eight" -> "a yellow", for "a yellow, bold").
            Nor is a fallback candidate's prompt among them a target in its context.
        mapped_here (`Collection[str]`): Concepts and aliases, lower-case, of the loaded removals that map some of
            their prompts to this concept (`constraints.mapped_here`): not targets, mapped back the two would swap.
        min_separation (`float`, *optional*): Rule 2's threshold (default `MIN_SEPARATION`; 0: rule 2 off).
        samples (`int`), seed (`int`): Samples of the check's score distances.
        avoid (`Collection[str]`): Prompts that are a context's target only where it has no other candidate left:
            the [`implicit_prompts`], erased with the concept unless so chosen.
        confirm (`int`): Trajectories a prompt of a second check of the context without the concept (candidate
            `""`), where the mean predictions pass it (0: none): it is rejected if it ends nearer the concept's end
            than its two nearest neighbours' in more than `IMPLICIT_SHARE` of them, over the checked contexts. The
            mean misses a context drawn as the concept ("a bold green", drawn as a green eight along the digits
            chain; "a", drawn as a seven) where the neighbours' predictions lie near it too. Other
            candidates are concepts of their own, whose ends a latent distance compares by shape ("a zero" ends
            nearer "a four" than "a one", its nearest neighbour, in 75% of trajectories): the mean check alone is
            theirs.

    Raises:
        InvalidConceptError: Every candidate of some context was rejected.
    """
    threshold = MIN_SEPARATION if min_separation is None else min_separation
    for candidate in candidates:
        if candidate.label.lower() in removed:
            candidate.rejected = "removed earlier: a loaded removal maps it elsewhere"
        elif candidate.label.lower() in mapped_here:
            candidate.rejected = "a loaded removal maps it to this concept: mapped back, the two would swap"
    neighbors = [n for n in neighbors if n.lower() not in removed]
    _reject_untrained(bank, candidates, [*names, *neighbors])
    step = max(1, len(contexts) / CHECK_CONTEXTS)
    checked = list(dict.fromkeys(contexts[int(i * step)] for i in range(min(CHECK_CONTEXTS, len(contexts)))))
    near = [n for n in neighbors if not any(c.fill(n) in erased for c in checked)][:CHECK_NEIGHBORS]

    def distance(context: Context, prompt: str) -> float:
        predicted = _predict(bank, [context.fill(names[0]), prompt], samples, seed)
        return prediction_distance(predicted[context.fill(names[0])], predicted[prompt])

    _predict(bank, [c.fill(n) for c in checked for n in [*names, *near]], samples, seed)  # batched
    neighbor_distance = {c: min(distance(c, c.fill(n)) for n in near) for c in checked} if near else {}
    if not near:
        logger.info("No neighbours: mapping candidates are checked for untrained words only (pass `neighbors`).")

    def check(candidate: Candidate) -> None:
        candidate.checked = True
        if not near:
            return
        prompts = [candidate.fill(c) for c in checked]
        predicted = _predict(bank, prompts, samples, seed)  # batched; the rest is cached

        def total(word: str) -> float:  # the candidate's distance to `word`'s prompts, summed over the contexts
            return sum(
                prediction_distance(predicted[p], _predict(bank, [c.fill(word)], samples, seed)[c.fill(word)])
                for c, p in zip(checked, prompts, strict=True)
            )

        to_concept = min(total(name) for name in names)  # an alias counts as the concept
        to_other = min(total(n) for n in near)
        candidate.separation = round(min(to_concept / max(to_other, 1e-12), 1e3), 3)
        if candidate.separation < threshold:
            candidate.rejected = (
                f"drawn as the concept: {candidate.separation:.2f}x as far from it as from the nearest other "
                f"concept, below {threshold}"
            )
        elif confirm and candidate.label == "" and not candidate.fixed:  # the context without the concept, sampled
            concepts, nearest = [c.fill(names[0]) for c in checked], [[c.fill(n) for n in near[:2]] for c in checked]
            shares = drawn_shares(bank, prompts, concepts, nearest, confirm, seed)
            candidate.drawn_share = round(sum(shares) / len(shares), 3)  # over the checked contexts
            if candidate.drawn_share > IMPLICIT_SHARE:
                candidate.rejected = (
                    f"drawn as the concept: its trajectories end nearer the concept's than its neighbours' in "
                    f"{candidate.drawn_share:.0%} of them, above {IMPLICIT_SHARE:.0%}"
                )
        if candidate.rejected:
            logger.info("Mapping candidate %r rejected: %s", candidate.label, candidate.rejected)

    # Each context's candidates ranked once by the removal's distance; then the nearest usable one is taken,
    # checking candidates only when they would be chosen (most are never needed).
    forget = {c: sorted({c.fill(n) for n in names}) for c in contexts}
    ranking: dict[Context, list[tuple[float, Candidate, str]]] = {}
    for context in contexts:
        options = [(k, k.fill(context)) for k in candidates if k.rejected is None]
        # nor a fallback a loaded removal erased in this context ("a bold green two" after "green two": drawn as
        # that removal's target, a green eight by then, when erasing "bold green eight")
        options = [(k, p) for k, p in options if p not in forget[context] and not (k.fallback and p in erased)]
        if options:
            pairs = [(f, p) for _, p in options for f in forget[context]]
            scores = distances(pairs).view(len(options), len(forget[context])).mean(dim=1).tolist()
            options = [(s, k, p) for s, (k, p) in zip(scores, options, strict=True)]
        ranking[context] = sorted(options, key=lambda item: (item[2] in avoid, item[1].fallback, item[0]))
    while True:
        chosen = {}
        for context, options in ranking.items():
            usable = [option for option in options if option[1].rejected is None]
            if not usable:
                raise InvalidConceptError(_no_target_message(context, names[0], candidates))
            chosen[context] = usable[0]
        unchecked = list({id(k): k for _, k, _ in chosen.values() if not k.checked}.values())
        if not unchecked:
            break
        for candidate in unchecked:
            check(candidate)
    targets = {context: prompt for context, (_, _, prompt) in chosen.items()}
    records = [
        {"context": context.template, "target": prompt, "distance": score}
        for context, (score, _, prompt) in chosen.items()
    ]
    return TargetChoice(targets, records, list(candidates), checked, neighbor_distance, samples, seed)


def _reject_untrained(bank: PromptBank, candidates: Sequence[Candidate], known: Sequence[str]) -> None:
    """Rule 1: rejects candidate words whose token embeddings are much shorter than the known words'."""
    tokenizer, encoder = bank.pipe.tokenizer, bank.pipe.text_encoder
    table = encoder.get_input_embeddings().weight.detach().float()

    def norm(word: str) -> float | None:
        ids = tokenizer(word, add_special_tokens=False).input_ids
        return float(table[ids].norm(dim=1).mean()) if ids else None

    known_norms = [n for n in map(norm, known) if n is not None]
    if not known_norms:
        return
    reference = float(torch.tensor(known_norms).median())
    for candidate in candidates:
        if candidate.fixed or not candidate.label.strip():
            continue
        length = norm(candidate.label)
        if length is not None and length < UNTRAINED_NORM_RATIO * reference:
            candidate.rejected = (
                f"untrained or near-empty word: token embedding norm {length:.2f} against {reference:.2f} for "
                "the concept and its neighbours"
            )


def _no_target_message(context: Context, concept: str, candidates: Sequence[Candidate]) -> str:
    listed = "; ".join(f"{c.label!r}: {c.rejected}" for c in candidates) or "none given"
    return (
        f"No mapping target for {context.fill(concept)!r}: every candidate is something the model draws as "
        f"{concept!r} itself, or a word it never learnt ({listed}). Pass `mapping_candidates` that the model draws "
        "as other concepts (e.g. a related but different concept, as LACU maps 'Pikachu' to 'a rabbit')."
    )


@torch.no_grad()
def removal_effect(bank: PromptBank, choice: TargetChoice, lora: dict[str, torch.Tensor], concept: str) -> dict:
    """How far a removal moves its concept, from noise predictions on the checked contexts (no image generated).

    With `moved` the distance between a forget prompt's noise predictions before and after the removal (applied
    to the denoiser for the duration of the call, then restored exactly):

    - `target_reach = sqrt(moved / d(forget, target))`: 1 means it moved as far as its target is from it;
    - `concept_shift = sqrt(moved / d(forget, nearest neighbour))`: how far it moved, in units of the distance
      between the concept and the nearest concept the user says is different (`None` without neighbours).

    Returns:
        `dict` with `target_reach` and `concept_shift`, rounded.
    """
    measure = effect_meter(bank, choice, concept)
    removal = UnlearningAdapter(lora_weights=lora, metadata={"denoiser": bank.family.denoiser})  # its layers, deltas
    with _applied(getattr(bank.pipe, bank.family.denoiser), removal):
        return measure()


def effect_meter(bank: PromptBank, choice: TargetChoice, concept: str) -> Callable[[], dict]:
    """[`removal_effect`] in two halves: the predictions before, measured now; then a function that gives the
    figures of whatever edit the denoiser carries when it is called (a LoRA still training, for instance)."""
    forget = [c.fill(concept) for c in choice.checked]
    target = [choice.targets[c] for c in choice.checked]
    with torch.no_grad():
        before = _predict(bank, forget + target, choice.samples, choice.seed)
    gap = sum(prediction_distance(before[f], before[t]) for f, t in zip(forget, target, strict=True))

    @torch.no_grad()
    def measure() -> dict:
        after = _predict(bank, forget, choice.samples, choice.seed, cache=False)
        moved = sum(prediction_distance(after[f], before[f]) for f in forget)
        figures = {"target_reach": round((moved / max(gap, 1e-12)) ** 0.5, 3), "concept_shift": None}
        if choice.neighbor_distance:
            reference = sum(choice.neighbor_distance.values())
            figures["concept_shift"] = round((moved / max(reference, 1e-12)) ** 0.5, 3)
        return figures

    return measure


def _predict(
    bank: PromptBank, prompts: list[str], samples: int, seed: int, cache: bool = True
) -> dict[str, torch.Tensor]:
    """Noise predictions at the check's latent size (see `CHECK_LATENT_SIDE`)."""
    return noise_predictions(bank, prompts, samples=samples, seed=seed, cache=cache, max_side=CHECK_LATENT_SIDE)


def weakness(figures: dict) -> str | None:
    """Why a removal's figures (from [`removal_effect`]) say it barely moves its concept, or `None`.

    With neighbours, `concept_shift` must reach `WEAK_SHIFT`; without, `target_reach` must reach `WEAK_REACH`.
    """
    shift, reach = figures.get("concept_shift"), figures.get("target_reach")
    if shift is not None:
        if shift < WEAK_SHIFT:
            return f"moved {shift:.2f}x the distance to its nearest neighbour (below {WEAK_SHIFT})"
    elif reach is not None and reach < WEAK_REACH:
        return f"moved {reach:.2f} of the way to its targets (below {WEAK_REACH}; no neighbours to compare with)"
    return None


@contextlib.contextmanager
def _applied(denoiser: torch.nn.Module, removal: UnlearningAdapter) -> Iterator[None]:
    """Adds a removal's weight change to the denoiser's base weights, then restores them exactly."""
    saved = {}
    try:
        for layer in removal.layer_names:
            linear = base_linear(denoiser.get_submodule(layer))
            saved[layer] = linear.weight.detach().clone()
            linear.weight.data += removal.delta(layer).to(linear.weight.device, linear.weight.dtype)
        yield
    finally:
        for layer, weight in saved.items():
            base_linear(denoiser.get_submodule(layer)).weight.data.copy_(weight)


def drawn_shares(
    bank: PromptBank,
    prompts: Sequence[str],
    concepts: Sequence[str],
    neighbors: Sequence[Sequence[str]],
    samples: int = IMPLICIT_SAMPLES,
    seed: int = 0,
) -> list[float]:
    """Per prompt, the share of its trajectories that end nearer its concept's end (in the same context) than every
    one of its neighbours': `samples` short trajectories a prompt from the same noise ([`final_latents`]), all in
    one batch.

    Example:
        ```py
        >>> drawn_shares(bank, ["a"], ["a seven"], [["a eight", "a five"]])  # the digits model draws "a" as a seven
        [0.75]
        ```
    """
    items = list(zip(prompts, concepts, neighbors, strict=True))
    asked = [p for prompt, concept, near in items for p in (prompt, concept, *near)]
    ends = final_latents(
        bank, asked, samples=samples, seed=seed, guidance_scale=IMPLICIT_GUIDANCE, max_side=CHECK_LATENT_SIDE
    )
    shares = []
    for prompt, concept, near in items:
        to_near = torch.stack([sample_distances(ends[prompt], ends[n]) for n in near]).min(0).values
        shares.append(float((sample_distances(ends[prompt], ends[concept]) < to_near).float().mean()))
    return shares


def implicit_prompts(
    bank: PromptBank,
    contexts: Sequence[Context],
    names: Sequence[str],
    neighbors: Sequence[str],
    *,
    erased: Collection[str] = (),
    min_separation: float | None = None,
    samples: int = 16,
    seed: int = 0,
    confirm: int = IMPLICIT_SAMPLES,
) -> dict[Context, str]:
    """Per context, the context without the concept if the model draws it as the concept: nearer the concept than
    `min_separation` times both its own distance and the concept's to the nearest protected neighbours (the first
    two of `neighbors`, nearest first, not erased in that context), by the target check's noise predictions. Four
    predictions a context at most; `erase` erases these prompts with the concept instead of protecting them, and
    maps to them only where their context has no other candidate (module docstring).

    Each context so found is confirmed by sampling (`confirm` trajectories a prompt, [`final_latents`]; 0: not
    confirmed): the context without the concept must end nearer the concept's end than its neighbours' in more than
    `IMPLICIT_SHARE` (half) of them. The mean predictions misread a context the model draws in a spread: the
    digits model's noise predictions put "a five" nearest "a red five", and it draws red in 8% of its images
    (yellow in 57%); unconfirmed, the removal of "red" erased 108 such prompts, all mapped to yellow, which later
    removals of yellow digits took with them (docs/method.md#implicit-prompts).

    Example:
        ```py
        >>> from diffusers_unlearn.distance import PromptBank
        >>> from diffusers_unlearn.families import family_of
        >>> bank = PromptBank(pipe, family_of(pipe))  # the digits model
        >>> contexts = [Context("a red {}"), Context("a {} in blue"), Context("the number {}")]
        >>> implicit_prompts(bank, contexts, ["seven"], ["four", "eight"])  # drawn as a seven
        {Context(template='a red {}'): 'a red', Context(template='the number {}'): 'the number'}
        ```
    """
    threshold = MIN_SEPARATION if min_separation is None else min_separation
    lowered = {n.lower() for n in names}
    found: dict[Context, str] = {}
    if not threshold:
        return found
    checked = []  # (context, its emptied prompt, the concept in it, its nearest neighbours)
    for context in contexts:
        empty, concept = context.fill(""), context.fill(names[0])
        near = [context.fill(n) for n in neighbors if context.fill(n) not in erased][:2]
        if near and empty.strip() and empty.lower() not in lowered:
            checked.append((context, empty, concept, near))
    asked = [p for _, empty, concept, near in checked for p in (empty, concept, *near)]
    predicted = _predict(bank, asked, samples, seed)  # one batched call for every context
    for context, empty, concept, near in checked:
        to_concept = prediction_distance(predicted[empty], predicted[concept])
        apart = min(prediction_distance(predicted[concept], predicted[n]) for n in near)  # concept to neighbours
        to_other = min(prediction_distance(predicted[empty], predicted[n]) for n in near)  # context to neighbours
        if to_concept < threshold * min(apart, to_other):
            found[context] = empty
    if not found or not confirm:
        return found
    confirmed = [(context, concept, near) for context, _, concept, near in checked if context in found]
    shares = drawn_shares(bank, [found[c] for c, _, _ in confirmed], [concept for _, concept, _ in confirmed],
                          [near for _, _, near in confirmed], confirm, seed)  # fmt: skip
    for (context, _, _), share in zip(confirmed, shares, strict=True):
        if share <= IMPLICIT_SHARE:  # drawn as a neighbour as often
            del found[context]
    return found
