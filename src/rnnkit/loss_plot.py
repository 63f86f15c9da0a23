"""`loss.png`: a run's curves, one panel per unit, so no figure shares an axis with another.

    panel 1: the training loss in the task's own unit (`Task.loss_unit`), raw and smoothed
    panel 2...: each validation metric in its own unit, the selected step marked

The title names the task and the run; the x axis is the training step everywhere.
"""

from __future__ import annotations

import math
from pathlib import Path

# Axis labels of the validation metrics the tasks report (a metric not listed is labelled by name).
METRIC_UNITS = {
    "bpc": "bits per character",
    "accuracy": "accuracy (share correct)",
    "exact_match": "exact match (share of outputs)",
    "rmse": "RMSE (the data's units)",
    "mse": "mean squared error",
    "bit_errors": "bit errors per sequence",
    "cer": "character error rate",
}


def smoothed(values: list[float], window: int) -> list[float]:
    """A trailing moving average over up to `window` points (the first points over fewer)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(records: list[dict], *, task: str, run: Path, loss_unit: str, metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    def finite(r, k):
        v = r.get(k)
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    train = [r for r in records if r["split"] == "train" and finite(r, "loss")]
    val = [r for r in records if r["split"] == "val"]
    keys = sorted({k for r in val for k in r if finite(r, k)} - {"step"}, key=lambda k: (k != metric, k))
    selected = next((r.get("selected_step") for r in records if r["split"] == "test"), None)
    fig, axes = plt.subplots(1 + len(keys), 1, figsize=(8, 2.8 * (1 + len(keys))), sharex=True, squeeze=False)
    axes = axes[:, 0]
    steps, losses = [r["step"] for r in train], [r["loss"] for r in train]
    window = max(1, len(losses) // 25)  # a smoothed curve once there are enough points to smooth
    axes[0].plot(steps, losses, lw=0.6 if window > 1 else 1.4, alpha=0.35 if window > 1 else 1.0, color="C0",
                 label="each logged step")  # fmt: skip
    if window > 1:
        axes[0].plot(steps, smoothed(losses, window), lw=1.6, color="C0", label=f"moving average of {window}")
    axes[0].set_ylabel(loss_unit)
    axes[0].set_title("training loss")
    axes[0].legend(loc="upper right", fontsize=8)
    for i, (ax, key) in enumerate(zip(axes[1:], keys), start=1):
        points = [r for r in val if finite(r, key)]
        ax.plot([r["step"] for r in points], [r[key] for r in points], "o-", color=f"C{i}", ms=3)
        ax.set_ylabel(loss_unit if key == "loss" else METRIC_UNITS.get(key, key))
        ax.set_title(f"validation {key}" + (" (selects the weights)" if key == metric else ""))
    for ax in axes:
        ax.grid(alpha=0.3)
        if selected is not None:
            ax.axvline(selected, color="0.4", ls="--", lw=0.8)
    if selected is not None:
        axes[-1].annotate(
            f"selected step {selected}", (selected, 0), xycoords=("data", "axes fraction"), xytext=(-4, 4),
            textcoords="offset points", fontsize=8, color="0.3", ha="right",
        )  # fmt: skip
    axes[-1].set_xlabel("training step")
    fig.suptitle(f"{task}: {Path(run).name}")
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
