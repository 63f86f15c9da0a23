"""rnnkit (TEMPORARY during parallel development: the final file is restored when all cell families exist)."""

__version__ = "0.1.0"

from rnnkit.errors import RnnkitError, RnnkitFileError, RnnkitTypeError, RnnkitUnsupportedError, RnnkitValueError  # noqa
