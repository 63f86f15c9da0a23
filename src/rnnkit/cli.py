"""The `rnnkit` command. Subcommands arrive with the trainer; for now: --version."""

from __future__ import annotations

import argparse
import sys

import rnnkit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnkit", description="Recurrent neural networks as the textbooks describe them."
    )
    parser.add_argument("--version", action="version", version=f"rnnkit {rnnkit.__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0
