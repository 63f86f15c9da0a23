"""Kernels for the diagonal linear recurrence of minGRU and minLSTM (`rnnkit.cells.minimal`):

    h_t = a_t * h_{t-1} + b_t,    t = 0..T-1, h_{-1} = h0          (elementwise)

Shapes: a, b, h (T, B, H); h0 (B, H). The log-space form takes log a, log b, log h0 and computes
log h_t = logaddexp(log a_t + log h_{t-1}, log b_t), which needs a, b, h0 >= 0 (Feng et al. 2024,
"Were RNNs All We Needed?", appendix); it returns h = exp(log h).

Two modes give the same numbers (up to float rounding):
  "sequential"  the loop above, one fused multiply-add per step (streaming).
  "parallel"    a two-level blocked scan. Split time into n chunks of C = ceil(sqrt(T)) steps:
                  1. each chunk's end state from a zero start, e_k, and its total decay
                     P_k = prod_{t in chunk k} a_t, for all chunks at once: a loop over the C
                     positions of a chunk, each step one op on (n, B, H);
                  2. the true state at each chunk's end, c_k = P_k c_{k-1} + e_k (c_{-1} = h0):
                     the same recurrence over n steps, solved by this scan recursively;
                  3. each chunk again from its true start state c_{k-1}, writing h: again C ops
                     on (n, B, H).
                The last T mod C steps run sequentially from c_{n-1}. About 3 sqrt(T) ops instead
                of T, reading a and b twice and writing h once, with no (T, B, H) temporaries.
Numerics: nothing is divided, and no cumulative sum or product runs over the whole sequence. The
paper's log-space form, log h = a* + logcumsumexp(log b - a*) with a* = cumsum(log a) over all of
time, loses float32's digits once a* reaches thousands: at T = 4096 (gates from N(0, 4)
pre-activations) its relative error was 8e-4 against 3e-7 here. Products here run over one chunk,
and one that underflows is a decay that truly reached zero. In log space a step is a logaddexp
and a chunk's decay a sum of C logs.

Backward (hand-derived, both modes): the gradient flows backwards through the same recurrence,
    g_t = dL/dh_t + a_{t+1} g_{t+1}   (g_T = 0),
    dL/da_t = g_t h_{t-1},  dL/db_t = g_t,  dL/dh0 = a_0 g_0,
so it is one more scan (reversed in time) and two products. For the log-space form,
dL/dlog a = a dL/da and dL/dlog b = b dL/db (h0 is taken as a value, not a log).

Why this method, measured on this 2-core CPU (scan alone, float32; forward / forward + backward):
T=10,000 B=16 H=256: blocked 94 / 374 ms, sequential 311 / 745 ms; T=4096 B=2 H=32: 2.2 / 5.2 ms
against 25 / 53 ms. The loop pays one op per step; the blocked scan fewer, larger ops. A cumprod
within the chunks (torch.cumprod over a non-last dimension) was 3-5x slower than step 1's loop,
and a Mamba-2-style segment-sum matrix (L[t, s] = prod_{s<r<=t} a_r, h = L @ b) costs C times
the work here, as a differs per channel (a (C, C) matrix per channel, not per head).
Reproduce the layer-level comparison with `python benchmarks/bench_scan.py`.
"""

from __future__ import annotations

import math

import torch

from rnnkit.cells._kernel import forbid_double_backward
from rnnkit.cells.speed import native as _native
from rnnkit.cells.speed.gc_pause import without_cycle_gc

MODES = ("parallel", "sequential")
SEQUENTIAL_BELOW = 32  # shorter scans (and the recursion's last level) run as a plain loop


class _Plain:
    """h_t = a_t h_{t-1} + b_t on values; a product of decays."""

    @staticmethod
    def step(a_t, h, b_t, out):
        return torch.addcmul(b_t, a_t, h, out=out)

    @staticmethod
    def decay_(p, a_t):
        return p.mul_(a_t)


class _Log:
    """log h_t = logaddexp(log a_t + log h_{t-1}, log b_t) on logs; a sum of log decays."""

    @staticmethod
    def step(a_t, h, b_t, out):
        return torch.logaddexp(a_t + h, b_t, out=out)

    @staticmethod
    def decay_(p, a_t):
        return p.add_(a_t)


def _sequential(ops, a, b, h0, out, reverse=False):
    """The loop, forwards in time (or backwards: h_t = a_t h_{t+1} + b_t, h_T = h0). On values, it
    runs compiled where `rnnkit.cells.speed.native.ops` allows (speed/cpp/scan.cpp: one pass
    instead of an op per step); the loop here is its reference in tests/test_native.py."""
    if ops is _Plain and all(t.is_contiguous() and t.dtype == out.dtype for t in (a, b, h0, out)):
        native = _native.ops(out)
        if native is not None:
            native.linear_scan(a, b, h0, out, reverse)
            return out
    h = h0
    steps = zip(a.unbind(0), b.unbind(0), out.unbind(0))
    for a_t, b_t, o_t in reversed(list(steps)) if reverse else steps:
        h = ops.step(a_t, h, b_t, o_t)
    return out


def _blocked(ops, a, b, h0, out, chunk_size=None, reverse=False):
    """The two-level scan of the module docstring, written into `out` (T, B, H)."""
    T = a.shape[0]
    C = chunk_size or math.isqrt(T - 1) + 1  # ceil(sqrt(T)): balances the two loops
    if T < max(2 * C, SEQUENTIAL_BELOW if chunk_size is None else 2):
        return _sequential(ops, a, b, h0, out, reverse)
    n = T // C
    # Whole chunks first in the scan's direction; the rest (< C steps) runs sequentially after.
    whole, tail = (
        (slice(T - n * C, T), slice(0, T - n * C)) if reverse else (slice(0, n * C), slice(n * C, T))
    )
    a4, b4, h4 = (t[whole].view(n, C, *a.shape[1:]) for t in (a, b, out))  # (n, C, B, H)
    order = range(C - 1, -1, -1) if reverse else range(C)
    first, *others = order
    # 1. Each chunk's end state from a zero start, and its total decay: (n, B, H) each.
    end, decay = b4[:, first].clone(), a4[:, first].clone()
    spare = torch.empty_like(end)
    for j in others:
        end, spare = ops.step(a4[:, j], end, b4[:, j], spare), end
        ops.decay_(decay, a4[:, j])
    # 2. The true end state of each chunk: the same recurrence over chunks, solved recursively.
    ends = _blocked(ops, decay, end, h0, spare, chunk_size, reverse)  # (n, B, H)
    start = torch.cat([h0.unsqueeze(0), ends[:-1]] if not reverse else [ends[1:], h0.unsqueeze(0)])
    # 3. Each chunk again, from its true start state.
    h = start  # (n, B, H)
    for j in order:
        h = ops.step(a4[:, j], h, b4[:, j], h4[:, j])
    last = ends[0] if reverse else ends[-1]
    if tail.stop > tail.start:
        _sequential(ops, a[tail], b[tail], last, out[tail], reverse)
    return out


def scan(a, b, h0, *, mode="parallel", log_space=False, chunk_size=None, reverse=False, out=None):
    """h (T, B, H) from a, b (T, B, H) and h0 (B, H), no autograd; logs in, logs out when
    log_space. `reverse`: backwards in time, h_t = a_t h_{t+1} + b_t with h_T = h0.
    `chunk_size` fixes C (tests use it to reach every branch on short sequences). `out` may be b
    itself: each element of b is read before its slot is written."""
    ops = _Log if log_space else _Plain
    out = torch.empty_like(b) if out is None else out
    if mode == "sequential":
        return _sequential(ops, a, b, h0, out, reverse)
    return _blocked(ops, a, b, h0, out, chunk_size, reverse)


def scan_backward(a, h, h0, grad_h, mode="parallel", chunk_size=None, carry=None, out=None):
    """(dL/da, dL/db, dL/dh0) of h = scan(a, b, h0) from dL/dh, by the reverse scan. For a piece
    of a longer sequence, `carry` (B, H) is a_T g_T, the gradient reaching h_{T-1} from the steps
    after the piece, and the returned dL/dh0 is the carry for the piece before. `out`: buffers
    (2, T, B, H) for dL/db and dL/da."""
    T = a.shape[0]
    g, da = (torch.empty_like(h), torch.empty_like(h)) if out is None else out
    if carry is None:
        g[-1] = grad_h[-1]
    else:
        torch.add(grad_h[-1], carry, out=g[-1])
    if T > 1:  # g_t = a_{t+1} g_{t+1} + dL/dh_t for t < T-1, backwards from g_{T-1}
        g[:-1] = grad_h[:-1]  # the scan needs contiguous input (grad_h may be an expanded one)
        ops, rest = _Plain, (a[1:], g[:-1], g[-1], g[:-1])
        if mode == "sequential":
            _sequential(ops, *rest, reverse=True)
        else:
            _blocked(ops, *rest, chunk_size, reverse=True)
    torch.mul(g[0], h0, out=da[0])
    torch.mul(g[1:], h[:-1], out=da[1:])  # g_t h_{t-1}
    return da, g, a[0] * g[0]


class LinearScan(torch.autograd.Function):
    """h = scan(a, b, h0) with the hand-derived backward of the module docstring."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, a, b, h0, mode, chunk_size):
        h = scan(a, b, h0, mode=mode, chunk_size=chunk_size)
        ctx.save_for_backward(a, h0, h)
        ctx.mode, ctx.chunk_size = mode, chunk_size
        return h

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_h):
        forbid_double_backward("linear scan")
        a, h0, h = ctx.saved_tensors
        da, db, dh0 = scan_backward(a, h, h0, grad_h, ctx.mode, ctx.chunk_size)
        return da, db, dh0, None, None


class LogLinearScan(torch.autograd.Function):
    """h = exp(log-space scan(log a, log b, log h0)) from h0 >= 0. The sequential mode steps on values, as the
    paper's sequential minGRU does: h_t = a_t h_{t-1} + b_t with a = exp(log a), b = exp(log b)."""

    @staticmethod
    @without_cycle_gc
    def forward(ctx, log_a, log_b, h0, mode, chunk_size):
        a = log_a.exp()
        if mode == "sequential":
            h = scan(a, log_b.exp(), h0, mode=mode)
        else:
            h = scan(log_a, log_b, h0.log(), log_space=True, chunk_size=chunk_size).exp_()
        ctx.save_for_backward(a, log_b, h0, h)
        ctx.mode, ctx.chunk_size = mode, chunk_size
        return h

    @staticmethod
    @without_cycle_gc
    def backward(ctx, grad_h):
        forbid_double_backward("log-space linear scan")
        a, log_b, h0, h = ctx.saved_tensors
        da, db, dh0 = scan_backward(a, h, h0, grad_h, ctx.mode, ctx.chunk_size)
        return da.mul_(a), db.mul_(log_b.exp()), dh0, None, None


def linear_scan(a, b, h0, *, mode="parallel", chunk_size=None):
    """h_t = a_t h_{t-1} + b_t: a, b (T, B, H), h0 (B, H) -> h (T, B, H), differentiable."""
    return LinearScan.apply(a, b, h0, mode, chunk_size)


def log_linear_scan(log_a, log_b, h0, *, mode="parallel", chunk_size=None):
    """The same recurrence from log a, log b (T, B, H) (-inf is a zero) and h0 >= 0 (B, H), the
    state itself, so that a zero in it has a finite gradient: -> h (T, B, H), values."""
    return LogLinearScan.apply(log_a, log_b, h0, mode, chunk_size)
