"""Scoring the model on validation windows: the same subset at every evaluation, summed across ranks."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from spark_jobs.common.config import PipelineConfig
from spark_jobs.data.loader import batch_order
from spark_jobs.reporting.train_metrics import bits_per_char


def all_reduce_sum(values: list[float], world_size: int) -> list[float]:
    """Sum `values` over the DDP ranks (a no-op in one process)."""
    if world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def eval_batches(num_windows: int, config: PipelineConfig) -> list[torch.Tensor]:
    """The same validation subset at every evaluation, so the losses are comparable."""
    cfg = config.training
    if num_windows == 0:
        return []
    if num_windows < cfg.batch_size:
        return [torch.arange(num_windows)]
    return batch_order(num_windows, cfg.batch_size, epoch=0, seed=cfg.seed, shuffle=cfg.shuffle)[
        : cfg.eval_batches
    ]


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batches: list[torch.Tensor], world_size: int) -> dict:
    """Mean loss (per prediction) and top-1 accuracy over `batches`, summed across ranks."""
    was_training = model.training
    model.eval()
    loss_sum = correct = count = 0.0
    for rows in batches:
        out = model(windows[rows])
        loss_sum += float(out.loss) * out.count
        correct += float(out.correct)
        count += out.count
    model.train(was_training)
    loss_sum, correct, count = all_reduce_sum([loss_sum, correct, count], world_size)
    if count == 0:
        return {"val_loss": math.nan, "val_accuracy": math.nan}
    return {"val_loss": loss_sum / count, "val_accuracy": correct / count}


def validation_record(result: dict, kind: str, chars_per_token: float) -> dict:
    """An evaluation with its derived figures (perplexity and bits per character for gpt)."""
    record = dict(result)
    if kind == "gpt":
        record["val_perplexity"] = math.exp(min(result["val_loss"], 50.0))
        record["val_bits_per_char"] = bits_per_char(result["val_loss"], chars_per_token)
    else:  # MSE / cosine in embedding space has no per-character likelihood
        record["val_perplexity"] = None
        record["val_bits_per_char"] = None
    return record
