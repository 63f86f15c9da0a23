"""The `rnnkit` command's front door: `rnnkit --version` and `rnnkit --help` are answered here,
without importing torch (which takes seconds); every command goes on to `rnnkit.cli`, whose parser
is built on the same top level (`top_parser`, `Parser`, `COMMANDS`)."""

from __future__ import annotations

import argparse
import re
import sys

from rnnkit import __version__

DESCRIPTION = "Recurrent neural networks as the textbooks describe them."
# The commands and their one-line help, in the order `rnnkit --help` lists them.
COMMANDS = {
    "train": "train a task (default: charlm) into a run directory",
    "evaluate": "the test metrics of a run",
    "sample": "generate from a run's model",
    "plot": "the loss curves of a run and the figures of its task (PNG)",
    "gradients": "gradient flow through time: ||dL/dh_t|| for every t and the spectrum of W_hh (PNG, JSON)",
    "predict": "a run's model on each INPUT",
    "export": "a run's model as ONNX, with what predicting needs in a JSON file beside it",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2; the usage stays with --help), and a leading
    minus before a digit read as a value (`predict RUN -1,2,3`, `--lr -1e-3`), never as a flag."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def top_parser() -> tuple[Parser, argparse._SubParsersAction]:
    """The command's top level: --version, and the subcommands' group (empty: the caller adds
    each command, with its help from COMMANDS)."""
    parser = Parser(prog="rnnkit", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True, metavar="COMMAND")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-h"], ["--help"]):
        parser, sub = top_parser()
        for name, text in COMMANDS.items():
            sub.add_parser(name, help=text)
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 0
    from rnnkit.cli import main as command

    return command(argv)
