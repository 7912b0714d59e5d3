"""Learning quality on Tiny Shakespeare, validation = the last 10 % of the text.

    .venv/bin/python bench/quality.py [--budget-s 150] [--mlp-budget-s 60] [--quick]

Runs the real steps (preprocess → window → train, strategy `single`) and prints JSON:
- gpt: validation bits per character after a training wall-clock budget (target <= 2.5;
  nanoGPT's CPU config reaches 2.72 in the same 150 s here), next to a count-based bigram
  model's bits per character on the same windows;
- mlp: validation top-1 accuracy (nearest-neighbour decoding) against the bigram model's
  top-1 accuracy on the same windows (target: beat it).

The budget becomes a step count: a short calibration measures this machine's step time, so
the learning-rate schedule runs to its end inside the budget. Both models are scored on
every validation window, not the trainer's evaluation subset.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spark_jobs.common import storage
from spark_jobs.common.config import PipelineConfig
from spark_jobs.data.loader import load_windows
from spark_jobs.models import artifact as model_io
from spark_jobs.models import build_model
from spark_jobs.steps import preprocess, train, window
from spark_jobs.training.optim import make_optimizer

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.quality")


# Per model: the gpt is configs/local.yaml's; the mlp is the seed's network on a shorter
# context (a 64 x 128 input would spend the budget on its first layer) with the cosine loss,
# which trains toward what the nearest-neighbour decoding scores.
MODEL = {
    "gpt": {
        "window_size": 64,
        "hidden_size": 512,
        "num_layers": 4,
        "stride": 8,
        "batch_size": 32,
        "loss": "mse",
    },
    "mlp": {
        "window_size": 16,
        "hidden_size": 512,
        "num_layers": 2,
        "stride": 4,
        "batch_size": 64,
        "loss": "cosine",
    },
}


def make_config(root: str, run_id: str, kind: str, corpus: str, max_steps: int) -> PipelineConfig:
    spec = MODEL[kind]
    return PipelineConfig.model_validate(
        {
            "model": {
                "kind": kind,
                "window_size": spec["window_size"],
                "embedding_size": 128,
                "hidden_size": spec["hidden_size"],
                "num_layers": spec["num_layers"],
                "num_heads": 4,
                "dropout": 0.0,
                "mlp_loss": spec["loss"],
            },
            "training": {
                "strategy": "single",
                "batch_size": spec["batch_size"],
                "num_epochs": 50,
                "max_steps": max_steps,
                "learning_rate": 1e-3,
                "min_learning_rate": 1e-4,
                "warmup_steps": min(100, max_steps // 10),
                "train_split": 0.9,
                "valid_split": 0.1,
                "eval_interval": max_steps + 1,  # score at the start and the end only
                "eval_batches": 20,
                "checkpoint_interval": max_steps + 1,
                "log_interval": 50,
                "sample_tokens": 50,
            },
            "data": {
                "corpus_path": corpus,
                "vocab_size": 1024,
                "window_stride": spec["stride"],
                "split_by": "stream",
            },
            "run": {"root": root, "id": run_id},
        }
    )


def calibrate_steps(
    config: PipelineConfig, windows: torch.Tensor, vocab_size: int, embeddings, budget_s: float
) -> int:
    """How many optimizer steps of this model fit in `budget_s` on this machine, now."""
    torch.manual_seed(0)
    model = build_model(config.model, vocab_size, embeddings)
    optimizer = make_optimizer(model, config.training)
    batch = config.training.batch_size

    def step(i: int) -> None:
        out = model(windows[(i * batch) % (len(windows) - batch) :][:batch])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()

    for i in range(3):
        step(i)
    began, n = time.perf_counter(), 10
    for i in range(n):
        step(i)
    step_s = (time.perf_counter() - began) / n
    return max(20, int(budget_s / step_s))


@torch.no_grad()
def score(model, windows: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """Mean loss per prediction and top-1 accuracy over every window."""
    loss_sum = correct = count = 0.0
    for i in range(0, len(windows), batch):
        out = model(windows[i : i + batch])
        loss_sum += float(out.loss) * out.count
        correct += float(out.correct)
        count += out.count
    return {"loss": loss_sum / count, "accuracy": correct / count, "predictions": int(count)}


def bigram_baseline(
    train_windows: torch.Tensor, val_windows: torch.Tensor, vocab_size: int
) -> dict[str, float]:
    """Count-based bigram model from the train windows' token pairs, scored on the val windows.

    top-1: for each val window, the commonest successor of its last context token vs the target
    (what the mlp predicts). Cross-entropy: add-one smoothed, over every pair of every window
    (what the gpt predicts).
    """
    prev, nxt = train_windows[:, :-1].reshape(-1).numpy(), train_windows[:, 1:].reshape(-1).numpy()
    counts = np.zeros((vocab_size, vocab_size), dtype=np.float64)
    np.add.at(counts, (prev, nxt), 1.0)
    best = counts.argmax(axis=1)
    last, target = val_windows[:, -2].numpy(), val_windows[:, -1].numpy()
    probs = (counts + 1.0) / (counts + 1.0).sum(axis=1, keepdims=True)
    vp, vn = val_windows[:, :-1].reshape(-1).numpy(), val_windows[:, 1:].reshape(-1).numpy()
    return {
        "top1_accuracy_last_position": float((best[last] == target).mean()),
        "top1_accuracy_all_positions": float((best[vp] == vn).mean()),
        "loss_nats_per_token": float(-np.log(probs[vp, vn]).mean()),
    }


def run_model(kind: str, root: str, corpus: str, budget_s: float, source_run: str | None) -> dict:
    run_id = f"quality-{kind}"
    probe = make_config(root, run_id, kind, corpus, max_steps=100)
    run_dir = storage.run_dir(root, run_id)
    figures: dict = {"kind": kind, "budget_s": budget_s}
    began = time.perf_counter()
    if source_run is None:
        preprocess.run(probe)
    else:  # same tokenizer and embedding size: share the first run's preprocess output
        os.makedirs(run_dir, exist_ok=True)
        os.symlink(storage.join(source_run, "preprocess"), storage.join(run_dir, "preprocess"))
    window.run(probe)
    figures["data_steps_s"] = round(time.perf_counter() - began, 1)

    inputs = train.resolve_inputs(probe)
    train_windows = load_windows(inputs.window_dir, "train")
    val_windows = load_windows(inputs.window_dir, "val")
    torch.set_num_threads(os.cpu_count() or 1)
    steps = calibrate_steps(probe, train_windows, inputs.vocab_size, inputs.embeddings, budget_s)
    config = make_config(root, run_id, kind, corpus, max_steps=steps)
    summary = train.run(config)
    model, _, _ = model_io.load_model(storage.join(run_dir, "train", "model"))
    scored = score(model, val_windows)
    bigram = bigram_baseline(train_windows, val_windows, inputs.vocab_size)
    figures.update(
        {
            "steps": summary["steps"],
            "train_s": round(summary["train_s"], 1),
            "parameters": summary["parameters"],
            "tokens_per_s": round(summary["tokens_per_s"]),
            "chars_per_token": inputs.chars_per_token,
            "train_windows": len(train_windows),
            "val_windows": len(val_windows),
            "val_loss": scored["loss"],
            "val_accuracy": scored["accuracy"],
            "bigram": bigram,
        }
    )
    bits = 1.0 / math.log(2) / inputs.chars_per_token
    if kind == "gpt":
        figures["val_bits_per_char"] = scored["loss"] * bits
        figures["bigram_bits_per_char"] = bigram["loss_nats_per_token"] * bits
        figures["target_bits_per_char"] = 2.5
        figures["meets_target"] = figures["val_bits_per_char"] <= 2.5
    else:
        figures["bigram_accuracy"] = bigram["top1_accuracy_last_position"]
        figures["meets_target"] = scored["accuracy"] > bigram["top1_accuracy_last_position"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=150.0, help="gpt training wall-clock budget")
    parser.add_argument("--mlp-budget-s", type=float, default=60.0, help="mlp training wall-clock budget")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20 s of gpt, 10 s of mlp training")
    parser.add_argument("--corpus", default=str(REPO / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--root", default=None, help="run root (default: a temporary folder)")
    parser.add_argument("--models", default="gpt,mlp")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    gpt_budget, mlp_budget = (20.0, 10.0) if args.quick else (args.budget_s, args.mlp_budget_s)
    root = args.root or tempfile.mkdtemp(prefix="bench-quality-")

    began = time.perf_counter()
    results: dict = {"corpus": args.corpus, "root": root, "validation": "last 10% of the token stream"}
    source = None
    for kind in args.models.split(","):
        budget = gpt_budget if kind == "gpt" else mlp_budget
        results[kind] = run_model(kind, root, args.corpus, budget, source)
        source = source or storage.run_dir(root, f"quality-{kind}")
    results["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
