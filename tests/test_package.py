"""Package-level promises of API.md: names, version, command, error hierarchy, import layering."""

import ast
import pathlib
import subprocess
import sys

import pytest

import rnnkit

SRC = pathlib.Path(rnnkit.__file__).parent


def test_version_and_command():
    assert isinstance(rnnkit.__version__, str) and rnnkit.__version__
    out = subprocess.run([sys.executable, "-m", "rnnkit", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and rnnkit.__version__ in out.stdout


def test_error_hierarchy():
    assert issubclass(rnnkit.RnnkitValueError, rnnkit.RnnkitError)
    assert issubclass(rnnkit.RnnkitValueError, ValueError)
    assert issubclass(rnnkit.RnnkitTypeError, TypeError)
    assert issubclass(rnnkit.RnnkitFileError, OSError)
    assert issubclass(rnnkit.RnnkitError, Exception)


def test_public_names():
    for name in ("RNN", "LSTM", "GRU", "MGU", "RnnkitError"):
        assert hasattr(rnnkit, name)
    for name in ("rnn_tanh", "rnn_relu", "lstm", "gru", "mgu"):
        assert callable(getattr(rnnkit.functional, name))
    for name in ("RNNCell", "LSTMCell", "GRUCell", "MGUCell"):
        assert hasattr(rnnkit.cells, name)


# Lower levels never import higher ones (STYLE.md rule 1).
LEVELS = {
    "errors": 0,
    "_checks": 0,
    "cells": 1,
    "functional": 2,
    "layers": 2,
    "models": 3,
    "decoding": 3,
    "attention": 3,
    "training": 4,
    "data": 4,
    "runs": 5,
    "tasks": 6,
    "diagnostics": 7,
    "cli": 9,
}


def _level(module: str) -> int | None:
    parts = module.split(".")
    return LEVELS.get(parts[1]) if parts[0] == "rnnkit" and len(parts) > 1 else None


def test_imports_point_down():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.name in ("__init__.py", "__main__.py") and len(rel.parts) == 1:
            continue
        here = LEVELS.get(rel.parts[0].removesuffix(".py"))
        if here is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                there = _level(node.module)
                assert there is None or there <= here, f"{rel} imports {node.module} (up)"


def test_import_draws_no_random_numbers():
    """Importing rnnkit leaves the global generator alone: seeding before the import gives the
    numbers seeding after it gives (the GEMM backend check once drew torch.randn at import)."""
    code = (
        "import torch; torch.manual_seed(0); import rnnkit; a = torch.rand(4); "
        "torch.manual_seed(0); b = torch.rand(4); print(torch.equal(a, b))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


FAMILIES = ("elman", "lstm", "gru", "mgu", "ln_lstm", "ln_gru", "minimal", "jordan", "indrnn", "peephole")


def test_no_cell_family_imports_another():
    """A family file holds its equations, kernel and unit; what several share sits below them
    (rnnkit.cells._*, rnnkit.cells.speed), what combines them above (registry, dropin)."""
    root = SRC / "cells"
    for family in FAMILIES:
        tree = ast.parse((root / f"{family}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        others = {f"rnnkit.cells.{f}" for f in FAMILIES if f != family}
        assert not imported & others, f"cells/{family}.py imports {sorted(imported & others)}"


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_version_and_help_do_not_import_torch(flag):
    """`rnnkit --version` and `rnnkit --help` answer in well under a second: torch (seconds to
    import) is not imported for them."""
    code = (
        "import sys, contextlib, io\n"
        "from rnnkit._entry import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = main([{flag!r}])\n"
        "assert code == 0 and 'rnnkit' in out.getvalue(), (code, out.getvalue())\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    shown = subprocess.run([sys.executable, "-m", "rnnkit", flag], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "rnnkit" in shown.stdout
