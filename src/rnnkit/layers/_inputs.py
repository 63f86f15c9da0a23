"""The forward boundary of the sequence layers: every input form torch accepts (batched,
unbatched, batch_first, PackedSequence), plus padded input with `lengths`, brought to the one
internal form the kernels use, and the outputs brought back.

Internal form: x (T, B, I) time-major, sequences sorted by decreasing length when lengths differ,
and `batch_sizes` (None when all have length T) as in PackedSequence. Under tracing
(`rnnkit.cells.traced`), where sorting by the values of `lengths` is data-dependent, x keeps the
caller's order and `lengths` travels to the kernels instead; their values are then checked when
the traced op runs (the fused kernels) or not at all (a cell's per-step loop, ONNX).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit._checks import check_bool, check_like, check_positive_int, check_shape, check_tensor, shape_str
from rnnkit.cells.traced import sort_by_length, tracing
from rnnkit.errors import RnnkitTypeError, RnnkitValueError


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (T, B, I), sorted by decreasing length when batch_sizes is given
    batch_sizes: list[int] | None  # None: every sequence has length T (or traced: see `traced`)
    lengths: torch.Tensor | None  # (B,) lengths on x's device in x's order; None: all T
    sorted_indices: torch.Tensor | None  # position in the caller's batch of each sorted sequence
    unsorted_indices: torch.Tensor | None  # its inverse
    packed: bool
    unbatched: bool
    batch_first: bool
    total_length: int = 0  # the caller's padded length, when longer than the longest sequence
    # Under tracing (torch.compile / export) nothing is sorted or cut: x stays (T, B, I) in the
    # caller's order, batch_sizes None, and `lengths` go to the kernels, which mask by them.
    traced: bool = False

    def sort(self, state: torch.Tensor) -> torch.Tensor:
        """Caller's batch order -> internal order, on dim 1 of a (L*D, B, H) state."""
        return state if self.sorted_indices is None else state.index_select(1, self.sorted_indices)

    def unsort(self, state: torch.Tensor) -> torch.Tensor:
        return state if self.unsorted_indices is None else state.index_select(1, self.unsorted_indices)

    def output(self, y: torch.Tensor):
        """Internal (T, B, F) output -> the form the input came in."""
        if self.packed:
            data = pack_padded_sequence(y, self.lengths.cpu(), enforce_sorted=True).data
            bs = torch.tensor(self.batch_sizes or [y.shape[1]] * y.shape[0], dtype=torch.int64)
            return PackedSequence(data, bs, self.sorted_indices, self.unsorted_indices)
        y = y if self.sorted_indices is None else y.index_select(1, self.unsorted_indices)
        if self.total_length > y.shape[0]:  # padding past the longest sequence: zeros
            y = torch.cat([y, y.new_zeros(self.total_length - y.shape[0], *y.shape[1:])])
        if self.unbatched:
            return y.squeeze(1)
        return y.transpose(0, 1) if self.batch_first else y

    def empty(self, module: torch.nn.Module, *shape: int) -> torch.Tensor:
        """Zeros of `shape`, for what an empty batch (B = 0) returns, in the autograd graph of the
        input and `module`'s parameters as torch's outputs are: a backward through them then
        gives those zero gradients, where bare zeros would make it fail (nothing requires grad)."""
        anchor = sum((p.sum() for p in module.parameters()), self.x.sum()) * 0
        return self.x.new_zeros(shape) + anchor

    def state_out(self, state: torch.Tensor) -> torch.Tensor:
        state = self.unsort(state)
        return state.squeeze(1) if self.unbatched else state


def prepare_input(input, *, lengths, batch_first: bool, input_size: int, weight: torch.Tensor) -> Batch:
    """Check the input (and lengths) and bring it to the internal form."""
    if isinstance(input, PackedSequence):
        if lengths is not None:
            raise RnnkitValueError(
                "lengths must be None when input is a PackedSequence (it carries its own lengths)"
            )
        _check_features(input.data, 2, input_size, weight, "input.data")
        padded, lens = pad_packed_sequence(PackedSequence(input.data, input.batch_sizes), batch_first=False)
        bs = input.batch_sizes.tolist()
        return Batch(
            x=padded,
            batch_sizes=None if bs[-1] == bs[0] else bs,
            lengths=lens.to(padded.device),
            sorted_indices=input.sorted_indices,
            unsorted_indices=input.unsorted_indices,
            packed=True,
            unbatched=False,
            batch_first=False,
        )
    if not isinstance(input, torch.Tensor):
        raise RnnkitTypeError(f"input must be a torch.Tensor or a PackedSequence, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise RnnkitValueError(
            f"input must be 2-D (seq_len, input_size) unbatched or 3-D batched, got {input.dim()}-D "
            f"with shape {shape_str(input)}"
        )
    _check_features(input, input.dim(), input_size, weight, "input")
    unbatched = input.dim() == 2
    x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if batch_first else input)
    T, B = x.shape[0], x.shape[1]
    if T == 0:
        raise RnnkitValueError(
            f"input must hold at least one time step, got a sequence of length 0 (shape {shape_str(input)})"
        )
    common = dict(packed=False, unbatched=unbatched, batch_first=batch_first)
    if lengths is None:
        return Batch(x, None, None, None, None, **common)
    if tracing():
        lens = _check_lengths(lengths, T, B, values=False)
        return Batch(x, None, lens.to(x.device), None, None, **common, traced=True)
    lens = _check_lengths(lengths, T, B)
    if bool((lens == T).all()):
        return Batch(x, None, None, None, None, **common)
    sorted_lens, order, bs = sort_by_length(lens)
    steps = int(sorted_lens[0])  # the kernels stop at the longest sequence
    order = order.to(x.device)
    return Batch(
        x=x[:steps].index_select(1, order),
        batch_sizes=bs,
        lengths=sorted_lens.to(x.device),
        sorted_indices=order,
        unsorted_indices=torch.argsort(order),
        total_length=T,
        **common,
    )


def _check_features(x: torch.Tensor, ndim: int, input_size: int, weight: torch.Tensor, name: str):
    check_like(name, x, "the layer's parameters", weight)
    if x.shape[-1] != input_size:
        raise RnnkitValueError(
            f"{name} must have {input_size} features (input_size) in its last dimension, "
            f"got shape {shape_str(x)}"
        )


def _check_lengths(lengths, T: int, B: int, *, values: bool = True) -> torch.Tensor:
    """lengths: a 1-D integer tensor (any device) or a list of ints, B of them, each in 1..T (the
    values unchecked with values=False: under tracing, where reading them would be data-dependent)."""
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex():
            raise RnnkitValueError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
        if lengths.dim() != 1:
            raise RnnkitValueError(
                f"lengths must be 1-D, got {lengths.dim()}-D with shape {shape_str(lengths)}"
            )
        lens = lengths.detach().to("cpu", torch.int64)
    elif isinstance(lengths, (list, tuple)):
        # any integer (Python's or numpy's: numbers.Integral), as pack_padded_sequence takes; not bools
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in lengths):
            raise RnnkitTypeError(
                "lengths must be a list of ints or an integer tensor, got a list holding "
                f"{sorted({type(n).__name__ for n in lengths})}"
            )
        lens = torch.tensor([int(n) for n in lengths], dtype=torch.int64)
    else:
        raise RnnkitTypeError(
            f"lengths must be a 1-D integer tensor or a list of ints, got {type(lengths).__name__}"
        )
    if lens.numel() != B:
        raise RnnkitValueError(f"lengths must have one entry per batch element ({B}), got {lens.numel()}")
    if values and B and (int(lens.min()) < 1 or int(lens.max()) > T):
        raise RnnkitValueError(
            f"lengths must each be in 1..{T} (the padded sequence length), got min {int(lens.min())} "
            f"and max {int(lens.max())}"
        )
    return lens


def initial_states(batch: Batch, states, names, sizes, layers: int, like: torch.Tensor) -> list[torch.Tensor]:
    """A given initial state, one tensor per state (`names` for errors, `sizes` their widths),
    checked against the input (layers = num_layers * num_directions rows) and brought to the
    kernels' batch order: (layers, B, n) each, (layers, n) for unbatched input."""
    B, out = batch.x.shape[1], []
    for name, s, n in zip(names, states, sizes):
        check_tensor(name, s, ndim=2 if batch.unbatched else 3)
        check_like(name, s, "input", like)
        if batch.unbatched:
            check_shape(name, s, (layers, n), "(num_layers * num_directions, size) for unbatched input")
            s = s.unsqueeze(1)
        else:
            check_shape(name, s, (layers, B, n), "(num_layers * num_directions, batch, size)")
        out.append(batch.sort(s))
    return out


def check_stack_args(input_size, hidden_size, num_layers, dropout, **flags) -> None:
    """The constructor arguments every stacked layer shares: sizes, dropout between layers, and
    bool flags (bias, batch_first, bidirectional, ...) by name. Warns, as torch does, when dropout
    is set but there is no second layer for it to act between."""
    check_positive_int("input_size", input_size)
    check_positive_int("hidden_size", hidden_size)
    check_positive_int("num_layers", num_layers)
    for name, flag in flags.items():
        check_bool(name, flag)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number):
        raise RnnkitTypeError(f"dropout must be a number in [0, 1], got {type(dropout).__name__}")
    if not 0 <= dropout <= 1:
        raise RnnkitValueError(f"dropout must be in [0, 1] (a probability), got {dropout}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout applies between stacked layers, so with num_layers=1 it does nothing "
            f"(dropout={dropout}, num_layers={num_layers})",
            stacklevel=4,
        )


def cast_floats(obj, dtype):
    """Floating tensors in (nested tuples of) tensors and PackedSequences cast to dtype."""
    if isinstance(obj, torch.nn.utils.rnn.PackedSequence):
        return obj._replace(data=obj.data.to(dtype)) if obj.data.is_floating_point() else obj
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(cast_floats(o, dtype) for o in obj)
    return obj


def reverse_index(batch: Batch) -> torch.Tensor | None:
    """For sequences of different lengths: index (T, B) that reverses each within its length
    (and leaves padding in place); None when a plain flip over time does."""
    if batch.lengths is None:
        return None
    T = batch.x.shape[0]
    t = torch.arange(T, device=batch.x.device)[:, None]  # (T, 1)
    lens = batch.lengths[None, :]  # (1, B)
    return torch.where(t < lens, lens - 1 - t, t)  # (T, B); its own inverse


def flip_valid(x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """x (T, B, ...) with each sequence's valid steps in reverse order (index from reverse_index)."""
    if index is None:
        return x.flip(0)
    return x.gather(0, index[:, :, None].expand_as(x))
