"""What every benchmark shares: the interleaved timing, and writing its table into a section of
docs/benchmarks.md between markers, stamped with the time and the command that reproduces it."""

from __future__ import annotations

import datetime
import gc
import statistics
import sys
import time


def compiled_loops() -> str:
    """Whether the kernels' compiled CPU loops (`rnnkit.cells.speed.native`) are in use, for a header:
    the figures differ by up to 2x without them."""
    import torch

    from rnnkit.cells.speed import native as _native

    built = _native.ops(torch.zeros(1)) is not None
    return "compiled loops " + ("on" if built else "off (could not be built)")


def time_interleaved(fns: dict, repeats: int, budget_s: float) -> dict:
    """Median seconds per call of each function, the functions taking turns within every repeat
    so that a change in machine load hits all of them alike. Stops early (after 3 repeats) once
    the time budget is spent. Python's cycle collector is paused while timing, as `timeit` does:
    a full collection (~90 ms here, with torch's objects on the heap) lands on whichever call
    happens to trigger it, and would make the medians depend on the order of the calls."""
    for f in fns.values():  # warm-up
        f()
    times = {k: [] for k in fns}
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for i in range(repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() - start > budget_s:
                break
    finally:
        if enabled:
            gc.enable()
    return {k: statistics.median(v) for k, v in times.items()}


def stamped(header: str, lines: list[str]) -> str:
    """The table under a line saying when and with which command (this process's) it was measured."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = " ".join(["python", *sys.argv]).strip()
    return f"Measured {when} with `{cmd}` ({header}).\n\n" + "\n".join(lines) + "\n"


def write_section(path: str, begin: str, end: str, heading: str | None, text: str) -> None:
    """Replace what lies between the markers `begin` and `end`, keeping the rest of the page (its
    prose); if the page lacks them, append them under `heading` (creating the page if needed)."""
    try:
        with open(path) as fh:
            page = fh.read()
    except FileNotFoundError:
        page = ""
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + begin + "\n" + text + end + rest.split(end, 1)[1]
    else:
        sep = "" if not page else ("\n" if page.endswith("\n") else "\n\n")
        title = f"{heading}\n\n" if heading else ""
        page += f"{sep}{title}{begin}\n{text}{end}\n"
    with open(path, "w") as fh:
        fh.write(page)
