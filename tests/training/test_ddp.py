"""`ddp`: TorchDistributor ranks on local Spark (gloo on loopback)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from spark_jobs.common.errors import TrainingError
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train


def _losses(metrics_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_steps(str(metrics_dir)) if r["kind"] == "train"]


def test_two_ranks_of_batch_b_match_single_with_batch_2b_and_learn(spark, new_run, tiny_config):
    # file order (no shuffle) and interleaved shards: rank r's batch k = rows r, r+2, ... of
    # single's batch k, so both see the same global batches
    common = (
        "training.max_steps=20",
        "training.log_interval=1",
        "training.shuffle=false",
        "training.checkpoint_interval=10",
    )
    root, single_id = new_run()
    single = train.run(tiny_config(root, single_id, *common, "training.batch_size=16"))
    _, ddp_id = new_run()
    ddp = train.run(tiny_config(root, ddp_id, *common, "training.batch_size=8", "training.strategy=ddp"))

    assert ddp["strategy"] == "ddp" and ddp["num_workers"] == 2 and ddp["steps"] == 20
    single_losses = _losses(root / "runs" / single_id / "metrics")
    ddp_losses = _losses(root / "runs" / ddp_id / "metrics")
    assert [s for s, _ in ddp_losses] == list(range(1, 21))
    assert [loss for _, loss in ddp_losses] == pytest.approx([loss for _, loss in single_losses], abs=1e-3)
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-3)
    assert ddp["val_loss"] < ddp["first_val_loss"] - 0.8  # and it learns
    assert ddp["first_val_loss"] == pytest.approx(single["first_val_loss"], abs=1e-5)
    a = load_file(root / "runs" / single_id / "train" / "model" / "model.safetensors")
    b = load_file(root / "runs" / ddp_id / "train" / "model" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    # rank 0 wrote the checkpoints, the model and the metrics; Spark's view is recorded too
    assert sorted(p.name for p in (root / "runs" / ddp_id / "checkpoints").iterdir()) == [
        "step-10",
        "step-20",
    ]
    spark_json = json.loads((root / "runs" / ddp_id / "metrics" / "spark.json").read_text())
    assert spark_json["master"].startswith("local")


def test_ddp_learns_the_mlp_and_resumes_after_a_rank_fails(spark, new_run, tiny_config):
    root, run_id = new_run()
    overrides = ("model.kind=mlp", "training.strategy=ddp", "training.batch_size=8")
    # a rank's error crosses torchrun as our own one-line error
    with pytest.raises(TrainingError, match=r"^loss is nan at step 23; last good checkpoint: .*step-20$"):
        train.run(tiny_config(root, run_id, *overrides, "training.debug_nan_at_step=23"))
    # the rank's error record lived in the run's storage only for the attempt
    assert not (root / "runs" / run_id / "train-attempts").exists()
    # torchrun's scratch folders go inside the run, not in the machine's /tmp
    scratch = root / "runs" / run_id / "scratch"
    assert any(p.name.startswith("torchelastic_") for p in scratch.iterdir())
    summary = train.run(tiny_config(root, run_id, *overrides))  # the retry resumes from step 20
    assert summary["steps"] == 40 and summary["num_workers"] == 2
    assert summary["val_loss"] < 0.9 * summary["first_val_loss"]
    steps = [r["step"] for r in read_steps(str(root / "runs" / run_id / "metrics")) if r["kind"] == "train"]
    assert steps == list(range(5, 41, 5))
    assert (root / "runs" / run_id / "train" / "model" / "embeddings.safetensors").exists()
    assert not scratch.exists()  # a finished run cleans its scratch folder up


def test_a_barrier_mode_rank_error_reaches_the_driver_through_the_run_storage(spark, new_run, tiny_config):
    # ranks as Spark barrier tasks (as on a cluster, where a rank's local files are on another
    # machine); an earlier attempt's error record must not be taken for this attempt's
    root, run_id = new_run()
    attempts = root / "runs" / run_id / "train-attempts"
    (attempts / "old").mkdir(parents=True)
    (attempts / "old" / "rank-0.json").write_text('{"type": "InputError", "message": "stale"}')
    overrides = (
        "training.strategy=ddp",
        "training.ddp_local_mode=false",
        "training.batch_size=8",
        "training.max_steps=4",
        "training.checkpoint_interval=2",
        "training.debug_nan_at_step=3",
    )
    with pytest.raises(TrainingError, match=r"^loss is nan at step 3; last good checkpoint: .*step-2$"):
        train.run(tiny_config(root, run_id, *overrides))
    assert sorted(p.name for p in attempts.iterdir()) == ["old"]  # this attempt's folder is gone
