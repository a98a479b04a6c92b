"""Interference between removals, measured where they act: on each other's forget and protected inputs.

For removals `i` and `j` (weight changes `D_i`, `D_j` on the same layers), with `P_i` the stored factors of
`i`'s forget-input second moment and `Q_i` those of its protected inputs (`unlearning_probes.safetensors`):

- `undo[i, j]`: the share of `i`'s own edit on its forget inputs that `j` pushes back,
  `max(0, -<D_j P_i, D_i P_i>) / ||D_i P_i||^2` (1 = `j` fully cancels `i`'s removal);
- `shift[i, j]`: how much `j` moves `i`'s forget inputs at all, `||D_j P_i|| / ||D_i P_i||`;
- `collateral[i, j]`: how much `j` moves `i`'s protected inputs relative to the untouched outputs,
  `||D_j Q_i|| / ||W Q_i||`.

All sums run over the edited layers; no image is generated, so a check of 100 removals takes seconds.
Removals without probes (made by other tools) fall back to their LoRA input subspace (rows of `A`), and the
report says the figure is approximate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DiffusionPipeline

from .adapter import UnlearningAdapter
from .families import family_of
from .layers import base_linear


@dataclass
class InterferenceReport:
    """Pairwise interference of a stack's removals; row `i` is the removal affected, column `j` the one acting.

    Attributes:
        names (`list[str]`): Removals, in stack order.
        undo, shift, collateral (`torch.Tensor`): `(n, n)` matrices (diagonal: 0), see the module docstring.
        stack_undo, stack_collateral (`torch.Tensor`): `(n,)`: the same for all other removals together.
        undo_threshold, collateral_threshold (`float`): The limits the verdict uses.
        approximate (`list[str]`): Removals whose probes were missing (subspace estimate used).
    """

    names: list[str]
    undo: torch.Tensor
    shift: torch.Tensor
    collateral: torch.Tensor
    stack_undo: torch.Tensor
    stack_collateral: torch.Tensor
    undo_threshold: float
    collateral_threshold: float
    approximate: list[str] = field(default_factory=list)

    @property
    def matrix(self) -> torch.Tensor:
        """The `undo` matrix: the headline figure."""
        return self.undo

    @property
    def passed(self) -> bool:
        """No removal is undone beyond `undo_threshold`, no protected set moved beyond `collateral_threshold`."""
        return bool(
            self.stack_undo.max() <= self.undo_threshold and self.stack_collateral.max() <= self.collateral_threshold
        )

    def failures(self) -> list[str]:
        """One line per removal that the rest of the stack undoes or damages."""
        lines = []
        for i, name in enumerate(self.names):
            if self.stack_undo[i] > self.undo_threshold:
                j = int(self.undo[i].argmax())
                lines.append(f"{name} is {100 * self.stack_undo[i]:.0f}% undone (most by {self.names[j]})")
            if self.stack_collateral[i] > self.collateral_threshold:
                j = int(self.collateral[i].argmax())
                lines.append(
                    f"{name}'s protected prompts move {100 * self.stack_collateral[i]:.1f}% (most by {self.names[j]})"
                )
        return lines

    def __str__(self) -> str:
        width = max(len(n) for n in self.names) + 2
        header = "undo[i, j] (row: removal affected, column: removal acting)"
        lines = [header, " " * width + "".join(f"{n[:10]:>12}" for n in self.names) + f"{'stack':>12}"]
        for i, name in enumerate(self.names):
            cells = "".join(f"{float(v):12.3f}" for v in self.undo[i]) + f"{float(self.stack_undo[i]):12.3f}"
            lines.append(f"{name:<{width}}{cells}")
        lines.append(f"collateral (stack on each): {[round(float(v), 4) for v in self.stack_collateral]}")
        verdict = "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures())
        lines.append(
            f"verdict: {verdict} (undo <= {self.undo_threshold}, collateral <= {self.collateral_threshold})"
            + (f"; approximate for {self.approximate}" if self.approximate else "")
        )
        return "\n".join(lines)

    def plot(self, path) -> None:
        """Writes a heatmap PNG of `undo` and `collateral` (needs matplotlib, in the `dev` extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("report.plot needs matplotlib: pip install 'diffusers-unlearn[dev]'") from error
        figure, axes = plt.subplots(1, 2, figsize=(4 + 0.8 * len(self.names), 3 + 0.35 * len(self.names)))
        for axis, (title, values) in zip(axes, [("undo", self.undo), ("collateral", self.collateral)], strict=True):
            image = axis.imshow(values.numpy(), cmap="magma_r", vmin=0)
            axis.set_title(title)
            axis.set_xticks(range(len(self.names)), self.names, rotation=60, ha="right", fontsize=7)
            axis.set_yticks(range(len(self.names)), self.names, fontsize=7)
            figure.colorbar(image, ax=axis, fraction=0.046)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)


def _probe(adapter: UnlearningAdapter, key: str) -> tuple[torch.Tensor, bool]:
    """`(rows, exact)`: the stored moment factor, or the LoRA input subspace when it is missing."""
    if key in adapter.probes:
        return adapter.probes[key].float(), True
    a, _ = adapter.factors(adapter.layer_names[0])
    return a.float() / a.float().norm(dim=1, keepdim=True).clamp_min(1e-12), False


def check_interference(
    pipe: DiffusionPipeline,
    adapters: list[UnlearningAdapter],
    *,
    undo_threshold: float = 0.2,
    collateral_threshold: float = 0.05,
) -> InterferenceReport:
    """Measures how the removals act on each other's forget and protected inputs (see the module docstring).

    Args:
        pipe (`DiffusionPipeline`): The base pipeline (its edited layers give the untouched outputs).
        adapters (`list[UnlearningAdapter]`): The removals, in stack order.
        undo_threshold (`float`, defaults to 0.2): Largest share of a removal's edit the rest may cancel.
        collateral_threshold (`float`, defaults to 0.05): Largest relative move of a removal's protected inputs.

    Returns:
        [`InterferenceReport`]
    """
    denoiser = getattr(pipe, family_of(pipe).denoiser)
    n = len(adapters)
    forget = [_probe(a, "forget_moment") for a in adapters]
    protect = [_probe(a, "protect_moment") for a in adapters]
    approximate = [a.name for a, (_, exact) in zip(adapters, forget, strict=True) if not exact]
    layers = list(dict.fromkeys(layer for a in adapters for layer in a.layer_names))

    # inner[i][j][k] = sum over layers of <D_j P_i, D_k P_i>, for the forget probes of i
    forget_inner = torch.zeros(n, n, n, dtype=torch.float64)
    protect_move = torch.zeros(n, n, dtype=torch.float64)  # ||D_j Q_i||^2
    protect_total = torch.zeros(n, dtype=torch.float64)  # ||sum_{j != i} D_j Q_i||^2
    protect_base = torch.zeros(n, dtype=torch.float64)  # ||W Q_i||^2
    for layer in layers:
        present = [k for k, a in enumerate(adapters) if layer in a.layer_names]
        weight = base_linear(denoiser.get_submodule(layer)).weight.detach().float().cpu()
        width = weight.shape[1]
        deltas = {k: adapters[k].delta(layer) for k in present}
        for i in range(n):
            rows = forget[i][0]
            if rows.shape[1] != width:
                continue  # the pooled layer of SDXL reads another space; its probes are the text ones
            outs = {k: rows @ deltas[k].T for k in present}
            for j in present:
                for k in present:
                    forget_inner[i, j, k] += (outs[j] * outs[k]).sum()
            rows = protect[i][0]
            base = rows @ weight.T
            protect_base[i] += base.square().sum()
            others = torch.zeros_like(base)
            for j in present:
                moved = rows @ deltas[j].T
                protect_move[i, j] += moved.square().sum()
                if j != i:
                    others += moved
            protect_total[i] += others.square().sum()

    undo = torch.zeros(n, n)
    shift = torch.zeros(n, n)
    collateral = torch.zeros(n, n)
    stack_undo = torch.zeros(n)
    stack_collateral = torch.zeros(n)
    for i in range(n):
        own = forget_inner[i, i, i].clamp_min(1e-30)
        others = [j for j in range(n) if j != i]
        for j in others:
            undo[i, j] = float((-forget_inner[i, j, i]).clamp_min(0) / own)
            shift[i, j] = float((forget_inner[i, j, j] / own).sqrt())
            collateral[i, j] = float((protect_move[i, j] / protect_base[i].clamp_min(1e-30)).sqrt())
        if others:
            stack_undo[i] = float((-sum(forget_inner[i, j, i] for j in others)).clamp_min(0) / own)
            stack_collateral[i] = float((protect_total[i] / protect_base[i].clamp_min(1e-30)).sqrt())
    return InterferenceReport(
        names=[a.name for a in adapters],
        undo=undo,
        shift=shift,
        collateral=collateral,
        stack_undo=stack_undo,
        stack_collateral=stack_collateral,
        undo_threshold=undo_threshold,
        collateral_threshold=collateral_threshold,
        approximate=approximate,
    )
