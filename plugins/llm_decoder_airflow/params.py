"""The trigger forms: typed Params with bounds and descriptions, defaults from the config.

Airflow validates a run's conf against these JSON schemas before anything runs: the REST
API answers 400 to an out-of-bounds or wrongly typed value, and the form clamps integers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from llm_decoder_airflow.pipeline import FORBIDDEN_OVERRIDE_PATTERN
from llm_decoder_airflow.settings import PROJECT_ROOT, RELEASE_LABEL_PATTERN, AirflowSettings, EmrSettings
from spark_jobs.common.config import MODEL_KINDS, STRATEGY_NAMES, PipelineConfig, validate_config

OVERRIDE_PATTERN = r"^[a-z_]+(\.[a-z_]+)+=.*$"


def _model_params(config: PipelineConfig) -> dict[str, Param]:
    return {
        "model_kind": Param(
            config.model.kind,
            type="string",
            enum=list(MODEL_KINDS),
            title="Model kind",
            description="gpt: causal transformer (cross-entropy); mlp: the seed's network "
            "(predicts the next token's embedding, nearest-neighbour decoding; model.mlp_loss scores it).",
        ),
        "strategy": Param(
            config.training.strategy,
            type="string",
            enum=list(STRATEGY_NAMES),
            title="Training strategy",
            description="single: one process; ddp: torch DDP via TorchDistributor; "
            "parameter_averaging: Spark-native DL4J-style averaging.",
        ),
        "epochs": Param(
            config.training.num_epochs,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Epochs",
            description="Passes over the training windows (max steps may stop training earlier).",
        ),
        "max_steps": Param(
            config.training.max_steps or 1_000_000,
            type="integer",
            minimum=1,
            maximum=10_000_000,
            title="Max optimizer steps",
            description="Stop after this many optimizer steps in total.",
        ),
        "window_size": Param(
            config.model.window_size,
            type="integer",
            minimum=2,
            maximum=2048,
            title="Window size",
            description="Context length in tokens.",
        ),
        "stride": Param(
            config.data.window_stride,
            type="integer",
            minimum=1,
            maximum=4096,
            title="Window stride",
            description="Tokens between two windows' starts (1 reproduces the seed: every position).",
        ),
        "overrides": Param(
            [],
            type="array",
            # `not`: run.*, spark.conf and *_path are refused (pipeline.refused_override says why).
            items={
                "type": "string",
                "pattern": OVERRIDE_PATTERN,
                "not": {"pattern": FORBIDDEN_OVERRIDE_PATTERN},
            },
            title="Config overrides",
            description="Extra `--set` overrides for every step, e.g. training.batch_size=64. "
            "Not run.*, spark.conf or any *_path: the other Params and the deployment config set those.",
        ),
    }


def local_params(pipeline_raw: Mapping[str, Any], airflow: AirflowSettings) -> dict[str, Param]:
    config = validate_config(dict(pipeline_raw), source="local config")
    corpus = config.data.corpus_path
    if "://" not in corpus:
        corpus = str((PROJECT_ROOT / corpus).resolve())
    root = airflow.local_root if "://" in airflow.local_root else str(PROJECT_ROOT / airflow.local_root)
    return {
        "corpus_uri": Param(
            corpus,
            type="string",
            minLength=1,
            title="Corpus",
            description="Text corpus: a file, a directory or a glob (local path or s3:// URI).",
        ),
        "embeddings_uri": Param(
            config.data.embeddings_path,
            # Nullable: the form treats a non-null string field as required, and "" as missing.
            type=["null", "string"],
            title="Embeddings",
            description="A previous phase's embeddings (word2vec text or CSV); empty: preprocess trains "
            "them with Word2Vec when the model uses them (mlp).",
        ),
        **_model_params(config),
        "root": Param(
            root,
            type="string",
            minLength=1,
            title="Output root",
            description="Run root: runs are written under <root>/runs/<run_id>/, the champion under "
            "<root>/models/. It must lie under the configured root (airflow.local_root).",
        ),
    }


def emr_params(pipeline_raw: Mapping[str, Any], emr: EmrSettings) -> dict[str, Param]:
    config = validate_config(dict(pipeline_raw), source="emr config")
    return {
        "corpus_uri": Param(
            config.data.corpus_path,
            type="string",
            pattern=r"^s3a?://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+",
            title="Corpus",
            description="s3:// URI of the text corpus (a file, a prefix or a glob).",
        ),
        "embeddings_uri": Param(
            config.data.embeddings_path,
            type=["null", "string"],
            pattern=r"^$|^s3a?://.+",
            title="Embeddings",
            description="s3:// URI of a previous phase's embeddings; empty: preprocess trains them with "
            "Word2Vec when the model uses them (mlp).",
        ),
        **_model_params(config),
        "instance_type": Param(
            emr.core_instance_type,
            type="string",
            pattern=r"^[a-z][a-z0-9-]*\.[0-9]*[a-z]+$",
            examples=["m5.xlarge", "m5.2xlarge", "m5.4xlarge", "c5.2xlarge", "r5.xlarge", "m6i.2xlarge"],
            title="Core instance type",
            description="EC2 instance type of the core nodes (the executors).",
        ),
        "instance_count": Param(
            emr.core_instance_count,
            type="integer",
            minimum=1,
            maximum=50,
            title="Core instance count",
            description="Number of core nodes.",
        ),
        "release_label": Param(
            emr.release_label,
            type="string",
            pattern=RELEASE_LABEL_PATTERN,
            title="EMR release",
            description="emr-7.x only (the bootstrap's dnf/python3.11 route needs Amazon Linux 2023); "
            "emr-7.12.0 ships Spark 3.5.6, the pyspark this project pins and tests.",
        ),
        "bucket": Param(
            emr.bucket,
            type="string",
            pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            title="S3 bucket",
            description="Bucket for code, runs, logs and the champion pointer.",
        ),
        "prefix": Param(
            emr.prefix,
            type="string",
            pattern=r"^$|^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$",
            title="S3 prefix",
            description="Key prefix inside the bucket (no leading or trailing slash).",
        ),
    }
