"""The Jordan network as a sequence layer: the input forms of the other layers (batch_first,
unbatched, lengths, PackedSequence), free-running or teacher-forced. Equations and kernels live in
`rnnkit.cells.jordan`."""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from rnnkit._checks import check_bool, check_choice, check_like, check_shape, check_tensor, shape_str
from rnnkit.cells._kernel import IMPLS, run_loop
from rnnkit.cells.jordan import JordanParameters, jordan, jordan_step, jordan_teacher_forced, jordan_traced
from rnnkit.cells.traced import length_mask, tracing
from rnnkit.errors import RnnkitValueError
from rnnkit.layers._inputs import Batch, prepare_input


class JordanRNN(JordanParameters):
    """Jordan network layer (Jordan 1986): the previous output feeds the hidden layer,

        h_t = tanh(W_ih x_t + W_yh y_{t-1} + b_h),   y_t = f_out(W_hy h_t + b_y).

    Parameters weight_ih (H, I), weight_yh (H, O), bias_h (H,), weight_hy (O, H), bias_y (O,),
    from U(-1/sqrt(H), 1/sqrt(H)); f_out is `output_activation`: None (identity), "tanh",
    "sigmoid", "relu" or "softmax" (over the outputs).

    forward(input, y0=None, *, targets=None, lengths=None) -> (y, y_n):
      input (T, B, I) ((B, T, I) with batch_first), unbatched (T, I), or a PackedSequence.
      y0 (B, O) ((O,) unbatched): y_{-1}, zeros if None.
      targets: None runs free, feeding back the model's own y_{t-1} (a sequential loop, the fused
        kernel with hand-derived BPTT, or the step equations with impl="loop"). Given, it is
        teacher forcing, y_{t-1} := targets[t-1]: the steps decouple and the whole sequence is
        three GEMMs, whatever `impl`. Laid out like the input with O features: (T, B, O),
        (B, T, O) with batch_first, (T, O) unbatched, or a PackedSequence of the same lengths.
      lengths (B,): the valid length of each padded sequence; outputs past it are 0.
    y: (T, B, O) laid out like the input; y_n (B, O): each sequence's output at its last valid step.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        *,
        output_activation=None,
        bias=True,
        batch_first=False,
        device=None,
        dtype=None,
        impl="fused",
    ):
        super().__init__(
            input_size,
            hidden_size,
            output_size,
            output_activation=output_activation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        check_bool("batch_first", batch_first)
        check_choice("impl", impl, IMPLS)
        self.batch_first, self.impl = batch_first, impl

    def extra_repr(self) -> str:
        s = super().extra_repr()
        s += ", batch_first=True" if self.batch_first else ""
        return s + ("" if self.impl == "fused" else f", impl={self.impl!r}")

    def forward(self, input, y0=None, *, targets=None, lengths=None):
        batch = prepare_input(
            input,
            lengths=lengths,
            batch_first=self.batch_first,
            input_size=self.input_size,
            weight=self.weight_ih,
        )
        y0 = self._initial_output(y0, batch)  # (B, O), in the kernels' batch order
        tgt = None if targets is None else self._targets(targets, input, batch)  # (T, B, O)
        T, B = batch.x.shape[:2]
        if B == 0:  # an empty batch: the shapes, nothing to compute
            return batch.output(batch.empty(self, T, 0, self.output_size)), y0 + batch.empty(self, *y0.shape)
        kwargs = {"output_activation": self.output_activation, "batch_sizes": batch.batch_sizes}
        if tracing():  # torch.compile / export: one op, lengths (if any) by masks
            y, y_n = self._traced(batch, y0, tgt)
        elif tgt is None:
            y, y_n = jordan(batch.x, y0, *self.weights(), impl=self.impl, **kwargs)
        else:
            y, y_n = jordan_teacher_forced(batch.x, tgt, y0, *self.weights(), **kwargs)
        return batch.output(y), batch.state_out(y_n.unsqueeze(0))[0]

    def _traced(self, batch: Batch, y0, tgt):
        """The forward under tracing (`rnnkit.cells.traced`): the free-running kernel as one op,
        the step equations with impl="loop" (unrolled), teacher forcing as its three GEMMs; the
        lengths, if any, by masks rather than by sorting."""
        act, lengths = self.output_activation, batch.lengths if batch.traced else None
        if tgt is None and self.impl == "fused":
            return jordan_traced(batch.x, y0, *self.weights(), output_activation=act, lengths=lengths)
        if tgt is None:
            step = lambda x_t, s: (jordan_step(x_t, s[0], *self.weights(), act)[0],)  # noqa: E731
            y, (y_n,) = run_loop(step, batch.x, (y0,), None, lengths=lengths)
            return y, y_n
        y, y_n = jordan_teacher_forced(batch.x, tgt, y0, *self.weights(), output_activation=act)
        if lengths is None:
            return y, y_n
        y = torch.where(length_mask(y, lengths), y, 0.0)
        last = (lengths.to(y.device) - 1).view(1, -1, 1).expand(1, *y.shape[1:])
        return y, y.gather(0, last)[0]

    def _initial_output(self, y0, batch: Batch) -> torch.Tensor:
        B, O = batch.x.shape[1], self.output_size
        if y0 is None:
            return batch.x.new_zeros(B, O)
        check_tensor("y0", y0, ndim=1 if batch.unbatched else 2)
        check_like("y0", y0, "input", batch.x)
        if batch.unbatched:
            check_shape("y0", y0, (O,), "(output_size,) for unbatched input")
            return y0.unsqueeze(0)
        check_shape("y0", y0, (B, O), "(batch, output_size)")
        return batch.sort(y0.unsqueeze(0))[0]

    def _targets(self, targets, input, batch: Batch) -> torch.Tensor:
        """targets in the caller's layout -> (T, B, O) time-major, in the kernels' batch order and
        cut to the longest sequence, as `prepare_input` did to the input."""
        O = self.output_size
        if batch.packed:
            same = isinstance(targets, PackedSequence) and torch.equal(targets.batch_sizes, input.batch_sizes)
            if same and (targets.sorted_indices is None) != (input.sorted_indices is None):
                same = False
            if same and input.sorted_indices is not None:
                same = torch.equal(targets.sorted_indices.cpu(), input.sorted_indices.cpu())
            if not same:
                raise RnnkitValueError(
                    "targets must be a PackedSequence with the input's batch_sizes and order when "
                    f"input is a PackedSequence (pack both with the same lengths), got "
                    f"{type(targets).__name__}"
                )
            check_tensor("targets.data", targets.data, ndim=2)
            check_shape("targets.data", targets.data, (input.data.shape[0], O), "(packed rows, output_size)")
            check_like("targets.data", targets.data, "input", batch.x)
            return pad_packed_sequence(PackedSequence(targets.data, targets.batch_sizes))[0]
        check_tensor("targets", targets, ndim=input.dim())
        check_like("targets", targets, "input", input)
        if targets.shape[:-1] != input.shape[:-1] or targets.shape[-1] != O:
            raise RnnkitValueError(
                f"targets must have shape {(*input.shape[:-1], O)} (the input's, with output_size "
                f"features), got {shape_str(targets)}"
            )
        t = targets.unsqueeze(1) if batch.unbatched else targets
        t = t.transpose(0, 1) if self.batch_first and not batch.unbatched else t  # (T, B, O)
        if batch.sorted_indices is not None:
            t = t[: batch.x.shape[0]].index_select(1, batch.sorted_indices)
        return t
