"""The trainer's pure pieces, without Spark: schedule, optimizer groups, data order, metrics, checkpoints."""

from __future__ import annotations

import json
import logging
import math
import platform

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from spark_jobs.common.config import TrainingConfig
from spark_jobs.common.errors import InputError, TrainingError
from spark_jobs.data.loader import batch_order, load_windows
from spark_jobs.data.window_chunks import write_stream_split
from spark_jobs.reporting.train_metrics import (
    MetricsWriter,
    bits_per_char,
    gradient_stats,
    read_steps,
    write_run_summary,
)
from spark_jobs.training import checkpoints
from spark_jobs.training.optim import learning_rate_at, make_optimizer, set_learning_rate


def test_learning_rate_warms_up_then_decays_to_the_minimum():
    cfg = TrainingConfig(learning_rate=1e-2, min_learning_rate=1e-3, warmup_steps=10)
    lrs = [learning_rate_at(step, cfg, total_steps=100) for step in range(101)]
    assert lrs[0] == pytest.approx(1e-2 / 11)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))
    assert lrs[10] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))
    assert lrs[100] == pytest.approx(1e-3)
    constant = TrainingConfig(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant")
    assert {learning_rate_at(s, constant, 100) for s in range(100)} == {1e-2}


def test_optimizer_does_not_decay_biases_norms_or_embeddings():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    optimizer = make_optimizer(model, TrainingConfig(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]  # only the Linear weight
    assert len(no_decay["params"]) == 4  # embedding, linear bias, norm weight and bias
    assert isinstance(optimizer, torch.optim.AdamW)
    set_learning_rate(optimizer, 0.5)
    assert {g["lr"] for g in optimizer.param_groups} == {0.5}


def test_batch_order_is_seeded_per_epoch_and_drops_the_partial_batch():
    first = batch_order(103, 10, epoch=0, seed=1)
    assert len(first) == 10 and all(len(b) == 10 for b in first)
    assert len(set(torch.cat(first).tolist())) == 100
    assert all(torch.equal(a, b) for a, b in zip(first, batch_order(103, 10, epoch=0, seed=1), strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(batch_order(103, 10, epoch=1, seed=1)))
    assert torch.equal(torch.cat(batch_order(25, 5, 0, 1, shuffle=False)), torch.arange(25))


def test_shards_are_contiguous_ranges_of_the_windows_in_a_stable_order(run_root):
    window_dir = str(run_root / "runs" / "base" / "window")
    everything = load_windows(window_dir, "train")[:]
    assert everything.dtype == torch.int64 and everything.shape[1] == 17
    # consecutive windows overlap by W+1-stride tokens: the rows come back in stream order
    assert torch.equal(everything[1:, : 17 - 4], everything[:-1, 4:])
    shards = [load_windows(window_dir, "train", shard=r, num_shards=2) for r in range(2)]
    n = len(everything) // 2
    assert len(shards[0]) == len(shards[1]) == n
    assert torch.equal(shards[0][:], everything[:n]) and torch.equal(shards[1][:], everything[n : 2 * n])
    # a batch of rows is those windows, whatever the index type; columns can be cut too
    rows = torch.tensor([5, 0, 3])
    assert torch.equal(shards[1][rows], everything[[n + 5, n, n + 3]])
    assert torch.equal(shards[1][rows.numpy()], everything[[n + 5, n, n + 3]])
    assert torch.equal(shards[1][:, 2:5], everything[n : 2 * n, 2:5])


def test_a_shard_reads_only_its_own_chunks_and_keeps_only_its_tokens(tmp_path):
    window, stride = 8, 3
    stream = np.arange(4_000, dtype=np.int32) % 997
    total = write_stream_split(str(tmp_path / "train"), stream, 0, window, stride, files=4)
    everything = load_windows(str(tmp_path), "train")
    shards = [load_windows(str(tmp_path), "train", r, 4) for r in range(4)]
    n = total // 4
    for r, shard in enumerate(shards):
        assert torch.equal(shard[:], everything[r * n : (r + 1) * n])
        # its tokens, no more (plus a chunk boundary's overlap, read by both chunks' windows)
        assert (n - 1) * stride + window + 1 <= len(shard.stream) <= n * stride + 2 * window + 2
    # spoil the last chunk's tokens (its runs still say what it holds): only its reader fails
    files = sorted((tmp_path / "train").glob("*.parquet"))
    last = files[0]  # write_stream_split names files in reverse stream order
    table = pq.read_table(last)
    ids = pa.array([table.column("ids")[0].values.to_numpy()[:-1]], pa.list_(pa.int32()))
    pq.write_table(table.set_column(table.schema.get_field_index("ids"), "ids", ids), last)
    for r in range(3):
        assert torch.equal(load_windows(str(tmp_path), "train", r, 4)[:], shards[r][:])
    with pytest.raises(InputError, match=rf"{last.name}: part 3 holds"):
        load_windows(str(tmp_path), "train", 3, 4)


def test_bits_per_char_converts_nats_per_token():
    assert bits_per_char(math.log(2) * 3, chars_per_token=1.5) == pytest.approx(2.0)


def test_gradient_stats_report_global_and_per_layer_norms_and_a_histogram():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    model(torch.ones(4, 3)).sum().backward()
    stats = gradient_stats(model, histogram=True, bins=5)
    assert set(stats["layer_grad_norms"]) == {"0", "1"}
    total = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    assert stats["grad_norm"] == pytest.approx(total)
    assert sum(stats["grad_histogram"]["counts"]) == sum(p.numel() for p in model.parameters())
    assert len(stats["grad_histogram"]["edges"]) == 6
    assert "grad_histogram" not in gradient_stats(model, histogram=False)


def test_metrics_writer_keeps_records_up_to_the_resumed_step(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (5, 10, 15):
        writer.log_step({"kind": "train", "step": step, "loss": 1.0 / step})
    writer.log_epoch({"epoch": 0, "step": 15, "train_loss": 0.5})
    assert [r["step"] for r in read_steps(str(tmp_path))] == [5, 10, 15]
    resumed = MetricsWriter(str(tmp_path), resume_step=10)
    resumed.log_step({"kind": "train", "step": 15, "loss": 0.2})
    resumed.flush()
    write_run_summary(str(tmp_path), {"steps": 15})
    assert [(r["step"], r["loss"]) for r in read_steps(str(tmp_path))] == [(5, 0.2), (10, 0.1), (15, 0.2)]
    assert (tmp_path / "epochs.csv").read_text().splitlines()[1:] == []  # the header only
    assert json.loads((tmp_path / "summary.json").read_text()) == {"steps": 15}
    MetricsWriter(str(tmp_path))  # a fresh start clears the old records
    assert read_steps(str(tmp_path)) == []


def _trained_pair(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()
    return model, optimizer


def test_checkpoint_round_trips_model_optimizer_rng_and_state(tmp_path):
    model, optimizer = _trained_pair()
    uri = checkpoints.save_checkpoint(
        str(tmp_path), 7, model.state_dict(), optimizer, {"position": {"epoch": 1}}, 3
    )
    expected_rng = torch.get_rng_state()
    checkpoint = checkpoints.load_latest(str(tmp_path))
    assert checkpoint.uri == uri and checkpoint.step == 7 and checkpoint.state["position"] == {"epoch": 1}
    assert torch.equal(checkpoint.rng_state, expected_rng)
    fresh_model, fresh_optimizer = _trained_pair(seed=1)
    fresh_model.load_state_dict(checkpoint.model_state)
    checkpoint.restore_optimizer(fresh_optimizer)
    assert torch.equal(fresh_model.weight, model.weight)
    a, b = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for index, entries in a["state"].items():
        assert all(torch.equal(v, b["state"][index][k]) for k, v in entries.items())
    assert sorted(p.name for p in (tmp_path / "step-7").iterdir()) == [
        "_SUCCESS", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json",
    ]  # fmt: skip


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, optimizer = _trained_pair()
    for step in (2, 4, 6, 8):
        checkpoints.save_checkpoint(str(tmp_path), step, model.state_dict(), optimizer, {}, keep=2)
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path))] == [6, 8]


def test_a_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, caplog):
    model, optimizer = _trained_pair()
    for step in (2, 4):
        checkpoints.save_checkpoint(str(tmp_path), step, model.state_dict(), optimizer, {}, keep=3)
    weights = tmp_path / "step-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])  # truncated, as by a crash mid-copy
    with caplog.at_level(logging.WARNING, logger="spark_jobs.training.checkpoints"):
        checkpoint = checkpoints.load_latest(str(tmp_path))
    assert checkpoint.step == 2
    assert "step-4 is unusable" in caplog.text and "checksum mismatch" in caplog.text

    (tmp_path / "step-2" / "state.json").write_text("{not json")
    with pytest.raises(
        TrainingError, match=r"no valid checkpoint in .*step-4.*checksum.*state.json: not valid JSON"
    ):
        checkpoints.load_latest(str(tmp_path))


def test_a_checkpoint_without_its_marker_is_ignored(tmp_path):
    model, optimizer = _trained_pair()
    checkpoints.save_checkpoint(str(tmp_path), 2, model.state_dict(), optimizer, {}, keep=3)
    checkpoints.save_checkpoint(str(tmp_path), 4, model.state_dict(), optimizer, {}, keep=3)
    (tmp_path / "step-4" / "_SUCCESS").unlink()
    assert checkpoints.load_latest(str(tmp_path)).step == 2
    assert checkpoints.load_latest(str(tmp_path / "none")) is None


def test_early_stop_after_patience_evaluations_without_improvement():
    from spark_jobs.training.state import Position, should_stop_early

    pos = Position()
    assert [should_stop_early(pos, loss, patience=2) for loss in (3.0, 2.0, 2.5, 2.1)] == [
        False,
        False,
        False,
        True,
    ]
    assert pos.best_val_loss == 2.0
    assert not any(should_stop_early(Position(), loss, patience=None) for loss in (1.0, 2.0, 3.0))


def test_every_configured_strategy_is_registered():
    from spark_jobs.common.config import STRATEGY_NAMES
    from spark_jobs.training.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES  # a new training.strategy value needs its function


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_a_training_process_keeps_the_memory_a_step_frees():
    """After keep_freed_memory, a freed 64 MB buffer (a step's gradients) stays with the process
    for the next step; glibc's default would hand it back to the kernel (munmap or heap trim)."""
    from spark_jobs.training.loop import keep_freed_memory

    assert keep_freed_memory()
    process = psutil.Process()
    buffers = [torch.ones(4 << 20) for _ in range(4)]  # 4 x 16 MB, touched
    peak = process.memory_info().rss
    del buffers
    assert process.memory_info().rss > peak - (8 << 20)


def test_a_training_process_flushes_subnormal_floats_to_zero():
    from spark_jobs.training.loop import prepare_cpu_for_training

    prepare_cpu_for_training()
    assert float(torch.tensor([1e-39]) * 1.0) == 0.0  # a subnormal float32, slow on x86 unless flushed
    assert float(torch.tensor([1e-37]) * 1.0) > 0.0  # normal floats are untouched
