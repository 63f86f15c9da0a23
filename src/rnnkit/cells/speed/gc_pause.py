"""The cycle collector paused while a fused kernel runs (switch: "gc_pause")."""

from __future__ import annotations

import functools
import gc

from rnnkit.cells import speed


def without_cycle_gc(fn):
    """Runs a fused kernel's forward or backward with Python's cycle collector paused.

    Why: a kernel's loop over time makes thousands of tensor views (several per step), and torch
    tensors are objects the collector tracks. Alive for the whole loop, they outlive the young
    generations and get promoted, and every few calls a full collection then traces the whole
    heap (torch's own ~170k objects): ~90 ms here, against ~150 ms for the LN-LSTM's whole
    training step at T=1000. The views hold no cycles and are freed by reference counting when
    the kernel returns, so pausing the collector frees nothing later than it would have been; it
    only keeps them from being promoted. The collector's state is restored on the way out (left
    off if the caller had turned it off).
    """

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if not gc.isenabled() or not speed.on("gc_pause"):
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()

    return run
