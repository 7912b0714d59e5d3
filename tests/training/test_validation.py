"""The run's validation figures are full-split and exact: checked against an independent recomputation."""

from __future__ import annotations

import importlib.util
import json
import math

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from spark_jobs.models.artifact import load_model
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train


def _val_tokens(run_dir) -> list[int]:
    """The validation text's tokens, as the fixture wrote them (the second segment)."""
    table = pq.read_table(run_dir / "preprocess" / "tokens").sort_by("seq")
    return table.column("ids")[1].as_py()


def test_gpt_figures_score_every_validation_token_once_over_real_characters(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "training.max_steps=12"))
    run_dir = root / "runs" / run_id
    model, tokenizer, _ = load_model(str(run_dir / "train" / "model"))
    val = _val_tokens(run_dir)
    width = model.window_size + 1

    # Independently: windows every W/8 tokens and one ending at the text's end; each position
    # is scored by the first window that predicts it (so with at least 7/8 W of context, but
    # in the first window).
    step = model.window_size // 8
    starts = list(range(0, len(val) - width + 1, step)) + [len(val) - width]
    nats, right, seen = 0.0, 0, set()
    with torch.no_grad():
        for start in starts:
            ids = val[start : start + width]
            log_probs = F.log_softmax(model.logits(torch.tensor([ids[:-1]])), dim=-1)[0]
            for offset in range(1, width):
                if start + offset in seen:
                    continue
                seen.add(start + offset)
                nats -= float(log_probs[offset - 1, ids[offset]])
                right += int(log_probs[offset - 1].argmax() == ids[offset])
    assert seen == set(range(1, len(val)))  # every token but the first, the last ones included
    chars = len(tokenizer.decode(val[1:], skip_special_tokens=False))

    assert summary["val_targets_scored"] == len(val) - 1 and summary["val_chars_scored"] == chars
    assert summary["val_loss"] == pytest.approx(nats / len(seen), rel=1e-5)
    assert summary["val_bits_per_char"] == pytest.approx(nats / math.log(2) / chars, rel=1e-5)
    assert summary["val_accuracy"] == pytest.approx(right / len(seen), rel=1e-9)
    assert summary["val_accuracy_kind"] == "next-token top-1 at every position"
    # the periodic evaluations stay on their fixed sample, and say so
    evals = [r for r in read_steps(str(run_dir / "metrics")) if r["kind"] == "eval"]
    assert evals and all(r["sampled_windows"] == 4 * 16 for r in evals)
    assert summary["val_loss_sampled"] == evals[-1]["val_loss"]


def test_mlp_figures_score_every_validation_token_after_the_first_window(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "model.kind=mlp", "training.max_steps=6"))
    val = _val_tokens(root / "runs" / run_id)
    # the mlp predicts from exactly W tokens: every token from the (W+1)-th on, once, whatever
    # the window step's stride (4 here)
    assert summary["val_targets_scored"] == len(val) - 16
    assert summary["val_bits_per_char"] is None and "nearest neighbour" in summary["val_accuracy_kind"]


def test_the_bench_bigram_scores_the_same_validation_targets_as_the_gpt(new_run, tiny_config, repo):
    """bench/quality.py's bigram: every validation token after the first, the tail the window
    step's stride leaves uncovered included, as the gpt's figures score them."""
    spec = importlib.util.spec_from_file_location("bench_quality", repo / "bench" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    root, run_id = new_run()
    config = tiny_config(root, run_id)
    run_dir = root / "runs" / run_id
    val = _val_tokens(run_dir)
    vocab = json.loads((run_dir / "preprocess" / "stats.json").read_text())["vocab_size"]
    counts = quality.bigram_counts(str(run_dir / "window"), vocab)

    result = quality.bigram(str(run_dir), config, vocab, chars=1000)

    assert result["val_targets_scored"] == len(val) - 1
    k = result["smoothing"]
    probs = (counts + k) / (counts + k).sum(axis=1, keepdims=True)
    nats = -sum(math.log(probs[a, b]) for a, b in zip(val[:-1], val[1:], strict=True))
    assert result["val_bits_per_char"] == pytest.approx(nats / math.log(2) / 1000, rel=1e-9)
