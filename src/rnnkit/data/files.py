"""Readers for the user files of the tasks (`--data`): tab-separated pairs and CSV tables.

Every problem in a file is reported as one error naming the file, the line and what was expected,
so `rnnkit` can print it in one line and exit 2.
"""

from __future__ import annotations

import csv
import io
import math

from rnnkit.data.text import read_text
from rnnkit.errors import RnnkitValueError


def read_pairs(path, *, what: tuple[str, str] = ("source", "target")) -> list[tuple[str, str]]:
    """Lines `a<TAB>b` (blank lines skipped): both fields non-empty."""
    pairs = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise RnnkitValueError(
                f"--data: {path} line {number}: expected '{what[0]}<TAB>{what[1]}', got {line[:60]!r}"
            )
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def read_table(path) -> tuple[list[str], list[list[str]]]:
    """A CSV file with a header row: (column names, rows of strings), every row as wide as the
    header."""
    text = read_text(path)
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as e:
        raise RnnkitValueError(f"--data: {path} is not a valid CSV file: {e}") from None
    if len(rows) < 2:
        raise RnnkitValueError(f"--data: {path} needs a header row and at least one data row")
    header = [name.strip() for name in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise RnnkitValueError(
                f"--data: {path} row {number} has {len(row)} columns, the header has {len(header)}"
            )
    return header, [[cell.strip() for cell in row] for row in rows[1:]]


def column_index(path, header: list[str], name: str, flag: str) -> int:
    if name not in header:
        raise RnnkitValueError(f"{flag} {name!r}: {path} has no such column (columns: {', '.join(header)})")
    return header.index(name)


def numbers(path, rows: list[list[str]], columns: list[int], header: list[str]) -> list[list[float]]:
    """The chosen columns of every row as floats; an error names the first cell that is not one."""
    out = []
    for number, row in enumerate(rows, start=2):
        values = []
        for c in columns:
            try:
                value = float(row[c])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):  # nan or inf would spread through the whole series
                raise RnnkitValueError(
                    f"--data: {path} row {number}, column {header[c]!r}: expected a finite number, "
                    f"got {row[c]!r}"
                )
            values.append(value)
        out.append(values)
    return out
