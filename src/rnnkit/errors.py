"""The errors rnnkit raises on purpose.

Every one derives from `RnnkitError`, so `except rnnkit.RnnkitError` catches them all; each also
derives from the built-in exception a caller would expect for its kind of problem, so code written
for plain Python (`except ValueError`) keeps working.
"""


class RnnkitError(Exception):
    """Base of every error rnnkit raises on purpose."""


class RnnkitValueError(RnnkitError, ValueError):
    """A bad value: an argument, a shape, a dtype, a device, the contents of a file."""


class RnnkitTypeError(RnnkitError, TypeError):
    """An argument of the wrong type (a list where a tensor was expected, say)."""


class RnnkitFileError(RnnkitError, OSError):
    """A missing or unreadable file."""


class RnnkitUnsupportedError(RnnkitError, NotImplementedError):
    """A valid request that this code path does not support (with the alternative named)."""
