"""Jordan network (Jordan 1986): the previous *output*, not the hidden state, feeds the hidden layer.

    h_t = tanh(W_ih x_t + W_yh y_{t-1} + b_h),     y_t = f_out(W_hy h_t + b_y),     y_{-1} = y0

Shapes: x_t (B, I), h_t (B, H), y_t (B, O); W_ih (H, I), W_yh (H, O), b_h (H,), W_hy (O, H),
b_y (O,). f_out (`output_activation`): None (identity), "tanh", "sigmoid", "relu", or "softmax"
over the O outputs. Initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), as torch's RNN.

Free-running, y_{t-1} is the model's own previous output, so the steps are sequential. Teacher-
forced, y_{t-1} := targets[t-1] is given, the steps decouple, and the whole sequence is three GEMMs
over all T*B rows (`jordan_teacher_forced`), with autograd for the backward.

BPTT (the fused backward of the free-running kernel), with A_t = W_ih x_t + W_yh y_{t-1} + b_h and
O_t = W_hy h_t + b_y the pre-activations, g_t = dL/dy_t from outside (plus dL/dy_n at the last
valid step), walking t from T-1 down to 0:
    dy_t = g_t + W_yh^T dA_{t+1}                  (dA_T = 0)
    dO_t = dy_t * f_out'(O_t)                      f' = 1, 1 - y^2, y (1 - y), [y > 0];
                                                   softmax: dO_t = y_t * (dy_t - <dy_t, y_t>)
    dh_t = W_hy^T dO_t
    dA_t = dh_t * (1 - h_t^2)
and after the loop, as single GEMMs over all steps:
    dW_ih = sum_t dA_t^T x_t,   dW_yh = sum_t dA_t^T y_{t-1},   db_h = sum_t dA_t,
    dW_hy = sum_t dO_t^T h_t,   db_y = sum_t dO_t,   dx_t = dA_t W_ih,   dy0 = dA_0 W_yh.

With the identity output and H <= 2 O the kernel runs the same equations with y_{t-1} =
W_hy h_{t-1} + b_y substituted (`folds`): h_t = tanh(W_ih x_t + b_h + W_yh b_y + (W_yh W_hy) h_{t-1})
for t >= 1, all y_t as one GEMM after the loop, and in the backward
dh_t = W_hy^T g_t + (W_yh W_hy)^T dA_{t+1}, with dO_t = dy_t = g_t + W_yh^T dA_{t+1} after the loop:
one product per step instead of two.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnnkit._checks import (
    allocating,
    check_bool,
    check_choice,
    check_like,
    check_positive_int,
    check_shape,
    check_tensor,
)
from rnnkit.cells import traced
from rnnkit.cells._bptt import (
    active_rows,
    add_final_grad,
    gate_weight_grads,
    input_grad,
    input_projection,
    last_valid,
    next_rows,
    prev_rows,
    stack_prev,
    weight_grad,
    zero_padding_,
)
from rnnkit.cells._kernel import IMPLS, check_batch_sizes, forbid_double_backward, linear, run_loop
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed import workspace
from rnnkit.cells.speed.gc_pause import without_cycle_gc
from rnnkit.cells.speed.gemm import Product
from rnnkit.cells.speed.tanh import Tanh
from rnnkit.errors import RnnkitValueError

OUTPUT_ACTIVATIONS = (None, "tanh", "sigmoid", "relu", "softmax")
_ACT = {
    None: lambda o: o,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "softmax": lambda o: torch.softmax(o, dim=-1),
}
_ACT_ = {  # in place, on a step's (n, O) rows inside the fused loop
    None: lambda o: o,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "relu": torch.relu_,
    "softmax": lambda o: o.copy_(torch.softmax(o, dim=-1)),
}


def _act_deriv(y: torch.Tensor, act) -> torch.Tensor | None:
    """f_out'(O_t) from the outputs y (T, B, O), for the elementwise activations (None: f' = 1)."""
    if act == "tanh":
        return 1 - y * y
    if act == "sigmoid":
        return y * (1 - y)
    if act == "relu":
        return (y > 0).to(y.dtype)
    return None


def jordan_step(x_t, y_prev, w_ih, w_yh, b_h, w_hy, b_y, output_activation=None):
    """One step of the equations above: (x_t (B, I), y_{t-1} (B, O)) -> (y_t (B, O), h_t (B, H))."""
    h = torch.tanh(linear(x_t, w_ih, b_h) + linear(y_prev, w_yh, None))  # (B, H)
    return _ACT[output_activation](linear(h, w_hy, b_y)), h  # (B, O), (B, H)


def folds(act, H: int, O: int) -> bool:
    """Whether the fused kernel substitutes y_{t-1} = W_hy h_{t-1} + b_y into the hidden update:
    possible for the identity output only, and done when W_yh W_hy (H, H) costs no more multiply-
    adds than the two products it replaces (H <= 2 O). At small sizes a step's cost is its number
    of ops, not its arithmetic (docs/benchmarks.md), and this halves them, forward and backward."""
    return act is None and H <= 2 * O


class JordanFused(torch.autograd.Function):
    """Whole-sequence free-running Jordan network with the BPTT backward of the module docstring."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, x, y0, w_ih, w_yh, b_h, w_hy, b_y, act, batch_sizes):
        # The input projection is computed into the hidden buffer; each step adds its feedback
        # product in place: a product into its own input needs no copy. The hidden layer's
        # pre-activation is made as `Tanh` wants it (W_ih, b_h and W_yh doubled on CPU).
        tanh_ = Tanh(x)
        h = input_projection(x, tanh_.prep(w_ih), tanh_.prep(b_h))  # (T, B, H)
        native = _native.ops(x)  # the loops compiled (speed/cpp/jordan.cpp, elman.cpp), or None
        if folds(act, w_ih.shape[0], w_hy.shape[0]):
            y = _forward_folded(h, y0, tanh_.prep(w_yh), w_hy, b_y, tanh_, batch_sizes, native)
        else:
            y = _forward_stepwise(h, y0, tanh_.prep(w_yh), w_hy, b_y, act, tanh_, batch_sizes, native)
        zero_padding_(h, batch_sizes)
        zero_padding_(y, batch_sizes)
        ctx.save_for_backward(x, y0, w_ih, w_yh, w_hy, h, y)
        ctx.act, ctx.batch_sizes, ctx.native = act, batch_sizes, native
        return y, last_valid(y, batch_sizes)

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_y, grad_yn):
        forbid_double_backward("jordan")
        x, y0, w_ih, w_yh, w_hy, h, y = ctx.saved_tensors
        bs, act = ctx.batch_sizes, ctx.act
        # g_t = dL/dy_t from outside; rows past a sequence's end carry no gradient (their outputs
        # are the constant 0), and zeroing them lets this buffer become dO for db_y and dW_hy.
        # contiguous: a (B, T, O) caller's gradient arrives permuted, and the loops want whole rows
        dO = zero_padding_(add_final_grad(grad_y, grad_yn, bs), bs).contiguous()  # (T, B, O)
        if folds(act, h.shape[2], y.shape[2]):
            dA = _backward_folded(dO, h, w_yh, w_hy, bs, ctx.native)
        else:
            dA = _backward_stepwise(dO, y, h, w_yh, w_hy, act, bs, ctx.native)
        need = ctx.needs_input_grad
        dx = input_grad(dA, w_ih) if need[0] else None
        dy0 = torch.mm(dA[0], w_yh) if need[1] else None
        dw_ih, dw_yh = gate_weight_grads(ctx, dA, x, y0, y, 2, 3)
        db_h = dA.sum((0, 1)) if need[4] else None
        dw_hy = weight_grad(dO, h) if need[5] else None
        db_y = dO.sum((0, 1)) if need[6] else None
        return dx, dy0, dw_ih, dw_yh, db_h, dw_hy, db_y, None, None


def _forward_stepwise(h, y0, w_yh, w_hy, b_y, act, tanh_, bs, native=None):
    """The steps as written: h (T, B, H) holds W_ih x_t + b_h and becomes h_t, h and w_yh made
    for `tanh_` (`JordanFused.forward`); returns y (T, B, O). `native`: the compiled ops, which
    run the same loop (speed/cpp/jordan.cpp); None for the loop here."""
    T, B, _ = h.shape
    O = w_hy.shape[0]
    y = h.new_zeros(T, B, O) if b_y is None else b_y.expand(T, B, O).contiguous()  # (T, B, O)
    if native is not None:
        code = OUTPUT_ACTIVATIONS.index(act)
        native.jordan_forward(
            h, y, y0.contiguous(), w_yh.t().contiguous(), w_hy.t().contiguous(), bs or [], code
        )
        return y
    feedback = Product(w_yh, B)  # y -> y W_yh^T
    output = Product(w_hy, B)  # h -> h W_hy^T
    act_ = _ACT_[act]
    hs, ys = active_rows(bs, h, y)
    prevs = prev_rows(bs, y)  # y_{t-1} on the rows active at t
    prevs[0] = y0
    for h_t, y_t, y_prev in zip(hs, ys, prevs):
        tanh_(feedback(y_prev, add=h_t, out=h_t))
        act_(output(h_t, add=y_t, out=y_t))
    return y


def _forward_folded(h, y0, w_yh, w_hy, b_y, tanh_, bs, native=None):
    """Identity output, y_{t-1} substituted (see `folds`): for t >= 1
    h_t = tanh(W_ih x_t + b_h + W_yh b_y + (W_yh W_hy) h_{t-1}), one product per step, and then
    all outputs y = W_hy h + b_y as one GEMM after the loop. h, w_yh, tanh_ and native as
    `_forward_stepwise`; steps 1.. are an Elman recurrence from h_0, compiled as elman.cpp's."""
    B = h.shape[1]
    recurrent_w = w_yh @ w_hy  # (H, H)
    tanh_(h[0].addmm_(y0, w_yh.t()))  # step 0 is fed y0 itself
    if b_y is not None and h.shape[0] > 1:
        h[1:].add_(w_yh @ b_y)  # (H,): the output bias, seen through W_yh
    if native is not None:
        if h.shape[0] > 1:
            native.rnn_tanh_forward(h[1:], recurrent_w.t().contiguous(), h[0], bs[1:] if bs else [])
    else:
        recurrent = Product(recurrent_w, B)  # h -> h (W_yh W_hy)^T
        hs, prevs = active_rows(bs, h)[0], prev_rows(bs, h)
        for h_t, h_prev in zip(hs[1:], prevs[1:]):
            tanh_(recurrent(h_prev, add=h_t, out=h_t))
    return input_projection(h, w_hy, b_y)  # (T, B, O)


def _backward_stepwise(dO, y, h, w_yh, w_hy, act, bs, native=None):
    """The BPTT loop of the module docstring. dO (T, B, O) holds g_t and becomes dO_t; returns dA.
    `native`: the compiled ops, which run the same loop (speed/cpp/jordan.cpp), or None."""
    T, B, _ = dO.shape
    dA = workspace.empty_like(h, zero=bool(bs))  # (T, B, H)
    if native is not None:
        code = OUTPUT_ACTIVATIONS.index(act)
        native.jordan_backward(dO, h, y, w_yh.contiguous(), w_hy.contiguous(), bs or [], code, dA)
        return dA
    deriv_h = torch.mul(h, h).neg_().add_(1)  # (T, B, H): 1 - h_t^2, outside the loop
    deriv_o = _act_deriv(y, act)  # (T, B, O) or None, outside the sequential loop
    dOs, ys, dAs, dhs = active_rows(bs, dO, y, dA, deriv_h)
    dos = active_rows(bs, deriv_o)[0] if deriv_o is not None else None
    dA_next = next_rows(bs, dA)  # dA_{t+1} on the rows active at t (zero past step t+1's)
    back_yh = Product(w_yh.t(), B)  # dA -> dA W_yh
    back_hy = Product(w_hy.t(), B)  # dO -> dO W_hy
    for t in range(T - 1, -1, -1):
        dy = dOs[t] if t == T - 1 else back_yh(dA_next[t], add=dOs[t], out=dOs[t])  # dy_t
        if act == "softmax":  # the Jacobian diag(y) - y y^T applied to dy
            dy.sub_((dy * ys[t]).sum(-1, keepdim=True)).mul_(ys[t])
        elif dos is not None:
            dy.mul_(dos[t])
        back_hy(dy, out=dAs[t]).mul_(dhs[t])  # dA_t = (dO_t W_hy) * (1 - h_t^2)
    return dA


def _backward_folded(dO, h, w_yh, w_hy, bs, native=None):
    """BPTT of `_forward_folded`: dh_t = W_hy^T g_t + (W_yh W_hy)^T dA_{t+1}, one product per step,
    with W_hy^T g_t for all steps as one GEMM before the loop and dO_t = dy_t = g_t + W_yh^T dA_{t+1}
    as one after it. dO (T, B, O) holds g_t and becomes dO_t; returns dA (T, B, H). `native`: the
    compiled ops; the loop is then the Elman RNN's backward (elman.cpp) on W_yh W_hy."""
    T, B, O = dO.shape
    dA = input_projection(dO, w_hy.t(), None)  # (T, B, H): g_t W_hy; 0 on rows past an end
    if native is not None:
        dh, dA = dA, workspace.empty_like(dA, zero=bool(bs))
        native.rnn_tanh_backward(dh, h, (w_yh @ w_hy).contiguous(), bs or [], dA)
    else:
        deriv_h = torch.mul(h, h).neg_().add_(1)  # (T, B, H): 1 - h_t^2, outside the loop
        back = Product((w_yh @ w_hy).t(), B)  # dA -> dA W_yh W_hy
        dAs, dhs = active_rows(bs, dA, deriv_h)
        dA_next = next_rows(bs, dA)
        for t in range(T - 1, -1, -1):
            if t < T - 1:
                back(dA_next[t], add=dAs[t], out=dAs[t])
            dAs[t].mul_(dhs[t])
    if T > 1:
        dO[:-1].view(-1, O).addmm_(dA[1:].reshape(-1, dA.shape[2]), w_yh)
    return dA


def check_jordan_args(x, y0, w_ih, w_yh, b_h, w_hy, b_y, *, output_activation, batch_sizes, targets=None):
    """Validate the arguments of the Jordan kernels; return batch_sizes as a list of ints (or None)."""
    check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
    check_tensor("x", x, ndim=3)
    T, B, I = x.shape
    if T == 0:
        raise RnnkitValueError("x must hold at least one time step, got a sequence of length 0")
    check_tensor("w_ih", w_ih, ndim=2)
    check_like("w_ih", w_ih, "x", x)
    if w_ih.shape[0] == 0 or w_ih.shape[1] != I:
        raise RnnkitValueError(
            f"w_ih must have shape (hidden_size, {I}) (input_size columns, from x), got {tuple(w_ih.shape)}"
        )
    H = w_ih.shape[0]
    check_tensor("w_hy", w_hy, ndim=2)
    if w_hy.shape[0] == 0 or w_hy.shape[1] != H:
        raise RnnkitValueError(
            f"w_hy must have shape (output_size, {H}) (hidden_size columns, from w_ih), "
            f"got {tuple(w_hy.shape)}"
        )
    O = w_hy.shape[0]
    named = {"w_yh": (w_yh, (H, O), "(hidden_size, output_size)"), "w_hy": (w_hy, (O, H), "")}
    named.update({"b_h": (b_h, (H,), "(hidden_size,)"), "b_y": (b_y, (O,), "(output_size,)")})
    named.update({"y0": (y0, (B, O), "(batch, output_size)")})
    if targets is not None:
        named["targets"] = (targets, (T, B, O), "(seq_len, batch, output_size)")
    for name, (t, shape, meaning) in named.items():
        if t is None:
            continue
        check_tensor(name, t, ndim=len(shape))
        check_shape(name, t, shape, meaning)
        check_like(name, t, "w_ih", w_ih)
    return check_batch_sizes(batch_sizes, T, B)


def _default_y0(x, y0, w_hy):
    """y0, or zeros (B, O) like x when None (malformed arguments are left to the checks)."""
    if y0 is None and isinstance(x, torch.Tensor) and x.dim() == 3 and isinstance(w_hy, torch.Tensor):
        return x.new_zeros(x.shape[1], w_hy.shape[0])
    return y0


def jordan(
    x,
    y0,
    w_ih,
    w_yh,
    b_h,
    w_hy,
    b_y,
    *,
    output_activation=None,
    batch_sizes=None,
    impl="fused",
):
    """Free-running Jordan network over a whole sequence: x (T, B, I), y0 (B, O) or None (zeros) ->
    (y (T, B, O), y_n (B, O)), each sequence's output at its last valid step. `batch_sizes` as in
    PackedSequence (sequences sorted by decreasing length; outputs past a length are 0);
    `impl="fused"` runs the hand-derived BPTT, `"loop"` the step equations under autograd."""
    check_choice("impl", impl, IMPLS)
    y0 = _default_y0(x, y0, w_hy)
    act = output_activation
    bs = check_jordan_args(x, y0, w_ih, w_yh, b_h, w_hy, b_y, output_activation=act, batch_sizes=batch_sizes)
    if impl == "loop":
        step = lambda x_t, s: (jordan_step(x_t, s[0], w_ih, w_yh, b_h, w_hy, b_y, act)[0],)  # noqa: E731
        y, (y_n,) = run_loop(step, x, (y0,), bs)
        return y, y_n
    return JordanFused.apply(x, y0, w_ih, w_yh, b_h, w_hy, b_y, act, bs)


def jordan_teacher_forced(
    x, targets, y0, w_ih, w_yh, b_h, w_hy, b_y, *, output_activation=None, batch_sizes=None
):
    """Teacher-forced Jordan network: y_{t-1} := targets[t-1] (y_{-1} = y0, zeros if None), so no
    step waits for another: x (T, B, I), targets (T, B, O) -> (y (T, B, O), y_n (B, O)) as `jordan`."""
    y0 = _default_y0(x, y0, w_hy)
    act = output_activation
    check_tensor("targets", targets, ndim=3)
    bs = check_jordan_args(
        x, y0, w_ih, w_yh, b_h, w_hy, b_y, output_activation=act, batch_sizes=batch_sizes, targets=targets
    )
    prev = stack_prev(y0, targets)  # (T, B, O): y0, targets[0], ..., targets[T-2]
    h = torch.tanh(linear(x, w_ih, b_h) + linear(prev, w_yh, None))  # (T, B, H), two GEMMs
    y = _ACT[act](linear(h, w_hy, b_y))  # (T, B, O), one GEMM
    if bs is not None:  # outputs past a sequence's end are 0, as in the free-running kernel
        y = y * zero_padding_(torch.ones_like(y[..., :1]), bs)
    return y, last_valid(y, bs)


class JordanParameters(nn.Module):
    """The parameters of a Jordan network, as named in the module docstring, shared by the cell
    and the layer: weight_ih (H, I), weight_yh (H, O), bias_h (H,), weight_hy (O, H), bias_y (O,)."""

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        *,
        output_activation=None,
        bias=True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, n in (
            ("input_size", input_size),
            ("hidden_size", hidden_size),
            ("output_size", output_size),
        ):
            check_positive_int(name, n)
        check_choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        check_bool("bias", bias)
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, output_size
        self.output_activation, self.bias = output_activation, bias
        I, H, O = input_size, hidden_size, output_size
        shapes = {
            "weight_ih": (H, I),
            "weight_yh": (H, O),
            "bias_h": (H,),
            "weight_hy": (O, H),
            "bias_y": (O,),
        }
        with allocating(f"{type(self).__name__}(input_size={I}, hidden_size={H}, output_size={O})"):
            for name, shape in shapes.items():
                if bias or not name.startswith("bias"):
                    self.register_parameter(
                        name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
                    )
                else:
                    self.register_parameter(name, None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def weights(self) -> tuple:
        """(w_ih, w_yh, b_h, w_hy, b_y), the kernels' argument order (biases None without bias)."""
        return self.weight_ih, self.weight_yh, self.bias_h, self.weight_hy, self.bias_y

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, {self.output_size}"
        if self.output_activation is not None:
            s += f", output_activation={self.output_activation!r}"
        return s + ("" if self.bias else ", bias=False")


class JordanCell(JordanParameters):
    """One Jordan step: forward(input (B, I) or (I,), y_prev (B, O) or (O,) or None (zeros)) ->
    (y (B, O), h (B, H)), unbatched in, unbatched out. Equations in the module docstring."""

    def forward(self, input, y_prev=None):
        check_tensor("input", input, ndim=(1, 2))
        check_like("input", input, "weight_ih", self.weight_ih)
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (B, I)
        if x.shape[1] != self.input_size:
            raise RnnkitValueError(
                f"input must have {self.input_size} features (input_size) in its last dimension, "
                f"got shape {tuple(input.shape)}"
            )
        if y_prev is None:
            y_prev = x.new_zeros(x.shape[0], self.output_size)
        else:
            check_tensor("y_prev", y_prev, ndim=input.dim())
            check_like("y_prev", y_prev, "input", input)
            want = (self.output_size,) if unbatched else (x.shape[0], self.output_size)
            check_shape("y_prev", y_prev, want, "(output_size,)" if unbatched else "(batch, output_size)")
            y_prev = y_prev.unsqueeze(0) if unbatched else y_prev
        y, h = jordan_step(x, y_prev, *self.weights(), self.output_activation)
        return (y.squeeze(0), h.squeeze(0)) if unbatched else (y, h)


_WEIGHT_NAMES = ("weight_ih", "weight_yh", "bias_h", "weight_hy", "bias_y")


@torch.compiler.assume_constant_result  # called while tracing: a constant string in the graph
def jordan_spec(output_activation, has_bias: bool) -> str:
    """The traced op's spec of the free-running kernel (`rnnkit.cells.traced`)."""
    names = [n for n in _WEIGHT_NAMES if has_bias or not n.startswith("bias")]
    return traced.spec("jordan", output_activation=output_activation, names=names)


@traced.kind("jordan")
def _run_jordan(desc: dict, x, state: tuple, weights: list, batch_sizes):
    w = dict(zip(desc["names"], weights))
    args = [w.get(n) for n in _WEIGHT_NAMES]
    y, y_n = jordan(x, state[0], *args, output_activation=desc["output_activation"], batch_sizes=batch_sizes)
    return y, (y_n,)


def jordan_traced(x, y0, w_ih, w_yh, b_h, w_hy, b_y, *, output_activation=None, lengths=None):
    """The free-running kernel under tracing: one op (`rnnkit.cells.traced`), or under ONNX export
    a scan over `jordan_step`; `lengths` (B,) in place of batch_sizes. Returns (y, y_n)."""
    if traced.onnx_exporting():

        def step(x_t, s, w):
            return (jordan_step(x_t, s[0], *(w[n] for n in _WEIGHT_NAMES), output_activation)[0],)

        weights = dict(zip(_WEIGHT_NAMES, (w_ih, w_yh, b_h, w_hy, b_y)))
        y, (y_n,) = traced.scan_steps(step, x, (y0,), weights, lengths)
        return y, y_n
    weights = [w for w in (w_ih, w_yh, b_h, w_hy, b_y) if w is not None]
    y, (y_n,) = traced.sequence(jordan_spec(output_activation, b_h is not None), x, lengths, (y0,), weights)
    return y, y_n
