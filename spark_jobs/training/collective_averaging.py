"""Parameter averaging by all-reduce: the rounds of `parameter_averaging` inside the ranks.

DL4J's semantics, without a Spark job per round. Each rank (launched like a ddp rank, see
`strategies/ddp.py`) trains `averaging_frequency` minibatches of its own shard alone, then
the ranks average their weights, and Adam's moments when `average_optimizer_state` is true
(else every round starts from a fresh optimizer state), with one all-reduce each:

    rank k: K local steps ──▶ all-reduce(weights [, optimizer state]) / N ──▶ next round

So a round's fixed cost is one collective over the parameters, milliseconds for our models,
instead of a Spark job (task launch, broadcast, collect: 0.3–0.4 s). Between averagings the
ranks' models differ; at every round's end they are equal, and that is where `run_training`
evaluates and checkpoints (one round per call). The Spark-job rounds stay available as
`training.averaging_via: spark` (strategies/parameter_averaging.py); both give the same
weights, up to the order of floating-point sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from spark_jobs.training.state import Position, StepsDone


def average_across_ranks(tensors: list[torch.Tensor], world_size: int) -> None:
    """Replace each tensor by its mean over the ranks, in place, with one all-reduce."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for t in tensors:
        t.data.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def optimizer_tensors(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's floating-point state, in the same order on every rank (by parameter)."""
    found = []
    for param in model.parameters():
        state = optimizer.state.get(param, {})
        for key in sorted(state):
            value = state[key]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                found.append(value)
    return found


class AveragingRounds:
    """A `TrainSteps` (see training/loop.py) that runs one round per call: `num_steps` local
    steps (`one_step`, on this rank's model alone), then the average over the ranks. Records
    carry the round's averaging time as `averaging_s`, the fixed cost of a round."""

    def __init__(
        self,
        one_step: Callable[[Position, int], StepsDone],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        world_size: int,
        with_optimizer: bool,
    ) -> None:
        self.one_step, self.model, self.optimizer = one_step, model, optimizer
        self.world_size, self.with_optimizer = world_size, with_optimizer
        self.averaging_seconds: list[float] = []  # one per round

    def __call__(self, pos: Position, num_steps: int) -> StepsDone:
        started = time.perf_counter()
        losses, correct, count, windows, records = [], 0, 0, 0, []
        for j in range(num_steps):
            here = Position(step=pos.step + j, epoch=pos.epoch, batch_index=pos.batch_index + j)
            done = self.one_step(here, 1)
            if done.nan is not None:
                return StepsDone([], 0, 0, 0, 0.0, nan=done.nan)
            losses += done.losses
            correct, count, windows = correct + done.correct, count + done.count, windows + done.windows
            records += done.records
        averaging_started = time.perf_counter()
        average_across_ranks(list(self.model.parameters()), self.world_size)
        if self.with_optimizer:
            average_across_ranks(optimizer_tensors(self.model, self.optimizer), self.world_size)
        else:
            self.optimizer.state.clear()  # DL4J without saveUpdater: each round starts afresh
        self.averaging_seconds.append(time.perf_counter() - averaging_started)
        for record in records:
            record["averaging_s"] = self.averaging_seconds[-1]
        return StepsDone(losses, correct, count, windows, time.perf_counter() - started, records)
