"""What every training strategy trains from, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

# The run's figures at the end of training: see `spark_jobs.training.state.TrainingRun.result`.
TrainResult = dict[str, Any]


@dataclass
class TrainInputs:
    """Resolved and validated by the train step (`spark_jobs.steps.train.resolve_inputs`)."""

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
    # The preprocess and window output ids trained on (spark_jobs.common.lineage): recorded in
    # every checkpoint, and a resume from other data is refused.
    made_from: dict[str, str | None] = field(default_factory=dict)
