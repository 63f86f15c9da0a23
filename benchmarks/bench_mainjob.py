"""The main job's training step (embedding, LSTM, output layer, cross-entropy, backward, Adam
step) against the same model on torch.nn (nn.Embedding, nn.LSTM, nn.Linear, the same weights),
side by side in one process, rounds interleaved; milliseconds a step, medians.

    python benchmarks/bench_mainjob.py [--steps 20] [--rounds 5] [--out docs/benchmarks.md]

Shapes: the main job as the speed issue states it (embedding 64, 1x256, B=32, T=100) and at
charlm's defaults (1x512). No dropout on either side (torch.nn has no weight dropout), so both
compute the same function; the losses are checked equal to float32 rounding.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from _harness import stamped, write_section
from rnnkit.models import LanguageModel, LanguageModelConfig

BEGIN, END = "<!-- bench: mainjob begin -->", "<!-- bench: mainjob end -->"
HEADING = "## The main job's training step (`benchmarks/bench_mainjob.py`)"


class TorchModel(nn.Module):
    def __init__(self, model: LanguageModel):
        super().__init__()
        c = model.config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_dim)
        self.rnn = nn.LSTM(c.embedding_dim, c.hidden_size, batch_first=True)
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        self.load_state_dict(model.state_dict())  # rnnkit.LSTM has torch's parameter names

    def forward(self, tokens):
        h, _ = self.rnn(self.embedding(tokens))
        return self.head(h), None


def train_step(model, optimizer, tokens):
    logits, _ = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the markdown table into this page")
    args = parser.parse_args()
    header = f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step, median"
    lines = ["| shape | rnnkit | torch.nn | ratio (torch / rnnkit) |", "|---|---|---|---|"]
    print(header)
    print("\n".join(lines))
    for hidden in (256, 512):
        torch.manual_seed(0)
        ours = LanguageModel(LanguageModelConfig(100, embedding_dim=64, hidden_size=hidden))
        theirs = TorchModel(ours)
        tokens = torch.randint(0, 100, (32, 101))
        opts = {m: torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ours, theirs)}
        a, b = train_step(ours, opts[ours], tokens), train_step(theirs, opts[theirs], tokens)
        assert abs(a - b) < 1e-4, (a, b)
        times = {ours: [], theirs: []}
        for _ in range(args.rounds):
            for m in (ours, theirs):
                start = time.perf_counter()
                for _ in range(args.steps):
                    train_step(m, opts[m], tokens)
                times[m].append((time.perf_counter() - start) / args.steps * 1e3)
        ms = {m: statistics.median(v) for m, v in times.items()}
        lines.append(
            f"| emb 64, 1x{hidden} LSTM, B=32 T=100, V=100 | {ms[ours]:.1f} | {ms[theirs]:.1f} | "
            f"{ms[theirs] / ms[ours]:.2f}x |"
        )
        print(lines[-1], flush=True)
    if args.out:
        write_section(args.out, BEGIN, END, HEADING, stamped(header, lines))


if __name__ == "__main__":
    main()
