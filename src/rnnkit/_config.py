"""Options: config dataclass fields that carry their help text and their valid values.

Every option of the library and of the command line is declared once, where it is defined:

    hidden_size: int = option(256, "units per recurrent layer", integer(1, MAX_UNITS))

From that declaration the command line builds its flag (typed, with the range in its help) and
parses its value, and one validation (`Options.__post_init__`) checks every field of a config when
it is constructed, whoever constructs it: a user's Python code, the command line, or a run's
config.json read back. A bad value is refused with one line that names the option, the values it
takes and the value given: "hidden_size must be an int in [1, 16384], got 0" (the command line
names flags instead: "--hidden-size must be ...").

A range may admit special values beside it that switch a feature off or leave it automatic,
stated in the declaration: `integer(1, special={0: "the same as --seq-len"})`, or None for "off".
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from dataclasses import dataclass, field, fields

from rnnkit.errors import RnnkitTypeError, RnnkitValueError

# Bounds past which a value would exhaust memory or time without use: a layer of 16,384 units holds
# 1-4 GB of weights, a batch of 65,536 sequences or a step of 100,000 characters more activations
# than a machine has memory.
MAX_UNITS = 16384
MAX_LAYERS = 64
MAX_BATCH = 65536
MAX_STEPS = 10**9
MAX_LENGTH = 100_000
MAX_SEED = 2**32 - 1  # NumPy's legacy global generator takes seeds in [0, 2**32)

_flags = contextvars.ContextVar("rnnkit_option_names_as_flags", default=False)


@contextlib.contextmanager
def as_flags():
    """Within this block, errors name options as command-line flags (--hidden-size)."""
    token = _flags.set(True)
    try:
        yield
    finally:
        _flags.reset(token)


def shown(name: str) -> str:
    """How an error names option `name`: the field name, or its flag on the command line."""
    return "--" + name.replace("_", "-") if _flags.get() else name


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Valid:
    """The values an option takes.

    kind: int, float, str, bool, tuple (ints) or list (strings); on the command line a tuple or
          a list is comma-separated.
    low / high: inclusive bounds (low_open / high_open make them exclusive); floats are finite.
    choices: the only values allowed (strings), or a function giving them when a value is checked
        (a registry that grows after import).
    special: values outside the range that mean something ({0: "automatic"}, {None: "off"}).
    """

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    special: tuple = ()  # ((value, meaning), ...): hashable, so a Valid can be a default

    def options(self) -> tuple:
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def describe(self) -> str:
        """'an int in [1, 16384]', 'a finite float in [0, 1)', 'one of lstm, gru', ..."""
        if self.choices:
            names = ", ".join(str(c) for c in self.options())
            text = f"comma-separated names from {names}" if self.kind is list else f"one of {names}"
        elif self.kind is bool:
            text = "true or false"
        elif self.kind is str:
            text = "a non-empty string" if self.low else "a string"
        else:
            what = {int: "an int", float: "a finite float", tuple: "comma-separated ints"}[self.kind]
            text = what + self._bounds()
        for value, meaning in self.special:
            text += f", or {'none' if value is None else _number(value)} ({meaning})"
        return text

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f" in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {_number(self.high)}"
        return ""

    def _in_range(self, x) -> bool:
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def check(self, name: str, value):
        """`value` if it is allowed, else an rnnkit error naming the option, the allowed values
        and the value given."""
        if any(
            value is v
            or (
                v is not None
                and type(value) in (type(v), *((int,) if type(v) is float else ()))
                and value == v
            )
            for v, _ in self.special
        ):
            return value
        wrong = RnnkitValueError(f"{shown(name)} must be {self.describe()}, got {value!r}")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise RnnkitTypeError(f"{shown(name)} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            if not isinstance(value, str):
                raise RnnkitTypeError(f"{shown(name)} must be a string, got {type(value).__name__}")
            if (self.choices and value not in self.options()) or (self.low and not value.strip()):
                raise wrong
            return value
        if self.kind is list:
            if (
                not isinstance(value, (tuple, list))
                or not value
                or any(v not in self.options() for v in value)
            ):
                raise wrong
            return value
        if self.kind is tuple:
            if not isinstance(value, (tuple, list)) or not value:
                raise wrong
            for v in value:
                if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not self._in_range(v):
                    raise wrong
            return value
        wanted = numbers.Integral if self.kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, wanted):
            raise RnnkitTypeError(f"{shown(name)} must be {self.describe()}, got {value!r}")
        if not self._in_range(value):
            raise wrong
        return value

    def parse(self, text: str):
        """A command-line value: parsed and checked, or a ValueError naming the allowed values
        (argparse shows it as one line naming the flag)."""
        for value, _ in self.special:
            if value is None and text.strip().lower() in ("none", "off"):
                return None
        try:
            if self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
            elif self.kind is tuple:
                value = tuple(int(v) for v in text.split(","))
            elif self.kind is list:
                value = tuple(v.strip() for v in text.split(",") if v.strip())
            else:
                value = text
        except ValueError:
            raise RnnkitValueError(f"must be {self.describe()}, got {text!r}") from None
        with contextlib.suppress(RnnkitValueError, RnnkitTypeError):
            return self.check("value", value)
        raise RnnkitValueError(f"must be {self.describe()}, got {text!r}")


def integer(low: int | None = 1, high: int | None = None, special: dict | None = None) -> Valid:
    """An int in [low, high] (1 and up by default), plus `special` values with their meaning."""
    return Valid(int, low, high, special=tuple((special or {}).items()))


def real(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    special: dict | None = None,
) -> Valid:
    """A finite float in the interval (bounds inclusive unless open)."""
    return Valid(float, low, high, low_open, high_open, special=tuple((special or {}).items()))


def positive(high: float | None = None, special: dict | None = None) -> Valid:
    """A finite float > 0."""
    return real(0.0, high, low_open=True, special=special)


def rate(special: dict | None = None) -> Valid:
    """A dropout-like rate in [0, 1): 1 would drop everything."""
    return real(0.0, 1.0, high_open=True, special=special)


def probability() -> Valid:
    return real(0.0, 1.0)


def one_of(*choices) -> Valid:
    """One of `choices`, or of what a function passed alone returns when a value is checked."""
    if len(choices) == 1 and callable(choices[0]):
        return Valid(str, choices=choices[0])
    return Valid(str, choices=tuple(choices))


def string(special: dict | None = None) -> Valid:
    return Valid(str, special=tuple((special or {}).items()))


def path(special: dict | None = None) -> Valid:
    """A file or directory name: a non-empty string."""
    return Valid(str, low=1, special=tuple((special or {}).items()))


def flag() -> Valid:
    return Valid(bool)


def ints(low: int = 1, high: int | None = None, special: dict | None = None) -> Valid:
    """A non-empty tuple of ints in [low, high] (comma-separated on the command line)."""
    return Valid(tuple, low, high, special=tuple((special or {}).items()))


def names(*choices) -> Valid:
    """A non-empty list of names from `choices`, or from what a function passed alone returns
    when a value is checked (comma-separated on the command line)."""
    if len(choices) == 1 and callable(choices[0]):
        return Valid(list, choices=choices[0])
    return Valid(list, choices=tuple(choices))


def option(default, help: str, valid: Valid | None = None):
    """A dataclass field with a default, the help text of its command-line flag, and the values
    it takes (`valid`; by default, any value of the default's type)."""
    if valid is None:  # any value of the default's type
        valid = {bool: flag(), int: integer(None), float: real(), str: string()}.get(type(default))
    return field(default=default, metadata={"help": help, "valid": valid})


def valid_of(f) -> Valid | None:
    """The declaration of a dataclass field, or None for a field declared without `option`."""
    return f.metadata.get("valid")


class Options:
    """Base of the frozen config dataclasses: every field is checked against its declaration
    when the config is constructed. A subclass with checks across fields adds them in its own
    `__post_init__` after calling this one."""

    def __post_init__(self):
        for f in fields(self):
            valid = valid_of(f)
            if valid is not None:
                valid.check(f.name, getattr(self, f.name))
