"""The compiled CPU loops (`rnnkit.cells.speed.native`, `speed/cpp/*.cpp`) of the layer-norm LSTM,
the layer-norm GRU, the LSTM, the GRU (both forms), the Elman RNN (tanh and relu), the MGU, IndRNN,
the peephole LSTM, the Jordan network, the minimal cells' linear scan, and the decoding step:
against the Python loops they replace and against the step equations, gradcheck, that they are
used where they should be (and only there), the fallback when they cannot be built, and the build lock.

The kernels are listed once, in KERNELS, and each test runs over them (over the cases that apply:
projections only where a kernel has one). Every test that compares the compiled loops with
something asserts, through `calls`, that the kernel's own compiled ops really ran (forward and
backward) and no other kernel's, so that none of them passes by comparing the Python loops with
themselves."""

import functools
import os
import subprocess
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils import cpp_extension

import rnnkit
from rnnkit import functional
from rnnkit.cells.speed import native as _native

D = torch.float64
I, H, P = 3, 6, 4

# --- the kernels ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """A kernel with compiled loops, as these tests call it."""

    name: str  # its function in rnnkit.functional, and its ops' prefix: {name}_forward, _backward
    gates: int  # W_ih has gates * H rows
    cell_state: bool  # an LSTM's c: arguments x, h0, c0, W_ih, W_hh, ...; else x, h0, W_ih, ...
    layer_norms: tuple  # (keyword, size / H) of each LN's (gain, shift)
    projection: bool  # takes w_hr
    train_flag: bool  # its compiled forward is told whether to keep the backward's factors
    layer: Callable  # (input_size, hidden_size, **kw) -> the rnnkit layer that runs it
    function: str = ""  # its function in rnnkit.functional when not `name`
    options: tuple = ()  # (keyword, value) pairs that function takes for this kernel

    def __call__(self, args, kw, batch_sizes=None, impl="fused"):
        fn = getattr(functional, self.function or self.name)
        return fn(*args, **kw, **dict(self.options), batch_sizes=batch_sizes, impl=impl)

    @property
    def ops(self):
        return f"{self.name}_forward", f"{self.name}_backward"

    @property
    def outputs(self):
        """How many tensors it returns: y, h_n (and c_n)."""
        return 3 if self.cell_state else 2

    @property
    def w_hh(self):
        """W_hh's index in the positional arguments."""
        return 4 if self.cell_state else 3

    def __str__(self):
        return self.name


LN_LSTM, LN_GRU = (
    functools.partial(rnnkit.LSTM, layer_norm=True),
    functools.partial(rnnkit.GRU, layer_norm=True),
)
KERNELS = {  # Kernel(name, gates, cell_state, layer_norms, projection, train_flag, layer)
    k.name: k
    for k in [
        Kernel("ln_lstm", 4, True, (("ln_ih", 4), ("ln_hh", 4), ("ln_c", 1)), True, True, LN_LSTM),
        Kernel("ln_gru", 3, False, (("ln_ih", 3), ("ln_hh", 3)), False, False, LN_GRU),
        Kernel("lstm", 4, True, (), True, False, rnnkit.LSTM),
        Kernel("gru", 3, False, (), False, False, rnnkit.GRU),  # torch's form (reset_after=True)
        Kernel("rnn_tanh", 1, False, (), False, False, rnnkit.RNN),
        Kernel("rnn_relu", 1, False, (), False, False, functools.partial(rnnkit.RNN, nonlinearity="relu")),
        Kernel("mgu", 2, False, (), False, False, rnnkit.MGU),
        Kernel(
            "gru_reset_before",
            3,
            False,
            (),
            False,
            False,
            functools.partial(rnnkit.GRU, reset_after=False),
            function="gru",
            options=(("reset_after", False),),
        ),  # fmt: skip
    ]
}


def kernels():
    """A parameter for each kernel."""
    return [pytest.param(k, id=k.name) for k in KERNELS.values()]


def applies(kernel, proj):
    """Whether `kernel` takes `proj` (None or 0: no projection)."""
    return not proj or kernel.projection


def kernel_projs(*projs):
    """(kernel, proj) parameters: every kernel with each of `projs` (None or 0: no projection),
    a projection only for the kernels that have one."""
    return [pytest.param(k, p, id=f"{k}-proj={p}") for k in KERNELS.values() for p in projs if applies(k, p)]


# --- helpers ----------------------------------------------------------------------------------


def make(kernel, T=5, B=4, proj=None, *, dtype=D, seed=0, bias=True, strided=False):
    """(positional args, keywords) of `kernel`: x, h0, (c0,) w_ih, w_hh, b_ih, b_hh and its LNs'
    (gain, shift) pairs and w_hr, all random leaves requiring grad (LN gains near 1, shifts away
    from 0, so that a swapped gain or shift shows). `strided`: every leaf a non-contiguous view."""
    g = torch.Generator().manual_seed(seed)
    out, G = proj or H, kernel.gates * H

    def rand(*shape, scale=0.5, offset=0.0):
        if strided and len(shape) == 1:  # every other element of a longer vector
            v = torch.randn(2 * shape[0], generator=g, dtype=D)[::2]
        elif strided:  # the first two dimensions transposed
            v = torch.randn(shape[1], shape[0], *shape[2:], generator=g, dtype=D).transpose(0, 1)
        else:
            v = torch.randn(*shape, generator=g, dtype=D)
        v = (v * scale + offset) if not strided else v.mul_(scale).add_(offset)
        assert v.is_contiguous() != strided
        return v.to(dtype).detach().requires_grad_()

    args = [rand(T, B, I), rand(B, out)] + ([rand(B, H)] if kernel.cell_state else [])
    args += [rand(G, I), rand(G, out)]
    args += [rand(G), rand(G)] if bias else [None, None]
    kw = {name: (rand(n * H, scale=0.2, offset=1), rand(n * H)) for name, n in kernel.layer_norms}
    if kernel.projection:
        kw["w_hr"] = rand(proj, H) if proj else None
    return args, kw


def leaves(args, kw):
    """Every input and parameter that is a tensor requiring grad: x, h0, (c0,) weights, biases,
    the LN (gain, shift) pairs, w_hr; in the order `map_tensors` visits them."""
    flat = list(args) + [t for v in kw.values() for t in (v if isinstance(v, tuple) else (v,))]
    return [t for t in flat if t is not None and t.requires_grad]


def map_tensors(f, args, kw):
    """args and kw with f applied to each tensor (those in (gain, shift) pairs too)."""

    def m(v):
        return tuple(map(m, v)) if isinstance(v, tuple) else (v if v is None else f(v))

    return [m(a) for a in args], {k: m(v) for k, v in kw.items()}


def outputs_and_grads(outs, inputs, loss="weighted"):
    """(the outputs y, h_n (, c_n), dL/d every input): "weighted" sums each output times fixed
    random weights (contiguous, all-different gradients at every output), "sum" is y.sum() + ...
    (expanded, zero-stride gradients), "y" uses y alone (the final states get no gradient)."""
    if loss == "weighted":
        g = torch.Generator().manual_seed(123)
        total = sum((o * torch.randn(o.shape, generator=g, dtype=D).to(o.dtype)).sum() for o in outs)
    elif loss == "sum":
        total = sum(o.sum() for o in outs)
    else:
        total = (outs[0] * outs[0]).sum()
    return (*(o.detach() for o in outs), *torch.autograd.grad(total, inputs))


def assert_all_close(got, want, **tol):
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"item {k}: {m}")


# the ops whose last argument is `train`, counted as train=True / train=False
TRAIN_FLAG_OPS = {k.ops[0] for k in KERNELS.values() if k.train_flag}


class _Counting:
    """torch.ops.rnnkit with a count of the calls of each op (and the `train` flags passed)."""

    def __init__(self, lib, counts):
        self._lib, self._counts = lib, counts

    def __getattr__(self, name):
        op = getattr(self._lib, name)

        def counted(*args, **kwargs):
            self._counts[name] += 1
            if name in TRAIN_FLAG_OPS:
                self._counts[f"train={args[-1]}"] += 1
            return op(*args, **kwargs)

        return counted


@pytest.fixture
def calls(monkeypatch):
    """A Counter of the compiled ops' calls, by op name; fails the test at once if they are
    unavailable."""
    require_native()
    counts = Counter()
    real = _native.ops

    def ops(like, *args, **kwargs):
        lib = real(like, *args, **kwargs)
        return None if lib is None else _Counting(lib, counts)

    monkeypatch.setattr(_native, "ops", ops)
    return counts


def ran(calls, kernel):
    """(calls of `kernel`'s compiled forward, of its backward), asserting that no other kernel's
    compiled op ran."""
    others = {op: calls[op] for k in KERNELS.values() if k is not kernel for op in k.ops}
    assert not any(others.values()), f"{kernel} ran other kernels' ops: {calls}"
    return tuple(calls[op] for op in kernel.ops)


def require_native():
    """The compiled loops must load here: a broken build fails (loudly, with its warning); only an
    explicit RNNKIT_NATIVE=0 in the environment skips."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        pytest.skip("RNNKIT_NATIVE=0: compiled loops switched off")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = _native.ops(torch.zeros(1))
    assert lib is not None, (
        "rnnkit's compiled CPU loops did not build or load (needs a C++17 compiler and ninja): "
        + "; ".join(str(w.message) for w in caught)
    )


def compiled_and_python(run):
    """run() with the compiled loops, then within `_native.disabled()` (the Python loops)."""
    got = run()
    with _native.disabled():
        want = run()
    return got, want


# --- 1. compiled loops == Python loops --------------------------------------------------------

PACKED = [4, 4, 3, 1, 1]
CASES = {  # name: (T, B, proj, batch_sizes, make's keywords)
    "plain": (5, 4, None, None, {}),
    "packed": (5, 4, None, PACKED, {}),
    "proj": (5, 4, P, None, {}),
    "proj_packed": (5, 4, P, PACKED, {}),
    "B1": (5, 1, None, None, {}),
    "B1_proj": (5, 1, P, None, {}),
    "T1": (1, 4, None, None, {}),
    "T1_packed": (1, 4, None, [4], {}),
    "T1_proj_packed": (1, 4, P, [4], {}),
    "tail_of_single_rows": (6, 3, None, [3, 1, 1, 1, 1, 1], {}),
    "tail_of_single_rows_proj": (6, 3, P, [3, 2, 1, 1, 1, 1], {}),
    "no_bias": (5, 4, None, [4, 3, 3, 2, 1], {"bias": False}),
    "no_bias_proj": (5, 4, P, None, {"bias": False}),
    "strided_inputs": (5, 4, None, PACKED, {"strided": True}),
    "strided_inputs_proj": (5, 4, P, PACKED, {"strided": True}),
    "proj_wider_than_hidden": (4, 3, 2 * H, [3, 2, 2, 1], {}),
}


def kernel_cases(*names):
    """(kernel, case) parameters: the CASES named (all by default) for every kernel, those with a
    projection only for the kernels that have one."""
    return [
        pytest.param(k, c, id=f"{k}-{c}")
        for k in KERNELS.values()
        for c in names or CASES
        if applies(k, CASES[c][2])
    ]


def make_case(kernel, case, **kw):
    """(args, keywords, batch_sizes) of CASES[case] for `kernel`."""
    T, B, proj, bs, opts = CASES[case]
    return (*make(kernel, T, B, proj, **opts, **kw), bs)


@pytest.mark.parametrize("loss", ["weighted", "sum", "y"])
@pytest.mark.parametrize(("kernel", "case"), kernel_cases())
def test_compiled_equals_python_float64(kernel, case, loss, calls):
    """float64: the outputs and the gradient of every input and parameter (x, the initial states,
    W_ih, W_hh, both biases, the LN gains and shifts, W_hr) from the compiled loops agree with the
    Python loops' to rounding (1e-12), with and without lengths and a projection, at B=1, T=1,
    with single-row tails, without biases and from non-contiguous leaves; for gradients arriving
    dense, expanded (zero-stride) or only at y."""
    args, kw, bs = make_case(kernel, case)
    inputs = leaves(args, kw)

    def run():
        return outputs_and_grads(kernel(args, kw, bs), inputs, loss)

    got, want = compiled_and_python(run)
    assert ran(calls, kernel) == (1, 1)
    assert len(got) == kernel.outputs + len(inputs)
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kernel", "case"), kernel_cases("plain", "proj_packed", "tail_of_single_rows", "B1", "T1")
)
def test_compiled_equals_python_float32(kernel, case, calls):
    """float32: the same comparison at float32 rounding (rtol 1e-4, atol 1e-5)."""
    args, kw, bs = make_case(kernel, case, dtype=torch.float32)
    inputs = leaves(args, kw)
    got, want = compiled_and_python(lambda: outputs_and_grads(kernel(args, kw, bs), inputs))
    assert ran(calls, kernel) == (1, 1)
    assert got[0].dtype == torch.float32
    assert_all_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kernel", "case"), kernel_cases("packed", "T1", "T1_proj_packed"))
def test_compiled_equals_python_some_inputs_frozen(kernel, case, calls):
    """W_hh and x not requiring grad (the backward skips their gradients), also at T=1 (one step,
    no recurrence into a second one): the outputs and the other gradients, compiled == Python."""
    args, kw, bs = make_case(kernel, case)
    args[0], args[kernel.w_hh] = args[0].detach(), args[kernel.w_hh].detach()
    inputs = leaves(args, kw)
    got, want = compiled_and_python(lambda: outputs_and_grads(kernel(args, kw, bs), inputs))
    assert ran(calls, kernel) == (1, 1)
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel", kernels())
def test_compiled_equals_python_rows_split_over_threads(kernel, calls):
    """Steps with enough rows that the compiled loops split them over torch's threads (2 here,
    whatever the session's setting; `native/common.h`'s for_rows), packed so that the split moves
    from step to step: compiled == Python, float64."""
    args, kw = make(kernel, 3, 2000, seed=4)
    inputs, bs = leaves(args, kw), [2000, 1337, 701]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got, want = compiled_and_python(lambda: outputs_and_grads(kernel(args, kw, bs), inputs))
    finally:
        torch.set_num_threads(threads)
    assert ran(calls, kernel) == (1, 1)
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


# --- 2. compiled loops == the step equations under autograd ---------------------------------


@pytest.mark.parametrize(("kernel", "proj"), kernel_projs(None, P))
@pytest.mark.parametrize("bs", [None, PACKED])
def test_compiled_equals_step_equations(kernel, proj, bs, calls):
    """The fused kernel on the compiled loops against `impl="loop"` (the step equations under
    autograd), float64: outputs and every gradient to 1e-10."""
    args, kw = make(kernel, 5, 4, proj, seed=1)
    inputs = leaves(args, kw)
    got = outputs_and_grads(kernel(args, kw, bs, impl="fused"), inputs)
    assert ran(calls, kernel) == (1, 1)
    want = outputs_and_grads(kernel(args, kw, bs, impl="loop"), inputs)
    assert ran(calls, kernel) == (1, 1)  # the loop does not go through the compiled ops
    assert_all_close(got, want, rtol=0, atol=1e-10)


# --- 3. gradcheck -----------------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "proj"), kernel_projs(None, 2))
@pytest.mark.parametrize("bs", [None, [3, 2, 1]])
def test_gradcheck_compiled(kernel, proj, bs, calls):
    """torch.autograd.gradcheck (float64, full Jacobian) of the fused kernel on the compiled
    loops, with respect to every input and parameter."""
    args, kw = make(kernel, 3, 3, proj, seed=2)
    inputs = leaves(args, kw)

    def f(*flat):
        it = iter(flat)
        return kernel(*map_tensors(lambda t: next(it) if t.requires_grad else t, args, kw), bs)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    forward, backward = ran(calls, kernel)
    assert forward > 1 and backward > 1


# --- 4. where the compiled loops apply --------------------------------------------------------


def test_compiled_loops_are_built_and_used_on_cpu():
    """On CPU in float32 and float64 the compiled loops load (this fails if they cannot be built:
    CI has g++ and ninja) and hold every kernel's two ops; float16, bfloat16, integers and other
    devices get None, and so does everything inside `disabled()` (nested too), until it exits."""
    require_native()
    for dtype in (torch.float32, torch.float64):
        lib = _native.ops(torch.zeros(1, dtype=dtype))
        assert lib is not None
        assert all(callable(getattr(lib, op)) for k in KERNELS.values() for op in k.ops)
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        assert _native.ops(torch.zeros(1, dtype=dtype)) is None
    assert _native.ops(torch.zeros(1, device="meta")) is None
    with _native.disabled():
        assert _native.ops(torch.zeros(1)) is None
        with _native.disabled():
            assert _native.ops(torch.zeros(1, dtype=D)) is None
        assert _native.ops(torch.zeros(1)) is None
    assert _native.ops(torch.zeros(1)) is not None


def test_no_compiled_loops_while_dynamo_traces(monkeypatch):
    """While torch.compile / torch.export trace (the ops have no fake implementation), `ops` gives
    None, so a kernel traced directly runs its Python loops; a traced layer runs its kernel inside
    the opaque `rnnkit::sequence` op, at run time, where they apply again (tests/test_traced.py)."""
    require_native()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _native.ops(torch.zeros(1)) is None
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert _native.ops(torch.zeros(1)) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", kernels())
def test_kernel_calls_the_compiled_loops(kernel, dtype, calls):
    """Each kernel on CPU calls its compiled forward and backward, once each (and no other op),
    and never inside `disabled()`; its layer does too."""
    args, kw = make(kernel, 4, 2, dtype=dtype)
    sum(o.sum() for o in kernel(args, kw)).backward()
    want = Counter(dict.fromkeys(kernel.ops, 1))
    assert calls == want + Counter({"train=True": 1} if kernel.train_flag else {})
    with _native.disabled():
        sum(o.sum() for o in kernel(args, kw)).backward()
    assert ran(calls, kernel) == (1, 1)
    layer = kernel.layer(I, H, dtype=dtype)
    layer(torch.randn(3, 2, I, dtype=dtype))[0].sum().backward()
    assert ran(calls, kernel) == (2, 2)


# --- 5. inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("kernel", "case"), kernel_cases("plain", "packed", "proj_packed", "tail_of_single_rows", "T1")
)
def test_no_grad_forward_equals_training_forward(kernel, case, dtype, calls, monkeypatch):
    """Under torch.no_grad() and with no input requiring grad, the compiled forward's outputs are
    exactly those of a training forward (the LN-LSTM's then skips the backward's factors). The
    LSTM's path for a few rows without gradients (`lstm_rows`, another kernel, equal to rounding:
    test_compiled_rows_sequence_equals_the_kernel) is kept out here."""
    monkeypatch.setattr(rnnkit.cells.lstm, "STEP_MAX_ROWS", 0)
    args, kw, bs = make_case(kernel, case, dtype=dtype)
    train = kernel(args, kw, bs)
    with torch.no_grad():
        infer = kernel(args, kw, bs)
    no_inputs_need_grad = kernel(*map_tensors(torch.Tensor.detach, args, kw), bs)
    assert ran(calls, kernel) == (3, 0)
    if kernel.train_flag:
        assert calls["train=True"] == 1 and calls["train=False"] == 2
    assert len(train) == len(infer) == len(no_inputs_need_grad) == kernel.outputs
    for a, b, c in zip(train, infer, no_inputs_need_grad):
        torch.testing.assert_close(b, a.detach(), rtol=0, atol=0)
        torch.testing.assert_close(c, a.detach(), rtol=0, atol=0)


# --- 6. fallback when the compiled loops cannot be had ---------------------------------------


@pytest.fixture
def fresh_build(monkeypatch):
    """`_native._build` with an empty cache of its own for the test (the session's, holding the
    loaded library, is put back afterwards with every other monkeypatch), so that the test's
    failed or skipped build is not what later tests get, and the library is not loaded twice."""
    monkeypatch.setattr(_native, "_build", functools.cache(_native._build.__wrapped__))
    return monkeypatch


@pytest.mark.parametrize("kernel", kernels())
def test_failed_build_warns_once_and_falls_back(kernel, fresh_build):
    """A build that fails (here: torch's extension loader raising) gives None with one
    RuntimeWarning that names RNNKIT_NATIVE, no further warning on later calls, and the kernel
    still runs, on the Python loops, equal to the step equations."""
    attempts = []

    def broken_load(*args, **kwargs):
        attempts.append(kwargs.get("name"))
        raise RuntimeError("Error building extension 'rnnkit_native': g++: not found")

    fresh_build.setattr(cpp_extension, "load", broken_load)
    with pytest.warns(RuntimeWarning, match="RNNKIT_NATIVE") as record:
        assert _native.ops(torch.zeros(1)) is None
    assert len(record) == 1 and "g++: not found" in str(record[0].message)
    assert len(attempts) == 1 and attempts[0].startswith("rnnkit_native_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning, no second attempt
        assert _native.ops(torch.zeros(1, dtype=D)) is None
        args, kw = make(kernel, 5, 4, P if kernel.projection else None, seed=3)
        inputs = leaves(args, kw)
        got = outputs_and_grads(kernel(args, kw, [4, 3, 3, 1, 1]), inputs)
    assert len(attempts) == 1
    want = outputs_and_grads(kernel(args, kw, [4, 3, 3, 1, 1], impl="loop"), inputs)
    assert_all_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kernel", kernels())
def test_rnnkit_native_0_never_builds(kernel, fresh_build):
    """RNNKIT_NATIVE=0: `ops` gives None without trying to build and without a warning."""
    attempts = []
    fresh_build.setattr(cpp_extension, "load", lambda *a, **k: attempts.append(k))
    fresh_build.setenv("RNNKIT_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.ops(torch.zeros(1)) is None
        args, kw = make(kernel, 3, 2)
        sum(o.sum() for o in kernel(args, kw)).backward()
    assert attempts == []


RELOAD = """
import contextlib

import torch
from rnnkit.cells.speed import native as _native
from rnnkit.cells.ln_lstm import ln_lstm

from torch.utils import cpp_extension

assert _native.ops(torch.zeros(1)) is not None, "no compiled loops"
# A second build must not bump torch's version of the extension: that builds (~20 s) and loads a
# second .so, whose ops registration aborts the process. Stop there, with the reason.
bump = cpp_extension.JIT_EXTENSION_VERSIONER.bump_version_if_changed
def checked_bump(*args, **kwargs):
    version = bump(*args, **kwargs)
    if version:
        raise SystemExit(f"torch bumped the extension to version {version}: args {args} {kwargs}")
    return version
cpp_extension.JIT_EXTENSION_VERSIONER.bump_version_if_changed = checked_bump
_native._build.cache_clear()
assert _native.ops(torch.zeros(1)) is torch.ops.rnnkit
libs = [p for p in torch.ops.loaded_libraries if "rnnkit_native" in p]
assert len(libs) == 1, libs
g = torch.Generator().manual_seed(0)
r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
args = [r(3, 2, 3), r(2, 4), r(2, 4), r(16, 3), r(16, 4), r(16), r(16)]
kw = dict(ln_ih=(r(16), r(16)), ln_hh=(r(16), r(16)), ln_c=(r(4), r(4)))
outs = []
for off in (False, True):
    with _native.disabled() if off else contextlib.nullcontext():
        y, h, c = ln_lstm(*args, **kw)
        outs.append([y, *torch.autograd.grad(y.sum() + c.sum(), args)])
for a, b in zip(*outs):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
print("ok")
"""


# torch.utils.cpp_extension.load extends the flag lists it is given; `_native` hands it copies, so
# a second `_build` asks for the same build and loads nothing new (a second library would register
# the ops again and abort the process).
def test_second_build_in_a_process_reuses_the_library():
    """`_build` run again in a process (its cache cleared) loads the same library, once, and the
    ops still agree with the Python loops. In a subprocess: a failure here can abort the process."""
    require_native()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", RELOAD]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


# --- 7. the build lock ------------------------------------------------------------------------


def test_build_lock_removes_stale_lock_and_excludes_others(tmp_path):
    """Inside `_build_lock`, a stale `lock` file of torch's is gone, the flock is held (another
    open file description cannot take it; a thread entering the lock waits), and on exit it is
    released."""
    fcntl = pytest.importorskip("fcntl")  # POSIX only
    (tmp_path / "lock").write_text("")
    entered = threading.Event()

    def other():
        with _native._build_lock(tmp_path):
            entered.set()

    with _native._build_lock(tmp_path):
        assert not (tmp_path / "lock").exists()
        with open(tmp_path / "rnnkit.lock") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        assert not entered.wait(0.2)  # blocked while this one holds the lock
    thread.join(5)
    assert entered.is_set() and not thread.is_alive()
    with open(tmp_path / "rnnkit.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
        fcntl.flock(f, fcntl.LOCK_UN)


def test_build_lock_released_on_error(tmp_path):
    """An exception inside the lock (a failed build) releases it."""
    fcntl = pytest.importorskip("fcntl")
    with pytest.raises(RuntimeError, match="build failed"), _native._build_lock(tmp_path):
        raise RuntimeError("build failed")
    with open(tmp_path / "rnnkit.lock") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)


# --- 8. the layer on packed sequences ---------------------------------------------------------


@pytest.mark.parametrize(("kernel", "proj_size"), kernel_projs(0, 2))
def test_layer_packed_bidirectional_stacked(kernel, proj_size, calls):
    """The kernel's layer (rnnkit.LSTM or GRU, layer_norm=True, and rnnkit.LSTM) with
    num_layers=2, bidirectional=True on an unsorted PackedSequence (batch sizes 4, 3, 3, 2, 1, 1:
    the longest sequence runs alone for two steps) from given initial states: outputs, final
    states and the gradients of the input, the initial states and every parameter are the same
    on the compiled loops as within `disabled()`."""
    torch.manual_seed(0)
    layer = kernel.layer(
        I, H, num_layers=2, bidirectional=True, dtype=D, **({"proj_size": proj_size} if proj_size else {})
    )
    with torch.no_grad():  # gains and shifts away from 1 and 0
        for name, p in layer.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 4, I, dtype=D, requires_grad=True)
    # (layers x directions, B, P) and (..., B, H)
    states = [torch.randn(4, 4, proj_size or H, dtype=D, requires_grad=True)]
    states += [torch.randn(4, 4, H, dtype=D, requires_grad=True)] if kernel.cell_state else []
    lengths = torch.tensor([3, 6, 1, 4])  # unsorted: the layer sorts
    params = list(layer.parameters())

    def run():
        y, final = layer(
            pack_padded_sequence(x, lengths, enforce_sorted=False),
            tuple(states) if kernel.cell_state else states[0],
        )
        final = final if kernel.cell_state else (final,)
        return outputs_and_grads((y.data, *final), [x, *states, *params])

    got, want = compiled_and_python(run)
    assert ran(calls, kernel) == (4, 4)  # 2 layers x 2 directions
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


# --- 7. the compiled single step (speed/cpp/step.cpp) -----------------------------------------


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(("in_size", "hidden"), [(5, 7), (33, 40)])
def test_compiled_lstm_step_equals_torchs_cell(rows, bias, in_size, hidden, calls):
    """The decoding step of an LSTM without gradients (`lstm_step` on the compiled `lstm_cell`)
    against torch.lstm_cell, float64 to 1e-12 and float32 to 1e-5; sizes that are not whole
    vectors (5, 7, 33) reach the loops' tails."""
    from rnnkit.cells.lstm import lstm_step

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        g = torch.Generator().manual_seed(rows)
        x, h, c = (torch.randn(rows, n, generator=g, dtype=dtype) for n in (in_size, hidden, hidden))
        w_ih, w_hh = (torch.randn(4 * hidden, n, generator=g, dtype=dtype) * 0.3 for n in (in_size, hidden))
        b_ih, b_hh = (torch.randn(4 * hidden, generator=g, dtype=dtype) if bias else None for _ in range(2))
        before = calls["lstm_cell"]
        with torch.no_grad():
            got = lstm_step(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        assert calls["lstm_cell"] == before + 1
        want = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_compiled_step_only_where_it_applies(calls):
    """A language model's decoding step runs the compiled LSTM step (no gradients, up to
    STEP_MAX_ROWS rows, the numbers of forward); with gradients wanted, with more rows, or with
    the compiled loops off, torch.lstm_cell."""
    from rnnkit.cells.lstm import STEP_MAX_ROWS
    from rnnkit.models import LanguageModel, LanguageModelConfig

    torch.manual_seed(0)
    model = (
        LanguageModel(LanguageModelConfig(11, embedding_dim=4, hidden_size=8, num_layers=2)).double().eval()
    )
    tokens = torch.randint(0, 11, (3, 5))
    with torch.no_grad():
        logits, _ = model(tokens)
        state = None
        for t in range(5):
            step_logits, state = model.step(tokens[:, t], state)
            torch.testing.assert_close(step_logits, logits[:, t], rtol=0, atol=1e-12)
    assert calls["lstm_cell"] == 5 * 2  # every step, both layers
    model.step(tokens[:, 0])  # gradients wanted: the parameters require them
    with torch.no_grad():
        model.step(torch.zeros(STEP_MAX_ROWS + 1, dtype=torch.long))
        with _native.disabled():
            model.step(tokens[:, 0])
    assert calls["lstm_cell"] == 5 * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sampling_draws_the_python_loops_tokens(dtype, calls):
    """`rnnkit.decoding.sample` over a language model of LSTM layers runs its whole loop compiled
    (`lstm_lm_sample`) and draws the very tokens of the Python loop over `step` (a seeded
    generator), at temperature 1 and not, batch 1 and 3, from a prefix and from a given state;
    with top-k, an end token, a GRU or in training it keeps the Python loop."""
    from rnnkit.decoding import sample
    from rnnkit.models import LanguageModel, LanguageModelConfig

    torch.manual_seed(0)
    config = LanguageModelConfig(13, embedding_dim=6, hidden_size=10, num_layers=2)
    model = LanguageModel(config).to(dtype).eval()

    def draw(step, prefix, **kw):
        return sample(step, prefix, 40, generator=torch.Generator().manual_seed(5), **kw)

    def python_step(token, state):  # not the model's bound method: no compiled loop
        return model.step(token, state)

    _, state = model(torch.randint(0, 13, (3, 4)))
    for prefix, kw in [
        (torch.tensor([[4]]), {}),
        (torch.randint(0, 13, (3, 5)), {"temperature": 0.7}),
        (torch.randint(0, 13, (3, 1)), {"state": state}),
    ]:
        before = calls["lstm_lm_sample"]
        got = draw(model.step, prefix, **kw)
        assert calls["lstm_lm_sample"] == before + 1
        assert torch.equal(got, draw(python_step, prefix, **kw))
    before = calls["lstm_lm_sample"]
    draw(model.step, torch.tensor([[4]]), top_k=5)
    draw(model.step, torch.tensor([[4]]), eos=0)
    gru = LanguageModel(LanguageModelConfig(13, embedding_dim=6, hidden_size=10, cell="gru")).eval()
    draw(gru.step, torch.tensor([[4]]))
    draw(model.train().step, torch.tensor([[4]]))
    assert calls["lstm_lm_sample"] == before
    with pytest.raises(rnnkit.RnnkitError, match="ids in 0..12"):
        draw(model.eval().step, torch.tensor([[13]]))


# --- 8. IndRNN's compiled loops (speed/cpp/indrnn.cpp) ---------------------------------------


@pytest.mark.parametrize("bs", [None, PACKED])
@pytest.mark.parametrize("grad_y", [True, False])
def test_compiled_indrnn_equals_its_python_loops(bs, grad_y, calls):
    """IndRNN's fused kernel on the compiled loops against its Python loops, float64: outputs and
    every gradient (x, h0, W_ih, b_ih, u) to 1e-12, packed batches included, with and without a
    gradient from the outputs y (only from h_n)."""
    from rnnkit.cells.indrnn import _IndRNNSequence

    T, B = 5, 4
    g = torch.Generator().manual_seed(3)
    leaves_ = [
        torch.randn(*shape, generator=g, dtype=D).requires_grad_()
        for shape in ((T, B, I), (B, H), (H, I), (H,), (H,))
    ]

    def run():
        x, h0, w, b, u = leaves_
        y, h = _IndRNNSequence.apply(x, h0, w, b, u.tanh(), bs)
        wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=D)
        loss = (h * h).sum() + ((y * wy).sum() if grad_y else 0)
        return (y.detach(), h.detach(), *torch.autograd.grad(loss, leaves_))

    got, want = compiled_and_python(run)
    assert (calls["indrnn_forward"], calls["indrnn_backward"]) == (1, 1)
    assert_all_close(got, want, rtol=0, atol=1e-12)


# --- 9. the peephole LSTM's compiled loops (speed/cpp/peephole.cpp) ---------------------------


@pytest.mark.parametrize("bs", [None, PACKED])
@pytest.mark.parametrize("grad_y", [True, False])
def test_compiled_peephole_equals_its_python_loops(bs, grad_y, calls):
    """The peephole LSTM's fused kernel on the compiled loops against its Python loops, float64:
    outputs and every gradient (x, h0, c0, W_ih, W_hh, bias, the three peepholes) to 1e-12,
    packed batches included, with and without a gradient from the outputs y."""
    from rnnkit.cells.peephole import _PeepholeSequence

    T, B = 5, 4
    g = torch.Generator().manual_seed(4)
    shapes = ((T, B, I), (B, H), (B, H), (4 * H, I), (4 * H, H), (4 * H,), (H,), (H,), (H,))
    leaves_ = [(torch.randn(*s, generator=g, dtype=D) * 0.5).requires_grad_() for s in shapes]

    def run():
        y, h, c = _PeepholeSequence.apply(*leaves_, bs)
        wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=D)
        loss = (h * h).sum() + c.sum() + ((y * wy).sum() if grad_y else 0)
        return (y.detach(), h.detach(), c.detach(), *torch.autograd.grad(loss, leaves_))

    got, want = compiled_and_python(run)
    assert (calls["peephole_forward"], calls["peephole_backward"]) == (1, 1)
    assert_all_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bs", [None, [3, 3, 2, 1, 1]])
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_rows_sequence_equals_the_kernel(bs, bias, calls):
    """An LSTM over a few rows without gradients runs `lstm_rows` (speed/cpp/step.cpp: one
    product for the input, W_hh packed once, a step per time step) with the numbers of the fused
    kernel and of the step equations (float64, 1e-12; packed batches keep their ended rows' state
    and output 0); with gradients wanted, or more than STEP_MAX_ROWS rows, the fused kernel."""
    from rnnkit.cells.lstm import STEP_MAX_ROWS, lstm

    g = torch.Generator().manual_seed(5)
    x, h0, c0 = (torch.randn(*s, generator=g, dtype=D) for s in ((5, 3, I), (3, H), (3, H)))
    w_ih, w_hh = (torch.randn(4 * H, n, generator=g, dtype=D) * 0.4 for n in (I, H))
    b_ih, b_hh = (torch.randn(4 * H, generator=g, dtype=D) if bias else None for _ in range(2))
    with torch.no_grad():
        got = lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=bs)
        assert calls["lstm_rows"] == 1 and calls["lstm_forward"] == 0
        want = lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=bs, impl="loop")
    assert_all_close(got, want, rtol=0, atol=1e-12)
    w_ih.requires_grad_()
    kernel = lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, batch_sizes=bs)  # gradients wanted
    assert calls["lstm_rows"] == 1 and calls["lstm_forward"] == 1
    assert_all_close([t.detach() for t in kernel], want, rtol=0, atol=1e-12)
    with torch.no_grad():
        wide = torch.randn(2, STEP_MAX_ROWS + 1, I, dtype=D)
        lstm(wide, None, None, w_ih, w_hh, b_ih, b_hh)
    assert calls["lstm_rows"] == 1 and calls["lstm_forward"] == 2


# --- 10. the packed GEMM itself (common.h `Packed`, through `packed_addmm`) --------------------


@pytest.mark.parametrize("rows", [1, 5, 8, 9, 17])
@pytest.mark.parametrize(("inner", "cols"), [(3, 7), (64, 256), (33, 100)])
def test_packed_gemm_equals_torchs(rows, inner, cols):
    """c += a w on the loops' packed GEMM against torch.addmm, float64 to 1e-12 and float32 to
    1e-4 relative: every tile height (8-row tiles and the rows left), columns that end a panel
    part way (7, 100), and a repeat (the weight packed once, used twice)."""
    require_native()
    lib = _native.ops(torch.zeros(1))
    g = torch.Generator().manual_seed(rows * inner)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        a, w, c = (
            torch.randn(*s, generator=g, dtype=dtype) for s in ((rows, inner), (inner, cols), (rows, cols))
        )
        got = c.clone()
        lib.packed_addmm(got, a, w, 2)
        torch.testing.assert_close(got, torch.addmm(torch.addmm(c, a, w), a, w), rtol=tol, atol=tol)


# --- 11. the Jordan network's compiled loops (speed/cpp/jordan.cpp; elman.cpp when folded) ---

JORDAN_ACTIVATIONS = [None, "tanh", "sigmoid", "relu", "softmax"]


@pytest.mark.parametrize("act", JORDAN_ACTIVATIONS)
@pytest.mark.parametrize("out_size", [2, 5])  # H = 6: folded (H <= 2 O) with the identity at 5
@pytest.mark.parametrize("bs", [None, PACKED])
@pytest.mark.parametrize("bias", [True, False])
def test_compiled_jordan_equals_its_python_loops(act, out_size, bs, bias, calls):
    """The Jordan network's fused kernel on the compiled loops against its Python loops, float64:
    outputs and every gradient (x, y0, W_ih, W_yh, b_h, W_hy, b_y) to 1e-12, every output
    activation, both forms (the folded one, identity output and H <= 2 O, runs the Elman RNN's
    compiled loops on W_yh W_hy; the stepwise one jordan.cpp's), packed batches included, with
    gradients from the outputs and from the last output."""
    from rnnkit.cells.jordan import folds

    T, B, O = 5, 4, out_size
    g = torch.Generator().manual_seed(6)
    shapes = ((T, B, I), (B, O), (H, I), (H, O), (H,), (O, H), (O,))
    leaves_ = [(torch.randn(*s, generator=g, dtype=D) * 0.5).requires_grad_() for s in shapes]

    def run():
        x, y0, w_ih, w_yh, b_h, w_hy, b_y = leaves_
        biases = (b_h, b_y) if bias else (None, None)
        y, y_n = functional.jordan(
            x, y0, w_ih, w_yh, biases[0], w_hy, biases[1], output_activation=act, batch_sizes=bs
        )
        wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=D)
        loss = (y * wy).sum() + (y_n * y_n).sum()
        wanted = [v for v in leaves_ if bias or v.dim() != 1]
        return (y.detach(), y_n.detach(), *torch.autograd.grad(loss, wanted))

    got, want = compiled_and_python(run)
    folded = folds(act, H, O)
    assert (calls["rnn_tanh_forward"], calls["rnn_tanh_backward"]) == ((1, 1) if folded else (0, 0))
    assert (calls["jordan_forward"], calls["jordan_backward"]) == ((0, 0) if folded else (1, 1))
    assert_all_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ["softmax", None])
def test_gradcheck_compiled_jordan(act, calls):
    """gradcheck of the Jordan kernel on the compiled loops (float64, packed batches): its
    gradients against finite differences, not only against the Python loops."""
    g = torch.Generator().manual_seed(7)
    T, B, O = 4, 3, 4
    shapes = ((T, B, I), (B, O), (H, I), (H, O), (H,), (O, H), (O,))
    leaves_ = [(torch.randn(*s, generator=g, dtype=D) * 0.5).requires_grad_() for s in shapes]
    fn = functools.partial(functional.jordan, output_activation=act, batch_sizes=[3, 2, 2, 1])
    assert torch.autograd.gradcheck(fn, leaves_)
    assert calls["jordan_backward"] + calls["rnn_tanh_backward"] > 0


# --- 12. the linear scan's compiled loop (speed/cpp/scan.cpp): minGRU/minLSTM, sequential ------


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 5), (40, 4, 300)])  # 1200 columns: several blocks
def test_compiled_linear_scan_equals_the_loop(reverse, shape, calls):
    """h_t = a_t h_{t-1} + b_t (or backwards in time) on the compiled loop against the Python
    loop, float64 to 1e-12 and float32 to 1e-5; out may be b itself."""
    from rnnkit.cells import scan as scan_mod

    g = torch.Generator().manual_seed(shape[0])
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a, b = (torch.rand(*shape, generator=g, dtype=dtype) for _ in range(2))
        h0 = torch.randn(*shape[1:], generator=g, dtype=dtype)
        got = scan_mod.scan(a, b, h0, mode="sequential", reverse=reverse)
        in_place = b.clone()
        scan_mod.scan(a, in_place, h0, mode="sequential", reverse=reverse, out=in_place)
        with _native.disabled():
            want = scan_mod.scan(a, b, h0, mode="sequential", reverse=reverse)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        torch.testing.assert_close(in_place, got, rtol=0, atol=0)
    assert calls["linear_scan"] == 4


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("log_space", [False, True])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_compiled_min_rnn_equals_its_python_loops(cell, log_space, mode, calls):
    """minGRU and minLSTM on the compiled scan against the Python loops, float64: outputs, final
    state and every gradient (x, h0, W_ih, b_ih) to 1e-12, packed batches, both modes (the
    parallel one's short scans and tails are loops too), values and log space."""
    T, B, G = 40, 4, 2 if cell == "gru" else 3
    g = torch.Generator().manual_seed(8)
    leaves_ = [
        (torch.randn(*s, generator=g, dtype=D) * 0.5).requires_grad_()
        for s in ((T, B, I), (B, H), (G * H, I), (G * H,))
    ]
    bs = [4] * 20 + [3] * 10 + [1] * 10

    def run():
        x, h0, w, b = leaves_
        h0 = h0.abs() + 0.1 if log_space else h0  # a log-space state is positive
        y, h = functional.min_rnn(x, h0, w, b, cell=cell, log_space=log_space, mode=mode, batch_sizes=bs)
        wy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=D)
        loss = (y * wy).sum() + (h * h).sum()
        return (y.detach(), h.detach(), *torch.autograd.grad(loss, leaves_))

    got, want = compiled_and_python(run)
    assert calls["linear_scan"] > 0
    assert_all_close(got, want, rtol=0, atol=1e-12)
