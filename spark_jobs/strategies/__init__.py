"""Training strategies: how the one trainer core is spread over processes.

- `single`: one plain process, no Spark.
- `ddp`: torch DistributedDataParallel ranks launched by Spark's TorchDistributor.
- `parameter_averaging`: Spark-native DL4J-style rounds (broadcast, train K minibatches per
  partition, average on the driver).

Every strategy is a module `spark_jobs.strategies.<name>` with one function

    def train(config: PipelineConfig, inputs: TrainInputs, resume: bool) -> dict

that trains until done (training.num_epochs / training.max_steps / early stop) and:
- writes checkpoints with `spark_jobs.checkpoints.save_checkpoint` every
  training.checkpoint_interval steps, at each epoch end and at the very end (the final
  checkpoint is where `train.py` takes the trained weights from);
- when `resume` is true, continues from `spark_jobs.checkpoints.load_latest(inputs.checkpoint_dir)`
  (`spark_jobs.trainer.restore_checkpoint` restores model, optimizer, RNG and returns the
  `Position`; `spark_jobs.trainer.checkpoint_state` builds the JSON part when saving);
- logs through `spark_jobs.train_metrics.MetricsWriter(inputs.metrics_dir, resume_step=...)`:
  `log_step` records (step, loss, lr, grad_norm, ..., or kind="eval" with val_loss / val_accuracy)
  and one `log_epoch` row per epoch; it does NOT write summary.json (train.py does);
- returns the run's figures: steps, epochs, train_loss, val_loss, first_val_loss, val_accuracy,
  tokens_per_s, samples_per_s, train_s, stopped_early, checkpoint (URI of the final checkpoint).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainInputs:
    """What every strategy trains from, resolved and validated by `spark_jobs.train`."""

    run_uri: str  # <root>/runs/<id>
    window_dir: str  # <run>/window (train/ and val/ Parquet)
    checkpoint_dir: str  # <run>/checkpoints
    metrics_dir: str  # <run>/metrics
    scratch_dir: str  # a local folder for temporary files (torchelastic, rank errors)
    vocab_size: int
    embeddings: torch.Tensor | None  # [vocab, embedding_size] or None when the model does not use them
    chars_per_token: float
    num_train_windows: int
    num_val_windows: int


StrategyFunction = Callable[[Any, TrainInputs, bool], dict[str, Any]]


def get_strategy(name: str) -> StrategyFunction:
    return importlib.import_module(f"spark_jobs.strategies.{name}").train


__all__ = ["StrategyFunction", "TrainInputs", "get_strategy"]
