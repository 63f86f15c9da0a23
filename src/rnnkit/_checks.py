"""Argument checks shared by the public boundaries (functional kernels, cells, layers).

Each check raises an rnnkit error that names the argument, what was expected and what came, so a
user never meets a shape error from inside a matrix product.
"""

from __future__ import annotations

import contextlib
import re

import torch

from rnnkit.errors import RnnkitTypeError, RnnkitValueError


def shape_str(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(name: str, value, *, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """`value` must be a tensor (of `ndim` dimensions, if given)."""
    if not isinstance(value, torch.Tensor):
        raise RnnkitTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if value.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise RnnkitValueError(
                f"{name} must be {want}, got {value.dim()}-D with shape {shape_str(value)}"
            )
    return value


def check_shape(name: str, value: torch.Tensor, expected: tuple[int, ...], meaning: str = ""):
    """`value` must have exactly the shape `expected`; `meaning` spells the dimensions out."""
    if tuple(value.shape) != tuple(expected):
        want = str(tuple(expected))
        why = f" {meaning}" if meaning else ""
        raise RnnkitValueError(f"{name} must have shape {want}{why}, got {shape_str(value)}")


def check_like(name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """`value` must share `ref`'s floating dtype and device."""
    if not value.is_floating_point():
        raise RnnkitValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dtype != ref.dtype:
        raise RnnkitValueError(
            f"{name} has dtype {value.dtype} but {ref_name} has dtype {ref.dtype}; they must match"
        )
    if value.device != ref.device:
        raise RnnkitValueError(
            f"{name} is on device {value.device} but {ref_name} is on {ref.device}; "
            "they must be on the same device"
        )


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RnnkitTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise RnnkitValueError(f"{name} must be >= 1, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """A flag: exactly True or False (not 0/1, not None), so a misplaced positional is caught."""
    if not isinstance(value, bool):
        raise RnnkitTypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise RnnkitValueError(f"{name} must be one of {options}, got {value!r}")


def check_no_projection(proj_size, layer: str) -> None:
    """torch.nn's RNN and GRU take `proj_size` and refuse any but 0: only the LSTM projects."""
    if proj_size != 0:
        raise RnnkitValueError(
            f"proj_size is supported by LSTM only, not {layer}; got proj_size={proj_size!r}"
        )


@contextlib.contextmanager
def allocating(what: str):
    """Parameters are created in this block: an allocator's failure (sizes too large for the
    memory there is, or for a tensor's size to be computed) becomes a value error naming `what`,
    instead of torch's allocator message; an outer block names its own `what` (a layer, rather
    than the cell it builds)."""
    try:
        yield
    except _TooLarge as e:
        raise _TooLarge(
            f"{what} needs more memory than can be allocated{e.size}: choose smaller sizes", e.size
        ) from None
    except RuntimeError as e:
        message = str(e)
        if "allocate" not in message and "out of memory" not in message and "overflow" not in message:
            raise
        asked = re.search(r"allocate (\d+) bytes", message)
        size = f" (one tensor of {int(asked[1]) / 2**30:,.0f} GiB)" if asked else ""
        raise _TooLarge(
            f"{what} needs more memory than can be allocated{size}: choose smaller sizes", size
        ) from None


class _TooLarge(RnnkitValueError):
    def __init__(self, message: str, size: str):
        super().__init__(message)
        self.size = size
