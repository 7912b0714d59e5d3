"""Training metrics: per-step JSON lines, per-epoch CSV, the run summary, and their ingredients.

Files under <run>/metrics/ (local or s3://):
    steps.jsonl   one JSON object per logged step (loss, lr, grad norms, step time, tokens/s, RSS, CPU)
    epochs.csv    one row per epoch (train loss and accuracy; the latest sampled evaluation; epoch time)
    summary.json  the run's headline figures
Locally steps are appended as they come; on S3 (no append) the files are rewritten on `flush`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

import psutil
import torch
from torch import nn

from spark_jobs.common import finite_json, storage

EPOCH_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "val_loss_sampled",
    "val_accuracy_sampled",
    "val_perplexity_sampled",
    "val_bits_per_char_sampled",
    "epoch_s",
]


class MetricsWriter:
    """Writes steps.jsonl, epochs.csv and summary.json under a metrics folder.

    `resume_step`: keep the records of a previous attempt up to that step (the checkpoint we
    resume from) and drop the rest, so a resumed run's files read as one uninterrupted run.
    """

    def __init__(self, metrics_dir: str, resume_step: int | None = None) -> None:
        self.metrics_dir = storage.normalize(metrics_dir)
        self.steps_uri = storage.join(self.metrics_dir, "steps.jsonl")
        self.epochs_uri = storage.join(self.metrics_dir, "epochs.csv")
        self._local = not storage.is_s3(self.metrics_dir)
        storage.delete(storage.join(self.metrics_dir, storage.SUCCESS_MARKER))
        self.steps: list[dict[str, Any]] = []
        self.epochs: list[dict[str, Any]] = []
        if resume_step is not None:
            self.steps = [r for r in _read_jsonl(self.steps_uri) if r.get("step", 0) <= resume_step]
            self.epochs = [r for r in _read_csv(self.epochs_uri) if int(r.get("step", 0)) <= resume_step]
        storage.makedirs(self.metrics_dir)
        self.flush()

    def log_step(self, record: dict[str, Any]) -> None:
        # A non-finite figure of one step (an overflowing gradient norm) is kept as null, with
        # the reason under "non_finite": the loss itself is guarded before it gets here.
        record = finite_json.with_nulls(record)
        self.steps.append(record)
        if self._local:
            with open(self.steps_uri, "a", encoding="utf-8") as handle:
                handle.write(finite_json.dumps(record, self.steps_uri) + "\n")

    def log_epoch(self, record: dict[str, Any]) -> None:
        self.epochs.append({k: record.get(k) for k in EPOCH_COLUMNS})
        storage.write_text(self.epochs_uri, _csv_text(self.epochs))

    def flush(self) -> None:
        """Rewrite every file from memory (the only way to update them on S3)."""
        storage.write_text(
            self.steps_uri, "".join(finite_json.dumps(r, self.steps_uri) + "\n" for r in self.steps)
        )
        storage.write_text(self.epochs_uri, _csv_text(self.epochs))


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in EPOCH_COLUMNS})
    return buffer.getvalue()


def _read_jsonl(uri: str) -> list[dict[str, Any]]:
    if not storage.exists(uri):
        return []
    records = []
    for line in storage.read_text(uri).splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return records


def _read_csv(uri: str) -> list[dict[str, Any]]:
    if not storage.exists(uri):
        return []
    return list(csv.DictReader(io.StringIO(storage.read_text(uri))))


def read_steps(metrics_dir: str) -> list[dict[str, Any]]:
    return _read_jsonl(storage.join(metrics_dir, "steps.jsonl"))


def write_run_summary(metrics_dir: str, summary: dict[str, Any]) -> str:
    """Write metrics/summary.json (see spark_jobs.reporting.summary); returns its URI."""
    uri = storage.join(metrics_dir, "summary.json")
    finite_json.write(uri, summary, sort_keys=True)
    return uri


_PROCESS: psutil.Process | None = None


def system_metrics() -> dict[str, float]:
    """This process's resident memory (MB) and CPU use since the previous call (percent of one core)."""
    global _PROCESS
    if _PROCESS is None or _PROCESS.pid != os.getpid():
        _PROCESS = psutil.Process()
        _PROCESS.cpu_percent(interval=None)  # the first call only starts the clock
    return {
        "rss_mb": round(_PROCESS.memory_info().rss / 2**20, 1),
        "cpu_percent": _PROCESS.cpu_percent(interval=None),
    }


def gradient_stats(model: nn.Module, histogram: bool = False, bins: int = 20) -> dict[str, Any]:
    """The global gradient norm, one norm per layer (module), and optionally a histogram."""
    per_layer: dict[str, float] = {}
    squares = 0.0
    grads = []
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        # DDP wraps the model in `module.`; a layer is the parameter's owner module.
        layer = name.removeprefix("module.").rsplit(".", 1)[0]
        sq = float(param.grad.detach().pow(2).sum())
        per_layer[layer] = per_layer.get(layer, 0.0) + sq
        squares += sq
        if histogram:
            grads.append(param.grad.detach().flatten())
    stats: dict[str, Any] = {
        "grad_norm": math.sqrt(squares),
        "layer_grad_norms": {k: math.sqrt(v) for k, v in per_layer.items()},
    }
    if histogram and grads:
        values = torch.cat(grads).float()
        low, high = float(values.min()), float(values.max())
        if high <= low:
            high = low + 1e-12
        counts = torch.histc(values, bins=bins, min=low, max=high)
        edges = torch.linspace(low, high, bins + 1)
        stats["grad_histogram"] = {"edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()]}
    return stats


def bits_per_char(loss_nats_per_token: float, chars_per_token: float) -> float:
    """Cross-entropy in bits per character: nats/token ÷ ln 2 ÷ chars/token."""
    return loss_nats_per_token / math.log(2) / chars_per_token
