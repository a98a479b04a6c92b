"""diffusers-unlearn."""
