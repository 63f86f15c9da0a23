"""Test metrics as a person reads them (`rnnkit evaluate` without --json, the end of `rnnkit train`):
the figures as an aligned column, a per-class record as a table (one row per class), a confusion
matrix with its labels, examples as `input -> output` lines, and long series summarised (their
every value is in `evaluate --json`)."""

from __future__ import annotations

import numbers

MAX_ROWS = 12  # examples and errors shown; the rest counted


def _is_number(v) -> bool:
    return isinstance(v, numbers.Number) and not isinstance(v, bool)


def _num(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, str) and not v.isprintable():  # a model's raw output: control characters shown
        return v.encode("unicode_escape").decode("ascii")
    return str(v)


def _figure(v) -> bool:
    """A value of the aligned column: a number, a string, or a list of numbers (a series)."""
    series = isinstance(v, list) and all(_is_number(x) for x in v)
    return _is_number(v) or isinstance(v, (str, bool)) or v is None or series


def format_metrics(metrics: dict, indent: str = "") -> list[str]:
    figures = {k: v for k, v in metrics.items() if _figure(v)}
    lines = []
    if figures:
        width = max(map(len, figures))
        lines += [
            f"{indent}{k:>{width}}  {_series(v) if isinstance(v, list) else _num(v)}"
            for k, v in figures.items()
        ]
    labels = None
    for key, value in metrics.items():
        if key in figures:
            continue
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            labels = list(value)
            lines += ["", *_record_table(key, value, indent)]
        elif _matrix(value):
            lines += ["", *_matrix_table(key, value, labels, indent)]
        elif isinstance(value, dict):
            lines += ["", f"{indent}{key}:", *_pairs(value, indent)]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines += ["", f"{indent}{key} ({len(value)}):", *_rows(value, indent)]
        else:
            lines.append(f"{indent}{key}  {value}")
    return lines


def _record_table(name: str, records: dict, indent: str) -> list[str]:
    """{row: {column: value}} (per_class) as a table, one row per key."""
    columns = list(dict.fromkeys(c for r in records.values() for c in r))
    first = max(len(name), *(len(str(k)) for k in records))
    widths = [max(len(c), 9) for c in columns]
    head = f"{indent}{name:<{first}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))
    rows = [
        f"{indent}{str(k):<{first}}  "
        + "  ".join(f"{_num(r.get(c, '')):>{w}}" for c, w in zip(columns, widths))
        for k, r in records.items()
    ]
    return [head, *rows]


def _matrix(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 1
        and all(isinstance(r, list) and len(r) == len(value) and all(_is_number(x) for x in r) for r in value)
    )


def _matrix_table(name: str, rows: list, labels, indent: str) -> list[str]:
    """A square matrix (confusion: rows true, columns predicted) with its labels."""
    labels = [str(x) for x in (labels if labels and len(labels) == len(rows) else range(len(rows)))]
    width = max(max(len(x) for x in labels), *(len(str(v)) for r in rows for v in r))
    first = max(len(x) for x in labels)
    lines = [f"{indent}{name} (rows: true, columns: predicted)"]
    lines.append(f"{indent}{'':<{first}}  " + " ".join(f"{x:>{width}}" for x in labels))
    lines += [
        f"{indent}{lab:<{first}}  " + " ".join(f"{v:>{width}}" for v in r) for lab, r in zip(labels, rows)
    ]
    return lines


def _pairs(mapping: dict, indent: str) -> list[str]:
    items = list(mapping.items())
    lines = [f"{indent}  {_num(k)} -> {_num(v)}" for k, v in items[:MAX_ROWS]]
    return lines + ([f"{indent}  ... and {len(items) - MAX_ROWS} more"] if len(items) > MAX_ROWS else [])


def _rows(records: list[dict], indent: str) -> list[str]:
    lines = [f"{indent}  " + "  ".join(f"{k}: {_num(v)}" for k, v in r.items()) for r in records[:MAX_ROWS]]
    return lines + ([f"{indent}  ... and {len(records) - MAX_ROWS} more"] if len(records) > MAX_ROWS else [])


def _series(values: list) -> str:
    if len(values) <= 6:
        return ", ".join(_num(v) for v in values) or "(none)"
    shown = ", ".join(_num(v) for v in values[:3])
    return f"{len(values)} values: {shown}, ..., {_num(values[-1])} (all in evaluate --json)"
