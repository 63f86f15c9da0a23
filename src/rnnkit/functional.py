"""TEMPORARY."""
import importlib
from rnnkit.cells.elman import rnn_relu, rnn_tanh  # noqa
for _m in ("gru", "lstm", "mgu"):
    try:
        globals()[_m] = getattr(importlib.import_module(f"rnnkit.cells.{_m}"), _m)
    except ImportError:
        pass
