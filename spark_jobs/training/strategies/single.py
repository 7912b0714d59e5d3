"""`single`: the training loop in this one process, no Spark: the baseline and the debugging path."""

from __future__ import annotations

from spark_jobs.common.config import PipelineConfig
from spark_jobs.training.inputs import TrainInputs, TrainResult
from spark_jobs.training.loop import train_in_process


def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> TrainResult:
    return {**train_in_process(config, inputs, resume), "spark_metrics": None}
