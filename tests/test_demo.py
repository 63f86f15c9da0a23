"""The demos learn (slow: `make test-slow`)."""

import json
import pathlib
import re
import subprocess
import sys

import pytest

from rnnkit.cli import main

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "adding_problem.py"


@pytest.mark.slow
def test_adding_problem_learns():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    final = float(re.search(r"final test MSE ([0-9.]+)", out.stdout).group(1))
    assert final < 0.01  # the mean predictor scores 1/6


@pytest.mark.slow
def test_make_demo_beats_xz(tmp_path):
    # the training command of `make demo` (Makefile), into a temporary run directory
    assert (
        main(["train", "charlm", "--steps", "1500", "--eval-every", "250", "--out", str(tmp_path / "demo")])
        == 0
    )
    test = [json.loads(ln) for ln in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in test if r["split"] == "test"][-1]
    assert test["bpc"] < test["xz_bpc"]


@pytest.mark.slow
def test_custom_cell_example_learns():
    """examples/custom_cell.py: a cell defined outside the package learns the adding problem."""
    example = EXAMPLE.parent / "custom_cell.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    tests = [float(v) for v in re.findall(r"test ([0-9.]+)", out.stdout)]
    assert len(tests) == 8 and min(tests) < 0.05  # the mean predictor scores 1/6
