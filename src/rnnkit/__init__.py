"""rnnkit: recurrent neural networks as the textbooks describe them, on PyTorch."""

__version__ = "0.1.0"

from rnnkit.errors import (  # noqa: E402
    RnnkitError,
    RnnkitFileError,
    RnnkitTypeError,
    RnnkitUnsupportedError,
    RnnkitValueError,
)

__all__ = [
    "__version__",
    "RnnkitError",
    "RnnkitFileError",
    "RnnkitTypeError",
    "RnnkitUnsupportedError",
    "RnnkitValueError",
]
