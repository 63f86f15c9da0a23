"""Where the main job's training step spends its time, and what the weight gradients would cost
on oneDNN: the figures behind docs/benchmarks.md's "main job" limit (not part of `make bench`).

1. torch.profiler over `bench_mainjob.train_step` (rnnkit's model, 1x256 or --hidden-size),
   by op and input shape, beside the step's median time for rnnkit and torch.nn.
2. The weight gradients d^T A over N = T*B rows (d the gates' gradient (N, 4H), A the inputs
   (N, K)) on MKL (`torch.mm(d.t(), A)`, what the kernels use), and on oneDNN's linear, which
   needs both operands transposed: with torch's transposes, and from operands already
   transposed (what a backward loop writing d^T as it goes would give).

    python benchmarks/mainjob_breakdown.py [--hidden-size 256]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import profile

from bench_mainjob import TorchModel, train_step
from rnnkit.models import LanguageModel, LanguageModelConfig


def median_ms(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


def profile_step(hidden: int) -> None:
    torch.manual_seed(0)
    config = LanguageModelConfig(100, embedding_dim=64, hidden_size=hidden, num_layers=1, dropout=0.0)
    ours = LanguageModel(config)
    theirs = TorchModel(ours)
    tokens = torch.randint(0, 100, (32, 101))
    opt_ours, opt_theirs = (torch.optim.Adam(m.parameters(), 1e-3) for m in (ours, theirs))
    for name, model, opt in (("rnnkit", ours, opt_ours), ("torch.nn", theirs, opt_theirs)):
        print(f"{name}: {median_ms(lambda m=model, o=opt: train_step(m, o, tokens), 20):.1f} ms a step")
    with profile(record_shapes=True) as prof:
        for _ in range(10):
            train_step(ours, opt_ours, tokens)
    print("rnnkit's step, 10 steps (divide by 10 for one):")
    table = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=30, max_shapes_column_width=70
    )
    print(table)


def weight_grads(hidden: int) -> None:
    lin = torch.ops.mkldnn._linear_pointwise
    N, G = 3200, 4 * hidden
    g = torch.Generator().manual_seed(0)
    d = torch.randn(N, G, generator=g)
    print(f"weight gradients over N={N} rows, ms (median):")
    print("| (G, K) | MKL mm(d^T, A) | oneDNN, torch's transposes | oneDNN, transposed | transpose of d |")
    print("|---|---|---|---|---|")
    d_t = d.t().contiguous()
    d_t_buffer = torch.empty_like(d_t)
    for K in (64, hidden):
        a = torch.randn(N, K, generator=g)
        a_t = a.t().contiguous()
        mkl = median_ms(lambda a=a: torch.mm(d.t(), a))
        both = median_ms(lambda a=a: lin(d.t().contiguous(), a.t().contiguous(), None, "none", [], ""))
        ready = median_ms(lambda a_t=a_t: lin(d_t, a_t, None, "none", [], ""))
        transpose = median_ms(lambda: d_t_buffer.copy_(d.t()))
        print(f"| ({G}, {K}) | {mkl:.2f} | {both:.2f} | {ready:.2f} | {transpose:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden-size", type=int, default=256)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    profile_step(args.hidden_size)
    weight_grads(args.hidden_size)


if __name__ == "__main__":
    main()
