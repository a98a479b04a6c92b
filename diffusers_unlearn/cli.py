"""The `diffusers-unlearn` command: erase, check, merge, push, pull, eval, export, demo.

Every command prints what it did for people, or one JSON object with `--json` for scripts; progress bars go to
stderr. Exit codes: 0 done, 1 an error (the message says what to do; nothing is written), 2 bad arguments
(argparse), 3 `check` found interference.

    diffusers-unlearn demo
    diffusers-unlearn erase --model digits --concept seven --alias 7 --neighbor one --neighbor four --output no-seven
    diffusers-unlearn erase --model digits --concept nine --append removals   # on top of the chain, added to it
    diffusers-unlearn check removals --model digits --plot heatmap.png
    diffusers-unlearn merge removals --method joint --model digits --output merged
    diffusers-unlearn eval --model digits --removal no-seven --digit 7
    diffusers-unlearn export removals --format kohya --output no-sevens.safetensors
    diffusers-unlearn push removals my-org/no-sevens
    diffusers-unlearn pull my-org/no-sevens --revision v3 --output removals-v3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .errors import UnlearningError

EXIT_ERROR, EXIT_INTERFERENCE = 1, 3
_DIGITS_TEMPLATES = ["{}", "a {}", "the number {}", "a red {}", "a blue {}", "a green {}", "a yellow {}"]
"""Contexts for the embedded digits model, whose text encoder reads 16 tokens (the default templates are longer)."""


# ------------------------------------------------------------------------------------------------- helpers
def _load_pipeline(model: str):
    """`digits` is the embedded model; anything else goes to `DiffusionPipeline.from_pretrained` (folder or Hub id)."""
    if model == "digits":
        from . import digits

        return digits.load_pipeline()
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(model)
    except OSError as error:
        raise UnlearningError(
            f"Cannot load the model {model!r}: {error}. Pass a local pipeline folder, a Hub id you can reach, or "
            "'digits' for the embedded model."
        ) from error


def _source(path: str):
    """An adapter folder or a stack folder / manifest."""
    from .adapter import UnlearningAdapter
    from .stack import UnlearningStack, is_stack

    if not Path(path).exists():
        raise UnlearningError(f"Nothing at {path}: pass a removal folder or a stack folder.")
    return UnlearningStack.from_pretrained(path) if is_stack(path) else UnlearningAdapter.from_pretrained(path)


def _stack(path: str):
    from .stack import UnlearningStack

    source = _source(path)
    return source if isinstance(source, UnlearningStack) else UnlearningStack([source])


def _digits_kwargs(concept: str) -> dict[str, Any] | None:
    """For the digits model: the concept's own forget prompts, targets and neighbours ("seven", "red", "red seven")."""
    from .digits import COLOURS, DIGITS
    from .digits.concepts import Concept

    words = concept.lower().split()
    colours = [w for w in words if w in COLOURS]
    digit_words = [w for w in words if w in DIGITS]
    if len(colours) + len(digit_words) != len(words) or len(colours) > 1 or len(digit_words) > 1:
        return None
    digit = DIGITS.index(digit_words[0]) if digit_words else None
    found = Concept(digit=digit, colour=colours[0] if colours else None)
    kwargs = found.erase_kwargs()
    kwargs.pop("name", None)
    return kwargs


def _refuse_existing(path: str | None, force: bool) -> None:
    if path and Path(path).exists() and not force:
        raise UnlearningError(f"{path} exists; choose another --output or pass --force to overwrite it.")


# ------------------------------------------------------------------------------------------------ commands
def cmd_erase(args) -> dict[str, Any]:
    from . import erase
    from .methods import DistillConfig
    from .stack import UnlearningStack, is_stack

    if bool(args.append) == bool(args.output):
        raise UnlearningError("Pass either --output FOLDER (one removal) or --append STACK (add it to a chain).")
    if args.append and Path(args.append).exists() and not is_stack(args.append):
        raise UnlearningError(f"{args.append} exists and is not a stack folder; --append needs a stack folder.")
    if args.output:
        _refuse_existing(args.output, args.force)
    pipe = _load_pipeline(args.model)
    base = args.append if args.append and Path(args.append).exists() else args.on
    stack = _stack(base) if base else UnlearningStack()
    if len(stack):
        pipe.load_unlearning(stack)  # the new removal is made on top of the chain
    kwargs = {
        "concept": args.concept,
        "aliases": args.alias,
        "prompts": args.prompt or None,
        "templates": args.template or None,
        "neighbors": args.neighbor,
        "mine_neighbors": args.mine_neighbors,
        "preserve": args.preserve,
        "category": args.category,
    }
    if args.model == "digits" and not (args.prompt or args.template or args.neighbor or args.preserve):
        kwargs = _digits_kwargs(args.concept) or {**kwargs, "templates": _DIGITS_TEMPLATES}
    config = DistillConfig(**({"steps": args.steps} if args.steps else {})) if args.method == "distill" else None
    adapter = erase(
        pipe, **kwargs, method=args.method, config=config, rank=args.rank, redact=args.redact, name=args.name
    )
    if args.append:
        stack.append(adapter)
        written = stack.save_pretrained(args.append)
    else:
        written = adapter.save_pretrained(args.output)
    return {
        "name": adapter.name,
        "written": str(written),
        "rank": adapter.rank,
        "targets": [r["target"] for r in adapter.metadata["targets"]],
        "figures": adapter.metadata["figures"],
    }


def cmd_check(args) -> dict[str, Any]:
    stack = _stack(args.stack)
    pipe = _load_pipeline(args.model)
    report = stack.check(pipe, **{k: v for k, v in vars(args).items() if k.endswith("_threshold") and v is not None})
    if args.plot:
        report.plot(args.plot)
    return {
        "passed": report.passed,
        "names": report.names,
        "undo": report.undo.tolist(),
        "shift": report.shift.tolist(),
        "collateral": report.collateral.tolist(),
        "failures": report.failures(),
        "approximate": report.approximate,
        "report": str(report),
    }


def cmd_merge(args) -> dict[str, Any]:
    _refuse_existing(args.output, args.force)
    if args.method == "joint" and args.model is None:
        raise UnlearningError("--method joint re-solves on the base model: pass --model.")
    stack = _stack(args.stack)
    pipe = _load_pipeline(args.model) if args.method == "joint" else None
    merged = stack.merge(args.method, pipe=pipe, rank=args.rank, name=args.name)
    written = merged.save_pretrained(args.output)
    return {"name": merged.name, "written": str(written), "rank": merged.rank, "figures": merged.metadata["figures"]}


def cmd_eval(args) -> dict[str, Any]:
    from .evaluation import DigitsConceptScorer, evaluate

    if args.model != "digits":
        raise UnlearningError(
            "eval scores images with the digits model's classifier: use --model digits. For other models, use "
            "diffusers_unlearn.evaluation.evaluate with a CLIPConceptScorer from Python."
        )
    from .digits.concepts import ALL_CELLS, Concept, cell_probe

    concept = Concept(digit=args.digit, colour=args.colour)
    pipe = _load_pipeline(args.model)
    if args.removal:
        pipe.load_unlearning(_source(args.removal))
    related = [c for c in concept.related() if not concept.covers(*c)]
    general = [c for c in ALL_CELLS if not concept.covers(*c) and c not in related][::4]
    result = evaluate(
        pipe,
        DigitsConceptScorer(),
        forget=[concept.forget_probe()],
        related=[cell_probe(*c) for c in related],
        general=[cell_probe(*c) for c in general],
        images_per_prompt=args.images,
        num_inference_steps=args.steps,
    )
    return {"concept": concept.name, "chance": concept.chance, **result.summary()}


def cmd_export(args) -> dict[str, Any]:
    from .export import export_kohya

    _refuse_existing(args.output, args.force)
    written = export_kohya(_source(args.source), args.output)
    return {"written": str(written), "format": args.format, "bytes": written.stat().st_size}


def cmd_push(args) -> dict[str, Any]:
    from . import hub
    from .stack import UnlearningStack

    options = {"token": args.token, "endpoint": args.endpoint, "revision": args.revision}
    source = _source(args.source)
    if args.append:
        if isinstance(source, UnlearningStack):
            raise UnlearningError("--append adds one removal to a chain on the Hub; pass a removal folder.")
        commit = hub.append_to_hub(args.repo_id, source, retry=args.retry, commit_message=args.message, **options)
    elif isinstance(source, UnlearningStack):
        commit = hub.push_stack(source, args.repo_id, private=args.private, commit_message=args.message, **options)
    else:
        commit = hub.push_adapter(source, args.repo_id, private=args.private, commit_message=args.message, **options)
    return {
        "repo_id": args.repo_id,
        "commit": getattr(commit, "oid", None),
        "url": str(getattr(commit, "commit_url", "")),
    }


def cmd_pull(args) -> dict[str, Any]:
    from . import hub
    from .stack import UnlearningStack

    _refuse_existing(args.output, args.force)
    adapters = hub.load(
        args.repo_id,
        revision=args.revision,
        token=args.token,
        local_files_only=args.local_files_only,
        endpoint=args.endpoint,
    )  # every file verified before anything is written
    written = UnlearningStack(adapters).save_pretrained(args.output)
    return {"repo_id": args.repo_id, "written": str(written), "removals": [a.name for a in adapters]}


def cmd_demo(args) -> dict[str, Any]:
    from . import demo

    demo.main([*(["--digit", str(args.digit)] if args.digit is not None else []), "--output", args.output])
    return {"output": args.output}


# -------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffusers-unlearn",
        description="Remove concepts from diffusers pipelines as stackable LoRA removals.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, function) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(function=function)
        sub.add_argument("--json", action="store_true", help="print one JSON object (for scripts)")
        return sub

    model_help = "a local pipeline folder, a Hub id, or 'digits' (the embedded model)"
    erase = command("erase", "make one removal (a diffusers LoRA folder)", cmd_erase)
    erase.add_argument("--model", required=True, help=model_help)
    erase.add_argument("--concept", required=True, help='what to remove, as prompts name it ("Van Gogh")')
    erase.add_argument("--alias", action="append", default=[], help="another name of the concept (repeatable)")
    erase.add_argument("--prompt", action="append", default=[], help="a forget prompt naming the concept")
    erase.add_argument("--template", action="append", default=[], help='a context with a "{}" slot (repeatable)')
    erase.add_argument("--neighbor", action="append", default=[], help="a related concept to keep (repeatable)")
    erase.add_argument("--mine-neighbors", type=int, default=0, help="neighbours to mine from the vocabulary")
    erase.add_argument("--preserve", action="append", default=[], help="a prompt to keep unchanged (repeatable)")
    erase.add_argument("--category", help='a generic replacement ("a painter")')
    erase.add_argument("--method", choices=["closed_form", "distill"], default="closed_form")
    erase.add_argument("--steps", type=int, default=None, help="training steps (distill; default 500)")
    erase.add_argument("--rank", type=int, help="LoRA rank (default: chosen by the method)")
    erase.add_argument("--redact", action="store_true", help="keep the concept's name out of the files")
    erase.add_argument("--name", help='adapter name (default "no-<concept>")')
    erase.add_argument("--on", metavar="STACK", help="make the removal on top of these removals (loaded first)")
    erase.add_argument(
        "--append", metavar="STACK", help="make it on top of this stack folder and add it there (created if new)"
    )
    erase.add_argument("--output", help="folder to write the removal to")
    erase.add_argument("--force", action="store_true", help="overwrite --output")

    check = command("check", "measure interference between a stack's removals (exit 3 if it fails)", cmd_check)
    check.add_argument("stack", help="a stack folder, its manifest, or one removal folder")
    check.add_argument("--model", required=True, help=model_help)
    check.add_argument("--undo-threshold", type=float, dest="undo_threshold")
    check.add_argument("--shift-threshold", type=float, dest="shift_threshold")
    check.add_argument("--collateral-threshold", type=float, dest="collateral_threshold")
    check.add_argument("--plot", help="write a heatmap PNG there")

    merge = command("merge", "merge a stack into one removal", cmd_merge)
    merge.add_argument("stack", help="a stack folder or its manifest")
    merge.add_argument("--method", choices=["concat", "svd", "joint"], default="concat")
    merge.add_argument("--model", help=model_help + " (needed by --method joint)")
    merge.add_argument("--rank", type=int, help="target rank (svd, joint)")
    merge.add_argument("--name", help='name of the merged removal (default "merged-<n>-removals")')
    merge.add_argument("--output", required=True, help="folder to write the merged removal to")
    merge.add_argument("--force", action="store_true", help="overwrite --output")

    evaluation = command("eval", "forget / related / general figures on the digits model", cmd_eval)
    evaluation.add_argument("--model", default="digits", help="'digits' (the scorer is the digits classifier)")
    evaluation.add_argument("--removal", help="a removal or stack folder to load first")
    evaluation.add_argument("--digit", type=int, choices=range(10), help="the removed digit")
    evaluation.add_argument("--colour", help="the removed colour (or the digit's colour)")
    evaluation.add_argument("--images", type=int, default=8, help="images per prompt")
    evaluation.add_argument("--steps", type=int, default=20, help="sampler steps")

    export = command("export", "write a removal or a merged stack for ComfyUI / A1111", cmd_export)
    export.add_argument("source", help="a removal folder or a stack folder")
    export.add_argument("--format", choices=["kohya"], default="kohya")
    export.add_argument("--output", required=True, help="the .safetensors file to write")
    export.add_argument("--force", action="store_true", help="overwrite --output")

    hub_help = "Hub endpoint (default: huggingface.co or $HF_ENDPOINT)"
    push = command("push", "publish a removal or a stack to the Hugging Face Hub", cmd_push)
    push.add_argument("source", help="a removal folder or a stack folder")
    push.add_argument("repo_id", help='"org/name"')
    push.add_argument("--append", action="store_true", help="add the removal to the chain in the repo")
    push.add_argument("--retry", type=int, default=0, help="with --append: retries on a concurrent append")
    push.add_argument("--private", action="store_true")
    push.add_argument("--message", help="commit message")
    push.add_argument("--revision", help="branch to push to")
    push.add_argument("--token", help="Hub token (default: the logged-in one)")
    push.add_argument("--endpoint", help=hub_help)

    pull = command("pull", "download a chain of removals, verified, into a stack folder", cmd_pull)
    pull.add_argument("repo_id", help='"org/name"')
    pull.add_argument("--output", required=True, help="stack folder to write")
    pull.add_argument("--revision", help="branch, tag or commit (resolved once, recorded)")
    pull.add_argument("--local-files-only", action="store_true", help="use the cache only")
    pull.add_argument("--token", help="Hub token")
    pull.add_argument("--endpoint", help=hub_help)
    pull.add_argument("--force", action="store_true", help="overwrite --output")

    demo = command("demo", "erase a digit from the embedded model and show before / after", cmd_demo)
    demo.add_argument("--digit", type=int, choices=range(10), help="digit to erase (default 7)")
    demo.add_argument("--output", default="unlearning-demo", help="folder for the grid, figures and removal")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    if getattr(args, "colour", None) is not None:
        from .digits import COLOURS

        if args.colour not in COLOURS:
            build_parser().error(f"--colour must be one of {', '.join(COLOURS)}")
    if args.command == "eval" and args.digit is None and args.colour is None:
        build_parser().error("eval needs --digit, --colour or both")
    try:
        result = args.function(args)
    except (UnlearningError, ValueError, FileNotFoundError) as error:
        if args.json:
            print(json.dumps({"error": str(error), "type": type(error).__name__}))
        else:
            print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    code = EXIT_INTERFERENCE if args.command == "check" and not result["passed"] else 0
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_human(args.command, result)
    return code


def _print_human(command: str, result: dict[str, Any]) -> None:
    if command == "check":
        print(result["report"])
        return
    if command == "demo":
        return  # the demo prints its own summary
    for key, value in result.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        print(f"{key}: {value}")


if __name__ == "__main__":
    sys.exit(main())
