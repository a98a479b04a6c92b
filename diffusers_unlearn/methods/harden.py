"""Hardened closed-form removals: RECE-like rounds that erase the embeddings that still bring the concept back.

A closed-form removal is a linear remap of the text embedding, `c -> M c` with `M = I + G` (see
`methods/closed_form.py`). It sends the forget prompts' embeddings `c_f` to their targets, but `M` is invertible:
some other embedding `c*` still gives the edited layers the concept's original keys and values, `W M c* ~= W c_f`.
An attacker who optimises the text embedding finds it (the embedding attack of `diffusers_unlearn.attacks`).

Each round (after RECE, "Reliable and Efficient Concept Erasure", Gong et al., 2024) derives that embedding in
closed form for every forget token vector, over all edited layers at once through their Gram matrix
`Gram = sum_l W_l^T W_l`:

    c* = argmin_c (M c - c_f)^T Gram (M c - c_f) + rho * ||c||^2 = (M^T Gram M + rho I)^-1 M^T Gram c_f

adds `(c*, target of c_f)` to the forget set, and solves again, protected set unchanged. The ridge `rho`
(relative to the mean eigenvalue of `M^T Gram M`) keeps `c*` among embeddings of a natural size, as in RECE.
A round costs one `d x d` solve: a hardened removal takes a few rounds more than a plain one, seconds on a CPU.

`HardenConfig` serves both methods. A distilled removal is no remap of the embedding: its preimage has no closed
form, and `method="distill"` hardens by adversarial training instead (in `methods/distill.py`, which imports
nothing from here at run time: this module's solve loop needs `constraints`, which imports `methods`). At `rounds`
evenly spaced training steps it takes `prompts` forget prompts, optimises their text embeddings (`iterations` Adam
steps, as the embedding attack of `diffusers_unlearn.attacks` does) so that the student's noise predictions match
the teacher's for the forget prompt, and adds the results to the forget set with the goal of the prompt each
started from.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers import DiffusionPipeline

from ..constraints import Constraints, Solution, solve
from ..distance import PromptBank
from ..errors import InvalidArgumentError
from .closed_form import ClosedFormConfig, forget_statistics

logger = logging.getLogger(__name__)


@dataclass
class HardenConfig:
    """Settings of `erase(..., harden=HardenConfig(...))`, for either method; each field says which it applies to.

    Args:
        rounds (`int`): Both methods. Closed form: rounds of derive-and-erase after the plain solve (one `d x d`
            solve each). Distill: rounds of derive-and-add during training, at evenly spaced steps (with 500
            steps and 3 rounds: at steps 125, 250 and 375), plus one derivation after training that only measures.
            0: no embeddings derived, only the `phrasings` and `prefixes` prompts trained on (the cost of a plain
            removal with a larger forget set).
        ridge (`float`): Closed form only. RECE's regulariser of the derived embedding, relative to the mean
            eigenvalue of `M^T Gram M`. Smaller finds embeddings that reproduce the concept more exactly, of any
            size.
        weight (`float`): Both methods. Weight of the derived embeddings' forget term against the original forget
            prompts'.
        prompts (`int`): Distill only. Forget prompts an embedding is derived from in each round (drawn at
            random, seeded): the forget set grows by at most `rounds * prompts` embeddings.
        iterations (`int`): Distill only. Adam steps of each derivation.
        learning_rate (`float`): Distill only. Adam learning rate of the derivation, relative to the embeddings'
            RMS.
        samples (`int`): Distill only. Noisy latents (from the forget prompts' teacher trajectories) the
            derivation matches the teacher on; every step uses all of them.
        phrasings (`int`): Both methods. Per forget prompt, this many more phrasings of it join the forget set
            with its target: its words in another order, a comma between some (seeded, [`rephrased`]), what a
            paraphrase attack writes. 0: the forget prompts only. Measured (docs/benchmarks/robustness.md, 2
            phrasings, distill): on glyphs the paraphrase attack's ASR 10% -> 2%; on digits, where it was already
            1%, the embedding attack's 12% -> 88%.
        prefixes (`int`): Both methods. Per forget prompt, this many more copies of it with `prefix_tokens` random
            vocabulary tokens in front (never the concept's own, nor a prefix that asks for an earlier removal's
            concept; seeded, [`prefixed`]) join the forget set, with the same tokens in front of its target: what a
            discrete token search writes. 0: none.
        prefix_tokens (`int`): Tokens of each prefix (the token search attack prepends 5); words, with
            `prefix_words`; input vectors, with `derive="prefix"`.
        prefix_words (`tuple[str, ...]`): Words the prefixes are drawn from instead of the whole vocabulary (the
            concept's own names left out): the words a token search puts in front where it succeeds. On glyphs
            it writes other styles' words (*letter roman letter slanted the red letter q in serif*), which random
            tokens of the whole vocabulary seldom are. Or the other concepts' names: a prompt naming two concepts
            is drawn as one, and a later removal of that one uncovers the other ("a blue three a red seven"); on
            digits, every removal of a chain hardened with the other digits' words and numerals, held by the
            later ones (`DistillConfig(earlier_hardened=True)`), keeps the token search at 0-2.5% after 10 and 25
            removals; with two copies of each prompt (`prefixes=2`) on every removal it let the earlier "blue
            three" back, with one on the later removals it does not (docs/erasing.md#hardened-removals). Empty: the
            whole vocabulary.
        derive (`str`): Distill only. What each of the `rounds` derives: `"embedding"`, the whole text embedding
            of a forget prompt, every token vector free (the embedding attack's space); `"prefix"`, `prefix_tokens`
            input vectors in front of it, started at random vocabulary tokens and read through the text encoder
            (the token search's space, made continuous; Stable Diffusion 1.x / 2.x only). Measured on glyphs
            (docs/erasing.md#hardened-removals, *serif Q*'s first removal with two prefixed copies, 3 rounds, the
            token search on 20 seeds): `"prefix"` leaves the search 3.8% of images (2.5% with `iterations=200,
            samples=16`), `"embedding"` 10.6%, no rounds 9.4%; on digits `"embedding"` lowers the embedding
            attack. On every removal of a chain either costs retention: give it to the removal that must hold.

    Example:
        ```py
        >>> import diffusers_unlearn as du
        >>> harden = du.HardenConfig(rounds=2, prompts=4, iterations=20)  # a cheaper distill hardening
        >>> against_search = du.HardenConfig(prefixes=2, derive="prefix")  # words and free vectors in front
        ```
    """

    rounds: int = 3
    ridge: float = 0.01
    weight: float = 1.0
    prompts: int = 8
    iterations: int = 100
    learning_rate: float = 5e-2
    samples: int = 4
    phrasings: int = 0
    prefixes: int = 0
    prefix_tokens: int = 5
    prefix_words: tuple[str, ...] = ()
    derive: Literal["embedding", "prefix"] = "embedding"

    def __post_init__(self):
        if isinstance(self.prefix_words, str):
            raise InvalidArgumentError(f"prefix_words takes a list of words, got the string {self.prefix_words!r}.")
        self.prefix_words = tuple(self.prefix_words)
        if self.prefix_words and not self.prefixes:
            raise InvalidArgumentError(
                f"prefix_words={self.prefix_words!r} are drawn for the prefixes: set prefixes >= 1 as well."
            )
        if self.derive not in ("embedding", "prefix"):
            raise InvalidArgumentError(f"Unknown derive {self.derive!r}; use 'embedding' or 'prefix'.")
        if self.rounds < 0 or self.ridge <= 0 or self.weight <= 0:
            raise InvalidArgumentError(
                f"rounds must be >= 0, ridge and weight > 0, got {self.rounds}, {self.ridge}, {self.weight}."
            )
        if not (self.rounds or self.phrasings or self.prefixes):
            raise InvalidArgumentError(
                "rounds=0 derives no embeddings: give phrasings or prefixes to harden with, or rounds >= 1."
            )
        if self.phrasings < 0 or self.prefixes < 0 or self.prefix_tokens < 1:
            raise InvalidArgumentError(
                f"phrasings and prefixes must be >= 0 and prefix_tokens >= 1, got {self.phrasings}, "
                f"{self.prefixes}, {self.prefix_tokens}."
            )
        if self.prompts < 1 or self.iterations < 1 or self.samples < 1 or not self.learning_rate > 0:
            raise InvalidArgumentError(
                "prompts, iterations and samples must be >= 1 and learning_rate > 0, got "
                f"{self.prompts}, {self.iterations}, {self.samples}, {self.learning_rate}."
            )


def rephrased(
    pairs: Sequence[tuple[str, str]], count: int, tokenizer, exclude: Collection[str] = (), seed: int = 0
) -> list[tuple[str, str]]:
    """`count` other phrasings of each forget prompt, each paired with its prompt's target.

    A phrasing is the prompt's words in a random order with a comma after some of them (each gap 30%), seeded:
    a removal trained on them covers word orders its templates never used. Phrasings that are a forget prompt
    already, in `exclude` (the protected prompts) or longer than the tokenizer reads are left out, so a short
    prompt may get fewer than `count`.

    Example:
        ```py
        >>> from transformers import CLIPTokenizer
        >>> from diffusers_unlearn import digits
        >>> from diffusers_unlearn.methods.harden import rephrased
        >>> tokenizer = CLIPTokenizer.from_pretrained(digits.MODEL_DIR / "tokenizer")
        >>> rephrased([("a red seven", "a red one")], 2, tokenizer)
        [('red, seven a', 'a red one'), ('red seven a', 'a red one')]
        ```
    """
    rng = random.Random(seed)
    taken = {forget for forget, _ in pairs} | set(exclude)
    out = []
    for forget, target in pairs:
        words = forget.replace(",", " ").split()
        made = 0
        for _ in range(8 * count):  # a few draws each: a two-word prompt has few other orders
            if made == count:
                break
            order = rng.sample(words, len(words))
            text = order[0] + "".join(("," if rng.random() < 0.3 else "") + " " + word for word in order[1:])
            if text in taken or len(tokenizer(text).input_ids) > tokenizer.model_max_length:
                continue
            taken.add(text)
            out.append((text, target))
            made += 1
    return out


def prefixed(
    pairs: Sequence[tuple[str, str]],
    count: int,
    tokenizer,
    names: Collection[str],
    tokens: int = 5,
    exclude: Collection[str] = (),
    seed: int = 0,
    words: Sequence[str] = (),
    avoid: Callable[[str], bool] | None = None,
    asks: Callable[[str], bool] | None = None,
) -> list[tuple[str, str]]:
    """`count` copies of each forget prompt with `tokens` random vocabulary tokens (or `words`) in front, each
    paired with its target behind the same tokens.

    A discrete token search (UnlearnDiffAtk, the `token_search` attack) finds a few tokens that, put in front of
    the forget prompt, bring the concept back; a removal trained on random prefixes holds for prefixes it never
    saw. The tokens are drawn from the whole vocabulary but the special tokens and the concept's own (`names`),
    seeded, and written apart; with `words`, from those words instead, but the words of the concept's names.
    Where the prompt or its target would grow longer than the tokenizer reads, the prefix is cut to fit. A
    prefixed prompt that is a forget prompt already or in `exclude` (the protected prompts) is left out. With
    `avoid` (`erased_by` the earlier removals), a prefix that makes the prompt or its target ask for an earlier
    removal's concept is drawn again (up to 8 times): "blue thin a red three" -> "blue thin a green three", erasing
    "red" after "blue three", would train the chain to draw blue threes again. With `asks` (`asks_for_concept` of
    this removal), so is one that makes the target ask for the concept: "q the red letter r in serif", erasing
    serif Q, would train toward a serif q.

    Example (the digits tokenizer, as in [`rephrased`]'s):
        ```py
        >>> prefixed([("a red seven", "a red one")], 1, tokenizer, ["seven"], tokens=3)
        [('se s h a red seven', 'se s h a red one')]
        ```
    """
    generator = torch.Generator().manual_seed(seed)
    if words:
        own = {word for name in names for word in (name, *name.split())}
        pool = [word for word in words if word not in own]
        if not pool:
            raise InvalidArgumentError(f"No prefix word left once the concept's own {sorted(names)} are taken out.")

        def piece(index: int) -> str:
            return pool[index]
    else:
        banned = set(tokenizer.all_special_ids)
        for name in names:
            banned.update(tokenizer(name, add_special_tokens=False).input_ids)
        pool = [i for i in range(len(tokenizer)) if i not in banned]

        def piece(index: int) -> str:
            return tokenizer.decode([pool[index]]).strip()

    taken = {forget for forget, _ in pairs} | set(exclude)

    def fits(text: str) -> bool:
        return len(tokenizer(text, verbose=False).input_ids) <= tokenizer.model_max_length

    def draw(forget: str, target: str) -> str:
        pieces = [piece(i) for i in torch.randint(len(pool), (tokens,), generator=generator).tolist()]
        while pieces and not (fits(f"{' '.join(pieces)} {forget}") and fits(f"{' '.join(pieces)} {target}")):
            pieces.pop()  # a long prompt gets fewer tokens in front
        return " ".join(pieces)

    def reopens(prefix: str, forget: str, target: str) -> bool:
        earlier = avoid is not None and (avoid(f"{prefix} {forget}") or avoid(f"{prefix} {target}"))
        return earlier or (asks is not None and asks(f"{prefix} {target}"))

    out = []
    for forget, target in pairs:
        for _ in range(count):
            for _ in range(9):  # a prefix that asks for an erased concept is drawn again, 8 times at most
                prefix = draw(forget, target)
                if not reopens(prefix, forget, target):
                    break
            else:
                continue
            text = f"{prefix} {forget}"
            if prefix and text not in taken:
                taken.add(text)
                out.append((text, f"{prefix} {target}"))
    return out


def derive_embeddings(remap: torch.Tensor, gram: torch.Tensor, forget: torch.Tensor, ridge: float) -> torch.Tensor:
    """The embeddings that give the edited layers the forget embeddings' original outputs (RECE's closed form).

    Args:
        remap (`torch.Tensor`): `(d, d)` the edit `G` (the layers read `(I + G) c`).
        gram (`torch.Tensor`): `(d, d)` `sum_l W_l^T W_l` over the edited layers.
        forget (`torch.Tensor`): `(n, d)` forget token vectors.
        ridge (`float`): Regulariser, relative to the mean eigenvalue of `M^T Gram M`.

    Returns:
        `(n, d)` float64 derived embeddings.
    """
    d = remap.shape[0]
    mapped = torch.eye(d, dtype=torch.float64) + remap.double()
    system = mapped.T @ gram.double() @ mapped
    system = system + ridge * torch.trace(system) / d * torch.eye(d, dtype=torch.float64)
    right = mapped.T @ gram.double() @ forget.double().T
    return torch.linalg.solve(system, right).T


def harden_solve(
    pipe: DiffusionPipeline,
    constraints: Constraints,
    config: ClosedFormConfig,
    harden: HardenConfig,
    *,
    bank: PromptBank,
    gram: torch.Tensor,
    **solve_kwargs,
) -> tuple[Solution, dict]:
    """[`solve`] the constraints, then `harden.rounds` rounds of derive-and-erase.

    The derived embeddings of all rounds form one more forget member, weighted `harden.weight` against the
    original forget prompts (the protection weight is rescaled so the balance between erasing the original
    prompts and protecting is the plain removal's).

    Args:
        pipe (`DiffusionPipeline`): The model the removal is made for (loaded removals applied).
        constraints ([`Constraints`]): The plain removal's constraints (one forget member).
        config ([`ClosedFormConfig`]): The solve's weights and rank.
        harden ([`HardenConfig`]): Rounds, ridge, weight.
        bank ([`PromptBank`]): Embeddings of the forget prompts.
        gram (`torch.Tensor`): `sum_l W_l^T W_l` of the edited layers (`projection_gram`).
        **solve_kwargs: Passed to [`solve`] (`protect_factors`, `weights`).

    Returns:
        `(Solution, dict)`: the hardened solution and figures (`harden_rounds`, per round the derived
        embeddings' relative residual under the edit before it, `harden_seconds`).
    """
    started = time.perf_counter()
    solution = solve(pipe, constraints, config, bank=bank, gram=gram, **solve_kwargs)
    pairs = [pair for member in constraints.forget for pair in member]
    fixed = bank.prefix_set(constraints.protected)
    aligned = [bank.aligned(f, t, fixed=fixed) for f, t in pairs]
    forget = torch.cat([f for f, _ in aligned]).double()
    targets = torch.cat([t for _, t in aligned]).double()
    # Solving with k+1 forget members halves each member's weight: halve the protection too, and weigh the derived
    # member `weight` against the original forget prompts.
    scaled = dataclasses.replace(config, lambda_protect=config.lambda_protect / 2)
    derived_rows, derived_targets, leaks = [], [], []
    for _ in range(harden.rounds):
        edit = (solution.remap.up @ solution.remap.down).double()
        derived = derive_embeddings(edit, gram, forget, harden.ridge)
        leaks.append(_leak(edit, gram, derived, forget, targets))
        derived_rows.append(derived)
        derived_targets.append(targets)
        moment, shift = forget_statistics(torch.cat(derived_rows), torch.cat(derived_targets))
        hardened = dataclasses.replace(
            constraints, statistics=[*constraints.statistics, (harden.weight * moment, harden.weight * shift)]
        )
        solution = solve(pipe, hardened, scaled, bank=bank, gram=gram, **solve_kwargs)
    edit = (solution.remap.up @ solution.remap.down).double()
    final = derive_embeddings(edit, gram, forget, harden.ridge)
    figures = {
        "harden_rounds": harden.rounds,
        "harden_leak": [round(v, 4) for v in [*leaks, _leak(edit, gram, final, forget, targets)]],
        "harden_seconds": round(time.perf_counter() - started, 3),
    }
    logger.info(
        "Hardened in %d rounds (%.2fs): leak %s", harden.rounds, figures["harden_seconds"], figures["harden_leak"]
    )
    return solution, figures


def _leak(edit, gram, derived, forget, targets) -> float:
    """How close the edited layers' outputs on the derived embeddings come back to the concept's original outputs,
    relative to how far the edit moved them: `||W M c* - W c_f|| / ||W c_m - W c_f||` (1: the edit holds, 0: the
    concept is fully recovered)."""
    mapped = derived @ (torch.eye(edit.shape[0], dtype=torch.float64) + edit).T
    top = (((mapped - forget) @ gram) * (mapped - forget)).sum()
    bottom = (((targets - forget) @ gram) * (targets - forget)).sum().clamp_min(1e-30)
    return float((top / bottom).sqrt())
