"""Issue 13's seven interop failures, re-run on the embedded digits model: is "seven" still erased?

Each scenario starts from the digits pipeline, erases "seven" (`Concept(7).erase_kwargs()`), loads the removal, runs
the ordinary diffusers operations the issue reported, and measures

- `sevens`: the share of images the digits scorer reads as a 7, over the forget probe's prompts (4 colours and
  "the number seven"), `--images` seeds each, `--steps` denoising steps;
- `max |W - expected|`: the largest difference of an edited layer's effective weight (its forward pass on an
  identity matrix) from what it must be (base, plus the removal if loaded, plus a user's LoRA where diffusers keeps
  it);
- what `pipe.unlearning` reports, and which signal (`InteropWarning` / `InteropError`) the operations raised.

The "style" LoRA is a random rank-4 LoRA on the self-attention `to_q` / `to_v` and cross-attention `to_k` / `to_v`
layers (its weight change is 5% of the layers' norm): a stand-in for a user's style LoRA that leaves digits
readable.

    python benchmarks/interop.py                 # writes docs/benchmarks/interop.md
    python benchmarks/interop.py --images 8 --quick   # fewer images, writes nothing
    python benchmarks/interop.py --device cuda --dtype float16 --quick   # on a GPU (benchmarks/gpu.py runs this)

On another device or dtype the removal is made in float32 on that device and loaded into pipelines of `--dtype`.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
import warnings
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

import diffusers_unlearn as du
from diffusers_unlearn import digits
from diffusers_unlearn.digits import DigitsConceptScorer
from diffusers_unlearn.digits.concepts import Concept
from diffusers_unlearn.evaluation import generate_images

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "interop.md"


def style_lora(unet, seed: int = 0, rank: int = 4, relative: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, module in unet.named_modules():
        if name.endswith(("attn1.to_q", "attn1.to_v", "attn2.to_k", "attn2.to_v")):
            weight = module.weight.detach().float().cpu()
            a = torch.randn(rank, weight.shape[1], generator=generator)
            b = torch.randn(weight.shape[0], rank, generator=generator)
            b *= relative * weight.norm() / (b @ a).norm()
            weights[f"unet.{name}.lora_A.weight"], weights[f"unet.{name}.lora_B.weight"] = a, b
    return weights


def effective(module) -> torch.Tensor:
    inner = module.get_base_layer() if hasattr(module, "get_base_layer") else module
    with torch.no_grad():
        eye = torch.eye(inner.in_features, dtype=inner.weight.dtype, device=inner.weight.device)
        return module(eye).float().T.cpu()


@functools.cache
def _scorer() -> DigitsConceptScorer:
    return DigitsConceptScorer()


def sevens(pipe, images: int, steps: int) -> float:
    """The share of the forget probe's images (`Concept(7).forget_probe()`) the digits scorer reads as a 7."""
    probe = Concept(7).forget_probe()
    shown = generate_images(
        pipe, list(probe.prompts), images_per_prompt=images, num_inference_steps=steps, progress=False
    )
    return float(_scorer().shows(shown, [{"digit": 7}] * len(shown)).mean())


class Bench:
    def __init__(self, images: int, steps: int, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.images, self.steps, self.device, self.dtype = images, steps, device, dtype
        self.probe = Concept(7).forget_probe()
        base = digits.load_pipeline(device)
        self.removal = du.erase(base, **Concept(7).erase_kwargs())
        self.style = style_lora(base.unet)
        self.layers = self.removal.layer_names
        base = self.pipeline()
        self.base = {layer: base.unet.get_submodule(layer).weight.detach().float().cpu() for layer in self.layers}
        self.folder = Path(tempfile.mkdtemp()) / "no-seven"
        self.removal.save_pretrained(self.folder)
        self.refused: list[str] = []

    def pipeline(self) -> StableDiffusionPipeline:
        return digits.load_pipeline(self.device, self.dtype)

    def sevens(self, pipe) -> float:
        return sevens(pipe, self.images, self.steps)

    def off_by(self, pipe, removal: float, style: float) -> float:
        unet = getattr(pipe.unet, "_orig_mod", pipe.unet)
        worst = 0.0
        for layer in self.layers:
            expected = self.base[layer] + removal * self.removal.delta(layer)
            a, b = self.style.get(f"unet.{layer}.lora_A.weight"), self.style.get(f"unet.{layer}.lora_B.weight")
            if a is not None:
                expected = expected + style * (b @ a)
            worst = max(worst, float((effective(unet.get_submodule(layer)) - expected).abs().max()))
        return worst


def scenarios(bench: Bench):
    """`(bug, what, run)`: run(pipe) does the operations and returns (removal expected, style expected)."""

    def bug1(pipe):
        pipe.load_unlearning(bench.removal)
        pipe.fuse_lora()
        pipe.unload_unlearning()
        return 0.0, 0.0

    def bug2(pipe):
        pipe.load_unlearning(bench.removal)
        pipe.unet = torch.compile(pipe.unet)  # wrapped only; generation below runs the unwrapped UNet
        pipe.unload_unlearning()
        assert pipe.unlearning == ()
        pipe.load_unlearning(bench.removal)  # no BaseModelMismatchError
        pipe.unet = pipe.unet._orig_mod
        return 1.0, 0.0

    def bug3(pipe):
        pipe.load_unlearning(bench.removal, mode="fused")
        pipe.load_lora_weights(dict(bench.style), adapter_name="style")
        pipe.fuse_lora()
        pipe.unload_lora_weights()
        pipe.unload_unlearning()
        return 0.0, 1.0

    def bug4(pipe):
        pipe.load_unlearning(bench.removal)
        pipe.load_lora_weights(dict(bench.style), adapter_name="style")
        pipe.set_adapters(["style"])
        pipe.set_adapters(["style"], adapter_weights=[0.5])
        return 1.0, 0.5

    def bug5(pipe):
        pipe.load_unlearning(bench.folder, mode="fused")
        try:
            pipe.load_lora_weights(bench.folder)
        except du.InteropError:
            bench.refused.append("InteropError")
        return 1.0, 0.0

    def bug6(pipe):
        with tempfile.TemporaryDirectory() as folder:
            pipe.load_unlearning(bench.removal)
            try:
                pipe.save_pretrained(folder)
            except du.InteropError:
                bench.refused.append("InteropError")
            assert not (Path(folder) / "model_index.json").exists()
            pipe.unload_unlearning()
            pipe.load_unlearning(bench.removal, mode="fused")
            pipe.save_pretrained(folder)
            reloaded = StableDiffusionPipeline.from_pretrained(folder, dtype=bench.dtype).to(bench.device)
            reloaded.set_progress_bar_config(disable=True)
            assert du.UnlearningStack.from_pretrained(Path(folder) / "unlearning").names == [bench.removal.name]
        return reloaded, 1.0, 0.0

    def bug7(pipe):
        pipe.load_unlearning(bench.removal)
        pipe.load_lora_weights(dict(bench.style), adapter_name="style")
        pipe.unload_lora_weights()
        return 1.0, 0.0

    return [
        (1, "load; fuse_lora(); unload_unlearning()", bug1),
        (2, "load; pipe.unet = torch.compile(pipe.unet); unload_unlearning(); load again", bug2),
        (3, "load fused; style LoRA fuse_lora(); unload_lora_weights(); unload_unlearning()", bug3),
        (4, "load; load style LoRA; set_adapters(['style']); set_adapters(['style'], [0.5])", bug4),
        (5, "load fused from a folder; load_lora_weights(same folder)", bug5),
        (6, "save_pretrained with adapters (refused), then fused, from_pretrained", bug6),
        (7, "load; load style LoRA; unload_lora_weights()", bug7),
    ]


def run(bench: Bench) -> tuple[float, list[tuple]]:
    """Sevens of the untouched pipeline, and one row per scenario: (bug, operations, sevens, max |W - expected|,
    `pipe.unlearning`, signals)."""
    base_sevens = bench.sevens(bench.pipeline())
    rows = []
    for bug, what, scenario in scenarios(bench):
        pipe = bench.pipeline()
        bench.refused.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome = scenario(pipe)
        if len(outcome) == 3:
            pipe, removal, style = outcome
        else:
            removal, style = outcome
        loud = sorted({w.category.__name__ for w in caught if issubclass(w.category, du.UnlearningWarning)})
        loud += [f"{error} (refused)" for error in bench.refused]
        listed = ", ".join(f"{u.name} verified={u.verified}" for u in pipe.unlearning) or "(none)"
        rows.append((bug, what, bench.sevens(pipe), bench.off_by(pipe, removal, style), listed, ", ".join(loud)))
        print(rows[-1], flush=True)
    return base_sevens, rows


def table(rows: list[tuple]) -> list[str]:
    """The scenarios' rows as a markdown table."""
    lines = [
        "| bug | operations | sevens | max \\|W - expected\\| | `pipe.unlearning` | signals |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [f"| {b} | {w} | {s:.2f} | {o:.1e} | {u} | {x or '-'} |" for b, w, s, o, u, x in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="images per prompt (default 16)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    parser.add_argument("--device", default="cpu", help="where the pipelines run (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--quick", action="store_true", help="write nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    bench = Bench(args.images, args.steps, args.device, getattr(torch, args.dtype))
    base_sevens, rows = run(bench)
    where = "" if (args.device, args.dtype) == ("cpu", "float32") else f" ({args.device}, {args.dtype})"
    lines = [
        f"# Interop on the digits model (issue 13's seven failures, re-run){where}",
        "",
        "Generated by `python benchmarks/interop.py` (the script's docstring says what is measured). The removal of",
        f'"seven" made by `erase(pipe, **Concept(7).erase_kwargs())`; sevens without any removal: {base_sevens:.2f}',
        f"({args.images} images x {len(bench.probe.prompts)} prompts, {args.steps} steps, seeds 0-{args.images - 1}).",
        "`max |W - expected|`: largest difference of an edited layer's effective weight from the expected one",
        "(base, plus the removal where it must be in effect, plus the style LoRA where diffusers keeps it).",
        "",
        *table(rows),
        "",
        f"Total {time.perf_counter() - started:.0f} s on this machine (2 CPU cores, shared).",
        "",
    ]
    print("\n".join(lines))
    if not args.quick:
        OUT.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
