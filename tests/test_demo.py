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
def test_make_demo_reaches_its_figure(tmp_path):
    """The training command of `make demo`, read from the Makefile, into a temporary run: test
    bpc at most 1.90 (README), below xz on the test text alone."""
    makefile = (pathlib.Path(__file__).parents[1] / "Makefile").read_text()
    line = re.search(r"rnnkit train (charlm[^\n]*) --out \$\(DEMO_RUN\)", makefile).group(1)
    assert main(["train", *line.split(), "--out", str(tmp_path / "demo")]) == 0
    test = [json.loads(ln) for ln in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in test if r["split"] == "test"][-1]
    assert test["bpc"] <= 1.90 and test["bpc"] < test["xz_bpc"], test


@pytest.mark.slow
def test_custom_cell_example_learns():
    """examples/custom_cell.py: a cell defined outside the package learns the adding problem."""
    example = EXAMPLE.parent / "custom_cell.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    tests = [float(v) for v in re.findall(r"test ([0-9.]+)", out.stdout)]
    assert len(tests) == 8 and min(tests) < 0.05  # the mean predictor scores 1/6
