"""The offline examples run top to bottom."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_quickstart(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "same images with vanilla load_lora_weights: True" in out
    assert "verified=True" in out


def test_continual_stack(capsys):
    runpy.run_path(str(EXAMPLES / "continual_stack.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "chain: ['no-seven', 'no-blue-three', 'no-five']" in out and "verdict: PASSED" in out
    assert "after withdrawal: ['no-seven', 'no-five'] | re-solved: {'withdrawn': 'no-blue-three'" in out
    assert "loaded: [('merged-2-removals', ('no-seven', 'no-five'))]" in out
