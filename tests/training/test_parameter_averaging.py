"""Parameter averaging: the averaging arithmetic (no Spark), then real rounds on local Spark.

The Spark tests train tiny models (window 16, embedding 32) on byte-level windows of the
small corpus, written straight to Parquet in the window step's format.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spark_jobs.common.config import PipelineConfig
from spark_jobs.common.errors import InputError, TrainingError
from spark_jobs.data.loader import count_windows
from spark_jobs.data.window_chunks import write_stream_split
from spark_jobs.training import averaging, checkpoints
from spark_jobs.training.inputs import TrainInputs
from spark_jobs.training.strategies import parameter_averaging, single

WINDOW = 16
EMBEDDING = 32
VOCAB = 256  # byte ids: no tokenizer needed to make windows


# --- the averaging arithmetic ---------------------------------------------------------------


def test_average_of_identical_states_is_that_state() -> None:
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([0.5, -1.0], dtype=np.float32)}
    averaged = averaging.average_arrays([state, state, state])
    for key, value in state.items():
        np.testing.assert_array_equal(averaged[key], value)
        assert averaged[key].dtype == value.dtype


def test_average_of_two_states_is_their_mean() -> None:
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)}
    b = {"w": np.array([[3.0, 2.0], [1.0, 0.0]], dtype=np.float32)}
    np.testing.assert_allclose(averaging.average_arrays([a, b])["w"], [[2.0, 2.0], [2.0, 2.0]])
    # weighted: 3:1 toward a
    np.testing.assert_allclose(
        averaging.average_arrays([a, b], weights=[3, 1])["w"], [[1.5, 2.0], [2.5, 3.0]]
    )


def test_average_rejects_mismatched_workers() -> None:
    with pytest.raises(ValueError, match="different keys"):
        averaging.average_arrays([{"w": np.zeros(2)}, {"v": np.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        averaging.average_arrays([{"w": np.zeros(2)}, {"w": np.zeros(3)}])
    with pytest.raises(ValueError, match="nothing to average"):
        averaging.average_arrays([])


def _adam_after_steps(seed: int, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, foreach=False)
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


def test_optimizer_states_average_moments_and_keep_step_counters() -> None:
    _, opt_a = _adam_after_steps(seed=1, steps=3)
    _, opt_b = _adam_after_steps(seed=2, steps=3)
    a, b = averaging.optimizer_arrays(opt_a), averaging.optimizer_arrays(opt_b)
    assert set(a) == {f"{i}/{f}" for i in (0, 1) for f in ("step", "exp_avg", "exp_avg_sq")}
    averaged = averaging.average_arrays([a, b])
    np.testing.assert_allclose(averaged["0/exp_avg"], (a["0/exp_avg"] + b["0/exp_avg"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(
        averaged["1/exp_avg_sq"], (a["1/exp_avg_sq"] + b["1/exp_avg_sq"]) / 2, rtol=1e-6
    )
    assert float(averaged["0/step"]) == 3.0  # a count, not averaged

    # counters that differ keep the largest (a worker never runs fewer steps in practice)
    _, opt_c = _adam_after_steps(seed=3, steps=5)
    assert float(averaging.average_arrays([a, averaging.optimizer_arrays(opt_c)])["1/step"]) == 5.0

    # loaded back, the optimizer continues from the averaged state
    model, opt = _adam_after_steps(seed=4, steps=1)
    averaging.load_optimizer_arrays(opt, averaged)
    state = opt.state_dict()["state"]
    assert float(state[0]["step"]) == 3.0
    np.testing.assert_array_equal(state[0]["exp_avg"].numpy(), averaged["0/exp_avg"])
    assert opt.param_groups[0]["lr"] == 0.1


def test_pack_round_trips_parameters_optimizer_state_and_info() -> None:
    model, optimizer = _adam_after_steps(seed=5, steps=2)
    params, opt_state = averaging.model_arrays(model), averaging.optimizer_arrays(optimizer)
    blob = averaging.pack(params, opt_state, start_step=7, losses=[1.5, 1.25])
    got_params, got_opt, info = averaging.unpack(blob)
    assert info == {"start_step": 7, "losses": [1.5, 1.25]}
    for key in params:
        np.testing.assert_array_equal(got_params[key], params[key])
    for key in opt_state:
        np.testing.assert_array_equal(got_opt[key], opt_state[key])
    assert averaging.unpack(averaging.pack(params))[1] == {}

    fresh = torch.nn.Linear(3, 2)
    averaging.load_model_arrays(fresh, got_params)
    torch.testing.assert_close(fresh.weight, model.weight)
    with pytest.raises(ValueError, match="parameter names differ"):
        averaging.load_model_arrays(fresh, {"weight": got_params["weight"]})


def test_tied_weights_are_shipped_once() -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(5, 4)
            self.head = torch.nn.Linear(4, 5, bias=False)
            self.head.weight = self.emb.weight
            self.frozen = torch.nn.Parameter(torch.ones(3), requires_grad=False)

    model = Tied()
    arrays = averaging.model_arrays(model)
    assert set(arrays) == {"emb.weight"}  # tied once, frozen not at all
    arrays["emb.weight"][:] = 2.0
    averaging.load_model_arrays(model, arrays)
    assert float(model.head.weight.detach().sum()) == 2.0 * 20


# --- real rounds on local Spark ----------------------------------------------------------------


@pytest.fixture(scope="module")
def window_dir(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    """window/train and window/val Parquet of byte ids (stride 4), val = the last 10 %."""
    ids = np.frombuffer(small_corpus.read_bytes(), dtype=np.uint8).astype(np.int32)
    split = int(len(ids) * 0.9)
    root = tmp_path_factory.mktemp("pa-run") / "window"
    for name, stream, offset in (("train", ids[:split], 0), ("val", ids[split:], split)):
        write_stream_split(str(root / name), stream, offset, WINDOW, 4, files=2)  # two files, as Spark would
    (root / "_SUCCESS").write_text("")
    return root


def _config(kind: str, tmp: Path, **training: object) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "model": {
                "kind": kind,
                "window_size": WINDOW,
                "embedding_size": EMBEDDING,
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
            },
            "training": {
                "strategy": "parameter_averaging",
                "batch_size": 16,
                "learning_rate": 3e-3,
                "warmup_steps": 2,
                "eval_interval": 1000,
                "eval_batches": 4,
                "log_interval": 5,
                "histogram_interval": 10,
                "checkpoint_interval": 1000,
                **training,
            },
            "run": {"root": str(tmp), "id": "pa-test"},
        }
    )


def _inputs(window_dir: Path, run: Path, kind: str) -> TrainInputs:
    num = {s: count_windows(str(window_dir), s) for s in ("train", "val")}
    embeddings = (
        torch.randn(VOCAB, EMBEDDING, generator=torch.Generator().manual_seed(3)) if kind == "mlp" else None
    )
    return TrainInputs(
        run_uri=str(run),
        window_dir=str(window_dir),
        checkpoint_dir=str(run / "checkpoints"),
        metrics_dir=str(run / "metrics"),
        scratch_dir=str(run / "scratch"),
        vocab_size=VOCAB,
        embeddings=embeddings,
        chars_per_token=1.0,
        num_train_windows=num["train"],
        num_val_windows=num["val"],
    )


@pytest.mark.parametrize("kind", ["gpt", "mlp"])
def test_loss_goes_down_with_two_workers(spark, window_dir: Path, tmp_path: Path, kind: str) -> None:
    config = _config(kind, tmp_path, num_workers=2, averaging_frequency=5, max_steps=30)
    result = parameter_averaging.train(config, _inputs(window_dir, tmp_path, kind), resume=False)

    assert result["steps"] == 30 and result["rounds"] == 6 and result["world_size"] == 2
    # MSE toward random embeddings falls slowly: ask less of the mlp than of the gpt
    assert result["val_loss"] < (0.9 if kind == "gpt" else 0.97) * result["first_val_loss"], result
    assert math.isfinite(result["train_loss"]) and result["tokens_per_s"] > 0
    assert result["round_overhead_s"] > 0.0

    steps = [json.loads(line) for line in (tmp_path / "metrics" / "steps.jsonl").read_text().splitlines()]
    train_steps = [r for r in steps if r["kind"] == "train"]
    assert [r["step"] for r in train_steps] == list(range(5, 31, 5))
    assert train_steps[-1]["loss"] < train_steps[0]["loss"]
    assert len(train_steps[0]["worker_s"]) == 2 and "layer_grad_norms" in train_steps[0]
    assert "grad_histogram" in train_steps[1]  # step 10: histogram_interval
    assert (tmp_path / "metrics" / "epochs.csv").read_text().count("\n") == 2  # header + 1 epoch row
    final = checkpoints.load_latest(str(tmp_path / "checkpoints"))
    assert final is not None and final.step == 30 and final.state["strategy"] == "parameter_averaging"


def test_one_worker_frequency_one_matches_single(spark, window_dir: Path, tmp_path: Path) -> None:
    overrides = dict(num_workers=1, averaging_frequency=1, max_steps=6, eval_interval=3)
    averaged_run, single_run = tmp_path / "pa", tmp_path / "single"
    pa_result = parameter_averaging.train(
        _config("gpt", averaged_run, **overrides), _inputs(window_dir, averaged_run, "gpt"), resume=False
    )
    single_config = _config("gpt", single_run, **overrides)
    single_config.training.strategy = "single"
    single_result = single.train(single_config, _inputs(window_dir, single_run, "gpt"), resume=False)

    assert pa_result["steps"] == single_result["steps"] == 6
    assert pa_result["first_val_loss"] == pytest.approx(single_result["first_val_loss"], abs=1e-6)
    assert pa_result["val_loss"] == pytest.approx(single_result["val_loss"], rel=1e-4)
    assert pa_result["train_loss"] == pytest.approx(single_result["train_loss"], rel=1e-4)
    pa_weights = checkpoints.load_latest(str(averaged_run / "checkpoints")).model_state
    single_weights = checkpoints.load_latest(str(single_run / "checkpoints")).model_state
    for name, tensor in single_weights.items():
        torch.testing.assert_close(pa_weights[name], tensor, rtol=1e-4, atol=1e-5)


def test_interrupted_run_resumes_to_the_same_model(spark, window_dir: Path, tmp_path: Path) -> None:
    overrides = dict(num_workers=2, averaging_frequency=4, max_steps=8, checkpoint_interval=4)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    expected = parameter_averaging.train(
        _config("gpt", whole, **overrides), _inputs(window_dir, whole, "gpt"), False
    )

    # a NaN at step 6 stops the run; the checkpoint at step 4 is the last good one
    with pytest.raises(TrainingError, match=r"step 6; last good checkpoint: .*step-4"):
        parameter_averaging.train(
            _config("gpt", broken, debug_nan_at_step=6, **overrides),
            _inputs(window_dir, broken, "gpt"),
            False,
        )
    resumed = parameter_averaging.train(
        _config("gpt", broken, **overrides), _inputs(window_dir, broken, "gpt"), True
    )

    assert resumed["steps"] == 8
    assert resumed["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    a = checkpoints.load_latest(str(whole / "checkpoints")).model_state
    b = checkpoints.load_latest(str(broken / "checkpoints")).model_state
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6)


def test_spark_metrics_describe_the_rounds(spark, window_dir: Path, tmp_path: Path) -> None:
    config = _config("mlp", tmp_path, num_workers=2, averaging_frequency=4, max_steps=12)
    result = parameter_averaging.train(config, _inputs(window_dir, tmp_path, "mlp"), resume=False)
    figures = result["spark_metrics"]  # the train step writes them to metrics/spark.json

    assert figures["source"] == "status_store" and figures["job_group"].startswith("train-pa-test-")
    assert figures["jobs"]["count"] == result["rounds"] == 3
    assert figures["tasks"]["count"] == 3 * 2 and figures["tasks"]["failed"] == 0
    assert figures["tasks"]["executor_run_time_ms"] > 0
    assert (
        figures["task_distribution"]["duration_ms"]["max"]
        >= figures["task_distribution"]["duration_ms"]["min"]
        > 0
    )
    shard = _inputs(window_dir, tmp_path, "mlp").num_train_windows // 2
    assert figures["partitions"]["rows"] == [shard, shard] and figures["partitions"]["skew"] == 1.0
    assert figures["executors"][0]["storage_memory_max_bytes"] > 0


def test_too_few_windows_per_worker_is_a_one_line_error(window_dir: Path, tmp_path: Path) -> None:
    inputs = _inputs(window_dir, tmp_path, "gpt")
    config = _config("gpt", tmp_path, num_workers=2, batch_size=inputs.num_train_windows)
    with pytest.raises(InputError, match=r"windows per worker, fewer than training.batch_size"):
        parameter_averaging.train(config, inputs, resume=False)
    inputs.num_train_windows = 1
    with pytest.raises(InputError, match=r"1 windows for training.num_workers=2"):
        parameter_averaging.train(_config("gpt", tmp_path, num_workers=2), inputs, resume=False)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_workers_k_steps_equal_an_in_process_average(
    spark, window_dir: Path, tmp_path: Path, optimizer: str
) -> None:
    """DL4J's semantics: from the same weights, each worker trains K minibatches on its shard; then
    weights and the optimizer's state (Adam's moments; Muon's momentum) are averaged. Reproduced
    here with two model copies in this process."""
    from spark_jobs.data.loader import batch_order, load_windows
    from spark_jobs.models import build_model
    from spark_jobs.training.optim import learning_rate_at, make_optimizer, set_learning_rate

    k = 3
    config = _config(
        "gpt",
        tmp_path,
        num_workers=2,
        averaging_frequency=k,
        max_steps=k,
        log_interval=k,
        optimizer=optimizer,
    )
    result = parameter_averaging.train(config, _inputs(window_dir, tmp_path, "gpt"), resume=False)
    assert result["rounds"] == 1
    cfg = config.training

    copies = []
    for shard in range(2):
        torch.manual_seed(cfg.seed)  # the run's initial weights
        model = build_model(config.model, VOCAB)
        optimizer = make_optimizer(model, cfg)
        windows = load_windows(str(window_dir), "train", shard, 2)
        order = batch_order(len(windows), cfg.batch_size, 0, cfg.seed, cfg.shuffle)
        for step in range(k):
            set_learning_rate(optimizer, learning_rate_at(step, cfg, k))
            loss = model(windows[order[step]]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        copies.append((model, optimizer))

    final = checkpoints.load_latest(str(tmp_path / "checkpoints"))
    expected = averaging.average_arrays([averaging.model_arrays(m) for m, _ in copies])
    averaged_model = build_model(config.model, VOCAB)
    averaged_model.load_state_dict(final.model_state)
    got = averaging.model_arrays(averaged_model)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)
    expected_state = averaging.average_arrays([averaging.optimizer_arrays(o) for _, o in copies])
    optimizer = make_optimizer(averaged_model, cfg)
    final.restore_optimizer(optimizer)
    got_state = averaging.optimizer_arrays(optimizer)
    assert set(got_state) == set(expected_state)
    assert any(name.endswith("/momentum_buffer") for name in got_state) == (cfg.optimizer == "muon")
    for name, value in expected_state.items():
        np.testing.assert_allclose(got_state[name], value, rtol=1e-5, atol=1e-7)
    # each worker's memory and CPU, measured in the worker (the driver's are labelled as such)
    records = [json.loads(line) for line in (tmp_path / "metrics" / "steps.jsonl").read_text().splitlines()]
    (train,) = [r for r in records if r["kind"] == "train"]
    assert len(train["worker_rss_mb"]) == 2 and min(train["worker_rss_mb"]) > 50
    assert train["rss_mb"] == max(train["worker_rss_mb"]) and train["driver_rss_mb"] > 50
    assert len(train["worker_cpu_percent"]) == 2


def test_allreduce_rounds_give_the_spark_rounds_model(spark, window_dir: Path, tmp_path: Path) -> None:
    """The same rounds by all-reduce among ranks (the default) and by one Spark job each: the
    same steps and rounds, the same weights up to the order of floating-point sums."""
    from spark_jobs.training.strategies import STRATEGIES

    overrides = dict(num_workers=2, averaging_frequency=4, max_steps=8)  # Adam's moments averaged too
    by_spark, by_allreduce = tmp_path / "spark", tmp_path / "allreduce"
    expected = parameter_averaging.train(
        _config("gpt", by_spark, averaging_via="spark", **overrides),
        _inputs(window_dir, by_spark, "gpt"),
        False,
    )
    config = _config("gpt", by_allreduce, **overrides)
    assert config.training.averaging_via == "allreduce"
    got = STRATEGIES["parameter_averaging"](config, _inputs(window_dir, by_allreduce, "gpt"), False)

    assert got["steps"] == expected["steps"] == 8 and got["rounds"] == expected["rounds"] == 2
    assert got["world_size"] == 2 and got["round_overhead_s"] >= 0.0
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-4)
    a = checkpoints.load_latest(str(by_spark / "checkpoints")).model_state
    b = checkpoints.load_latest(str(by_allreduce / "checkpoints")).model_state
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    steps = [json.loads(line) for line in (by_allreduce / "metrics" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "train"] == [5]  # log_interval 5
    assert all(r["averaging_s"] >= 0.0 for r in steps if r["kind"] == "train")
