"""`ddp`: TorchDistributor ranks on local Spark (gloo on loopback)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from spark_jobs.common.errors import TrainingError
from spark_jobs.data.loader import batch_order, load_windows
from spark_jobs.models import build_model
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train
from spark_jobs.training.optim import learning_rate_at, make_optimizer, set_learning_rate


def _losses(metrics_dir) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_steps(str(metrics_dir)) if r["kind"] == "train"]


def reference_losses(config, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """DDP by hand in this process: step k takes the mean loss of rank 0's batch k (from its shard)
    and rank 1's batch k, i.e. the gradients DDP averages. (losses, final weights)."""
    cfg = config.training
    inputs = train.resolve_inputs(config)
    torch.manual_seed(cfg.seed)  # the run's initial weights
    model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
    optimizer = make_optimizer(model, cfg)
    shards = [load_windows(inputs.window_dir, "train", rank, 2) for rank in range(2)]
    orders = [batch_order(len(shard), cfg.batch_size, 0, cfg.seed, cfg.shuffle) for shard in shards]
    losses = []
    for step in range(steps):
        set_learning_rate(optimizer, learning_rate_at(step, cfg, steps))
        loss = sum(model(shard[order[step]]).loss for shard, order in zip(shards, orders, strict=True)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def test_two_ranks_train_like_one_process_on_both_ranks_batches_and_learn(spark, new_run, tiny_config):
    root, ddp_id = new_run()
    config = tiny_config(
        root, ddp_id, "training.max_steps=20", "training.log_interval=1", "training.checkpoint_interval=10",
        "training.batch_size=8", "training.strategy=ddp",
    )  # fmt: skip
    ddp = train.run(config)

    assert ddp["strategy"] == "ddp" and ddp["num_workers"] == 2 and ddp["steps"] == 20
    expected_losses, expected_weights = reference_losses(config, 20)
    ddp_losses = _losses(root / "runs" / ddp_id / "metrics")
    assert [s for s, _ in ddp_losses] == list(range(1, 21))
    assert [loss for _, loss in ddp_losses] == pytest.approx(expected_losses, abs=1e-4)
    got = load_file(root / "runs" / ddp_id / "train" / "model" / "model.safetensors")
    assert got and set(got) <= set(expected_weights)  # tied tables are saved once
    assert all(torch.allclose(got[k], expected_weights[k], atol=1e-4) for k in got)
    assert ddp["val_loss"] < ddp["first_val_loss"] - 0.8  # and it learns
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
