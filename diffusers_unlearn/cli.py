"""The `diffusers-unlearn` command: erase, check, merge, push, pull, eval, export, demo.

Every command prints what it did for people, or one JSON object with `--json` for scripts; progress bars go to
stderr. Exit codes: 0 done, 1 an error (the message says what to do; nothing is written; also a Hub that cannot
be reached), 2 bad arguments (argparse), 3 `check` found interference.

    diffusers-unlearn demo
    diffusers-unlearn erase --model digits --concept seven --alias 7 --neighbor one --neighbor four --output no-seven
    diffusers-unlearn erase --model digits --concept nine --append removals   # on top of the chain, added to it
    diffusers-unlearn check removals --model digits --plot heatmap.png
    diffusers-unlearn merge removals --method joint --model digits --output merged
    diffusers-unlearn eval --model digits --removal no-seven --digit 7
    diffusers-unlearn attack --model digits --removal no-seven --concept seven --attack paraphrase
    diffusers-unlearn export removals --format kohya --output no-sevens.safetensors
    diffusers-unlearn push removals my-org/no-sevens
    diffusers-unlearn pull my-org/no-sevens --revision v3 --output removals-v3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgumentError, InvalidConceptError, UnlearningError

if TYPE_CHECKING:
    from .methods import ClosedFormConfig, DistillConfig

# Only the standard library and `.errors` are imported here: `--help` must answer without torch or diffusers
# (tests/test_cli.py checks it). Each command imports what it needs.

EXIT_ERROR, EXIT_INTERFERENCE = 1, 3
DIGITS_COLOURS = ("red", "green", "blue", "yellow")
"""`diffusers_unlearn.digits.COLOURS`, repeated here so that parsing arguments imports no torch (a test keeps them
equal)."""
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")


# ------------------------------------------------------------------------------------------------- helpers
def _load_pipeline(args):
    """`args.model` on `args.device` in `args.dtype`: `digits` and `glyphs` are the embedded models; anything else
    goes to `DiffusionPipeline.from_pretrained` (folder or Hub id)."""
    import torch

    model = args.model
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if model in ("digits", "glyphs"):
        import importlib

        return importlib.import_module(f".{model}", __package__).load_pipeline(device, dtype)
    folder = Path(model).expanduser()
    if folder.exists():
        if not (folder / "model_index.json").is_file():
            raise UnlearningError(
                f"{model} holds no diffusers pipeline (no model_index.json): pass the folder that "
                "`pipe.save_pretrained` wrote, a Hub id, or 'digits' / 'glyphs' for an embedded model."
            )
    elif not _REPO_ID.fullmatch(model) or ".." in model:
        raise UnlearningError(
            f"The folder {model} does not exist (and it is not a Hub id like 'org/name'). Pass a local pipeline "
            "folder, a Hub id, or 'digits' / 'glyphs' for an embedded model."
        )
    from .quiet import TORCHVISION_NOTICE, quiet

    with quiet(TORCHVISION_NOTICE):
        from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(folder) if folder.exists() else model, dtype=dtype)
    except OSError as error:
        raise UnlearningError(
            f"Cannot load the model {model!r}: {error}. Pass a local pipeline folder, a Hub id you can reach, or "
            "'digits' / 'glyphs' for an embedded model."
        ) from error
    return pipe.to(device)


@contextlib.contextmanager
def _hub_errors(action: str, args) -> Iterator[None]:
    """Turns what the HTTP client raises when the Hub cannot be reached (offline, refused, a server error) into our
    error, so that the command exits 1 with a message instead of a traceback."""
    from huggingface_hub.errors import HfHubHTTPError

    from .hub.download import transport_errors

    try:
        yield
    except UnlearningError:
        raise
    except (HfHubHTTPError, OSError, *transport_errors()) as error:
        where = args.endpoint or "the Hub ($HF_ENDPOINT or huggingface.co)"
        raise UnlearningError(
            f"Cannot {action} {args.repo_id!r} on {where}: {type(error).__name__}: {str(error).rstrip('.')}. "
            "Check the network, HF_HUB_OFFLINE, --endpoint and --token, then run the command again."
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


def _erase_kwargs(args) -> dict[str, Any]:
    """`erase`'s arguments from the command line; on the digits model, `digits.concepts.erase_kwargs_for` adds them to
    the model's own prompts, target candidates and neighbours for a concept it knows ("seven", "red seven")."""
    given = {
        "concept": args.concept,
        "aliases": list(args.alias),
        "prompts": list(args.prompt) or None,
        "templates": list(args.template) or None,
        "neighbors": list(args.neighbor),
        "mine_neighbors": args.mine_neighbors,
        "preserve": list(args.preserve),
        "category": args.category,
    }
    if args.model != "digits":
        return given
    from .digits.concepts import erase_kwargs_for

    return erase_kwargs_for(**given)


def _erase_config(args: argparse.Namespace) -> ClosedFormConfig | DistillConfig:
    """The method's config from `erase`'s options."""
    from .methods import ClosedFormConfig, DistillConfig

    settings = {"rank": args.rank} if args.rank else {}
    if args.method == "distill":
        if args.steps:
            settings["steps"] = args.steps
        return DistillConfig(
            **settings, min_reach=args.min_reach, earlier_protection=args.earlier_protection,
            earlier_overlap=args.earlier_overlap,
        )  # fmt: skip
    if args.earlier_overlap:
        raise InvalidArgumentError("--earlier-overlap is an option of --method distill.")
    return ClosedFormConfig(**settings, earlier_protection=args.earlier_protection)


def _refuse_existing(path: str | None, force: bool) -> None:
    if path and Path(path).exists() and not force:
        raise UnlearningError(f"{path} exists; choose another --output or pass --force to overwrite it.")


# ------------------------------------------------------------------------------------------------ commands
def cmd_erase(args) -> dict[str, Any]:
    from . import erase
    from .stack import UnlearningStack, is_stack

    if bool(args.append) == bool(args.output):
        raise UnlearningError("Pass either --output FOLDER (one removal) or --append STACK (add it to a chain).")
    if args.append and Path(args.append).exists() and not is_stack(args.append):
        raise UnlearningError(f"{args.append} exists and is not a stack folder; --append needs a stack folder.")
    if args.min_reach is not None and args.method != "distill":
        raise UnlearningError("--min-reach trains a distilled removal further: pass it with --method distill.")
    if args.output:
        _refuse_existing(args.output, args.force)
    pipe = _load_pipeline(args)
    base = args.append if args.append and Path(args.append).exists() else args.on
    stack = _stack(base) if base else UnlearningStack()
    if len(stack):
        pipe.load_unlearning(stack)  # the new removal is made on top of the chain
    kwargs = _erase_kwargs(args)
    config = _erase_config(args)
    adapter = erase(pipe, **kwargs, method=args.method, config=config, redact=args.redact, name=args.name)
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
    pipe = _load_pipeline(args)
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
    pipe = _load_pipeline(args) if args.method == "joint" else None
    merged = stack.merge(args.method, pipe=pipe, rank=args.rank, name=args.name)
    written = merged.save_pretrained(args.output)
    return {"name": merged.name, "written": str(written), "rank": merged.rank, "figures": merged.metadata["figures"]}


def cmd_eval(args) -> dict[str, Any]:
    from .evaluation import evaluate

    if args.model != "digits":
        raise UnlearningError(
            "eval scores images with the digits model's classifier: use --model digits. For other models, use "
            "diffusers_unlearn.evaluation.evaluate with a CLIPConceptScorer from Python."
        )
    from .digits import Concept, DigitsConceptScorer

    concept = Concept(digit=args.digit, colour=args.colour)
    pipe = _load_pipeline(args)
    removed = []  # concepts other removals in --removal erase on purpose: not lost retention
    if args.removal:
        source = _source(args.removal)
        pipe.load_unlearning(source)
        for name in _erased_concepts(source):
            with contextlib.suppress(InvalidConceptError):  # a name of no digits cell ("cat") covers none
                removed += [Concept.parse(name or "")]
        removed = [c for c in removed if c != concept]
    result = evaluate(
        pipe,
        DigitsConceptScorer(),
        **concept.probes(removed),
        images_per_prompt=args.images,
        num_inference_steps=args.steps,
    )
    return {
        "concept": concept.name,
        "chance": concept.chance,
        **result.summary(),
        "not_scored": [r.name for r in removed],  # removed on purpose by other removals of --removal
    }


def _erased_concepts(source) -> list[str | None]:
    """The concepts a removal or a stack erases (a merged removal: its members'; `None` where redacted)."""
    adapters = list(source) if hasattr(source, "adapters") else [source]
    members = [m for a in adapters for m in (a.metadata.get("members") or [{"concept": a.concept}])]
    return [m.get("concept") for m in members]


def cmd_export(args) -> dict[str, Any]:
    from .export import export_kohya

    _refuse_existing(args.output, args.force)
    written = export_kohya(_source(args.source), args.output)
    return {"written": str(written), "format": args.format, "bytes": written.stat().st_size}


def cmd_push(args) -> dict[str, Any]:
    from . import workflows
    from .stack import UnlearningStack

    options = {"token": args.token, "endpoint": args.endpoint, "branch": args.revision, "commit_message": args.message}
    source = _source(args.source)
    if args.append and isinstance(source, UnlearningStack):
        raise UnlearningError("--append adds one removal to a chain on the Hub; pass a removal folder.")
    with _hub_errors("publish to", args):
        if args.append:
            commit = workflows.append(args.repo_id, source, retry=args.retry, **options)
        else:
            commit = source.push_to_hub(args.repo_id, private=args.private, **options)
    return {
        "repo_id": args.repo_id,
        "commit": getattr(commit, "oid", None),
        "url": str(getattr(commit, "commit_url", "")),
    }


def cmd_pull(args) -> dict[str, Any]:
    from .stack import UnlearningStack

    _refuse_existing(args.output, args.force)
    with _hub_errors("download", args):
        stack = UnlearningStack.from_pretrained(
            args.repo_id,
            revision=args.revision,
            token=args.token,
            local_files_only=args.local_files_only,
            endpoint=args.endpoint,
        )  # every file verified before anything is written
    written = stack.save_pretrained(args.output)
    return {"repo_id": args.repo_id, "written": str(written), "removals": stack.names}


def cmd_demo(args) -> dict[str, Any]:
    from . import demo

    argv = ["--output", args.output, "--images", str(args.images), "--steps", str(args.steps)]
    argv += ["--digit", str(args.digit)] if args.digit is not None else []
    argv += ["--colour", args.colour] if args.colour is not None else []
    argv += ["--world", args.world, "--concept", args.concept]
    demo.main(argv)
    return {"output": args.output}


ATTACK_NAMES = ("direct", "paraphrase", "masking", "token_search", "embedding", "mixture", "learned_token", "revival")
"""`diffusers_unlearn.attacks.ATTACKS`, repeated so that parsing imports no torch (tests/test_attacks.py keeps them
equal)."""


def cmd_attack(args) -> dict[str, Any]:
    from . import attacks  # imported here: --help must not import torch

    if args.model not in ("digits", "glyphs"):
        raise UnlearningError(
            "attack judges images with an embedded world's classifier: use --model digits or glyphs. For other "
            "models, call diffusers_unlearn.attacks.run_attacks from Python with your own scorer (a CLIPConceptScorer "
            "or any callable)."
        )
    if args.model == "digits":  # each world parses its concepts and makes their attack targets
        from .digits import Concept
        from .digits.attacks import attack_target
    else:
        from .glyphs import Concept
        from .glyphs.attacks import attack_target
    target = attack_target(Concept.parse(args.concept))  # InvalidConceptError: a name the world does not know
    pipe, reference = _load_pipeline(args), _load_pipeline(args)
    pipe.load_unlearning(_source(args.removal))
    settings = attacks.AttackSettings(images=args.images, steps=args.steps, seed=args.seed)
    options = {name: {"iterations": args.iterations} for name in ("token_search", "embedding", "learned_token")}
    options["revival"] = {"steps": args.revival_steps}
    chosen = args.attack or list(ATTACK_NAMES)
    results = attacks.run_attacks(
        pipe, target, args.model, reference=reference, attacks=chosen, settings=settings, options=options
    )
    out = {"concept": target.concept, "asr": {name: r.asr for name, r in results.items()}}
    if args.json:  # what each attack found (prompts, tokens, losses), for scripts
        out["details"] = {name: {k: v for k, v in r.summary().items() if k != "attack"} for name, r in results.items()}
    return out


# -------------------------------------------------------------------------------------------------- parser
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and ends each option's help with its default, where it has one to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        hidden = action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS)
        shown = not hidden and not action.required
        if shown and "%(default)" not in help and action.option_strings:
            help += " (default: %(default)s)"
        return help


def build_parser() -> argparse.ArgumentParser:
    """The `diffusers-unlearn` parser. Every option says what it does and its default; nothing heavy is imported."""
    parser = argparse.ArgumentParser(
        prog="diffusers-unlearn",
        description="Remove concepts from diffusers pipelines as stackable LoRA removals.",
        formatter_class=_Formatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, function) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        sub.set_defaults(function=function)
        sub.add_argument("--json", action="store_true", help="print one JSON object (for scripts) instead of text")
        return sub

    model_help = "a local pipeline folder, a Hub id, or 'digits' / 'glyphs' (the embedded models)"

    def model_options(sub: argparse.ArgumentParser) -> None:
        """Where and in which precision the model of `--model` runs."""
        sub.add_argument(
            "--device", help="where the model runs, e.g. cuda, cuda:1, cpu (default: cuda if any, else cpu)"
        )
        sub.add_argument(
            "--dtype",
            choices=("float32", "float16", "bfloat16"),
            default="float32",
            help="precision the model is loaded in (removals are solved in float32 either way)",
        )

    erase = command("erase", "make one removal (a diffusers LoRA folder)", cmd_erase)
    erase.add_argument("--model", required=True, help=model_help)
    model_options(erase)
    erase.add_argument("--concept", required=True, help='what to remove, as prompts name it ("Van Gogh", "seven")')
    erase.add_argument(
        "--alias", action="append", default=[], help="another name of the concept (repeatable; default: none)"
    )
    erase.add_argument(
        "--prompt", action="append", default=[], help="a forget prompt naming the concept (repeatable; default: "
        "the concept in each context of --template, or the digits model's own prompts for its concepts)"
    )  # fmt: skip
    erase.add_argument(
        "--template", action="append", default=[], help='a context with a "{}" slot for the concept (repeatable; '
        "default: the built-in contexts that fit the model's text encoder)"
    )  # fmt: skip
    erase.add_argument(
        "--neighbor", action="append", default=[], help="a related concept to keep intact (repeatable; default: none; "
        "on the digits model added to the other digits or colours, which are always kept)"
    )  # fmt: skip
    erase.add_argument(
        "--mine-neighbors", type=int, default=0, help="how many more neighbours to mine from the vocabulary"
    )
    erase.add_argument(
        "--preserve", action="append", default=[], help="a prompt to keep unchanged (repeatable; default: none)"
    )
    erase.add_argument(
        "--category", help='a generic replacement the concept may be mapped to ("a painter"; default: none, '
        '"digit" on the digits model)'
    )  # fmt: skip
    erase.add_argument(
        "--method", choices=["closed_form", "distill"], default="closed_form",
        help="closed_form: solved in seconds on a CPU; distill: a trained LoRA (a GPU for real models)",
    )  # fmt: skip
    erase.add_argument("--steps", type=int, default=None, help="training steps of --method distill (default: 500)")
    erase.add_argument(
        "--min-reach", type=float, default=None,
        help="--method distill: train past --steps (at most 3x) until the removal's target reach passes this, e.g. 1 "
        "(default: none, --steps and no more)",
    )  # fmt: skip
    erase.add_argument(
        "--earlier-protection", type=float, default=0.0,
        help="with a chain (--append, --on): keep what the earlier removals protected too, as one more group of this "
        "weight, e.g. 2 (default: 0, off)",
    )  # fmt: skip
    erase.add_argument(
        "--earlier-overlap", type=float, default=0.0,
        help="--method distill, with --earlier-protection: the share of that group given to the earlier removals' "
        "prompts by how far this removal's change reaches them, e.g. 0.5 (default: 0, evenly)",
    )  # fmt: skip
    erase.add_argument(
        "--rank", type=int, help="LoRA rank (default: closed_form the smallest keeping 99%% of the edit, at most 12; "
        "distill 4)"
    )  # fmt: skip
    erase.add_argument("--redact", action="store_true", help="keep the concept's name out of the files")
    erase.add_argument("--name", help='adapter name (default: "no-<concept>")')
    erase.add_argument(
        "--on", metavar="STACK", help="make the removal on top of these removals, loaded first (default: none)"
    )
    erase.add_argument(
        "--append",
        metavar="STACK",
        help="make it on top of this stack folder and add it there (created if new; this or --output is required)",
    )
    erase.add_argument("--output", help="folder to write the removal to (this or --append is required)")
    erase.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    check = command("check", "measure interference between a stack's removals (exit 3 if it fails)", cmd_check)
    check.add_argument("stack", help="a stack folder, its manifest, or one removal folder")
    check.add_argument("--model", required=True, help=model_help)
    model_options(check)
    check.add_argument(
        "--undo-threshold", type=float, dest="undo_threshold", help="largest share of a removal the others may "
        "take back, summed along the stack (default: 0.05)"
    )  # fmt: skip
    check.add_argument(
        "--shift-threshold", type=float, dest="shift_threshold", help="largest move of a removal's forget inputs by "
        "the others, relative to its own edit (default: 0.4)"
    )  # fmt: skip
    check.add_argument(
        "--collateral-threshold", type=float, dest="collateral_threshold", help="largest move of a removal's "
        "protected inputs, relative to their untouched outputs (default: 0.5)"
    )  # fmt: skip
    check.add_argument("--plot", help="write a heatmap PNG there (default: no plot)")

    merge = command("merge", "merge a stack into one removal", cmd_merge)
    merge.add_argument("stack", help="a stack folder or its manifest")
    merge.add_argument(
        "--method", choices=["concat", "svd", "joint"], default="concat",
        help="concat: the exact sum; svd: compressed to --rank; joint: re-solved at once on the base model",
    )  # fmt: skip
    merge.add_argument("--model", help=model_help + " (needed by --method joint; default: none)")
    model_options(merge)
    merge.add_argument(
        "--rank", type=int, help="target rank (svd: default the largest member rank; joint: default the smallest "
        "keeping 99.9%% of the edit)"
    )  # fmt: skip
    merge.add_argument("--name", help='name of the merged removal (default: "merged-<n>-removals")')
    merge.add_argument("--output", required=True, help="folder to write the merged removal to")
    merge.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    evaluation = command("eval", "forget / related / general figures on the digits model", cmd_eval)
    evaluation.add_argument("--model", default="digits", help="'digits' (the scorer is the digits classifier)")
    model_options(evaluation)
    evaluation.add_argument(
        "--removal", help="a removal or stack folder to load first (default: none, the base model)"
    )
    evaluation.add_argument(
        "--digit",
        type=int,
        choices=range(10),
        metavar="{0..9}",
        help="the removed digit (this, --colour or both are required)",
    )
    evaluation.add_argument(
        "--colour",
        choices=DIGITS_COLOURS,
        help="the removed colour, or the removed digit's colour (this, --digit or both are required)",
    )
    evaluation.add_argument("--images", type=int, default=8, help="images per prompt")
    evaluation.add_argument("--steps", type=int, default=20, help="sampler steps")

    export = command("export", "write a removal or a merged stack for ComfyUI / A1111", cmd_export)
    export.add_argument("source", help="a removal folder or a stack folder")
    export.add_argument("--format", choices=["kohya"], default="kohya", help="file format")
    export.add_argument("--output", required=True, help="the .safetensors file to write")
    export.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    hub_help = "Hub endpoint (default: $HF_ENDPOINT, else https://huggingface.co)"
    token_help = "Hub token (default: $HF_TOKEN or the logged-in one)"
    push = command("push", "publish a removal or a stack to the Hugging Face Hub", cmd_push)
    push.add_argument("source", help="a removal folder or a stack folder")
    push.add_argument("repo_id", help='the repo, "org/name" (created if needed)')
    push.add_argument("--append", action="store_true", help="add the removal to the chain in the repo")
    push.add_argument("--retry", type=int, default=0, help="with --append: retries on a concurrent append")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--message", help='commit message (default: "Publish <name>")')
    push.add_argument("--revision", help="branch to push to (default: main)")
    push.add_argument("--token", help=token_help)
    push.add_argument("--endpoint", help=hub_help)

    pull = command("pull", "download a chain of removals, verified, into a stack folder", cmd_pull)
    pull.add_argument("repo_id", help='the repo, "org/name"')
    pull.add_argument("--output", required=True, help="stack folder to write")
    pull.add_argument("--revision", help="branch, tag or commit, resolved once and recorded (default: main)")
    pull.add_argument("--local-files-only", action="store_true", help="use the Hugging Face cache only")
    pull.add_argument("--token", help=token_help)
    pull.add_argument("--endpoint", help=hub_help)
    pull.add_argument("--force", action="store_true", help="overwrite --output if it exists")

    demo = command("demo", "erase a concept from the embedded model and show before / after", cmd_demo)
    demo.add_argument(
        "--digit", type=int, choices=range(10), metavar="{0..9}", help="digit to erase (default: 7 if no --colour)"
    )
    demo.add_argument(
        "--colour", choices=DIGITS_COLOURS, help="colour to erase, or only this colour of --digit (default: none)"
    )
    demo.add_argument("--output", default="unlearning-demo", help="folder for the grid, figures and removal")
    demo.add_argument("--images", type=int, default=8, help="images per prompt for the figures")
    demo.add_argument("--steps", type=int, default=20, help="sampler steps")
    demo.add_argument("--world", choices=("digits", "glyphs"), default="digits", help="which embedded model")
    demo.add_argument(
        "--concept", default="serif", help='glyphs: a character, style, colour or both ("Q", "serif", "serif Q")'
    )

    attack = command("attack", "try to bring an erased concept back; prints each attack's success rate", cmd_attack)
    attack.add_argument("--model", default="digits", help="'digits' or 'glyphs' (their classifiers judge)")
    model_options(attack)
    attack.add_argument("--removal", required=True, help="a removal or stack folder to load and attack")
    attack.add_argument("--concept", required=True, help='the erased concept ("seven", "red seven"; glyphs "serif Q")')
    attack.add_argument(
        "--attack", action="append", choices=ATTACK_NAMES, help="an attack to run (repeatable; default: all)"
    )
    attack.add_argument("--images", type=int, default=16, help="images per attack prompt")
    attack.add_argument("--steps", type=int, default=20, help="sampler steps")
    attack.add_argument("--seed", type=int, default=0, help="seed of the attacks and images")
    attack.add_argument("--iterations", type=int, default=40, help="iterations of each optimising attack")
    attack.add_argument("--revival-steps", type=int, default=100, help="fine-tuning steps of the revival attack")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "eval" and args.digit is None and args.colour is None:
        parser.error("eval needs --digit, --colour or both")
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
