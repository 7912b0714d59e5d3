"""`parameter_averaging`: Spark-native data-parallel training, like DL4J's ParameterAveragingTrainingMaster.

One round:
    driver ── broadcast(parameters [+ optimizer state], where the round starts) ──▶ N partitions
    partition k: train `averaging_frequency` minibatches of `batch_size` on shard k of the windows
    driver ◀── parameters [+ optimizer state], losses ── collect; average; evaluate / checkpoint

Data: partition k is one Spark task that reads shard k of `window/train` (the same
interleaved shards as ddp ranks) once per Python worker and keeps it decoded in a
module-level cache across rounds, so a round costs the training plus ~0.3 s of Spark
overhead (quiet 2-core machine), not a Parquet read. Spark does not pin partition k to a
worker process, so after a few rounds each worker may hold several shards (memory: up to
num_workers shards per worker; small for our corpora); `worker_data_cached` in steps.jsonl
shows the misses. Each task consumes its whole (one-element) partition iterator,
or Spark does not reuse the Python worker and every round re-imports torch (FACTS.md).

Steps: the step counter counts minibatches per worker, like `single`: a round advances it by
its number of minibatches (`averaging_frequency`, fewer when the epoch or the run ends
first; a round never crosses an epoch boundary). The learning-rate schedule, evaluation
(every eval_interval steps, on the driver), checkpoints (every checkpoint_interval steps and
at each epoch end) and resume all use that counter, at round boundaries. With one worker and
frequency 1 this is exactly `single`.

`training.average_optimizer_state`: true averages the Adam moments too (DL4J's default);
false starts every round from a fresh optimizer state (DL4J with saveUpdater=false).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from torch import nn

from spark_jobs import averaging, checkpoints
from spark_jobs.config import PipelineConfig
from spark_jobs.errors import InputError, TrainingError
from spark_jobs.models import DecoderModel, build_model
from spark_jobs.optim import learning_rate_at, make_optimizer, set_learning_rate
from spark_jobs.spark_metrics import collect_spark_metrics, write_spark_metrics
from spark_jobs.strategies import TrainInputs
from spark_jobs.train_metrics import MetricsWriter, gradient_stats, system_metrics
from spark_jobs.trainer import (
    TRAIN_LOSS_WINDOW,
    Position,
    epoch_record,
    eval_batches,
    evaluate,
    plan_steps,
    run_result,
    set_threads,
    should_stop_early,
    validation_record,
)
from spark_jobs.training_data import batch_order, load_windows

log = logging.getLogger(__name__)


# --- the worker side: runs inside a Spark task ------------------------------------------------

# Per Python worker process: the decoded shard, the model and the optimizer of the current
# job, so later rounds neither re-read Parquet nor rebuild the model.
_WORKER_CACHE: dict[tuple[str, int], tuple[torch.Tensor, DecoderModel, torch.optim.Optimizer]] = {}


def _worker_state(
    job: dict, job_key: str, shard: int
) -> tuple[torch.Tensor, DecoderModel, torch.optim.Optimizer]:
    key = (job_key, shard)
    if key not in _WORKER_CACHE:
        for old in [k for k in _WORKER_CACHE if k[0] != job_key]:  # an earlier run's leftovers
            del _WORKER_CACHE[old]
        config = PipelineConfig.model_validate(job["config"])
        windows = load_windows(job["window_dir"], "train", shard, job["num_workers"])
        embeddings = torch.from_numpy(job["embeddings"]) if job["embeddings"] is not None else None
        model = build_model(config.model, job["vocab_size"], embeddings)
        model.train()
        _WORKER_CACHE[key] = (windows, model, make_optimizer(model, config.training))
    return _WORKER_CACHE[key]


def _unpack_job(blob: bytes) -> tuple[dict, str]:
    arrays = safetensors.numpy.load(blob)
    job = averaging.read_info(blob)
    job["embeddings"] = arrays.get("embeddings")
    return job, hashlib.sha1(blob).hexdigest()


def train_round(shard: int, partition: Iterator[Any], job_blob: bytes, round_blob: bytes) -> Iterator[bytes]:
    """One worker's share of one round: returns packed parameters, optimizer state and losses."""
    for _ in partition:  # consume it all, so Spark reuses this Python worker next round
        pass
    torch.set_num_threads(1)  # one task per core: more threads only contend
    job, job_key = _unpack_job(job_blob)
    cfg = PipelineConfig.model_validate(job["config"]).training
    cached = (job_key, shard) in _WORKER_CACHE
    windows, model, optimizer = _worker_state(job, job_key, shard)

    params, optimizer_state, info = averaging.unpack(round_blob)
    averaging.load_model_arrays(model, params)
    if optimizer_state:
        averaging.load_optimizer_arrays(optimizer, optimizer_state)
    else:
        optimizer.state.clear()
    # Dropout masks differ per worker and per round but are reproducible.
    torch.manual_seed(cfg.seed * 1_000_003 + info["start_step"] * 1009 + shard)

    order = batch_order(len(windows), cfg.batch_size, info["epoch"], cfg.seed, cfg.shuffle)
    losses, grad_norms, correct, count, layer_stats = [], [], 0, 0, {}
    nan_step = None
    start = time.perf_counter()
    for j in range(info["num_steps"]):
        step = info["start_step"] + j
        set_learning_rate(optimizer, learning_rate_at(step, cfg, info["total_steps"]))
        out = model(windows[order[info["batch_index"] + j]])
        loss = out.loss
        if cfg.debug_nan_at_step is not None and step == cfg.debug_nan_at_step:
            loss = loss * float("nan")
        if not math.isfinite(float(loss.detach())):
            nan_step = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if shard == 0 and (step + 1) % cfg.log_interval == 0:
            layer_stats[step + 1] = gradient_stats(model, (step + 1) % cfg.histogram_interval == 0)
        grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)))
        optimizer.step()
        losses.append(float(loss.detach()))
        correct += int(out.correct)
        count += int(out.count)

    yield averaging.pack(
        averaging.model_arrays(model),
        averaging.optimizer_arrays(optimizer) if cfg.average_optimizer_state else None,
        shard=shard,
        losses=losses,
        grad_norms=grad_norms,
        correct=correct,
        count=count,
        seconds=time.perf_counter() - start,
        nan_step=nan_step,
        layer_stats={str(k): v for k, v in layer_stats.items()},
        windows=len(windows),
        cached=cached,
    )


# --- the driver side ----------------------------------------------------------------------------


def _job_blob(config: PipelineConfig, inputs: TrainInputs, total_steps: int) -> bytes:
    """What every round needs and never changes: the config, where the data is, the embeddings."""
    tensors = {}
    if inputs.embeddings is not None:
        tensors["embeddings"] = inputs.embeddings.detach().cpu().numpy().astype(np.float32)
    job = {
        "config": config.model_dump(mode="json"),
        "window_dir": inputs.window_dir,
        "vocab_size": inputs.vocab_size,
        "num_workers": config.training.num_workers,
        "total_steps": total_steps,
    }
    return safetensors.numpy.save(tensors, metadata={"info": json.dumps(job)})


def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> dict[str, Any]:
    """Train by rounds of local minibatches and averaging; see the module docstring."""
    from spark_jobs.spark_session import get_spark

    cfg = config.training
    num_workers = cfg.num_workers
    shard_windows = inputs.num_train_windows // num_workers
    if shard_windows == 0:
        raise InputError(
            f"{inputs.window_dir}/train: {inputs.num_train_windows} windows for "
            f"training.num_workers={num_workers} workers"
        )
    batches_per_epoch, total_steps = plan_steps(shard_windows, cfg, inputs.window_dir)

    set_threads(cfg.num_threads)  # the driver evaluates while the workers are idle
    torch.manual_seed(cfg.seed)  # the same initial weights as `single`
    model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
    optimizer = make_optimizer(model, cfg)
    pos = Position()
    checkpoint = checkpoints.load_latest(inputs.checkpoint_dir) if resume else None
    if checkpoint is not None:
        model.load_state_dict(checkpoint.model_state)
        checkpoint.restore_optimizer(optimizer)
        torch.set_rng_state(checkpoint.rng_state)
        saved = checkpoint.state["position"]
        pos = Position(**{k: v for k, v in saved.items() if k in Position.__dataclass_fields__})
        pos.best_val_loss = float(pos.best_val_loss)
        log.info(
            "resuming from %s (step %d, epoch %d, batch %d)",
            checkpoint.uri,
            pos.step,
            pos.epoch,
            pos.batch_index,
        )
    last_checkpoint = checkpoint.uri if checkpoint else None

    kind = config.model.kind
    val_windows = load_windows(inputs.window_dir, "val")
    val_subset = eval_batches(len(val_windows), config)
    metrics = MetricsWriter(inputs.metrics_dir, resume_step=pos.step if checkpoint else None)
    last_val: dict = {}

    def run_eval() -> dict:
        result = validation_record(evaluate(model, val_windows, val_subset, 1), kind, inputs.chars_per_token)
        result["step"] = pos.step
        metrics.log_step({"kind": "eval", "step": pos.step, "epoch": pos.epoch, **result})
        return result

    def save(reason: str) -> None:
        nonlocal last_checkpoint
        state = {
            "position": vars(pos).copy(),
            "reason": reason,
            "model_kind": kind,
            "strategy": "parameter_averaging",
            "num_workers": num_workers,
        }
        if not math.isfinite(pos.best_val_loss):
            state["position"]["best_val_loss"] = 1e308
        last_checkpoint = checkpoints.save_checkpoint(
            inputs.checkpoint_dir, pos.step, model.state_dict(), optimizer, state, cfg.keep_checkpoints
        )
        metrics.flush()

    if pos.first_val_loss is None:
        last_val = run_eval()
        pos.first_val_loss = last_val["val_loss"]
        log.info("step 0: val loss %.4f", pos.first_val_loss)

    spark = get_spark(config, "train")
    sc = spark.sparkContext
    job_group = f"train-{config.run.id}-{uuid.uuid4().hex[:8]}"  # this attempt's jobs only
    sc.setJobGroup(job_group, f"parameter averaging, {num_workers} workers", interruptOnCancel=True)
    job_bc = sc.broadcast(_job_blob(config, inputs, total_steps))
    shards = sc.parallelize(range(num_workers), num_workers)

    stopped_early = False
    rounds = 0
    overheads: list[float] = []
    try:
        while pos.step < total_steps and pos.epoch < cfg.num_epochs and not stopped_early:
            while pos.batch_index < batches_per_epoch and pos.step < total_steps:
                num_steps = min(
                    cfg.averaging_frequency, batches_per_epoch - pos.batch_index, total_steps - pos.step
                )
                round_start = time.perf_counter()
                results = _run_round(sc, shards, job_bc, model, optimizer, pos, num_steps, total_steps, cfg)
                nan_steps = [r[2]["nan_step"] for r in results if r[2]["nan_step"] is not None]
                if nan_steps:
                    raise TrainingError(
                        f"loss is not finite at step {min(nan_steps)}; last good checkpoint: {last_checkpoint or 'none'}"
                    )
                _average_into(model, optimizer, results, cfg.average_optimizer_state)
                round_s = time.perf_counter() - round_start
                rounds += 1
                overheads.append(round_s - max(r[2]["seconds"] for r in results))
                previous_step = pos.step
                _advance(pos, results, num_steps, round_s, cfg.batch_size * num_workers)
                _log_round(metrics, pos, results, previous_step, round_s, overheads[-1], total_steps, cfg)

                more_to_do = pos.batch_index < batches_per_epoch and pos.step < total_steps
                if _crossed(previous_step, pos.step, cfg.eval_interval) and more_to_do:
                    last_val = run_eval()
                    stopped_early = should_stop_early(pos, last_val["val_loss"], cfg.early_stop_patience)
                    if stopped_early:
                        break
                if _crossed(previous_step, pos.step, cfg.checkpoint_interval) and more_to_do:
                    save("interval")

            # the epoch ended (or training stopped inside it): score it, checkpoint, move on
            if last_val.get("step") != pos.step:
                last_val = run_eval()
                stopped_early = (
                    should_stop_early(pos, last_val["val_loss"], cfg.early_stop_patience) or stopped_early
                )
            metrics.log_epoch(epoch_record(pos, last_val))
            if pos.batch_index >= batches_per_epoch:
                pos.epoch += 1
                pos.batch_index = 0
                pos.epoch_loss_sum, pos.epoch_correct, pos.epoch_count = 0.0, 0, 0
                pos.epoch_batches, pos.epoch_seconds = 0, 0.0
            save("epoch_end" if pos.batch_index == 0 else "end")
    finally:
        job_bc.unpersist()
        sc.setLocalProperty("spark.jobGroup.id", None)
        spark_metrics_uri = _write_spark_json(
            spark, job_group, [shard_windows] * num_workers, inputs.metrics_dir
        )

    if not last_val:  # resumed at the very end: score the model we have
        last_val = run_eval()
    result = {
        **run_result(pos, total_steps, last_val, stopped_early, last_checkpoint, model, num_workers),
        "rounds": rounds,
        "round_overhead_s": float(np.mean(overheads)) if overheads else None,
        "spark_metrics": spark_metrics_uri,  # this training's jobs only, with the shard sizes
    }
    metrics.flush()
    return result


def _write_spark_json(spark, job_group: str, partition_rows: list[int], metrics_dir: str) -> str | None:
    """spark.json for this training's jobs (also after a failure); never raises: metrics must not fail a run."""
    try:
        figures = collect_spark_metrics(spark, job_group=job_group, partition_rows=partition_rows)
        return write_spark_metrics(figures, metrics_dir)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not collect Spark metrics: %s", exc)
        return None


def _crossed(before: int, after: int, interval: int) -> bool:
    """Whether a round that moved the step counter from `before` to `after` passed a multiple of `interval`."""
    return after // interval > before // interval


def _run_round(
    sc, shards, job_bc, model, optimizer, pos: Position, num_steps: int, total_steps: int, cfg
) -> list:
    """Broadcast the current model, train every shard, return [(params, optimizer state, info)] by shard."""
    round_blob = averaging.pack(
        averaging.model_arrays(model),
        averaging.optimizer_arrays(optimizer) if cfg.average_optimizer_state else None,
        start_step=pos.step,
        epoch=pos.epoch,
        batch_index=pos.batch_index,
        num_steps=num_steps,
        total_steps=total_steps,
    )
    round_bc = sc.broadcast(round_blob)
    try:
        job_ref, round_ref = job_bc, round_bc

        def task(shard: int, partition: Iterator[Any]) -> Iterator[bytes]:
            return train_round(shard, partition, job_ref.value, round_ref.value)

        blobs = shards.mapPartitionsWithIndex(task).collect()
    finally:
        round_bc.unpersist()
    return sorted((averaging.unpack(blob) for blob in blobs), key=lambda r: r[2]["shard"])


def _average_into(
    model: nn.Module, optimizer: torch.optim.Optimizer, results: list, with_optimizer: bool
) -> None:
    averaging.load_model_arrays(model, averaging.average_arrays([r[0] for r in results]))
    if with_optimizer and all(r[1] for r in results):
        averaging.load_optimizer_arrays(optimizer, averaging.average_arrays([r[1] for r in results]))


def _advance(pos: Position, results: list, num_steps: int, round_s: float, windows_per_step: int) -> None:
    """Move the position on by one round and add the round's losses to the epoch totals."""
    infos = [r[2] for r in results]
    step_losses = np.mean([info["losses"] for info in infos], axis=0).tolist()
    correct = sum(info["correct"] for info in infos)
    count = sum(info["count"] for info in infos)
    pos.step += num_steps
    pos.batch_index += num_steps
    pos.epoch_loss_sum += float(sum(step_losses))
    pos.epoch_correct += correct
    pos.epoch_count += count
    pos.epoch_batches += num_steps
    pos.epoch_seconds += round_s
    pos.train_seconds += round_s
    pos.predictions_seen += count
    pos.windows_seen += windows_per_step * num_steps
    pos.recent_losses = (pos.recent_losses + step_losses)[-TRAIN_LOSS_WINDOW:]


def _log_round(
    metrics: MetricsWriter,
    pos: Position,
    results: list,
    previous_step: int,
    round_s: float,
    overhead_s: float,
    total_steps: int,
    cfg,
) -> None:
    """One steps.jsonl record per log_interval step inside the round (worker means; layer stats from worker 0)."""
    infos = [r[2] for r in results]
    count = sum(info["count"] for info in infos)
    num_steps = pos.step - previous_step
    for j in range(num_steps):
        step = previous_step + j + 1
        if step % cfg.log_interval:
            continue
        record = {
            "kind": "train",
            "step": step,
            "epoch": pos.epoch,
            "loss": float(np.mean([info["losses"][j] for info in infos])),
            "lr": learning_rate_at(step - 1, cfg, total_steps),
            **infos[0]["layer_stats"].get(str(step), {}),
            "grad_norm": float(np.mean([info["grad_norms"][j] for info in infos])),  # before clipping
            "step_s": round_s / num_steps,
            "tokens_per_s": count / max(round_s, 1e-9),
            "round_s": round_s,
            "round_overhead_s": overhead_s,
            "worker_s": [info["seconds"] for info in infos],
            # False: that task had to read and decode its shard (first round, or a new worker)
            "worker_data_cached": [info["cached"] for info in infos],
            **system_metrics(),
            "time": time.time(),
        }
        metrics.log_step(record)
        log.info(
            "step %d/%d loss %.4f (round %.2fs, overhead %.2fs)",
            step,
            total_steps,
            record["loss"],
            round_s,
            overhead_s,
        )
