"""Run directories: what `rnnkit.load` reads.

RUN_DIR/config.json      {"model": {"class": ..., "config": {...}}, "train": {...}, ...}
RUN_DIR/model.safetensors the weights selected by validation (the best), as a state_dict
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rnnkit.cells.registry import load_entry_points
from rnnkit.errors import RnnkitFileError, RnnkitTypeError, RnnkitValueError
from rnnkit.models.registry import build


def load(run_dir, model: nn.Module | None = None, device=None) -> nn.Module:
    """The trained model of a run directory, in eval mode, ready for inference: built from
    config.json's "model" entry, or, for a run whose model the library cannot build (one trained
    with `rnnkit.training.Trainer` on a model of your own), `model` itself, given built as it was
    trained, with the run's weights loaded into it (checked name by name and shape by shape).
    The weights are read to the CPU (wherever they were saved from) and the model moved to
    `device` if given."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "model.safetensors"
    if not run_dir.is_dir():
        raise RnnkitFileError(f"run directory {run_dir} does not exist")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise RnnkitFileError(f"{run_dir} is not a run directory: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RnnkitValueError(f"{config_path} is not valid JSON: {e}") from None
    if model is not None:
        if not isinstance(model, nn.Module):
            raise RnnkitTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    elif not isinstance(config, dict) or "model" not in config:
        raise RnnkitValueError(
            f"{config_path} does not describe a model (no 'model' entry): a run of your own model "
            "loads with rnnkit.load(run_dir, model=YourModel(...)) (or give the Trainer "
            "meta={'model': rnnkit.models.describe(model)} for a model of rnnkit.models)"
        )
    else:
        load_entry_points()  # a run trained with a cell an installed package registers
        try:
            model = build(config["model"])
        except RnnkitValueError as e:
            raise RnnkitValueError(f"{config_path}: {e}") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as e:
        raise RnnkitValueError(f"{weights_path} is not a valid safetensors file: {e}") from None
    expected = model.state_dict()
    problems = [f"{k} is missing" for k in expected if k not in state]
    problems += [f"{k} is not in the model" for k in state if k not in expected]
    problems += [
        f"{k} has shape {tuple(state[k].shape)}, the model's {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise RnnkitValueError(f"{weights_path} does not fit the model of {config_path}: {problems[0]}{more}")
    model.load_state_dict(state)
    return (model if device is None else model.to(device)).eval()
