"""classify's defaults against the in-run n-gram baseline on several labelled text sets, with
wall times (docs/tasks.md, "classify"). One training at a time; run on an idle machine.

    python benchmarks/classify_sets.py sets            # build messages, nordic, debian
    python benchmarks/classify_defaults.py sets [FLAGS...]

trains `rnnkit train classify --data SET [FLAGS]` (seed 0) on each set in sets/ and on the
built-in surnames, and prints one markdown row per set: test accuracy and macro-F1 against the
baseline's, the selected and the last step, the wall time of the whole command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(data_flags: list[str], flags: list[str], out: Path) -> tuple[dict, dict, float]:
    command = [sys.executable, "-m", "rnnkit", "train", "classify", *data_flags, *flags]
    command += ["--seed", "0", "--no-plots", "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_config = json.loads((out / "config.json").read_text())["train"]
    return records[-1], {"last": records[-2]["step"], "steps": train_config["steps"]}, wall


def main() -> None:
    sets = Path(sys.argv[1])
    flags = sys.argv[2:]
    print(f"flags: {' '.join(flags) or '(defaults)'}")
    print("| set | accuracy | baseline | macro-F1 | baseline | selected / last / steps | wall |")
    print("|---|---|---|---|---|---|---|")
    cases = [("surnames", ["--dataset", "surnames"])]
    cases += [(p.stem, ["--data", str(p)]) for p in sorted(sets.glob("*.tsv"))]
    with tempfile.TemporaryDirectory() as tmp:
        for name, data_flags in cases:
            test, steps, wall = train(data_flags, flags, Path(tmp) / name)
            print(
                f"| {name} | {test['accuracy']:.4f} | {test['baseline_accuracy']:.4f} | "
                f"{test['macro_f1']:.4f} | {test['baseline_macro_f1']:.4f} | "
                f"{test['selected_step']} / {steps['last']} / {steps['steps']} | {wall / 60:.1f} min |",
                flush=True,
            )


if __name__ == "__main__":
    main()
