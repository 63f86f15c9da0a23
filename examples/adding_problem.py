"""Train an rnnkit.LSTM on the adding problem (Hochreiter and Schmidhuber 1997) and print the loss
falling. Run by `make demo` until the `rnnkit` command's tasks land.

Each input step is (value, marker): values are uniform in [0, 1], and exactly two steps, one in
each half of the sequence, are marked. The target is the sum of the two marked values. Always
predicting the mean (1.0) gives an MSE of 1/6 ~ 0.167; a model that has learned to remember the
marked values over the lag drives it towards 0.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnkit


def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.rand(length, batch, generator=generator)  # (T, B)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    marker = torch.zeros(length, batch)
    marker[first, torch.arange(batch)] = 1.0
    marker[second, torch.arange(batch)] = 1.0
    x = torch.stack([values, marker], dim=-1)  # (T, B, 2)
    y = (values * marker).sum(0, keepdim=True).t()  # (B, 1)
    return x, y


class AddingModel(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.rnn = rnnkit.LSTM(2, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.rnn(x)  # h_n (1, B, H)
        return self.head(h_n[-1])  # (B, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = AddingModel(args.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x_test, y_test = adding_batch(1000, args.length, torch.Generator().manual_seed(args.seed + 1))
    print(f"adding problem, T={args.length}: predicting the mean gives MSE {1 / 6:.4f}")
    start, running = time.perf_counter(), None
    for step in range(1, args.steps + 1):
        x, y = adding_batch(args.batch, args.length, gen)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 100 == 0 or step == 1:
            with torch.no_grad():
                test = nn.functional.mse_loss(model(x_test), y_test).item()
            print(
                f"step {step:5d}  train MSE {running:.4f}  test MSE {test:.4f}  "
                f"({time.perf_counter() - start:.0f} s)"
            )
    print(f"final test MSE {test:.4f} vs {1 / 6:.4f} for the mean predictor")


if __name__ == "__main__":
    main()
