"""Merging removals into one: the exact sum of their LoRA factors, or its truncated SVD.

Used by `UnlearningStack.merge` and by `load_unlearning(..., mode="merged")`; the joint closed-form re-solve,
which needs a pipeline, is `UnlearningStack.merge("joint", pipe=...)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from .adapter import FORMAT_VERSION, UnlearningAdapter, content_id
from .constraints import moment_factor
from .errors import InvalidArgumentError
from .layers import FINGERPRINT_KEYS


def merge_removals(
    adapters: Sequence[UnlearningAdapter],
    method: Literal["concat", "svd"] = "concat",
    *,
    rank: int | None = None,
    name: str | None = None,
) -> UnlearningAdapter:
    """One removal whose weight change is the sum of `adapters`' (exactly, or compressed).

    Args:
        adapters (`Sequence[UnlearningAdapter]`): The removals, for one base model.
        method (`str`): `"concat"`: the exact sum (factors stacked; rank = sum of ranks). `"svd"`: the sum
            compressed per layer to `rank` by a truncated SVD; the largest relative Frobenius error over the layers
            is recorded in `metadata["figures"]["merge_error"]`.
        rank (`int`, *optional*): Target rank of `"svd"`; default the largest member rank.
        name (`str`, *optional*): Name of the merged removal (default `"merged-<n>-removals"`).

    Raises:
        InvalidArgumentError: No removal, or an unknown method.

    Example:
        ```py
        >>> merged = merge_removals(list(stack), "svd", rank=8)
        >>> merged.metadata["figures"]["merge_error"]
        0.012
        ```
    """
    if not adapters:
        raise InvalidArgumentError("Nothing to merge: no removal given.")
    if method not in ("concat", "svd"):
        raise InvalidArgumentError(f"Unknown merge method {method!r}; available: 'concat', 'svd', 'joint'.")
    denoiser = adapters[0].denoiser
    layers = list(dict.fromkeys(layer for a in adapters for layer in a.layer_names))
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    worst_error = 0.0
    for layer in layers:
        members = [a.factors(layer) for a in adapters if layer in a.layer_names]
        down = torch.cat([a_.float() for a_, _ in members])
        up = torch.cat([b_.float() for _, b_ in members], dim=1)
        if method == "svd":
            target = rank or max(a.rank for a in adapters)
            delta = up @ down
            u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
            up, down = u[:, :target] * sv[:target], vh[:target]
            kept = (up @ down - delta).norm() / delta.norm().clamp_min(1e-30)
            worst_error = max(worst_error, float(kept))
        factors[layer] = (down, up)
    merged_rank = max(d.shape[0] for d, _ in factors.values())
    weights = {}
    for layer, (down, up) in factors.items():  # pad to one rank: diffusers' LoraConfig has one r
        pad = merged_rank - down.shape[0]
        weights[f"{denoiser}.{layer}.lora_A.weight"] = torch.nn.functional.pad(down, (0, 0, 0, pad))
        weights[f"{denoiser}.{layer}.lora_B.weight"] = torch.nn.functional.pad(up, (0, pad))
    probes = {}
    for key in ("forget_moment", "protect_moment"):  # the members' mean moment, as the chain protects them
        factors_ = [a.probes[key].double() for a in adapters if key in a.probes]
        if factors_:
            probes[key] = moment_factor(sum(f.T @ f for f in factors_) / len(factors_))
    metadata = merged_metadata(adapters, method, name, merged_rank, {"merge_error": worst_error})
    return merged(weights, metadata, probes)


def merged_metadata(
    adapters: Sequence[UnlearningAdapter], method: str, name: str | None, rank: int, figures: dict
) -> dict:
    """The provenance of a merged removal: its members, in order, and the base model they share."""
    first = adapters[0].metadata
    return {
        "format_version": FORMAT_VERSION,
        "name": name or f"merged-{len(adapters)}-removals",
        "concept": None,
        "redacted": any(a.concept is None for a in adapters),
        "method": f"merge:{method}",
        "members": [
            {"name": a.name, "concept": a.concept, "adapter_id": a.metadata.get("adapter_id")} for a in adapters
        ],
        "family": first.get("family"),
        "denoiser": first.get("denoiser", "unet"),
        "base_model": first.get("base_model"),
        **{key: first[key] for key in FINGERPRINT_KEYS if key in first},
        "rank": rank,
        "figures": figures,
    }


def merged(weights: dict, metadata: dict, probes: dict) -> UnlearningAdapter:
    """The merged removal, with its content id, validated."""
    removal = UnlearningAdapter(lora_weights=weights, metadata=metadata, probes=probes)
    removal.metadata["adapter_id"] = content_id(weights)
    removal.validate()
    return removal
