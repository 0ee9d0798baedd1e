"""The training recipe: the one epoch loop of this project, knowing nothing of Ray.

Every way this project trains — a Ray Train worker (:mod:`pipeline.train.worker`: frames from
Ray Data, DDP) and a frozen-encoder Tune trial (:mod:`pipeline.tune.fast`: cached frame
embeddings, one process) — drives the same :class:`Recipe`::

    recipe = Recipe(spec, model, device=device, reduce=all_reduce)   # setup
    recipe.load_state_dict(saved)                                    # resume (optional)
    for epoch in recipe.epochs():
        train = recipe.train_epoch(batches)                          # (inputs, labels) pairs
        evals = {recipe.spec.selection_split: recipe.evaluate(eval_batches)}
        row, improved = recipe.end_epoch(train, evals, seconds)      # metric row, best epoch
        ... save the best weights when improved; checkpoint recipe.state_dict(); report row
    test = recipe.finish(load_best, test_batches)                    # the selected epoch

What differs between the two callers stays in them: where batches come from, how sums are
all-reduced (``reduce``), where checkpoints and the best epoch's weights go, what is reported.
Everything that decides a result is here, once: the step (mixed precision, gradient scaler),
the metric row and its keys (:data:`METRIC_KEYS`), best-epoch selection, the selection split,
and "the test split is evaluated once, with the selected weights".

The run's progress lives in one :class:`RunState` that is checkpointed and restored whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.config import ExperimentConfig, ModelConfig, TrainConfig
from pipeline.metrics import EvalMetrics, is_better
from pipeline.train.evaluation import autocast_for, evaluate_pairs
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.typed import from_dict, to_dict

__all__ = [
    "RunSpec",
    "RunState",
    "Recipe",
    "METRIC_KEYS",
    "selection_split",
    "reported_metrics",
    "build_run_model",
    "progress_line",
]

# What every epoch reports (Ray Train / Tune metrics, metrics.csv, TensorBoard, MLflow), defined once.
# ``{split}`` is the selection split (``test`` in the paper's protocol, ``val`` in the honest one);
# in validation mode the last epoch also carries ``test_*`` (evaluated once with the selected weights).
METRIC_KEYS = (
    "epoch",
    "train_loss",
    "train_acc",
    "lr",  # the temporal model's learning rate; ``lr_<group>`` for the others
    "{split}_loss",
    "{split}_uar",
    "{split}_war",
    "{split}_recall_<class>",
    "best_<metric>",
    "best_epoch",
    "seconds",
)


def selection_split(selection: str) -> str:
    """The split that selects the best epoch: ``test`` (the paper) or ``val`` (held out from train)."""
    return "test" if selection == "test" else "val"


def reported_metrics(selection: str, best_metric: str) -> list[str]:
    """The per-epoch metric names a sweep can optimise (see :data:`METRIC_KEYS`)."""
    split = selection_split(selection)
    return [f"{split}_uar", f"{split}_war", f"{split}_loss", "train_loss", "train_acc", f"best_{best_metric}"]


@dataclass(frozen=True)
class RunSpec:
    """Everything one training run is, fixed when it starts. Plain data travels to workers
    through :meth:`to_dict` / :meth:`from_dict`."""

    model: ModelConfig
    train: TrainConfig
    class_names: tuple[str, ...]
    descriptions: dict[str, list[str]] | None
    run_name: str
    dataset: str = ""
    fold: int = 1
    # How the shards' face crops were made: checkpoints record it so predict crops alike.
    preprocess: dict | None = None
    # The experiment config the run belongs to, saved with its checkpoints.
    experiment: dict = field(default_factory=dict)
    # MLflow settings resolved once by the driver (pipeline.tracking.TrackingSettings.to_dict());
    # None: not tracked.
    tracking: dict | None = None
    # Which description set ``descriptions`` are (pipeline.llm.selection.ChosenSet.record(): id,
    # name, location ...); summary.json and the exported checkpoint record it.
    description_set: dict | None = None
    # The checkpoint the run's model starts from (train.init_checkpoint): {"location": absolute
    # path or URI, "sha256", ...} (pipeline.train.init_checkpoint.init_record); None: CLIP weights.
    init_checkpoint: dict | None = None

    @property
    def selection_split(self) -> str:
        return selection_split(self.train.selection)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """Splits a run evaluates: the test split, plus the validation hold-out when it selects."""
        return ("test", "val") if self.selection_split == "val" else ("test",)

    @classmethod
    def for_experiment(
        cls,
        cfg: ExperimentConfig,
        run_name: str,
        descriptions: dict[str, list[str]] | None,
        tracking: dict | None = None,
        *,
        description_set: dict | None = None,
        init_checkpoint: dict | None = None,
    ) -> RunSpec:
        """The spec of one run of an experiment config (its fold is ``cfg.train.fold``).
        ``init_checkpoint``: the record of ``train.init_checkpoint`` the driver checked; by
        default just its location, made absolute here (workers and trials run elsewhere)."""
        if init_checkpoint is None and cfg.train.init_checkpoint:
            from pipeline.train.init_checkpoint import resolve_location

            init_checkpoint = {"location": resolve_location(cfg.train.init_checkpoint)}
        return cls(
            model=cfg.model,
            train=cfg.train,
            class_names=tuple(cfg.dataset.class_names),
            descriptions=descriptions,
            run_name=run_name,
            dataset=cfg.dataset.name,
            fold=cfg.train.fold,
            experiment=to_dict(cfg),
            tracking=tracking,
            description_set=description_set,
            init_checkpoint=init_checkpoint,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": to_dict(self.model),
            "train": to_dict(self.train),
            "class_names": list(self.class_names),
            "descriptions": self.descriptions,
            "run_name": self.run_name,
            "dataset": self.dataset,
            "fold": self.fold,
            "preprocess": self.preprocess,
            "experiment": self.experiment,
            "tracking": self.tracking,
            "description_set": self.description_set,
            "init_checkpoint": self.init_checkpoint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            model=from_dict(ModelConfig, data["model"], "run spec model"),
            train=from_dict(TrainConfig, data["train"], "run spec train"),
            class_names=tuple(data["class_names"]),
            descriptions=data.get("descriptions"),
            run_name=data["run_name"],
            dataset=data.get("dataset", ""),
            fold=int(data.get("fold", 1)),
            preprocess=data.get("preprocess"),
            experiment=data.get("experiment") or {},
            tracking=data.get("tracking"),
            description_set=data.get("description_set"),
            init_checkpoint=data.get("init_checkpoint"),
        )


@dataclass
class RunState:
    """A run's progress: checkpointed and restored as a whole (plain data only)."""

    epoch: int = 0  # the last finished epoch
    best_epoch: int | None = None
    best_value: float | None = None
    best_row: dict | None = None  # the best epoch's metric row
    history: list[dict] = field(default_factory=list)  # one metric row per finished epoch
    confusions: dict[str, dict] = field(default_factory=dict)  # str(epoch) -> {split: (C, C) counts}
    resumed_from: list[int] = field(default_factory=list)  # epochs a restart or resume continued from
    tracking_run_id: str | None = None  # the MLflow run this run logs to (a restart continues it)


def build_run_model(spec: RunSpec, load_weights: bool = True):
    """The run's model, initialised identically wherever it is built (every rank, every trial):
    CLIP's weights, or with ``spec.init_checkpoint`` that checkpoint's model and all its weights
    (:func:`pipeline.train.init_checkpoint.build_init_model`, checked against the config)."""
    from pipeline.model.build import build_model

    torch.manual_seed(spec.train.seed)
    if spec.init_checkpoint and load_weights:
        from pipeline.train.init_checkpoint import build_init_model

        init = spec.init_checkpoint
        return build_init_model(init["location"], spec.model, spec.class_names, init.get("sha256"))
    return build_model(spec.model, list(spec.class_names), spec.descriptions, load_weights=load_weights)


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (inputs on the device, labels (B,) long)


class Recipe:
    """Optimiser, schedule and run state around one model; see the module docstring.

    ``forward`` maps a batch's inputs to (B, C) logits: the model itself for frames (the DDP
    wrapper while training), ``model.logits_from_frames`` for cached frame embeddings.
    ``reduce`` sums a tensor over workers in place (identity in one process).
    """

    def __init__(
        self,
        spec: RunSpec,
        model: torch.nn.Module,
        *,
        device: torch.device,
        reduce: Callable[[torch.Tensor], Any] | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        train_image_encoder: bool = True,
    ):
        t = spec.train
        self.spec, self.model, self.device = spec, model, device
        self.reduce = reduce or (lambda tensor: tensor)
        self.train_forward = self.eval_forward = forward or model
        groups = model.param_groups(
            t.lr_image_encoder, t.lr_temporal, t.lr_prompt, train_image_encoder=train_image_encoder
        )
        self.optimizer = build_optimizer(groups, t)
        self.scheduler = build_scheduler(self.optimizer, t)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.precision == "fp16")
        self.state = RunState()
        self.tracker = None  # an open pipeline.tracking.RunTracker while tracked() runs

    # -- experiment tracking (MLflow) -----------------------------------------------------

    @contextlib.contextmanager
    def tracked(self, enabled: bool = True):
        """Log this run to MLflow while the block runs, when the spec asks for it and ``enabled``
        (rank 0 only): params at the start (a restarted worker continues the run whose id the
        checkpointed state holds), every epoch's row, the final test row; the run ends FINISHED,
        KILLED (Tune stopped the trial) or FAILED. Yields the tracker, or None."""
        from pipeline.tracking import open_tracker

        self.tracker = open_tracker(self.spec.tracking) if enabled else None
        if self.tracker is None:
            yield None
            return
        spec, s = self.spec, self.state
        s.tracking_run_id = self.tracker.start(
            spec.run_name,
            params=spec.experiment,
            resume_run_id=s.tracking_run_id,
            tags={"dferclip.run_name": spec.run_name, "dferclip.dataset": spec.dataset, "dferclip.fold": spec.fold},
        )
        try:
            yield self.tracker
        except SystemExit:  # tune.report raises it in a trial that Tune stopped (ASHA)
            self.tracker.finish("KILLED")
            raise
        except BaseException:
            self.tracker.finish("FAILED")
            raise
        else:
            self.tracker.finish("FINISHED")
        finally:
            self.tracker = None

    # -- the loop ---------------------------------------------------------------------------

    def epochs(self) -> range:
        """The epochs still to train (all of them in a new run)."""
        return range(self.state.epoch + 1, self.spec.train.epochs + 1)

    @property
    def last_epoch(self) -> bool:
        return self.state.epoch >= self.spec.train.epochs

    def learning_rates(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def train_epoch(self, batches: Batches) -> dict[str, float]:
        """One pass over ``batches``; returns the epoch's training part of the metric row."""
        lrs = self.learning_rates()  # the rates this epoch trains with (before the schedule steps)
        self.model.train()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        for inputs, labels in batches:
            with autocast_for(self.device, self.spec.train.precision):
                logits = self.train_forward(inputs)  # (B, C)
            loss = F.cross_entropy(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = labels.numel()
            sums += torch.stack(
                [
                    loss.detach().double() * n,
                    (logits.argmax(1) == labels).sum().double(),
                    torch.tensor(n, dtype=torch.float64, device=self.device),
                ]
            )
        self.scheduler.step()
        self.reduce(sums)
        count = float(sums[2])
        row = {
            "train_loss": float(sums[0]) / count if count else math.nan,
            "train_acc": float(sums[1]) / count if count else math.nan,
            "lr": lrs.get("temporal", next(iter(lrs.values()))),
        }
        row.update({f"lr_{k}": v for k, v in lrs.items() if k != "temporal"})
        return row

    def evaluate(self, batches: Batches) -> EvalMetrics:
        """Loss, UAR, WAR and confusion over ``batches``, summed over workers."""
        cm, loss_sum = evaluate_pairs(
            self.eval_forward, self.model, batches, len(self.spec.class_names), self.device, self.spec.train.precision
        )
        self.reduce(cm)
        self.reduce(loss_sum)
        return EvalMetrics.from_confusion(cm.cpu().numpy().round().astype("int64"), float(loss_sum.cpu()))

    def end_epoch(
        self, train_row: dict[str, float], evals: dict[str, EvalMetrics], seconds: float
    ) -> tuple[dict, bool]:
        """Close the epoch: its metric row (also appended to the history) and whether it is the
        best so far on ``train.best_metric`` of the selection split."""
        s, metric = self.state, self.spec.train.best_metric
        epoch = s.epoch + 1
        row: dict = {"epoch": epoch, **train_row}
        for split, m in evals.items():
            row.update(m.flat(split, list(self.spec.class_names)))
        s.confusions[str(epoch)] = {split: m.confusion for split, m in evals.items()}
        value = getattr(evals[self.spec.selection_split], metric)
        improved = s.best_epoch is None or is_better(value, s.best_value, metric)
        if improved:
            s.best_epoch, s.best_value, s.best_row = epoch, value, dict(row)
        row[f"best_{metric}"], row["best_epoch"] = s.best_value, s.best_epoch
        row["seconds"] = round(seconds, 3)
        s.history.append(row)
        s.epoch = epoch
        if self.tracker is not None:
            self.tracker.log_epoch(row, step=epoch)
        return row, improved

    def finish(self, load_best: Callable[[], None], test_batches: Callable[[], Batches]) -> dict[str, Any]:
        """Load the selected epoch's weights (``load_best``) and return its test result.

        In validation mode the test split is evaluated here, once, with those weights, and its
        metrics join the last epoch's row; in the paper's protocol the test metrics of the
        selected epoch are already in its row.
        """
        load_best()
        names, s = list(self.spec.class_names), self.state
        if self.spec.selection_split == "val":
            m = self.evaluate(test_batches())
            s.history[-1].update(m.flat("test", names))
            if self.tracker is not None:
                self.tracker.log_epoch(m.flat("test", names), step=s.epoch)
            return {
                "loss": m.loss,
                "uar": m.uar,
                "war": m.war,
                "recall": dict(zip(names, m.recall)),
                "confusion": m.confusion,
            }
        best = s.best_row or {}
        return {
            "loss": best.get("test_loss"),
            "uar": best.get("test_uar"),
            "war": best.get("test_war"),
            "recall": {c: best.get(f"test_recall_{c}") for c in names},
            "confusion": s.confusions.get(str(s.best_epoch), {}).get("test"),
        }

    # -- checkpointed state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run (loadable with ``torch.load(weights_only=True)``);
        the model's weights are saved beside it by the caller."""
        cuda = self.device.type == "cuda"
        return {
            "run": dataclasses.asdict(self.state),
            "epoch": self.state.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None},
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s output (the model's weights are loaded by the caller)."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler.is_enabled() and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if self.device.type == "cuda" and saved["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu())
        self.state = RunState(**saved["run"])
        self.state.resumed_from.append(self.state.epoch)


def _pct(v) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:5.1f}"


def progress_line(run_name: str, row: dict, epochs: int, split: str, metric: str) -> str:
    """One line per epoch for the console: train loss/acc, the selection split, the best so far."""
    text = (
        f"[{run_name}] epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} acc "
        f"{_pct(row['train_acc'])}%  | {split} loss {row[f'{split}_loss']:.4f} UAR {_pct(row[f'{split}_uar'])} "
        f"WAR {_pct(row[f'{split}_war'])}"
    )
    if split == "val" and "test_uar" in row:
        text += f"  | test (best epoch) UAR {_pct(row['test_uar'])} WAR {_pct(row['test_war'])}"
    best = row.get(f"best_{metric}")
    best_text = f"{best:.4f}" if metric == "loss" and best is not None else _pct(best)
    return text + f"  | best {metric} {best_text} @ {row['best_epoch']}"
