"""One training run's bookkeeping, the same under every strategy.

A strategy decides how steps are computed (one process, DDP ranks, or rounds of
parameter averaging); everything around the steps lives here, once:

    Position     where training stands (step, epoch, batch, early-stop counters, epoch totals)
    StepsDone    what a strategy reports after training some steps
    TrainingRun  the model and optimizer, the checkpoint it resumed from, evaluation,
                 checkpoints (with the model config, so a resume under a changed model is
                 refused under every strategy), steps.jsonl / epochs.csv, and the run's result

Only rank 0 writes metrics and checkpoints; the other DDP ranks keep the same position.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from spark_jobs.common import lineage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import TrainingError
from spark_jobs.models import build_model
from spark_jobs.reporting.train_metrics import MetricsWriter
from spark_jobs.training import checkpoints
from spark_jobs.training.evaluation import eval_batches, evaluate, validation_record
from spark_jobs.training.inputs import TrainInputs, TrainResult
from spark_jobs.training.optim import make_optimizer
from spark_jobs.training.weight_average import WeightAverage

log = logging.getLogger(__name__)

# Recent steps that make up the reported train loss.
TRAIN_LOSS_WINDOW = 50


@dataclass
class StepsDone:
    """What a strategy reports after training some steps (one step, or one averaging round)."""

    losses: list[float]  # each step's loss (the workers' mean)
    correct: int  # correct predictions, all workers together
    count: int  # predictions scored, all workers together
    windows: int  # windows trained on, all workers together
    seconds: float
    records: list[dict[str, Any]] = field(default_factory=list)  # steps.jsonl "train" records
    nan: tuple[int, float] | None = None  # (step, loss) of a non-finite loss: nothing was applied


@dataclass
class Position:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch of `epoch` to train on
    best_val_loss: float = math.inf
    evals_without_improvement: int = 0
    first_val_loss: float | None = None
    # the current epoch's running totals, so a resumed epoch reports the same figures
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_count: int = 0
    epoch_batches: int = 0
    epoch_seconds: float = 0.0
    train_seconds: float = 0.0
    predictions_seen: int = 0
    windows_seen: int = 0
    recent_losses: list[float] = field(default_factory=list)  # the last TRAIN_LOSS_WINDOW step losses
    stopped_early: bool = False
    last_val: dict[str, Any] = field(default_factory=dict)  # the latest evaluation

    def advance(self, done: StepsDone) -> None:
        steps = len(done.losses)
        self.step += steps
        self.batch_index += steps
        self.epoch_loss_sum += float(sum(done.losses))
        self.epoch_correct += done.correct
        self.epoch_count += done.count
        self.epoch_batches += steps
        self.epoch_seconds += done.seconds
        self.train_seconds += done.seconds
        self.predictions_seen += done.count
        self.windows_seen += done.windows
        self.recent_losses = (self.recent_losses + done.losses)[-TRAIN_LOSS_WINDOW:]

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_index = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_count = 0.0, 0, 0
        self.epoch_batches, self.epoch_seconds = 0, 0.0

    def to_json(self) -> dict[str, Any]:
        position = vars(self).copy()
        # JSON has no infinity; 1e308 reads back as "no evaluation yet" all the same
        position["best_val_loss"] = self.best_val_loss if math.isfinite(self.best_val_loss) else 1e308
        return position

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Position:
        pos = cls(**{k: v for k, v in saved.items() if k in cls.__dataclass_fields__})
        pos.best_val_loss = float(pos.best_val_loss)
        return pos


def should_stop_early(pos: Position, val_loss: float, patience: int | None) -> bool:
    if val_loss < pos.best_val_loss:
        pos.best_val_loss = val_loss
        pos.evals_without_improvement = 0
        return False
    pos.evals_without_improvement += 1
    if patience is not None and pos.evals_without_improvement >= patience:
        log.info("early stop at step %d: no improvement in %d evaluations", pos.step, patience)
        return True
    return False


def epoch_record(pos: Position, last_val: dict) -> dict:
    """The epochs.csv row of the epoch `pos` is in: its training figures and the last evaluation."""
    return {
        "epoch": pos.epoch,
        "step": pos.step,
        "train_loss": pos.epoch_loss_sum / max(pos.epoch_batches, 1),
        "train_accuracy": pos.epoch_correct / max(pos.epoch_count, 1),
        # the latest periodic evaluation: on the fixed validation sample, not the whole split
        **{f"{k}_sampled": v for k, v in last_val.items() if k.startswith("val_")},
        "epoch_s": round(pos.epoch_seconds, 3),
    }


class TrainingRun:
    """The model, the optimizer and the bookkeeping of one (attempt at a) training run.

    Built the same way by every strategy: seeded model and optimizer (the same initial
    weights whatever the strategy), then `resume` continues from the newest checkpoint.
    `rank`/`world_size` describe the DDP process group this process is in (1 outside DDP).
    """

    def __init__(
        self,
        config: PipelineConfig,
        inputs: TrainInputs,
        *,
        val_windows: torch.Tensor,
        batches_per_epoch: int,
        total_steps: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.config = config
        self.cfg = config.training
        self.inputs = inputs
        self.batches_per_epoch = batches_per_epoch
        self.total_steps = total_steps
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
        self.model.train()
        self.optimizer = make_optimizer(self.model, self.cfg)
        # rank 0 writes the checkpoints, so it alone keeps the average
        self.average = (
            WeightAverage(self.model, self.cfg.ema_decay) if self.cfg.ema_decay and self.is_main else None
        )
        self.pos = Position()
        self.last_checkpoint: str | None = None
        self.val_windows = val_windows
        self.val_subset = eval_batches(len(val_windows), config)
        self.metrics: MetricsWriter | None = None

    # --- checkpoints ------------------------------------------------------------------------

    def resume(self, resume: bool) -> None:
        """Continue from the newest valid checkpoint (when `resume`), then open the metrics files."""
        checkpoint = checkpoints.load_latest(self.inputs.checkpoint_dir) if resume else None
        if checkpoint is not None:
            self._restore(checkpoint)
        if self.is_main:
            resume_step = self.pos.step if checkpoint is not None else None
            self.metrics = MetricsWriter(self.inputs.metrics_dir, resume_step=resume_step)

    def _restore(self, checkpoint: checkpoints.Checkpoint) -> None:
        """Weights, optimizer state, RNG and position; refused when the model config changed."""
        configured = self.config.model.model_dump(mode="json")
        saved_model = checkpoint.state.get("model")
        if saved_model != configured:
            raise TrainingError(
                f"{checkpoint.uri} was written for model {saved_model}, not the configured "
                f"{configured}; delete {self.inputs.checkpoint_dir} or use another run.id"
            )
        changed = lineage.changed_inputs(checkpoint.state.get("made_from") or {}, self.inputs.made_from)
        if changed:
            raise TrainingError(
                f"{checkpoint.uri} was trained on other data ({'; '.join(changed)}): the run's "
                f"inputs were re-made since; delete {self.inputs.checkpoint_dir} or use another run.id"
            )
        saved_optimizer = checkpoint.state.get("optimizer_kind")  # absent before Muon was added
        if saved_optimizer not in (None, self.cfg.optimizer):
            raise TrainingError(
                f"{checkpoint.uri} was written by training.optimizer={saved_optimizer}, not the "
                f"configured {self.cfg.optimizer}; delete {self.inputs.checkpoint_dir} or use another run.id"
            )
        saved_decay = checkpoint.state.get("ema_decay")
        if saved_decay != self.cfg.ema_decay:
            raise TrainingError(
                f"{checkpoint.uri} was written with training.ema_decay={saved_decay}, not the "
                f"configured {self.cfg.ema_decay}; delete {self.inputs.checkpoint_dir} or use another run.id"
            )
        self.model.load_state_dict(checkpoint.model_state)
        if self.average is not None:
            if checkpoint.average is None:
                raise TrainingError(f"{checkpoint.uri}: no weight average saved (training.ema_decay is set)")
            self.average.load_state_dict(checkpoint.average, checkpoint.uri)
            self.average.step = int(checkpoint.state["ema_step"])
        try:
            checkpoint.restore_optimizer(self.optimizer)
        except ValueError as err:  # torch: the parameter groups do not match
            raise TrainingError(
                f"{checkpoint.uri}: its optimizer state does not fit training.optimizer="
                f"{self.cfg.optimizer} ({err}); delete {self.inputs.checkpoint_dir} or use another run.id"
            ) from err
        torch.set_rng_state(checkpoint.rng_state)
        self.pos = Position.from_json(checkpoint.state["position"])
        self.last_checkpoint = checkpoint.uri
        log.info(
            "resuming from %s (step %d, epoch %d, batch %d)",
            *(checkpoint.uri, self.pos.step, self.pos.epoch, self.pos.batch_index),
        )

    def save(self, reason: str) -> None:
        """Checkpoint the run (rank 0 writes; every rank knows where it went)."""
        if not self.is_main:
            self.last_checkpoint = checkpoints.checkpoint_uri(self.inputs.checkpoint_dir, self.pos.step)
            return
        state = {
            "position": self.pos.to_json(),
            "reason": reason,
            "model": self.config.model.model_dump(mode="json"),
            "strategy": self.cfg.strategy,
            "optimizer_kind": self.cfg.optimizer,
            "ema_decay": self.cfg.ema_decay,
            "ema_step": self.average.step if self.average is not None else None,
            "num_workers": 1 if self.cfg.strategy == "single" else self.cfg.num_workers,
            "made_from": self.inputs.made_from,
        }
        self.last_checkpoint = checkpoints.save_checkpoint(
            self.inputs.checkpoint_dir,
            self.pos.step,
            self.model.state_dict(),
            self.optimizer,
            state,
            self.cfg.keep_checkpoints,
            average=self.average.state_dict() if self.average is not None else None,
        )
        assert self.metrics is not None
        self.metrics.flush()

    # --- evaluation and records -------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        """Score the model on the validation subset; log it and remember it as the latest."""
        result = validation_record(
            evaluate(self.model, self.val_windows, self.val_subset, self.world_size),
            self.model.has_likelihood,
            self.inputs.chars_per_token,
        )
        result["step"] = self.pos.step
        result["sampled_windows"] = sum(len(rows) for rows in self.val_subset) * self.world_size
        if not math.isfinite(result["val_loss"]):  # every rank sees the same all-reduced loss
            why = (
                "no validation windows to score"
                if not self.val_subset
                else "the model's predictions are not finite (training diverged)"
            )
            raise TrainingError(
                f"val_loss is {result['val_loss']} at step {self.pos.step}: {why}; "
                f"last good checkpoint: {self.last_checkpoint or 'none'}"
            )
        if self.metrics:
            self.metrics.log_step({"kind": "eval", "step": self.pos.step, "epoch": self.pos.epoch, **result})
        self.pos.last_val = result
        return result

    def evaluate_and_check_early_stop(self) -> bool:
        val_loss = self.evaluate()["val_loss"]
        return should_stop_early(self.pos, val_loss, self.cfg.early_stop_patience)

    def log_steps(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            if self.metrics:
                self.metrics.log_step(record)
            log.info(
                "step %d/%d loss %.4f lr %.2e", record["step"], self.total_steps, record["loss"], record["lr"]
            )

    def check_finite(self, done: StepsDone) -> None:
        if done.nan is not None:
            step, loss = done.nan
            raise TrainingError(
                f"loss is {loss} at step {step}; last good checkpoint: {self.last_checkpoint or 'none'}"
            )

    def end_epoch(self) -> None:
        """The epoch ended (or training stopped inside it): score it, record it, checkpoint, move on."""
        pos = self.pos
        if pos.last_val.get("step") != pos.step:
            pos.stopped_early = self.evaluate_and_check_early_stop() or pos.stopped_early
        if self.metrics:
            self.metrics.log_epoch(epoch_record(pos, pos.last_val))
        if pos.batch_index >= self.batches_per_epoch:
            pos.next_epoch()
        self.save("epoch_end" if pos.batch_index == 0 else "end")

    def result(self, **extra: Any) -> TrainResult:
        """What every strategy returns at the end of training."""
        if not self.pos.last_val:  # resumed from a checkpoint written before any evaluation
            self.evaluate()
        if self.metrics:
            self.metrics.flush()
        pos = self.pos
        recent = pos.recent_losses
        return {
            "steps": pos.step,
            "epochs": pos.epoch + (pos.batch_index > 0),
            "total_steps": self.total_steps,
            "train_loss": sum(recent) / len(recent) if recent else None,
            "first_val_loss": pos.first_val_loss,
            **pos.last_val,
            "tokens_per_s": pos.predictions_seen / max(pos.train_seconds, 1e-9),
            "samples_per_s": pos.windows_seen / max(pos.train_seconds, 1e-9),
            "train_s": pos.train_seconds,
            "stopped_early": pos.stopped_early,
            "checkpoint": self.last_checkpoint,
            "parameters": self.model.num_parameters(),
            "world_size": self.world_size,
            **extra,
        }
