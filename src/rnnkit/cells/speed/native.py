"""Compiled loops over time for CPU (`cpp/*.cpp`), built on this machine on first use.

Why: at small sizes a step of a fused kernel's Python loop costs its ~20 eager ops (1-7 us each,
`python benchmarks/op_floor.py`), not its arithmetic. A compiled loop makes a step one GEMM and
one pass over each row; the GEMM is our own (`Packed` in cpp/common.h: the weight packed once a
call, register tiles), 1.3-2x torch.addmm (MKL) on these few-row products here, which
makes the compiled loops the faster ones at every size measured (`benchmarks/bench_native.py`).
Only the loops are compiled; everything done for all steps at once (input projection, weight
gradients, layer-norm parameter gradients) stays in the Python kernel, which also keeps its own
loops as the reference and as the path wherever the compiled one does not apply (another device
or dtype, no compiler). step.cpp holds the decoding side: one LSTM step for a few rows, and a
language model's whole sampling loop.

Built with torch's C++ extension tools (a C++17 compiler and ninja), for this machine's CPU
(-march=native: the binary's name carries a digest of the sources and their folder, the flags, the
torch version and the CPU, so a cache shared between machines or installs cannot load the wrong
one), into torch's extension cache
(TORCH_EXTENSIONS_DIR, ~/.cache/torch_extensions by default): a minute or two once, then a load.
If the build fails, rnnkit warns once and runs the Python loops; set RNNKIT_NATIVE=0 to never try.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import sys
import threading
import warnings
from pathlib import Path

import torch

from rnnkit.cells import speed
from rnnkit.cells.speed import tanh

_DIR = Path(__file__).with_name("cpp")
SOURCES = sorted(_DIR.glob("*.cpp"))  # a family's loops, and step.cpp, the decoding side
HEADERS = [_DIR / "common.h"]
# -fno-math-errno lets the loops call the vector variants of exp (native/common.h says why not
# -ffast-math); -fopenmp for their `omp simd` pragmas and torch's at::parallel_for, whose OpenMP
# runtime is then torch's own (libgomp.so.1, already loaded by torch, is reused by its soname).
CFLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
DTYPES = (torch.float32, torch.float64)

_lock = threading.Lock()


def _digest() -> str:
    h = hashlib.sha256()
    # the sources' folder too: torch's build files name the sources by path, so two installs
    # (checkouts, environments) sharing one build folder would rebuild it in turn, each time
    # the other had built it
    h.update(str(_DIR.resolve()).encode())
    for src in SOURCES + HEADERS:
        h.update(src.read_bytes())
    h.update(" ".join(CFLAGS + LDFLAGS).encode())
    h.update(torch.__version__.encode())
    h.update(platform.machine().encode())
    try:  # the CPU's feature flags: -march=native builds for exactly these
        flags = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")]
        h.update((flags[0] if flags else "").encode())
    except OSError:
        h.update(platform.processor().encode())
    return h.hexdigest()[:12]


@functools.cache
def _build():
    """torch.ops.rnnkit after building (or loading) the library, or None (with one warning)."""
    if os.environ.get("RNNKIT_NATIVE", "1") == "0":
        return None
    try:
        from torch.utils import cpp_extension

        name = f"rnnkit_native_{_digest()}"
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
        with _build_lock(build_dir):
            if not (build_dir / f"{name}.so").exists():  # a first build: say why the pause
                print(
                    "rnnkit: compiling its CPU loops for this machine (once, a minute or two; "
                    "RNNKIT_NATIVE=0 skips them)",
                    file=sys.stderr,
                    flush=True,
                )
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in SOURCES],
                # copies: torch extends the lists it is given, and a second build in the process
                # with other flags would load a second library, whose op registration aborts
                extra_cflags=list(CFLAGS),
                extra_ldflags=list(LDFLAGS),
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
        return torch.ops.rnnkit
    except Exception as e:  # no compiler, no ninja, a failed build: the Python loops serve
        warnings.warn(
            f"rnnkit: compiled CPU loops unavailable ({type(e).__name__}: ...{str(e).strip()[-400:]}); "
            "using the Python loops, which give the same results more slowly. Set RNNKIT_NATIVE=0 "
            "to skip the attempt.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


@contextlib.contextmanager
def _build_lock(build_dir: Path):
    """One build at a time across processes, by a lock the OS drops when its holder dies.

    torch's own lock is a file that exists while a build runs; a build killed half way (an
    interrupted first call) leaves it behind, and every later load waits on it forever. Under
    this lock nobody else is building, so such a file is stale and removed."""
    try:
        import fcntl
    except ImportError:  # not POSIX: torch's lock alone
        yield
        return
    with open(build_dir / "rnnkit.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ops(like: torch.Tensor):
    """The compiled ops for kernels whose buffers are like `like`, or None where they do not
    apply: not CPU, not float32/float64, disabled, or the build failed. The compiled loops take
    every tanh from a sigmoid, so they also need the kernels to prepare their pre-activations that
    way (`speed.tanh.Tanh`, on by default on CPU; tests turn it off to run torch's tanh). Not
    while dynamo traces (the ops have no fake implementation; a traced layer runs its kernel
    inside one opaque op, `rnnkit.cells.traced`, where they apply again)."""
    if like.device.type != "cpu" or like.dtype not in DTYPES or torch.compiler.is_compiling():
        return None
    if not (speed.on("native") and speed.on("sigmoid_tanh")) or like.device.type not in tanh.TANH_VIA_SIGMOID:
        return None
    with _lock:  # one build per process, even from several threads
        return _build()


def disabled():
    """Context manager: the Python loops everywhere inside (the tests' reference path); the
    "native" switch of `rnnkit.cells.speed` for a block."""
    return speed.off("native")
