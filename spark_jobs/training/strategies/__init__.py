"""Training strategies: how the one training loop is spread over processes.

- `single`: one plain process, no Spark.
- `ddp`: torch DistributedDataParallel ranks launched by Spark's TorchDistributor.
- `parameter_averaging`: DL4J-style rounds (train K minibatches per worker, average weights and
  optimizer state): by an all-reduce among ranks launched like ddp's
  (`training.averaging_via: allreduce`, training/collective_averaging.py), or by one Spark job
  per round that the driver averages (`spark`, strategies/parameter_averaging.py).

Each is a `Strategy`: it trains until done (training.num_epochs / training.max_steps / early
stop) with `spark_jobs.training.state.TrainingRun` and `spark_jobs.training.loop.run_training`,
so checkpoints, resume, evaluation and metrics files are the same under all three; it returns
`TrainingRun.result()` (plus `spark_metrics`: the figures of its own Spark jobs, or None).

`STRATEGIES` maps `training.strategy` to its function; each imports its module when called,
so callers that never train (the CLI's other commands, the Airflow side) stay light.
May import: common, data, models, reporting, training. Nothing imports it but the train step.
"""

from __future__ import annotations

from typing import Protocol

from spark_jobs.common.config import PipelineConfig, StrategyName
from spark_jobs.training.inputs import TrainInputs, TrainResult


class Strategy(Protocol):
    def __call__(self, config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult: ...


def train_single(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    from spark_jobs.training.strategies.single import train

    return train(config, inputs, resume)


def train_ddp(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    from spark_jobs.training.strategies.ddp import train

    return train(config, inputs, resume)


def train_parameter_averaging(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    if config.training.averaging_via == "allreduce":  # ranks launched like ddp's, see loop.py
        from spark_jobs.training.strategies.ddp import train
    else:
        from spark_jobs.training.strategies.parameter_averaging import train

    return train(config, inputs, resume)


STRATEGIES: dict[StrategyName, Strategy] = {
    "single": train_single,
    "ddp": train_ddp,
    "parameter_averaging": train_parameter_averaging,
}
