"""The `diffusers-unlearn` command, driven through subprocesses on the digits model and a tiny pipeline folder."""

import json
import os
import subprocess
import sys

import pytest

import diffusers_unlearn as du
from diffusers_unlearn.cli import main

COMMANDS = ["erase", "check", "merge", "push", "pull", "eval", "export", "demo"]


def cli(*args, cwd=None, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", **(env or {}))
    command = [sys.executable, "-m", "diffusers_unlearn.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def as_json(result) -> dict:
    assert result.returncode in (0, 3), result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_of_every_command(capsys):
    result = cli("--help")
    assert result.returncode == 0 and all(name in result.stdout for name in COMMANDS)
    for name in COMMANDS:  # the same parser in-process: one interpreter start is enough
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0 and "usage: diffusers-unlearn " + name in capsys.readouterr().out


def test_a_chain_from_the_command_line(tmp_path):
    """erase twice into a stack, check it, merge it, export it, evaluate it."""
    for concept in ("seven", "three"):
        made = as_json(cli("erase", "--model", "digits", "--concept", concept, "--append", "removals", "--json",
                           cwd=tmp_path))  # fmt: skip
        assert made["name"] == f"no-{concept}" and made["written"] == "removals"
    manifest = json.loads((tmp_path / "removals" / "unlearning_stack.json").read_text())
    assert [e["name"] for e in manifest["entries"]] == ["no-seven", "no-three"]

    check = cli("check", "removals", "--model", "digits", "--plot", "heat.png", cwd=tmp_path)
    assert check.returncode == 0 and "verdict: PASSED" in check.stdout and (tmp_path / "heat.png").is_file()
    strict = cli("check", "removals", "--model", "digits", "--collateral-threshold", "0.0001", "--json", cwd=tmp_path)
    assert strict.returncode == 3 and as_json(strict)["passed"] is False

    merged = as_json(cli("merge", "removals", "--method", "joint", "--model", "digits", "--output", "merged", "--json",
                         cwd=tmp_path))  # fmt: skip
    assert (
        merged["name"] == "merged-2-removals" and (tmp_path / "merged" / "pytorch_lora_weights.safetensors").is_file()
    )
    exported = as_json(cli("export", "removals", "--output", "chain.safetensors", "--json", cwd=tmp_path))
    assert exported["format"] == "kohya" and exported["bytes"] > 1000

    figures = as_json(cli("eval", "--removal", "merged", "--digit", "7", "--images", "4", "--json", cwd=tmp_path))
    assert figures["concept"] == "seven" and figures["forget_accuracy"] <= 0.1  # measured 0.0


def test_erase_a_tiny_pipeline_folder_and_the_demo(tmp_path, sd_pipe):
    sd_pipe.save_pretrained(tmp_path / "tiny")
    made = as_json(cli("erase", "--model", tmp_path / "tiny", "--concept", "cat", "--neighbor", "dog",
                       "--output", tmp_path / "no-cat", "--json"))  # fmt: skip
    assert made["rank"] >= 1 and (tmp_path / "no-cat" / "unlearning.json").is_file()
    demo = cli("demo", "--output", tmp_path / "demo")
    assert demo.returncode == 0 and "forget accuracy" in demo.stdout
    assert (tmp_path / "demo" / "before_after.png").is_file()


def test_push_and_pull_through_a_hub(tmp_path, sd_pipe):
    from hub_server import HubServer
    from test_hub import TOKEN

    cat = du.erase(sd_pipe, "cat")
    sd_pipe.load_unlearning(cat)
    du.UnlearningStack([cat, du.erase(sd_pipe, "dog")]).save_pretrained(tmp_path / "removals")
    env = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    with HubServer(tmp_path / "server") as server:
        hub = ["--endpoint", server.url, "--token", TOKEN]
        pushed = as_json(cli("push", "removals", "me/chain", *hub, "--json", cwd=tmp_path, env=env))
        assert len(pushed["commit"]) == 40
        pulled = as_json(cli("pull", "me/chain", "--output", "pulled", *hub, "--json", cwd=tmp_path, env=env))
        assert pulled["removals"] == ["no-cat", "no-dog"]
        missing = cli("pull", "me/none", "--output", "nothing", *hub, cwd=tmp_path, env=env)
        assert missing.returncode == 1 and "error:" in missing.stderr and not (tmp_path / "nothing").exists()
    assert du.UnlearningStack.from_pretrained(tmp_path / "pulled").names == ["no-cat", "no-dog"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["erase", "--model", "digits", "--concept", "qqqzzz", "--output", "out"], "does not know", 1),
        (["erase", "--model", "digits", "--concept", "seven"], "--output FOLDER", 1),
        (["check", "missing", "--model", "digits"], "Nothing at missing", 1),
        (["export", "missing", "--output", "x.safetensors"], "Nothing at missing", 1),
        (["merge", "missing", "--output", "out", "--method", "average"], "invalid choice", 2),
        (["merge", "missing", "--output", "out", "--method", "joint"], "pass --model", 1),
        (["eval", "--digit", "12"], "invalid choice", 2),
        (["eval", "--colour", "purple"], "--colour must be one of", 2),
        (["eval"], "needs --digit", 2),
        (["frobnicate"], "invalid choice", 2),
    ],
)
def test_bad_arguments_fail_clearly_and_write_nothing(tmp_path, monkeypatch, capsys, args, message, code):
    monkeypatch.chdir(tmp_path)
    try:
        returned = main(args)
    except SystemExit as exit_:  # argparse
        returned = exit_.code
    assert returned == code and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_exit_codes_through_the_process(tmp_path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    unknown = cli("erase", "--model", "nowhere/none", "--concept", "x", "--output", "out", cwd=tmp_path, env=offline)
    assert unknown.returncode == 1 and "Cannot load the model" in unknown.stderr
    assert cli("frobnicate", cwd=tmp_path).returncode == 2
    assert not (tmp_path / "out").exists()
