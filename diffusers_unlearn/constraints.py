"""What a closed-form removal is solved from, and the solve itself.

A removal is fully described by its *constraints*: forget prompts paired with their mapping targets, and
groups of protected prompts. `erase` chooses them; the stack re-solves from them (a joint merge of several
removals, or the later removals of a chain after one is withdrawn), so all three share [`solve`].

Constraints are stored in each removal's metadata (`targets`, `aliases`, `protected_neighbors`,
`preserve`, `protected_prompts`), so they can be rebuilt without the original call. Redacted removals keep
their forget prompts out of the files; a joint merge then uses their stored forget statistics instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from diffusers import DiffusionPipeline

from .adapter import UnlearningAdapter
from .distance import PromptBank, projection_gram
from .errors import InvalidTypeError, ResolveError
from .families import family_of
from .layers import current_weight, edited_layers, pooled_layer
from .methods.closed_form import ClosedFormConfig, Remap, forget_statistics, moment, normal_system, solve_statistics
from .prompts import Context

_MAX_PROBE_DIRECTIONS = 256


@dataclass
class Constraints:
    """The data of one closed-form solve.

    Attributes:
        forget (`list[list[tuple[str, str]]]`): Per removal, `(forget prompt, target prompt)` pairs. Each
            removal's forget term weighs the same, whatever its number of prompts.
        protect (`dict[str, list[str]]`): Groups of protected prompts; each group's mean outer product weighs
            `weights.get(group, 1.0)`.
        weights (`dict[str, float]`): Group weights (a joint solve gives each member's groups `1 / k`).
        statistics (`list[tuple[torch.Tensor, torch.Tensor]]`): Forget statistics `(moment, shift)` of
            removals known only by their stored probes (redacted removals in a joint merge).
        current (`set[str]`): Groups held to the current model's outputs even when the solve holds the others to
            the untouched model's (`solve(..., chain=...)`): prompts that loaded removals erased.
    """

    forget: list[list[tuple[str, str]]] = field(default_factory=list)
    protect: dict[str, list[str]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    statistics: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    current: set[str] = field(default_factory=set)

    @property
    def protected(self) -> list[str]:
        """Every protected prompt once, in group order."""
        return list(dict.fromkeys(p for prompts in self.protect.values() for p in prompts))


@dataclass
class Solution:
    """A solved removal: its LoRA tensors, remap, figures and probes (see [`UnlearningAdapter`])."""

    lora: dict[str, torch.Tensor]
    remap: Remap
    figures: dict[str, float]
    probes: dict[str, torch.Tensor]


def solve(
    pipe: DiffusionPipeline,
    constraints: Constraints,
    config: ClosedFormConfig,
    *,
    protect_factors: Sequence[torch.Tensor] = (),
    bank: PromptBank | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    gram: torch.Tensor | None = None,
    chain: torch.Tensor | None = None,
) -> Solution:
    """Solves `constraints` on the pipeline's current weights (every loaded removal applied).

    Args:
        pipe (`DiffusionPipeline`): The model the removal is made for.
        constraints ([`Constraints`]): Forget pairs and protected groups.
        config ([`ClosedFormConfig`]): Weights and rank.
        protect_factors (`list[torch.Tensor]`): Forget-moment factors of earlier removals, which must stay
            removed: their mean is one more protected group.
        bank ([`PromptBank`], *optional*): Embeddings already computed.
        weights (`dict[str, torch.Tensor]`, *optional*): The edited layers' current weights, if already read.
        gram (`torch.Tensor`, *optional*): Their projection Gram matrix (`projection_gram`), if already formed.
        chain (`torch.Tensor`, *optional*): `(d, d)` map `M` of the loaded removals on the text embeddings
            (current weights `W = W_base M`, see [`chain_map`]). Given, the protected groups are held to their
            untouched outputs (`(I + G) c = M^-1 c`) instead of their current ones (`G c = 0`); the earlier
            removals' forget moments (`protect_factors`) stay held to the current ones.
    """
    family = family_of(pipe)
    bank = bank if bank is not None else PromptBank(pipe, family)  # an empty bank is falsy (len 0)
    pairs = [pair for member in constraints.forget for pair in member]
    protected = constraints.protected
    bank.add([p for pair in pairs for p in pair])  # one batched encoding; protected prompts are streamed
    if weights is None:
        layers = edited_layers(getattr(pipe, family.denoiser), family)
        weights = {layer: current_weight(module) for layer, module in layers.items()}
    d = next(iter(weights.values())).shape[1]

    members = len(constraints.forget) + len(constraints.statistics)
    if members == 0:
        raise ResolveError("Nothing to erase: the constraints hold no forget prompts.")
    forget_moment = torch.zeros(d, d, dtype=torch.float64)
    shift = torch.zeros(d, d, dtype=torch.float64)
    forget_rows, target_rows = [], []
    fixed = bank.prefix_set(protected)  # embeddings a protected prompt has too are not edited (`aligned`)
    for member in constraints.forget:
        aligned = [bank.aligned(f, t, fixed=fixed) for f, t in member]
        rows, targets = torch.cat([f for f, _ in aligned]), torch.cat([t for _, t in aligned])
        member_moment, member_shift = forget_statistics(rows, targets)
        forget_moment += member_moment / members
        shift += member_shift / members
        forget_rows.append(rows)
        target_rows.append(targets)
    for member_moment, member_shift in constraints.statistics:
        forget_moment += member_moment.double() / members
        shift += member_shift.double() / members

    protect_moment = torch.zeros(d, d, dtype=torch.float64)
    anchored = torch.zeros(d, d, dtype=torch.float64)  # the groups held to the untouched model, with `chain`
    for group, prompts in constraints.protect.items():
        if prompts:
            group_moment = constraints.weights.get(group, 1.0) * bank.moment(prompts)
            protect_moment += group_moment
            if group not in constraints.current:
                anchored += group_moment
    if chain is not None:  # protected prompts pulled back to their untouched outputs: the shift of the pairs
        # (c, M^-1 c) is (M^-1 - I) Q, weighed like the protection
        repair = torch.linalg.solve(chain.double(), anchored) - anchored
        shift = shift + config.lambda_protect * repair
    if protect_factors:  # keep earlier removals removed: one more group, the mean of their forget moments
        earlier = sum(f.double().T @ f.double() for f in protect_factors) / len(protect_factors)
        protect_moment = protect_moment + earlier
    remap = solve_statistics(forget_moment, shift, protect_moment, config)

    lora = {}
    for layer, weight in weights.items():
        lora[f"{family.denoiser}.{layer}.lora_A.weight"] = remap.down.clone()
        lora[f"{family.denoiser}.{layer}.lora_B.weight"] = weight @ remap.up
    figures = {}
    if family.pooled_layer is not None:
        if constraints.statistics:
            raise ResolveError(
                "Redacted removals cannot be re-solved on a model with a pooled text input (SDXL): their forget "
                "prompts are not stored. Merge with method='concat' or 'svd' instead."
            )
        pooled_residual = _edit_pooled(pipe, family, bank, pairs, protected, config, remap.rank, lora)
        figures["pooled_forget_residual"] = pooled_residual

    # figures, aggregated over all edited layers through the Gram matrix (exact: sum_l ||W_l x||^2 = x^T G x).
    if gram is None:
        gram = projection_gram(list(weights.values()))
    g = (remap.up @ remap.down).double()
    if forget_rows:
        forget, target = torch.cat(forget_rows).double(), torch.cat(target_rows).double()
        figures["forget_residual"] = _ratio(forget @ g.T + forget - target, forget - target, gram)
    figures.update(
        {
            "protect_drift": _protect_drift(bank, protected, g, gram),
            "edit_norm_ratio": max(  # ||B A|| / ||W||, with B = W @ up already formed above
                float((lora[f"{family.denoiser}.{layer}.lora_B.weight"] @ remap.down).norm() / weight.norm())
                for layer, weight in weights.items()
            ),
            "rank_energy": remap.energy,
            "full_rank": remap.full_rank,
        }
    )
    probes = {
        "forget_moment": moment_factor(forget_moment),
        "protect_moment": moment_factor(protect_moment),
        "remap_up": remap.up.contiguous(),
        "remap_down": remap.down.contiguous(),
    }
    return Solution(lora=lora, remap=remap, figures=figures, probes=probes)


def chain_map(adapters: Sequence[UnlearningAdapter]) -> torch.Tensor | None:
    """The map `M` on the text embeddings of a chain of closed-form removals, in load order.

    Each removal `k` changes the edited layers by `W_(k-1) @ up_k @ down_k` (its stored remap), so after the chain
    the weights are `W_base @ M` with `M = (I + up_1 down_1) ... (I + up_n down_n)`, exactly (the LoRA is the
    truncated remap). `None` when a removal has no stored remap (distilled, or made by another tool): its change is
    not a remap of the embeddings.
    """
    chain = None
    for adapter in adapters:
        if "remap_up" not in adapter.probes or "remap_down" not in adapter.probes:
            return None
        up, down = adapter.probes["remap_up"].double(), adapter.probes["remap_down"].double()
        step = torch.eye(up.shape[0], dtype=torch.float64) + up @ down
        chain = step if chain is None else chain @ step
    return chain


def earlier_protected(
    previous: Sequence[UnlearningAdapter],
    names: Sequence[str],
    groups: dict[str, list[str]],
    forget_prompts: dict[Context, list[str]],
) -> list[str]:
    """The prompts the loaded removals protected that a new removal must keep too.

    Dropped: the new removal's forget prompts, and prompts that name its concept or an alias unless it protects
    them itself ("blue three" keeps "a red three", which "seven" protected; "three" would not).
    """
    keep = _still_protected(names, groups, forget_prompts)
    kept = (p for a in previous for p in a.metadata.get("protected_prompts", []))
    return list(dict.fromkeys(p for p in kept if keep(p)))


def earlier_protected_groups(
    previous: Sequence[UnlearningAdapter],
    names: Sequence[str],
    groups: dict[str, list[str]],
    forget_prompts: dict[Context, list[str]],
) -> list[list[list[str]]]:
    """`earlier_protected` by removal and by group (`protect_groups`: anchors, neighbours, each preserve group),
    for a replay that shares its weight evenly by removal, then by group: a removal's few look-alikes are not
    drowned by another's hundreds of background prompts."""
    keep = _still_protected(names, groups, forget_prompts)
    by_removal = ([[p for p in prompts if keep(p)] for prompts in protect_groups(a).values()] for a in previous)
    return [[group for group in removal if group] for removal in by_removal]


def _still_protected(
    names: Sequence[str], groups: dict[str, list[str]], forget_prompts: dict[Context, list[str]]
) -> Callable[[str], bool]:
    """Whether a new removal keeps a prompt an earlier one protected (see `earlier_protected`)."""
    own = {p for prompts in groups.values() for p in prompts}
    erased = {p for prompts in forget_prompts.values() for p in prompts}
    mentions = names_pattern(list(names))
    return lambda p: p not in erased and (p in own or not mentions.search(p))


def hold_removed(constraints: Constraints, previous: Sequence[UnlearningAdapter], removed: Collection[str]) -> None:
    """Moves the protected prompts that loaded removals erased into groups held to the current model.

    With protection held to the untouched model (`ClosedFormConfig(anchor="base")`), a protected "a blue seven"
    (a neighbour of "blue three") would be pulled back to a seven after "seven" was removed; it is held where the
    chain put it instead, like the earlier removals' forget prompts. Erased: what `erased_by` finds, or a prompt
    naming a concept in `removed`. Each group's weight is shared between its two parts by their sizes.
    """
    erased = erased_by(previous)
    pattern = names_pattern(sorted(removed)) if removed else None
    for group, prompts in list(constraints.protect.items()):
        gone = [p for p in prompts if erased(p) or (pattern is not None and pattern.search(p))]
        if not gone:
            continue
        rest, weight = [p for p in prompts if p not in set(gone)], constraints.weights.get(group, 1.0)
        key = f"{group} (removed)"
        constraints.protect[key], constraints.weights[key] = gone, weight * len(gone) / len(prompts)
        constraints.current.add(key)
        if rest:
            constraints.protect[group], constraints.weights[group] = rest, weight * len(rest) / len(prompts)
        else:
            del constraints.protect[group]


def embedding_probes(bank: PromptBank, pairs: list[tuple[str, str]], groups: dict[str, list[str]]) -> dict:
    """The forget and protected moment factors of a removal (what the interference check reads)."""
    forget = torch.cat([bank.aligned(f, t)[0] for f, t in pairs])
    protect = sum(bank.moment(prompts) for prompts in groups.values() if prompts)
    return {"forget_moment": moment_factor(moment(forget)), "protect_moment": moment_factor(protect)}


def _protect_drift(bank: PromptBank, protected: list[str], edit: torch.Tensor, gram: torch.Tensor) -> float:
    """`||edit c|| / ||c||` over the protected prompts' token embeddings, through the Gram matrix, streamed."""
    top = bottom = 0.0
    for chunk in bank.chunks(protected):
        rows = torch.cat([embeds for embeds, _ in chunk.values()]).double()
        moved = rows @ edit.T
        top += float(((moved @ gram) * moved).sum())
        bottom += float(((rows @ gram) * rows).sum())
    return (top / bottom) ** 0.5 if bottom > 0 else 0.0


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor, gram: torch.Tensor) -> float:
    top = ((numerator @ gram) * numerator).sum()
    bottom = ((denominator @ gram) * denominator).sum().clamp_min(1e-30)
    return float((top / bottom).sqrt())


def moment_factor(moment_matrix: torch.Tensor) -> torch.Tensor:
    """Rows `P` with `P^T P ~= moment` (top eigen-directions, 99.999% of the trace, at most 256 rows)."""
    values, vectors = torch.linalg.eigh(moment_matrix.double())
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    kept = int(((values.cumsum(0) / values.sum().clamp_min(1e-30)) < 0.99999).sum()) + 1
    kept = min(kept, _MAX_PROBE_DIRECTIONS, len(values))
    return (vectors[:, :kept] * values[:kept].sqrt()).T.float().contiguous()


def _edit_pooled(pipe, family, bank, pairs, protected, config, rank, lora) -> float:
    """SDXL: the same remap in the pooled text embedding's space, on the pooled columns of `add_embedding`.

    The pooled embedding conditions the UNet through `add_embedding`; leaving it unedited lets a concept leak
    back (see docs/method.md). Returns the pooled forget residual.
    """
    forget = torch.stack([bank.pooled(f) for f, _ in pairs])
    target = torch.stack([bank.pooled(t) for _, t in pairs])
    protect = torch.stack([pooled for chunk in bank.chunks(protected) for _, pooled in chunk.values()])
    pooled_config = dataclasses.replace(config, rank=rank)
    forget_moment, shift = forget_statistics(forget, target)
    remap = solve_statistics(forget_moment, shift, moment(protect), pooled_config)
    weight = current_weight(pooled_layer(getattr(pipe, family.denoiser), family))
    width = forget.shape[1]
    down = torch.zeros(rank, weight.shape[1])
    down[: remap.rank, :width] = remap.down
    up = torch.zeros(width, rank)
    up[:, : remap.rank] = remap.up
    lora[f"{family.denoiser}.{family.pooled_layer}.lora_A.weight"] = down
    lora[f"{family.denoiser}.{family.pooled_layer}.lora_B.weight"] = weight[:, :width] @ up
    g = up @ down[:, :width]
    residual = forget @ g.T + forget - target
    return float(residual.norm() / (forget - target).norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------- constraints from metadata
def config_of(adapter: UnlearningAdapter) -> ClosedFormConfig:
    """The solve weights a removal was made with."""
    fields = {f.name for f in dataclasses.fields(ClosedFormConfig)}
    stored = adapter.metadata.get("hyperparameters", {})
    return ClosedFormConfig(**{k: v for k, v in stored.items() if k in fields})


def _require_closed_form(adapter: UnlearningAdapter) -> None:
    if adapter.metadata.get("method") != "closed_form":
        raise ResolveError(
            f"Removal {adapter.name!r} was made with method {adapter.metadata.get('method')!r}; only closed-form "
            "removals can be re-solved. Merge with method='concat' or 'svd' instead."
        )


def names_of(adapter: UnlearningAdapter) -> list[str]:
    """The concept and its aliases (empty when redacted)."""
    return [] if adapter.concept is None else [adapter.concept, *adapter.metadata.get("aliases", [])]


def is_combination(adapter: UnlearningAdapter) -> bool:
    """Whether a removal erased a combination, not its word: it protects its own name in other contexts ("blue
    nine" keeps "a yellow nine", "italic 7" keeps "the digit 7 in roman"). A redacted removal names nothing: no."""
    names = names_of(adapter)
    protected = adapter.metadata.get("protected_prompts", [])
    return bool(names) and any(names_pattern(names).search(p) for p in protected)


def forget_pairs(adapter: UnlearningAdapter) -> list[tuple[str, str]]:
    """`(forget prompt, target)` pairs of a removal, rebuilt from its metadata.

    Raises:
        ResolveError: The removal is redacted (its forget prompts are not stored) or not closed-form.
    """
    _require_closed_form(adapter)
    if adapter.concept is None:
        raise ResolveError(
            f"Removal {adapter.name!r} is redacted: its forget prompts are not stored, so it cannot be re-solved "
            "from prompts. Re-create it with `erase(..., redact=True)` on the new chain."
        )
    return list(_pairs(adapter))


def targets_by_prompt(adapter: UnlearningAdapter) -> dict[str, str]:
    """Each forget prompt of a removal made in one of its contexts, with the target it maps to (empty when
    redacted)."""
    return dict(_pairs(adapter))


def _pairs(adapter: UnlearningAdapter) -> Iterator[tuple[str, str]]:
    composed = adapter.metadata.get("composed_targets", {})
    for record in adapter.metadata.get("targets", []):
        for name in names_of(adapter):
            prompt = Context(record["context"]).fill(name)
            yield prompt, composed.get(prompt, record["target"])


def composed_targets(
    pairs: Sequence[tuple[str, str]], names: Sequence[str], previous: Sequence[UnlearningAdapter]
) -> dict[str, str]:
    """The targets of a removal's forget pairs that must also carry an earlier removal's change.

    A forget prompt can ask for an earlier removal's concept too: "the digit 7 in italic", erasing the style
    italic after "italic 7" was erased at its character word (drawn as "the digit 4 in italic"). Its own target,
    "the digit 7 in roman", satisfies both requests, but training toward it can bring the 7 back: a removal that
    only partly takes draws the chain's italic with the target's 7, which is italic 7 again (glyphs). Where
    the target still names the earlier concept, it takes the earlier removal's replacement too, "the digit 4 in
    roman", so the later removal changes only what it removes. Only earlier combinations count (a removal that keeps
    its own name in other contexts, as "italic 7" keeps "roman 7"): composing with a removal of a whole style or
    colour ("typewriter &" to "roman %" when erasing "&") cost 5 points of general retention on a glyphs chain.
    Redacted removals name nothing and are skipped; a composed target that names this concept or that an earlier
    removal erased is not used.

    Args:
        pairs (`Sequence[tuple[str, str]]`): The removal's `(forget prompt, target)` pairs.
        names (`Sequence[str]`): The concept this removal erases and its aliases.
        previous (`Sequence[UnlearningAdapter]`): The removals loaded before it, oldest first.

    Returns:
        `dict[str, str]`: The forget prompts whose target changes, with their new target.

    Example:
        ```py
        >>> composed_targets([("the digit 7 in italic", "the digit 7 in roman")], ["italic"], previous)
        {'the digit 7 in italic': 'the digit 4 in roman'}
        ```
    """
    own = names_pattern(names)
    erased = erased_by(previous)
    composed: dict[str, str] = {}
    for adapter in previous:
        if not is_combination(adapter):
            continue  # redacted, or erased everywhere: the chain already draws every prompt naming it without it
        earlier, asks = names_of(adapter), asks_for_removal(adapter)
        mentions, replacements = names_pattern(earlier), _replacements(adapter.metadata.get("targets", []), earlier)
        for prompt, target in pairs:
            target = composed.get(prompt, target)
            if not (asks(prompt) and mentions.search(target)):
                continue
            word = _replacement(replacements, prompt)
            new = Context(mentions.sub("{}", target)).fill(word) if word is not None else target
            if new != target and not own.search(new) and not erased(new):
                composed[prompt] = new
    return composed


def mapped_here(previous: Sequence[UnlearningAdapter], names: Sequence[str], contexts: Sequence[Context]) -> set[str]:
    """The concepts and aliases (lower-case) of the loaded removals that put one of `names` in their concept's place
    in some context: "cyan roman +" drawn as "the cyan $ in roman" maps "+" to "$". Mapped back ("roman $" to
    "+"), the two removals swap: the earlier one's hold keeps drawing its prompts as this concept while the new one
    trains this concept toward them: on the glyphs chain "roman $", mapped to "+" after "cyan roman +" -> "$",
    stalled short of its targets (docs/benchmarks/continual_analysis.md, sessions 43 and 45).

    Only a removal whose contexts share a word with the new removal's `contexts` that every context of both holds
    counts ("roman" for "cyan roman +" and "roman $"): "roman $" mapped to "#" after "serif #" -> "the
    serif $" was removed (0 of 128 images) where mapped to "+" it stayed in 41%, and counting every removal left
    "roman $" and "blue sans G" no target at all (session 46).

    Example:
        ```py
        >>> # after "cyan roman +" -> "the cyan $ in roman"
        >>> mapped_here(loaded_adapters(pipe), ["$"], [Context("the {} in roman")])
        {'+'}
        ```
    """
    lowered = {n.lower() for n in names}
    mine = _shared_words([c.template for c in contexts])
    swapped: set[str] = set()
    for adapter in previous:
        records = adapter.metadata.get("targets", [])
        if not mine & _shared_words([r["context"] for r in records]):
            continue
        earlier = names_of(adapter)
        replaced_by = _replacements(records, earlier).values()
        if any(word.lower() in lowered for word in replaced_by):
            swapped |= {n.lower() for n in earlier}
    return swapped


def _shared_words(templates: Sequence[str]) -> set[str]:
    """The words every one of `templates` holds, lower-case, the slot and punctuation left out."""
    words = [{w.strip(",.;:!?") for w in t.replace("{}", " ").lower().split()} - {""} for t in templates]
    return set.intersection(*words) if words else set()


def _replacements(records: Sequence[Mapping], names: Sequence[str]) -> dict[str, str]:
    """What an earlier removal put in its concept's place, by the forget prompt of each of its contexts."""
    words: dict[str, str] = {}
    for record in records:
        before, _, after = Context(record["context"]).fill("\0").partition("\0")
        pattern = re.escape(before.strip()) + r"\s*(.*?)\s*" + re.escape(after.strip())
        if match := re.fullmatch(pattern, record["target"]):
            for name in names:
                words[Context(record["context"]).fill(name)] = match.group(1)
    return words


def _replacement(replacements: Mapping[str, str], prompt: str) -> str | None:
    """The replacement where `prompt` names the concept: that of the longest of its forget prompts the prompt
    holds, else the one most of its contexts use."""
    found = [(len(filled), word) for filled, word in replacements.items() if filled.lower() in prompt.lower()]
    if found:
        return max(found)[1]
    counts = Counter(replacements.values())
    return counts.most_common(1)[0][0] if counts else None


def protect_groups(adapter: UnlearningAdapter) -> dict[str, list[str]]:
    """The protected prompt groups of a removal (anchors, neighbours, preserve or its groups), rebuilt from its
    metadata."""
    metadata = adapter.metadata
    contexts = [Context(record["context"]) for record in metadata["targets"]]
    implicit = set(metadata.get("implicit_prompts", []))  # erased with the concept, not protected
    emptied = [empty for c in contexts if (empty := c.fill("")) not in implicit]
    anchors = [""] + [record["target"] for record in metadata["targets"]] + emptied
    neighbors = [c.fill(record["neighbor"]) for record in metadata["protected_neighbors"] for c in contexts]
    if "preserve_groups" in metadata:  # `preserve` given as groups, in the order of their names: saving sorts the
        # keys, and a removal loaded from disk must replay as the same removal made in this process
        groups = sorted(metadata["preserve_groups"].items())
        preserve = {f"{PRESERVE_GROUP}{name}": list(prompts) for name, prompts in groups}
    elif "preserve" in metadata:
        preserve = {"preserve": list(metadata["preserve"])}
    else:  # made before `preserve` was recorded: what is neither an anchor nor a neighbour
        either = {*anchors, *neighbors}
        preserve = {"preserve": [p for p in metadata["protected_prompts"] if p not in either]}
    groups = {"anchors": anchors, "neighbors": neighbors, **preserve}
    if metadata.get("sibling_prompts"):  # distilled: the preserve prompts one word from a forget prompt
        groups[SIBLINGS] = list(metadata["sibling_prompts"])
    return {name: list(dict.fromkeys(prompts)) for name, prompts in groups.items() if prompts}


def constraints_of(adapter: UnlearningAdapter) -> Constraints:
    """The constraints a removal was solved from (its earlier removals aside: they come from the pipeline)."""
    return Constraints(forget=[forget_pairs(adapter)], protect=protect_groups(adapter))


def stored_statistics(adapter: UnlearningAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """`(forget moment, shift)` of a removal from its probes alone.

    The shift is recovered from the stored remap through the removal's own normal equations,
    `shift = G (F + lambda Q + reg)`: exact for an untruncated remap, and missing only the share of the edit
    the rank truncation dropped (`1 - figures["rank_energy"]`).
    """
    _require_closed_form(adapter)
    missing = [k for k in ("forget_moment", "protect_moment", "remap_up", "remap_down") if k not in adapter.probes]
    if missing:
        raise ResolveError(f"Removal {adapter.name!r} lacks the probes {missing}; it cannot be re-solved.")
    forget = adapter.probes["forget_moment"].double()
    protect = adapter.probes["protect_moment"].double()
    forget_moment = forget.T @ forget
    system = normal_system(forget_moment, protect.T @ protect, config_of(adapter))
    remap = adapter.probes["remap_up"].double() @ adapter.probes["remap_down"].double()
    return forget_moment, remap @ system


def joint_constraints(adapters: list[UnlearningAdapter]) -> Constraints:
    """One set of constraints for several removals at once.

    The mean of their objectives: each removal's forget term and each of its protected groups weigh `1 / k`, so
    every removal keeps the balance between erasing and protecting it was made with, and a joint merge of one
    removal gives it back. A protected prompt that names one of the removals' concepts or aliases as a word (a
    redacted removal: words that hash to its salted concept hash) is dropped, unless that removal protects it
    itself ("blue three" protects "a red three"): independently made removals protect each other's concepts as
    neighbours, and solved together, erasing wins.

    Where two removals map the same prompt to different targets ("seven" maps "a red seven" to "a red digit",
    "red" maps it to "a seven"), the solve averages the targets; a chain (one made on top of the other) composes
    them. A joint merge repairs a few independently made removals; continual removal is better served by the
    chain (see docs/benchmarks/continual_analysis.md).
    """
    joint = Constraints()
    erasers: list[tuple[set[str], Callable[[str], bool]]] = []  # (prompts it protects, does a prompt name it)
    for adapter in adapters:
        _require_closed_form(adapter)
        own = {p for prompts in protect_groups(adapter).values() for p in prompts}
        if adapter.concept is None:
            joint.statistics.append(stored_statistics(adapter))
            salt, digest = adapter.metadata.get("concept_salt", ""), adapter.metadata.get("concept_hash", "")
            erasers.append((own, lambda p, salt=salt, digest=digest: _names_hashed(p, salt, digest)))
        else:
            joint.forget.append(forget_pairs(adapter))
            pattern = names_pattern(names_of(adapter))
            erasers.append((own, lambda p, pattern=pattern: pattern.search(p) is not None))

    def erased(prompt: str) -> bool:
        return any(prompt not in own and names(prompt) for own, names in erasers)

    for index, adapter in enumerate(adapters):
        for group, prompts in protect_groups(adapter).items():
            kept = [p for p in prompts if not erased(p)]
            if kept:
                key = f"{index}:{group}"
                joint.protect[key], joint.weights[key] = kept, 1 / len(adapters)
    return joint


def names_pattern(names: Sequence[str]) -> re.Pattern:
    """A pattern matching any of `names` as whole words, case-insensitively (longest first)."""
    return _names_pattern(frozenset(n.lower() for n in names))


def asks_for_concept(
    names: Sequence[str], contexts: Sequence[Context], protected: Collection[str]
) -> Callable[[str], bool]:
    """A test of whether a prompt asks for the concept a removal erases.

    A prompt asks for it when it names the concept (or an alias). A removal that keeps its own names in other
    contexts erases a combination, not the word: "blue nine" protects "a yellow nine". Then a prompt asks for it
    only if it also has every word the removal's contexts share ("blue"; with varied contexts, no filler word
    is in all of them). An earlier removal's "a yellow nine, bold" does not ask for "blue nine" and must stay
    removed under it.

    Args:
        names (`Sequence[str]`): The concept and its aliases.
        contexts (`Sequence[Context]`): The removal's contexts.
        protected (`Collection[str]`): Every prompt the removal protects.

    Returns:
        `Callable[[str], bool]`: True for a prompt that asks for the concept.

    Example:
        ```py
        >>> contexts = [Context("a blue {}"), Context("the number {} in blue")]
        >>> asks = asks_for_concept(["nine"], contexts, ["a yellow nine", "a nine"])
        >>> asks("the blue nine, thin"), asks("a yellow nine, bold")
        (True, False)
        ```
    """
    mentions = names_pattern(names)
    marks: set[str] = set()  # a combination: the words every context of the removal has
    if contexts and any(mentions.search(p) for p in protected):
        marks = set.intersection(*(set(_words(c.fill(""))) for c in contexts))
    return lambda prompt: bool(mentions.search(prompt)) and marks <= set(_words(prompt))


def erased_by(previous: Sequence[UnlearningAdapter]) -> Callable[[str], bool]:
    """A test of whether loaded removals erased a prompt: one of their forget prompts, or one that asks for one of
    their concepts (`asks_for_concept`, from each removal's metadata).

    A removal's forget prompts are a sample: "the letter q in serif", protected by a later removal, asks for an
    earlier "serif Q" without being one of its prompts, and held to the untouched model it brings serif Q back
    (docs/benchmarks/continual_analysis.md).

    Example:
        ```py
        >>> erased = erased_by(loaded_adapters(pipe))  # after "serif Q"
        >>> erased("the blue letter q in serif"), erased("the letter q in sans")
        (True, False)
        ```
    """
    forgotten = {p for a in previous for p in a.metadata.get("forget_prompts", [])}
    asks = [asks_for_removal(a) for a in previous if names_of(a)]  # a redacted removal: its forget prompts only
    return lambda prompt: prompt in forgotten or any(ask(prompt) for ask in asks)


def asks_for_removal(adapter: UnlearningAdapter) -> Callable[[str], bool]:
    """`asks_for_concept` for a loaded removal, from its metadata (its names, contexts and protected prompts)."""
    contexts = [Context(record["context"]) for record in adapter.metadata.get("targets", [])]
    return asks_for_concept(names_of(adapter), contexts, adapter.metadata.get("protected_prompts", []))


def _words(prompt: str) -> list[str]:
    return re.findall(r"[\w'-]+", prompt.lower())


def _words_and_marks(prompt: str) -> tuple[str, ...]:
    """The words of a prompt and its punctuation: "a six in, thin" is not one word from "a six in green"."""
    return tuple(re.findall(r"[\w'-]+|[^\w\s]", prompt.lower()))


@lru_cache(maxsize=1024)
def _names_pattern(names: frozenset[str]) -> re.Pattern:  # built once per set of names: called per prompt
    by_length = sorted(names, key=lambda n: (-len(n), n))
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(n) for n in by_length) + r")(?!\w)", re.IGNORECASE)


def _names_hashed(prompt: str, salt: str, digest: str) -> bool:
    """Whether a run of up to four words of `prompt` hashes to a redacted removal's concept hash."""
    words = _words(prompt)
    spans = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, min(i + 5, len(words) + 1))}
    return any(concept_hash_of(salt, span) == digest for span in spans)


def concept_hash_of(salt: str, concept: str) -> str:
    """The salted hash a redacted removal records instead of its concept (see `erase(..., redact=True)`)."""
    return "sha256:" + hashlib.sha256((salt + concept.strip().lower()).encode()).hexdigest()


SIBLINGS = "siblings"
"""The protected group of a distilled removal's `preserve` prompts one word from a forget prompt (`one_word_apart`,
`DistillConfig(siblings=True)`); `metadata["sibling_prompts"]`."""


def one_word_apart(prompts: Sequence[str], forget: Sequence[str], names: Sequence[str]) -> list[str]:
    """The prompts of `prompts` that differ from a forget prompt in one word only, and not in the concept's.

    Erasing "bold blue six" (names "six", "6") maps "a blue six, bold" away, and "a blue six, thin", which a user
    keeps, shares every word with it but one: these are the kept prompts a removal moves most. With
    `DistillConfig(siblings=True)` distillation protects them once more as a group of their own; after that removal
    the digits model drew "a blue six, thin" in 8 images of 8 with it, in 1 of 8 without (docs/method.md#siblings).
    The closed form cannot tell them apart.

    Example:
        ```py
        >>> one_word_apart(["a blue six, thin", "a red six, thin", "a blue five, bold"], ["a blue six, bold"], ["six"])
        ['a blue six, thin']
        ```
    """
    concept_words = {w for name in names for w in _words_and_marks(name)}
    erased = {_words_and_marks(f) for f in forget}
    holes = {  # a prompt of one word shares nothing with another
        f[:i] + ("",) + f[i + 1 :] for f in erased if len(f) > 1 for i, w in enumerate(f) if w not in concept_words
    }
    found = []
    for prompt in prompts:
        words = _words_and_marks(prompt)
        if words not in erased and any(words[:i] + ("",) + words[i + 1 :] in holes for i in range(len(words))):
            found.append(prompt)
    return list(dict.fromkeys(found))


PRESERVE_GROUP = "preserve/"
"""Prefix of the protected groups made from a `preserve` mapping (`"preserve/background"`)."""


def preserve_groups(preserve: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The protected groups of erase's `preserve`: one group `"preserve"`, or one `"preserve/<name>"` per entry
    of a mapping.

    Example:
        ```py
        >>> preserve_groups({"related": ["a red three"], "background": ["green two", "a thin six"]})
        {'preserve/related': ['a red three'], 'preserve/background': ['green two', 'a thin six']}
        ```
    """
    if isinstance(preserve, str):
        raise InvalidTypeError(f"`preserve` takes a list of prompts (or a dict of lists), got the text {preserve!r}.")
    if not isinstance(preserve, Mapping):
        return {"preserve": list(preserve)}
    for name, prompts in preserve.items():
        if not isinstance(name, str) or isinstance(prompts, str):
            raise InvalidTypeError(
                f"A `preserve` mapping takes group names to lists of prompts, got {name!r}: {prompts!r}."
            )
    return {f"{PRESERVE_GROUP}{name}": list(prompts) for name, prompts in preserve.items()}
