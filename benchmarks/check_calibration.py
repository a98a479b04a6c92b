"""Does `UnlearningStack.check` fail before a chain's retention drops? Calibrates its thresholds on measured chains.

Reads continual-benchmark results (`benchmarks/continual.py` json: per step the retention measured on generated
images and the check's figures on the removals made so far) and asks, per chain: at which step does retention
first fall below the bars (related < 90% or general < 95% of the untouched model: *damage*), and at which step does
the check first fail, for the default thresholds and for a grid of others. A check that fails one step or more
before the damage warns in time; one that fails after it, or never, misses it. Then the same for the other damage,
an earlier removal coming back (its concept shown in 10 points more of the images than at its own step), against
the check's undo figure. No model is run: seconds.

    python benchmarks/check_calibration.py     # every chain below -> docs/benchmarks/check_calibration.md
    python benchmarks/check_calibration.py --add run.json --label "glyphs: ours, every step" --note "command, model"

Chains: every method with check figures in docs/benchmarks/continual.json and continual_glyphs.json, and the
runs added with `--add` (a continual-benchmark json, kept in docs/benchmarks/check_calibration.json with a note
saying how it was made: runs measured at every step, which the full benchmarks are not on glyphs).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from diffusers_unlearn.interference import check_interference

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "docs" / "benchmarks"
RELATED_BAR, GENERAL_BAR = 0.90, 0.95
SHIFTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
COLLATERALS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
UNDOS = (0.05, 0.1, 0.15, 0.2, 0.3)
RETURN = 0.10
"""An earlier removal is back when its concept is shown in this much more of the images than at its own step."""
FIRST_PAIRS = 2
"""A general-retention drop within this many removals is one removal's own damage, not interference."""


def _defaults() -> dict[str, float]:
    keywords = check_interference.__kwdefaults__
    return {k: keywords[f"{k}_threshold"] for k in ("undo", "shift", "collateral")}


@dataclass
class Chain:
    """One measured chain: per measured step, retention and the check's figures."""

    name: str
    source: str
    steps: list[dict]
    every_step: bool

    def damage(self, kind: str) -> int | None:
        """First measured step with `kind` ("general" or "related") retention below its bar."""
        bar = {"general": GENERAL_BAR, "related": RELATED_BAR}[kind]
        return next((r["step"] for r in self.steps if r[kind] < bar), None)

    def flagged(self, undo: float, shift: float, collateral: float) -> int | None:
        """First measured step at which the check fails with these thresholds."""
        for r in self.steps:
            c = r["check"]
            if c["weak"] or c["undo"] > undo or c["shift"] > shift or c["collateral"] > collateral:
                return r["step"]
        return None

    def lead(self, kind: str, undo: float, shift: float, collateral: float) -> int | None:
        """Steps of warning before the damage (negative: late; `None`: no damage or never flagged)."""
        flag, damage = self.flagged(undo, shift, collateral), self.damage(kind)
        return None if flag is None or damage is None else damage - flag

    def comes_back(self) -> tuple[int, str, float, float] | None:
        """The first measured step at which an earlier removal is back: `(step, concept, shown at its own step,
        shown then)`; `None` if none is, or the chain has no per-concept figures."""
        own: dict[str, float] = {}
        for r in self.steps:
            shown = r.get("shown") or {}
            if r["concept"] in shown:
                own.setdefault(r["concept"], shown[r["concept"]])
            for concept, now in shown.items():
                if concept != r["concept"] and concept in own and now > own[concept] + RETURN:
                    return r["step"], concept, own[concept], now
        return None

    def undo_flagged(self, undo: float) -> int | None:
        """First measured step at which the check's undo figure (the largest member's) is above `undo`."""
        return next((r["step"] for r in self.steps if r["check"]["undo"] > undo), None)


KEPT = BENCHMARKS / "check_calibration.json"
KEYS = ("step", "concept", "related", "general", "check")


def _chain(name: str, source: str, rows: list[dict]) -> Chain | None:
    steps = [
        {**{k: r[k] for k in KEYS}, "shown": r.get("per_concept_forget") or r.get("per_concept_shown")}
        for r in rows
        if r.get("check") and "related" in r and "general" in r
    ]
    if not steps:
        return None
    every = [r["step"] for r in steps] == list(range(steps[0]["step"], steps[0]["step"] + len(steps)))
    return Chain(name, source, steps, every)


def _kept() -> list[dict]:
    """The chains added with `--add`."""
    return json.loads(KEPT.read_text()) if KEPT.exists() else []


def load_chains() -> list[Chain]:
    """Every chain with check figures: the continual benchmarks' methods, then the kept runs."""
    chains = []
    for path in (BENCHMARKS / "continual.json", BENCHMARKS / "continual_glyphs.json"):
        data = json.loads(path.read_text())
        for method, rows in data["methods"].items():
            chains.append(
                _chain(f"{data.get('world', 'digits')}: {method}", f"[{path.stem}.md]({path.stem}.md)", rows)
            )
    chains += [_chain(k["name"], k["note"], k["steps"]) for k in _kept()]
    return [c for c in chains if c is not None]


def add_chain(path: Path, label: str, note: str) -> None:
    """Keeps the one method of a continual-benchmark json as a chain, with a note saying how it was made."""
    (rows,) = json.loads(path.read_text())["methods"].values()
    chain = _chain(label, note, rows)
    if chain is None:
        raise SystemExit(f"{path}: no step with retention and check figures")
    kept = [k for k in _kept() if k["name"] != label]
    kept.append({"name": label, "note": note, "steps": chain.steps})
    KEPT.write_text(json.dumps(kept, indent=1))


def _lead(lead: int | None) -> str:
    return "-" if lead is None else str(lead)


def render(chains: list[Chain]) -> str:
    defaults = _defaults()
    lines = [
        "# The interference check against measured damage",
        "",
        "`python benchmarks/check_calibration.py` (written by it, from the chains' json; no model is run).",
        "",
        "Issue 16, point 3: does `UnlearningStack.check` fail *before* a chain of removals damages the model? "
        "*Damage*: the first measured step where general retention falls below 95%, or related retention below "
        "90%, of the untouched model (images judged by the world's scorer). The check reads only the removals' "
        "weights and stored probes (no image); its figures per step are the stack maxima of undo, shift and "
        "collateral ([stacks.md](../stacks.md)). *Lead*: measured steps of warning (damage step minus the first "
        "failing step; 0: it fails at the damaged step itself; negative: late).",
        "",
        f"## At the default thresholds (undo {defaults['undo']}, shift {defaults['shift']}, collateral "
        f"{defaults['collateral']})",
        "",
        "| chain | measured | first damage (general / related) | check fails first at | lead (general / related) "
        "| figures at the first failure (undo / shift / collateral) | retention there (related / general) |",
        "|---|---|---|---|---|---|---|",
    ]
    for chain in chains:
        flag = chain.flagged(**defaults)
        row = next((r for r in chain.steps if r["step"] == flag), None)
        figures = retention = "-"
        if row:
            check = row["check"]
            figures = f"{check['undo']:.2f} / {check['shift']:.2f} / {check['collateral']:.2f}"
            retention = f"{100 * row['related']:.0f}% / {100 * row['general']:.0f}%"
        measured = "every step" if chain.every_step else "steps " + ", ".join(str(r["step"]) for r in chain.steps)
        damage = " / ".join(str(chain.damage(k) or "none") for k in ("general", "related"))
        leads = " / ".join(_lead(chain.lead(k, **defaults)) for k in ("general", "related"))
        lines.append(
            f"| {chain.name} | {measured} | {damage} | {flag or 'never'} | {leads} | {figures} | {retention} |"
        )
    measured = [c for c in chains if c.every_step]
    every = [c for c in measured if (c.damage("general") or 0) > FIRST_PAIRS]
    early = [c.name for c in measured if c.damage("general") and c not in every]
    undamaged = [
        f"{c.name} (fails at step {c.flagged(**defaults) or 'never'})" for c in measured if not c.damage("general")
    ]
    lines += [
        "",
        "## Threshold grid",
        "",
        "Lead before the general-retention damage on each chain measured at every step "
        f"({'; '.join(c.name for c in every)}), undo {defaults['undo']} (the default). *safe*: the check fails "
        "at least one step before it on every one of them (and no later than the first damaged measurement on "
        "the chains measured every few steps); among safe cells, the one with the shortest leads raises the "
        "fewest early alarms.",
        "",
        f"Left out: chains whose general retention drops within the first {FIRST_PAIRS} removals "
        f"({'; '.join(early) or 'none'}). The check compares removals with each other; a drop that early is one "
        "removal's own damage to cells it never names, not interference accumulating, and no threshold sees it "
        "without failing every chain from its second removal.",
        "",
        f"Never damaged in general retention: {'; '.join(undamaged) or 'none'}. There is nothing to warn of: where "
        "the check fails on such a chain at the default thresholds, it is an early alarm.",
        "",
        "| shift \\ collateral | " + " | ".join(str(c) for c in COLLATERALS) + " |",
        "|---|" + "---|" * len(COLLATERALS),
    ]
    safe = []
    for shift in SHIFTS:
        cells = []
        for collateral in COLLATERALS:
            leads = [c.lead("general", defaults["undo"], shift, collateral) for c in every]
            sparse = [c.lead("general", defaults["undo"], shift, collateral) for c in chains if not c.every_step]
            ok = all(x is not None and x >= 1 for x in leads) and all(x is None or x >= 0 for x in sparse)
            if ok:  # fewest early alarms first, then nearest the current defaults
                distance = abs(shift - defaults["shift"]) + abs(collateral - defaults["collateral"])
                safe.append((sum(leads), round(distance, 6), shift, collateral))
            cells.append(" / ".join(_lead(x) for x in leads) + (" safe" if ok else ""))
        lines.append(f"| {shift} | " + " | ".join(cells) + " |")
    best = min(safe, default=None)
    lines += [
        "",
        "Safe with the fewest early alarms: "
        + (f"shift {best[2]}, collateral {best[3]} (leads summing to {best[0]})." if best else "none."),
        "",
    ]
    lines += _returns(chains, defaults)
    lines += ["## The chains", ""]
    lines += [f"- {c.name}: {c.source}" for c in chains]
    return "\n".join(lines) + "\n"


def _returns(chains: list[Chain], defaults: dict[str, float]) -> list[str]:
    """The section on the other damage: an earlier removal coming back, against the check and its undo figure."""
    lines = [
        "## An earlier removal coming back",
        "",
        f"*Back*: the first measured step where a concept removed at an earlier step is shown in {100 * RETURN:.0f} "
        "points more of its images than at its own step (the removal it was made with held then, and no longer). "
        "The check's undo figure is the share of a removal's effect the rest of the stack takes back, summed along "
        "the chain: the larger of the weights' probes (text-reading layers) and, for removals distilled on top of "
        "others since the measure exists (the last digits chain), what each later removal measured in training "
        "(`earlier_undone`). *Lead*: the step it comes back minus the first step the check (all "
        "figures, at the defaults) or its undo figure alone (at each threshold) fails.",
        "",
        "| chain | back at (concept: own step -> then) | check fails first at (lead) | undo above "
        + " / ".join(str(u) for u in UNDOS)
        + " first at (lead) |",
        "|---|---|---|---|",
    ]
    distilled = []
    for chain in chains:
        back = chain.comes_back()
        if back is None:
            continue
        step, concept, own, now = back
        flag = chain.flagged(**defaults)
        whole = f"{flag} ({step - flag})" if flag else "never"
        undo = " / ".join(f"{f} ({step - f})" if (f := chain.undo_flagged(u)) else "never" for u in UNDOS)
        lines.append(f"| {chain.name} | {step} ({concept}: {100 * own:.0f}% -> {100 * now:.0f}%) | {whole} | {undo} |")
        if chain.every_step and "distill" in chain.name:
            distilled.append((chain, step))
    safe = [u for u in UNDOS if all((f := c.undo_flagged(u)) is not None and step - f >= 1 for c, step in distilled)]
    lines += [
        "",
        "Distilled chains measured at every step: "
        + "; ".join(c.name for c, _ in distilled)
        + ". Undo thresholds that fail at least one step before the return on every one of them: "
        + (", ".join(str(u) for u in safe) if safe else "none")
        + f" (the default: {defaults['undo']}). On closed-form chains the probes' undo stays near 0 while "
        "removals come back: there the shift and collateral figures are what fail first.",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=BENCHMARKS / "check_calibration.md")
    parser.add_argument("--add", type=Path, default=None, help="a continual-benchmark json of one method to keep")
    parser.add_argument("--label", default=None, help="with --add: the chain's name")
    parser.add_argument("--note", default="", help="with --add: how it was made (command, model)")
    args = parser.parse_args()
    if args.add:
        add_chain(args.add, args.label or args.add.stem, args.note)
    text = render(load_chains())
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
