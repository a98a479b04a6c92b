"""Load time, inference overhead, peak memory and check time of removal stacks on an SD 1.5-shaped UNet.

For stacks of 1, 10, 50 and 100 removals, in each load mode of `load_unlearning` ("adapters": one unfused PEFT
adapter per removal; "merged": the stack summed exactly into one unfused adapter, `UnlearningStack.merge("concat")`;
"fused": the edits added into the weights), this measures

- the wall time of `load_unlearning(pipe, stack, mode=...)`,
- the UNet forward time with the stack loaded against the bare UNet (batch 2 as for classifier-free guidance,
  64x64 latents = 512 px, 77 text tokens of width 768), bare and loaded runs interleaved (ABBA order) in the
  same process, as the median and range of the per-pair overheads,
- the peak RSS of a fresh process per configuration, with the model alone (after one bare forward) and with the
  stack loaded (after one loaded forward),
- the wall time of `UnlearningStack.check(pipe)` (the interference check, no image generated).

The UNet has the real SD 1.5 configuration (block_out_channels 320/640/1280/1280, cross_attention_dim 768, 16
cross-attention layers, so 32 edited `attn2.to_k` / `attn2.to_v` layers) with random weights built from config;
nothing is downloaded. The text encoder and VAE are tiny stand-ins: only the UNet runs.

The removals are synthetic: making 100 real ones with `diffusers_unlearn.erase` takes about 20 minutes, almost all
of it the text encoder. Each synthetic removal has exactly the structure `erase` produces (per edited layer
`lora_A = down` (r, 768) shared by all layers and `lora_B = W @ up` (out, r), `lora_alpha == r`, the metadata that
validation and loading read, and the probes `forget_moment` (64 x 768), `protect_moment` (128 x 768), `remap_up`,
`remap_down`), with a seeded random remap scaled so that the edit is 1-5% of the weights' norm, as real removals
are. None of the measured costs depends on the values: loading, merging, fusing, verifying and the LoRA pass are
the same tensor operations on tensors of the same shapes, and the check does the same products whatever the
probes hold (only its verdict, not reported as a result, depends on them).

    python benchmarks/stack.py                      # sizes 1, 10, 50, 100; writes docs/benchmarks/stack.md
    python benchmarks/stack.py --quick              # sizes 1 and 10, 2 repeats, writes nothing (smoke test)
    python benchmarks/stack.py --sizes 1 100 --modes merged fused --threads 4
    python benchmarks/stack.py --loads-only --sizes 100 --repeats 5 --output load.md   # load times only

`--loads-only` measures nothing but `load_unlearning` (and `unload_unlearning`): one process, one model, the modes
loaded in turn in each round (adapters, merged, fused, adapters, ...), so that a busy machine slows them alike; it
reports each mode's times and its ratio to the merged load of the same round. No forward pass runs: the figures are
meaningful on a shared machine where a 512 px forward is not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import diffusers_unlearn as du
from diffusers_unlearn import peft_inject
from diffusers_unlearn.adapter import FORMAT_VERSION, content_id
from diffusers_unlearn.families import STABLE_DIFFUSION
from diffusers_unlearn.layers import edited_layers
from diffusers_unlearn.pipeline import base_fingerprints

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer"
MODES = ("adapters", "merged", "fused")
SIZES = (1, 10, 50, 100)
QUICK_SIZES = (1, 10)
FORGET_ROWS, PROTECT_ROWS = 64, 128
EDIT_RATIO = (0.01, 0.05)  # ||B A|| / ||W|| over the edited layers, drawn per removal
LOAD_TARGET_S, CHECK_TARGET_S, TARGET_SIZE = 10.0, 10.0, 100
OVERHEAD_TARGET_PCT, OVERHEAD_MODES = 2.0, ("merged", "fused")
RESULT_PREFIX = "RESULT "


# ------------------------------------------------------------------------------------------------- model
def sd15_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD 1.5-shaped UNet (random weights, seeded: the same base fingerprint in every process), tiny rest."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    text_encoder = CLIPTextModel(  # never run: a removal's load and the UNet forward do not read it
        CLIPTextConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=77,
            vocab_size=49408,
            bos_token_id=378,
            eos_token_id=379,
            pad_token_id=379,
        )
    )
    vae = AutoencoderKL(  # 4 blocks so that vae_scale_factor is 8 as in the real model
        block_out_channels=[8, 8, 8, 8],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=4,
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER, model_max_length=77),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def unet_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    """One denoising step at 512 px with classifier-free guidance: batch 2, 64x64 latents, 77 tokens x 768."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "sample": torch.randn(2, 4, 64, 64, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(2, 77, 768, generator=generator),
    }


def forward(unet: UNet2DConditionModel, inputs: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        started = time.perf_counter()
        out = unet(**inputs, return_dict=False)[0]
        return time.perf_counter() - started, out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# --------------------------------------------------------------------------------------- synthetic removals
def _orthonormal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64)).Q


def synthetic_stack(pipe: StableDiffusionPipeline, size: int, rank: int = 8, seed: int = 0) -> du.UnlearningStack:
    """`size` independent removals with the structure `erase` gives them (see the module docstring)."""
    weights = {
        name: module.weight.detach().double() for name, module in edited_layers(pipe.unet, STABLE_DIFFUSION).items()
    }
    width = next(iter(weights.values())).shape[1]
    total = sum(float(w.square().sum()) for w in weights.values()) ** 0.5
    fingerprints = base_fingerprints(pipe)
    generator = torch.Generator().manual_seed(seed)
    config = dataclasses.asdict(du.ClosedFormConfig(rank=rank))
    adapters = []
    for index in range(1, size + 1):
        # the concept's forget directions; the remap reads the strongest `rank` of them and moves them along `up`
        forget_directions = _orthonormal(width, FORGET_ROWS, generator)
        down = forget_directions[:, :rank].T.contiguous()
        up = _orthonormal(width, rank, generator)
        moved = {layer: weight @ up for layer, weight in weights.items()}  # B = W @ up, as erase forms it
        target = EDIT_RATIO[0] + (EDIT_RATIO[1] - EDIT_RATIO[0]) * float(torch.rand(1, generator=generator))
        scale = target * total / sum(float(b.square().sum()) for b in moved.values()) ** 0.5
        up = up * scale
        lora, ratios = {}, []
        for layer, weight in weights.items():
            b = moved[layer] * scale
            lora[f"unet.{layer}.lora_A.weight"] = down.float()
            lora[f"unet.{layer}.lora_B.weight"] = b.float()
            ratios.append(float(b.norm() / weight.norm()))  # = ||B A|| / ||W||: the rows of A are orthonormal
        forget_scale = 0.9 ** torch.arange(FORGET_ROWS, dtype=torch.float64)
        protect_scale = 0.95 ** torch.arange(PROTECT_ROWS, dtype=torch.float64)
        probes = {
            "forget_moment": (forget_directions * forget_scale).T.float().contiguous(),
            "protect_moment": (_orthonormal(width, PROTECT_ROWS, generator) * protect_scale).T.float().contiguous(),
            "remap_up": up.float().contiguous(),
            "remap_down": down.float().contiguous(),
        }
        metadata = {
            "format_version": FORMAT_VERSION,
            "library": f"diffusers-unlearn {du.__version__}",
            "name": f"no-synthetic-{index:03d}",
            "redacted": False,
            "concept": f"synthetic concept {index}",
            "aliases": [],
            "forget_prompts": [],
            "targets": [],
            "protected_neighbors": [],
            "protected_prompts": [],
            "preserve": [],
            "method": "closed_form",
            "hyperparameters": {**config, "distance": "proxy"},
            "family": STABLE_DIFFUSION.name,
            "denoiser": STABLE_DIFFUSION.denoiser,
            "base_model": "sd15-shaped-random",
            **fingerprints,
            "rank": rank,
            "parents": [],  # independent removals: the check measures every pair
            "figures": {"edit_norm_ratio": max(ratios), "synthetic": True},
        }
        adapter = du.UnlearningAdapter(lora_weights=lora, metadata=metadata, probes=probes)
        adapter.metadata["adapter_id"] = content_id(lora)
        adapter.validate()
        adapters.append(adapter)
    return du.UnlearningStack(adapters)


# ------------------------------------------------------------------------------------------ one configuration
def measure(mode: str, size: int, repeats: int, rank: int) -> dict:
    """Everything for one (mode, size) in this process (run it in a fresh one: the peak RSS is then its own)."""

    def progress(message: str) -> None:
        print(f"    [{mode} x {size}] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    pipe = sd15_pipeline()
    unet, inputs = pipe.unet, unet_inputs()
    progress(f"model built in {time.perf_counter() - started:.1f}s")
    bare_warmup, bare_out = forward(unet, inputs)
    bare_peak = peak_rss_gib()
    progress(f"bare warm-up forward {bare_warmup:.2f}s, peak RSS {bare_peak:.2f} GiB")

    stack = synthetic_stack(pipe, size, rank)
    started = time.perf_counter()
    report = stack.check(pipe)
    check_s = time.perf_counter() - started
    progress(f"{size} synthetic removals; check {check_s:.2f}s")

    load_times = []

    def load() -> None:
        began = time.perf_counter()
        loaded = du.load_unlearning(pipe, stack, mode=mode)
        load_times.append(time.perf_counter() - began)
        expected = 1 if mode == "merged" else size
        if len(loaded) != expected or not all(entry.verified for entry in loaded):
            raise RuntimeError(f"load_unlearning({mode!r}) left {loaded}")

    load()
    progress(f"loaded in {load_times[0]:.2f}s")
    loaded_warmup, loaded_out = forward(unet, inputs)
    loaded_peak = peak_rss_gib()
    output_change = float((loaded_out - bare_out).norm() / bare_out.norm())
    progress(f"loaded warm-up forward {loaded_warmup:.2f}s, peak RSS {loaded_peak:.2f} GiB")

    is_loaded, pairs = True, []
    for repeat in range(repeats):  # ABBA: bare/loaded, loaded/bare, ... so that a drift cancels
        seconds = {}
        for want in (False, True) if repeat % 2 == 0 else (True, False):
            if want and not is_loaded:
                load()
            elif not want and is_loaded:
                du.unload_unlearning(pipe)
            is_loaded = want
            seconds[want] = forward(unet, inputs)[0]
        pairs.append((seconds[False], seconds[True]))
        progress(f"pair {repeat + 1}/{repeats}: bare {seconds[False]:.3f}s, loaded {seconds[True]:.3f}s")
    du.unload_unlearning(pipe)
    overheads = [100 * (loaded / bare - 1) for bare, loaded in pairs]
    return {
        "mode": mode,
        "size": size,
        "rank": rank,
        "load_first_s": load_times[0],
        "load_median_s": statistics.median(load_times),
        "loads": len(load_times),
        "bare_s": statistics.median(bare for bare, _ in pairs),
        "loaded_s": statistics.median(loaded for _, loaded in pairs),
        "overhead_pct": statistics.median(overheads),
        "overhead_min_pct": min(overheads),
        "overhead_max_pct": max(overheads),
        "pairs": pairs,
        "bare_peak_gib": bare_peak,
        "peak_gib": loaded_peak,
        "check_s": check_s,
        "check_passed": report.passed,
        "output_change": output_change,
    }


def measure_loads(sizes: list[int], modes: list[str], repeats: int, rank: int) -> list[dict]:
    """Load and unload times of every (mode, size), the modes interleaved round by round in this process."""
    pipe = sd15_pipeline()
    rows = []
    for size in sizes:
        stack = synthetic_stack(pipe, size, rank)
        times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for round_ in range(repeats):
            for mode in modes:
                began = time.perf_counter()
                loaded = du.load_unlearning(pipe, stack, mode=mode)
                load_s = time.perf_counter() - began
                expected = 1 if mode == "merged" else size
                if len(loaded) != expected or not all(entry.verified for entry in loaded):
                    raise RuntimeError(f"load_unlearning({mode!r}) left {loaded}")
                began = time.perf_counter()
                du.unload_unlearning(pipe)
                times[mode].append((load_s, time.perf_counter() - began))
            summary = ", ".join(f"{mode} {times[mode][-1][0]:.2f}s" for mode in modes)
            print(f"    [{size} removals] round {round_ + 1}/{repeats}: {summary}", file=sys.stderr, flush=True)
        for mode in modes:
            loads = [load for load, _ in times[mode]]
            row = {"mode": mode, "size": size, "loads": loads, "unloads": [unload for _, unload in times[mode]]}
            if "merged" in modes:
                merged = [load for load, _ in times["merged"]]
                row["ratios"] = [load / reference for load, reference in zip(loads, merged, strict=True)]
            rows.append(row)
    return rows


def load_table(rows: list[dict]) -> list[str]:
    lines = [
        "| mode | removals | load s: first / median [min, max] | x merged load (median of rounds) | unload s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        loads = r["loads"]
        ratio = f"{statistics.median(r['ratios']):.2f}" if "ratios" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['size']} | {loads[0]:.2f} / {statistics.median(loads):.2f} "
            f"[{min(loads):.2f}, {max(loads):.2f}] | {ratio} | {statistics.median(r['unloads']):.2f} |"
        )
    return lines


def run_configuration(mode: str, size: int, args: argparse.Namespace) -> dict:
    """Runs [`measure`] in a fresh process with the same thread count."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    command = [sys.executable, __file__, "--worker", mode, str(size), "--repeats", str(args.repeats)]
    command += ["--rank", str(args.rank), "--threads", threads]
    result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode or not lines:  # recorded, and the other configurations still run
        print(f"    [{mode} x {size}] FAILED with exit status {result.returncode} (traceback above)", flush=True)
        return {"mode": mode, "size": size, "error": f"failed (exit status {result.returncode})"}
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


# ---------------------------------------------------------------------------------------------------- report
def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def targets(row: dict) -> list[str]:
    """The targets that apply to a row, each with whether it is met."""
    verdicts = []
    if row["size"] == TARGET_SIZE:
        verdicts.append(f"load <= {LOAD_TARGET_S:g} s: {_met(row['load_first_s'] <= LOAD_TARGET_S)}")
        verdicts.append(f"check <= {CHECK_TARGET_S:g} s: {_met(row['check_s'] <= CHECK_TARGET_S)}")
    if row["mode"] in OVERHEAD_MODES:
        verdict = _met(row["overhead_pct"] <= OVERHEAD_TARGET_PCT)
        if row["overhead_max_pct"] - row["overhead_min_pct"] > 2 * OVERHEAD_TARGET_PCT:
            verdict += " (spread wider than the target)"
        verdicts.append(f"overhead <= {OVERHEAD_TARGET_PCT:g}%: {verdict}")
    return verdicts


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| mode | removals | load s (first / median) | forward s (bare / loaded) | overhead % median [min, max] | "
        "peak RSS GiB (bare) | increase GiB | check s | output change | targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['mode']} | {r['size']} | {r['error']} |" + " |" * 7)
            continue
        lines.append(
            f"| {r['mode']} | {r['size']} | {r['load_first_s']:.2f} / {r['load_median_s']:.2f} | "
            f"{r['bare_s']:.3f} / {r['loaded_s']:.3f} | "
            f"{r['overhead_pct']:+.1f} [{r['overhead_min_pct']:+.1f}, {r['overhead_max_pct']:+.1f}] | "
            f"{r['peak_gib']:.2f} ({r['bare_peak_gib']:.2f}) | {r['peak_gib'] - r['bare_peak_gib']:+.3f} | "
            f"{r['check_s']:.2f} | {100 * r['output_change']:.2f}% | {'; '.join(targets(r)) or '-'} |"
        )
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} logical CPUs), {platform.system()} {platform.release()}"


def document(rows: list[dict], args: argparse.Namespace, seconds: float) -> str:
    command = " ".join(["python benchmarks/stack.py", *sys.argv[1:]])
    lines = [
        "# Removal stacks: load time, inference overhead, memory, check time",
        "",
        f"`{command}` on {machine()}, {args.threads} CPU threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; {seconds / 60:.0f} min in all.",
        "",
        "SD 1.5-shaped UNet (real configuration, random weights, fp32; 32 edited layers: every `attn2.to_k` and "
        f"`attn2.to_v`), stacks of rank-{args.rank} removals loaded with "
        "`load_unlearning(pipe, stack, mode=...)`: *adapters* (one unfused PEFT adapter per removal), *merged* "
        "(the stack summed exactly into one unfused adapter of rank = the sum of the ranks) and *fused* (the edits "
        "added into the weights).",
        "",
        "- **load s**: wall time of `load_unlearning` (checks, merge, loading, verification), the first load in "
        "the process and the median of all loads (the stack is unloaded and reloaded between interleaved runs).",
        "- **forward s**: one UNet forward, batch 2 (classifier-free guidance), 64x64 latents (512 px), 77 text "
        f"tokens x 768; median over {args.repeats} bare / loaded pairs run in ABBA order in the same process, after "
        "one warm-up forward of each. **overhead %**: the median of the per-pair `loaded / bare - 1`, with its "
        "smallest and largest value: a target is only meaningful where this range is narrow.",
        "- **peak RSS**: `ru_maxrss` of a fresh process per configuration, after one loaded forward; in brackets "
        "after one bare forward, before the removals were made (the model plus the tiny text encoder / VAE "
        "stand-ins). **increase**: the difference: the removals held in memory, PEFT layers or fused-weight "
        "backups, and the LoRA pass's activations.",
        "- **check s**: `UnlearningStack.check(pipe)` (interference of every pair of removals from their stored "
        "probes; it does not depend on the mode, measured once per row).",
        "- **output change**: `||out_loaded - out_bare|| / ||out_bare||` of the UNet: that the stack acts; the "
        "three modes of one size should agree (the same edit, up to float rounding).",
        "",
        *table(rows),
        "",
        f"Targets: load <= {LOAD_TARGET_S:g} s and check <= {CHECK_TARGET_S:g} s for {TARGET_SIZE} removals; "
        f"inference overhead <= {OVERHEAD_TARGET_PCT:g}% for merged and fused stacks.",
        "",
        "The removals are synthetic (making 100 real ones with `erase` takes about 20 minutes, almost all of it "
        "text encoding): each has the exact structure `erase` gives it (per edited layer `lora_A = down` "
        f"({args.rank}, 768) shared by the layers and `lora_B = W @ up`, `lora_alpha == r`, the full metadata and "
        f"the probes `forget_moment` ({FORGET_ROWS} x 768), `protect_moment` ({PROTECT_ROWS} x 768), `remap_up`, "
        "`remap_down`), with a seeded random remap scaled so that the edit is "
        f"{100 * EDIT_RATIO[0]:.0f}-{100 * EDIT_RATIO[1]:.0f}% of the weights' norm. The timings do not depend on "
        "the values: loading, merging, fusing, verifying and the LoRA pass are the same operations on tensors of "
        "the same shapes, and the check does the same products whatever the probes hold (its verdict on random "
        "removals means nothing and is not reported). The removals are independent (no parents), so the check "
        "measures every pair.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 1 and 10, 2 repeats, write nothing")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"stack sizes (default {' '.join(map(str, SIZES))})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeats", type=int, help="bare / loaded forward pairs per configuration (default 7)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP / MKL threads of each run")
    parser.add_argument("--output", type=Path, help="default docs/benchmarks/stack.md; --loads-only: none")
    parser.add_argument("--loads-only", action="store_true", help="only load / unload times, modes interleaved")
    parser.add_argument(
        "--diffusers-injection",
        action="store_true",
        help="--loads-only: every adapter through diffusers' load_lora_adapter (PEFT's walk per adapter), as before "
        "diffusers_unlearn.peft_inject",
    )
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 7)
    torch.set_num_threads(args.threads)
    if args.worker:
        diffusers_logging.set_verbosity_error()  # "No LoRA keys ... text_encoder" on every load
        mode, size = args.worker
        print(RESULT_PREFIX + json.dumps(measure(mode, int(size), args.repeats, args.rank)), flush=True)
        return

    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    if args.loads_only:
        diffusers_logging.set_verbosity_error()
        if args.diffusers_injection:
            peft_inject.add_to_wrapped_layers = lambda *args, **kwargs: False
        started = time.perf_counter()
        lines = load_table(measure_loads(list(sizes), args.modes, args.repeats, args.rank))
        command = " ".join(["python benchmarks/stack.py", *sys.argv[1:]])
        lines = [
            f"`{command}` on {machine()}, {args.threads} CPU threads, torch {torch.__version__}, Python "
            f"{platform.python_version()}; {time.perf_counter() - started:.0f} s in all.",
            "",
            *lines,
        ]
        print("\n".join(lines))
        if args.output and not args.quick:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text("\n".join(lines) + "\n")
            print(f"wrote {args.output}", file=sys.stderr)
        return
    args.output = args.output or ROOT / "docs" / "benchmarks" / "stack.md"
    configurations = [(mode, size) for size in sizes for mode in args.modes]
    started, rows = time.perf_counter(), []
    for position, (mode, size) in enumerate(configurations, 1):
        elapsed = time.perf_counter() - started
        print(f"[{position}/{len(configurations)}] mode={mode} removals={size} ({elapsed:.0f}s so far)", flush=True)
        rows.append(run_configuration(mode, size, args))
    seconds = time.perf_counter() - started
    print("\n".join(table(rows)))
    print(f"{len(rows)} configurations in {seconds:.0f}s", flush=True)
    if args.quick:
        print("--quick: nothing written", file=sys.stderr)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(document(rows, args, seconds))
        print(f"wrote {args.output}", file=sys.stderr)
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
