"""Cells: one file per family (its step equations, its fused whole-sequence kernel with the
hand-derived BPTT backward, and its unit, the family's `Cell`); the registry of cell names; the
torch drop-in single-step cells (`dropin`); the speed machinery below them all (`speed`)."""

from rnnkit.cells._regularize import Masks
from rnnkit.cells.base import Cell
from rnnkit.cells.dropin import GRUCell, LSTMCell, MGUCell, RNNCell
from rnnkit.cells.jordan import JordanCell
from rnnkit.cells.minimal import MinGRUCell, MinLSTMCell
from rnnkit.cells.registry import available, register
from rnnkit.cells.speed.workspace import held as workspace_held
from rnnkit.cells.speed.workspace import release as release_workspace
from rnnkit.cells.speed.workspace import set_limit as set_workspace_limit

__all__ = [
    "Cell",
    "GRUCell",
    "JordanCell",
    "LSTMCell",
    "MGUCell",
    "Masks",
    "MinGRUCell",
    "MinLSTMCell",
    "RNNCell",
    "available",
    "register",
    "release_workspace",
    "set_workspace_limit",
    "workspace_held",
]
