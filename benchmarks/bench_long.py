"""A long sequence (T=100,000, B=1, I=H=64): one LSTM training step (forward + backward of
y.sum() + h_n.sum()) and its peak memory, rnnkit.LSTM against torch.nn.LSTM with the same
weights, float32.

Each side runs in a fresh process of its own (so that neither inherits the other's freed memory)
for `--rounds` rounds, alternating; a process builds the layer and the input, notes its resident
memory, runs warm-up and timed steps, and reports the median time and the rise of its peak
resident memory (ru_maxrss) over that baseline: what the step needs beyond its input and weights.

    python benchmarks/bench_long.py [--T 100000] [--rounds 3] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from _harness import compiled_loops, stamped, write_section

HEADING = "## Long sequences (`benchmarks/bench_long.py`)"


def rss_mib() -> float:
    """This process's resident memory now, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(side: str, T: int, B: int, H: int, steps: int) -> dict:
    import torch

    import rnnkit

    torch.manual_seed(0)
    ref = torch.nn.LSTM(H, H)
    layer = ref if side == "torch" else rnnkit.LSTM(H, H)
    if side != "torch":
        layer.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, H, requires_grad=True)
    base = rss_mib()

    def step():
        y, (h, _) = layer(x)
        (y.sum() + h.sum()).backward()

    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB, over all steps
    return {"ms": statistics.median(times) * 1e3, "peak_mib": peak - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=100_000)
    parser.add_argument("--B", type=int, default=1)
    parser.add_argument("--H", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.T, args.B, args.H, args.steps)))
        return
    runs = {"rnnkit": [], "torch": []}
    for _ in range(args.rounds):
        for side in runs:
            cmd = [sys.executable, __file__, "--worker", side, "--T", str(args.T), "--B", str(args.B)]
            cmd += ["--H", str(args.H), "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[side].append(json.loads(out.strip().splitlines()[-1]))
    med = {s: {k: statistics.median(r[k] for r in v) for k in ("ms", "peak_mib")} for s, v in runs.items()}
    import torch

    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32; {compiled_loops()}"
    lines = [
        "| T | B | I=H | | step ms | peak memory over the input, MiB |",
        "|---|---|---|---|---|---|",
        *(
            f"| {args.T} | {args.B} | {args.H} | {side} | {m['ms']:.0f} | {m['peak_mib']:.0f} |"
            for side, m in med.items()
        ),
        f"| | | | torch / rnnkit | {med['torch']['ms'] / med['rnnkit']['ms']:.2f}x | "
        f"{med['torch']['peak_mib'] / med['rnnkit']['peak_mib']:.2f}x |",
    ]
    print(header)
    print("\n".join(lines))
    if args.out:
        write_section(
            args.out,
            "<!-- bench: long begin -->",
            "<!-- bench: long end -->",
            HEADING,
            stamped(header, lines),
        )


if __name__ == "__main__":
    main()
