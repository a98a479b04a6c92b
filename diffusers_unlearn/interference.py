"""Interference between removals, measured where they act: on each other's forget and protected inputs.

For removals `i` and `j` (weight changes `D_i`, `D_j` on the same layers), with `P_i` the stored factors of
`i`'s forget-input second moment and `Q_i` those of its protected inputs (`unlearning_probes.safetensors`):

- `undo[i, j]`: the share of `i`'s own edit on its forget inputs that `j` pushes back,
  `max(0, -<D_j P_i, D_i P_i>) / ||D_i P_i||^2` (1 = `j` fully cancels `i`'s removal);
- `shift[i, j]`: how much `j` moves `i`'s forget inputs at all, `||D_j P_i|| / ||D_i P_i||`: back (undo), beyond
  (two removals of overlapping concepts push the same prompts twice) or sideways;
- `collateral[i, j]`: how much `j` moves `i`'s protected inputs relative to the untouched outputs,
  `||D_j Q_i|| / ||W Q_i||`.

All sums run over the edited layers; no image is generated, so a check of 100 removals takes seconds. The report
also names every removal that barely moved its own concept when it was made (`erase`'s own check, recorded in its
figures as `concept_shift` and `target_reach`): such a member fails the verdict whatever the others do. A pair
where `j` is among `i`'s parents (`i` was made on top of `j`) counts 0: `i` was solved knowing `j`.
Removals without probes (made by other tools) fall back to their LoRA input subspace (rows of `A`), and the
report says the figure is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from .adapter import UnlearningAdapter
from .errors import MissingDependencyError
from .families import family_of
from .layers import base_linear
from .targets import weakness


@dataclass
class InterferenceReport:
    """Pairwise interference of a stack's removals; row `i` is the removal affected, column `j` the one acting.

    Attributes:
        names (`list[str]`): Removals, in stack order.
        undo, shift, collateral (`torch.Tensor`): `(n, n)` matrices (diagonal, and removals acting on one made
            on top of them: 0), see the module docstring.
        stack_undo, stack_shift, stack_collateral (`torch.Tensor`): `(n,)`: the same for all other removals
            together.
        undo_threshold, shift_threshold, collateral_threshold (`float`): The limits the verdict uses.
        approximate (`list[str]`): Removals whose probes were missing (subspace estimate used).
        weak (`dict[str, str]`): Removals that barely moved their own concept when they were made, with why (their
            recorded `concept_shift` below `targets.WEAK_SHIFT`, or without neighbours their `target_reach` below
            `targets.WEAK_REACH`): they may erase nothing, whatever the rest does.
    """

    names: list[str]
    undo: torch.Tensor
    shift: torch.Tensor
    collateral: torch.Tensor
    stack_undo: torch.Tensor
    stack_shift: torch.Tensor
    stack_collateral: torch.Tensor
    undo_threshold: float
    shift_threshold: float
    collateral_threshold: float
    approximate: list[str] = field(default_factory=list)
    weak: dict[str, str] = field(default_factory=dict)

    @property
    def matrix(self) -> torch.Tensor:
        """The `undo` matrix: the headline figure."""
        return self.undo

    @property
    def passed(self) -> bool:
        """No weak removal, no removal undone or its forget inputs moved beyond the thresholds, no protected set
        moved beyond `collateral_threshold`."""
        if not self.names:
            return True
        return bool(
            not self.weak
            and self.stack_undo.max() <= self.undo_threshold
            and self.stack_shift.max() <= self.shift_threshold
            and self.stack_collateral.max() <= self.collateral_threshold
        )

    def failures(self) -> list[str]:
        """One line per removal that the rest of the stack undoes or damages."""
        lines = []
        for i, name in enumerate(self.names):
            if name in self.weak:
                lines.append(f"{name} barely moved its own concept when made: its noise predictions {self.weak[name]}")
            if self.stack_undo[i] > self.undo_threshold:
                j = int(self.undo[i].argmax())
                lines.append(f"{name} is {100 * self.stack_undo[i]:.0f}% undone (most by {self.names[j]})")
            if self.stack_shift[i] > self.shift_threshold:
                j = int(self.shift[i].argmax())
                lines.append(
                    f"{name}'s forget prompts move {100 * self.stack_shift[i]:.0f}% of its own edit "
                    f"(most by {self.names[j]})"
                )
            if self.stack_collateral[i] > self.collateral_threshold:
                j = int(self.collateral[i].argmax())
                lines.append(
                    f"{name}'s protected prompts move {100 * self.stack_collateral[i]:.1f}% (most by {self.names[j]})"
                )
        return lines

    def __str__(self) -> str:
        width = max((len(n) for n in self.names), default=0) + 2
        column = max(12, width)  # full names: "no-blue-three" and "no-blue-thirteen" must not read alike
        header = " " * width + "".join(f"{n:>{column}}" for n in self.names) + f"{'stack':>{column}}"
        lines = []
        for title, matrix, total in (("undo", self.undo, self.stack_undo), ("shift", self.shift, self.stack_shift)):
            lines += [f"{title}[i, j] (row: removal affected, column: removal acting)", header]
            for i, name in enumerate(self.names):
                cells = "".join(f"{float(v):{column}.3f}" for v in matrix[i]) + f"{float(total[i]):{column}.3f}"
                lines.append(f"{name:<{width}}{cells}")
        lines.append(f"collateral (stack on each): {[round(float(v), 4) for v in self.stack_collateral]}")
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures())
        lines.append(
            f"verdict: {verdict} (undo <= {self.undo_threshold}, shift <= {self.shift_threshold}, "
            f"collateral <= {self.collateral_threshold})"
            + (f"; approximate for {self.approximate}" if self.approximate else "")
        )
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Writes a heatmap PNG of `undo`, `shift` and `collateral` (needs matplotlib, in the `dev` extra).

        The three panels share one colour scale (one colour bar, where each threshold is marked), and every cell
        above its panel's threshold is outlined, so what fails the verdict is visible at a glance.
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "report.plot needs matplotlib: pip install 'diffusers-unlearn[dev]'"
            ) from error
        from matplotlib.patches import Rectangle

        panels = [
            ("undo", self.undo, self.undo_threshold),
            ("shift", self.shift, self.shift_threshold),
            ("collateral", self.collateral, self.collateral_threshold),
        ]
        top = max([1.0, *(float(values.max()) for _, values, _ in panels if values.numel()), *(t for *_, t in panels)])
        figure, axes = plt.subplots(
            1, 3, figsize=(7 + 1.2 * len(self.names), 3.2 + 0.35 * len(self.names)), layout="constrained"
        )
        for axis, (title, values, threshold) in zip(axes, panels, strict=True):
            image = axis.imshow(values.numpy(), cmap="magma_r", vmin=0, vmax=top)
            axis.set_title(f"{title} (limit {threshold:g}; outlined: above)", fontsize=9)
            axis.set_xticks(range(len(self.names)), self.names, rotation=60, ha="right", fontsize=7)
            axis.set_yticks(range(len(self.names)), self.names, fontsize=7)
            for i, j in (values > threshold).nonzero().tolist():
                axis.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:cyan", linewidth=2.5))
        bar = figure.colorbar(image, ax=list(axes), fraction=0.03)
        figure.suptitle(
            "Interference (row: removal affected, column: removal acting; one colour scale). undo, shift: relative "
            "to the affected removal's own edit; collateral: to its untouched protected outputs.",
            fontsize=8,
        )
        limits: dict[float, list[str]] = {}
        for title, _, threshold in panels:
            limits.setdefault(threshold, []).append(title)
        for threshold, titles in limits.items():  # the thresholds on the shared scale, named
            bar.ax.axhline(threshold, color="tab:cyan", linewidth=2.5)
            bar.ax.text(0.5, threshold, " / ".join(titles) + " limit", transform=bar.ax.get_yaxis_transform(),
                        rotation=90, fontsize=6, ha="center", va="bottom", color="black")  # fmt: skip
        figure.savefig(path, dpi=110)
        plt.close(figure)


def _probe(adapter: UnlearningAdapter, key: str) -> tuple[torch.Tensor, bool]:
    """`(rows, exact)`: the stored moment factor, or the LoRA input subspace when it is missing."""
    if key in adapter.probes:
        return adapter.probes[key].double(), True
    a, _ = adapter.factors(adapter.layer_names[0])
    return a.double() / a.double().norm(dim=1, keepdim=True).clamp_min(1e-12), False


def _parents(adapter: UnlearningAdapter) -> set[str]:
    return {p.get("adapter_id") or p.get("name") for p in adapter.metadata.get("parents", [])}


def check_interference(
    pipe: DiffusionPipeline,
    adapters: list[UnlearningAdapter],
    *,
    undo_threshold: float = 0.05,
    shift_threshold: float = 0.4,
    collateral_threshold: float = 0.5,
) -> InterferenceReport:
    """Measures how the removals act on each other's forget and protected inputs (see the module docstring).

    A removal made on top of another (the other is among its `parents`) was solved knowing it: that pair is
    not interference and counts 0. The other way round, a removal distilled on top of another measured in training
    how much of the other's effect on its forget prompts it takes back (`figures["earlier_undone"]`, through every
    layer it trains, where these probes see the text-reading layers only): `undo` counts the larger of the two.

    Args:
        pipe (`DiffusionPipeline`): The base pipeline (its edited layers give the untouched outputs).
        adapters (`list[UnlearningAdapter]`): The removals, in stack order.
        undo_threshold (`float`, defaults to 0.05): Largest share of a removal's edit the rest may cancel (summed
            along the stack in `stack_undo`).
        shift_threshold (`float`, defaults to 0.4): Largest move of a removal's forget inputs by the rest,
            relative to its own edit (back, beyond or sideways).
        collateral_threshold (`float`, defaults to 0.5): Largest relative move of a removal's protected inputs.

    The defaults are calibrated on the digits model (`docs/stacks.md`): independently made "seven" and "red seven"
    give shifts of 0.71 and 1.13; disjoint or chained pairs 0.09-0.16. Collateral also counts moves the acting
    removal intends (one removal protects "three" as a neighbour, another erases it): 0.19 for such a pair,
    0.33 for "seven" in the chain seven, blue three, five, 0.38 for "seven" then "yellow"; the limit sits above.
    A removal that erases an earlier one's target (seven mapped to fours, then four) gives 0.52: flagged.
    Along measured chains (`docs/benchmarks/check_calibration.md`) shift 0.4 is the loosest limit that fails at
    least one removal before general retention drops below 95% on every chain measured at each step (digits 25
    removals, two ways; glyphs 12): 6, 5 and 1 removals ahead; 0.5 failed on the glyphs chain only at the damaged
    step. The undo limit 0.05 is the loosest that fails at least one removal before an earlier removal's images come
    back (10 points over its own step) on every distilled digits chain measured (1-11 removals ahead; at 0.2 it
    was late on all six). A removal's damage to its own neighbours (glyphs: related retention 73% after the first)
    is no interference, and no threshold here sees it.

    Returns:
        [`InterferenceReport`]
    """
    family = family_of(pipe)
    base = getattr(pipe, family.denoiser)
    n = len(adapters)
    forget = [_probe(a, "forget_moment") for a in adapters]
    protect = [_probe(a, "protect_moment") for a in adapters]
    reads_text = [layer for a in adapters for layer in a.layer_names if layer.endswith(family.edited_suffixes)]
    # measured where the text enters (attn2.to_k / to_v); edits elsewhere (a distilled removal's self-attention
    # or feed-forward layers) are not seen by the probes: such removals are reported approximate
    elsewhere = [
        any(not name.endswith(family.edited_suffixes) and name != family.pooled_layer for name in a.layer_names)
        for a in adapters
    ]
    approximate = [
        a.name for a, (_, exact), other in zip(adapters, forget, elsewhere, strict=True) if not exact or other
    ]
    width = forget[0][0].shape[1] if n else 0

    # Every pair's inner products in one go: with X = A_cat P^T (stacked LoRA inputs of all removals on the
    # probe rows P) and S = B_cat^T B_cat summed over layers sharing A_cat, <D_j P^T, D_k P^T> is the (j, k)
    # block sum of S * (X X^T). Closed-form removals share A across their K/V layers: one group, a few matmuls.
    offsets = [0]
    for adapter in adapters:
        offsets.append(offsets[-1] + adapter.rank)
    blocks = torch.zeros(n, offsets[-1], dtype=torch.float64)
    for k in range(n):
        blocks[k, offsets[k] : offsets[k + 1]] = 1
    groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (A_cat, sum of B_cat^T B_cat)
    gram = torch.zeros(width, width, dtype=torch.float64)
    for layer in dict.fromkeys(reads_text):
        weight = base_linear(base.get_submodule(layer)).weight.detach().double().cpu()
        if weight.shape[1] != width:
            continue
        gram += weight.T @ weight
        a_cat = torch.zeros(offsets[-1], width, dtype=torch.float64)
        b_cat = torch.zeros(weight.shape[0], offsets[-1], dtype=torch.float64)
        for k, adapter in enumerate(adapters):
            if layer in adapter.layer_names:
                a, b = adapter.factors(layer)
                a_cat[offsets[k] : offsets[k + 1]] = a.double()
                b_cat[:, offsets[k] : offsets[k + 1]] = b.double()
        s = b_cat.T @ b_cat
        for index, (shared, total) in enumerate(groups):
            if torch.equal(shared, a_cat):
                groups[index] = (shared, total + s)
                break
        else:
            groups.append((a_cat, s))

    def inner(rows: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(n, n, dtype=torch.float64)
        for a_cat, s in groups:
            x = a_cat @ rows.T
            total += blocks @ (s * (x @ x.T)) @ blocks.T
        return total

    undo, shift, collateral = (torch.zeros(n, n) for _ in range(3))
    stack_undo, stack_shift, stack_collateral = (torch.zeros(n) for _ in range(3))
    ids = [a.metadata.get("adapter_id") or a.name for a in adapters]
    for i, adapter in enumerate(adapters):
        acting = [j for j in range(n) if j != i and ids[j] not in _parents(adapter)]
        on_forget, on_protect = inner(forget[i][0]), inner(protect[i][0])
        own = on_forget[i, i].clamp_min(1e-30)
        untouched = ((protect[i][0] @ gram) * protect[i][0]).sum().clamp_min(1e-30)
        measured = 0.0  # what later distilled removals measured they take back of this one
        for j in acting:
            undo[i, j] = float((-on_forget[j, i]).clamp_min(0) / own)
            taken = (adapters[j].metadata.get("figures", {}).get("earlier_undone") or {}).get(ids[i])
            if taken is not None:
                undo[i, j] = max(float(undo[i, j]), float(taken))
                measured += max(float(taken), 0.0)
            shift[i, j] = float((on_forget[j, j].clamp_min(0) / own).sqrt())
            collateral[i, j] = float((on_protect[j, j].clamp_min(0) / untouched).sqrt())
        if acting:
            rest = torch.tensor(acting)
            stack_undo[i] = max(float((-on_forget[rest, i].sum()).clamp_min(0) / own), measured)
            stack_shift[i] = float((on_forget[rest][:, rest].sum().clamp_min(0) / own).sqrt())
            stack_collateral[i] = float((on_protect[rest][:, rest].sum().clamp_min(0) / untouched).sqrt())
    return InterferenceReport(
        names=[a.name for a in adapters],
        undo=undo,
        shift=shift,
        collateral=collateral,
        stack_undo=stack_undo,
        stack_shift=stack_shift,
        stack_collateral=stack_collateral,
        undo_threshold=undo_threshold,
        shift_threshold=shift_threshold,
        collateral_threshold=collateral_threshold,
        approximate=approximate,
        weak={a.name: reason for a in adapters if (reason := weakness(a.metadata.get("figures", {})))},
    )


def merge_deviation(adapters: list[UnlearningAdapter], merged: UnlearningAdapter) -> torch.Tensor:
    """How faithfully one removal reproduces a stack's members on their forget inputs, `(n,)` float.

    For member `i` with forget-input factor `P_i`: `||(D_merged - D_ref) P_i|| / ||D_i P_i||`, where `D_ref` is
    `i`'s own edit plus its parents' (the model `i` was made on, plus `i`). 0: the member's removal is reproduced
    exactly. The plain sum of two independently made removals of overlapping concepts pushes the shared prompts
    twice and reaches ~1; a joint re-solve brings it down.

    Example:
        ```py
        >>> merge_deviation(list(stack), stack.merge("concat"))  # vs stack.merge("joint", pipe=pipe)
        ```
    """
    ids = {a.metadata.get("adapter_id") or a.name: a for a in adapters}
    out = torch.zeros(len(adapters))
    for i, adapter in enumerate(adapters):
        rows = _probe(adapter, "forget_moment")[0]
        reference = [adapter] + [ids[p] for p in _parents(adapter) if p in ids]
        moved = own = 0.0
        for layer in adapter.layer_names:
            if rows.shape[1] != adapter.factors(layer)[0].shape[1]:
                continue  # the pooled layer of SDXL reads another space
            target = sum(a.delta(layer).double() for a in reference if layer in a.layer_names)
            actual = merged.delta(layer).double() if layer in merged.layer_names else torch.zeros_like(target)
            moved += float(((actual - target) @ rows.T).square().sum())
            own += float((adapter.delta(layer).double() @ rows.T).square().sum())
        out[i] = (moved / max(own, 1e-30)) ** 0.5
    return out
