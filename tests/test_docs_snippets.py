"""Every code block of README.md and docs/getting-started.md runs as written, on the embedded digits model.

How the blocks run:

- `python` blocks of one file run in order in one namespace and one working folder (a block may use what an
  earlier block of the same page made: `pipe`, `adapter`, the `no-seven` folder);
- each `bash` block runs in a fresh folder, line by line; `&&` chains commands. `diffusers-unlearn ARGS` runs
  `diffusers_unlearn.cli.main(ARGS)` (what the console script calls) and must exit 0, `python -m
  diffusers_unlearn.demo ARGS` runs `demo.main(ARGS)`, `bash .ci/setup` runs the real script;
- `text` blocks are output, not code; a block without a language is refused, so that none escapes this test.

A block that cannot run here is marked by an HTML comment on the line before it,
`<!-- snippet: NAME; needs: hub -->`, where `needs` is `hub` (a Hub model or repo: this machine is offline),
`network` (installs packages) or `suite` (runs this test suite: CI's `.ci/run` runs exactly that command).
`SKIPPED` below lists every marked block by name: marking another block fails the test until it is listed here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/getting-started.md")
SKIPPED = {
    ("README.md", "stable-diffusion"): "hub",
    ("README.md", "tests"): "suite",
    ("README.md", "distill-stable-diffusion"): "hub",
    ("README.md", "push-pull"): "hub",
    ("README.md", "install"): "network",
    ("docs/getting-started.md", "install"): "network",
    ("docs/getting-started.md", "stable-diffusion"): "hub",
}
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_MARK = re.compile(r"<!--\s*snippet:\s*([\w-]+)\s*;\s*needs:\s*(hub|network|suite)\s*-->\s*\Z")


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    name: str | None
    needs: str | None

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}" + (f" ({self.name})" if self.name else "")


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n")
        mark = _MARK.search(before.splitlines()[-1] if before else "")
        found.append(
            Block(
                page=page,
                line=text[: match.start()].count("\n") + 1,
                language=match.group(1).strip(),
                code=match.group(2),
                name=mark.group(1) if mark else None,
                needs=mark.group(2) if mark else None,
            )
        )
    return found


def test_only_the_listed_blocks_are_marked_and_every_block_has_a_language():
    marked = {(b.page, b.name): b.needs for page in PAGES for b in blocks(page) if b.needs}
    assert marked == SKIPPED
    untagged = [b.id for page in PAGES for b in blocks(page) if b.language not in ("python", "bash", "text")]
    assert not untagged, f"code blocks need a language (python, bash, or text for output): {untagged}"


def _run_bash(block: Block, folder: Path, monkeypatch) -> None:
    from diffusers_unlearn import cli, demo

    monkeypatch.chdir(folder)
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        commands, current = [], []
        for word in words:
            if word == "&&":
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands += [current] if current else []
        for command in commands:
            where = f"{block.id}: {' '.join(command)}"
            if command[0] == "diffusers-unlearn":
                assert cli.main(command[1:]) == 0, where
            elif command[1:3] == ["-m", "diffusers_unlearn.demo"] and command[0].endswith("python"):
                demo.main(command[3:])
            elif command[:2] == ["bash", ".ci/setup"]:
                done = subprocess.run(["bash", str(ROOT / ".ci" / "setup")], capture_output=True, text=True)
                assert done.returncode == 0, (where, done.stderr[-2000:])
            else:
                raise AssertionError(f"{where}: this test does not know how to run it; teach it, or mark the block")
            if any(w == "demo" or w.endswith(".demo") for w in command):  # the main job wrote its grid
                assert (folder / "unlearning-demo" / "before_after.png").is_file(), where


@pytest.mark.long
@pytest.mark.parametrize("page", PAGES)
def test_every_block_runs_as_written(page, tmp_path, monkeypatch, capsys):
    import torch

    torch.manual_seed(0)
    namespace: dict = {"__name__": "__docs__"}
    work = tmp_path / "python"
    work.mkdir()
    ran = []
    for number, block in enumerate(blocks(page)):
        if block.needs or block.language == "text":
            continue
        if block.language == "python":
            monkeypatch.chdir(work)
            try:
                exec(compile(block.code, f"{page}:{block.line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{block.id} failed: {type(error).__name__}: {error}") from error
        else:
            folder = tmp_path / f"bash-{number}"
            folder.mkdir()
            _run_bash(block, folder, monkeypatch)
        ran.append(block.id)
    assert ran  # the page has blocks that run
    capsys.readouterr()


def test_default_contexts_fit_the_text_encoder_and_say_so(caplog):
    """erase's default templates that would exceed the digits text encoder's 16 tokens are dropped, with a log line."""
    from diffusers_unlearn import DEFAULT_TEMPLATES, digits
    from diffusers_unlearn.prompts import default_templates, prompt_length

    tokenizer = digits.load_pipeline().tokenizer
    with caplog.at_level("INFO", logger="diffusers_unlearn.prompts"):
        kept = default_templates(tokenizer, ["seven", "7"])
    too_long = [t for t in DEFAULT_TEMPLATES if prompt_length(tokenizer, t.format("seven")) > 16]
    assert too_long and kept == [t for t in DEFAULT_TEMPLATES if t not in too_long]
    assert any(t in caplog.text for t in too_long) and "16 tokens" in caplog.text
    tokenizer.model_max_length = 77  # a large text encoder keeps every default context
    assert default_templates(tokenizer, ["seven"]) == list(DEFAULT_TEMPLATES)


NOTICES = ("torchvision", "No LoRA keys", "requires_grad", "Token indices sequence length")


def test_our_calls_print_no_third_party_notice():
    """Import, load the embedded model, erase (a default context too long for it), load as adapters and fused, unload:
    none of transformers' / diffusers' / torch's notices that these calls used to trigger reaches the user."""
    code = """
import torch
import diffusers_unlearn as du
from diffusers_unlearn import digits
pipe = digits.load_pipeline()
adapter = du.erase(pipe, "seven", aliases=["7"], mapping_candidates=["nine"], neighbors=["one"])
for mode in ("adapters", "fused"):
    pipe.load_unlearning(adapter, mode=mode)
    pipe.unload_unlearning()
print("done")
"""
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]
    assert not [n for n in NOTICES if n in done.stderr], done.stderr[-2000:]
