"""training.ema_decay: the model training returns is the weights' exponential moving average."""

from __future__ import annotations

import pytest
import torch

from spark_jobs.common.config import ModelConfig
from spark_jobs.common.errors import TrainingError
from spark_jobs.models import build_model
from spark_jobs.models.artifact import load_model
from spark_jobs.steps import train
from spark_jobs.training import checkpoints
from spark_jobs.training.weight_average import UPDATE_EVERY, WeightAverage, load_average_into


def test_the_average_catches_up_every_few_steps():
    model = torch.nn.Linear(3, 2)
    start = model.weight.detach().clone()
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for step in range(1, UPDATE_EVERY):  # too soon: the average waits
        average.follow(step)
        torch.testing.assert_close(average.state_dict()["weight"], start)
    average.follow(UPDATE_EVERY)  # caught up: as UPDATE_EVERY single-step updates towards 1.0
    expected = 0.9**UPDATE_EVERY * start + (1 - 0.9**UPDATE_EVERY) * 1.0
    torch.testing.assert_close(average.state_dict()["weight"], expected)
    assert average.step == UPDATE_EVERY
    # a parameter-averaging round of 7 steps at once: decay**7
    with torch.no_grad():
        model.weight.fill_(-2.0)
    average.follow(UPDATE_EVERY + 7)
    torch.testing.assert_close(average.state_dict()["weight"], 0.9**7 * expected + (1 - 0.9**7) * -2.0)
    assert not torch.equal(model.weight, average.state_dict()["weight"])  # a copy, not the weights


def test_a_tied_table_is_averaged_once_and_loads_back_tied():
    cfg = ModelConfig(kind="gpt", window_size=8, embedding_size=16, num_heads=2, num_layers=1)
    model = build_model(cfg, 40)
    average = WeightAverage(model, decay=0.5)
    assert "transformer.wte.weight" in average.names and "lm_head.weight" not in average.names
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.follow(UPDATE_EVERY)
    other = build_model(cfg, 40)
    load_average_into(other, average.state_dict(), "test")
    assert other.transformer.wte.weight is other.lm_head.weight
    torch.testing.assert_close(other.lm_head.weight, average.state_dict()["transformer.wte.weight"])
    with pytest.raises(TrainingError, match="step-9: its weight average holds"):
        load_average_into(
            build_model(cfg.model_copy(update={"num_layers": 2}), 40), average.state_dict(), "step-9"
        )


def test_the_trained_model_is_the_average(new_run, tiny_config):
    root, run_id = new_run()
    summary = train.run(tiny_config(root, run_id, "training.max_steps=12", "training.checkpoint_interval=6",
                                    "training.ema_decay=0.8"))  # fmt: skip
    assert summary["ema_decay"] == 0.8
    final = checkpoints.load_latest(str(root / "runs" / run_id / "checkpoints"))
    model, _, _ = load_model(str(root / "runs" / run_id / "train" / "model"))
    saved = dict(model.named_parameters())
    for name, tensor in final.average.items():
        assert torch.equal(saved[name], tensor), name
    # the average is not the last step's weights, and it learnt
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(saved[name], final.model_state[name])
    assert summary["val_loss"] < summary["first_val_loss"]
    report = (root / "runs" / run_id / "metrics" / "report.md").read_text()
    assert "The model is the moving average of the weights (training.ema_decay=0.8)" in report


def test_resuming_under_another_ema_decay_is_refused(new_run, tiny_config):
    root, run_id = new_run()
    train.run(tiny_config(root, run_id, "training.checkpoint_interval=4", "training.max_steps=4"))
    with pytest.raises(
        TrainingError,
        match=r"step-4 was written with training.ema_decay=None, not the configured 0.9; delete .*checkpoints",
    ):
        train.run(tiny_config(root, run_id, "training.checkpoint_interval=4", "training.max_steps=8",
                              "training.ema_decay=0.9"))  # fmt: skip
