"""The memory task's bit problems (copy, repeat-copy, associative-recall; `rnnkit.data.memory`):
binary vectors in, binary vectors out during an answer phase, a sigmoid cross-entropy loss on the
answer bits, and the paper's metric, bit errors per sequence (answer bits whose prediction,
thresholded at 1/2, is wrong, summed over the sequence).

The model is an `NTM` or, as the baseline, a `SequenceTagger` over the same inputs; each batch
has one length (drawn per training step from the training range), so nothing is padded.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from rnnkit.data.memory import (
    COPY_BITS,
    RECALL_BITS,
    associative_recall_batch,
    copy_batch,
    repeat_copy_batch,
)
from rnnkit.models import SequenceTagger, SequenceTaggerConfig
from rnnkit.models.ntm import NTM, NTMConfig
from rnnkit.tasks._common import device_of, pyplot

# problem -> (input size, output size, the paper's training range of the length (copy and
# repeat-copy: vectors per sequence; associative-recall: items))
SIZES = {
    "copy": (COPY_BITS + 1, COPY_BITS, (1, 20)),
    "repeat-copy": (COPY_BITS + 2, COPY_BITS + 1, (1, 10)),
    "associative-recall": (RECALL_BITS + 2, RECALL_BITS, (2, 6)),
}


class BitProblem:
    key = "bit_errors"

    def __init__(self, config):
        self.config = config
        self.inputs, self.outputs, paper = SIZES[config.problem]
        self.low = config.min_length or paper[0]
        self.high = config.max_length or paper[1]

    def build_model(self):
        c = self.config
        if c.model == "ntm":
            return NTM(
                NTMConfig(
                    self.inputs,
                    self.outputs,
                    controller_size=c.hidden_size,
                    memory_slots=c.memory_slots,
                    memory_width=c.memory_width,
                    read_heads=c.read_heads,
                )
            )
        return SequenceTagger(
            SequenceTaggerConfig(
                self.outputs,
                input_size=self.inputs,
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.model,
            )
        )

    def draw(self, n: int, seed: int, length: int | None = None):
        """(x (B, T, I), y (B, T, O), mask (B, T)); the length from the training range unless given."""
        rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        length = length or rng.randint(self.low, self.high)
        if self.config.problem == "copy":
            return copy_batch(n, length, gen)
        if self.config.problem == "repeat-copy":
            repeats = rng.randint(1, self.config.max_repeats)
            return repeat_copy_batch(n, length, repeats, gen, self.config.max_repeats)
        return associative_recall_batch(n, max(length, 2), gen)

    def logits(self, model, x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out[0] if isinstance(out, tuple) else out  # the tagger also returns its state

    loss_unit = "binary cross-entropy (nats per output bit)"

    def loss(self, model, batch) -> torch.Tensor:
        x, y, mask = batch
        logits = self.logits(model, x)
        return F.binary_cross_entropy_with_logits(logits[mask], y[mask])

    @torch.no_grad()
    def scores(self, model, n: int, seed: int, length: int | None = None) -> dict:
        """Loss and bit errors per sequence over n sequences: one batch per length of the
        training range (or of the given length)."""
        model.eval()
        lengths = [length] if length else list(range(self.low, self.high + 1))
        per = max(1, n // len(lengths))
        loss = errors = 0.0
        for i, L in enumerate(lengths):
            x, y, mask = (t.to(device_of(model)) for t in self.draw(per, seed + i, L))
            logits = self.logits(model, x).float()
            loss += F.binary_cross_entropy_with_logits(logits[mask], y[mask]).item()
            wrong = ((logits > 0) != (y > 0.5)) & mask[..., None]
            errors += wrong.sum().item() / per
        return {"loss": loss / len(lengths), "bit_errors": errors / len(lengths)}

    @torch.no_grad()
    def plot(self, model, run_dir: Path, seed: int) -> list[Path]:
        """RUN_DIR/memory.png: one sequence at the longest training length: inputs, targets and
        outputs over time, and for an NTM its read and write weightings and final memory."""
        model.eval()
        x, y, mask = self.draw(1, seed, self.high)
        trace = None
        if isinstance(model, NTM):
            logits, trace = model(x.to(device_of(model)), return_trace=True)
        else:
            logits = self.logits(model, x.to(device_of(model)))
        out = torch.sigmoid(logits.float().cpu())[0] * mask[0, :, None]
        panels = [("input", x[0]), ("target", y[0] * mask[0, :, None]), ("output", out)]
        if trace is not None:
            panels += [
                ("write weighting", trace["write_weights"][0].cpu()),
                ("read weighting (head 1)", trace["read_weights"][0, :, 0].cpu()),
            ]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(panels) + (trace is not None), figsize=(3.2 * (len(panels) + 1), 4.2))
        for ax, (title, grid) in zip(axes, panels):
            ax.imshow(grid.t().numpy(), cmap="viridis", aspect="auto", interpolation="nearest")
            ax.set_title(title)
            ax.set_xlabel("time step")
            ax.set_ylabel("memory slot" if "weighting" in title else "bit")
        if trace is not None:
            ax = axes[-1]
            ax.imshow(trace["memory"][0].cpu().numpy(), cmap="RdBu_r", aspect="auto", interpolation="nearest")
            ax.set_title("memory after the sequence")
            ax.set_xlabel("memory width")
            ax.set_ylabel("memory slot")
        fig.suptitle(f"{self.config.problem}, length {self.high}, model {self.config.model}")
        fig.tight_layout()
        path = Path(run_dir) / "memory.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return [path]
