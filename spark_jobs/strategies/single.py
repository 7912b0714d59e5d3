"""`single`: the trainer in this one process, no Spark: the baseline and the debugging path."""

from __future__ import annotations

from typing import Any

from spark_jobs.config import PipelineConfig
from spark_jobs.strategies import TrainInputs
from spark_jobs.trainer import train_loop


def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> dict[str, Any]:
    return train_loop(config, inputs, resume)
