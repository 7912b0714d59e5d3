"""`single`: the trainer in one process: learning, artifacts, metrics, resume, a fresh-process load."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from spark_jobs.common.errors import TrainingError
from spark_jobs.models.artifact import load_model
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train

SUMMARY_KEYS = {
    "model_kind", "strategy", "num_workers", "steps", "train_loss", "val_loss", "first_val_loss",
    "val_accuracy", "val_bits_per_char", "tokens_per_s", "wall_s", "run_id",
}  # fmt: skip


def test_gpt_learns_and_leaves_model_metrics_and_report(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id))
    run = root / "runs" / run_id

    assert SUMMARY_KEYS <= set(summary)
    assert summary["steps"] == 40 and summary["model_kind"] == "gpt" and summary["strategy"] == "single"
    # from uniform over ~300 tokens (ln 300 = 5.7) to clearly better
    assert summary["first_val_loss"] > 5.0
    assert summary["val_loss"] < summary["first_val_loss"] - 0.8
    # full split: nats over the scored targets' own characters (test_validation.py recomputes it)
    assert summary["val_bits_per_char"] == pytest.approx(
        summary["val_loss"] * summary["val_targets_scored"] / 0.6931471805599453 / summary["val_chars_scored"]
    )
    assert json.loads((run / "metrics" / "summary.json").read_text())["val_loss"] == summary["val_loss"]

    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (run / "train" / "model" / name).stat().st_size > 0
    assert (run / "train" / "_SUCCESS").exists() and (run / "metrics" / "_SUCCESS").exists()

    steps = read_steps(str(run / "metrics"))
    train_steps = [r for r in steps if r["kind"] == "train"]
    assert [r["step"] for r in train_steps] == list(range(5, 41, 5))
    first = train_steps[0]
    for key in (
        "loss",
        "lr",
        "grad_norm",
        "layer_grad_norms",
        "step_s",
        "tokens_per_s",
        "rss_mb",
        "cpu_percent",
    ):
        assert key in first, key
    assert "transformer.h.1.mlp.c_fc" in first["layer_grad_norms"]
    assert [r["step"] for r in train_steps if "grad_histogram" in r] == [10, 20, 30, 40]
    assert [r["step"] for r in steps if r["kind"] == "eval"] == [0, 20, 40]

    (epoch,) = csv.DictReader(io.StringIO((run / "metrics" / "epochs.csv").read_text()))
    assert float(epoch["val_loss_sampled"]) == pytest.approx(summary["val_loss_sampled"])
    assert float(epoch["val_perplexity_sampled"]) == pytest.approx(
        torch.tensor(summary["val_loss_sampled"]).exp().item(), rel=1e-5
    )

    report = (run / "metrics" / "report.md").read_text()
    for plot in ("loss", "accuracy", "lr", "grad_norm"):
        assert f"(plots/{plot}.png)" in report
        assert (run / "metrics" / "plots" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    samples = json.loads((run / "metrics" / "samples.json").read_text())
    assert samples[0]["prompt"] == "ROMEO:" and samples[0]["text"].startswith("ROMEO:")
    assert samples[0]["text"] in report
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-20", "step-40"]


def test_mlp_learns(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "model.kind=mlp"))
    assert summary["model_kind"] == "mlp"
    # MSE toward random embeddings: the floor is their unexplained variance, not zero
    assert summary["val_loss"] < 0.9 * summary["first_val_loss"]
    evals = [r for r in read_steps(str(root / "runs" / run_id / "metrics")) if r["kind"] == "eval"]
    assert evals[-1]["val_accuracy"] > evals[0]["val_accuracy"]
    assert summary["val_bits_per_char"] is None and "val_bits_per_char_note" in summary
    assert (root / "runs" / run_id / "train" / "model" / "embeddings.safetensors").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "muon-ema"])
def test_a_crashed_run_resumes_exactly(new_run, tiny_config, optimizer):
    """A run that dies at step 13 and is retried ends identical to an uninterrupted one (with
    ema: the weights' moving average, which the model file then holds, too)."""
    common = (
        "training.max_steps=24",
        "training.checkpoint_interval=8",
        "training.log_interval=1",
        f"training.optimizer={optimizer.removesuffix('-ema')}",
        *(["training.ema_decay=0.8"] if optimizer.endswith("-ema") else []),
    )
    root, straight_id = new_run()
    straight = train.run(tiny_config(root, straight_id, *common))

    _, crashed_id = new_run()
    with pytest.raises(TrainingError, match=r"loss is nan at step 13; last good checkpoint: .*step-8"):
        train.run(tiny_config(root, crashed_id, *common, "training.debug_nan_at_step=13"))
    assert not (root / "runs" / crashed_id / "train").exists()
    # the retried step sees the checkpoints and continues from step 8 on its own
    resumed = train.run(tiny_config(root, crashed_id, *common))

    for key in ("steps", "train_loss", "val_loss", "first_val_loss", "val_accuracy"):
        assert resumed[key] == straight[key], key
    a = load_file(root / "runs" / straight_id / "train" / "model" / "model.safetensors")
    b = load_file(root / "runs" / crashed_id / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(r["step"], r["loss"]) for r in read_steps(str(root / "runs" / i / "metrics")) if r["kind"] == "train"]
              for i in (straight_id, crashed_id)]  # fmt: skip
    assert losses[0] == losses[1] and len(losses[0]) == 24
    assert straight["val_loss"] < straight["first_val_loss"]  # it learns under either optimizer


def test_the_trained_model_loads_in_a_fresh_process(new_run, tiny_config):
    root, run_id = new_run()
    train.run(tiny_config(root, run_id, "training.max_steps=5", "training.checkpoint_interval=5"))
    model_dir = root / "runs" / run_id / "train" / "model"
    model, _, _ = load_model(str(model_dir))
    context = torch.tensor([[5, 6, 7, 8]])
    expected = model.next_token_scores(context)[0, :5].tolist()
    code = (
        "import json, sys, torch\n"
        "from spark_jobs.models.artifact import load_model\n"
        "model, tokenizer, _ = load_model(sys.argv[1])\n"
        "print(json.dumps(model.next_token_scores(torch.tensor([[5, 6, 7, 8]]))[0, :5].tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == pytest.approx(expected, abs=1e-6)


def test_retrying_a_finished_train_step_changes_nothing(new_run, tiny_config):
    root, run_id = new_run()
    config = tiny_config(root, run_id, "training.max_steps=6", "training.checkpoint_interval=3")
    first = train.run(config)
    steps_before = read_steps(str(root / "runs" / run_id / "metrics"))
    again = train.run(config)  # e.g. Airflow retried the task after the step had finished
    assert again["steps"] == 6 and again["val_loss"] == first["val_loss"]
    assert again["train_loss"] == first["train_loss"]
    assert read_steps(str(root / "runs" / run_id / "metrics")) == steps_before
