"""Continual removal on an embedded model: 25 removals on digits, or the LACU-shaped 50 on glyphs (`--world glyphs`).

Methods, all built from the same code:

- `ours`: closed form, fine-grained targets, local protection, each removal made on top of the stack;
- `chain (before)` (only when asked for): the same without issue 16's options (`--anchor`, `--earlier-protection`);
- `coarse target`: the same, but every forget prompt mapped to "" (ESD / UCE-style anchor);
- `no local protection`: the same, with `lambda_protect=0` (no neighbours, no empty prompt, no earlier removals);
- `naive stacking`: locality-aware removals each made independently on the untouched model, then summed;
- `joint merge`: the same independent removals, re-solved together at every step (`stack.merge("joint")`);
- `distill`: `method="distill"` (LoRA distillation, `DistillConfig(max_timestep=1000)`), each made on top of the stack;
- `distill, base anchor`: the same with `DistillConfig(anchor="base")`: protected prompts replayed against the
  untouched model, earlier removals' forget prompts against the chain (issue 16, hypothesis 1);
- `distill, cross-attention`: the same as `distill` with the LoRA on every cross-attention projection (queries and
  output too, `CROSS_ATTENTION`), not only the keys and values (issue 16, "more room for the edit").

After every step: forget accuracy over all removals so far (share of images still showing a removed concept;
chance is 10% for digits and combinations, 25% for colours), related retention (look-alike digits, the same
digit in other colours / strokes) and general retention (the digits not removed, asked without colour: "a five",
"the number 5", and the cells related to no removal), both as a percentage of the untouched model on the same
prompts and seeds. Writes docs/benchmarks/continual.md and continual.png.

    python benchmarks/continual.py            # full run (25 removals x 4 methods)
    python benchmarks/continual.py --quick    # 6 removals, fewer images
    python benchmarks/continual.py --methods distill --update   # add / refresh one method in the report
    python benchmarks/continual.py --render   # rewrite the report from continual.json
    python benchmarks/continual.py --world glyphs   # 50 removals on the glyphs model -> continual_glyphs.md
    python benchmarks/continual.py --methods distill --chain-dir runs --output /tmp/a.md   # keep every removal
    python benchmarks/continual.py --methods distill --chain-dir runs --reuse 11 --removals 14 --output /tmp/b.md
        # the first 11 removals loaded from runs/, steps 12-14 made again (with other options: a variant from there)
    python benchmarks/continual.py --methods distill --harden-prefixes 2 --harden-rounds 0 --output /tmp/c.md
        # every removal hardened: HardenConfig from the --harden-* options (on glyphs the prefixes are style words)

On digits, a combination ("bold yellow nine") is measured on its digit (the historical column) and, in the
conjunction column, as shown only if digit, colour and stroke all are. On glyphs every concept is measured by
conjunction (an image shows "serif Q" only if it shows a Q in the serif style), plus the paraphrase removal rate
on `glyphs.HELD_OUT_TEMPLATES`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import shlex
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

import diffusers_unlearn as du
from diffusers_unlearn import digits
from diffusers_unlearn.digits import DigitsConceptScorer
from diffusers_unlearn.digits.concepts import ALL_CELLS, Concept, cell_probe
from diffusers_unlearn.evaluation import ConceptProbe, EvaluationResult, evaluate, paired_change
from diffusers_unlearn.glyphs import GlyphsConceptScorer
from diffusers_unlearn.glyphs import concepts as glyph_concepts
from diffusers_unlearn.glyphs import data as glyph_data

ROOT = Path(__file__).resolve().parents[1]

SEQUENCE: tuple[Concept, ...] = (
    Concept(7),
    Concept(3, "blue"),
    Concept(colour="red"),
    Concept(5, "green", "bold"),
    Concept(8, "yellow"),
    Concept(0, "blue", "thin"),
    Concept(4),
    Concept(2, "green"),
    Concept(9, "yellow", "bold"),
    Concept(6, "blue", "bold"),
    Concept(1, "green", "thin"),
    Concept(5, "yellow"),
    Concept(2, "blue", "thin"),
    Concept(0, "green", "bold"),
    Concept(9, "blue"),
    Concept(6, "yellow", "thin"),
    Concept(8, "green", "bold"),
    Concept(1, "yellow", "bold"),
    Concept(3, "green", "thin"),
    Concept(6, "green", "thin"),
    Concept(0, "yellow", "bold"),
    Concept(8, "blue", "thin"),
    Concept(2, "yellow", "thin"),
    Concept(9, "green", "thin"),
    Concept(1, "blue", "bold"),
)
"""25 removals: two whole digits, one whole colour, 6 digit-colour combinations, 16 digit-colour-stroke ones."""

METHODS = (
    "ours",
    "coarse target",
    "no local protection",
    "naive stacking",
    "joint merge",
    "distill",
    "distill, base anchor",
    "distill, cross-attention",
)
CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
REFERENCE = "chain (before)"
"""Not run by default: the closed form with the solve's default protection, beside an `ours` run with `--anchor` or
`--earlier-protection` (issue 16's variants)."""


def erase_kwargs(
    concept: Concept, method: str, config: du.ClosedFormConfig, distill: dict | None = None, **concept_options
) -> dict:
    kwargs = concept.erase_kwargs(**concept_options) | {"config": config}
    if method == "coarse target":
        kwargs["anchor"] = ""
    if method == REFERENCE:  # the closed form without issue 16's options: protection held to the chain
        kwargs["config"] = du.ClosedFormConfig(lambda_protect=config.lambda_protect, lambda_reg=config.lambda_reg)
    if method.startswith("distill"):
        # the digits model fixes colour and shape in its first, noisiest steps: train on all timesteps, not only
        # below 600 (LACU's range for Stable Diffusion), or colours are not erased (measured: "red" 90% kept)
        options = {"anchor": "base"} if method == "distill, base anchor" else {}
        if method == "distill, cross-attention":
            options["target_modules"] = CROSS_ATTENTION
        config = du.DistillConfig(max_timestep=1000, **{**options, **(distill or {})})
        kwargs |= {"method": "distill", "config": config}
    if method == "no local protection":
        kwargs.pop("neighbors", None)
        kwargs.pop("preserve", None)
        kwargs["config"] = du.ClosedFormConfig(lambda_protect=0.0)
    return kwargs


def digit_probe(digit: int) -> ConceptProbe:
    """A general probe: a digit asked for without colour or stroke."""
    word, numeral = digits.DIGITS[digit], digits.NUMERALS[digit]
    return ConceptProbe(f"digit {word}", (f"a {word}", f"the number {numeral}"), {"digit": digit})


def probes_at(removed: list[Concept]):
    """Forget probes of the removed concepts; related cells still allowed; general: the digits not removed
    (asked without colour) and the allowed cells related to no removal."""
    allowed = [cell for cell in ALL_CELLS if not any(c.covers(*cell) for c in removed)]
    related = {cell for c in removed for cell in c.related() if cell in allowed}
    forget = [c.forget_probe() for c in removed] + [conjunction_probe(c) for c in removed if c.kind == "combination"]
    related_probes = [cell_probe(*cell) for cell in allowed if cell in related]
    whole_digits = {c.digit for c in removed if c.kind == "digit"}
    general_probes = [digit_probe(d) for d in range(10) if d not in whole_digits]
    general_probes += [cell_probe(*cell) for cell in allowed if cell not in related]
    return forget, related_probes, general_probes


CONJUNCTION = " (all parts)"


def conjunction_probe(concept: Concept) -> ConceptProbe:
    """A combination's forget probe with the conjunction check: its digit *and* colour (and stroke) all shown."""
    probe = concept.forget_probe()
    check = {"digit": concept.digit, "colour": concept.colour} | ({"stroke": concept.stroke} if concept.stroke else {})
    return ConceptProbe(concept.name + CONJUNCTION, probe.prompts, check)


def excess_over_chance(concept: Concept, result: EvaluationResult) -> tuple[float, float]:
    """How far over chance a removed concept's images show it: by its digit (or colour), and by all its parts (a
    combination's conjunction probe; the same figure for the others). The bar is 10 points on either."""
    shown = result.forget[concept.name] - concept.chance
    if concept.kind != "combination":
        return shown, shown
    return shown, result.forget[concept.name + CONJUNCTION] - conjunction_chance(concept)


def conjunction_chance(concept: Concept) -> float:
    """One in ten digits, times one in four colours, times one in two strokes if the concept has one."""
    return 1 / len(digits.DIGITS) / len(digits.COLOURS) / (len(digits.STROKES) if concept.stroke else 1)


def relative(now: dict[str, float], before: dict[str, float]) -> float:
    """Retention now as a share of the untouched model's on the same cells."""
    if not now:
        return float("nan")
    base = sum(before[k] for k in now)
    return sum(now.values()) / base if base else float("nan")


LOST_AS = ("neighbouring style", "other style", "character", "colour", "more than one")


def _lost_misreads(untouched: EvaluationResult, now: EvaluationResult, probes: list[ConceptProbe]):
    """`(probe, misread)` of each image of `probes` that showed its cell with the untouched model (same seed) and
    does not now: what the scorer reads in it instead (`EvaluationResult.misread`)."""
    for probe in probes:
        lost = untouched.shown[probe.concept] & ~now.shown[probe.concept]
        for j in lost.nonzero()[0]:
            yield probe, now.misread[probe.concept][j]


def lost_as(untouched: EvaluationResult, now: EvaluationResult, probes: list[ConceptProbe]) -> dict[str, int]:
    """Glyphs: what the images of `probes` that showed their cell with the untouched model (same seeds) and do not
    now show instead, counted by what the scorer read otherwise (`EvaluationResult.misread`): only the style, as one
    the model draws alike (`STYLE_NEIGHBOURS`: a red roman Q drawn serif) or as another; the character; the colour;
    more than one of them. Swapped, `lost_as(now, untouched, probes)` counts the images gained, by what they showed
    untouched: a kind lost more often than gained is what the change costs, beyond reshuffling borderline images."""
    counts = dict.fromkeys(LOST_AS, 0)
    for probe, misread in _lost_misreads(untouched, now, probes):
        if set(misread) == {"style"}:
            near = misread["style"] in glyph_concepts.STYLE_NEIGHBOURS[probe.check["style"]]
            counts["neighbouring style" if near else "other style"] += 1
        else:
            counts["character" if set(misread) == {"char"} else "colour" if set(misread) == {"colour"} else
                   "more than one"] += 1  # fmt: skip
    return counts


def lost_figures(untouched: EvaluationResult, now: EvaluationResult, related: list, general: list) -> dict:
    """A step's row entries on what its lost images show instead and what its gained ones showed (`lost_as`), and
    the most frequent changes among the lost ones (`lost_changes`), for its related and its general cells."""
    figures = {}
    for kind, probes in (("related", related), ("general", general)):
        figures[f"{kind}_lost_as"] = lost_as(untouched, now, probes)
        figures[f"{kind}_gained_from"] = lost_as(now, untouched, probes)
        figures[f"{kind}_lost_changes"] = lost_changes(untouched, now, probes)
    return figures


def boundary_prompts(concept, count: int) -> list[str]:
    """Glyphs: `count` prompts across the model's weakest boundaries, for a removal to hold as a group of its own.
    Random cells the concept does not cover, each beside its twin in the nearest style and in the nearest colour
    (`STYLE_NEIGHBOURS`, `COLOUR_NEIGHBOURS`: "the orange x in bold", "the orange x in heavy", "the red x in bold"),
    in the training templates other than the probes' phrasing. What a chain's lost images show instead is mostly
    such a twin (`lost_as`)."""
    rng = random.Random(zlib.crc32(concept.name.encode()) + 2)
    templates = [t for t in glyph_data.TEMPLATES if "{style}" in t and "{colour}" in t and
                 t != "the {colour} {char} in {style}" and "capital" not in t]  # fmt: skip
    prompts: list[str] = []
    for char, style, colour in rng.sample(list(glyph_concepts.ALL_CELLS), len(glyph_concepts.ALL_CELLS)):
        twins = [(char, style, colour), (char, glyph_concepts.STYLE_NEIGHBOURS[style][0], colour),
                 (char, style, glyph_concepts.COLOUR_NEIGHBOURS[colour][0])]  # fmt: skip
        if any(concept.covers(*cell) for cell in twins):
            continue
        template, background = rng.choice(templates), rng.choice(("black", "white"))
        texts = [glyph_data.fill(template, *cell, background) for cell in twins]
        if not any(concept.mentioned_in(text) for text in texts):
            prompts += [text for text in texts if text not in prompts]
        if len(prompts) >= count:
            return prompts[:count]
    return prompts


def lost_changes(untouched: EvaluationResult, now: EvaluationResult, probes: list[ConceptProbe], top: int = 12):
    """Glyphs: the most frequent changes among the images `lost_as` counts, as `"colour orange -> red": n` (each
    attribute read otherwise, asked -> read): which boundary a step moves."""
    changes: dict[str, int] = {}
    for probe, misread in _lost_misreads(untouched, now, probes):
        for attribute, read in misread.items():
            key = f"{attribute} {probe.check[attribute]} -> {read}"
            changes[key] = changes.get(key, 0) + 1
    return dict(sorted(changes.items(), key=lambda kv: -kv[1])[:top])


def closed_form_config(args) -> du.ClosedFormConfig:
    return du.ClosedFormConfig(
        lambda_protect=args.lambda_protect, lambda_reg=args.lambda_reg, anchor=args.anchor,
        earlier_protection=args.earlier_protection,
    )  # fmt: skip


KIND_FLAGS = {
    "identity": ("eta", "lambda-replay", "min-reach"),
    "character": ("eta", "min-reach"),
    "style": ("eta", "lambda-replay"),
}
"""Glyphs: the fields each kind of concept may set with a flag of its own, `--distill-{kind}-{field}`."""
GENERAL_FLAGS = {
    "eta": ("--distill-eta", "negative_guidance"), "lambda-replay": ("--lambda-replay", "lambda_replay"),
    "min-reach": ("--distill-min-reach", "min_reach"),
}  # fmt: skip
"""Each of those fields: the general flag it stands in for, and its `DistillConfig` field."""


def distill_options(args, concept=None, step: int | None = None) -> dict:
    """The `DistillConfig` fields the command line sets: those given (`None`: unset), and those not 0. For a glyphs
    concept, the kind's own flag (`KIND_FLAGS`) where given, in place of the general one; for a coloured identity,
    "red bold R", `--distill-coloured-identity-eta` before `--distill-identity-eta`. The repair
    (`--distill-repair-steps`) on every removal, or with `--distill-repair-every K` on the removals of steps K, 2K,
    ..."""
    kind = getattr(concept, "kind", None)
    value = {field: getattr(args, flag.lstrip("-").replace("-", "_")) for field, (flag, _) in GENERAL_FLAGS.items()}
    for field in KIND_FLAGS.get(kind, ()):
        if (own := getattr(args, f"distill_{kind}_{field}".replace("-", "_"))) is not None:
            value[field] = own
    if kind == "identity" and concept.colour is not None and args.distill_coloured_identity_eta is not None:
        value["eta"] = args.distill_coloured_identity_eta
    eta, replay, reach = value["eta"], value["lambda-replay"], value["min-reach"]
    given = {
        "lambda_earlier": args.distill_lambda_earlier, "negative_guidance": eta, "base_share": args.distill_base_share,
        "min_reach": reach, "max_steps": args.distill_max_steps,
    }  # fmt: skip
    nonzero = {"rank": args.distill_rank, "latent_pool": args.distill_latent_pool,
               "replay_pool": args.distill_replay_pool, "earlier_push": args.distill_earlier_push,
               "earlier_protection": args.distill_earlier_protection,
               "earlier_overlap": args.distill_earlier_overlap,
               "earlier_hardened": args.distill_earlier_hardened, "earlier_derived": args.distill_earlier_derived,
               "siblings": args.distill_siblings}  # fmt: skip
    modules = {"target_modules": tuple(args.distill_modules)} if args.distill_modules else {}
    if args.distill_earlier_anchor != "chain":
        nonzero["earlier_anchor"] = args.distill_earlier_anchor
    if args.distill_earlier_push_scope != "all":
        nonzero["earlier_push_scope"] = args.distill_earlier_push_scope
    every = args.distill_repair_every
    if args.distill_repair_steps and (every == 1 or (step is not None and step % every == 0)):
        nonzero["repair_steps"] = args.distill_repair_steps
        given["repair_push"] = args.distill_repair_push
        if args.distill_repair_anchor != "chain":
            nonzero["repair_anchor"] = args.distill_repair_anchor
    return {
        "steps": args.distill_steps, "lambda_replay": replay, **modules,
        **{k: v for k, v in given.items() if v is not None}, **{k: v for k, v in nonzero.items() if v},
    }  # fmt: skip


def erase_step(
    pipe, concept: Concept, method: str, config: du.ClosedFormConfig, removed: list[Concept], digits_first=False,
    erase_at: str = "digit", distill: dict | None = None, name: str | None = None, background: int = 0,
    harden: du.HardenConfig | None = None, erase_implicit: bool = False,
):  # fmt: skip
    """One removal; when every mapping target is refused, the user's recourse the error names: the same request
    with other digits the chain has not removed as candidates ("a bold yellow six" for "a bold yellow nine").
    `digits_first`: a combination gets those candidates from the start. Returns the removal and the fallback used,
    if any."""
    kwargs = erase_kwargs(concept, method, config, distill, erase_at=erase_at, background=background)
    kwargs |= ({"name": name} if name else {}) | {"harden": harden or False, "erase_implicit": erase_implicit}
    gone = {c.digit for c in removed if c.kind == "digit"} | {concept.digit}
    fallback = [digits.DIGITS[d] for d in range(len(digits.DIGITS)) if d not in gone]
    if digits_first and concept.kind == "combination" and "anchor" not in kwargs:
        kwargs["mapping_candidates"] = [*kwargs.get("mapping_candidates", []), *fallback]
        return du.erase(pipe, **kwargs), "other digits offered"
    try:
        return du.erase(pipe, **kwargs), None
    except du.InvalidConceptError as error:
        if concept.digit is None or "anchor" in kwargs:
            raise
        first = error
    kwargs["mapping_candidates"] = [*kwargs.get("mapping_candidates", []), *fallback]
    try:
        return du.erase(pipe, **kwargs), "other digits"
    except du.InvalidConceptError:
        raise first from None


def run(args) -> dict:
    scorer = DigitsConceptScorer()
    config = closed_form_config(args)
    call = {"images_per_prompt": args.images, "num_inference_steps": args.steps, "progress": False}
    sequence = SEQUENCE[: args.removals]
    pipe = digits.load_pipeline()
    all_forget = [c.forget_probe() for c in sequence]
    every_cell = [cell_probe(*c) for c in ALL_CELLS] + [digit_probe(d) for d in range(10)]
    all_forget += [conjunction_probe(c) for c in sequence if c.kind == "combination"]
    untouched = evaluate(pipe, scorer, forget=all_forget, general=every_cell, **call)
    base_cells = untouched.general
    results = {"untouched": {"forget": untouched.forget, "cells": base_cells}, "methods": {}}
    print(f"untouched: forget {untouched.forget_accuracy:.3f}, cells {untouched.general_retention:.3f}", flush=True)

    untouched_pipe = digits.load_pipeline()  # the interference check reads the untouched weights
    harden = harden_config(args) if hardening_asked(args) else None  # on every removal
    for method in args.methods:
        pipe = digits.load_pipeline()
        bare = digits.load_pipeline() if method in ("naive stacking", "joint merge") else None
        rows, made = [], []
        holder: dict[str, str] = {}  # adapter_id -> the concept it removes
        undone: dict[str, float] = {}  # concept -> share of its removal taken back since it was last made
        for step, concept in enumerate(sequence, 1):
            started = time.perf_counter()
            fallback = None
            repaired, notes = [], []
            saved = chain_step(args.chain_dir, method, step)
            try:
                if saved is not None and step <= args.reuse:  # made by an earlier run with the same options
                    adapter = du.UnlearningAdapter.from_pretrained(saved)
                elif args.target_fallback:
                    adapter, fallback = erase_step(
                        bare or pipe, concept, method, config, list(sequence[: step - 1]), args.combination_digits,
                        args.combination_at, distill_options(args), background=args.background, harden=harden,
                        erase_implicit=args.erase_implicit,
                    )  # fmt: skip
                else:
                    kwargs = erase_kwargs(
                        concept, method, config, distill_options(args), erase_at=args.combination_at,
                        background=args.background,
                    )  # fmt: skip
                    implicit = args.erase_implicit
                    adapter = du.erase(bare or pipe, **kwargs, harden=harden or False, erase_implicit=implicit)
            except du.InvalidConceptError as error:  # every mapping target rejected: this step removes nothing
                print(f"{method:>20} step {step:2d} {concept.name:>18}: no removal made: {error}", flush=True)
                adapter = None
            if adapter is not None and saved is not None and step > args.reuse:
                adapter.save_pretrained(saved)
            if adapter is not None:
                made.append(adapter)
                if method == "joint merge":
                    adapter = du.UnlearningStack(made).merge("joint", pipe=bare)
                    pipe.unload_unlearning()
            if adapter is not None:
                pipe.load_unlearning(adapter, mode="fused")
                _track_undone(adapter, concept.name, holder, undone)
            while args.repair_undone and adapter is not None:  # re-make a removal the chain has taken back
                due = [c for c in undone if undone[c] > args.repair_undone and c not in repaired]  # once a step each
                if not due:
                    break
                worst = max(due, key=undone.__getitem__)
                again = next(c for c in sequence if c.name == worst)
                try:
                    fixed, _ = erase_step(pipe, again, method, config, list(sequence[:step]), args.combination_digits,
                                          args.combination_at, distill_options(args), background=args.background,
                                          name=f"no-{worst.replace(' ', '-')}-again-{step}")  # fmt: skip
                except du.InvalidConceptError as error:
                    print(f"{method:>20} step {step:2d}: {worst} not re-made: {error}", flush=True)
                    undone[worst] = 0.0
                    continue
                made.append(fixed)
                pipe.load_unlearning(fixed, mode="fused")
                repaired.append(worst)
                notes.append(f"{worst} ({undone[worst]:.2f})")
                _track_undone(fixed, worst, holder, undone)
            seconds = time.perf_counter() - started
            if (step % args.eval_every and step != len(sequence)) or step < args.reuse:
                rows.append({"step": step, "concept": concept.name, "erase_seconds": seconds, "removal_made":
                             adapter is not None, "target_fallback": fallback, **_made(adapter)})  # fmt: skip
                continue
            removed = list(sequence[:step])
            forget, related, general = probes_at(removed)
            result = evaluate(pipe, scorer, forget=forget, related=related, general=general, **call)
            excesses = [excess_over_chance(c, result) for c in removed]  # by digit, by every part
            excess, conjunction_excess = max(e[0] for e in excesses), max(e[1] for e in excesses)
            combos = [c for c in removed if c.kind == "combination"]
            row = {
                "step": step,
                "concept": concept.name,
                "target_fallback": fallback,
                "worst_conjunction_excess": conjunction_excess,
                "forget_accuracy": sum(result.forget[c.name] for c in removed) / len(removed),
                "conjunction_forget": (
                    sum(result.forget[c.name + CONJUNCTION] for c in combos) / len(combos) if combos else math.nan
                ),
                "conjunction_chance": (
                    sum(conjunction_chance(c) for c in combos) / len(combos) if combos else math.nan
                ),
                "chance": sum(c.chance for c in removed) / len(removed),
                "worst_excess": excess,
                "related": relative(result.related, base_cells),
                "general": relative(result.general, base_cells),
                "related_cells": len(related),
                "general_cells": len(general),
                "erase_seconds": seconds,
                "removal_made": adapter is not None,
                **_made(adapter),
                "check": _check(untouched_pipe, made) if method not in ("joint merge",) else None,
                "per_concept_forget": result.forget,
                "related_per_cell": {k: round(v, 4) for k, v in result.related.items()},  # which cells go first
            }
            rows.append(row)
            row["repaired"] = repaired
            print(
                f"{method:>20} step {step:2d} {concept.name:>18}: forget {row['forget_accuracy']:.3f} "
                f"(chance {row['chance']:.3f}, worst {excess:+.3f}) related {row['related']:.3f} "
                f"general {row['general']:.3f} erase {seconds:.2f}s"
                + _undone_note(adapter, removed, result.forget, holder)
                + (f"; re-made: {', '.join(notes)}" if notes else ""),
                flush=True,
            )
        results["methods"][method] = rows
    return results


def chain_step(chain_dir: Path | None, method: str, step: int) -> Path | None:
    """Where `--chain-dir` keeps a method's removal of a step (`DIR/<method, as a folder name>/step-NN`); `None`
    without a folder. `robustness.py --chain-dir` reads the same layout."""
    if chain_dir is None:
        return None
    return chain_dir / "".join(c if c.isalnum() else "-" for c in method) / f"step-{step:02d}"


def _check(pipe, made: list) -> dict | None:
    """`UnlearningStack.check` on the removals made so far (issue 16, point 3: does it predict the damage?)."""
    if not made:
        return None
    report = du.UnlearningStack(made).check(pipe)
    return {
        "passed": report.passed,
        "undo": float(report.stack_undo.max()),
        "shift": float(report.stack_shift.max()),
        "collateral": float(report.stack_collateral.max()),
        "weak": len(report.weak),
        "failures": report.failures()[:5],
    }


def _track_undone(adapter, concept: str, holder: dict, undone: dict) -> None:
    """Adds what a new removal measured it takes back of each earlier one to that concept's account, and opens
    the account of the concept it removes."""
    for earlier, share in (adapter.metadata.get("figures", {}).get("earlier_undone") or {}).items():
        if earlier in holder:
            undone[holder[earlier]] = undone.get(holder[earlier], 0.0) + max(share, 0.0)
    holder[adapter.metadata["adapter_id"]] = concept
    undone[concept] = 0.0


def _undone_note(adapter, removed: list[Concept], forget: dict, holder: dict) -> str:
    """The log's view of a distilled step: the earlier removal it undid most (noise predictions; `holder` names
    the concept of each adapter id) and the removed concept furthest above chance (images)."""
    undone = (adapter.metadata.get("figures", {}).get("earlier_undone") if adapter else None) or {}
    worst = max(removed, key=lambda c: forget[c.name] - c.chance)
    note = f"; furthest back: {worst.name} {forget[worst.name]:.2f}"
    if undone:
        most = max(undone, key=undone.__getitem__)
        note += f"; most undone: {holder.get(most, most)} {undone[most]:.3f}"
    return note


def _made(adapter) -> dict:
    """What a step's removal chose and measured of itself (targets, solve and effect figures)."""
    if adapter is None:
        return {"targets": [], "figures": {}}
    figures = {
        k: v
        for k, v in adapter.metadata.get("figures", {}).items()
        if isinstance(v, int | float) or k == "earlier_undone"
    }
    return {"targets": [t["target"] for t in adapter.metadata.get("targets", [])], "figures": figures}


def write_report(results: dict, args) -> None:
    lines = [
        "# Continual removal on the digits model",
        "",
        f"`{results.get('command', 'python benchmarks/continual.py')}`: {args.removals} sequential removals, "
        f"{args.images} images per prompt, {args.steps} DDIM steps, guidance 7.5, fixed seeds (image j of every "
        "prompt from seed j, so every step sees the same noise). Each removal is fused into the weights after "
        "it is made. Retention is a percentage of the untouched model on the same prompts and seeds; forget "
        "accuracy is the share of images that still show a removed concept (chance: 10% for a digit or a "
        "combination, measured on the digit; 25% for a colour). *Worst* is the largest excess over chance of a "
        "single removed concept.",
        "",
        "## Summary (last step, and worst over all steps)",
        "",
        "*Steps at the bars*: how many removals, from the first, keep every removed concept within 10 points of "
        "chance, related retention >= 90% and general retention >= 95% (DESIGN §7 asks for 25); *conjunction*: the "
        "same, with combinations measured by conjunction (issue 16's measure; n/a: the run predates it).",
        "",
        "*Targets*: a step whose every mapping target is refused is retried, as the error message says, with the "
        "digits the chain has not removed as candidates (`--target-fallback`; marked *fallback* below); a step "
        "refused even then makes no removal and counts as failed.",
        "",
        "*Combinations, conjunction*: the same images of the combinations removed so far, counted as still showing "
        "the concept only if digit, colour and stroke all are (a thin yellow nine no longer shows a bold yellow "
        "nine); chance 2.5% (1.25% with a stroke). n/a: the run predates this measure.",
        "",
        "| method | steps at the bars (digit / conjunction) | forget (last) | worst excess over chance (any step) | "
        "combinations, conjunction (last) | "
        "related retention (last / min) | general retention (last / min) | seconds per removal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, rows in _measured(results):
        last = rows[-1]
        lines.append(
            f"| {method} | {_steps_at_bars(rows)} / {_steps_at_bars(rows, 'worst_conjunction_excess')} | "
            f"{100 * last['forget_accuracy']:.1f}% (chance {100 * last['chance']:.1f}%) | "
            f"{100 * max(r['worst_excess'] for r in rows):+.1f} pts | "
            f"{_pct(last.get('conjunction_forget', math.nan))} "
            f"(chance {_pct(last.get('conjunction_chance', math.nan))}) | "
            f"{_pct(last['related'])} / {_pct(min(r['related'] for r in rows if not math.isnan(r['related'])))} | "
            f"{_pct(last['general'])} / {_pct(min(r['general'] for r in rows))} | "
            f"{sum(r['erase_seconds'] for r in rows) / len(rows):.2f} |"
        )
    lines += ["", "![curves](continual.png)", ""]
    if results.get("notes"):  # which rows come from which run, kept in the json beside the figures
        lines += ["## Notes on this run", "", *results["notes"], ""]
    for method, rows in _measured(results):
        lines += [
            f"## {method}",
            "",
            "| step | removed | forget acc. | chance | worst excess (digit / conjunction) | "
            "combinations, conjunction | related ret. | general ret. | cells (rel / gen) | "
            "check (undo / shift / collateral) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            removed = r["concept"] + (" (fallback)" if r.get("target_fallback") == "other digits" else "")
            removed = removed if r.get("removal_made", True) else f"{r['concept']} (refused)"
            lines.append(
                f"| {r['step']} | {removed} | {100 * r['forget_accuracy']:.1f}% | {100 * r['chance']:.1f}% | "
                f"{100 * r['worst_excess']:+.1f} / {100 * r.get('worst_conjunction_excess', math.nan):+.1f} | "
                f"{_pct(r.get('conjunction_forget', math.nan))} | {_pct(r['related'])} | {_pct(r['general'])} | "
                f"{r['related_cells']} / {r['general_cells']} | {_check_cell(r.get('check'))} |"
            )
        lines.append("")
    args.output.write_text("\n".join(lines))
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _plot(results, args.output.with_suffix(".png"))


def _steps_at_bars(rows: list[dict], excess: str = "worst_excess") -> int | str:
    """Leading steps with every removed concept within 10 points of chance, related >= 90%, general >= 95%."""
    if any(excess not in r for r in rows):
        return "n/a"
    count = 0
    for r in rows:
        related_ok = math.isnan(r["related"]) or r["related"] >= 0.9
        if r[excess] > 0.10 or not related_ok or r["general"] < 0.95:
            break
        count += 1
    return count


def _measured(results: dict) -> list[tuple[str, list[dict]]]:
    """Each method's measured rows (with `--eval-every`, the steps in between only record their removal)."""
    return [(method, [r for r in rows if "related" in r]) for method, rows in results["methods"].items()]


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _save_with_legend(figure, axes, path: Path) -> None:
    """One legend for the panels, below them, one row per line: the method names are too long to sit inside one."""
    handles, labels = axes[0].get_legend_handles_labels()
    legend_height = 0.3 + 0.16 * len(labels)
    height = 4 + legend_height
    figure.set_size_inches(15, height)
    figure.legend(handles, labels, loc="lower left", fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    figure.savefig(path, dpi=110)


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        ("forget_accuracy", "forget accuracy"),
        ("related", "related retention"),
        ("general", "general retention"),
    ]
    for axis, (key, title) in zip(axes, panels, strict=True):
        for method, rows in _measured(results):
            axis.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=method)
        if key == "forget_accuracy":
            rows = next(iter((rows for _, rows in _measured(results))))
            axis.plot([r["step"] for r in rows], [r["chance"] for r in rows], "k--", label="chance")
        else:
            axis.axhline({"related": 0.9, "general": 0.95}[key], color="k", linestyle="--", label="target")
        axis.set_title(title)
        axis.set_xlabel("removals")
        axis.set_ylim(0, 1.1)
        axis.grid(alpha=0.3)
    _save_with_legend(figure, axes, path)


# ------------------------------------------------------------------------------------------------ glyphs world
GC = glyph_concepts.Concept

GLYPH_SEQUENCE: tuple[glyph_concepts.Concept, ...] = (
    GC("Q", "serif"), GC("K"), GC(style="typewriter"), GC("7", "italic"), GC("R", "bold", "red"),
    GC(colour="purple"), GC("&"), GC("A", "bold"), GC("G", "oblique"), GC("W"),
    GC("2", "roman"), GC("O", "serif", "red"), GC("B"), GC("E", "serif"), GC(style="italic"),
    GC("S", "bold"), GC("3"), GC("0", "sans"), GC("8", "bold", "blue"), GC("H", "roman"),
    GC("X"), GC("D", "oblique"), GC("#", "serif"), GC(colour="orange"), GC("T", "sans"),
    GC("I", "sans", "green"), GC("%"), GC("C", "bold"), GC("9", "roman"), GC("M"),
    GC("P", "oblique"), GC("+", "roman", "cyan"), GC("N", "serif"), GC(style="heavy"), GC("5"),
    GC("4", "bold"), GC("U", "sans"), GC("A", "serif", "pink"), GC("$", "roman"), GC("J"),
    GC("F", "oblique"), GC("L", "serif"), GC("Q", "bold", "yellow"), GC("6", "bold"), GC("Y"),
    GC("V", "sans"), GC("R", "roman", "green"), GC("Z", "roman"), GC("G", "sans", "blue"), GC("1", "oblique"),
)  # fmt: skip
"""50 removals mixing kinds like LACU: 12 characters, 3 styles, 2 colours, 25 character-in-style identities
("serif Q") and 8 character-in-style-in-colour ones ("red bold R")."""

GLYPH_METHODS = (
    "ours",
    "distill",
    "distill, cross-attention",
    "coarse target",
    "no local protection",
    "naive stacking",
)
HELD_OUT = " (held-out)"
GLYPH_PREFIX_WORDS = (*(w for words in glyph_data.STYLE_SYNONYMS.values() for w in words), "letter", "digit", "in")
"""`--harden-prefixes`: the words put in front of each forget prompt (a concept's own left out): the styles' words,
which the token search writes in front of serif Q to bring it back (docs/benchmarks/robustness.md, session 49)."""


def paraphrase_probe(concept: glyph_concepts.Concept) -> ConceptProbe:
    probe = concept.paraphrase_probe()
    return ConceptProbe(concept.name + HELD_OUT, probe.prompts, probe.check)


def glyph_probes_at(removed: list, general_sample: list):
    """Forget and paraphrase probes of the removed concepts; their related cells still allowed; the general
    sample's cells not covered by, nor related to, any removal."""
    allowed = lambda cell: not any(c.covers(*cell) for c in removed)  # noqa: E731
    related = list(dict.fromkeys(cell for c in removed for cell in c.related() if allowed(cell)))
    general = [cell for cell in general_sample if allowed(cell) and cell not in related]
    forget = [c.forget_probe() for c in removed] + [paraphrase_probe(c) for c in removed]
    cell_probe = glyph_concepts.cell_probe
    return forget, [cell_probe(cell) for cell in related], [cell_probe(cell) for cell in general]


def evaluate_glyphs(
    pipe, scorer, call: dict, forget_images: int | None, forget=(), **cells
) -> tuple[EvaluationResult, dict[str, float]]:
    """`evaluate` with the removed concepts at `forget_images` images per prompt (None: as the cells). A removal's
    bar is 10 points over its chance, and 8 images per prompt do not read it: image j of every prompt comes from seed
    j, so a colour's four probe prompts give 8 draws, not 32: on one chain purple, drawn in 10-12% of 384 images
    (96 seeds), reads 0-25% on disjoint sets of 8 seeds, 25% on seeds 0-7 (continual_analysis.md, session 45).
    Returns the result and each removed concept's figure on the cells' images per prompt (the first of each
    prompt's), to compare the two reads."""
    if not forget_images or forget_images == call["images_per_prompt"]:
        result = evaluate(pipe, scorer, forget=forget, **cells, **call)
        return result, dict(result.forget)
    result = evaluate(pipe, scorer, **cells, **call)
    removed = evaluate(pipe, scorer, forget=forget, **{**call, "images_per_prompt": forget_images})
    result.forget = removed.forget
    for probe in forget:  # a cell of the same name ("red serif O") keeps its own images, as in one evaluation
        result.shown.setdefault(probe.concept, removed.shown[probe.concept])
        if probe.concept in removed.misread:
            result.misread.setdefault(probe.concept, removed.misread[probe.concept])
    first = {
        probe.concept: float(shown.reshape(len(probe.prompts), -1)[:, : call["images_per_prompt"]].mean())
        for probe in forget
        for shown in [removed.shown[probe.concept]]
    }
    return result, first


def run_glyphs(args) -> dict:
    from diffusers_unlearn import glyphs

    scorer = GlyphsConceptScorer(glyphs.load_scorer(args.scorer))
    config = closed_form_config(args)
    call = {"images_per_prompt": args.images, "num_inference_steps": args.steps, "progress": False,
            "guidance_scale": glyphs.GUIDANCE_SCALE}  # fmt: skip
    measure = functools.partial(evaluate_glyphs, scorer=scorer, call=call, forget_images=args.forget_images)
    sequence = list(GLYPH_SEQUENCE[: args.removals])
    general_sample = glyph_concepts.general_cells(args.general_cells)
    forget, related, general = glyph_probes_at(sequence, general_sample)
    every_cell = {cell for c in sequence for cell in c.related()} | set(general_sample)
    cells = [glyph_concepts.cell_probe(cell) for cell in sorted(every_cell)]
    untouched_pipe = glyphs.load_pipeline(path=args.model)  # the interference check reads the untouched weights
    untouched, _ = measure(untouched_pipe, forget=forget, general=cells)
    base_cells = untouched.general
    results = {"world": "glyphs", "untouched": {"forget": untouched.forget, "cells": base_cells}, "methods": {},
               "settings": {k: getattr(args, k) for k in SETTINGS},
               "guidance_scale": glyphs.GUIDANCE_SCALE}  # fmt: skip
    print(f"untouched: shows {untouched.forget_accuracy:.3f}, cells {untouched.general_retention:.3f}", flush=True)
    results["floor"] = measure_floor(untouched_pipe, scorer, sequence, general_sample, base_cells, call)
    print(f"the measure's floor (untouched, other seeds): {results['floor']}", flush=True)
    for method in args.methods:
        pipe = glyphs.load_pipeline(path=args.model)
        bare = glyphs.load_pipeline(path=args.model) if method == "naive stacking" else None
        rows = results["methods"][method] = []
        made = []
        for step, concept in enumerate(sequence, 1):
            started = time.perf_counter()
            saved = chain_step(args.chain_dir, method, step)
            push_check = {}
            try:
                if saved is not None and step <= args.reuse:  # made by an earlier run with the same options
                    adapter = du.UnlearningAdapter.from_pretrained(saved)
                else:
                    distill = distill_options(args, concept, step)
                    kwargs = erase_kwargs(
                        concept, method, config, distill, neighbour_styles=args.neighbour_styles,
                        erase_at="character" if concept.name in args.character_word else args.identity_at,
                        character_target=args.character_target, others_held=args.others_held,
                        style_targets=args.style_targets, colour_targets=args.colour_targets,
                        colour_separation=args.colour_separation,
                    )  # fmt: skip
                    if args.boundaries:
                        kwargs["preserve"]["boundaries"] = boundary_prompts(concept, args.boundaries)
                    kwargs["compose_targets"] = args.compose_targets
                    kwargs["erase_implicit"] = args.erase_implicit
                    if hardening_asked(args):
                        kwargs["harden"] = harden_config(args, GLYPH_PREFIX_WORDS)
                    adapter = du.erase(bare or pipe, **kwargs)
                    if args.remake_pushed is not None and bare is None:
                        adapter, push_check = remake_if_kept(pipe, adapter, concept, kwargs, args, scorer, call)
            except du.UnlearningError as error:  # reported in the table, the chain goes on without this removal
                print(f"{method:>20} step {step:2d} {concept.name:>18}: erase failed: {error}", flush=True)
                rows.append({"step": step, "concept": concept.name, "error": str(error)})
                continue
            seconds = time.perf_counter() - started
            if saved is not None and step > args.reuse:
                adapter.save_pretrained(saved)
            made.append(adapter)
            pipe.load_unlearning(adapter, mode="fused")
            if (step % args.eval_every and step != len(sequence)) or (step < args.reuse and not args.measure_loaded):
                rows.append(
                    {"step": step, "concept": concept.name, "erase_seconds": seconds, **_made(adapter), **push_check}
                )
                _save_partial(results, args)
                continue
            removed = sequence[:step]
            forget, related, general = glyph_probes_at(removed, general_sample)
            result, first = measure(pipe, forget=forget, related=related, general=general)
            shown = {c.name: result.forget[c.name] for c in removed}
            row = {
                "step": step,
                "concept": concept.name,
                "erase_seconds": seconds,
                "removal_rate": 1 - sum(shown.values()) / len(shown),
                "paraphrase_removal_rate": 1 - sum(result.forget[c.name + HELD_OUT] for c in removed) / len(removed),
                "chance": sum(c.chance for c in removed) / len(removed),
                "untouched_shown": sum(untouched.forget[c.name] for c in removed) / len(removed),
                "forget_images": args.forget_images or args.images,
                "worst_excess": max(shown[c.name] - c.chance for c in removed),
                "related": relative(result.related, base_cells),
                "general": relative(result.general, base_cells),
                "related_cells": len(related),
                "general_cells": len(general),
                # image by image against the untouched model (same seeds): lost / gained, and whether by chance
                "related_paired": asdict(paired_change(untouched, result, [p.concept for p in related])),
                "general_paired": asdict(paired_change(untouched, result, [p.concept for p in general])),
                # what the lost images show instead (a neighbouring style, another character, ...), and what the
                # gained ones showed untouched: a kind lost more than gained is what the step costs
                **lost_figures(untouched, result, related, general),
                "per_concept_shown": shown,
                "worst_excess_at_cell_images": max(first[c.name] - c.chance for c in removed),
                "per_concept_shown_at_cell_images": {c.name: first[c.name] for c in removed},
                "check": _check(untouched_pipe, made),
                # per cell, shown now and by the untouched model: which cells a step costs
                "cells": {
                    cell: [round(v, 4), round(base_cells[cell], 4)]
                    for cell, v in {**result.related, **result.general}.items()
                },
                **_made(adapter),
                **push_check,
            }
            rows.append(row)
            _save_partial(results, args)
            print(
                f"{method:>20} step {step:2d} {concept.name:>18}: removal {row['removal_rate']:.3f} "
                f"(paraphrase {row['paraphrase_removal_rate']:.3f}, worst excess {row['worst_excess']:+.3f}) "
                f"related {row['related']:.3f} general {row['general']:.3f} erase {seconds:.2f}s",
                flush=True,
            )
    return results


FLOOR_SEEDS = (1000, 2000, 3000)
PUSH_CHECK_SEED = 500
"""The push check's images (`remake_if_kept`) come from seeds the step's measure and the floor do not use."""


def remake_if_kept(pipe, adapter, concept, kwargs: dict, args, scorer, call: dict) -> tuple:
    """A distilled removal made again pushed past its targets (`negative_guidance=args.remake_pushed`) where its own
    images still show the concept: more than `args.remake_over` over its chance on `args.remake_images` images per
    forget prompt, drawn with the removal fused on the chain. Pushing every removal of a kind costs cells where the
    push is not needed (session 47: identities pushed from step 1 cost 2-4 points of general retention) and some
    removals do not take without it (sans 0 on session 45's chain, 22% of its images); their noise-prediction
    figures do not tell the two apart. Returns the removal kept and what the check read (empty: not checked)."""
    config = kwargs["config"]
    if not isinstance(config, du.DistillConfig) or config.negative_guidance >= args.remake_pushed:
        return adapter, {}
    pipe.load_unlearning(adapter, mode="fused")
    try:
        check = evaluate(
            pipe, scorer, forget=[concept.forget_probe()], seed=PUSH_CHECK_SEED,
            **{**call, "images_per_prompt": args.remake_images},
        )  # fmt: skip
    finally:
        pipe.unload_unlearning(adapter.name)
    shown = check.forget[concept.name]
    remade = shown - concept.chance > args.remake_over
    read = {"push_check": {"shown": shown, "chance": concept.chance, "remade": remade}}
    if not remade:
        return adapter, read
    print(f"{concept.name}: shown in {shown:.1%} of its images unpushed, made again pushed", flush=True)
    pushed = replace(config, negative_guidance=args.remake_pushed)
    return du.erase(pipe, **{**kwargs, "config": pushed}), read


def measure_floor(pipe, scorer, sequence: list, general_sample: list, base_cells: dict, call: dict) -> dict:
    """The untouched model against itself with other seeds (`FLOOR_SEEDS`): the related and general retention a
    change that only reshuffles which images of the borderline cells succeed would score. With few images per
    cell it is near the bars (4 images, 40 cells: general 93-102%), so a step can miss a bar by chance."""
    related = {cell for c in sequence for cell in c.related()}
    floor: dict = {"seeds": list(FLOOR_SEEDS), "related": [], "general": []}
    cells = [glyph_concepts.cell_probe(cell) for cell in sorted(related | set(general_sample))]
    for seed in FLOOR_SEEDS:
        now = evaluate(pipe, scorer, general=cells, seed=seed, **call).general
        for kind, group in (("related", related), ("general", set(general_sample) - related)):
            names = {glyph_concepts.cell_probe(cell).concept for cell in group}
            floor[kind].append(relative({k: v for k, v in now.items() if k in names}, base_cells))
    return floor


def _save_partial(results: dict, args) -> None:
    """After every glyphs step: the results so far, so an interrupted run still reports how far it got."""
    args.output.with_suffix(".partial.json").write_text(json.dumps(results, indent=1))


SETTINGS = ("images", "steps", "eval_every", "general_cells", "removals")
"""What a glyphs run records of its arguments, so that a page rendered later (`--render`) states them."""


def write_glyph_report(results: dict, args) -> None:
    """docs/benchmarks/continual_glyphs.md (+ .json, .png) from the results of `run_glyphs`."""
    args = argparse.Namespace(**{**vars(args), **results.get("settings", {})})  # the run's, not this call's
    untouched = results["untouched"]["forget"]
    names = [c.name for c in GLYPH_SEQUENCE]
    shown = [untouched[n] for n in names if n in untouched]
    held = [untouched[n + HELD_OUT] for n in names if n + HELD_OUT in untouched]
    lines = [
        "# Continual removal on the glyphs model (LACU-shaped, 50 steps)",
        "",
        f"`python benchmarks/continual.py --world glyphs --images {args.images} --steps {args.steps} "
        f"--eval-every {args.eval_every}`: {len(GLYPH_SEQUENCE[: args.removals])} sequential removals mixing "
        "characters, styles, colours and character-in-style identities, each made on top of the chain and fused. "
        f"{args.images} images per prompt, {args.steps} DDIM steps, guidance {results.get('guidance_scale', 7.5)} "
        "(the model's `GUIDANCE_SCALE`), image j of every prompt from seed "
        f"j; measured every {args.eval_every} steps and after the last.",
        "",
        "- **removal rate**: share of a removed concept's images that no longer show it, by conjunction (an image "
        "shows *serif Q* only if the scorer finds a Q *and* the serif style), averaged over the removals so far; "
        "**worst excess**: the largest share still shown minus chance (product over the concept's parts of one over "
        "the number of values);",
        "- **paraphrase removal rate**: the same on prompts from `HELD_OUT_TEMPLATES` (never used in training);",
        "- **related / general retention**: share of images of the related cells (same character in other styles, "
        "same style on look-alike characters, look-alikes, neighbouring styles and colours) / of a fixed sample "
        f"of {args.general_cells} cells that still show character, style and colour, as a percentage of the "
        "untouched model on the same prompts and seeds;",
        "- **general images lost / gained (p)** (per-step tables, rows measured from session 28): the general cells' "
        "images that showed their cell with the untouched model and do not now (image j from the same seed), and "
        "the reverse; p is the one-sided exact sign test on them (`evaluation.paired_change`), in bold under 0.05: "
        "a loss that reshuffling the borderline images does not explain;",
        "- **lost as / gained from** (below the per-step tables, rows measured from session 30): those images by "
        "what the scorer reads in them instead (`evaluation.EvaluationResult.misread`): a neighbouring style (the "
        "style the model draws most alike, serif for roman), another style, another character, another colour, "
        "more than one; the lost images as they are now, the gained ones as they were untouched. A kind lost much "
        "more often than gained is what the step costs.",
        "",
        f"Untouched model: {100 * sum(shown) / max(1, len(shown)):.1f}% of the forget probes' images show their "
        f"concept (training templates), {100 * sum(held) / max(1, len(held)):.1f}% on held-out templates.",
        "",
        "*Steps at the bars*: leading removals with every removed concept within 10 points of chance, related "
        ">= 90% and general >= 95% (counted on the measured steps).",
        "",
        *_floor_lines(results.get("floor")),
        "| method | steps run | steps at the bars | removal rate (last) | paraphrase removal (last) | "
        "worst excess (any step) | related (last / min) | general (last / min) | seconds per removal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, all_rows in results["methods"].items():
        rows = [r for r in all_rows if "removal_rate" in r]
        timed = [r["erase_seconds"] for r in all_rows if "erase_seconds" in r]
        run = max((r["step"] for r in all_rows), default=0)  # a row stitched from runs keeps the measured steps
        if not rows:
            lines.append(f"| {method} | {run} | 0 | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        last = rows[-1]
        lines.append(
            f"| {method} | {run} | {_glyph_steps_at_bars(rows)} | {_pct(last['removal_rate'])} | "
            f"{_pct(last['paraphrase_removal_rate'])} | {100 * max(r['worst_excess'] for r in rows):+.1f} pts | "
            f"{_pct(last['related'])} / {_pct(min(r['related'] for r in rows))} | "
            f"{_pct(last['general'])} / {_pct(min(r['general'] for r in rows))} | "
            f"{sum(timed) / max(1, len(timed)):.2f} |"
        )
    lines += ["", "![curves](continual_glyphs.png)", ""]
    if results.get("notes"):  # what the run could and could not cover, kept in the json beside the figures
        lines += ["## Notes on this run", "", *results["notes"], ""]
    for method, all_rows in results["methods"].items():
        lines += [
            f"## {method}",
            "",
            "| step | removed | removal rate | shown before (untouched) | paraphrase removal | chance (mean) | "
            "worst excess | related | general | general images lost / gained (p) | cells (rel / gen) | "
            "check (undo / shift / collateral) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in all_rows:
            if "error" in r:
                lines.append(f"| {r['step']} | {r['concept']} | erase failed: {r['error'][:80]} | | | | | | | | | |")
            elif "removal_rate" in r:
                lines.append(
                    f"| {r['step']} | {r['concept']} | {_pct(r['removal_rate'])} | "
                    f"{_pct(r.get('untouched_shown', math.nan))} | {_pct(r['paraphrase_removal_rate'])} | "
                    f"{_pct(r['chance'])} | {100 * r['worst_excess']:+.1f} | "
                    f"{_pct(r['related'])} | {_pct(r['general'])} | {_paired_cell(r.get('general_paired'))} | "
                    f"{r['related_cells']} / {r['general_cells']} | {_check_cell(r.get('check'))} |"
                )
            else:
                lines.append(f"| {r['step']} | {r['concept']} | (not measured) | | | | | | | | | |")
        lines += ["", *_lost_as_lines(all_rows)]
    args.output.write_text("\n".join(lines))
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    _plot_glyphs(results, args.output.with_suffix(".png"))


def _floor_lines(floor: dict | None) -> list[str]:
    if not floor:
        return []
    pcts = lambda values: " / ".join(_pct(v) for v in values)  # noqa: E731
    return [
        f"*The measure's floor*: the untouched model with other seeds ({', '.join(map(str, floor['seeds']))}) keeps "
        f"{pcts(floor['related'])} of its related cells and {pcts(floor['general'])} of its general ones (same "
        "cells, same images per prompt): a step whose removals only reshuffle which images of the borderline cells "
        "succeed can miss a bar by chance.",
        "",
    ]


def _lost_as_lines(rows: list[dict]) -> list[str]:
    """The images each step lost against the untouched model, by what they show instead (rows measured since
    session 30)."""
    rows = [r for r in rows if "general_lost_as" in r]
    if not rows:
        return []
    counts = lambda c: " / ".join(str(c[k]) for k in LOST_AS)  # noqa: E731
    return [
        f"Images lost against the untouched model by what they show instead, and images gained by what they showed "
        f"untouched ({' / '.join(LOST_AS)}: what the scorer read otherwise, `lost_as`):",
        "",
        "| step | removed | related lost as | related gained from | general lost as | general gained from |",
        "|---|---|---|---|---|---|",
        *(f"| {r['step']} | {r['concept']} | {counts(r['related_lost_as'])} | {counts(r['related_gained_from'])} | "
          f"{counts(r['general_lost_as'])} | {counts(r['general_gained_from'])} |" for r in rows),
        "",
    ]  # fmt: skip


def _paired_cell(paired: dict | None) -> str:
    """`lost / gained (p)`; a loss beyond chance (p < 0.05) in bold; "—" for rows measured before it was."""
    if not paired:
        return "—"
    text = f"{paired['lost']} / {paired['gained']} ({paired['p_value']:.2g})"
    return f"**{text}**" if paired["p_value"] < 0.05 else text


def _check_cell(check: dict | None) -> str:
    if not check:
        return "n/a"
    verdict = "pass" if check["passed"] else "FAIL"
    return f"{verdict} ({check['undo']:.2f} / {check['shift']:.2f} / {check['collateral']:.2f})"


def _glyph_steps_at_bars(rows: list[dict]) -> int:
    count = 0
    for r in rows:
        measured = not (math.isnan(r["related"]) or math.isnan(r["general"]))
        if not measured or r["worst_excess"] > 0.10 or r["related"] < 0.9 or r["general"] < 0.95:
            break
        count = r["step"]
    return count


def _plot_glyphs(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [("removal_rate", "removal rate (solid) / paraphrase (dashed)"), ("related", "related retention"),
              ("general", "general retention")]  # fmt: skip
    for axis, (key, title) in zip(axes, panels, strict=True):
        for method, all_rows in results["methods"].items():
            rows = [r for r in all_rows if "removal_rate" in r]
            line = axis.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=method)
            if key == "removal_rate":
                axis.plot([r["step"] for r in rows], [r["paraphrase_removal_rate"] for r in rows], linestyle="--",
                          color=line[0].get_color())  # fmt: skip
        if key != "removal_rate":
            axis.axhline({"related": 0.9, "general": 0.95}[key], color="k", linestyle="--", label="target")
        axis.set_title(title)
        axis.set_xlabel("removals")
        axis.set_ylim(0, 1.1)
        axis.grid(alpha=0.3)
    _save_with_legend(figure, axes, path)


def add_harden_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--harden-*` options, the `HardenConfig` fields that `harden_config` reads: shared with `robustness.py`,
    where they set its hardened methods' hardening; here, given, they harden every removal of the chain."""
    parser.add_argument("--harden-rounds", type=int, default=None, help="HardenConfig.rounds (0: prompts only)")
    parser.add_argument("--harden-iterations", type=int, default=None, help="HardenConfig.iterations")
    parser.add_argument("--harden-weight", type=float, default=None, help="HardenConfig.weight")
    parser.add_argument("--harden-prompts", type=int, default=None, help="HardenConfig.prompts")
    parser.add_argument("--harden-samples", type=int, default=None, help="HardenConfig.samples")
    parser.add_argument(
        "--harden-derive", choices=("embedding", "prefix"), default=None,
        help="HardenConfig.derive: each round derives whole embeddings, or input vectors in front of the prompt",
    )  # fmt: skip
    parser.add_argument(
        "--harden-phrasings", type=int, default=0,
        help="HardenConfig.phrasings, other word orders of each forget prompt trained on",
    )  # fmt: skip
    parser.add_argument(
        "--harden-prefixes", type=int, default=0, metavar="K",
        help="HardenConfig.prefixes, K copies of each forget prompt behind random words trained on",
    )  # fmt: skip
    parser.add_argument(
        "--harden-prefix-words", nargs="+", default=[], metavar="WORD",
        help="HardenConfig.prefix_words, the words of those prefixes (default: continual.py on glyphs "
        "GLYPH_PREFIX_WORDS, otherwise the whole vocabulary)",
    )  # fmt: skip


# the --harden-* options defaulting to None
_HARDEN_FIELDS = ("rounds", "iterations", "weight", "prompts", "samples", "derive")


def hardening_asked(args) -> bool:
    """Whether any `--harden-*` option is given: `continual.py` then hardens every removal."""
    given = [getattr(args, f"harden_{field}") for field in _HARDEN_FIELDS]
    return any(value is not None for value in given) or bool(args.harden_phrasings or args.harden_prefixes)


def harden_config(args, prefix_words: Sequence[str] = ()) -> du.HardenConfig:
    """`HardenConfig`'s defaults with the fields the `--harden-*` options set; `prefix_words` unless
    `--harden-prefix-words` names others (and only with `--harden-prefixes`)."""
    given = {field: getattr(args, f"harden_{field}") for field in _HARDEN_FIELDS}
    words = tuple(args.harden_prefix_words) or (tuple(prefix_words) if args.harden_prefixes else ())
    return du.HardenConfig(
        phrasings=args.harden_phrasings, prefixes=args.harden_prefixes, prefix_words=words,
        **{k: v for k, v in given.items() if v is not None},
    )  # fmt: skip


def add_distill_arguments(parser: argparse.ArgumentParser) -> None:
    """The `--distill-*` options (and `--lambda-replay`) that `distill_options` reads: shared with
    `robustness.py`, so that a chain it attacks is made with the options of a continual run."""
    parser.add_argument("--distill-steps", type=int, default=500, help="training steps of each distill removal")
    parser.add_argument("--lambda-replay", type=float, default=du.DistillConfig.lambda_replay, help="distill's replay")
    parser.add_argument("--distill-rank", type=int, default=0, help="distill's LoRA rank (default: DistillConfig's)")
    parser.add_argument(
        "--distill-lambda-earlier", type=float, default=None,
        help="distill's lambda_earlier: the earlier removals held by a term of their own (default: a replay group)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-latent-pool", type=int, default=0,
        help="distill's latent_pool: teacher trajectories per pool (forget, replay, hold; default: DistillConfig's)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-replay-pool", type=int, default=0,
        help="distill's replay_pool: trajectories of the protected prompts and the hold (default: latent_pool)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-push", type=float, default=0.0,
        help="distill's earlier_push: hold the earlier removals this share of their effect past the chain (0: at it)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-push-scope", choices=("all", "combinations"), default="all",
        help="distill's earlier_push_scope: push every earlier removal, or only the combinations",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-anchor", choices=("chain", "own"), default="chain",
        help="distill's earlier_anchor: the hold's teacher, the chain as loaded or each removal's own chain",
    )  # fmt: skip
    parser.add_argument("--distill-eta", type=float, default=None, help="distill's negative_guidance")
    removals = {"identity": 'character-in-style removals ("serif Q")', "character": 'removals of a character ("B")',
                "style": 'style removals ("italic")'}  # fmt: skip
    for kind, fields in KIND_FLAGS.items():
        for field in fields:
            general, config_field = GENERAL_FLAGS[field]
            parser.add_argument(
                f"--distill-{kind}-{field}", type=float, default=None,
                help=f"glyphs: distill's {config_field} for the {removals[kind]} (default: {general})",
            )  # fmt: skip
    parser.add_argument(
        "--distill-coloured-identity-eta", type=float, default=None,
        help="glyphs: the same for those in a colour too, 'red bold R' (default: --distill-identity-eta)",
    )  # fmt: skip
    parser.add_argument("--distill-base-share", type=float, default=None, help="distill's base_share")
    parser.add_argument(
        "--distill-min-reach", type=float, default=None,
        help="distill's min_reach: train each removal past --distill-steps until its target reach passes this",
    )  # fmt: skip
    parser.add_argument("--distill-max-steps", type=int, default=None, help="distill's max_steps (with min_reach)")
    parser.add_argument(
        "--distill-earlier-protection", type=float, default=0.0,
        help="distill's earlier_protection: replay the earlier removals' protected prompts as a group of this weight",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-overlap", type=float, default=0.0,
        help="distill's earlier_overlap: the share of that group given out by the new removal's overlap (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-hardened", action="store_true",
        help="distill's earlier_hardened: hold the earlier removals' hardened prompts too (with --harden-*)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-earlier-derived", type=float, default=0.0, metavar="SHARE",
        help="distill's earlier_derived: hold the earlier removals' derived embeddings (with --harden-rounds), with "
        "this share of the hold's weight (default 0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-siblings", action="store_true",
        help="distill's siblings: the preserve prompts one word from a forget prompt, once more as a group",
    )  # fmt: skip
    parser.add_argument(
        "--distill-repair-steps", type=int, default=0,
        help="distill's repair_steps: a second LoRA pulls what the removals protected back to the untouched model",
    )  # fmt: skip
    parser.add_argument("--distill-repair-push", type=float, default=None, help="distill's repair_push")
    parser.add_argument(
        "--distill-repair-anchor", choices=("chain", "own"), default="chain",
        help="distill's repair_anchor: the repair's push from the chain as loaded or from each removal's own chain",
    )  # fmt: skip
    parser.add_argument(
        "--distill-repair-every", type=int, default=1,
        help="the repair on the removals of every K-th step only (default: on every removal)",
    )  # fmt: skip
    parser.add_argument(
        "--distill-modules", nargs="+", default=None,
        help="distill's target_modules (default: K/V; robustness.py's held chains: cross-attention and ff.net.2)",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", choices=("digits", "glyphs"), default="digits")
    parser.add_argument("--quick", action="store_true", help="6 removals, 4 images per prompt")
    parser.add_argument("--removals", type=int, default=None, help="default: the whole sequence (25 / 50)")
    parser.add_argument("--images", type=int, default=8, help="images per prompt")
    parser.add_argument(
        "--forget-images", type=int, default=None,
        help="glyphs: images per prompt of the removed concepts' probes (default: --images); a removal's bar, 10 "
        "points over chance, needs more than a cell's figure (evaluate_glyphs)",
    )  # fmt: skip
    parser.add_argument(
        "--measure-loaded", action="store_true",
        help="glyphs, with --reuse: measure the loaded steps too (every --eval-every): a chain an earlier run made, "
        "measured again",
    )  # fmt: skip
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps per image")
    parser.add_argument("--methods", nargs="+", default=None, choices=sorted({*METHODS, *GLYPH_METHODS, REFERENCE}))
    parser.add_argument("--eval-every", type=int, default=1, help="measure every N steps (and the last)")
    parser.add_argument("--general-cells", type=int, default=40, help="glyphs: size of the general sample")
    parser.add_argument(
        "--neighbour-styles",
        action="store_true",
        help="glyphs: each identity also protects its contrast prompts in its neighbouring styles "
        "(Concept.erase_kwargs(neighbour_styles=True))",
    )
    parser.add_argument(
        "--identity-at",
        choices=("style", "character"),
        default="style",
        help="glyphs: erase each identity at its style word or at its character word "
        "(Concept.erase_kwargs(erase_at=...))",
    )
    parser.add_argument(
        "--character-word",
        nargs="*",
        default=(),
        metavar="IDENTITY",
        help="glyphs: these identities (by name, e.g. 'roman 2') erased at their character word, the others as "
        "--identity-at says",
    )
    parser.add_argument(
        "--character-target",
        choices=("category", "character"),
        default="category",
        help="glyphs: map each character's removal to its kind's word or to another character of its kind "
        "(Concept.erase_kwargs(character_target=...))",
    )
    parser.add_argument(
        "--others-held",
        action="store_true",
        help="glyphs: a style, colour or identity also holds its forget prompts in the other styles or colours "
        "(Concept.erase_kwargs(others_held=True))",
    )
    parser.add_argument(
        "--style-targets",
        choices=("any", "distant", "far"),
        default="any",
        help="glyphs: map a style to any other style or the context without one, only to the styles that are not "
        "its neighbours, or (far) not its neighbours' neighbours either (Concept.erase_kwargs(style_targets=...))",
    )
    parser.add_argument(
        "--colour-targets",
        choices=("any", "context"),
        default="any",
        help="glyphs: map a colour to any other colour or the context without one, or only to that context, the "
        "target check off (Concept.erase_kwargs(colour_targets=...))",
    )
    parser.add_argument(
        "--colour-separation",
        type=float,
        default=None,
        help="glyphs: the target check's threshold for a colour's candidates "
        "(Concept.erase_kwargs(colour_separation=...); default: erase's, 0 with --colour-targets context)",
    )
    parser.add_argument(
        "--remake-pushed",
        type=float,
        default=None,
        metavar="ETA",
        help="glyphs: a distilled removal whose own images (--remake-images a prompt, the removal fused on the "
        "chain) still show its concept more than --remake-over over chance is made again with negative_guidance=ETA",
    )
    parser.add_argument("--remake-images", type=int, default=16, help="glyphs: images per prompt of the push check")
    parser.add_argument(
        "--remake-over", type=float, default=0.05, help="glyphs: the push check's excess over chance that remakes"
    )
    parser.add_argument(
        "--erase-implicit",
        action="store_true",
        help="erase(erase_implicit=True) on every removal: the contexts the model draws as the concept without "
        "naming it are erased with it",
    )
    parser.add_argument(
        "--compose-targets",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glyphs: a forget prompt that asks for an earlier combination's concept too is mapped to a target "
        "carrying that removal's change (erase(..., compose_targets=True), the default; rows before session 40: "
        "--no-compose-targets)",
    )
    parser.add_argument(
        "--boundaries",
        type=int,
        default=0,
        help="glyphs: each removal also holds this many prompts across the model's weakest boundaries (a cell beside "
        "its nearest-style and nearest-colour twins, boundary_prompts) as a preserve group of their own",
    )
    parser.add_argument("--model", type=Path, default=None, help="glyphs: another trained pipeline folder")
    parser.add_argument("--scorer", type=Path, default=None, help="glyphs: another trained scorer folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--combination-at",
        choices=("digit", "attribute"),
        default="digit",
        help="digits: erase a combination at its digit word, or at its stroke / colour word (`Concept.erase_kwargs`)",
    )
    add_distill_arguments(parser)
    add_harden_arguments(parser)
    parser.add_argument(
        "--repair-undone", type=float, default=0.0,
        help="distill: re-make an earlier removal on top once the later ones took back this share of it (0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--chain-dir", type=Path, default=None,
        help="save each step's removal in DIR/<method>/step-NN (digits: to start another run from part of the chain; "
        "robustness.py --chain-dir attacks a chain saved there)",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", type=int, default=0,
        help="with --chain-dir: load the first N removals from there, not made again (the Nth measured)",
    )  # fmt: skip
    parser.add_argument(
        "--background", type=int, default=0,
        help="digits: preserve up to N of each concept's background_prompts() too, as a group of their own",
    )  # fmt: skip
    parser.add_argument("--update", action="store_true", help="keep the other methods' results from the existing json")
    defaults = du.ClosedFormConfig()
    parser.add_argument("--lambda-protect", type=float, default=defaults.lambda_protect)
    parser.add_argument("--lambda-reg", type=float, default=defaults.lambda_reg)
    parser.add_argument("--anchor", choices=("chain", "base"), default=defaults.anchor)
    parser.add_argument("--earlier-protection", type=float, default=defaults.earlier_protection)
    parser.add_argument("--target-fallback", action="store_true", help="digits: on a refused target, retry with "
                        "the digits not removed as candidates")  # fmt: skip
    parser.add_argument("--combination-digits", action="store_true", help="digits: offer combinations the "
                        "digits not removed as mapping candidates from the start")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="default docs/benchmarks/continual[_glyphs].md")
    parser.add_argument("--render", action="store_true", help="rewrite the report from the json, run nothing")
    args = parser.parse_args()
    if args.reuse and args.chain_dir is None:
        parser.error("--reuse loads removals from --chain-dir: pass the folder an earlier run saved them in")
    identities = [c.name for c in GLYPH_SEQUENCE if c.kind == "identity"]
    if unknown := [name for name in args.character_word if name not in identities]:
        parser.error(f"--character-word takes identities of the glyphs sequence ({', '.join(identities)}): {unknown}")
    glyph_world = args.world == "glyphs"
    name = "continual_glyphs" if glyph_world else "continual"
    args.output = args.output or ROOT / "docs" / "benchmarks" / f"{name}.md"
    args.removals = args.removals or len(GLYPH_SEQUENCE if glyph_world else SEQUENCE)
    args.methods = args.methods or list(GLYPH_METHODS if glyph_world else METHODS)
    report = write_glyph_report if glyph_world else write_report
    previous = args.output.with_suffix(".json")
    if args.render:
        report(json.loads(previous.read_text()), args)
        return
    if args.quick:
        args.removals, args.images = min(args.removals, 6), 4
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = run_glyphs(args) if glyph_world else run(args)
    results["seconds"] = time.perf_counter() - started
    results["command"] = "python benchmarks/continual.py " + shlex.join(sys.argv[1:])
    if args.update and previous.is_file():
        kept = json.loads(previous.read_text())
        kept["methods"].update(results["methods"])
        kept["seconds"] = kept.get("seconds", 0) + results["seconds"]
        results = kept
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report(results, args)
    print(f"done in {results['seconds'] / 60:.1f} min; wrote {args.output}")


if __name__ == "__main__":
    main()
