"""`make demo`'s example learns the adding problem (slow: about ten seconds of training)."""

import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLE = pathlib.Path(__file__).parents[1] / "examples" / "adding_problem.py"


@pytest.mark.slow
def test_adding_problem_learns():
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    final = float(re.search(r"final test MSE ([0-9.]+)", out.stdout).group(1))
    assert final < 0.01  # the mean predictor scores 1/6
