"""Config dataclass fields that carry their help text, from which the CLI builds its flags."""

from dataclasses import field


def option(default, help: str):
    """A dataclass field with a default and the help text of its command-line flag."""
    return field(default=default, metadata={"help": help})
