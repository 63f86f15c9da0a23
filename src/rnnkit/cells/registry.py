"""Cells by name: the built-in families' names and the cells users register, one plain dict.

`register(name, cell_class)` makes a `Cell` subclass available by name to `rnnkit.Recurrent`, to
the models' `cell=` and to every task's `--cell`; installed packages register theirs through the
`rnnkit.cells` entry-point group (`load_entry_points`, which the command line and `rnnkit.load`
call), so a run trained with such a cell loads wherever that package is installed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re

import torch

from rnnkit.cells import traced
from rnnkit.cells._unit import Unit
from rnnkit.cells.base import Cell
from rnnkit.cells.elman import ElmanReluUnit, ElmanUnit
from rnnkit.cells.gru import GRUResetBeforeUnit, GRUUnit
from rnnkit.cells.indrnn import IndRNNCell
from rnnkit.cells.ln_gru import LNGRUUnit
from rnnkit.cells.ln_lstm import LNLSTMUnit
from rnnkit.cells.lstm import LSTMUnit
from rnnkit.cells.mgu import MGUUnit
from rnnkit.cells.minimal import MinGRUUnit, MinLSTMUnit
from rnnkit.cells.peephole import PeepholeLSTMCell
from rnnkit.errors import RnnkitTypeError, RnnkitValueError

# The built-in families: the only place their names are written. Each also has a torch-style
# layer (rnnkit.layers.by_name), which `rnnkit.Recurrent(name, ...)` builds.
BUILTIN: dict[str, type] = {  # the textbooks' three first, then their variants and the newer cells
    "rnn": ElmanUnit,
    "lstm": LSTMUnit,
    "gru": GRUUnit,
    "mgu": MGUUnit,
    "rnn_relu": ElmanReluUnit,
    "gru_reset_before": GRUResetBeforeUnit,
    "ln_lstm": LNLSTMUnit,
    "ln_gru": LNGRUUnit,
    "min_gru": MinGRUUnit,
    "min_lstm": MinLSTMUnit,
}
ENTRY_POINTS = "rnnkit.cells"

# Cells written against the public hook, as a user's are: one file each, one line here.
_REGISTERED: dict[str, type] = {
    "indrnn": IndRNNCell,
    "peephole_lstm": PeepholeLSTMCell,
}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def register(name: str, cell_class: type) -> None:
    """Make `cell_class` (a `Cell` subclass) available as `name` (lower case, digits, _). The
    same class again is a no-op; a name taken by a built-in or by another class is an error."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RnnkitValueError(f"a cell name must be lower-case letters, digits and _, got {name!r}")
    if not (isinstance(cell_class, type) and issubclass(cell_class, Cell)):
        raise RnnkitTypeError(f"cell_class must be a subclass of rnnkit.cells.Cell, got {cell_class!r}")
    if name in BUILTIN:
        raise RnnkitValueError(f"cell name {name!r} is taken by a built-in cell")
    if _REGISTERED.get(name, cell_class) is not cell_class:
        taken = _REGISTERED[name]
        raise RnnkitValueError(f"cell name {name!r} is taken by {taken.__module__}.{taken.__qualname__}")
    _REGISTERED[name] = cell_class


def available() -> list[str]:
    """Every cell name: the built-in ones, then those registered, in order of registration."""
    return [*BUILTIN, *_REGISTERED]


def registered(name: str) -> type | None:
    """The cell class of `name` (a built-in family's unit or a registered cell), or None."""
    return BUILTIN.get(name) or _REGISTERED.get(name)


def name_of(cell_class: type) -> str | None:
    """The name `cell_class` is registered under (the first, if several), or None."""
    return next((n for n, c in {**BUILTIN, **_REGISTERED}.items() if c is cell_class), None)


def load_entry_points() -> None:
    """Register the cells that installed packages declare in the `rnnkit.cells` entry-point group
    (name = "module:Class"); one that fails to load is an error naming it."""
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if point.name in _REGISTERED:
            continue
        try:
            cell_class = point.load()
        except Exception as e:  # noqa: BLE001 (any import error of a third-party package)
            raise RnnkitValueError(
                f"entry point {point.name} = {point.value} ({ENTRY_POINTS}) cannot be loaded: {e}"
            ) from None
        register(point.name, cell_class)


# --- a unit as the traced op's spec (rnnkit.cells.traced) -------------------------------------------


@torch.compiler.assume_constant_result  # called while tracing: a constant string in the graph
def unit_spec(unit: Unit, names: tuple) -> str:
    """What `rnnkit::sequence` needs to run `unit`'s fused kernel again, in any process where its
    name is registered: the name, sizes and options, and the names of the weights passed."""
    name = name_of(type(unit))
    if name is None:
        raise RnnkitValueError(
            f"{type(unit).__name__} must be registered (rnnkit.cells.register) to be traced as one op"
        )
    return traced.spec(
        "unit",
        cell=name,
        input_size=unit.input_size,
        hidden_size=unit.hidden_size,
        options=unit.options(),
        names=list(names),
    )


@functools.lru_cache(maxsize=256)
def _unit_of(name: str, input_size: int, hidden_size: int, options: str) -> Unit:
    if registered(name) is None:
        load_entry_points()
    if registered(name) is None:
        raise RnnkitValueError(f"rnnkit::sequence: no cell registered as {name!r} in this process")
    with torch.device("meta"):  # its options and equations only; the weights come with each call
        return registered(name)(input_size, hidden_size, **json.loads(options))


@traced.kind("unit")
def _run_unit(desc: dict, x, state: tuple, weights: list, batch_sizes):
    unit = _unit_of(desc["cell"], desc["input_size"], desc["hidden_size"], json.dumps(desc["options"]))
    return unit.sequence(x, state, dict(zip(desc["names"], weights)), batch_sizes, "fused")
