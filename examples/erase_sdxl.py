"""Erase a concept from Stable Diffusion XL — for users with a GPU and Hub access (not run in CI).

    python examples/erase_sdxl.py --concept "Van Gogh" --neighbors Monet Cezanne "Claude Monet"
    python examples/erase_sdxl.py --concept "Van Gogh" --method distill          # LACU-style distillation

Closed form (default): about 87 s per removal on 2 CPU cores, most of it the two text encoders
(docs/benchmarks/erase_speed.md); the adapter is ~11 MB in fp16 (K/V of 140 layers plus the
pooled-text input of `add_embedding`). Distill: 200 optimizer steps at 1024 px, batch 8 forget + 8 protected
samples, 4 UNet forwards (teacher and student, forget and replay) and one backward through the LoRA per step: about
the cost of a short LoRA fine-tune. Its GPU time and memory are not measured yet (no GPU was lent to the sessions
that built it); on the embedded digits model a removal takes ~18 s on 2 CPU cores. Several GPUs:
`accelerate launch --multi_gpu --num_processes 4 examples/erase_sdxl.py --method distill`.
"""

from erase_sd15 import main  # the same script; only the default model differs

if __name__ == "__main__":
    main(default_model="stabilityai/stable-diffusion-xl-base-1.0", description=__doc__)
