"""forecast (N-vs-1 on numbers): the next value of a series from the `window` values before it.

Data: built-in `sunspots` (yearly, 1700-2008) or `macrodata` (US quarterly: growth of real GDP,
consumption and investment, unemployment, inflation, T-bill rate); or `--data FILE`, a CSV read
with `--target COLUMN` and optionally `--columns A,B,...` (other inputs; the target is always one).
The last `test_fraction` of the series is the test span (sunspots: 1969-2008), the last 15% of
the rest validation. Scaling (mean, std per column) is fitted on the training part only.
Model: `SequenceClassifier` with a linear head of one output per input column, read as the next
value of every column (so forecasts can be fed back: the multi-step forecast is recursive).
Metrics in original units of the target: one-step RMSE (each test point from the true values
before it), multi-step RMSE (recursive over the whole test span from the last pre-test window),
and ARIMA's one-step RMSE on the same split (order chosen by AIC over p <= 10, d <= 1, q <= 2 on
everything before the test span; the search is cached in RUN_DIR/baseline.json).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rnnkit._config import (
    MAX_BATCH,
    MAX_LAYERS,
    MAX_LENGTH,
    MAX_UNITS,
    integer,
    one_of,
    option,
    rate,
    real,
    string,
)
from rnnkit.data.datasets import macrodata, sunspots
from rnnkit.data.files import column_index, numbers, read_table
from rnnkit.errors import RnnkitValueError
from rnnkit.models import SequenceClassifier, SequenceClassifierConfig
from rnnkit.models._recurrent import regularizers
from rnnkit.tasks._common import (
    OnnxGraph,
    RegularizerOptions,
    Task,
    cached_baseline,
    cell_option,
    data_key,
    device_of,
    epoch_batch,
    pyplot,
)


@dataclass(frozen=True)
class ForecastConfig(RegularizerOptions):
    dataset: str = option("sunspots", "built-in series when no --data", one_of("sunspots", "macrodata"))
    target: str = option(
        "", "the column to forecast (default: sunspots SUNACTIVITY, macrodata infl)", string()
    )
    columns: str = option(
        "", "comma-separated input columns besides the target (default: none; macrodata: all)", string()
    )
    window: int = option(10, "past values the model reads for each forecast", integer(1, MAX_LENGTH))
    test_fraction: float = option(
        0.13, "the last share of the series held out as test", real(0, 0.5, low_open=True, high_open=True)
    )
    cell: str = cell_option("gru")
    hidden_size: int = option(32, "units per recurrent layer", integer(1, MAX_UNITS))
    num_layers: int = option(1, "stacked recurrent layers", integer(1, MAX_LAYERS))
    dropout: float = option(0.0, "dropout on inputs, between layers and before the head", rate())
    batch_size: int = option(32, "windows per step", integer(1, MAX_BATCH))
    predict_steps: int = option(5, "values `predict` forecasts after its input", integer(1, MAX_LENGTH))


def _search_space(order) -> bool:
    """Whether `order` is an ARIMA (p, d, q) of the AIC search: p <= 10, d <= 1, q <= 2."""
    return (
        len(order) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in order)
        and order[0] <= 10
        and order[1] <= 1
        and order[2] <= 2
    )


@dataclass(frozen=True)
class Series:
    time: np.ndarray  # (N,) the time axis (years, quarters or row numbers)
    values: np.ndarray  # (N, C) column 0 is the target
    names: list[str]


def read_series(config: ForecastConfig, data) -> Series:
    wanted = [c for c in config.columns.split(",") if c.strip()]
    if data is None:
        if config.dataset == "sunspots":
            when, values = sunspots()
            header, table = ["SUNACTIVITY"], values
        else:
            when, table, header = macrodata()
        target = config.target or header[0 if config.dataset == "sunspots" else 4]
        if config.dataset == "macrodata" and not wanted:
            wanted = header
        idx = [column_index("built-in data", header, target, "--target")]
        idx += [
            column_index("built-in data", header, c.strip(), "--columns")
            for c in wanted
            if c.strip() != target
        ]
        return Series(np.asarray(when, dtype=np.float64), table[:, idx], [header[i] for i in idx])
    header, rows = read_table(data)
    if not config.target:
        raise RnnkitValueError(
            f"--target: name the column of {data} to forecast (columns: {', '.join(header)})"
        )
    idx = [column_index(data, header, config.target, "--target")]
    idx += [column_index(data, header, c.strip(), "--columns") for c in wanted if c.strip() != config.target]
    values = np.array(numbers(data, rows, idx, header), dtype=np.float64)
    return Series(np.arange(len(rows), dtype=np.float64), values, [header[i] for i in idx])


class ForecastTask(Task):
    name = "forecast"
    metric = "loss"
    loss_unit = "mean squared error (standardised units)"
    # measured on sunspots over seeds 0-2: cosine decay over 3,000 steps beats 1,500 (15.8 vs 16.3)
    train_defaults = {"steps": 3000, "lr": 3e-3, "schedule": "cosine", "eval_every": 50}

    def __init__(self, config: ForecastConfig, *, data=None, saved: dict | None = None):
        self.config, self.data = config, data
        self.series = read_series(config, data)
        N, W = len(self.series.values), config.window
        self.test_start = N - max(1, round(N * config.test_fraction))
        self.val_start = self.test_start - max(1, round(self.test_start * 0.15))
        if self.val_start - W < 2 * W:
            raise RnnkitValueError(
                f"--data: a series of {N} points is too short for --window {W} (need about {6 * W})"
            )
        state = (saved or {}).get("task_state")
        train = self.series.values[: self.val_start]
        self.mean = np.array(state["mean"]) if state else train.mean(0)
        self.std = np.array(state["std"]) if state else train.std(0) + 1e-8
        self.scaled = torch.tensor(self.scale(self.series.values), dtype=torch.float32)  # (N, C)

    def describe(self) -> dict:
        state = {"mean": self.mean.tolist(), "std": self.std.tolist(), "columns": self.series.names}
        return {"task": self.name, "task_config": asdict(self.config), "task_state": state}

    def scale(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def build_model(self) -> SequenceClassifier:
        c = self.config
        return SequenceClassifier(
            SequenceClassifierConfig(
                len(self.series.names),  # a linear head: the next value of every column
                input_size=len(self.series.names),
                hidden_size=c.hidden_size,
                num_layers=c.num_layers,
                cell=c.cell,
                dropout=c.dropout,
                **regularizers(c),
            )
        )

    # --- training -------------------------------------------------------------------------------

    def windows(self, values: torch.Tensor, targets: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, W, C) before each target index, and the targets (B, C)."""
        W = self.config.window
        idx = torch.tensor(list(targets))
        x = values[idx[:, None] - W + torch.arange(W)[None, :]]  # (B, W, C)
        return x, values[idx]

    def batches(self, step: int):
        targets = range(self.config.window, self.val_start)
        idx = epoch_batch(len(targets), self.config.batch_size, step)
        return self.windows(self.scaled, [targets[i] for i in idx.tolist()])

    @staticmethod
    def step_fn(model, batch, state):
        x, y = batch
        return F.mse_loss(model(x), y), None

    @torch.no_grad()
    def one_step(self, model, values: torch.Tensor, targets: range) -> np.ndarray:
        """One-step forecasts (scaled, all columns) of the given indices of `values`."""
        model.eval()
        x, _ = self.windows(values, targets)
        return model(x.to(device_of(model))).float().cpu().numpy()

    def trivial(self) -> tuple[float, str]:
        # the training mean is 0 in scaled units
        val = self.scaled[self.val_start : self.test_start].numpy()
        return float(np.mean(val**2)), "the training mean"

    def evaluate(self, model) -> dict:
        pred = self.one_step(model, self.scaled, range(self.val_start, self.test_start))
        err = (pred[:, 0] - self.scaled[self.val_start : self.test_start, 0].numpy()) * self.std[0]
        return {
            "loss": float(np.mean((pred - self.scaled[self.val_start : self.test_start].numpy()) ** 2)),
            "rmse": float(np.sqrt(np.mean(err**2))),
        }

    # --- the commands ---------------------------------------------------------------------------

    @torch.no_grad()
    def recursive(self, model, history: torch.Tensor, steps: int) -> np.ndarray:
        """`steps` forecasts (scaled, all columns), each fed back as the newest input."""
        model.eval()
        window = history[-self.config.window :].clone()
        out = []
        for _ in range(steps):
            nxt = model(window[None].to(device_of(model))).float().cpu()[0]  # (C,)
            out.append(nxt)
            window = torch.cat([window[1:], nxt[None]])
        return torch.stack(out).numpy()

    def test_metrics(self, model, data=None, **options) -> dict:
        if data is None:
            values, start = self.series.values, self.test_start
        else:  # a whole other series: every point after the first window is a test point
            other = read_series(self.config, data)
            if other.names != self.series.names:
                raise RnnkitValueError(
                    f"--data: {data} has columns {other.names}, the run was trained on {self.series.names}"
                )
            values, start = other.values, self.config.window
            if len(values) <= start:
                raise RnnkitValueError(f"--data: {data} needs more than --window {start} rows")
        scaled = torch.tensor(self.scale(values), dtype=torch.float32)
        truth = values[start:, 0]
        one = self.one_step(model, scaled, range(start, len(values)))[:, 0] * self.std[0] + self.mean[0]
        multi = self.recursive(model, scaled[:start], len(values) - start)[:, 0] * self.std[0] + self.mean[0]
        baseline, order = self.arima_one_step(values[:, 0], start)
        rmse = lambda p: float(np.sqrt(np.mean((p - truth) ** 2)))  # noqa: E731
        return {
            "rmse": rmse(one),
            "rmse_multistep": rmse(multi),
            "baseline_rmse": rmse(baseline),
            "baseline_order": list(order),
            "test_points": len(truth),
            "forecast": one.tolist(),
            "forecast_multistep": multi.tolist(),
            "baseline_forecast": baseline.tolist(),
        }

    def arima_order(self) -> tuple[int, int, int]:
        """ARIMA(p, d, q) by AIC over p <= 10, d <= 1, q <= 2, fitted on the pre-test part;
        searched once per run (RUN_DIR/baseline.json)."""
        series = self.series.values[: self.test_start, 0]

        def search() -> dict:
            from statsmodels.tsa.arima.model import ARIMA

            best = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter from orders that fit badly
                for d in (0, 1):
                    for p in range(11):
                        for q in range(3):
                            try:
                                aic = ARIMA(series, order=(p, d, q)).fit().aic
                            except (ValueError, np.linalg.LinAlgError):
                                continue
                            if np.isfinite(aic) and (best is None or aic < best[0]):
                                best = (aic, (p, d, q))
            return {"order": list(best[1] if best else (1, 0, 0)), "aic": float(best[0]) if best else None}

        def valid(saved) -> bool:
            order = saved["order"]
            return isinstance(order, list) and len(order) == 3 and _search_space(tuple(order))

        return tuple(cached_baseline(self.run_dir, data_key(series), search, valid)["order"])

    def arima_one_step(self, target: np.ndarray, start: int) -> tuple[np.ndarray, tuple]:
        """ARIMA's one-step forecasts of target[start:], its parameters fitted on the pre-test part
        of the training series and applied unchanged (no refit) to `target`."""
        from statsmodels.tsa.arima.model import ARIMA

        order = self.arima_order()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ARIMA(self.series.values[: self.test_start, 0], order=order).fit()
            applied = fit.apply(target)
        return np.asarray(applied.predict(start=start, end=len(target) - 1)), order

    def predict_values(self, model, inputs: list[str], **options) -> list[list[float]]:
        """Each INPUT: recent values, comma-separated (several columns: steps separated by ';',
        columns by ','); the next `predict_steps` values of the target."""
        C = len(self.series.names)
        out = []
        for text in inputs:
            try:
                steps = [
                    [float(v) for v in part.split(",")] for part in (text.split(";") if C > 1 else [text])
                ]
                if C == 1:
                    steps = [[v] for v in steps[0]]
            except ValueError:
                raise RnnkitValueError(f"INPUT must be comma-separated numbers, got {text!r}") from None
            if any(len(s) != C for s in steps):
                raise RnnkitValueError(f"INPUT: each step needs {C} values ({', '.join(self.series.names)})")
            if not np.isfinite(np.array(steps)).all():
                raise RnnkitValueError(f"INPUT must hold finite numbers, got {text!r}")
            history = torch.tensor(self.scale(np.array(steps)), dtype=torch.float32)
            nxt = self.recursive(model, history, self.config.predict_steps)[:, 0] * self.std[0] + self.mean[0]
            out.append([float(v) for v in nxt])
        return out

    def onnx_graphs(self, model) -> list[OnnxGraph]:
        """One graph: recent values (batch, time, columns), in the data's units -> the next value
        of every column (batch, columns); the scaling is inside, the recursion is the caller's."""
        C, W = len(self.series.names), self.config.window
        values = torch.zeros(2, W, C, device=next(model.parameters()).device)
        return [
            OnnxGraph(
                _NextValues(model, self.mean, self.std),
                (values,),
                ("values",),
                ("next",),
                {"values": {0: "batch", 1: "time"}},
                doc=f"values: float32 (batch, time, {C}), the last `window` rows of "
                f"{', '.join(self.series.names)}; next: float32 (batch, {C}), the following row "
                "(the first column is the target)",
            )
        ]

    def onnx_metadata(self, model) -> dict:
        return {
            "columns": self.series.names,
            "window": self.config.window,
            "predict_steps": self.config.predict_steps,
        }

    def format_prediction(self, text: str, value) -> str:
        return ",".join(f"{v:.4g}" for v in value)

    def plot(self, model, run_dir: Path) -> list[Path]:
        """RUN_DIR/forecast.png: truth, the model's one-step and recursive forecasts and ARIMA's."""
        m = self.test_metrics(model)
        t, v, s = self.series.time, self.series.values[:, 0], self.test_start
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(10, 4.5))
        lo = max(0, s - 3 * (len(v) - s))
        ax.plot(t[lo:], v[lo:], "k-", lw=1.2, label="truth")
        ax.plot(t[s:], m["forecast"], "o-", ms=3, label=f"{self.config.cell} one-step (RMSE {m['rmse']:.2f})")
        ax.plot(
            t[s:],
            m["forecast_multistep"],
            "--",
            label=f"{self.config.cell} recursive (RMSE {m['rmse_multistep']:.2f})",
        )
        order = tuple(m["baseline_order"])
        ax.plot(
            t[s:],
            m["baseline_forecast"],
            "s-",
            ms=3,
            alpha=0.7,
            label=f"ARIMA{order} one-step (RMSE {m['baseline_rmse']:.2f})",
        )
        ax.axvline(t[s], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("time")
        ax.set_ylabel(self.series.names[0])
        ax.set_title("test span: forecasts against the truth")
        ax.legend()
        ax.grid(alpha=0.3)
        out = Path(run_dir) / "forecast.png"
        fig.savefig(out, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return [out]


class _NextValues(torch.nn.Module):
    """The exported forecaster: values in the data's units -> the next row in the data's units."""

    def __init__(self, model, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, values):
        return self.model((values - self.mean) / self.std).float() * self.std + self.mean
