"""Training: the loop, its configuration and checkpoints."""

from rnnkit.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rnnkit.training.tbptt import tbptt_step
from rnnkit.training.trainer import NonFiniteError, TrainConfig, Trainer

__all__ = [
    "NonFiniteError",
    "TrainConfig",
    "Trainer",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "tbptt_step",
]
