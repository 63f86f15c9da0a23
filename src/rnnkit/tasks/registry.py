"""Tasks by name: a plain dict of (task class, its config dataclass)."""

from rnnkit.tasks.charlm import CharLMConfig, CharLMTask

TASKS = {"charlm": (CharLMTask, CharLMConfig)}
