"""Erase a concept from Stable Diffusion 1.5 — for users with a GPU and Hub access (not run in CI).

    python examples/erase_sd15.py --concept "Van Gogh" --neighbors Monet Cezanne "Claude Monet"
    python examples/erase_sd15.py --concept "Van Gogh" --method distill          # LACU-style distillation

Closed form (default): about 10 s per removal on 2 CPU cores, most of it the CLIP text encoder
(docs/benchmarks/erase_speed.md); the adapter is ~1.2 MB in fp16. Distill: 500 optimizer steps at
512 px, batch 8 forget + 8 protected samples, 5 UNet forwards (teacher on target, concept and replay; student on
forget and replay) and one backward through the LoRA per step: about the cost of a short LoRA fine-tune. Its GPU
time and memory are not measured yet (no GPU was lent to the sessions that built it); on the embedded digits model
a removal takes 20-30 s on 2 CPU cores. Several GPUs:
`accelerate launch --multi_gpu --num_processes 4 examples/erase_sd15.py --method distill`.
"""

from __future__ import annotations

import argparse

import torch
from diffusers import DiffusionPipeline

import diffusers_unlearn


def main(default_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5", description: str = __doc__) -> None:
    """Erases `--concept` from `--model` (any SD 1.x / 2.x / SDXL pipeline), saves and tries the removal."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--concept", default="Van Gogh")
    parser.add_argument("--aliases", nargs="*", default=["Vincent van Gogh"])
    parser.add_argument("--neighbors", nargs="*", default=["Monet", "Cezanne", "Gauguin", "Rembrandt"])
    parser.add_argument("--method", choices=["closed_form", "distill"], default="closed_form")
    parser.add_argument("--output", default="no-van-gogh")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype).to(device)
    config = diffusers_unlearn.DistillConfig(mixed_precision="fp16" if device == "cuda" else "no")
    adapter = diffusers_unlearn.erase(
        pipe,
        args.concept,
        aliases=args.aliases,
        neighbors=args.neighbors,
        mine_neighbors=8,
        mapping_candidates=["a painter", "an artist"],
        method=args.method,
        config=config if args.method == "distill" else None,
    )
    adapter.save_pretrained(args.output, dtype=torch.float16)
    print("targets:", [r["target"] for r in adapter.metadata["targets"][:4]])
    print("figures:", adapter.metadata["figures"])

    pipe.load_unlearning(args.output)
    prompt = f"a painting of a starry night by {args.concept}"
    image = pipe(prompt, num_inference_steps=30, generator=torch.Generator(device).manual_seed(0)).images[0]
    image.save(f"{args.output}/after.png")
    print(f"wrote {args.output}/ (the removal) and {args.output}/after.png")


if __name__ == "__main__":
    main()
