"""The `diffusers-unlearn` command, driven through subprocesses on the digits model and a tiny pipeline folder."""

import argparse
import json
import os
import stat
import subprocess
import sys

import pytest

import diffusers_unlearn as du
from diffusers_unlearn.cli import DIGITS_COLOURS, _erase_config, _erase_kwargs, build_parser, main

COMMANDS = ["erase", "check", "merge", "push", "pull", "eval", "export", "demo"]


def cli(*args, cwd=None, env=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", **(env or {}))
    command = [sys.executable, "-m", "diffusers_unlearn.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def cli_here(capsys, monkeypatch, *args, cwd):
    """`cli(...)` in this process (`main`, what the console script calls): the same exit code and output, without
    the seconds a subprocess spends importing torch and diffusers."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def as_json(result) -> dict:
    assert result.returncode in (0, 3), result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "diffusers", "transformers", "huggingface_hub", "peft")


def test_help_of_every_command_imports_nothing_heavy(capsys):
    """`--help` answers without torch or diffusers (which take seconds to import): the CLI imports them lazily."""
    script = (
        "import sys\nfrom diffusers_unlearn.cli import main\n"
        f"for argv in [['--help']] + [[c, '--help'] for c in {COMMANDS!r}]:\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
        f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"
    assert all(name in result.stdout for name in COMMANDS) and "usage: diffusers-unlearn demo" in result.stdout
    script = f"import sys, diffusers_unlearn; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    import_only = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert import_only.stdout.strip() == "[]", import_only.stderr[-2000:]


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _options(parser: argparse.ArgumentParser):
    for name, sub in _subcommands(parser):
        yield from ((name, a) for a in sub._actions if not isinstance(a, argparse._HelpAction))


def test_every_option_says_what_it_does_and_its_default():
    parser = build_parser()
    formatter = parser._get_formatter()
    for command, action in _options(parser):
        assert action.help, (command, action.dest)
        if action.nargs != 0 and action.option_strings and not action.required:  # an optional option with a value
            shown = formatter._get_help_string(action)
            assert "default" in shown or "required" in shown, (command, action.dest, shown)


def test_the_check_thresholds_the_help_states_are_the_library_defaults():
    from diffusers_unlearn.interference import check_interference

    (check,) = [sub for name, sub in _subcommands(build_parser()) if name == "check"]
    for action in check._actions:
        if action.dest.endswith("_threshold"):
            assert f"(default: {check_interference.__kwdefaults__[action.dest]})" in action.help, action.help


def test_demo_subcommand_takes_the_demo_options_and_colours_match_the_model():
    from diffusers_unlearn import demo, digits

    ours = {o for c, a in _options(build_parser()) if c == "demo" for o in a.option_strings} - {"--json"}
    theirs = {o for a in demo.build_parser()._actions for o in a.option_strings} - {"-h", "--help"}
    assert ours == theirs
    assert DIGITS_COLOURS == digits.COLOURS
    args = build_parser().parse_args(["demo", "--digit", "3", "--colour", "blue", "--images", "2"])
    assert (args.digit, args.colour, args.images) == (3, "blue", 2)


def test_options_add_to_the_digits_prompts_instead_of_replacing_them():
    parse = build_parser().parse_args
    plain = _erase_kwargs(parse(["erase", "--model", "digits", "--concept", "seven", "--output", "o"]))
    more = _erase_kwargs(
        parse(["erase", "--model", "digits", "--concept", "seven", "--alias", "sevens", "--neighbor", "seventy",
               "--prompt", "a seven on a wall", "--preserve", "a wall", "--output", "o"])
    )  # fmt: skip
    assert plain["prompts"] and set(plain["prompts"]) < set(more["prompts"]) and "a seven on a wall" in more["prompts"]
    assert set(plain["neighbors"]) | {"seventy"} == set(more["neighbors"]) and more["category"] == "digit"
    assert more["aliases"] == ["7", "sevens"] and more["preserve"][-1] == "a wall"
    other = _erase_kwargs(parse(["erase", "--model", "digits", "--concept", "cat", "--output", "o"]))
    assert other["templates"] and "{}" in other["templates"]  # not a digits concept: short contexts that fit
    elsewhere = _erase_kwargs(
        parse(["erase", "--model", "x/y", "--concept", "seven", "--neighbor", "one", "--output", "o"])
    )
    assert elsewhere["prompts"] is None and elsewhere["neighbors"] == ["one"]


def test_erase_options_set_the_methods_config():
    def config(*options):
        return _erase_config(
            build_parser().parse_args(["erase", "--model", "m", "--concept", "c", "--output", "o", *options])
        )

    assert config() == du.ClosedFormConfig()
    assert config("--earlier-protection", "0.4", "--rank", "3") == du.ClosedFormConfig(rank=3, earlier_protection=0.4)
    distilled = config("--method", "distill", "--steps", "20", "--min-reach", "1", "--earlier-protection", "2")
    assert distilled == du.DistillConfig(steps=20, min_reach=1.0, earlier_protection=2.0)
    shared = config("--method", "distill", "--earlier-protection", "2", "--earlier-overlap", "0.5")
    assert shared == du.DistillConfig(earlier_protection=2.0, earlier_overlap=0.5)
    with pytest.raises(du.InvalidArgumentError, match="--method distill"):
        config("--earlier-protection", "2", "--earlier-overlap", "0.5")  # the closed form has no such option


def test_the_erase_example_of_the_help_runs(tmp_path, monkeypatch):
    """`diffusers-unlearn --help` shows `erase --model digits --concept seven --alias 7 --neighbor one ...`: it works,
    and its --neighbor options add to the digits model's own prompts and neighbours."""
    from diffusers_unlearn import cli as module

    line = next(x for x in module.__doc__.splitlines() if "erase --model digits --concept seven" in x)
    args = line.split("diffusers-unlearn", 1)[1].split("#")[0].split()
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--json"]) == 0
    made = du.UnlearningAdapter.from_pretrained(tmp_path / "no-seven")
    prompts = made.metadata["forget_prompts"]
    assert "a red seven" in prompts and {"one", "four", "nine"} <= {
        n["neighbor"] for n in made.metadata["protected_neighbors"]
    }


def test_a_chain_from_the_command_line(tmp_path, capsys, monkeypatch):
    """erase twice into a stack, check it, merge it, export it, evaluate it (in this process: the console script
    itself runs in the tests around this one)."""

    def cli(*args, cwd):
        return cli_here(capsys, monkeypatch, *args, cwd=cwd)

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
    assert figures["not_scored"] == ["three"]  # removed on purpose by the other member: not counted as lost

    assert manifest["base_model"] == "digits"  # a name, not the package's absolute path
    mask = os.umask(0o022)
    os.umask(mask)
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert written and {stat.S_IMODE(f.stat().st_mode) for f in written} == {0o666 & ~mask}


def test_erase_a_tiny_pipeline_folder(tmp_path, sd_pipe):
    """(The demo command runs in tests/test_docs_snippets.py, as README.md and getting-started.md write it.)"""
    sd_pipe.save_pretrained(tmp_path / "tiny")
    made = as_json(cli("erase", "--model", tmp_path / "tiny", "--concept", "cat", "--neighbor", "dog",
                       "--output", tmp_path / "no-cat", "--json"))  # fmt: skip
    assert made["rank"] >= 1 and (tmp_path / "no-cat" / "unlearning.json").is_file()


@pytest.mark.long
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
        (["eval", "--colour", "purple"], "invalid choice", 2),
        (["demo", "--colour", "purple"], "invalid choice", 2),
        (["erase", "--model", "./missing", "--concept", "x", "--output", "out"], "folder ./missing does not exist", 1),
        (["check", "removals", "--model", "/no/such/folder"], "Nothing at removals", 1),
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


def test_push_without_a_reachable_hub_fails_with_our_error(tmp_path, sd_pipe):
    du.erase(sd_pipe, "cat").save_pretrained(tmp_path / "no-cat")
    offline = cli("push", "no-cat", "me/no-cat", cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 1 and offline.stderr.startswith("error: Cannot publish to 'me/no-cat'")
    assert "Traceback" not in offline.stderr
    refused = cli("push", "no-cat", "me/no-cat", "--endpoint", "http://127.0.0.1:9", "--json", cwd=tmp_path,
                  env={"HF_HUB_OFFLINE": "0"})  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert json.loads(refused.stdout)["error"].startswith("Cannot publish to 'me/no-cat' on http://127.0.0.1:9")


def test_erase_distill_trains_until_the_reach_asked_for(tmp_path, sd_pipe, capsys, monkeypatch):
    sd_pipe.save_pretrained(tmp_path / "tiny")
    base = ["erase", "--model", tmp_path / "tiny", "--concept", "cat", "--json"]
    refused = cli_here(capsys, monkeypatch, *base, "--min-reach", "1", "--output", tmp_path / "closed", cwd=tmp_path)
    assert refused.returncode == 1 and "--method distill" in refused.stdout and not (tmp_path / "closed").exists()

    distilled = [*base, "--method", "distill", "--steps", "4", "--min-reach", "100", "--output", tmp_path / "no-cat"]
    made = as_json(cli_here(capsys, monkeypatch, *distilled, cwd=tmp_path))  # 100 is never reached: up to 3 x 4
    figures = du.UnlearningAdapter.from_pretrained(made["written"]).metadata["figures"]
    assert figures["steps_trained"] == 12
    assert [done for done, _ in figures["reach_trace"]] == list(range(4, 13))  # a measure after each step


def test_glyphs_and_a_dtype_from_the_command_line(tmp_path, capsys, monkeypatch):
    """`--model glyphs` is the embedded glyphs model (it was refused as a missing folder); `--dtype bfloat16` loads
    the model in bfloat16, and the removal made there loads on the float32 model."""
    made = as_json(cli_here(capsys, monkeypatch, "erase", "--model", "glyphs", "--concept", "Q", "--dtype", "bfloat16",
                            "--device", "cpu", "--output", "no-q", "--json", cwd=tmp_path))  # fmt: skip
    assert made["rank"] >= 1
    from diffusers_unlearn import glyphs

    pipe = glyphs.load_pipeline()
    pipe.load_unlearning(tmp_path / "no-q")
    assert [u.verified for u in pipe.unlearning] == [True]
    argv = ["attack", "--model", "glyphs", "--removal", "no-q", "--concept", "Q", "--attack", "direct"]
    attacked = as_json(cli_here(capsys, monkeypatch, *argv, "--images", "1", "--steps", "2", "--json", cwd=tmp_path))
    assert set(attacked["asr"]) == {"direct"}
