"""The training loop: one process (`single`) or one DDP rank (`ddp`) runs `train_loop`.

Per step: look up the learning rate, forward, backward (DDP averages the gradients across
ranks), clip, update. Every eval_interval steps and at each epoch end the model is scored on
a fixed subset of the validation windows; every checkpoint_interval steps, at each epoch
end and at the end, rank 0 writes a checkpoint that holds everything needed to continue
exactly: weights, optimizer state, RNG, the step and the data position (epoch, batch index).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from spark_jobs import checkpoints
from spark_jobs.config import PipelineConfig, TrainingConfig
from spark_jobs.errors import InputError, TrainingError
from spark_jobs.models import build_model
from spark_jobs.optim import learning_rate_at, make_optimizer, set_learning_rate
from spark_jobs.strategies import TrainInputs
from spark_jobs.train_metrics import MetricsWriter, bits_per_char, gradient_stats, system_metrics
from spark_jobs.training_data import batch_order, load_windows

log = logging.getLogger(__name__)

# Recent steps that make up the reported train loss.
TRAIN_LOSS_WINDOW = 50

# Called as progress(step, total_steps, loss) after every step in this process (the CLI's bar).
ProgressCallback = Callable[[int, int, float], None]
_progress: ProgressCallback | None = None


def set_progress_callback(callback: ProgressCallback | None) -> None:
    global _progress
    _progress = callback


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

    def record_step(self, loss: float, correct: int, count: int, windows: int, seconds: float) -> None:
        self.step += 1
        self.batch_index += 1
        self.epoch_loss_sum += loss
        self.epoch_correct += correct
        self.epoch_count += count
        self.epoch_batches += 1
        self.epoch_seconds += seconds
        self.train_seconds += seconds
        self.predictions_seen += count
        self.windows_seen += windows
        self.recent_losses = (self.recent_losses + [loss])[-TRAIN_LOSS_WINDOW:]

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batch_index = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_count = 0.0, 0, 0
        self.epoch_batches, self.epoch_seconds = 0, 0.0


def set_threads(num_threads: int | None, world_size: int = 1) -> int:
    # torchrun and Spark set OMP_NUM_THREADS=1 for each process: choose explicitly.
    threads = num_threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    return threads


def _all_reduce_sum(values: list[float], world_size: int) -> list[float]:
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def eval_batches(num_windows: int, config: PipelineConfig) -> list[torch.Tensor]:
    """The same validation subset at every evaluation, so the losses are comparable."""
    cfg = config.training
    if num_windows == 0:
        return []
    if num_windows < cfg.batch_size:
        return [torch.arange(num_windows)]
    return batch_order(num_windows, cfg.batch_size, epoch=0, seed=cfg.seed, shuffle=cfg.shuffle)[
        : cfg.eval_batches
    ]


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batches: list[torch.Tensor], world_size: int) -> dict:
    """Mean loss (per prediction) and top-1 accuracy over `batches`, summed across ranks."""
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    for rows in batches:
        out = model(windows[rows])
        loss_sum += float(out.loss) * out.count
        correct += float(out.correct)
        count += out.count
    model.train(was_training)
    loss_sum, correct, count = _all_reduce_sum([loss_sum, correct, count], world_size)
    if count == 0:
        return {"val_loss": math.nan, "val_accuracy": math.nan}
    return {"val_loss": loss_sum / count, "val_accuracy": correct / count}


def validation_record(result: dict, kind: str, chars_per_token: float) -> dict:
    record = dict(result)
    if kind == "gpt":
        record["val_perplexity"] = math.exp(min(result["val_loss"], 50.0))
        record["val_bits_per_char"] = bits_per_char(result["val_loss"], chars_per_token)
    else:  # MSE / cosine in embedding space has no per-character likelihood
        record["val_perplexity"] = None
        record["val_bits_per_char"] = None
    return record


def checkpoint_state(pos: Position, config: PipelineConfig, reason: str) -> dict[str, Any]:
    """The JSON part of a checkpoint: the position and the model it belongs to."""
    position = vars(pos).copy()
    position["best_val_loss"] = pos.best_val_loss if math.isfinite(pos.best_val_loss) else 1e308
    return {"position": position, "reason": reason, "model": config.model.model_dump(mode="json")}


def restore_checkpoint(
    checkpoint: checkpoints.Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: PipelineConfig,
    checkpoint_dir: str,
) -> Position:
    """Load weights, optimizer state and RNG from `checkpoint`; return where training stood."""
    saved_model = checkpoint.state.get("model")
    if saved_model != config.model.model_dump(mode="json"):
        raise TrainingError(
            f"{checkpoint.uri} was written for model {saved_model}, not the configured "
            f"{config.model.model_dump(mode='json')}; delete {checkpoint_dir} or use another run.id"
        )
    model.load_state_dict(checkpoint.model_state)
    checkpoint.restore_optimizer(optimizer)
    torch.set_rng_state(checkpoint.rng_state)
    saved = checkpoint.state["position"]
    pos = Position(**{k: v for k, v in saved.items() if k in Position.__dataclass_fields__})
    log.info(
        "resuming from %s (step %d, epoch %d, batch %d)", checkpoint.uri, pos.step, pos.epoch, pos.batch_index
    )
    return pos


def plan_steps(windows_per_worker: int, cfg: TrainingConfig, window_dir: str) -> tuple[int, int]:
    """(batches per epoch, total optimizer steps) for one worker's share of the windows."""
    batches_per_epoch = windows_per_worker // cfg.batch_size
    if batches_per_epoch == 0:
        raise InputError(
            f"{window_dir}/train: {windows_per_worker} windows per worker, fewer than "
            f"training.batch_size ({cfg.batch_size})"
        )
    total_steps = cfg.num_epochs * batches_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    return batches_per_epoch, total_steps


def train_loop(
    config: PipelineConfig, inputs: TrainInputs, resume: bool, rank: int = 0, world_size: int = 1
) -> dict[str, Any]:
    """Train (this rank's share of) the model; rank 0 writes metrics and checkpoints."""
    cfg = config.training
    is_main = rank == 0
    set_threads(cfg.num_threads, world_size)
    torch.manual_seed(cfg.seed)

    train_windows = load_windows(inputs.window_dir, "train", rank, world_size)
    val_windows = load_windows(inputs.window_dir, "val", rank, world_size)
    batches_per_epoch, total_steps = plan_steps(len(train_windows), cfg, inputs.window_dir)

    model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
    model.train()
    optimizer = make_optimizer(model, cfg)
    pos = Position()
    checkpoint = checkpoints.load_latest(inputs.checkpoint_dir) if resume else None
    if checkpoint is not None:
        pos = restore_checkpoint(checkpoint, model, optimizer, config, inputs.checkpoint_dir)
    last_checkpoint = checkpoint.uri if checkpoint else None

    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(model)
    metrics = (
        MetricsWriter(inputs.metrics_dir, resume_step=pos.step if checkpoint else None) if is_main else None
    )
    val_subset = eval_batches(len(val_windows), config)
    last_val: dict = dict(pos.last_val)
    kind = config.model.kind

    def run_eval() -> dict:
        result = validation_record(
            evaluate(model, val_windows, val_subset, world_size), kind, inputs.chars_per_token
        )
        result["step"] = pos.step
        if metrics:
            metrics.log_step({"kind": "eval", "step": pos.step, "epoch": pos.epoch, **result})
        return result

    def save(reason: str) -> None:
        nonlocal last_checkpoint
        pos.last_val = last_val
        if is_main:
            state = checkpoint_state(pos, config, reason)
            last_checkpoint = checkpoints.save_checkpoint(
                inputs.checkpoint_dir, pos.step, model.state_dict(), optimizer, state, cfg.keep_checkpoints
            )
            metrics.flush()
        else:
            last_checkpoint = checkpoints.checkpoint_uri(inputs.checkpoint_dir, pos.step)

    if pos.first_val_loss is None:
        last_val = run_eval()
        pos.first_val_loss = last_val["val_loss"]
        log.info("step 0: val loss %.4f", pos.first_val_loss)

    stopped_early = pos.stopped_early
    window_start = time.perf_counter()
    window_predictions = 0
    while pos.step < total_steps and pos.epoch < cfg.num_epochs and not stopped_early:
        order = batch_order(len(train_windows), cfg.batch_size, pos.epoch, cfg.seed, cfg.shuffle)
        while pos.batch_index < len(order) and pos.step < total_steps:
            step_start = time.perf_counter()
            lr = learning_rate_at(pos.step, cfg, total_steps)
            set_learning_rate(optimizer, lr)
            out = net(train_windows[order[pos.batch_index]])
            loss = out.loss
            if cfg.debug_nan_at_step is not None and pos.step == cfg.debug_nan_at_step:
                loss = loss * float("nan")
            loss_value, correct, count = _all_reduce_sum(
                [float(loss.detach()), float(out.correct), float(out.count)], world_size
            )
            loss_value /= world_size
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value} at step {pos.step}; last good checkpoint: {last_checkpoint or 'none'}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            log_now = (pos.step + 1) % cfg.log_interval == 0
            stats = gradient_stats(model, (pos.step + 1) % cfg.histogram_interval == 0) if log_now else {}
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
            optimizer.step()

            step_s = time.perf_counter() - step_start
            pos.record_step(loss_value, int(correct), int(count), cfg.batch_size * world_size, step_s)
            window_predictions += int(count)
            if _progress is not None and is_main:
                _progress(pos.step, total_steps, loss_value)

            if log_now and metrics:
                elapsed = time.perf_counter() - window_start
                metrics.log_step(
                    {
                        "kind": "train",
                        "step": pos.step,
                        "epoch": pos.epoch,
                        "loss": loss_value,
                        "accuracy": correct / max(count, 1),
                        "lr": lr,
                        **stats,
                        "grad_norm": grad_norm,  # before clipping
                        "step_s": step_s,
                        "tokens_per_s": window_predictions / max(elapsed, 1e-9),
                        **system_metrics(),
                        "time": time.time(),
                    }
                )
                log.info("step %d/%d loss %.4f lr %.2e", pos.step, total_steps, loss_value, lr)
            if log_now:
                window_start, window_predictions = time.perf_counter(), 0

            if pos.step % cfg.eval_interval == 0 and pos.batch_index < len(order) and pos.step < total_steps:
                last_val = run_eval()
                stopped_early = should_stop_early(pos, last_val["val_loss"], cfg.early_stop_patience)
                if stopped_early:
                    break
            if (
                pos.step % cfg.checkpoint_interval == 0
                and pos.batch_index < len(order)
                and pos.step < total_steps
            ):
                save("interval")

        # the epoch ended (or training stopped inside it): score it, checkpoint, move on
        if last_val.get("step") != pos.step:
            last_val = run_eval()
            stopped_early = (
                should_stop_early(pos, last_val["val_loss"], cfg.early_stop_patience) or stopped_early
            )
        if metrics:
            metrics.log_epoch(epoch_record(pos, last_val))
        if pos.batch_index >= len(order):
            pos.next_epoch()
        pos.stopped_early = stopped_early
        save("epoch_end" if pos.batch_index == 0 else "end")

    result = run_result(pos, total_steps, last_val, stopped_early, last_checkpoint, model, world_size)
    if metrics:
        metrics.flush()
    return result


def run_result(
    pos: Position,
    total_steps: int,
    last_val: dict,
    stopped_early: bool,
    checkpoint: str | None,
    model: nn.Module,
    world_size: int,
) -> dict[str, Any]:
    """What every strategy returns at the end of training (see strategies/__init__.py)."""
    recent = pos.recent_losses
    return {
        "steps": pos.step,
        "epochs": pos.epoch + (pos.batch_index > 0),
        "total_steps": total_steps,
        "train_loss": sum(recent) / len(recent) if recent else None,
        "first_val_loss": pos.first_val_loss,
        **last_val,
        "tokens_per_s": pos.predictions_seen / max(pos.train_seconds, 1e-9),
        "samples_per_s": pos.windows_seen / max(pos.train_seconds, 1e-9),
        "train_s": pos.train_seconds,
        "stopped_early": stopped_early,
        "checkpoint": checkpoint,
        "parameters": model.num_parameters(),
        "world_size": world_size,
    }


def epoch_record(pos: Position, last_val: dict) -> dict:
    """The epochs.csv row of the epoch `pos` is in: its training figures and the last evaluation."""
    return {
        "epoch": pos.epoch,
        "step": pos.step,
        "train_loss": pos.epoch_loss_sum / max(pos.epoch_batches, 1),
        "train_accuracy": pos.epoch_correct / max(pos.epoch_count, 1),
        **{k: v for k, v in last_val.items() if k != "step"},
        "epoch_s": round(pos.epoch_seconds, 3),
    }


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
