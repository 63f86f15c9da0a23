"""What bounds a fused kernel written as eager torch ops at small sizes: the cost of each op of a
step, measured alone. The per-op figures quoted in docs/benchmarks.md come from this script, as
do the page faults of a layer-norm LSTM training step with the kernels' buffer pool on and off,
torch's tanh against the sigmoid form the kernels use, and whether a second thread hides a
kernel's whole-sequence work behind its loop.

    python benchmarks/op_floor.py
"""

from __future__ import annotations

import statistics
import time

import torch


def per_call_us(fn, n: int = 2000) -> float:
    for _ in range(50):
        fn()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def row(B: int, H: int, G: int) -> str:
    h, a = torch.randn(B, H), torch.randn(B, H)
    w_t, add, out = torch.randn(H, G * H), torch.randn(B, G * H), torch.empty(B, G * H)
    gemm = per_call_us(lambda: torch.addmm(add, h, w_t, out=out))
    flops = 2 * B * H * G * H / gemm / 1e3
    return (
        f"B={B:3d} H={H:3d} G={G}: addmm (B,H)x(H,{G}H) {gemm:6.1f} us ({flops:5.1f} GFLOP/s), "
        f"tanh_ (B,H) {per_call_us(lambda: a.tanh_()):5.1f} us, "
        f"sigmoid_ (B,H) {per_call_us(lambda: a.sigmoid_()):5.1f} us, "
        f"mul (B,H) {per_call_us(lambda: torch.mul(a, a, out=a)):4.1f} us, "
        f"{layer_norm(out)}"
    )


def layer_norm(v: torch.Tensor) -> str:
    """The layer norm of a (B, N) pre-activation with a gain, and its backward (input gradient
    only), as the LN kernels call them, and the cost of one per-step view (a sequence's unbind)."""
    N = v.shape[1]
    gain = torch.ones(N)
    _, mean, rstd = torch.native_layer_norm(v, (N,), gain, None, 1e-5)
    back = torch.ops.aten.native_layer_norm_backward
    fwd = per_call_us(lambda: torch.native_layer_norm(v, (N,), gain, None, 1e-5))
    bwd = per_call_us(lambda: back(v, v, (N,), mean, rstd, gain, None, (True, False, False)))
    seq = torch.empty(1000, *v.shape)
    with torch.no_grad():  # as inside a kernel (an autograd.Function runs with grad mode off)
        view = per_call_us(lambda: seq.unbind(0), n=50) / 1000
    return f"layer norm (B,{N}) {fwd:4.1f} us, its backward {bwd:4.1f} us, a per-step view {view:4.2f} us"


def tanh_costs(shapes=((16, 64), (32, 128), (64, 256), (128, 512))) -> str:
    """torch's tanh against 2 sigmoid(2v) - 1 (a sigmoid and one add, as the fused kernels compute
    it on CPU, `rnnkit.cells.speed.tanh.Tanh`; the 2v comes free from doubled weights), out of place
    on fresh operands each call."""
    from rnnkit.cells.speed.tanh import Tanh

    parts = []
    for B, H in shapes:
        v, out = torch.randn(B, H) * 2, torch.empty(B, H)
        tanh_ = Tanh(v)
        t = per_call_us(lambda v=v, out=out: torch.tanh(v, out=out))
        s = per_call_us(lambda v=v, out=out, tanh_=tanh_: tanh_.into(v, out))
        parts.append(f"{B}x{H} {t:.1f} us vs {s:.1f} us")
    return "tanh against sigmoid + add: " + ", ".join(parts)


def second_thread(T: int = 1000, B: int = 16, H: int = 64, runs: int = 5) -> str:
    """A step loop of small ops (an LN-LSTM backward step's kinds) and the whole-sequence work a
    kernel does after it (an LN backward over all steps, three (T*B)-row GEMMs), run one after
    the other and then with the whole-sequence work on a second thread during the loop: whether
    the second core can hide it (ms, medians)."""
    import threading

    a, w, b = torch.randn(B, 4 * H), torch.randn(4 * H, H), torch.randn(B, H)
    o = torch.empty(B, H)
    gain = torch.ones(4 * H)
    _, mean, rstd = torch.native_layer_norm(a, (4 * H,), gain, None, 1e-5)
    back = torch.ops.aten.native_layer_norm_backward

    def loop():
        for _ in range(T):
            torch.addmm(o, a, w, out=o)
            back(a, a, (4 * H,), mean, rstd, gain, None, (True, False, False))
            for _ in range(6):
                torch.mul(b, o, out=o)

    D, X, Y = torch.randn(T * B, 4 * H), torch.randn(T * B, 4 * H), torch.randn(T * B, H)
    _, xm, xr = torch.native_layer_norm(X, (4 * H,), gain, None, 1e-5)

    def bulk():
        d = back(D, X, (4 * H,), xm, xr, gain, None, (True, True, False))[0]
        torch.mm(d, w), torch.mm(d.t(), Y), torch.mm(D.t(), Y)

    def overlapped():
        worker = threading.Thread(target=bulk)
        worker.start()
        loop()
        worker.join()

    fns = {"loop": loop, "bulk": bulk, "both": lambda: (loop(), bulk()), "threads": overlapped}
    times = {name: [] for name in fns}
    for _ in range(runs + 1):  # the first round warms up
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {name: statistics.median(t[1:]) for name, t in times.items()}
    return (
        f"loop {ms['loop']:.1f} ms, whole-sequence work {ms['bulk']:.1f} ms: one after the other "
        f"{ms['both']:.1f} ms, on a second thread {ms['threads']:.1f} ms"
    )


def pool_faults(T: int = 1000, B: int = 16, H: int = 64, runs: int = 7) -> str:
    """Page faults and median time of an LN-LSTM training step with the buffer pool on, then off
    (`rnnkit.cells.set_workspace_limit(0)`). Not interleaved: turning the pool off drops what it
    holds, so each setting runs as a block after its own warm-up."""
    import resource

    import rnnkit

    torch.manual_seed(0)
    m = rnnkit.LSTM(H, H, layer_norm=True)
    x = torch.randn(T, B, H, requires_grad=True)
    on = rnnkit.cells.speed.workspace.limit()
    parts = []
    for name, limit in (("pool on", on), ("pool off", 0)):
        rnnkit.cells.set_workspace_limit(limit)
        faults, times = [], []
        for i in range(runs + 2):
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            y, (h, _) = m(x)
            (y.sum() + h.sum()).backward()
            del y, h
            if i >= 2:  # after warm-up
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                times.append(time.perf_counter() - t0)
        parts.append(
            f"{name}: {statistics.median(faults):.0f} page faults, {statistics.median(times) * 1e3:.1f} ms"
        )
    rnnkit.cells.set_workspace_limit(on)
    return f"LN-LSTM training step T={T} B={B} H={H}: " + "; ".join(parts)


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    # What a full collection of Python's cycle collector costs with torch (and rnnkit) imported:
    # why the fused kernels pause it (rnnkit.cells.speed.gc_pause.without_cycle_gc).
    import gc

    import rnnkit  # noqa: F401  (its objects are on the heap in real use)

    full = per_call_us(lambda: gc.collect(), n=5) / 1e3
    print(f"a full cycle collection: {full:.0f} ms over {len(gc.get_objects())} tracked objects")
    print(pool_faults())
    print(tanh_costs())
    print(second_thread())
    for B, H in ((1, 128), (16, 64), (32, 128), (64, 256)):
        for G in (1, 3, 4):
            print(row(B, H, G))


if __name__ == "__main__":
    main()
