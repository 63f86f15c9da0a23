"""The whole-sequence kernels under tracing (`torch.compile`, `torch.export`, `torch.onnx.export`).

Eager code calls each family's fused kernel directly (an autograd.Function with the hand-derived
BPTT). A tracer cannot look inside one: the compiled C++ loops hold no graph, and the Python
loops would unroll into T copies of the step. So under tracing a layer-direction runs as one
opaque op of this module instead:

    rnnkit::sequence(spec, x (T, B, I), lengths (B,) or None, state [(B, n)...], weights [...])
        -> [y (T, B, P), *final state]

`spec` is a JSON string naming what runs (a `kind` registered below the op, e.g. a built-in unit
by its registry name and options, so a saved `torch.export` program finds it again in another
process). The op's fake implementation gives the shapes from its inputs' (so T and B stay
dynamic), and its autograd formula is `rnnkit::sequence_backward`, which runs the same kernel's
forward and hand-derived backward in one call: the intermediates of the forward pass are not
outputs of the op, so training under `torch.compile` recomputes the forward pass in the backward
(activation checkpointing of each layer-direction; eager training does not).

`lengths` is where variable-length batches go when traced: the op sorts by length and runs the
kernel on the packed steps inside, so no data-dependent Python (`.tolist()`, `int(x.min())`)
stands on the traced path. The values of `lengths` are checked inside the op, when it runs.

ONNX has no use for an opaque op: under `torch.onnx.export` a layer-direction is a `scan` over
the cell's step equations (`scan_steps`; ONNX Scan, T dynamic) unless the unit lowers itself to
an ONNX operator (`onnx_sequence`: the plain LSTM, GRU and Elman RNN use ONNX's own).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable

import torch

from rnnkit.errors import RnnkitValueError

# kind name -> fn(desc (the parsed spec), x, state tuple, weights list, batch_sizes) -> (y, finals)
_KINDS: dict[str, Callable] = {}


def tracing() -> bool:
    """Inside torch.compile, torch.export or torch.onnx.export (dynamo)."""
    return torch.compiler.is_compiling()


def onnx_exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


def kind(name: str):
    """Register fn(desc, x, state, weights, batch_sizes) -> (y, final state tuple) under `name`:
    what a spec with {"kind": name, ...} runs."""

    def register(fn):
        _KINDS[name] = fn
        return fn

    return register


def spec(kind_name: str, **fields) -> str:
    """The op's description of what runs: JSON, so a traced graph holds it as a constant string."""
    if kind_name not in _KINDS:
        raise RnnkitValueError(f"no traced kernel kind {kind_name!r} (known: {', '.join(sorted(_KINDS))})")
    return json.dumps({"kind": kind_name, **fields}, sort_keys=True)


@functools.lru_cache(maxsize=256)
def _parse(spec_: str) -> dict:
    desc = json.loads(spec_)
    if desc.get("kind") not in _KINDS:
        raise RnnkitValueError(
            f"rnnkit::sequence: unknown kind {desc.get('kind')!r} in spec (known: "
            f"{', '.join(sorted(_KINDS))}); import the package that registers it first"
        )
    return desc


def sort_by_length(lengths: torch.Tensor):
    """(B,) lengths (CPU int64) -> (sorted lengths, order, batch_sizes): the packed form the fused
    kernels take, sequences by decreasing length (stable); batch_sizes (one int per step up to the
    longest length) is None when every sequence has that length."""
    sorted_lens, order = torch.sort(lengths, descending=True, stable=True)
    steps = int(sorted_lens[0])
    bs = (sorted_lens[None, :] > torch.arange(steps)[:, None]).sum(1).tolist()  # active per step
    return sorted_lens, order, (None if bs[-1] == len(lengths) else bs)


def _run(spec_: str, x, lengths, state, weights) -> list[torch.Tensor]:
    desc = _parse(spec_)
    fn = _KINDS[desc["kind"]]
    T, B = x.shape[0], x.shape[1]
    if lengths is None or B == 0:
        y, final = fn(desc, x, tuple(state), list(weights), None)
    else:
        lens = lengths.to("cpu", torch.int64)
        if lens.shape != (B,) or int(lens.min()) < 1 or int(lens.max()) > T:
            raise RnnkitValueError(
                f"lengths must hold {B} values (one per sequence), each in 1..{T} (the padded length), "
                f"got {lens.tolist()}"
            )
        sorted_lens, order, bs = sort_by_length(lens)
        order = order.to(x.device)
        steps = int(sorted_lens[0])
        y, final = fn(
            desc,
            x[:steps].index_select(1, order),
            tuple(s.index_select(0, order) for s in state),
            list(weights),
            bs,
        )
        back = torch.argsort(order)
        y = y.index_select(1, back)
        if steps < T:  # past the longest sequence: zeros, as inside it past each length
            y = torch.cat([y, y.new_zeros(T - steps, *y.shape[1:])])
        final = tuple(s.index_select(0, back) for s in final)
    # an op's outputs may alias neither its inputs nor each other (final states are often views of y)
    return [y, *(s.clone() for s in final)]


@torch.library.custom_op("rnnkit::sequence", mutates_args=())
def _sequence_op(
    spec: str,
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    state: list[torch.Tensor],
    weights: list[torch.Tensor],
) -> list[torch.Tensor]:
    return _run(spec, x, lengths, state, weights)


@_sequence_op.register_fake
def _(spec, x, lengths, state, weights):
    _parse(spec)
    return [x.new_empty(x.shape[0], x.shape[1], state[0].shape[-1]), *(s.new_empty(s.shape) for s in state)]


@contextlib.contextmanager
def _autograd_on():
    """Autograd inside an op's implementation, where the dispatcher has turned it off (the op runs
    below the autograd key): the backward op records the kernel's forward to run its backward.
    torch has no public switch for this; `_ForceDispatchKeyGuard` is what torch.func uses."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude):
        with torch.enable_grad():
            yield


@torch.library.custom_op("rnnkit::sequence_backward", mutates_args=())
def _sequence_backward_op(
    spec: str,
    x: torch.Tensor,
    lengths: torch.Tensor | None,
    state: list[torch.Tensor],
    weights: list[torch.Tensor],
    grads: list[torch.Tensor],
) -> list[torch.Tensor]:
    n = len(state)
    with _autograd_on():
        leaves = [t.detach().requires_grad_() for t in (x, *state, *weights)]
        out = _run(spec, leaves[0], lengths, leaves[1 : 1 + n], leaves[1 + n :])
        used = [(o, g) for o, g in zip(out, grads) if o.requires_grad]
        found = torch.autograd.grad([o for o, _ in used], leaves, [g for _, g in used], allow_unused=True)
    # An op's outputs may alias neither its inputs nor each other: copy a gradient passed straight
    # through, or one tensor returned for two arguments (the two biases' gradients are one sum).
    taken, out = {t.untyped_storage().data_ptr() for t in (x, *state, *weights, *grads)}, []
    for g, leaf in zip(found, leaves):
        g = torch.zeros_like(leaf) if g is None else g
        g = g.clone() if g.untyped_storage().data_ptr() in taken else g
        taken.add(g.untyped_storage().data_ptr())
        out.append(g)
    return out


@_sequence_backward_op.register_fake
def _(spec, x, lengths, state, weights, grads):
    return [t.new_empty(t.shape) for t in (x, *state, *weights)]


def _setup(ctx, inputs, output):
    spec_, x, lengths, state, weights = inputs
    ctx.spec, ctx.n, ctx.lengths = spec_, len(state), lengths
    ctx.save_for_backward(x, *state, *weights)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    x, state, weights = saved[0], list(saved[1 : 1 + ctx.n]), list(saved[1 + ctx.n :])
    shapes = [(x.shape[0], x.shape[1], state[0].shape[-1]), *(s.shape for s in state)]
    grads = [x.new_zeros(shape) if g is None else g for g, shape in zip(grads, shapes)]
    found = _sequence_backward_op(ctx.spec, x, ctx.lengths, state, weights, grads)
    return None, found[0], None, found[1 : 1 + ctx.n], found[1 + ctx.n :]


_sequence_op.register_autograd(_backward, setup_context=_setup)


def sequence(spec_: str, x, lengths, state: tuple, weights: list) -> tuple:
    """One layer-direction as the op: (y (T, B, P), final state tuple)."""
    out = torch.ops.rnnkit.sequence(spec_, x, lengths, list(state), list(weights))
    return out[0], tuple(out[1:])


# --- ONNX: a scan over the step equations ----------------------------------------------------------


def length_mask(x: torch.Tensor, lengths: torch.Tensor | None):
    """(T, B, 1) bool, True where step t is inside sequence b's length; None without lengths."""
    if lengths is None:
        return None
    t = torch.arange(x.shape[0], device=x.device)[:, None]
    return (t < lengths.to(x.device)[None, :]).unsqueeze(-1)


def scan_steps(step: Callable, x: torch.Tensor, state: tuple, weights: dict, lengths=None) -> tuple:
    """`step(x_t, state, weights) -> state` over x (T, B, I) as one `scan` (ONNX Scan; T stays
    dynamic): (y (T, B, P), final state). A sequence past its length keeps its state and outputs
    zeros. `weights` (name -> tensor or None) are the scan's explicit inputs: a tensor the body
    merely closed over would not survive the exporter's decompositions.

    The scan higher-order op is called directly, with a flat body: torch.scan() would compile
    each call with dynamo, whose cached first compile then pins the batch size of the layers'
    second and later scans (bidirectional, stacked) under export."""
    from torch._higher_order_ops.scan import scan_op

    n = len(state)
    mask = length_mask(x, lengths)
    names = [k for k, w in weights.items() if w is not None]
    k = 1 if mask is None else 2  # per-step inputs: x_t, and the mask's row

    def body(*flat):  # (state..., x_t[, m_t], weights...) -> (new state..., y_t)
        carry, x_t = flat[:n], flat[n]
        w = {**dict.fromkeys(weights), **dict(zip(names, flat[n + k :]))}
        new = tuple(step(x_t, tuple(carry), w))
        if mask is None:
            return (*new, new[0].clone())
        m_t = flat[n + 1]
        return (*(torch.where(m_t, a, s) for a, s in zip(new, carry)), torch.where(m_t, new[0], 0.0))

    xs = [x] if mask is None else [x, mask]
    out = scan_op(body, list(state), xs, additional_inputs=tuple(weights[n] for n in names))
    return out[n], tuple(out[:n])


def onnx_recurrent(op: str, x, state: tuple, w: dict, blocks: list[int], lengths=None, **attributes) -> tuple:
    """One direction of ONNX's own LSTM, GRU or RNN operator (`op`), for a unit whose equations
    are that operator's: torch's parameters (w: weight_ih, weight_hh, bias_ih, bias_hh) with their
    gate blocks put in ONNX's order (`blocks`: torch's block index of each of ONNX's), the
    biases as one [Wb, Rb], `lengths` as sequence_lens. Returns (y (T, B, H), final state tuple)."""
    T, B, H = x.shape[0], x.shape[1], state[0].shape[-1]

    def onnx_order(t):  # (G*H, ...) torch's blocks -> ONNX's, with a leading direction axis
        return torch.cat([t[i * H : (i + 1) * H] for i in blocks])[None]

    w_ih, w_hh, b_ih, b_hh = (w.get(n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    bias = None if b_ih is None else torch.cat([onnx_order(b_ih), onnx_order(b_hh)], dim=1)
    seq_lens = None if lengths is None else lengths.to(torch.int32)
    inputs = [x, onnx_order(w_ih), onnx_order(w_hh), bias, seq_lens, *(s[None] for s in state)]
    n = len(state)
    out = torch.onnx.ops.symbolic_multi_out(
        f"::{op}",
        inputs,
        attrs={"hidden_size": H, **attributes},
        dtypes=[x.dtype] * (1 + n),
        shapes=[(T, 1, B, H), *((1, B, H),) * n],
    )
    return out[0][:, 0], tuple(s[0] for s in out[1:])
