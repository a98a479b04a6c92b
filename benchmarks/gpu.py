"""The library on a CUDA GPU: what the CPU-only test suite and CI cannot check.

Each check runs on `--device` (a GPU when one is there) and is recorded whatever happens (an exception is a row
that says so). Images come from CPU generators seeded as everywhere else, so a check's figures are comparable with
the same script run with `--device cpu`.

1. **erase on the device**: the embedded digits model ("seven") and glyphs model ("serif"), closed form and
   distill, made in float32 on the device: seconds per removal, and forget / related / general before and after
   (each world's scorer, `Concept.probes()`).
2. **deployment dtypes**: closed-form removals of "seven" made on float32 (CPU), float16 and bfloat16 pipelines
   (device), saved, loaded from the folder into pipelines of another dtype in either mode: `pipe.unlearning`'s
   verified flags, sevens with the removal and after unloading it, or the refusal.
3. **interop** (benchmarks/interop.py's seven scenarios) in float16 on the device.
4. **attacks**: every attack of `diffusers_unlearn.attacks` against the closed-form removal of "seven" on the
   device, library defaults: ASR, seconds.
5. **torch.compile**: a removal loaded, the UNet compiled, sevens; seconds of the first and second generation.
6. **real shapes**: `erase` on SD 1.5- and SDXL-shaped pipelines (random weights, built from config) on the device,
   the model-scored target check and the effect figures included (the CPU rows of erase_speed.md leave them out
   for SD3 / FLUX.1 only).
7. **the rest of the API**: hardened removals (both methods), distillation on a fused chain (its replay held to the
   untouched model through `removals_disabled`), a stack's check, joint merge and withdrawal with re-solve, the test
   suite's tiny SDXL, SD3 and FLUX.1 pipelines (closed form and distill), and the command line's `--device`.

    python benchmarks/gpu.py --output docs/benchmarks/gpu.md          # on a GPU machine
    python benchmarks/gpu.py --device cpu --quick --skip shapes,compile  # the same code on a CPU, small
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

import diffusers_unlearn as du
from diffusers_unlearn import digits, glyphs
from diffusers_unlearn.attacks import ATTACKS, AttackSettings, run_attacks
from diffusers_unlearn.digits.attacks import attack_target
from diffusers_unlearn.evaluation import evaluate
from diffusers_unlearn.toyworld import concept_scorer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import interop  # noqa: E402 - beside this script

CHECKS = ("erase", "dtypes", "interop", "attacks", "compile", "shapes", "api")


class Report:
    """Markdown lines and figures, written after every check so that a run stopped early still leaves them."""

    def __init__(self, output: Path | None, header: list[str]):
        self.output, self.lines, self.figures = output, header, {}

    def add(self, check: str, lines: list[str], figures) -> None:
        self.lines += lines
        self.figures[check] = figures
        print("\n".join(lines), flush=True)
        if self.output is not None:
            self.output.write_text("\n".join(self.lines) + "\n")
            self.output.with_suffix(".json").write_text(json.dumps(self.figures, indent=1))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, work, *args, **kwargs):
    """`work(*args, **kwargs)` and its seconds, the device synchronised before and after."""
    synchronize(device)
    started = time.perf_counter()
    result = work(*args, **kwargs)
    synchronize(device)
    return result, time.perf_counter() - started


def check_erase(args) -> tuple[list[str], list[dict]]:
    rows = []
    for world, concept in (("digits", digits.Concept(7)), ("glyphs", glyphs.Concept.parse("serif"))):
        package = digits if world == "digits" else glyphs
        scorer = concept_scorer(world)
        call = dict(images_per_prompt=args.images, num_inference_steps=args.steps,
                    guidance_scale=package.GUIDANCE_SCALE, progress=False)  # fmt: skip
        pipe = package.load_pipeline(args.device)
        before = evaluate(pipe, scorer, **concept.probes(), **call).summary()
        for method in ("closed_form", "distill"):
            row = {"world": world, "concept": concept.name, "method": method, "before": before}
            try:
                adapter, row["seconds"] = timed(args.device, du.erase, pipe, **concept.erase_kwargs(), method=method)
                pipe.load_unlearning(adapter)
                row["after"] = evaluate(pipe, scorer, **concept.probes(), **call).summary()
                pipe.unload_unlearning()
            except Exception:  # recorded; the next case runs
                row["error"] = traceback.format_exc()
                print(row["error"], flush=True)
            rows.append(row)
    lines = [
        "| world | concept | method | seconds / removal | forget before -> after | related after / before | "
        "general after / before |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "after" not in r:
            lines.append(f"| {r['world']} | {r['concept']} | {r['method']} | failed: "
                         f"{r['error'].strip().splitlines()[-1]} | | | |")  # fmt: skip
            continue
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['world']} | {r['concept']} | {r['method']} | {r['seconds']:.2f} | "
            f"{100 * b['forget_accuracy']:.1f}% -> {100 * a['forget_accuracy']:.1f}% | "
            f"{100 * a['related_retention'] / max(b['related_retention'], 1e-9):.1f}% | "
            f"{100 * a['general_retention'] / max(b['general_retention'], 1e-9):.1f}% |"
        )
    return lines, rows


def check_dtypes(args) -> tuple[list[str], list[dict]]:
    f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
    cases = [  # (made on (device, dtype), loaded on (device, dtype), mode)
        (("cpu", f32), (args.device, f16), "adapters"), (("cpu", f32), (args.device, f16), "fused"),
        (("cpu", f32), (args.device, bf16), "adapters"), (("cpu", f32), (args.device, bf16), "fused"),
        ((args.device, f16), (args.device, f16), "adapters"), ((args.device, f16), (args.device, bf16), "fused"),
        ((args.device, bf16), (args.device, f32), "fused"), ((args.device, bf16), (args.device, bf16), "adapters"),
    ]  # fmt: skip
    made = {}
    rows = []
    for maker, loader, mode in cases:
        row = {"made": f"{maker[0]} {str(maker[1])[6:]}", "loaded": f"{loader[0]} {str(loader[1])[6:]}", "mode": mode}
        try:
            if maker not in made:
                removal = du.erase(digits.load_pipeline(*maker), **digits.Concept(7).erase_kwargs())
                made[maker] = Path(tempfile.mkdtemp()) / removal.name
                removal.save_pretrained(made[maker])
            pipe = digits.load_pipeline(*loader)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe.load_unlearning(made[maker], mode=mode)
                row["verified"] = [u.verified for u in pipe.unlearning]
                row["sevens"] = interop.sevens(pipe, args.images, args.steps)
                pipe.unload_unlearning()
                row["sevens_unloaded"] = interop.sevens(pipe, args.images, args.steps)
            loud = {w.category.__name__ for w in caught if issubclass(w.category, du.UnlearningWarning)}
            row["signals"] = sorted(loud)
        except du.UnlearningError as error:  # a refusal is recorded as what happened
            row["signals"] = [f"{type(error).__name__}: {error}"]
        rows.append(row)
    lines = ["| removal made on | loaded on | mode | verified | sevens | sevens after unload | signals |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [f"{r[k]:.2f}" if k in r else "-" for k in ("sevens", "sevens_unloaded")]
        lines.append(f"| {r['made']} | {r['loaded']} | {r['mode']} | {r.get('verified', '-')} | {cells[0]} | "
                     f"{cells[1]} | {', '.join(r['signals']) or '-'} |")  # fmt: skip
    return lines, rows


def check_interop(args) -> tuple[list[str], list]:
    bench = interop.Bench(args.images, args.steps, args.device, torch.float16)
    base_sevens, rows = interop.run(bench)
    lines = [f"Sevens without the removal: {base_sevens:.2f}.", "", *interop.table(rows)]
    return lines, {"base_sevens": base_sevens, "rows": rows}


def check_compile(args) -> tuple[list[str], dict]:
    pipe = digits.load_pipeline(args.device, torch.float16)
    pipe.load_unlearning(du.erase(digits.load_pipeline(args.device), **digits.Concept(7).erase_kwargs()))
    plain, plain_seconds = timed(args.device, interop.sevens, pipe, args.images, args.steps)
    pipe.unet = torch.compile(pipe.unet)
    compiled, first = timed(args.device, interop.sevens, pipe, args.images, args.steps)
    again, second = timed(args.device, interop.sevens, pipe, args.images, args.steps)
    figures = {"sevens_eager": plain, "sevens_compiled": compiled, "sevens_compiled_again": again,
               "eager_s": plain_seconds, "compiled_first_s": first, "compiled_second_s": second,
               "verified": [u.verified for u in pipe.unlearning]}  # fmt: skip
    lines = [
        f"float16, removal loaded, then `pipe.unet = torch.compile(pipe.unet)`: sevens eager {plain:.2f} "
        f"({plain_seconds:.1f} s), compiled {compiled:.2f} (first call {first:.1f} s), again {again:.2f} "
        f"({second:.1f} s); `pipe.unlearning` verified: {figures['verified']}."
    ]
    return lines, figures


def check_attacks(args) -> tuple[list[str], dict]:
    base, pipe = digits.load_pipeline(args.device), digits.load_pipeline(args.device)
    pipe.load_unlearning(du.erase(pipe, **digits.Concept(7).erase_kwargs()))
    settings = AttackSettings(images=args.images, steps=args.steps, progress=False)
    target = attack_target(digits.Concept(7))
    figures = {}
    for attack in ATTACKS:
        try:
            results, seconds = timed(args.device, run_attacks, pipe, target, "digits", reference=base,
                                     attacks=[attack], settings=settings)  # fmt: skip
            figures[attack] = {"asr": results[attack].asr, "seconds": seconds}
        except Exception:  # recorded; the next attack runs
            figures[attack] = {"error": traceback.format_exc()}
            print(figures[attack]["error"], flush=True)
    lines = [f"Every attack (library defaults, {args.images} images) on the closed-form removal of \"seven\":", "",
             "| attack | ASR | seconds |", "|---|---|---|"]  # fmt: skip
    for attack, f in figures.items():
        if "error" in f:
            lines.append(f"| {attack} | failed: {f['error'].strip().splitlines()[-1]} | |")
        else:
            lines.append(f"| {attack} | {100 * f['asr']:.0f}% | {f['seconds']:.1f} |")
    return lines, figures


def check_shapes(args) -> tuple[list[str], list[dict]]:
    import erase_speed

    rows = []
    kwargs = dict(aliases=["pikachu"], mapping_candidates=erase_speed.CANDIDATES, neighbors=erase_speed.NEIGHBORS)
    for name, build, repeats in (("SD 1.5-shaped", erase_speed.sd15, 3), ("SDXL-shaped", erase_speed.sdxl, 2)):
        torch.manual_seed(0)
        pipe, built = timed(args.device, lambda build=build: build().to(args.device))
        runs = [timed(args.device, du.erase, pipe, "cat", **kwargs) for _ in range(repeats)]
        figures = runs[-1][0].metadata["figures"]
        rows.append({"model": name, "build_s": built, "seconds": [s for _, s in runs],
                     "encode_s": figures["encode_seconds"], "predict_s": figures.get("predict_seconds"),
                     "layers": len(runs[-1][0].layer_names),
                     "rank": runs[-1][0].rank})  # fmt: skip
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    lines = ["| model | edited layers | seconds per removal (each run) | of which text encoding (last) | "
             "of which denoiser (last) | rank |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['model']} | {r['layers']} | {', '.join(f'{s:.2f}' for s in r['seconds'])} | "
              f"{r['encode_s']:.2f} | {r['predict_s']:.2f} | {r['rank']} |" for r in rows]  # fmt: skip
    return lines, rows


def check_api(args) -> tuple[list[str], dict]:
    sys.path.insert(0, str(HERE.parent / "tests"))
    import conftest  # the test suite's tiny SDXL, SD3 and FLUX.1 pipelines

    from diffusers_unlearn.cli import main as cli

    device, seven, three = args.device, digits.Concept(7), digits.Concept(3)
    short = du.DistillConfig(steps=100)

    def hardened_closed_form():
        pipe = digits.load_pipeline(device)
        pipe.load_unlearning(du.erase(pipe, **seven.erase_kwargs(), harden=True))
        return f"sevens {interop.sevens(pipe, args.images, args.steps):.2f}"

    def hardened_distill():
        pipe = digits.load_pipeline(device)
        pipe.load_unlearning(du.erase(pipe, **seven.erase_kwargs(), method="distill", config=short, harden=True))
        return f"sevens {interop.sevens(pipe, args.images, args.steps):.2f}"

    def distill_on_a_chain():
        pipe = digits.load_pipeline(device)
        pipe.load_unlearning(du.erase(pipe, **seven.erase_kwargs()), mode="fused")
        config = du.DistillConfig(steps=100, anchor="base", lambda_earlier=1.0)
        pipe.load_unlearning(du.erase(pipe, **three.erase_kwargs(), method="distill", config=config))
        return f"sevens {interop.sevens(pipe, args.images, args.steps):.2f}"

    def stack_operations():
        pipe = digits.load_pipeline(device)
        first = du.erase(pipe, **seven.erase_kwargs())
        pipe.load_unlearning(first)
        stack = du.UnlearningStack([first, du.erase(pipe, **three.erase_kwargs())])
        base = digits.load_pipeline(device)
        report = stack.check(base)
        joint = stack.merge("joint", pipe=base)
        stack.remove(first.name, pipe=base)
        base.load_unlearning(joint)
        shown = interop.sevens(base, args.images, args.steps)
        return f"check passed {report.passed}; joint merge rank {joint.rank}; sevens {shown:.2f}"

    def tiny(build):
        def run():
            pipe = build().to(device)
            distilled = du.erase(pipe, "cat", neighbors=["dog"], method="distill", config=du.DistillConfig(steps=20),
                                 name="no-cat-distilled")  # fmt: skip
            made = [du.erase(pipe, "cat", neighbors=["dog"]), distilled]
            pipe.load_unlearning(made, mode="fused")
            return f"verified {[u.verified for u in pipe.unlearning]}"

        return run

    def command_line():
        with tempfile.TemporaryDirectory() as folder:
            code = cli(["erase", "--model", "digits", "--concept", "seven", "--device", device, "--dtype", "float16",
                        "--output", f"{folder}/no-seven"])  # fmt: skip
            return f"exit code {code}"

    cases = {
        "erase(harden=True), closed form": hardened_closed_form,
        "erase(harden=True), distill (100 steps)": hardened_distill,
        "distill on a fused chain, replay held to the untouched model": distill_on_a_chain,
        "UnlearningStack: check, merge('joint'), remove with re-solve": stack_operations,
        "tiny SDXL: closed form and distill, fused": tiny(conftest.make_sdxl_pipeline),
        "tiny SD3: closed form and distill, fused": tiny(conftest.make_sd3_pipeline),
        "tiny FLUX.1: closed form and distill, fused": tiny(conftest.make_flux_pipeline),
        "diffusers-unlearn erase --device --dtype float16": command_line,
    }
    figures = {}
    for name, case in cases.items():
        try:
            outcome, seconds = timed(device, case)
            figures[name] = {"outcome": outcome, "seconds": seconds}
        except Exception:  # recorded; the next case runs
            figures[name] = {"error": traceback.format_exc()}
            print(figures[name]["error"], flush=True)
    lines = ["| operation | outcome | seconds |", "|---|---|---|"]
    for name, f in figures.items():
        outcome = f"failed: {f['error'].strip().splitlines()[-1]}" if "error" in f else f["outcome"]
        lines.append(f"| {name} | {outcome} | {f.get('seconds', 0):.1f} |")
    return lines, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=8, help="images per prompt (default 8)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--quick", action="store_true", help="2 images per prompt, 10 steps")
    parser.add_argument("--skip", default="", help=f"comma-separated checks to leave out, of {', '.join(CHECKS)}")
    parser.add_argument("--output", type=Path, help="markdown file (and .json beside it) to write")
    args = parser.parse_args()
    if args.quick:
        args.images, args.steps = 2, 10
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skipped - set(CHECKS)
    if unknown:
        parser.error(f"unknown checks {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.machine()
    header = [
        f"# The library on {args.device} ({name})",
        "",
        f"Generated by `python benchmarks/gpu.py` (its docstring says what each check measures): torch "
        f"{torch.__version__}, {args.images} images per prompt, {args.steps} denoising steps.",
    ]
    report = Report(args.output, header)
    functions = {"erase": check_erase, "dtypes": check_dtypes, "interop": check_interop, "compile": check_compile,
                 "attacks": check_attacks, "shapes": check_shapes, "api": check_api}  # fmt: skip
    for check in CHECKS:
        if check in skipped:
            continue
        started = time.perf_counter()
        try:
            lines, figures = functions[check](args)
        except Exception:  # recorded, and the next check runs
            failure = traceback.format_exc()
            lines, figures = ["```", failure.rstrip(), "```"], {"error": failure}
        report.add(check, ["", f"## {check} ({time.perf_counter() - started:.0f} s)", "", *lines], figures)


if __name__ == "__main__":
    main()
