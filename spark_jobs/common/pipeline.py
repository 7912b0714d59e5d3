"""The pipeline's steps as plain data: their names, entry scripts, inputs and outputs, in order.

    preprocess -> window -> train      (each a script in spark_jobs/steps/: parse, read, call, write)

This table is the one place the steps are listed: the CLI's `pipeline` command, `runs` (which
step of a run did not finish), both Airflow DAGs, the EMR step requests and the staging of the
scripts are all built from it. It imports nothing, so the Airflow side can use it while parsing
DAG files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Step:
    name: str
    # The entry script, relative to the spark_jobs package (runs unchanged under spark-submit).
    script: str
    description: str
    # Run-relative folders read and written (`corpus` is the configured corpus, outside the run).
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # Spark properties this step needs wherever it runs.
    spark_conf: Mapping[str, str] = field(default_factory=dict)


STEPS: tuple[Step, ...] = (
    Step(
        name="preprocess",
        script="steps/preprocess.py",
        description="Tokenize the corpus (byte-level BPE) and build token embeddings.",
        inputs=("corpus",),
        outputs=("preprocess",),
    ),
    Step(
        name="window",
        script="steps/window.py",
        description="Cut the token stream into train/val sliding windows.",
        inputs=("preprocess",),
        outputs=("window",),
    ),
    Step(
        name="train",
        script="steps/train.py",
        description="Train the decoder; write the model, checkpoints and metrics.",
        inputs=("preprocess", "window"),
        outputs=("train", "checkpoints", "metrics"),
        # TorchDistributor's barrier stage fails when executors come and go (EMR enables
        # dynamic allocation by default).
        spark_conf={"spark.dynamicAllocation.enabled": "false"},
    ),
)
STEP_NAMES = tuple(step.name for step in STEPS)


def step_by_name(name: str) -> Step:
    for step in STEPS:
        if step.name == name:
            return step
    raise KeyError(name)
