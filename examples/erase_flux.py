"""Erase a concept from FLUX.1 — for users with a GPU and Hub access (not run in CI).

    python examples/erase_flux.py --concept "Van Gogh" --neighbors Monet Cezanne "Claude Monet"
    python examples/erase_flux.py --concept "Van Gogh" --method distill          # LACU-style distillation
    python examples/erase_flux.py --model black-forest-labs/FLUX.1-schnell --max-sequence-length 256

The closed-form removal is one LoRA on `transformer.context_embedder` (4096 -> 3072, the only way the T5 text
embedding enters the transformer) plus one on the pooled-CLIP input `time_text_embed.text_embedder.linear_1`
(768 -> 3072): about 0.3 MB in bf16 at rank 12, loadable with plain `pipe.load_lora_weights(folder)`. It is made at
the T5 length the pipeline is called with (512 for FLUX.1 dev, 256 for schnell): pass `--max-sequence-length`, and
call the pipeline with the same `max_sequence_length`. `--method distill` trains a LoRA on the joint attention's
text-stream inputs (`attn.add_k_proj` / `attn.add_v_proj` of the 19 double blocks).

Time and memory per removal on a GPU are not measured yet: no GPU was lent to the session that wrote this (the
script prints both; please report them). On CPU, the shapes that matter are measured in
docs/benchmarks/erase_speed.md (the solve at d = 4096; the full model does not fit that machine). The whole pipeline
in bfloat16 needs about 34 GB of GPU memory (transformer 24, T5-XXL 9.5); `--offload` moves idle components to the CPU.
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import DiffusionPipeline

import diffusers_unlearn


def main(default_model: str = "black-forest-labs/FLUX.1-dev", default_length: int = 512, description: str = __doc__):
    """Erases `--concept` from `--model` (a FluxPipeline or StableDiffusion3Pipeline), saves and tries the removal."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--concept", default="Van Gogh")
    parser.add_argument("--aliases", nargs="*", default=["Vincent van Gogh"])
    parser.add_argument("--neighbors", nargs="*", default=["Monet", "Cezanne", "Gauguin", "Rembrandt"])
    parser.add_argument("--method", choices=["closed_form", "distill"], default="closed_form")
    parser.add_argument("--max-sequence-length", type=int, default=default_length)
    parser.add_argument("--offload", action="store_true", help="enable_model_cpu_offload() (less GPU memory)")
    parser.add_argument("--output", default="no-van-gogh")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
    if args.offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    # removals are made at the T5 length the pipeline will be called with (the family reads the tokenizer's limit)
    t5_tokenizer = getattr(pipe, "tokenizer_3", None) or pipe.tokenizer_2
    t5_tokenizer.model_max_length = args.max_sequence_length

    config = diffusers_unlearn.DistillConfig(mixed_precision="bf16" if device == "cuda" else "no")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    adapter = diffusers_unlearn.erase(
        pipe,
        args.concept,
        aliases=args.aliases,
        neighbors=args.neighbors,
        mapping_candidates=["a painter", "an artist"],
        method=args.method,
        config=config if args.method == "distill" else None,
    )
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    adapter.save_pretrained(args.output, dtype=torch.bfloat16 if device == "cuda" else None)
    print(f"removal: {seconds:.1f} s, peak GPU memory {peak:.1f} GiB, layers {adapter.layer_names[:4]}")
    print("targets:", [r["target"] for r in adapter.metadata["targets"][:4]])
    print("figures:", adapter.metadata["figures"])

    pipe.load_unlearning(args.output)  # or, without the plugin: pipe.load_lora_weights(args.output)
    prompt = f"a painting of a starry night by {args.concept}"
    generator = torch.Generator(device).manual_seed(0)
    image = pipe(prompt, generator=generator, max_sequence_length=args.max_sequence_length).images[0]
    image.save(f"{args.output}/after.png")
    print(f"wrote {args.output}/ (the removal) and {args.output}/after.png")


if __name__ == "__main__":
    main()
