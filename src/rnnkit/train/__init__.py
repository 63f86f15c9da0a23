"""Training: checkpoints (the trainer itself arrives with the Trainer/CLI issue)."""

from rnnkit.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

__all__ = ["load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]
