"""The train step: windows → a trained model, checkpoints, metrics and a report.

    spark-submit spark_jobs/steps/train.py --config FILE [--set key=value ...] [--resume]

Reads <run>/preprocess/ (tokenizer, embeddings, stats) and <run>/window/ (train/val Parquet),
trains with `training.strategy` (single | ddp | parameter_averaging), and writes
<run>/train/model/ (committed with _SUCCESS) and <run>/metrics/ (summary.json, report.md,
plots; _SUCCESS last). Checkpoints live in <run>/checkpoints/, outside train/, so a
retried step finds them: whenever checkpoints of this run exist, training resumes from the
newest valid one (`--resume` says so explicitly; delete the folder to start over).

Two settings exist for tests and debugging: `training.shuffle=false` keeps the windows in
file order (then `ddp` with k ranks × batch b trains on exactly the batches of `single` with
batch k·b), and `training.debug_nan_at_step=N` turns the loss at step N into NaN, which stops
the run with a TrainingError naming the step and the last good checkpoint (the NaN guard).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

import torch
from tokenizers import Tokenizer

from spark_jobs.common import finite_json, lineage, storage
from spark_jobs.common.config import PipelineConfig, dump_config
from spark_jobs.common.errors import InputError, TrainingError
from spark_jobs.data.embeddings import read_table
from spark_jobs.data.loader import count_windows
from spark_jobs.data.tokenizer import load_tokenizer
from spark_jobs.reporting.spark_metrics import write_spark_metrics
from spark_jobs.reporting.summary import summary_record
from spark_jobs.reporting.train_metrics import write_run_summary
from spark_jobs.steps.entrypoint import config_summary, run_step_main
from spark_jobs.training import checkpoints
from spark_jobs.training.evaluation import (
    EVALUATION_VERSION,
    full_split_targets,
    score_full_split,
    scored_target_ids,
)
from spark_jobs.training.inputs import TrainInputs
from spark_jobs.training.strategies import STRATEGIES
from spark_jobs.training.weight_average import load_average_into

log = logging.getLogger(__name__)

# What to do about a bad file of the preprocess step's output.
PREPROCESS_HINT = "written by the preprocess step; re-run it"


def _read_json(uri: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_text(uri))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{uri}: not valid JSON ({exc})") from None


def resolve_inputs(config: PipelineConfig) -> TrainInputs:
    """Check the previous steps' outputs against the config and gather what training needs."""
    root, run_id = config.run.root, config.run.id
    preprocess_dir = storage.step_dir(root, run_id, "preprocess")
    window_dir = storage.step_dir(root, run_id, "window")
    storage.require_complete(preprocess_dir, "preprocess")
    storage.require_complete(window_dir, "window")
    made_from = lineage.current_outputs(root, run_id, ("preprocess", "window"))
    lineage.require_made_from_current(window_dir, "window", {"preprocess": made_from["preprocess"]})

    distribution_uri = storage.join(window_dir, "data_distribution.json")
    distribution = _read_json(distribution_uri)
    data_window = distribution.get("window_size")
    if data_window != config.model.window_size:
        raise InputError(
            f"model.window_size is {config.model.window_size} but the windows in {distribution_uri} "
            f"have window_size {data_window}; re-run the window step or set model.window_size={data_window}"
        )
    chars_per_token = distribution.get("chars_per_token")
    if chars_per_token is None:
        chars_per_token = _read_json(storage.join(preprocess_dir, "stats.json")).get("chars_per_token")
    if not chars_per_token:
        raise InputError(f"{distribution_uri}: no chars_per_token (nor in preprocess/stats.json)")

    tokenizer_uri = storage.join(preprocess_dir, "tokenizer.json")
    vocab_size = load_tokenizer(tokenizer_uri, PREPROCESS_HINT).get_vocab_size()

    embeddings = None
    if config.model.uses_embeddings:
        embeddings_uri = storage.join(preprocess_dir, "embeddings.safetensors")
        if not storage.exists(embeddings_uri):
            raise InputError(
                f"{embeddings_uri} not found: model.kind={config.model.kind} needs the preprocess "
                "step's embeddings, which it makes only for a model that uses them; re-run "
                "preprocess with this config"
            )
        embeddings = torch.from_numpy(read_table(embeddings_uri, config.model.embedding_size))

    num_train = int(distribution.get("train", {}).get("windows", 0))
    num_val = int(distribution.get("val", {}).get("windows", 0))
    # The files must hold what the window step wrote: a lost or extra file is refused here.
    for split, recorded in (("train", num_train), ("val", num_val)):
        found = count_windows(window_dir, split)
        if found != recorded:
            raise InputError(
                f"{storage.join(window_dir, split)}: its Parquet files hold {found} windows but the "
                f"window step recorded {recorded} in {distribution_uri}; re-run the window step"
            )
    if num_val == 0:
        raise InputError(
            f"{storage.join(window_dir, 'val')}: no validation windows to score (the window step "
            "recorded 0); give the corpus more text or raise training.valid_split, then re-run window"
        )
    cfg = config.training
    if cfg.strategy != "single":
        if cfg.num_workers > num_train:
            raise InputError(
                f"training.num_workers ({cfg.num_workers}) is more than the {num_train} train windows "
                f"in {window_dir}/train"
            )
        if num_train // cfg.num_workers < cfg.batch_size:
            raise InputError(
                f"{window_dir}/train: {num_train} windows give each of training.num_workers="
                f"{cfg.num_workers} workers fewer than training.batch_size={cfg.batch_size}"
            )
    if cfg.strategy == "ddp" and num_val < cfg.num_workers:
        raise InputError(
            f"{window_dir}/val: {num_val} validation windows for training.num_workers={cfg.num_workers} "
            "ddp ranks, and every rank needs at least one; use fewer workers or more validation text "
            "(training.valid_split)"
        )

    run_uri = storage.run_dir(root, run_id)
    scratch = (
        tempfile.mkdtemp(prefix=f"llm-decoder-{run_id}-")
        if storage.is_s3(run_uri)
        else storage.join(run_uri, "scratch")
    )
    os.makedirs(scratch, exist_ok=True)
    return TrainInputs(
        run_uri=run_uri,
        window_dir=window_dir,
        checkpoint_dir=storage.join(run_uri, "checkpoints"),
        metrics_dir=storage.join(run_uri, "metrics"),
        scratch_dir=scratch,
        vocab_size=vocab_size,
        embeddings=embeddings,
        chars_per_token=float(chars_per_token),
        num_train_windows=num_train,
        num_val_windows=num_val,
        made_from=made_from,
    )


# What val_accuracy counts, per model kind.
ACCURACY_KIND = {
    "gpt": "next-token top-1 at every position",
    "mlp": "next-token top-1 at the last position (nearest neighbour by cosine; by dot product under the softmax loss)",
}


def evaluation_fingerprint(config: PipelineConfig, inputs: TrainInputs, val_chars: int) -> dict[str, Any]:
    """What two runs must share for their validation figures to be compared (promotion)."""
    preprocess_dir = storage.step_dir(config.run.root, config.run.id, "preprocess")
    stats = _read_json(storage.join(preprocess_dir, "stats.json"))
    mlp = config.model.kind == "mlp"
    return {
        "version": EVALUATION_VERSION,
        "corpus_sha256": stats.get("corpus_sha256"),
        "split_by": config.data.split_by,
        "valid_split": config.training.valid_split,
        "val_chars_scored": val_chars,
        "loss": config.model.mlp_loss if mlp else "cross_entropy",
        # the mlp's loss is measured in its frozen embedding space: only the same table compares
        "embeddings_sha256": (
            hashlib.sha256(
                storage.read_bytes(storage.join(preprocess_dir, "embeddings.safetensors"))
            ).hexdigest()
            if mlp
            else None
        ),
    }


def validate_full_split(
    model, preprocess_dir: str, tokenizer_uri: str, config: PipelineConfig
) -> dict[str, Any]:
    """The trained model on the whole validation text, every token it can predict scored once
    (in this process, whatever the strategy and the window step's stride); bits per character
    over the characters the scored targets decode to."""
    started = time.perf_counter()
    windows, which, mask = full_split_targets(
        preprocess_dir, config.data.split_by, config.model.window_size, model.target_offsets
    )
    score = score_full_split(model, windows, mask, batch_size=max(config.training.batch_size, 64))
    tokenizer = Tokenizer.from_str(storage.read_text(tokenizer_uri))
    chars = sum(
        len(tokenizer.decode(ids, skip_special_tokens=False))
        for ids in scored_target_ids(windows, mask, which, model.target_offsets)
    )
    figures = score.figures(model.has_likelihood, chars)
    if not math.isfinite(figures["val_loss"]):
        why = (
            "no validation targets to score"
            if not score.targets
            else "the model's predictions are not finite"
        )
        raise TrainingError(f"val_loss is {figures['val_loss']} on the full validation split: {why}")
    log.info(
        "full validation split: %d targets, %d chars, val loss %.4f, accuracy %.4f, %.1f s",
        *(score.targets, chars, figures["val_loss"], figures["val_accuracy"], time.perf_counter() - started),
    )
    return {**figures, "val_targets_scored": score.targets, "val_chars_scored": chars}


def run(config: PipelineConfig, resume: bool = False) -> dict[str, Any]:
    from spark_jobs.models import artifact as model_io
    from spark_jobs.models import build_model
    from spark_jobs.models.generate import sample_generations
    from spark_jobs.reporting import markdown as report

    began = time.perf_counter()
    log.info("train: %s", config_summary(config))
    inputs = resolve_inputs(config)
    has_checkpoints = checkpoints.has_checkpoints(inputs.checkpoint_dir)
    if has_checkpoints and not resume:
        log.info("checkpoints found in %s: resuming (a retried train step continues)", inputs.checkpoint_dir)
    elif resume and not has_checkpoints:
        log.warning("--resume: no checkpoints in %s, starting from scratch", inputs.checkpoint_dir)
    result = STRATEGIES[config.training.strategy](config, inputs, resume or has_checkpoints)

    # The final checkpoint holds the trained weights, whichever process trained them.
    final = checkpoints.load_latest(inputs.checkpoint_dir)
    if final is None:
        raise TrainingError(f"training finished without a checkpoint in {inputs.checkpoint_dir}")
    model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
    model.load_state_dict(final.model_state)
    if final.average is not None:  # training.ema_decay: the model is the weights' moving average
        load_average_into(model, final.average, final.uri)
    model.eval()
    preprocess_dir = storage.step_dir(config.run.root, config.run.id, "preprocess")
    tokenizer_uri = storage.join(preprocess_dir, "tokenizer.json")
    validation = validate_full_split(model, preprocess_dir, tokenizer_uri, config)

    wall_s = time.perf_counter() - began
    # The figures are the run-summary contract's (spark_jobs.reporting.summary); the rest is train's own.
    figures = {
        "run_id": config.run.id,
        "model_kind": config.model.kind,
        "strategy": config.training.strategy,
        "num_workers": 1 if config.training.strategy == "single" else config.training.num_workers,
        "parameters": model.num_parameters(),
        "steps": result["steps"],
        "epochs": result.get("epochs"),
        "train_loss": result.get("train_loss"),
        "first_val_loss": result.get("first_val_loss"),
        **{
            key: validation[key]
            for key in ("val_loss", "val_accuracy", "val_perplexity", "val_bits_per_char")
        },
        "tokens_per_s": result.get("tokens_per_s"),
        "samples_per_s": result.get("samples_per_s"),
        "train_s": result.get("train_s"),
        "wall_s": wall_s,
        "stopped_early": result.get("stopped_early", False),
    }
    extra = {
        # what the figures above are: every validation target scored once, real characters
        "val_targets_scored": validation["val_targets_scored"],
        "val_chars_scored": validation["val_chars_scored"],
        "val_accuracy_kind": ACCURACY_KIND[config.model.kind],
        "evaluation": evaluation_fingerprint(config, inputs, validation["val_chars_scored"]),
        # the last periodic evaluation, on the fixed sample of eval_batches x batch_size windows
        "val_loss_sampled": result.get("val_loss"),
        # set: the model and the figures above are the weights' moving average (the sampled
        # evaluations scored the weights being trained)
        "ema_decay": config.training.ema_decay,
        "chars_per_token": inputs.chars_per_token,
        "checkpoint": final.uri,
        "train_windows": inputs.num_train_windows,
        "val_windows": inputs.num_val_windows,
    }
    summary = summary_record(figures, extra)
    if not model.has_likelihood:
        summary["val_bits_per_char_note"] = (
            "mlp regresses embeddings (MSE/cosine): it has no likelihood, so no bits per character"
        )
    if config.model.kind == "mlp":
        summary["tokens_per_s_note"] = "mlp: one predicted token per window"

    train_dir = storage.step_dir(config.run.root, config.run.id, "train")
    with storage.step_output(train_dir, made_from=inputs.made_from) as out:
        metadata = {k: summary[k] for k in ("run_id", "strategy", "steps", "val_loss", "val_accuracy")}
        model_io.save_model(model, config.model, storage.join(out, "model"), tokenizer_uri, metadata)

    samples = sample_generations(model, tokenizer_uri, config)
    finite_json.write(storage.join(inputs.metrics_dir, "samples.json"), samples)
    # The strategy's own Spark jobs (None for `single`, which trains without Spark).
    spark_json = storage.join(inputs.metrics_dir, "spark.json")
    storage.delete(spark_json)  # an earlier attempt's, perhaps under another strategy
    if result["spark_metrics"] is not None:
        write_spark_metrics(result["spark_metrics"], inputs.metrics_dir)
    summary["spark_metrics"] = spark_json if result["spark_metrics"] is not None else None
    summary["wall_s"] = time.perf_counter() - began
    write_run_summary(inputs.metrics_dir, summary)
    # The config this run trained with, for the report and for reproducing it.
    storage.write_text(storage.join(inputs.metrics_dir, "config.yaml"), dump_config(config))
    report.write_report(inputs.metrics_dir, summary, samples)
    storage.write_text(storage.join(inputs.metrics_dir, storage.SUCCESS_MARKER), "")
    shutil.rmtree(inputs.scratch_dir, ignore_errors=True)  # torchelastic leftovers, rank errors
    log.info(
        "trained %s/%s: %d steps, val loss %.4f, %.0f tokens/s, %.1f s",
        summary["model_kind"], summary["strategy"], summary["steps"], summary["val_loss"],
        summary["tokens_per_s"] or 0, summary["wall_s"],
    )  # fmt: skip
    return summary


if __name__ == "__main__":
    run_step_main("train", run)
