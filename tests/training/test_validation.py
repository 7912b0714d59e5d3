"""The run's validation figures are full-split and exact: checked against an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from spark_jobs.data.loader import load_windows_with_positions
from spark_jobs.models.artifact import load_model
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train


def _val_windows(run_dir):
    windows, doc_ids, starts = load_windows_with_positions(str(run_dir / "window"), "val")
    return sorted(zip(doc_ids.tolist(), starts.tolist(), windows[:].tolist(), strict=True))


def test_gpt_figures_score_every_validation_target_once_over_real_characters(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "training.max_steps=12"))
    run_dir = root / "runs" / run_id
    model, tokenizer, _ = load_model(str(run_dir / "train" / "model"))

    # Independently: walk the windows, score each absolute target position the first time it is seen.
    nats, right, seen, stream = 0.0, 0, set(), {}
    with torch.no_grad():
        for doc, start, ids in _val_windows(run_dir):
            window = torch.tensor([ids])
            log_probs = F.log_softmax(model.logits(window[:, :-1]), dim=-1)[0]
            for offset in range(1, len(ids)):
                position = (doc, start + offset)
                if position in seen:
                    continue
                seen.add(position)
                stream[position] = ids[offset]
                nats -= float(log_probs[offset - 1, ids[offset]])
                right += int(log_probs[offset - 1].argmax() == ids[offset])
    targets = [stream[p] for p in sorted(stream)]
    chars = len(tokenizer.decode(targets, skip_special_tokens=False))

    assert summary["val_targets_scored"] == len(seen) and summary["val_chars_scored"] == chars
    assert summary["val_loss"] == pytest.approx(nats / len(seen), rel=1e-5)
    assert summary["val_bits_per_char"] == pytest.approx(nats / math.log(2) / chars, rel=1e-5)
    assert summary["val_accuracy"] == pytest.approx(right / len(seen), rel=1e-9)
    assert summary["val_accuracy_kind"] == "next-token top-1 at every position"
    # the periodic evaluations stay on their fixed sample, and say so
    evals = [r for r in read_steps(str(run_dir / "metrics")) if r["kind"] == "eval"]
    assert evals and all(r["sampled_windows"] == 4 * 16 for r in evals)
    assert summary["val_loss_sampled"] == evals[-1]["val_loss"]


def test_mlp_figures_score_each_validation_window_once_at_its_last_position(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "model.kind=mlp", "training.max_steps=6"))
    windows = _val_windows(root / "runs" / run_id)
    # stride 4 < window 16: every window's last target is new, so each window counts once
    assert summary["val_targets_scored"] == len(windows) == summary["val_windows"]
    assert summary["val_bits_per_char"] is None and "nearest neighbour" in summary["val_accuracy_kind"]
