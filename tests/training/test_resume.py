"""Resume is one mechanism under every strategy: exact after a crash (dropout on, the weights'
moving average kept), refused after a model change."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from spark_jobs.common.config import STRATEGY_NAMES
from spark_jobs.common.errors import TrainingError
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train
from spark_jobs.training import checkpoints


def _common(strategy: str) -> tuple[str, ...]:
    return (
        f"training.strategy={strategy}",
        "model.dropout=0.2",  # without the RNG restored on resume, the dropout masks would differ
        "training.batch_size=8",
        "training.max_steps=12",
        "training.checkpoint_interval=4",
        "training.averaging_frequency=2",
        "training.log_interval=1",
        # the model file is then the weights' moving average, which must resume exactly too
        "training.ema_decay=0.7",
        "model.rotary=true",
    )


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_a_crashed_run_resumes_exactly_with_dropout(spark, new_run, tiny_config, strategy):
    root, straight_id = new_run()
    straight = train.run(tiny_config(root, straight_id, *_common(strategy)))

    _, crashed_id = new_run()
    with pytest.raises(TrainingError, match=r"loss is nan at step 7; last good checkpoint: .*step-4$"):
        train.run(tiny_config(root, crashed_id, *_common(strategy), "training.debug_nan_at_step=7"))
    resumed = train.run(tiny_config(root, crashed_id, *_common(strategy)))  # the retry resumes at step 4

    for key in ("steps", "train_loss", "val_loss", "first_val_loss", "val_accuracy"):
        assert resumed[key] == straight[key], key
    a = load_file(root / "runs" / straight_id / "train" / "model" / "model.safetensors")
    b = load_file(root / "runs" / crashed_id / "train" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [
            (r["step"], r["loss"])
            for r in read_steps(str(root / "runs" / i / "metrics"))
            if r["kind"] == "train"
        ]
        for i in (straight_id, crashed_id)
    ]
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == list(range(1, 13))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_resuming_with_a_different_model_is_refused(spark, new_run, tiny_config, strategy):
    root, run_id = new_run()
    common = (f"training.strategy={strategy}", "training.batch_size=8", "training.checkpoint_interval=4")
    train.run(tiny_config(root, run_id, *common, "training.max_steps=4"))
    state = checkpoints.load_latest(str(root / "runs" / run_id / "checkpoints")).state
    assert state["strategy"] == strategy and state["model"]["hidden_size"] == 64
    with pytest.raises(
        TrainingError, match=r"step-4 was written for model .*; delete .*checkpoints or use another run.id"
    ):
        train.run(tiny_config(root, run_id, *common, "training.max_steps=8", "model.hidden_size=32"))


def test_a_checkpoint_of_one_strategy_resumes_under_another(spark, new_run, tiny_config):
    root, run_id = new_run()
    common = ("training.batch_size=8", "training.checkpoint_interval=4", "training.log_interval=1")
    first = train.run(
        tiny_config(root, run_id, *common, "training.strategy=parameter_averaging", "training.max_steps=4")
    )
    summary = train.run(
        tiny_config(root, run_id, *common, "training.strategy=single", "training.max_steps=8")
    )
    assert summary["steps"] == 8 and summary["strategy"] == "single"
    assert summary["first_val_loss"] == first["first_val_loss"]  # the same run, continued
    steps = [r["step"] for r in read_steps(str(root / "runs" / run_id / "metrics")) if r["kind"] == "train"]
    assert steps == list(range(1, 9))  # averaging's records up to step 4, then single's
