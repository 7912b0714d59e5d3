"""The training loop, the one every strategy runs.

    run = TrainingRun(...); run.resume(...)
    run_training(run, train_steps, steps_per_call)

`train_steps(pos, n)` is the strategy's part: train the next `n` minibatches from `pos` and
report them as `StepsDone`. One process and each DDP rank train one step per call
(`local_train_steps`); parameter averaging trains a round of `averaging_frequency` steps on
every worker per call. Around it the loop does the bookkeeping the same way for all:
advance the position, evaluate every eval_interval steps (early stop), checkpoint every
checkpoint_interval steps, at each epoch end and at the end, so an interrupted run resumes
exactly where it stopped (model, optimizer, schedule, RNG, data position).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import time
from collections.abc import Callable

import torch
from torch import nn

from spark_jobs.common.config import PipelineConfig, TrainingConfig
from spark_jobs.common.errors import InputError
from spark_jobs.data.loader import WindowSet, batch_order, load_windows
from spark_jobs.reporting.train_metrics import gradient_stats, system_metrics
from spark_jobs.training.collective_averaging import AveragingRounds
from spark_jobs.training.evaluation import all_reduce_sum
from spark_jobs.training.inputs import TrainInputs, TrainResult
from spark_jobs.training.optim import learning_rate_at, set_learning_rate
from spark_jobs.training.state import Position, StepsDone, TrainingRun

log = logging.getLogger(__name__)

# Trains the next n minibatches from a position; see the module docstring.
TrainSteps = Callable[[Position, int], StepsDone]
# Called as progress(step, total_steps, loss) after every call in the main process (the CLI's bar).
ProgressCallback = Callable[[int, int, float], None]
_progress: ProgressCallback | None = None


def set_progress_callback(callback: ProgressCallback | None) -> None:
    global _progress
    _progress = callback


def set_threads(num_threads: int | None, world_size: int = 1, task_cpus: int | None = None) -> int:
    """Set and return torch's thread count.

    In a Spark task (a barrier-mode ddp rank, a parameter-averaging worker): the cores Spark
    gave the task, since Spark runs other tasks on the executor's other cores. Elsewhere
    (single, the driver, torchrun ranks on the driver): training.num_threads, or the
    machine's cores shared among the `world_size` ranks on it.
    """
    # torchrun and Spark set OMP_NUM_THREADS=1 for each process: choose explicitly.
    threads = task_cpus or num_threads or max(1, (os.cpu_count() or 1) // world_size)
    torch.set_num_threads(threads)
    return threads


def prepare_cpu_for_training() -> None:
    """Process-wide CPU settings that make training steps faster and steadier, whatever the model:
    freed memory kept for the next step, and subnormal floats flushed to zero.

    Subnormals (below 1.2e-38) appear as training goes on (Adam's second moments, tiny
    gradients) and cost x86 cores a hundred cycles each: the mlp's steps slowed from 85 to 60
    per second over its first epoch. Flushed to zero they stay at ~100; no figure moves, the
    values are 1e-38 from zero.
    """
    keep_freed_memory()
    torch.set_flush_denormal(True)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees, for the next step to reuse.

    Every step frees and allocates again the same large buffers (gradients, activations). By
    default glibc returns freed memory at the top of its heap to the kernel, and the next step
    faults it back in page by page: the mlp (a 16 MB first layer) then trains at half speed,
    varying 2x from run to run (bench/train_throughput.py). PyTorch's CPU tuning guide preloads
    jemalloc or tcmalloc for this; fixed thresholds get the same effect without a library. The
    process keeps its peak memory, as it would with those allocators. Returns whether it
    applied: False where the C library is not glibc (macOS), which keeps its own allocator.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except AttributeError:
        return False
    return bool(
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)  # give back only above 1 GiB free at the heap top
        and mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # heap, not mmap, up to glibc's 32 MB maximum
    )


def spark_task_cpus() -> int | None:
    """The cores Spark gave the task this code runs in, or None outside a Spark task."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.cpus() if context is not None else None


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


def reseed_for_step(seed: int, step: int, worker: int) -> None:
    """Seed the RNG that dropout draws from, per step and per worker (DDP rank, averaging
    partition): masks differ across workers, and a resumed run draws the same ones again.

    Training runs on the CPU, whose generator is the one dropout draws from: seeding it alone
    costs a microsecond, `torch.manual_seed` (every device's generator) up to a millisecond,
    which a model with 15 ms steps feels."""
    torch.default_generator.manual_seed(seed * 1_000_003 + step * 1009 + worker)


def crossed(before: int, after: int, interval: int) -> bool:
    """Whether moving the step counter from `before` to `after` passed a multiple of `interval`."""
    return after // interval > before // interval


def run_training(run: TrainingRun, train_steps: TrainSteps, steps_per_call: int = 1) -> TrainResult:
    """Train until num_epochs, max_steps or early stop; return the run's figures."""
    pos, cfg = run.pos, run.cfg
    if pos.first_val_loss is None:
        pos.first_val_loss = run.evaluate()["val_loss"]
        log.info("step 0: val loss %.4f", pos.first_val_loss)

    while pos.step < run.total_steps and pos.epoch < cfg.num_epochs and not pos.stopped_early:
        while pos.batch_index < run.batches_per_epoch and pos.step < run.total_steps:
            num_steps = min(
                steps_per_call, run.batches_per_epoch - pos.batch_index, run.total_steps - pos.step
            )
            previous_step = pos.step
            done = train_steps(pos, num_steps)
            run.check_finite(done)
            pos.advance(done)
            if run.average is not None:
                run.average.follow(pos.step)
            if _progress is not None and run.is_main:
                _progress(pos.step, run.total_steps, done.losses[-1])
            run.log_steps(done.records)

            more_to_do = pos.batch_index < run.batches_per_epoch and pos.step < run.total_steps
            if crossed(previous_step, pos.step, cfg.eval_interval) and more_to_do:
                pos.stopped_early = run.evaluate_and_check_early_stop()
                if pos.stopped_early:
                    break
            if crossed(previous_step, pos.step, cfg.checkpoint_interval) and more_to_do:
                run.save("interval")
        run.end_epoch()
    return run.result()


def local_train_steps(run: TrainingRun, train_windows: WindowSet, net: nn.Module) -> TrainSteps:
    """One step per call in this process: `single`, or one DDP rank (`net` wraps the model in DDP,
    which averages the gradients across ranks in backward)."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    world_size = run.world_size
    orders: dict[int, list[torch.Tensor]] = {}
    # tokens/s over the steps since the last logged one
    window = {"start": time.perf_counter(), "predictions": 0}

    def train_step(pos: Position, num_steps: int) -> StepsDone:
        assert num_steps == 1
        if pos.epoch not in orders:
            orders.clear()
            orders[pos.epoch] = batch_order(
                len(train_windows), cfg.batch_size, pos.epoch, cfg.seed, cfg.shuffle
            )
        step_start = time.perf_counter()
        lr = learning_rate_at(pos.step, cfg, run.total_steps)
        set_learning_rate(optimizer, lr)
        reseed_for_step(cfg.seed, pos.step, run.rank)
        out = net(train_windows[orders[pos.epoch][pos.batch_index]])
        loss = out.loss
        if cfg.debug_nan_at_step is not None and pos.step == cfg.debug_nan_at_step:
            loss = loss * float("nan")
        loss_value, correct, count = all_reduce_sum(
            [float(loss.detach()), float(out.correct), float(out.count)], world_size
        )
        loss_value /= world_size
        if not math.isfinite(loss_value):
            return StepsDone([], 0, 0, 0, 0.0, nan=(pos.step, loss_value))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        step = pos.step + 1
        log_now = step % cfg.log_interval == 0
        stats = gradient_stats(model, step % cfg.histogram_interval == 0) if log_now else {}
        grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
        optimizer.step()

        step_s = time.perf_counter() - step_start
        window["predictions"] += int(count)
        records = []
        if log_now and run.is_main:
            elapsed = time.perf_counter() - window["start"]
            records.append(
                {
                    "kind": "train",
                    "step": step,
                    "epoch": pos.epoch,
                    "loss": loss_value,
                    "accuracy": correct / max(count, 1),
                    "lr": lr,
                    **stats,
                    "grad_norm": grad_norm,  # before clipping
                    "step_s": step_s,
                    "tokens_per_s": window["predictions"] / max(elapsed, 1e-9),
                    **system_metrics(),
                    "time": time.time(),
                }
            )
        if log_now:
            window["start"], window["predictions"] = time.perf_counter(), 0
        return StepsDone([loss_value], int(correct), int(count), cfg.batch_size * world_size, step_s, records)

    return train_step


def train_in_process(
    config: PipelineConfig,
    inputs: TrainInputs,
    resume: bool,
    rank: int = 0,
    world_size: int = 1,
    task_cpus: int | None = None,
) -> TrainResult:
    """Train in this process: the whole of `single`, or one rank of `ddp` or of `parameter_averaging`
    (by all-reduce) on its shard of the windows (`task_cpus`: the cores of the Spark task a
    barrier-mode rank runs for; see `set_threads`)."""
    cfg = config.training
    set_threads(cfg.num_threads, world_size, task_cpus)
    prepare_cpu_for_training()
    train_windows = load_windows(inputs.window_dir, "train", rank, world_size)
    val_windows = load_windows(inputs.window_dir, "val", rank, world_size)
    batches_per_epoch, total_steps = plan_steps(len(train_windows), cfg, inputs.window_dir)
    run = TrainingRun(
        config,
        inputs,
        val_windows=val_windows,
        batches_per_epoch=batches_per_epoch,
        total_steps=total_steps,
        rank=rank,
        world_size=world_size,
    )
    run.resume(resume)
    if cfg.strategy == "parameter_averaging":
        # rounds of averaging_frequency local steps on this rank's model alone, then the average
        rounds = AveragingRounds(
            local_train_steps(run, train_windows, run.model),
            run.model,
            run.optimizer,
            world_size,
            cfg.average_optimizer_state,
        )
        result = run_training(run, rounds, steps_per_call=cfg.averaging_frequency)
        spent = rounds.averaging_seconds
        return {
            **result,
            "rounds": len(spent),
            "round_overhead_s": sum(spent) / len(spent) if spent else None,
        }
    # broadcast_buffers=False: the only buffers are the mlp's frozen embedding table and its
    # positions, identical on every rank; re-sending them before every forward is wasted work.
    net = (
        run.model
        if world_size == 1
        else nn.parallel.DistributedDataParallel(run.model, broadcast_buffers=False)
    )
    return run_training(run, local_train_steps(run, train_windows, net))
