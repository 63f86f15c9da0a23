"""The compiled CPU loops of the layer-norm LSTM (`rnnkit.cells._native`, `native/ln_lstm.cpp`):
against the Python loops they replace and against the step equations, gradcheck, that they are
used where they should be (and only there), the fallback when they cannot be built, and the build
lock.

Every test that compares the compiled loops with something asserts, through `calls`, that the
compiled ops really ran (forward and backward), so that none of them passes by comparing the
Python loops with themselves."""

import functools
import os
import subprocess
import sys
import threading
import warnings
from collections import Counter

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.utils import cpp_extension

import rnnkit
from rnnkit.cells import _native
from rnnkit.cells.ln_lstm import ln_lstm

D = torch.float64
I, H, P = 3, 6, 4

# --- helpers ----------------------------------------------------------------------------------


def make(T=5, B=4, proj=None, *, dtype=D, seed=0, bias=True, strided=False):
    """(positional args, keywords) of `ln_lstm`: x, h0, c0, w_ih, w_hh, b_ih, b_hh and ln_ih,
    ln_hh, ln_c, w_hr, all random leaves requiring grad (LN gains near 1, shifts away from 0, so
    that a swapped gain or shift shows). `strided`: every leaf a non-contiguous view."""
    g = torch.Generator().manual_seed(seed)
    out = proj or H

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

    args = [rand(T, B, I), rand(B, out), rand(B, H), rand(4 * H, I), rand(4 * H, out)]
    args += [rand(4 * H), rand(4 * H)] if bias else [None, None]
    kw = {
        "ln_ih": (rand(4 * H, scale=0.2, offset=1), rand(4 * H)),
        "ln_hh": (rand(4 * H, scale=0.2, offset=1), rand(4 * H)),
        "ln_c": (rand(H, scale=0.2, offset=1), rand(H)),
        "w_hr": rand(proj, H) if proj else None,
    }
    return args, kw


def leaves(args, kw):
    """Every input and parameter that is a tensor: x, h0, c0, weights, biases, the three LN
    (gain, shift) pairs, w_hr."""
    flat = list(args) + [t for v in kw.values() for t in (v if isinstance(v, tuple) else (v,))]
    return [t for t in flat if t is not None and t.requires_grad]


def outputs_and_grads(outs, inputs, loss="weighted"):
    """(y, h_n, c_n, dL/d every input): "weighted" sums each output times fixed random weights
    (contiguous, all-different gradients at every output), "sum" is y.sum() + ... (expanded,
    zero-stride gradients), "y" uses y alone (h_n and c_n get no gradient)."""
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


class _Counting:
    """torch.ops.rnnkit with a count of the calls of each op (and the `train` flags passed)."""

    def __init__(self, lib, counts):
        self._lib, self._counts = lib, counts

    def __getattr__(self, name):
        op = getattr(self._lib, name)

        def counted(*args, **kwargs):
            self._counts[name] += 1
            if name == "ln_lstm_forward":
                self._counts[f"train={args[-1]}"] += 1
            return op(*args, **kwargs)

        return counted


@pytest.fixture
def calls(monkeypatch):
    """A Counter of the compiled ops' calls; fails the test at once if they are unavailable."""
    require_native()
    counts = Counter()
    real = _native.ops

    def ops(like):
        lib = real(like)
        return None if lib is None else _Counting(lib, counts)

    monkeypatch.setattr(_native, "ops", ops)
    return counts


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

CASES = {  # name: (T, B, proj, batch_sizes, make's keywords)
    "plain": (5, 4, None, None, {}),
    "packed": (5, 4, None, [4, 4, 3, 1, 1], {}),
    "proj": (5, 4, P, None, {}),
    "proj_packed": (5, 4, P, [4, 4, 3, 1, 1], {}),
    "B1": (5, 1, None, None, {}),
    "B1_proj": (5, 1, P, None, {}),
    "T1": (1, 4, None, None, {}),
    "T1_proj_packed": (1, 4, P, [4], {}),
    "tail_of_single_rows": (6, 3, None, [3, 1, 1, 1, 1, 1], {}),
    "tail_of_single_rows_proj": (6, 3, P, [3, 2, 1, 1, 1, 1], {}),
    "no_bias": (5, 4, None, [4, 3, 3, 2, 1], {"bias": False}),
    "strided_inputs": (5, 4, P, [4, 4, 3, 1, 1], {"strided": True}),
    "proj_wider_than_hidden": (4, 3, 2 * H, [3, 2, 2, 1], {}),
}


def cases(*names):
    """Parameters for the CASES named (all by default)."""
    return list(names or CASES)


@pytest.mark.parametrize("loss", ["weighted", "sum", "y"])
@pytest.mark.parametrize("case", cases())
def test_compiled_equals_python_float64(case, loss, calls):
    """float64: y, h_n, c_n and the gradient of every input and parameter (x, h0, c0, W_ih, W_hh,
    both biases, the three LN gains and shifts, W_hr) from the compiled loops agree with the
    Python loops' to rounding (1e-12), with and without lengths and a projection, at B=1, T=1
    and with single-row tails; for gradients arriving dense, expanded (zero-stride) or only at y."""
    T, B, proj, bs, opts = CASES[case]
    args, kw = make(T, B, proj, **opts)
    inputs = leaves(args, kw)

    def run():
        return outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=bs), inputs, loss)

    got, want = compiled_and_python(run)
    assert calls["ln_lstm_forward"] == 1 and calls["ln_lstm_backward"] == 1
    assert len(got) == 3 + len(inputs)
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", cases("plain", "proj_packed", "tail_of_single_rows", "B1", "T1"))
def test_compiled_equals_python_float32(case, calls):
    """float32: the same comparison at float32 rounding (rtol 1e-4, atol 1e-5)."""
    T, B, proj, bs, opts = CASES[case]
    args, kw = make(T, B, proj, dtype=torch.float32, **opts)
    inputs = leaves(args, kw)
    got, want = compiled_and_python(lambda: outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=bs), inputs))
    assert calls["ln_lstm_forward"] == 1 and calls["ln_lstm_backward"] == 1
    assert got[0].dtype == torch.float32
    assert_all_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["T1", "T1_proj_packed"])
def test_compiled_equals_python_single_step(case, calls):
    """T=1 (one step, no recurrence into a second one) with W_hh not requiring grad, which
    steps around the T=1 bug above: outputs and the other gradients, compiled == Python."""
    T, B, proj, bs, opts = CASES[case]
    args, kw = make(T, B, proj, **opts)
    args[4] = args[4].detach()  # W_hh
    inputs = leaves(args, kw)
    got, want = compiled_and_python(lambda: outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=bs), inputs))
    assert calls["ln_lstm_forward"] == 1 and calls["ln_lstm_backward"] == 1
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)


# --- 2. compiled loops == the step equations under autograd ---------------------------------


@pytest.mark.parametrize("proj", [None, P])
@pytest.mark.parametrize("bs", [None, [4, 4, 3, 1, 1]])
def test_compiled_equals_step_equations(bs, proj, calls):
    """The fused kernel on the compiled loops against `impl="loop"` (the step equations under
    autograd), float64: outputs and every gradient to 1e-10."""
    args, kw = make(5, 4, proj, seed=1)
    inputs = leaves(args, kw)
    got = outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=bs, impl="fused"), inputs)
    assert calls["ln_lstm_forward"] == 1 and calls["ln_lstm_backward"] == 1
    want = outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=bs, impl="loop"), inputs)
    assert calls["ln_lstm_forward"] == 1  # the loop does not go through the kernel
    assert_all_close(got, want, rtol=0, atol=1e-10)


# --- 3. gradcheck -----------------------------------------------------------------------------


@pytest.mark.parametrize("proj", [None, 2])
@pytest.mark.parametrize("bs", [None, [3, 2, 1]])
def test_gradcheck_compiled(bs, proj, calls):
    """torch.autograd.gradcheck (float64, full Jacobian) of the fused kernel on the compiled
    loops, with respect to every input and parameter."""
    args, kw = make(3, 3, proj, seed=2)
    inputs = leaves(args, kw)
    structure = [t is not None for t in args] + [kw["w_hr"] is not None]

    def f(*flat):
        it = iter(flat)
        a = [next(it) if present else None for present in structure[:7]]
        k = {s: (next(it), next(it)) for s in ("ln_ih", "ln_hh", "ln_c")}
        k["w_hr"] = next(it) if structure[7] else None
        return ln_lstm(*a, **k, batch_sizes=bs)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert calls["ln_lstm_forward"] > 1 and calls["ln_lstm_backward"] > 1


# --- 4. where the compiled loops apply --------------------------------------------------------


def test_compiled_loops_are_built_and_used_on_cpu():
    """On CPU in float32 and float64 the compiled loops load (this fails if they cannot be built:
    CI has g++ and ninja) and hold both ops; float16, bfloat16, integers and other devices get
    None, and so does everything inside `disabled()` (nested too), until it exits."""
    require_native()
    for dtype in (torch.float32, torch.float64):
        lib = _native.ops(torch.zeros(1, dtype=dtype))
        assert lib is not None
        assert callable(lib.ln_lstm_forward) and callable(lib.ln_lstm_backward)
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        assert _native.ops(torch.zeros(1, dtype=dtype)) is None
    assert _native.ops(torch.zeros(1, device="meta")) is None
    with _native.disabled():
        assert _native.ops(torch.zeros(1)) is None
        with _native.disabled():
            assert _native.ops(torch.zeros(1, dtype=D)) is None
        assert _native.ops(torch.zeros(1)) is None
    assert _native.ops(torch.zeros(1)) is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_calls_the_compiled_loops(dtype, calls):
    """ln_lstm on CPU calls the compiled forward and backward, once each, and never inside
    `disabled()`; the layer does too."""
    args, kw = make(4, 2, dtype=dtype)
    y, h, c = ln_lstm(*args, **kw)
    (y.sum() + h.sum() + c.sum()).backward()
    assert calls == Counter({"ln_lstm_forward": 1, "ln_lstm_backward": 1, "train=True": 1})
    with _native.disabled():
        y, h, c = ln_lstm(*args, **kw)
        (y.sum() + h.sum() + c.sum()).backward()
    assert calls["ln_lstm_forward"] == 1 and calls["ln_lstm_backward"] == 1
    layer = rnnkit.LSTM(I, H, layer_norm=True, dtype=dtype)
    layer(torch.randn(3, 2, I, dtype=dtype))[0].sum().backward()
    assert calls["ln_lstm_forward"] == 2 and calls["ln_lstm_backward"] == 2


# --- 5. inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["plain", "proj_packed", "tail_of_single_rows", "T1"])
def test_no_grad_forward_equals_training_forward(case, dtype, calls):
    """Under torch.no_grad() (and with no input requiring grad) the compiled forward skips the
    backward's factors; its outputs are exactly those of a training forward."""
    T, B, proj, bs, opts = CASES[case]
    args, kw = make(T, B, proj, dtype=dtype, **opts)
    train = ln_lstm(*args, **kw, batch_sizes=bs)
    assert calls["train=True"] == 1
    with torch.no_grad():
        infer = ln_lstm(*args, **kw, batch_sizes=bs)
    assert calls["train=False"] == 1
    detached = [a if a is None else a.detach() for a in args]
    kw_detached = {k: (tuple(t.detach() for t in v) if isinstance(v, tuple) else v) for k, v in kw.items()}
    kw_detached["w_hr"] = None if kw["w_hr"] is None else kw["w_hr"].detach()
    no_inputs_need_grad = ln_lstm(*detached, **kw_detached, batch_sizes=bs)
    assert calls["train=False"] == 2 and calls["ln_lstm_forward"] == 3
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


def test_failed_build_warns_once_and_falls_back(fresh_build):
    """A build that fails (here: torch's extension loader raising) gives None with one
    RuntimeWarning that names RNNKIT_NATIVE, no further warning on later calls, and ln_lstm
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
        args, kw = make(5, 4, P, seed=3)
        inputs = leaves(args, kw)
        got = outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=[4, 3, 3, 1, 1]), inputs)
    assert len(attempts) == 1
    want = outputs_and_grads(ln_lstm(*args, **kw, batch_sizes=[4, 3, 3, 1, 1], impl="loop"), inputs)
    assert_all_close(got, want, rtol=0, atol=1e-10)


def test_rnnkit_native_0_never_builds(fresh_build):
    """RNNKIT_NATIVE=0: `ops` gives None without trying to build and without a warning."""
    attempts = []
    fresh_build.setattr(cpp_extension, "load", lambda *a, **k: attempts.append(k))
    fresh_build.setenv("RNNKIT_NATIVE", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _native.ops(torch.zeros(1)) is None
        args, kw = make(3, 2)
        y, h, c = ln_lstm(*args, **kw)
        (y.sum() + c.sum()).backward()
    assert attempts == []


RELOAD = """
import contextlib

import torch
from rnnkit.cells import _native
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


@pytest.mark.parametrize("proj_size", [0, 2])
def test_layer_packed_bidirectional_stacked(proj_size, calls):
    """rnnkit.LSTM(layer_norm=True, num_layers=2, bidirectional=True) on an unsorted
    PackedSequence (batch sizes 4, 3, 3, 2, 1, 1: the longest sequence runs alone for two steps)
    from given initial states: outputs, final states and the gradients of the input, the initial
    states and every parameter are the same on the compiled loops as within `disabled()`."""
    torch.manual_seed(0)
    layer = rnnkit.LSTM(I, H, layer_norm=True, num_layers=2, bidirectional=True, proj_size=proj_size, dtype=D)
    with torch.no_grad():  # gains and shifts away from 1 and 0
        for name, p in layer.named_parameters():
            if name.startswith("layer_norm_"):
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(6, 4, I, dtype=D, requires_grad=True)
    h0 = torch.randn(4, 4, proj_size or H, dtype=D, requires_grad=True)  # (layers x directions, B, P)
    c0 = torch.randn(4, 4, H, dtype=D, requires_grad=True)
    lengths = torch.tensor([3, 6, 1, 4])  # unsorted: the layer sorts
    params = list(layer.parameters())

    def run():
        y, (h, c) = layer(pack_padded_sequence(x, lengths, enforce_sorted=False), (h0, c0))
        return outputs_and_grads((y.data, h, c), [x, h0, c0, *params])

    got, want = compiled_and_python(run)
    assert calls["ln_lstm_forward"] == 4 and calls["ln_lstm_backward"] == 4  # 2 layers x 2 directions
    assert_all_close(got, want, rtol=1e-10, atol=1e-12)
