"""Train every task variant of docs/tasks.md through the `rnnkit` command and tabulate its test
metrics and wall time there (between the `<!-- task table: begin/end -->` markers).

    python benchmarks/task_report.py                  # every run (about 2 hours on 2 cores)
    python benchmarks/task_report.py --only dates     # runs whose name starts with "dates"
    python benchmarks/task_report.py --table-only     # rewrite the table from saved results
    python benchmarks/task_report.py --adopt dates=RUN  # record a run made with the same command

Each run goes to runs/report/<name>; results accumulate in runs/report/results.json, so runs can
be made in parts (and in parallel: `--only` with different prefixes, one thread each).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "report"
DOC = ROOT / "docs" / "tasks.md"
BEGIN, END = "<!-- task table: begin -->", "<!-- task table: end -->"

# NTM runs validate less often, on fewer sequences: each is a Python loop over time
NTM_FLAGS = ["--eval-every", "250", "--eval-size", "200"]
# evaluate arguments beyond --json; bit_errors_by_length comes back as bit_errors_L{length}
EVALUATE = {"memory-copy-ntm": ["--lengths", "20,40,80"]}

# name -> (rnnkit train arguments, metrics to show, the target in words)
RUNS = {
    "classify-digits": (["classify"], ["accuracy", "baseline_accuracy"], "accuracy >= 0.97"),
    "classify-surnames": (
        ["classify", "--dataset", "surnames"],
        ["accuracy", "baseline_accuracy"],
        "accuracy > baseline_accuracy",
    ),
    "tag": (
        ["tag"],
        ["accuracy", "field_exact_match", "baseline_accuracy", "baseline_field_exact_match"],
        "field_exact_match > baseline_field_exact_match",
    ),
    "music": (["music"], ["nll_per_note", "baseline_nll_per_note"], "nll_per_note < baseline_nll_per_note"),
    "music-4-voices": (
        ["music", "--voices", "4"],
        ["nll_per_note", "baseline_nll_per_note"],
        "nll_per_note < baseline_nll_per_note",
    ),
    **{
        f"forecast-sunspots-seed{s}": (
            ["forecast", "--seed", str(s)],
            ["rmse", "rmse_multistep", "baseline_rmse"],
            "mean rmse < 16.0 and < baseline_rmse",
        )
        for s in range(5)
    },
    "forecast-macrodata": (
        ["forecast", "--dataset", "macrodata"],
        ["rmse", "rmse_multistep", "baseline_rmse"],
        "-",
    ),
    "dates": (["dates"], ["exact_match", "exact_match_beam", "cer"], "exact_match >= 0.995"),
    "dates-no-attention": (["dates", "--attention", "none"], ["exact_match", "exact_match_beam", "cer"], "-"),
    "dates-no-locale": (["dates", "--no-locale-token"], ["exact_match", "exact_match_beam", "cer"], "-"),
    "colors-init": (["colors", "--feed", "init"], ["loss", "baseline_loss"], "loss < baseline_loss"),
    "colors-every-step": (
        ["colors", "--feed", "every_step"],
        ["loss", "baseline_loss"],
        "loss < baseline_loss",
    ),
    **{
        f"memory-adding-{m}": (
            ["memory", "--problem", "adding", "--lag", "200", "--model", m],
            ["mse", "baseline_mse"],
            "mse < 0.01" if m != "rnn" else "(how far it gets)",
        )
        for m in ("lstm", "gru", "rnn")
    },
    # IndRNN (rnnkit/cells/indrnn.py, a cell written against the public hook): the paper's two layers
    "memory-adding-indrnn": (
        [
            "memory",
            "--problem",
            "adding",
            "--lag",
            "200",
            "--model",
            "indrnn",
            "--num-layers",
            "2",
            "--lr",
            "2e-4",
        ],
        ["mse", "baseline_mse"],
        "mse < 0.01",
    ),
    **{
        f"memory-copy-ntm-seed{s}": (
            ["memory", "--problem", "copy", "--model", "ntm", *NTM_FLAGS, "--seed", str(s)],
            ["bit_errors", "bit_errors_L20", "bit_errors_L40", "bit_errors_L80"],
            "L20 <= 1, L40 <= 2" if s == 0 else "converges (no NaN)",
        )
        for s in range(3)
    },
    "memory-copy-ntm-lstm-baseline": (
        ["memory", "--problem", "copy", "--model", "lstm", *NTM_FLAGS],
        ["bit_errors", "bit_errors_L20", "bit_errors_L40", "bit_errors_L80"],
        "(expected to fail at 40)",
    ),
    "memory-copy-lstm": (
        ["memory", "--problem", "copy-memory", "--lag", "100"],
        ["accuracy", "baseline_loss"],
        "-",
    ),
}


def run(name: str, args: list[str], threads: int) -> dict:
    out = OUT / name
    if (out / "config.json").exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    rnnkit = [sys.executable, "-m", "rnnkit"]
    start = time.perf_counter()
    subprocess.run(
        [*rnnkit, "train", *args, "--out", str(out), "--threads", str(threads)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    metrics = evaluate(name, out)
    steps = json.loads((out / "config.json").read_text())["train"]["steps"]
    return {"args": args, "metrics": metrics, "wall_s": round(wall), "steps": steps}


def evaluate(name: str, run_dir: Path) -> dict:
    """`rnnkit evaluate RUN --json` (plus the run's EVALUATE arguments), flattened for the table."""
    extra = next((a for prefix, a in EVALUATE.items() if name.startswith(prefix)), [])
    out = subprocess.run(
        [sys.executable, "-m", "rnnkit", "evaluate", str(run_dir), "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    metrics = json.loads(out)
    for length, value in metrics.pop("bit_errors_by_length", {}).items():
        metrics[f"bit_errors_L{length}"] = value
    return metrics


def adopt(name: str, run_dir: Path) -> dict:
    """A run trained elsewhere with the command of RUNS[name] (its wall time from the times its
    config.json and its last checkpoint were written)."""
    metrics = evaluate(name, run_dir)
    wall = (run_dir / "latest.json").stat().st_mtime - (run_dir / "config.json").stat().st_ctime
    steps = json.loads((run_dir / "config.json").read_text())["train"]["steps"]
    return {
        "args": RUNS[name][0],
        "metrics": metrics,
        "wall_s": round(wall),
        "steps": steps,
        "adopted": str(run_dir),
    }


def table(results: dict) -> str:
    rows = [
        "| run | command (`rnnkit train ...`) | steps | wall time | test metrics | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, (args, keys, target) in RUNS.items():
        r = results.get(name)
        if r is None:
            continue
        shown = ", ".join(f"{k} {r['metrics'][k]:.4g}" for k in keys if k in r["metrics"])
        rows.append(
            f"| {name} | `{' '.join(args)}` | {r['steps']} | {r['wall_s'] / 60:.1f} min "
            f"| {shown} | {target} |"
        )
    seeds = [
        results[n]["metrics"]["rmse"] for n in RUNS if n.startswith("forecast-sunspots") and n in results
    ]
    if len(seeds) > 1:
        rows.append(
            f"\nsunspots one-step RMSE over {len(seeds)} seeds: mean {statistics.mean(seeds):.2f}, "
            f"standard deviation {statistics.stdev(seeds):.2f}, range {min(seeds):.2f}-{max(seeds):.2f}."
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only names starting with this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--adopt", action="append", default=[], metavar="NAME=RUN_DIR")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    saved = OUT / "results.json"
    for item in args.adopt:
        name, run_dir = item.split("=", 1)
        results = json.loads(saved.read_text()) if saved.exists() else {}
        results[name] = adopt(name, Path(run_dir))
        saved.write_text(json.dumps(results, indent=1))
    if not args.table_only and not args.adopt:
        for name, (train_args, _, _) in RUNS.items():
            if name.startswith(args.only):
                print(f"{name}: rnnkit train {' '.join(train_args)}", flush=True)
                result = run(name, train_args, args.threads)
                results = json.loads(saved.read_text()) if saved.exists() else {}  # others may write too
                results[name] = result
                saved.write_text(json.dumps(results, indent=1))
                print(f"  {result['wall_s']} s: {json.dumps(result['metrics'])[:300]}", flush=True)
    results = json.loads(saved.read_text()) if saved.exists() else {}
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    DOC.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
