"""Config files for `rnnkit train --config FILE`: JSON or TOML of the flags' names, or a run's own
config.json (to reproduce it).

    {"task": "classify", "hidden_size": 128, "steps": 2000, "dataset": "surnames"}      JSON
    task = "classify"                                                                    TOML
    hidden-size = 128

Names as the flags have them, with dashes or underscores; "task" names the task (a TASK on the
command line wins). A run's config.json (its "task_config", "train", "seed" and "data" entries)
reads as the flags that made it, the data being the copy the run keeps. Flags given on the
command line override the file; every value is checked by its flag's declaration like one typed.
"""

from __future__ import annotations

import json
from pathlib import Path

import tomllib

from rnnkit.errors import RnnkitFileError, RnnkitValueError


def read_config_file(path) -> tuple[str | None, dict]:
    """(task or None, {field name: value}) of a config file or a run's config.json."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RnnkitFileError(f"--config {path}: cannot be read ({e.strerror or e})") from None
    try:
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise RnnkitValueError(f"--config {path} is not valid {kind}: {e}") from None
    if not isinstance(raw, dict):
        raise RnnkitValueError(f"--config {path} must hold an object of flag names and values")
    if "task_config" in raw and "train" in raw:  # a run's own config.json
        values = {**raw["task_config"], **raw["train"], "seed": raw.get("seed", 0)}
        if raw.get("data"):
            values["data"] = str(path.parent / raw["data"])
        return raw.get("task"), values
    values = {str(k).replace("-", "_"): v for k, v in raw.items()}
    task = values.pop("task", None)
    if task is not None and not isinstance(task, str):
        raise RnnkitValueError(f"--config {path}: task must be a task's name, got {task!r}")
    return task, values


def task_of_config(argv: list[str]) -> str | None:
    """The task a --config FILE on a train command line names (None: none, or unreadable: the
    command reports it when it reads the file)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                return read_config_file(value)[0]
            except (RnnkitValueError, RnnkitFileError):
                return None
    return None
