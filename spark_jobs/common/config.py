"""The pipeline's configuration: one YAML file, validated by a typed schema.

Sections: `spark`, `model`, `training`, `data` (the seed's settings, snake_case) and `run`
(where outputs go). Every field has a default sized for a laptop; `configs/local.yaml` and
`configs/emr.yaml` override what differs. Command-line overrides use dotted keys:
`--set training.num_epochs=3 --set model.kind=mlp`.

Unknown keys and wrong types are errors that name the key, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from spark_jobs.common.errors import ConfigError
from spark_jobs.common.redact import redact_config

# Byte-level BPE starts from the 256 byte symbols; special tokens come on top.
BYTE_ALPHABET_SIZE = 256
SPECIAL_TOKENS = ["<|endoftext|>"]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# The choices of model.kind and training.strategy: the trigger forms' enums are built from these.
ModelKind = Literal["gpt", "mlp"]
StrategyName = Literal["single", "ddp", "parameter_averaging"]
MODEL_KINDS: tuple[str, ...] = get_args(ModelKind)
STRATEGY_NAMES: tuple[str, ...] = get_args(StrategyName)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Spark's memory sizes: a number with an optional unit (b, k, m, g, t, p; "kb", "mb", ... too).
MEMORY_PATTERN = r"^[0-9]+([bkmgtp]|[kmgtp]b)?$"


class SparkConfig(_Section):
    master: str = "local[2]"
    app_name: str = "llm-decoder"
    driver_memory: str = "2g"
    # Executors on a cluster (EMR/YARN): the EMR steps pass these to spark-submit
    # (--executor-memory, --executor-cores, --num-executors). local[N] has no executors to size.
    executor_memory: str = "2g"
    executor_cores: int = Field(1, gt=0)
    # Executors of each step, except a train step whose workers run on executors (ddp with
    # ddp_local_mode: false, parameter_averaging): it asks for training.num_workers, one per worker.
    num_executors: int = Field(2, gt=0)
    # Token segments (up to 8192 characters of text each) per preprocess partition.
    target_partition_size: int = Field(20_000, gt=0)
    # Tokens per window chunk: one window-step partition, one Parquet file (4 bytes a token
    # before compression). A Spark task costs a fixed ~0.4 s, so chunks are large.
    window_chunk_tokens: int = Field(1_000_000, gt=0)
    # Extra Spark properties, passed through as-is (e.g. spark.sql.shuffle.partitions).
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("driver_memory", "executor_memory")
    @classmethod
    def _spark_memory_size(cls, value: str) -> str:
        # Checked here, not by spark-submit on the cluster after minutes of bootstrap.
        if not re.match(MEMORY_PATTERN, value.lower()):
            raise ValueError(f"must be a Spark memory size such as 512m or 8g, got {value!r}")
        return value


class ModelConfig(_Section):
    kind: ModelKind = "gpt"
    window_size: int = Field(64, gt=0)
    embedding_size: int = Field(128, gt=0)
    hidden_size: int = Field(512, gt=0)
    num_layers: int = Field(4, gt=0)
    num_heads: int = Field(4, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    # gpt: rotate each head's queries and keys by their position (RoPE), on top of the learned
    # position table, so that attention also sees how far apart two tokens are.
    rotary: bool = False
    # gpt: initialise the token embedding table from the preprocess step's embeddings.
    init_from_embeddings: bool = False
    # mlp: "mse" / "cosine" regress the next token's embedding (the seed); "softmax" scores the
    # predicted embedding against the whole frozen table (dot products) with cross-entropy.
    mlp_loss: Literal["mse", "cosine", "softmax"] = "mse"
    # mlp with the softmax loss: score against a trained copy of the table (initialised from
    # it; the input table stays frozen) instead of the frozen table itself.
    mlp_train_output_table: bool = False
    # mlp with the softmax loss: train the input table too (initialised from Word2Vec). The
    # softmax then scores against this same table (tied, as in nanoGPT's wte) unless
    # mlp_train_output_table asks for a separate copy.
    mlp_train_input_table: bool = False

    @property
    def uses_embeddings(self) -> bool:
        """Whether the model reads the preprocess step's embedding table (else none is made)."""
        return self.kind == "mlp" or self.init_from_embeddings

    @model_validator(mode="after")
    def _heads_divide_embedding(self) -> ModelConfig:
        if self.kind == "gpt" and self.embedding_size % self.num_heads != 0:
            raise ValueError(
                f"model.embedding_size ({self.embedding_size}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        if self.kind == "gpt" and self.rotary and (self.embedding_size // self.num_heads) % 2:
            raise ValueError(
                f"model.rotary rotates feature pairs: the head size (model.embedding_size / "
                f"model.num_heads = {self.embedding_size // self.num_heads}) must be even"
            )
        if self.mlp_train_output_table and (self.kind != "mlp" or self.mlp_loss != "softmax"):
            raise ValueError("model.mlp_train_output_table needs model.kind=mlp and model.mlp_loss=softmax")
        if self.mlp_train_input_table and (self.kind != "mlp" or self.mlp_loss != "softmax"):
            # A regression loss to a table that is itself trained collapses both to one point.
            raise ValueError("model.mlp_train_input_table needs model.kind=mlp and model.mlp_loss=softmax")
        return self


class TrainingConfig(_Section):
    strategy: StrategyName = "single"
    # Processes (ddp ranks) or Spark partitions (parameter averaging) that train at once.
    num_workers: int = Field(2, gt=0)
    # Minibatch size of one worker; the global batch is batch_size * num_workers.
    batch_size: int = Field(32, gt=0)
    num_epochs: int = Field(1, gt=0)
    # Stop after this many optimizer steps in total (None: run all epochs).
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    min_learning_rate: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    # muon: Muon for the hidden weight matrices, AdamW for the rest (spark_jobs/training/muon.py)
    optimizer: Literal["adamw", "adam", "muon"] = "adamw"
    weight_decay: float = Field(0.1, ge=0)
    # Return (and checkpoint) an exponential moving average of the weights, this decay per step
    # (spark_jobs/training/weight_average.py); it averages over the last ~1/(1 - decay) steps.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    train_split: float = Field(0.9, gt=0, lt=1)
    valid_split: float = Field(0.1, gt=0, lt=1)
    eval_interval: int = Field(100, gt=0)
    eval_batches: int = Field(20, gt=0)
    early_stop_patience: int | None = Field(None, gt=0)
    # Parameter averaging (DL4J-style): minibatches per worker between two averagings.
    averaging_frequency: int = Field(5, gt=0)
    average_optimizer_state: bool = True
    # How a round averages: an all-reduce among ranks launched like ddp's (milliseconds), or one
    # Spark job per round, broadcast and collected by the driver (~0.3 s each, the seed's way).
    averaging_via: Literal["allreduce", "spark"] = "allreduce"
    # ddp (and parameter_averaging via allreduce): run torchrun on the driver (True) or as
    # barrier tasks on executors (False).
    ddp_local_mode: bool = True
    # ddp: how long a rank waits for the others (joining, every gradient exchange) before the
    # step fails; gloo's own default of 30 minutes would leave a run hanging on a lost rank.
    ddp_timeout_minutes: float = Field(5.0, gt=0)
    checkpoint_interval: int = Field(200, gt=0)
    keep_checkpoints: int = Field(3, gt=0)
    log_interval: int = Field(10, gt=0)
    histogram_interval: int = Field(100, gt=0)
    num_threads: int | None = Field(None, gt=0)
    seed: int = 1337
    sample_prompts: list[str] = Field(default_factory=lambda: ["ROMEO:", "First Citizen:\n"])
    sample_tokens: int = Field(100, gt=0)
    # Shuffle the training windows each epoch (seeded). false keeps file order, under which
    # ddp with k ranks x batch b sees exactly the batches of single with batch k*b.
    shuffle: bool = True
    # Testing aid: make the training loss NaN at this step to exercise the NaN guard.
    debug_nan_at_step: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _splits_sum_to_one(self) -> TrainingConfig:
        if abs(self.train_split + self.valid_split - 1.0) > 1e-6:
            raise ValueError(
                f"training.train_split ({self.train_split}) + training.valid_split "
                f"({self.valid_split}) must equal 1"
            )
        return self


class DataConfig(_Section):
    # A file, a directory or a glob; local path or s3:// URI.
    corpus_path: str = "data/tinyshakespeare.txt"
    on_decode_error: Literal["strict", "replace"] = "strict"
    # The executors read the corpus in blocks of about this many bytes (whole lines each);
    # a smaller file is one block.
    read_block_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    # A tokenizer.json to use instead of training one.
    tokenizer_path: str | None = None
    vocab_size: int = Field(2048, gt=0)
    # Train the tokenizer on at most this many characters of the training text, evenly spaced
    # blocks of whole lines when there is more (None: all of it, however large).
    tokenizer_sample_chars: int | None = Field(20_000_000, gt=0)
    # The previous phase's embeddings (word2vec text or CSV); None trains them with Word2Vec.
    embeddings_path: str | None = None
    max_oov_rate: float = Field(0.05, ge=0, le=1)
    word2vec_iterations: int = Field(1, gt=0)
    word2vec_window: int = Field(5, gt=0)
    window_stride: int = Field(1, gt=0)
    # Validation = the last valid_split of each document, or of the whole token stream.
    split_by: Literal["document", "stream"] = "document"

    @field_validator("vocab_size")
    @classmethod
    def _vocab_above_byte_alphabet(cls, value: int) -> int:
        minimum = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
        if value < minimum:
            raise ValueError(
                f"must be at least {minimum} (the 256-symbol byte alphabet plus special tokens), got {value}"
            )
        return value


class RunConfig(_Section):
    # Local directory or s3://bucket/prefix; the run lives under <root>/runs/<id>/.
    root: str = "output"
    id: str = "local"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("id")
    @classmethod
    def _safe_run_id(cls, value: str) -> str:
        if not re.match(RUN_ID_PATTERN, value):
            raise ValueError(f"must match {RUN_ID_PATTERN} (letters, digits, '.', '_', '-'), got {value!r}")
        return value


class PipelineConfig(_Section):
    spark: SparkConfig = Field(default_factory=SparkConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    run: RunConfig = Field(default_factory=RunConfig)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], value); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. training.num_epochs=3")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `--set` overrides to a raw config dict (returns a new dict)."""
    merged = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = merged
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return merged


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _describe(errors: list[dict[str, Any]], source: str) -> str:
    lines = []
    for err in errors:
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        else:
            got = err.get("input")
            shows_value = err["type"] != "value_error" and not isinstance(got, dict)
            got_text = f" (got {got!r})" if shows_value else ""
            lines.append(f"{source}: {key}: {err['msg']}{got_text}")
    return "; ".join(lines)


def validate_config(raw: dict[str, Any], source: str = "config") -> PipelineConfig:
    """Validate a raw dict; errors name the source and the dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(), source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key written twice in one mapping is an error (plain YAML
    keeps the last one, silently dropping a whole section written earlier)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"'{key}' is written twice (lines {seen[key]} and {key_node.start_mark.line + 1}): "
                    "merge them, or the first would be ignored"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _one_line(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message (with a caret drawing) as: problem at line L, column C."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(exc, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


def parse_yaml_mapping(data: bytes, source: str) -> dict[str, Any]:
    """A config file's bytes as a dict of sections; one-line errors naming `source`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(exc)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def load_raw(path: str) -> dict[str, Any]:
    """Read a YAML config file (local path or s3:// URI) into a dict."""
    from spark_jobs.common import storage

    if not storage.exists(path):
        raise ConfigError(f"config file not found: {path}")
    if storage.is_dir(path):
        raise ConfigError(f"config file is a directory: {path} (give the YAML file inside it)")
    return parse_yaml_mapping(storage.read_bytes(path), path)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a config file (None: defaults only), apply `--set` overrides, validate."""
    raw = load_raw(str(path)) if path else {}
    raw = apply_overrides(raw, overrides or [])
    return validate_config(raw, source=str(path) if path else "config")


def dump_config(config: PipelineConfig, *, redact: bool = True) -> str:
    """The validated config as YAML: secret-looking spark.conf values redacted for a saved copy.

    `redact=False` only for the config a step reads (<run>/code/config.yaml): the step's
    SparkSession needs the real values (spark_jobs.common.redact says why none should be there)."""
    raw = config.model_dump(mode="json")
    return yaml.safe_dump(redact_config(raw) if redact else raw, sort_keys=False)
