"""Closed-form, locality-aware editing of the layers that read the text embeddings (DESIGN §3).

For every edited layer `W` (out x d) the removal solves

    min_D  mean_f || (W + D) c_f - W c_m(f) ||^2  +  lambda_protect * mean_p || D c_p ||^2  +  lambda_reg * s * ||D||^2

whose solution is `D = W G` with one `d x d` matrix `G` shared by all layers: the whole edit is a linear remap
of the text embedding. `G` is factored once (`G ~= up @ down`), so the LoRA of layer `W` is
`B = W @ up`, `A = down` with `lora_alpha == r`: a removal costs one `d x d` solve and one small SVD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InvalidArgumentError


@dataclass
class ClosedFormConfig:
    """Hyper-parameters of the closed-form solve.

    Args:
        lambda_protect (`float`): Weight of the local-protection term against the forget term. Higher keeps
            neighbours closer to unchanged and erases less. Both terms are means over their token vectors, so
            the setting carries across models.
        lambda_reg (`float`): Ridge weight, relative to the mean energy of the embeddings; keeps the edit small
            along directions no prompt constrains.
        rank (`int | None`): LoRA rank. `None` picks the smallest rank that keeps `min_energy` of the edit,
            at most `max_rank`.
        max_rank (`int`): Upper bound on the automatic rank (size: ~100 kB per rank for SD 1.5 in fp16).
        min_energy (`float`): Share of the edit's energy (squared singular values) the automatic rank keeps.
        anchor (`str`): What a removal made on top of others holds its protected prompts to. `"chain"`: their
            outputs under the removals loaded now (drift those removals left stays, and compounds over a long
            chain). `"base"`: their outputs under the untouched model, so each removal also repairs the drift the
            earlier ones left on what it protects; earlier removals' forget prompts stay held to the chain (they
            stay removed). Needs the loaded removals' remaps (closed-form removals); others fall back to `"chain"`.
        earlier_protection (`float`): Weight of one more protected group: every prompt the loaded removals
            protected (minus this removal's forget prompts), so that a later removal cannot wear down what an
            earlier one kept. 0 (default): not protected again.
    """

    lambda_protect: float = 0.4
    lambda_reg: float = 0.01
    rank: int | None = None
    max_rank: int = 12
    min_energy: float = 0.99
    anchor: str = "chain"
    earlier_protection: float = 0.0

    def __post_init__(self):
        if self.lambda_protect < 0 or self.lambda_reg <= 0:
            raise InvalidArgumentError(
                f"lambda_protect must be >= 0 and lambda_reg > 0, got {self.lambda_protect} and {self.lambda_reg}."
            )
        if self.rank is not None and self.rank < 1:
            raise InvalidArgumentError(
                f"rank must be a positive integer or None (chosen by min_energy), got {self.rank}."
            )
        if self.max_rank < 1 or not 0 < self.min_energy <= 1:
            raise InvalidArgumentError(
                f"max_rank must be >= 1 and min_energy in (0, 1], got {self.max_rank} and {self.min_energy}."
            )
        if self.anchor not in ("chain", "base"):
            raise InvalidArgumentError(f"anchor must be 'chain' or 'base', got {self.anchor!r}.")
        if self.earlier_protection < 0:
            raise InvalidArgumentError(f"earlier_protection must be >= 0, got {self.earlier_protection}.")


@dataclass
class Remap:
    """The removal as a low-rank remap of the text embedding: `G ~= up @ down`, `D_layer = W_layer @ G`.

    Attributes:
        up (`torch.Tensor`): `(d, r)`, singular values folded in.
        down (`torch.Tensor`): `(r, d)`: the LoRA `A` of every layer.
        energy (`float`): Share of the edit's gain in the objective kept at rank `r` (squared singular values of
            the remap in the objective's metric).
        full_rank (`int`): Numerical rank of the untruncated remap.
    """

    up: torch.Tensor
    down: torch.Tensor
    energy: float
    full_rank: int

    @property
    def rank(self) -> int:
        return self.down.shape[0]


def moment(vectors: torch.Tensor) -> torch.Tensor:
    """Mean outer product `mean_i v_i v_i^T` of row vectors `(n, d)`, in float64."""
    vectors = vectors.double()
    return vectors.T @ vectors / max(vectors.shape[0], 1)


def solve_remap(
    forget: torch.Tensor, targets: torch.Tensor, protect_moment: torch.Tensor, config: ClosedFormConfig
) -> Remap:
    """Solves the closed-form objective for the shared remap `G`.

    Args:
        forget (`torch.Tensor`): `(n, d)` token embeddings of the forget prompts (positions that differ from
            their targets).
        targets (`torch.Tensor`): `(n, d)` embeddings at the aligned positions of the mapping targets.
        protect_moment (`torch.Tensor`): `(d, d)` mean outer product of the protected embeddings.
        config ([`ClosedFormConfig`]): Weights and rank.
    """
    forget_moment, shift = forget_statistics(forget, targets)
    return solve_statistics(forget_moment, shift, protect_moment, config)


def forget_statistics(forget: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The forget term's sufficient statistics: `(mean c_f c_f^T, mean (c_m - c_f) c_f^T)`, float64 `(d, d)`."""
    forget, targets = forget.double(), targets.double()
    return moment(forget), (targets - forget).T @ forget / max(forget.shape[0], 1)


def normal_system(forget_moment: torch.Tensor, protect_moment: torch.Tensor, config: ClosedFormConfig) -> torch.Tensor:
    """The objective's curvature `F + lambda_protect * Q + lambda_reg * (trace / d) * I`, float64."""
    data = forget_moment.double() + config.lambda_protect * protect_moment.double()
    d = data.shape[0]
    return data + config.lambda_reg * torch.trace(data) / d * torch.eye(d, dtype=torch.float64)


def solve_statistics(
    forget_moment: torch.Tensor, shift: torch.Tensor, protect_moment: torch.Tensor, config: ClosedFormConfig
) -> Remap:
    """[`solve_remap`] from the sufficient statistics: the optimum is `G = shift @ system^-1`.

    Joint re-solves add several removals' statistics and solve once.
    """
    system = normal_system(forget_moment, protect_moment, config)
    d = system.shape[0]
    # Truncating G must respect the objective, whose curvature is `system`: the best rank-r remap truncates
    # G @ system^(1/2) = shift @ system^(-1/2) (reduced-rank regression), so directions the protected prompts
    # pin down stay pinned after truncation.
    values, vectors = torch.linalg.eigh(system)
    inverse_root = (vectors * values.clamp_min(1e-300).rsqrt()) @ vectors.T
    u, s, vh = torch.linalg.svd(shift.double() @ inverse_root)
    energy = s.square()
    total = energy.sum().clamp_min(1e-300)
    cumulative = energy.cumsum(0) / total
    full_rank = int((s > s[0] * 1e-7).sum()) if s[0] > 0 else 0
    if config.rank is not None:
        rank = config.rank
    else:
        rank = int((cumulative < config.min_energy).sum()) + 1
        rank = min(rank, config.max_rank, max(full_rank, 1))
    rank = min(rank, d)
    return Remap(
        up=(u[:, :rank] * s[:rank]).float(),
        down=(vh[:rank] @ inverse_root).float(),
        energy=float(cumulative[rank - 1]),
        full_rank=full_rank,
    )
