"""Scoring the model on validation windows.

Two kinds of evaluation:
- sampled, during training: the same `eval_batches` x `batch_size` windows every time, so the
  curve is comparable from point to point (labelled "sampled" wherever it is shown);
- full-split, once at the end: every token of the validation text scored exactly once
  (`scoring_windows`, `score_full_split`), whatever the window step's stride, and bits per
  character over the characters those targets decode to. These are the run's figures in
  summary.json, whatever the strategy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from spark_jobs.common.config import PipelineConfig
from spark_jobs.data.loader import batch_order
from spark_jobs.data.validation_text import validation_ranges
from spark_jobs.reporting.train_metrics import bits_per_char

# Bumped whenever what the full-split figures measure changes (which tokens are scored, how the
# corpus hash is made): figures of another version are never compared with these.
#   2: every token of the validation text (not of the windows) scored; corpus hash by read block
EVALUATION_VERSION = 2


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


def validation_record(result: dict, has_likelihood: bool, chars_per_token: float) -> dict:
    """An evaluation with its derived figures (perplexity and bits per character when the loss is nats)."""
    record = dict(result)
    if has_likelihood:
        record["val_perplexity"] = math.exp(min(result["val_loss"], 50.0))
        record["val_bits_per_char"] = bits_per_char(result["val_loss"], chars_per_token)
    else:  # MSE / cosine in embedding space has no per-character likelihood
        record["val_perplexity"] = None
        record["val_bits_per_char"] = None
    return record


def first_scores(doc_ids: np.ndarray, starts: np.ndarray, offsets: range) -> np.ndarray:
    """bool [N, P]: which predictions of each window score their target for the first time.

    Windows come in (doc_id, start) order; target p of a window sits at start + offsets[p].
    Overlapping windows (stride < window) predict many targets again: only the first window
    that reaches a target scores it, so every covered target counts exactly once.
    """
    targets = starts[:, None] + np.asarray(offsets)[None, :]
    last = targets[:, -1]
    previous_last = np.concatenate([[np.iinfo(np.int64).min], last[:-1]])
    new_doc = np.concatenate([[True], doc_ids[1:] != doc_ids[:-1]])
    previous_last[new_doc] = np.iinfo(np.int64).min
    return targets > previous_last[:, None]


def context_step(window_size: int, offsets: range) -> int:
    """How far apart the full-split scoring windows start: an eighth of a window (at most the
    targets a window scores), so that every scored token has at least 7/8 of a window of context
    at 8 forward passes per window of text."""
    return max(1, min(len(offsets), window_size // 8))


def scoring_windows(
    ranges: list[np.ndarray], window_size: int, offsets: range
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Windows that score every token of each validation range once: (windows int64 [N, W+1],
    range index [N], start within the range [N]); `first_scores` then masks the overlap.

    Windows start every `context_step(...)` tokens and one more ends exactly at the range's
    end, so the last tokens are scored too. Each window scores only the targets no earlier
    window reached, so a token is predicted from at least W - step tokens of context (all W
    for the mlp, whose one target is its last position), except in a range's first window,
    like a reader who has followed the text from its start. A token without `offsets.start`
    tokens before it in its range (the first token; the mlp's first W) cannot be predicted;
    a range shorter than a window is not scored (the window step gives it no window either).
    """
    width, step = window_size + 1, context_step(window_size, offsets)
    windows, which, starts = [], [], []
    for index, tokens in enumerate(ranges):
        if len(tokens) < width:
            continue
        last = len(tokens) - width
        mine = np.arange(0, last + 1, step, dtype=np.int64)
        if mine[-1] != last:
            mine = np.append(mine, last)
        view = np.lib.stride_tricks.sliding_window_view(tokens, width)
        windows.append(view[mine].astype(np.int64))
        which.append(np.full(len(mine), index, dtype=np.int64))
        starts.append(mine)
    if not windows:
        return torch.empty((0, width), dtype=torch.int64), np.array([], np.int64), np.array([], np.int64)
    return torch.from_numpy(np.concatenate(windows)), np.concatenate(which), np.concatenate(starts)


def full_split_targets(
    preprocess_dir: str, split_by: str, window_size: int, offsets: range
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The full-split figures' targets: (scoring windows, range index per window, the
    `first_scores` mask) over the run's validation text."""
    ranges = validation_ranges(preprocess_dir, split_by)
    windows, which, starts = scoring_windows(ranges, window_size, offsets)
    return windows, which, first_scores(which, starts, offsets)


def scored_target_ids(
    windows: torch.Tensor, mask: np.ndarray, doc_ids: np.ndarray, offsets: range
) -> list[list[int]]:
    """The scored target ids of each document, in stream order (what the figures' characters decode from)."""
    targets = windows[:, offsets.start : offsets.stop].numpy()
    per_doc: dict[int, list[int]] = {}
    for doc, row, keep in zip(doc_ids.tolist(), targets, mask, strict=True):
        per_doc.setdefault(doc, []).extend(row[keep].tolist())
    return list(per_doc.values())


@dataclass
class FullSplitScore:
    loss_sum: float  # nats (gpt) or the regression loss (mlp), summed over the scored targets
    correct: int
    targets: int

    def figures(self, has_likelihood: bool, chars: int) -> dict:
        """summary.json's validation figures; bits per character over the decoded characters
        when the loss is nats (gpt, mlp with the softmax loss)."""
        loss = self.loss_sum / self.targets if self.targets else math.nan
        record = {"val_loss": loss, "val_accuracy": self.correct / self.targets if self.targets else math.nan}
        if has_likelihood:
            record["val_perplexity"] = math.exp(min(loss, 50.0))
            record["val_bits_per_char"] = self.loss_sum / math.log(2) / chars if chars else None
        else:
            record["val_perplexity"] = record["val_bits_per_char"] = None
        return record


@torch.no_grad()
def score_full_split(
    model: nn.Module, windows: torch.Tensor, mask: np.ndarray, batch_size: int
) -> FullSplitScore:
    """Sum the loss and the correct top-1 predictions over the targets `mask` selects (see first_scores)."""
    was_training = model.training
    model.eval()
    keep = torch.from_numpy(mask)
    loss_sum, correct, targets = 0.0, 0, 0
    rows = np.flatnonzero(mask.any(axis=1))
    for begin in range(0, len(rows), batch_size):
        batch = torch.from_numpy(rows[begin : begin + batch_size])
        losses, right = model.target_losses(windows[batch])
        chosen = keep[batch]
        loss_sum += float(losses[chosen].double().sum())
        correct += int(right[chosen].sum())
        targets += int(chosen.sum())
    model.train(was_training)
    return FullSplitScore(loss_sum, correct, targets)
