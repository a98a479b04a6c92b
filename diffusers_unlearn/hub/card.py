"""The model card (`README.md`) of a repo of removals, written with `ModelCard` / `ModelCardData`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

from ..manifest import WEIGHTS_NAME, is_repo_id

if TYPE_CHECKING:
    from ..adapter import UnlearningAdapter
    from ..interference import InterferenceReport

CARD_NAME = "README.md"
CARD_TAGS = ["lora", "concept-erasure", "unlearning", "diffusers-unlearn", "text-to-image"]


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def _concept_cell(adapter: UnlearningAdapter) -> str:
    if adapter.metadata.get("members"):
        return "merged: " + ", ".join(m["name"] for m in adapter.metadata["members"])
    if adapter.metadata.get("redacted") or adapter.concept is None:
        return "*redacted*"
    return _cell(adapter.concept)


def _location(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return ""
    if "repo_id" in entry:
        return f"`{entry['repo_id']}` @ `{entry['revision'][:10]}` `{entry['path']}`"
    return f"`{entry['path']}`"


def _vanilla_lines(repo: str, adapters: list[UnlearningAdapter], entries: list[dict[str, Any]] | None) -> list[str]:
    lines = []
    for index, adapter in enumerate(adapters):
        entry = entries[index] if entries else {"path": "." if len(adapters) == 1 else f"adapters/{index + 1:03d}"}
        args = [repr(entry.get("repo_id", repo))]
        if "revision" in entry:
            args.append(f"revision={entry['revision']!r}")
        if entry["path"] != ".":
            args.append(f"subfolder={entry['path']!r}")
        args += [f"weight_name={WEIGHTS_NAME!r}", f"adapter_name={adapter.name!r}"]
        lines.append(f"pipe.load_lora_weights({', '.join(args)})")
    names = [a.name for a in adapters]
    lines.append(f"pipe.set_adapters({names!r})  # diffusers leaves only the last loaded adapter active otherwise")
    return lines


def model_card(
    removals: Iterable[UnlearningAdapter] | UnlearningAdapter,
    *,
    repo_id: str | None = None,
    entries: list[dict[str, Any]] | None = None,
    report: InterferenceReport | None = None,
) -> ModelCard:
    """The model card (`README.md`) of a removal or chain, written with `ModelCard` / `ModelCardData`.

    Card data: `base_model` (when the removals record a Hub id), `library_name: diffusers`, tags `lora`,
    `concept-erasure`, `unlearning`. Body: the ordered table of removals (redacted ones shown as redacted), the
    figures recorded in each adapter, the interference verdict when `report` is given, and how to load it with
    and without diffusers-unlearn.

    Args:
        removals ([`UnlearningStack`], [`UnlearningAdapter`] or a list of them): What the repo holds, in order.
        repo_id (`str`, *optional*): The repo, for the usage snippets.
        entries (`list[dict]`, *optional*): The manifest entries (for where each removal's files are).
        report ([`InterferenceReport`], *optional*): The chain's interference check, e.g. `stack.check(pipe)`.

    Example:
        ```py
        >>> card = model_card(stack, repo_id="org/no-sevens", report=stack.check(pipe))
        >>> card.data.tags
        ['lora', 'concept-erasure', 'unlearning', 'diffusers-unlearn', 'text-to-image']
        >>> card.save("README.md")
        ```
    """
    adapters = list(removals) if isinstance(removals, Iterable) else [removals]
    repo = repo_id or "<repo_id>"
    first = adapters[0].metadata if adapters else {}
    base_model = first.get("base_model")
    hub_base = base_model if isinstance(base_model, str) and is_repo_id(base_model) else None
    data = ModelCardData(base_model=hub_base, library_name="diffusers", tags=list(CARD_TAGS))

    lines = [
        f"# {repo}: {len(adapters)} concept removal{'s' if len(adapters) != 1 else ''}",
        "",
        "Made with diffusers-unlearn: each removal is a LoRA adapter on the denoiser's cross-attention, made on top "
        "of the ones before it; they apply in this order.",
        "",
        f"- Base model: `{base_model or 'not recorded'}`",
        f"- Base weights fingerprint: `{first.get('base_fingerprint', 'n/a')}` (checked before loading)",
        f"- Model family: `{first.get('family', 'n/a')}`",
        "",
        "## Removals",
        "",
        "| # | Removal | Concept | Method | Rank | Made on top of | Files |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, adapter in enumerate(adapters):
        parents = ", ".join(p["name"] for p in adapter.metadata.get("parents", [])) or "base model"
        entry = entries[index] if entries else None
        lines.append(
            f"| {index + 1} | `{adapter.name}` | {_concept_cell(adapter)} | {adapter.metadata.get('method', '')} | "
            f"{adapter.rank} | {_cell(parents)} | {_location(entry)} |"
        )
    figure_keys = list(
        dict.fromkeys(
            key
            for adapter in adapters
            for key, value in adapter.metadata.get("figures", {}).items()
            if isinstance(value, int | float)
        )
    )
    if figure_keys:
        lines += [
            "",
            "## Figures recorded in the adapters",
            "",
            "| Removal | " + " | ".join(figure_keys) + " |",
            "|---" * (len(figure_keys) + 1) + "|",
        ]
        for adapter in adapters:
            figures = adapter.metadata.get("figures", {})
            cells = [_cell(figures[key]) if key in figures else "" for key in figure_keys]
            lines.append(f"| `{adapter.name}` | " + " | ".join(cells) + " |")
    lines += ["", "## Interference", ""]
    if report is None:
        lines.append(
            "Not recorded with this upload. Measure it with `UnlearningStack.from_pretrained(repo).check(pipe)`."
        )
    else:
        verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.failures())
        lines += [f"Verdict: **{verdict}**", "", "```text", str(report), "```"]
    base = base_model or "<base model>"
    lines += [
        "",
        "## Usage",
        "",
        "With diffusers-unlearn (every file checked against its sha256 and the base weights against the "
        "fingerprint before the pipeline is touched; pin a commit with `revision=` for reproducible results):",
        "",
        "```py",
        "import diffusers_unlearn  # adds pipe.load_unlearning",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({base!r})",
        f"pipe.load_unlearning({repo!r}, revision='main')",
        "```",
        "",
        "With diffusers alone (no verification):",
        "",
        "```py",
        "from diffusers import DiffusionPipeline",
        "",
        f"pipe = DiffusionPipeline.from_pretrained({base!r})",
        *_vanilla_lines(repo, adapters, entries),
        "```",
        "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
