"""Removal methods: each turns forget / target / protect prompts into LoRA factors."""

from .closed_form import ClosedFormConfig, Remap, solve_remap
from .distill import DistillConfig

__all__ = ["ClosedFormConfig", "DistillConfig", "Remap", "solve_remap"]
