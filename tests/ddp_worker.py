"""Run by tests/test_ddp.py under torchrun (2 processes, gloo on loopback); also imported by it
for the single-process reference, so both train the same model on the same global batches."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rnnkit.models import LanguageModel, LanguageModelConfig
from rnnkit.training import TrainConfig, Trainer

CONFIG = TrainConfig(steps=6, lr=1e-2, eval_every=3, clip_norm=1.0)


def make():
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(7, embedding_dim=8, hidden_size=16, cell="gru"))

    def batches(step):  # the global batch of step i: 8 rows
        return torch.randint(0, 7, (8, 9), generator=torch.Generator().manual_seed(step))

    def step_fn(m, tokens, state):  # m is the DDP wrapper under torchrun: call it, never reach in
        logits, state = m(tokens[:, :-1], state)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 7), tokens[:, 1:].reshape(-1)), state

    return model, batches, step_fn


def train(run_dir) -> torch.nn.Module:
    model, batches, step_fn = make()
    Trainer(model, CONFIG, batches=batches, step_fn=step_fn, run_dir=run_dir).fit()
    return model


if __name__ == "__main__":
    dist.init_process_group("gloo")
    out = Path(sys.argv[1])
    model = train(out)
    if dist.get_rank() == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "final.safetensors"))
    dist.barrier()  # as the CLI does: no rank tears down gloo while another still works
    dist.destroy_process_group()
