"""The training loop. It knows nothing about tasks: it is given a model, a function from a step
number to that step's batch (so the data position of a resumed run is just its step), a step
function returning the loss (and any recurrent state to carry to the next batch, detached here:
truncated BPTT; and optionally the loss's weight, the number of terms its mean is over, which
under DDP weighs each rank's unequal share: `loss_and_weight`, `shard_loss`), an optional
evaluation, and a frozen TrainConfig.

Every `eval_every` steps it evaluates, keeps the best weights (by `metric`), writes the latest
checkpoint and appends JSON lines to RUN_DIR/metrics.jsonl (strict JSON: a non-finite value is
written as null, so that every JSON reader takes the file; TensorBoard gets the value itself).
A non-finite loss or gradient never reaches the weights: the step is skipped and counted, and
`max_nonfinite` in a row stop the run.
Resuming loads the latest checkpoint (checked: a damaged or edited one is an error naming it),
drops the metric lines logged after it, and continues so that losses and metrics equal those of a
run never interrupted (same process type, CPU); a run killed before its first checkpoint starts
over from step 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rnnkit._config import MAX_STEPS, Options, integer, one_of, option, positive, real
from rnnkit.errors import RnnkitError, RnnkitValueError
from rnnkit.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    write_bytes,
    write_json,
)

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "step", "plateau")
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig(Options):
    steps: int = option(1000, "total training steps (a resumed run continues to this)", integer(1, MAX_STEPS))
    optimizer: str = option("adam", "the optimiser", one_of(*OPTIMIZERS))
    lr: float = option(1e-3, "base learning rate", positive())
    momentum: float = option(0.9, "momentum of sgd and rmsprop", real(0.0, 1.0, high_open=True))
    weight_decay: float = option(0.0, "weight decay (decoupled for adamw)", real(0.0))
    schedule: str = option(
        "constant",
        "after warm-up: constant; cosine (to 0 at --steps); step (x gamma every --step-size "
        "steps); plateau (x gamma after --plateau-patience evaluations without improvement)",
        one_of(*SCHEDULES),
    )
    warmup_steps: int = option(
        0, "linear learning-rate warm-up from 0 over this many steps", integer(0, MAX_STEPS)
    )
    gamma: float = option(
        0.5, "decay factor of the step and plateau schedules", real(0.0, 1.0, low_open=True)
    )
    step_size: int = option(1000, "steps between decays of the step schedule", integer(1, MAX_STEPS))
    plateau_patience: int = option(
        2, "evaluations without improvement before a plateau decay", integer(1, MAX_STEPS)
    )
    clip_norm: float | None = option(
        1.0,
        "clip the global gradient norm to this",
        positive(special={None: "no clipping", 0.0: "no clipping"}),
    )
    clip_value: float | None = option(
        None,
        "clip each gradient element to +-this (before the norm)",
        positive(special={None: "no clipping"}),
    )
    eval_every: int = option(
        100, "evaluate, select the best weights and checkpoint every N steps", integer(1, MAX_STEPS)
    )
    patience: int | None = option(
        None,
        "early stopping: evaluations without improvement",
        integer(1, MAX_STEPS, special={None: "no early stopping"}),
    )
    max_nonfinite: int = option(
        10, "consecutive non-finite steps (skipped) before the run stops", integer(1, MAX_STEPS)
    )
    precision: str = option(
        "fp32", "fp32, or bf16: steps under bfloat16 autocast (recurrences in fp32)", one_of(*PRECISIONS)
    )


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    kw = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=config.momentum, **kw)
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=config.momentum, **kw)
    return (torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW)(params, **kw)


def lr_factor(config: TrainConfig, step: int) -> float:
    """The multiplier of the base learning rate at `step`: linear warm-up, then the schedule
    (plateau decay is applied by the trainer, which sees the validation metric)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        span = max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / span)))
    if config.schedule == "step":
        return config.gamma ** ((step - config.warmup_steps) // config.step_size)
    return 1.0


def _to(obj, device):
    """Tensors in (nested tuples of) a batch moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    return obj


def _shard(obj, rank: int, world: int):
    """This rank's share of a global batch: every tensor's rows split over the ranks as evenly as
    they go (shares differ by one row at most; the loss weighting below makes the gradient the
    whole batch's whatever the shares)."""
    if isinstance(obj, torch.Tensor) and obj.dim() > 0:  # a final batch smaller than the world
        return obj.tensor_split(world)[rank]  # leaves some ranks none: they add nothing
    if isinstance(obj, (tuple, list)):
        return type(obj)(_shard(o, rank, world) for o in obj)
    return obj


def loss_and_weight(out, batch) -> tuple:
    """A step function's (loss, state[, weight]) as (loss, state, weight): `weight` is how many
    terms (or how much weight) the loss averages over, the shard's rows when not given."""
    if len(out) == 3:
        return out
    loss, state = out
    rows = next((t.shape[0] for t in _leaves(batch) if isinstance(t, torch.Tensor) and t.dim() > 0), 1)
    return loss, state, rows


def shard_loss(loss: torch.Tensor, weight, total, world: int) -> torch.Tensor:
    """A rank's mean loss scaled so that DistributedDataParallel's average of the ranks' gradients
    is the whole batch's mean gradient: times the rank's share of the terms and `world` (DDP
    divides by it); 1 with equal shares. A share of no terms (an empty one) gives 0, not the NaN
    of a mean over nothing."""
    if float(weight) == 0:
        return torch.where(torch.isfinite(loss), loss, torch.zeros_like(loss)) * 0.0
    return loss * (float(weight) * world / float(total))


def _leaves(obj):
    if isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _leaves(o)
    else:
        yield obj


def _detach_cpu(state):
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach().cpu()
    return type(state)(_detach_cpu(s) for s in state)


def _detach(state):
    if state is None or isinstance(state, torch.Tensor):
        return None if state is None else state.detach()
    return type(state)(_detach(s) for s in state)


def strict(record: dict) -> dict:
    """`record` with every non-finite float as None (JSON null): NaN and Infinity are not JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


_TREE = ("model", "optimizer", "scheduler", "rng", "step", "state", "best", "best_step")
_TREE += ("since_best", "plateau", "counts", "config")


def _check_tree(tree, source: str) -> None:
    """A training checkpoint holds what `Trainer.resume` restores, of the right types and in range
    (an edited latest.json is refused here, not met as a KeyError or a wrong run later)."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise RnnkitValueError(f"checkpoint {source}: {what}")

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need(isinstance(tree, dict), "is not a training checkpoint (an object)")
    missing = [k for k in _TREE if k not in tree]
    need(not missing, f"lacks {', '.join(missing)}")
    config = tree["config"]
    need(isinstance(config, dict) and whole(config.get("steps")), "config.steps must be an int")
    step = tree["step"]
    need(whole(step), f"step must be an int, got {step!r}")
    need(0 <= step <= config["steps"], f"step must be in [0, {config['steps']}] (its --steps), got {step}")
    model = tree["model"]
    need(
        isinstance(model, dict) and all(isinstance(v, torch.Tensor) for v in model.values()),
        "model must map names to tensors",
    )
    need(
        isinstance(tree["optimizer"], dict) and isinstance(tree["scheduler"], dict),
        "optimizer and scheduler must be objects",
    )
    need(isinstance(tree["rng"], dict), "rng must be an object")
    best = tree["best"]
    need(
        best is None or (isinstance(best, (int, float)) and not isinstance(best, bool)),
        f"best must be a number or null, got {best!r}",
    )
    need(
        tree["best_step"] is None or (whole(tree["best_step"]) and 0 <= tree["best_step"] <= step),
        f"best_step must be null or in [0, {step}], got {tree['best_step']!r}",
    )
    need(
        whole(tree["since_best"]) and tree["since_best"] >= 0,
        f"since_best must be an int >= 0, got {tree['since_best']!r}",
    )
    plateau = tree["plateau"]
    need(
        isinstance(plateau, (int, float)) and not isinstance(plateau, bool) and 0 < plateau <= 1,
        f"plateau must be in (0, 1], got {plateau!r}",
    )
    counts = tree["counts"]
    need(
        isinstance(counts, dict) and all(whole(v) and v >= 0 for v in counts.values()),
        "counts must map names to ints >= 0",
    )

    def states(s) -> bool:
        return (
            s is None or isinstance(s, torch.Tensor) or (isinstance(s, (list, tuple)) and all(map(states, s)))
        )

    need(states(tree["state"]), "state must be null, a tensor, or tensors nested in lists")
    ranks = tree.get("ranks", [])
    need(
        isinstance(ranks, list)
        and all(
            isinstance(r, dict) and isinstance(r.get("rng"), dict) and states(r.get("state")) for r in ranks
        ),
        "ranks must be a list of each rank's rng and state",
    )


def _logged_by(line: str, step: int) -> bool:
    """Whether a metrics line was written at or before `step` (a line cut short by a killed
    process is not)."""
    try:
        return json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


class NonFiniteError(RnnkitError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        *,
        batches: Callable[[int], object],
        step_fn: Callable[[nn.Module, object, object], tuple],
        run_dir,
        evaluate: Callable[[nn.Module], dict] | None = None,
        metric: str = "loss",
        meta: dict | None = None,
        progress: Callable[[dict], None] | None = None,
        on_evaluate: Callable[[nn.Module, int, object], None] | None = None,
    ):
        self.model, self.config = model, config
        self.batches, self.step_fn, self.evaluate = batches, step_fn, evaluate
        self.run_dir, self.metric, self.meta = Path(run_dir), metric, meta or {}
        self.progress = progress  # called with every record logged (e.g. to print a line)
        # called after each evaluation on rank 0 with (model, step, TensorBoard SummaryWriter): what
        # a caller adds to TensorBoard there (text samples, figures), knowing its task
        self.on_evaluate = on_evaluate
        self._tb = None
        # Under torchrun (a process group initialised), train with DistributedDataParallel: each
        # rank takes its share of every global batch; rank 0 alone evaluates, logs and saves.
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        self.net = DistributedDataParallel(model) if self.world > 1 else model
        self.optimizer = make_optimizer(config, model.parameters())
        self.plateau = 1.0  # the reduce-on-plateau multiplier
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(config, s) * self.plateau
        )
        self.step, self.state, self.best, self.best_step = 0, None, math.inf, None
        self.since_best = 0
        self.counts = {"clipped": 0, "clipped_value": 0, "nonfinite": 0}
        if self.rank == 0:  # what rebuilds the run: the caller's description and this config
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", {**self.meta, "train": asdict(config)})

    # --- checkpoints --------------------------------------------------------------------------

    def _tree(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
            "rng": rng_state(),
            "step": self.step,
            "state": self.state,
            "best": None if math.isinf(self.best) else self.best,  # strict JSON: no Infinity
            "best_step": self.best_step,
            "since_best": self.since_best,
            "plateau": self.plateau,
            "counts": dict(self.counts),
            "config": asdict(self.config),
            "meta": self.meta,
            # under DDP, what differs by rank: its random state (dropout over its own rows) and
            # its carried recurrent state (its rows); `ranks` holds one of each per rank
            **({"ranks": self._ranks} if self.world > 1 else {}),
        }

    def resume(self) -> bool:
        """Continue from RUN_DIR's latest checkpoint; metric lines logged after it are dropped.
        A run without one (killed before its first evaluation) starts over from step 0: the
        caller built the model as the run first did. Returns whether a checkpoint was loaded."""
        found = (self.run_dir / "latest.json").exists()
        if found:
            source = str(self.run_dir / "latest.json")
            tree = load_checkpoint(self.run_dir, "latest")
            _check_tree(tree, source)
            try:
                self.model.load_state_dict(tree["model"])
                self.optimizer.load_state_dict(tree["optimizer"])
                self.scheduler.load_state_dict({**tree["scheduler"], "lr_lambdas": [None]})
                ranks = tree.get("ranks") or [{"rng": tree["rng"], "state": tree["state"]}]
                if len(ranks) != self.world:
                    raise RnnkitValueError(
                        f"the run was trained by {len(ranks)} process(es) and this is {self.world}: "
                        f"resume it with as many (torchrun --nproc-per-node {len(ranks)}, or no torchrun "
                        "for 1), so that every rank's random and carried state are restored"
                    )
                set_rng_state(ranks[self.rank]["rng"])
                tree["state"] = ranks[self.rank]["state"]
            except RnnkitValueError as e:
                raise RnnkitValueError(f"checkpoint {source}: {e}") from None
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise RnnkitValueError(f"checkpoint {source} does not fit this run: {what}") from None
            self.step, self.state = tree["step"], tree["state"]
            self.best = math.inf if tree["best"] is None else tree["best"]
            self.best_step = tree["best_step"]
            self.since_best, self.counts = tree["since_best"], dict(tree["counts"])
            self.plateau = tree["plateau"]
        path = self.run_dir / "metrics.jsonl"
        if path.exists() and self.rank == 0:
            kept = [line for line in path.read_text().splitlines() if _logged_by(line, self.step)]
            write_bytes(path, "".join(line + "\n" for line in kept).encode())
        return found

    def log(self, record: dict) -> None:
        """Append a record to RUN_DIR/metrics.jsonl and to TensorBoard's RUN_DIR/tb (and show it
        to `progress`); rank 0 only."""
        if self.rank != 0:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(strict(record), allow_nan=False) + "\n")
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)):
                self.writer().add_scalar(f"{record['split']}/{key}", value, record["step"])
        self.writer().flush()
        if self.progress is not None:
            self.progress(record)

    def writer(self):
        """TensorBoard's SummaryWriter of RUN_DIR/tb (rank 0), made on first use."""
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

            self._tb = SummaryWriter(str(self.run_dir / "tb"))
        return self._tb

    def log_hparams(self, hparams: dict) -> None:
        """The run's hyper-parameters (scalars, strings, bools) with its best validation metric, in
        TensorBoard's HParams tab, so that runs compare side by side; rank 0."""
        if self.rank != 0:
            return
        from torch.utils.tensorboard.summary import hparams as summary

        values = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
        metric = {f"val/{self.metric}": self.best if math.isfinite(self.best) else float("nan")}
        for part in summary(values, metric):
            self.writer().file_writer.add_summary(part)
        self.writer().flush()

    # --- the loop -----------------------------------------------------------------------------

    def _train_step(self) -> dict | None:
        """One update; None when it was skipped for a non-finite loss or gradient."""
        self.model.train()
        device = next(self.model.parameters()).device  # the batch goes where the model is
        batch = _to(self.batches(self.step), device)
        if self.world > 1:
            batch = _shard(batch, self.rank, self.world)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bf16"):
            loss, state, weight = loss_and_weight(self.step_fn(self.net, batch, self.state), batch)
        loss = loss.float()
        if self.world > 1:  # shares may differ: weigh each rank's mean by its share of the terms
            total = torch.tensor(float(weight), dtype=torch.float64, device=device)
            dist.all_reduce(total)
            loss = shard_loss(loss, weight, total, self.world)
        self.state = _detach(state)  # truncated BPTT: the state goes on, its graph does not
        self.optimizer.zero_grad(set_to_none=True)
        loss_ok = torch.isfinite(loss).float()
        if self.world > 1:  # every rank skips, or none does: backward is a collective
            dist.all_reduce(loss_ok, op=dist.ReduceOp.MIN)
        if loss_ok:
            loss.backward()  # under DDP the gradients arrive averaged, the same on every rank
        params = [p for p in self.model.parameters() if p.grad is not None]
        finite = bool(loss_ok) and all(bool(torch.isfinite(p.grad).all()) for p in params)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            self.counts["nonfinite"] += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= self.config.max_nonfinite:
                raise NonFiniteError(
                    f"{self._skipped_in_a_row} steps in a row had a non-finite loss or gradient "
                    f"(last at step {self.step}); lower the learning rate or tighten clip_norm"
                )
            return None
        self._skipped_in_a_row = 0
        if self.config.clip_value is not None:
            if any(bool((p.grad.abs() > self.config.clip_value).any()) for p in params):
                self.counts["clipped_value"] += 1
            nn.utils.clip_grad_value_(params, self.config.clip_value)
        norm = nn.utils.clip_grad_norm_(params, self.config.clip_norm or math.inf)  # 0, None: off
        if self.config.clip_norm and norm > self.config.clip_norm:
            self.counts["clipped"] += 1
        self.optimizer.step()
        if self.world > 1:  # log the global batch's loss: the ranks' scaled means, averaged
            loss = loss.detach().clone()
            dist.all_reduce(loss)
            loss /= self.world
        return {"loss": loss.item(), "grad_norm": float(norm), "lr": self.optimizer.param_groups[0]["lr"]}

    def _evaluate_and_checkpoint(self) -> bool:
        """Evaluate, keep the best weights, write the latest checkpoint; True to stop early.
        Under DDP rank 0 does this and tells the others whether to stop and the plateau factor."""
        stop = False
        if self.world > 1:  # every rank's random and carried state, for rank 0's checkpoint
            self._ranks = [None] * self.world
            mine = {"rng": rng_state(), "state": _detach_cpu(self.state)}
            dist.all_gather_object(self._ranks, mine)
        if self.rank == 0:
            stop = self._evaluate_and_save()
        if self.world > 1:
            shared = torch.tensor([float(stop), self.plateau], dtype=torch.float64)
            dist.broadcast(shared, src=0)
            stop, self.plateau = bool(shared[0]), float(shared[1])
            self._apply_plateau()
        return stop

    def _apply_plateau(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)

    def _evaluate_and_save(self) -> bool:
        stop = False
        if self.evaluate is not None:
            self.model.eval()
            with torch.no_grad():
                metrics = self.evaluate(self.model)
            self.log({"step": self.step, "split": "val", **metrics})
            for name, count in self.counts.items():  # updates clipped or skipped so far
                self.writer().add_scalar(f"train/{name}_steps", count, self.step)
            if self.on_evaluate is not None:
                self.on_evaluate(self.model, self.step, self.writer())
                self.writer().flush()
            value = metrics[self.metric]
            if value < self.best:  # model.safetensors holds the weights selected by validation
                self.best, self.since_best, self.best_step = value, 0, self.step
                save_weights(self.run_dir / "model.safetensors", self.model.state_dict())
            else:
                self.since_best += 1
                stop = self.config.patience is not None and self.since_best >= self.config.patience
                if self.config.schedule == "plateau" and self.since_best % self.config.plateau_patience == 0:
                    self.plateau *= self.config.gamma
                    self._apply_plateau()
        else:  # nothing to select by: the latest weights are the run's model
            save_weights(self.run_dir / "model.safetensors", self.model.state_dict())
        save_checkpoint(self.run_dir, "latest", self._tree())
        return stop

    def fit(self) -> dict:
        """Train to config.steps (from where a resumed run left off); returns the counts."""
        self._skipped_in_a_row = 0
        while self.step < self.config.steps:
            record = self._train_step()
            self.step += 1
            if record is not None:  # the schedule counts updates; a skipped step is none
                self.scheduler.step()
                self.log({"step": self.step, "split": "train", **record})
            if self.step % self.config.eval_every == 0 or self.step == self.config.steps:
                if self._evaluate_and_checkpoint():
                    break
        return dict(self.counts)
