"""Removal methods: each turns forget / target / protect embeddings into LoRA factors."""

from .closed_form import ClosedFormConfig, Remap, solve_remap

__all__ = ["ClosedFormConfig", "Remap", "solve_remap"]
