"""Sampling throughput, batch 1: what `rnnkit sample` does (`rnnkit.decoding.sample` over
`LanguageModel.step`) against a loop over torch.nn.LSTMCell with the same weights (embedding,
cell, output layer, softmax, a multinomial draw per character), side by side in one process,
rounds interleaved. Both draw the same characters from the same generator (checked).

    python benchmarks/bench_sample.py [--chars 2000] [--rounds 5] [--out docs/benchmarks.md]

Rows: charlm's default model (embedding 64, 1x512 LSTM, ~100 characters) and the old 1x256.
Columns: `sample` over the model's step as `rnnkit sample` calls it (the model's compiled loop,
`LanguageModel.compiled_sample`), the same over its step behind a plain function (a Python loop
over `LanguageModel.step`, the path of models without one), and the torch.nn loop; all three
draw the same characters (checked).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from _harness import stamped, write_section
from rnnkit.decoding import sample
from rnnkit.models import LanguageModel, LanguageModelConfig

BEGIN, END = "<!-- bench: sample begin -->", "<!-- bench: sample end -->"
HEADING = "## Sampling, batch 1 (`benchmarks/bench_sample.py`)"


class TorchLoop(nn.Module):
    """The same model on torch.nn: Embedding, LSTMCell, Linear."""

    def __init__(self, model: LanguageModel):
        super().__init__()
        c = model.config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.cell = nn.LSTMCell(c.embedding_dim, c.hidden_size)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        sd = model.state_dict()
        with torch.no_grad():
            self.embedding.weight.copy_(sd["embedding.weight"])
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(sd[f"rnn.{name}_l0"])
            self.head.weight.copy_(sd["head.weight"])
            self.head.bias.copy_(sd["head.bias"])

    @torch.no_grad()
    def sample(self, first: int, n: int, generator) -> list[int]:
        token = torch.tensor([first])
        h = c = torch.zeros(1, self.cell.hidden_size)
        out = []
        for _ in range(n):
            h, c = self.cell(self.embedding(token), (h, c))
            probs = self.head(h).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
            out.append(int(token))
        return out


def python_step(model):
    """The model's step behind a plain function: `sample` then runs its own loop over it, a
    Python round trip per character (the path of a model without a compiled loop)."""

    def step(token, state):
        return model.step(token, state)

    return step


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chars", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    args = parser.parse_args()
    torch.manual_seed(0)
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads; characters per second, batch 1"
    lines = [
        "| model | rnnkit sample | its step loop in Python | torch.nn.LSTMCell loop | sample / torch | "
        "step loop / torch |",
        "|---|---|---|---|---|---|",
    ]
    print(header)
    print("\n".join(lines))
    for hidden in (512, 256):
        model = LanguageModel(LanguageModelConfig(100, embedding_dim=64, hidden_size=hidden)).eval()
        rates = measure(model, TorchLoop(model).eval(), args.chars, args.rounds)
        lines.append(
            f"| emb 64, 1x{hidden} LSTM, 100 chars | {rates['ours']:.0f} | {rates['steps']:.0f} | "
            f"{rates['torch']:.0f} | {rates['ours'] / rates['torch']:.2f}x | "
            f"{rates['steps'] / rates['torch']:.2f}x |"
        )
        print(lines[-1], flush=True)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


def measure(model, ref, chars: int, rounds: int) -> dict:
    """Characters per second of each loop (the median of `rounds` interleaved runs)."""
    prefix = torch.tensor([[3]])

    def ours(step=model.step):
        with torch.no_grad():
            return sample(step, prefix, chars, generator=torch.Generator().manual_seed(0))[0].tolist()

    def theirs():
        return ref.sample(3, chars, torch.Generator().manual_seed(0))

    assert ours() == theirs() == ours(python_step(model)), "the loops drew different characters"
    times = {"ours": [], "torch": [], "steps": []}
    for _ in range(rounds):
        times["ours"].append(timed(ours))
        times["torch"].append(timed(theirs))
        times["steps"].append(timed(lambda: ours(python_step(model))))
    return {k: chars / statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()
