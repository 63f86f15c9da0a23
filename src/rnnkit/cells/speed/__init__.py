"""The fused kernels' speed machinery, in one place below the cell families.

Each piece may change how fast a kernel runs, never what it computes (tests/test_speed.py runs
every built-in unit with each piece off and compares), and each has one switch:
`rnnkit.cells.speed.switch(name, on)`, or for a block `with rnnkit.cells.speed.off(*names):`.

    native        the compiled C++ loops over time on CPU (native.py, cpp/), built on first use;
                  the environment variable RNNKIT_NATIVE=0 also keeps them from being built
    workspace     reused whole-sequence buffers (workspace.py) instead of fresh ones per call
    onednn        large matrix products routed to oneDNN (gemm.py) instead of torch.mm
    sigmoid_tanh  tanh on CPU as 2 sigmoid(2v) - 1 (tanh.py); the compiled loops rely on it, so
                  they are off with it
    gc_pause      Python's cycle collector paused while a kernel runs (gc_pause.py)
    aten_cells    one step of the plain LSTM and Elman RNN (no recurrent-dropout mask, no
                  projection) as ATen's own cell function, torch.lstm_cell / rnn_tanh_cell /
                  rnn_relu_cell: one call instead of a dozen eager ops, whose dispatch is most of
                  a batch-1 step (sampling); the same ops in the same order, so the same bits

record.py (a step's arrays in one flat row) is the layout the layer-normalised LSTM's loops share,
compiled and in Python; it has no switch, there being no other layout to switch to.

This file only holds the switches: the pieces import it, never the other way round.
"""

from __future__ import annotations

import contextlib

from rnnkit.errors import RnnkitTypeError, RnnkitValueError

NAMES = ("native", "workspace", "onednn", "sigmoid_tanh", "gc_pause", "aten_cells")
_ON = dict.fromkeys(NAMES, True)


def _check(name) -> str:
    if name not in _ON:
        raise RnnkitValueError(f"a speed switch must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def on(name: str) -> bool:
    """Whether the piece `name` is in use."""
    return _ON[name]


def switch(name: str, on: bool) -> None:
    """Turn the piece `name` on or off for this process."""
    if not isinstance(on, bool):
        raise RnnkitTypeError(f"on must be True or False, got {type(on).__name__}")
    _ON[_check(name)] = on


@contextlib.contextmanager
def off(*names: str):
    """The pieces `names` (all of them if none is named) off inside the block, as before after."""
    names = tuple(_check(n) for n in names) or NAMES
    before = dict(_ON)
    try:
        for n in names:
            _ON[n] = False
        yield
    finally:
        _ON.update(before)


def state() -> dict[str, bool]:
    """Every switch, by name."""
    return dict(_ON)
