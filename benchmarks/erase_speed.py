"""Speed, size and memory of one closed-form removal on SD 1.5- and SDXL-shaped models (random weights).

The UNets have the real layer counts and widths, the text encoders the shapes of CLIP ViT-L/14 (SD 1.5) and
CLIP ViT-L + OpenCLIP ViT-bigG (SDXL); weights are random, built from config, nothing is downloaded. Each
removal sees about 100 forget + protect prompts (10 contexts x concept and alias, 3 mapping candidates,
6 neighbours). Writes docs/benchmarks/erase_speed.md.

    python benchmarks/erase_speed.py            # SD 1.5 and SDXL
    python benchmarks/erase_speed.py --only sd15
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

import diffusers_unlearn as du
from diffusers_unlearn.adapter import WEIGHTS_NAME

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer"
NEIGHBORS = ["dog", "tree", "rabbit", "horse", "lion", "tiger"]
CANDIDATES = ["a dog", "an animal", "a rabbit"]


def _tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77)


def _text_encoder(hidden, layers, heads, intermediate, projection=None):
    config = CLIPTextConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=77,
        vocab_size=49408,
        bos_token_id=378,
        eos_token_id=379,
        pad_token_id=379,
        hidden_act="gelu",
        projection_dim=projection or hidden,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _small_vae() -> AutoencoderKL:
    # Not used by a removal; 4 blocks so that vae_scale_factor is 8 as in the real models.
    return AutoencoderKL(
        block_out_channels=[8, 8, 8, 8],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=4,
    )


def sd15() -> StableDiffusionPipeline:
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=_small_vae(),
        text_encoder=_text_encoder(768, 12, 12, 3072),
        tokenizer=_tokenizer(),
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl() -> StableDiffusionXLPipeline:
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        cross_attention_dim=2048,
    ).to(torch.float16)  # halves memory; the solve itself runs in float32 / float64
    return StableDiffusionXLPipeline(
        unet=unet.eval(),
        vae=_small_vae(),
        text_encoder=_text_encoder(768, 12, 12, 3072, projection=768),
        text_encoder_2=_text_encoder(1280, 32, 20, 5120, projection=1280),
        tokenizer=_tokenizer(),
        tokenizer_2=_tokenizer(),
        scheduler=DDIMScheduler(),
    )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(name: str, build, repeats: int) -> dict:
    torch.manual_seed(0)
    started = time.perf_counter()
    pipe = build()
    built = time.perf_counter() - started
    rss_model = peak_rss_gib()
    kwargs = dict(aliases=["pikachu"], mapping_candidates=CANDIDATES, neighbors=NEIGHBORS)
    runs = [du.erase(pipe, "cat", **kwargs) for _ in range(repeats)]
    adapter = runs[-1]
    figures = [run.metadata["figures"] for run in runs]
    prompts = len(adapter.metadata["forget_prompts"]) + len(adapter.metadata["protected_prompts"])
    with tempfile.TemporaryDirectory() as tmp:
        size = (adapter.save_pretrained(tmp, dtype=torch.float16) / WEIGHTS_NAME).stat().st_size / 1e6
    return {
        "model": name,
        "layers": len(adapter.layer_names),
        "prompts": prompts,
        "encoded": figures[-1]["prompts_encoded"],
        "median_s": statistics.median(f["seconds"] for f in figures),
        "encode_s": statistics.median(f["encode_seconds"] for f in figures),
        "rank": adapter.rank,
        "size_mb": size,
        "peak_gib": peak_rss_gib(),
        "model_gib": rss_model,
        "build_s": built,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["sd15", "sdxl"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "erase_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {"sd15": ("SD 1.5-shaped", sd15), "sdxl": ("SDXL-shaped", sdxl)}
    rows = []
    for key, (name, build) in models.items():
        if args.only and key != args.only:
            continue
        row = measure(name, build, args.repeats)
        rows.append(row)
        print(row, flush=True)
    lines = [
        "# Erase speed (closed form, proxy distance)",
        "",
        f"`python benchmarks/erase_speed.py` on {platform.processor() or platform.machine()}, "
        f"{args.threads} CPU threads, torch {torch.__version__}, median of {args.repeats} removals of one concept "
        "(with one alias) in 10 contexts, 3 mapping candidates, 6 neighbours. Random weights with the real shapes; "
        "text encoders of CLIP ViT-L/14 (SD 1.5) and CLIP ViT-L + OpenCLIP ViT-bigG (SDXL; UNet held in fp16).",
        "",
        "| model | edited layers | forget + protect prompts (all encoded) | seconds / removal (median) | "
        "of which text encoding | rank | "
        "adapter MB (fp16) | peak RSS GiB (model alone) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layers']} | {r['prompts']} ({r['encoded']}) | {r['median_s']:.2f} | "
            f"{r['encode_s']:.2f} | {r['rank']} | {r['size_mb']:.2f} | {r['peak_gib']:.1f} ({r['model_gib']:.1f}) |"
        )
    lines += [
        "",
        "Targets (SD 1.5): <= 5 s and <= 1.5 MB per removal. *All encoded* counts every prompt the removal runs "
        "through the text encoders (forget, protected, and every mapping candidate, 77 tokens each); their forward "
        "pass is most of every removal. The rest, the solve (one d x d system, one eigen- and one singular-value "
        "decomposition shared by all layers, one matrix product per layer), distances and figures, is the "
        "difference of the two time columns.",
        "",
    ]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
