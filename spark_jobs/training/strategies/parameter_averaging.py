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
at each epoch end) and resume all use that counter, at round boundaries: the driver runs the
same `run_training` loop and `TrainingRun` state as `single` and `ddp`, one round per call. With
one worker and frequency 1 this is exactly `single`.

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

from spark_jobs.common.config import PipelineConfig, TrainingConfig
from spark_jobs.common.errors import InputError
from spark_jobs.data.loader import WindowSet, batch_order, load_windows
from spark_jobs.models import DecoderModel, build_model
from spark_jobs.reporting.spark_metrics import spark_metrics_or_none
from spark_jobs.reporting.train_metrics import gradient_stats, system_metrics
from spark_jobs.training import averaging
from spark_jobs.training.inputs import TrainInputs, TrainResult
from spark_jobs.training.loop import (
    plan_steps,
    prepare_cpu_for_training,
    reseed_for_step,
    run_training,
    set_threads,
    spark_task_cpus,
)
from spark_jobs.training.optim import learning_rate_at, make_optimizer, set_learning_rate
from spark_jobs.training.state import Position, StepsDone, TrainingRun

log = logging.getLogger(__name__)


# --- the worker side: runs inside a Spark task ------------------------------------------------

# Per Python worker process: the decoded shard, the model and the optimizer of the current
# job, so later rounds neither re-read Parquet nor rebuild the model.
_WORKER_CACHE: dict[tuple[str, int], tuple[WindowSet, DecoderModel, torch.optim.Optimizer]] = {}


def _worker_state(
    job: dict, job_key: str, shard: int
) -> tuple[WindowSet, DecoderModel, torch.optim.Optimizer]:
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
    set_threads(None, task_cpus=spark_task_cpus() or 1)  # the task's cores: Spark runs others beside it
    prepare_cpu_for_training()
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

    order = batch_order(len(windows), cfg.batch_size, info["epoch"], cfg.seed, cfg.shuffle)
    losses, grad_norms, correct, count, layer_stats = [], [], 0, 0, {}
    nan_step, nan_loss = None, None
    start = time.perf_counter()
    for j in range(info["num_steps"]):
        step = info["start_step"] + j
        set_learning_rate(optimizer, learning_rate_at(step, cfg, info["total_steps"]))
        reseed_for_step(cfg.seed, step, shard)
        out = model(windows[order[info["batch_index"] + j]])
        loss = out.loss
        if cfg.debug_nan_at_step is not None and step == cfg.debug_nan_at_step:
            loss = loss * float("nan")
        if not math.isfinite(float(loss.detach())):
            nan_step, nan_loss = step, float(loss.detach())
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
        nan_loss=nan_loss,
        layer_stats={str(k): v for k, v in layer_stats.items()},
        windows=len(windows),
        cached=cached,
        # measured here, in the worker that trained: the driver idles during a round
        **system_metrics(),
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


def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    """Train by rounds of local minibatches and averaging; see the module docstring."""
    from spark_jobs.common.spark_session import get_spark

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
    run = TrainingRun(
        config,
        inputs,
        val_windows=load_windows(inputs.window_dir, "val"),  # the driver scores the whole split
        batches_per_epoch=batches_per_epoch,
        total_steps=total_steps,
    )
    run.resume(resume)

    spark = get_spark(config, "train")
    sc = spark.sparkContext
    job_group = f"train-{config.run.id}-{uuid.uuid4().hex[:8]}"  # this attempt's jobs only
    sc.setJobGroup(job_group, f"parameter averaging, {num_workers} workers", interruptOnCancel=True)
    job_bc = sc.broadcast(_job_blob(config, inputs, total_steps))
    shards = sc.parallelize(range(num_workers), num_workers)
    overheads: list[float] = []

    def one_round(pos: Position, num_steps: int) -> StepsDone:
        """Train `num_steps` minibatches on every worker, then average: one Spark job."""
        round_start = time.perf_counter()
        results = _run_round(sc, shards, job_bc, run, num_steps, cfg)
        infos = [r[2] for r in results]
        failed = [(i["nan_step"], i["nan_loss"]) for i in infos if i["nan_step"] is not None]
        if failed:
            return StepsDone([], 0, 0, 0, 0.0, nan=min(failed))
        _average_into(run.model, run.optimizer, results, cfg.average_optimizer_state)
        round_s = time.perf_counter() - round_start
        overheads.append(round_s - max(info["seconds"] for info in infos))
        count = sum(info["count"] for info in infos)
        return StepsDone(
            losses=np.mean([info["losses"] for info in infos], axis=0).tolist(),
            correct=sum(info["correct"] for info in infos),
            count=count,
            windows=cfg.batch_size * num_workers * num_steps,
            seconds=round_s,
            records=_round_records(pos, infos, num_steps, round_s, overheads[-1], total_steps, cfg),
        )

    try:
        result = run_training(run, one_round, steps_per_call=cfg.averaging_frequency)
    finally:
        job_bc.unpersist()
        sc.setLocalProperty("spark.jobGroup.id", None)
        # this training's jobs only (also after a failure), with the shard sizes
        spark_metrics = spark_metrics_or_none(spark, job_group, [shard_windows] * num_workers)
    return {
        **result,
        "world_size": num_workers,
        "rounds": len(overheads),
        "round_overhead_s": float(np.mean(overheads)) if overheads else None,
        "spark_metrics": spark_metrics,
    }


def _run_round(sc, shards, job_bc, run: TrainingRun, num_steps: int, cfg: TrainingConfig) -> list:
    """Broadcast the current model, train every shard, return [(params, optimizer state, info)] by shard."""
    pos = run.pos
    round_blob = averaging.pack(
        averaging.model_arrays(run.model),
        averaging.optimizer_arrays(run.optimizer) if cfg.average_optimizer_state else None,
        start_step=pos.step,
        epoch=pos.epoch,
        batch_index=pos.batch_index,
        num_steps=num_steps,
        total_steps=run.total_steps,
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


def _round_records(
    pos: Position,
    infos: list[dict],
    num_steps: int,
    round_s: float,
    overhead_s: float,
    total_steps: int,
    cfg: TrainingConfig,
) -> list[dict[str, Any]]:
    """One steps.jsonl record per log_interval step inside the round (worker means; layer stats from worker 0)."""
    count = sum(info["count"] for info in infos)
    records = []
    for j in range(num_steps):
        step = pos.step + j + 1
        if step % cfg.log_interval:
            continue
        records.append(
            {
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
                # each worker's resident memory and CPU over the round; rss_mb / cpu_percent
                # summarise them (the largest worker, the mean) for the curves all strategies share
                "worker_rss_mb": [info["rss_mb"] for info in infos],
                "worker_cpu_percent": [info["cpu_percent"] for info in infos],
                "rss_mb": max(info["rss_mb"] for info in infos),
                "cpu_percent": float(np.mean([info["cpu_percent"] for info in infos])),
                **{f"driver_{key}": value for key, value in system_metrics().items()},
                "time": time.time(),
            }
        )
    return records
