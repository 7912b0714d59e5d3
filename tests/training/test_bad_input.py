"""Bad input to the train step: one clear error each, and nothing marked complete."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.common.config import load_config
from spark_jobs.common.errors import ConfigError, InputError, TrainingError
from spark_jobs.data.window_chunks import write_stream_split
from spark_jobs.steps import train


def _assert_nothing_committed(root, run_id):
    assert not (root / "runs" / run_id / "train" / "_SUCCESS").exists()
    assert not (root / "runs" / run_id / "metrics" / "_SUCCESS").exists()


def test_missing_windows(new_run, tiny_config):
    root, run_id = new_run()
    shutil.rmtree(root / "runs" / run_id / "window")
    with pytest.raises(InputError, match=r"window output not found: .*/window \(run the window step first\)"):
        train.run(tiny_config(root, run_id))
    _assert_nothing_committed(root, run_id)


def test_windows_without_success_marker(new_run, tiny_config):
    root, run_id = new_run()
    (root / "runs" / run_id / "window" / "_SUCCESS").unlink()
    with pytest.raises(InputError, match=r"window output at .* has no _SUCCESS marker"):
        train.run(tiny_config(root, run_id))
    _assert_nothing_committed(root, run_id)


def test_window_size_disagreeing_with_the_data(new_run, tiny_config):
    root, run_id = new_run()
    with pytest.raises(
        InputError, match=r"model.window_size is 32 but the windows in .* have window_size 16"
    ):
        train.run(tiny_config(root, run_id, "model.window_size=32"))


def test_embedding_size_disagreeing_with_the_data(new_run, tiny_config):
    root, run_id = new_run()
    with pytest.raises(
        InputError, match=r"model.embedding_size is 64 but .*embeddings.safetensors has .* size 32"
    ):
        train.run(tiny_config(root, run_id, "model.kind=mlp", "model.embedding_size=64"))


def test_nan_loss_stops_naming_the_step_and_the_last_good_checkpoint(new_run, tiny_config):
    root, run_id = new_run()
    config = tiny_config(root, run_id, "training.checkpoint_interval=4", "training.debug_nan_at_step=6")
    with pytest.raises(
        TrainingError, match=r"^loss is nan at step 6; last good checkpoint: .*/checkpoints/step-4$"
    ):
        train.run(config)
    _assert_nothing_committed(root, run_id)
    _, other = new_run()
    with pytest.raises(TrainingError, match=r"at step 2; last good checkpoint: none"):
        train.run(tiny_config(root, other, "training.debug_nan_at_step=2"))


def test_an_exploding_learning_rate_is_caught_as_nan_or_inf(new_run, tiny_config):
    root, run_id = new_run()
    config = tiny_config(
        root, run_id, "training.learning_rate=1e30", "training.warmup_steps=0", "training.grad_clip=0"
    )
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at step \d+"):
        train.run(config)


@pytest.mark.parametrize("key", ["batch_size", "averaging_frequency", "checkpoint_interval"])
@pytest.mark.parametrize("value", [0, -3])
def test_zero_or_negative_sizes_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=rf"training.{key}: Input should be greater than 0"):
        load_config(None, [f"training.{key}={value}"])


def test_more_workers_than_windows(new_run, tiny_config):
    root, run_id = new_run()
    windows = json.loads((root / "runs" / run_id / "window" / "data_distribution.json").read_text())["train"][
        "windows"
    ]
    with pytest.raises(
        InputError, match=rf"training.num_workers \(100000\) is more than the {windows} train windows"
    ):
        train.run(tiny_config(root, run_id, "training.strategy=ddp", "training.num_workers=100000"))
    with pytest.raises(InputError, match=r"fewer than training.batch_size=5000"):
        train.run(tiny_config(root, run_id, "training.strategy=ddp", "training.batch_size=5000"))


def test_a_corrupt_checkpoint_falls_back_and_none_valid_is_an_error(new_run, tiny_config, caplog):
    root, run_id = new_run()
    config = tiny_config(root, run_id, "training.max_steps=8", "training.checkpoint_interval=4")
    train.run(config)
    checkpoints = root / "runs" / run_id / "checkpoints"
    (checkpoints / "step-8" / "optimizer.safetensors").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        summary = train.run(config, resume=True)  # continues from step 4 up to 8 again
    assert "checkpoint step-8 is unusable, falling back to the previous one" in caplog.text
    assert summary["steps"] == 8 and summary["checkpoint"].endswith("step-8")

    for step in ("step-4", "step-8"):
        (checkpoints / step / "state.json").write_text("{")
    with pytest.raises(
        TrainingError, match=r"no valid checkpoint in .*checkpoints: .*state.json: not valid JSON"
    ):
        train.run(config, resume=True)


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage", ["truncated", "not utf-8", "a directory"])
def test_a_damaged_tokenizer_is_one_line_naming_the_file(new_run, tiny_config, damage):
    root, run_id = new_run()
    path = root / "runs" / run_id / "preprocess" / "tokenizer.json"
    if damage == "truncated":
        _truncate(path)
        expected = rf"^{path}: not a valid tokenizer.json \(written by the preprocess step; re-run it\): "
    elif damage == "not utf-8":
        path.write_bytes(b'{"version": "1.0", "model": "\xff"}')
        expected = rf"^{path}: not UTF-8 text \(byte 0xff at offset 29\)$"
    else:
        path.unlink()
        path.mkdir()
        expected = rf"^{path} is a directory, expected a tokenizer.json file"
    with pytest.raises(InputError, match=expected) as info:
        train.run(tiny_config(root, run_id))
    assert "\n" not in str(info.value)
    _assert_nothing_committed(root, run_id)


@pytest.mark.parametrize("damage", ["truncated", "garbled header"])
def test_damaged_embeddings_are_one_line_naming_the_file(new_run, tiny_config, damage):
    root, run_id = new_run()
    path = root / "runs" / run_id / "preprocess" / "embeddings.safetensors"
    if damage == "truncated":
        _truncate(path, 0.9)
    else:
        data = bytearray(path.read_bytes())
        data[8:20] = b"\x00garbled!!!\x00"
        path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"^{path}: not a readable safetensors file \(.+\); re-run") as info:
        train.run(tiny_config(root, run_id, "model.kind=mlp"))
    assert "\n" not in str(info.value)
    _assert_nothing_committed(root, run_id)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_truncated_window_file_is_named_never_skipped(new_run, tiny_config, split):
    root, run_id = new_run()
    folder = root / "runs" / run_id / "window" / split
    part = sorted(folder.glob("*.parquet"))[-1]
    _truncate(part)
    with pytest.raises(InputError, match=rf"^{part}: not a valid Parquet file \(.+\)$"):
        train.run(tiny_config(root, run_id))
    # the only file of its split: the same error, not a pyarrow traceback
    for other in folder.glob("*.parquet"):
        if other != part:
            other.unlink()
    with pytest.raises(InputError, match=rf"^{part}: not a valid Parquet file"):
        train.run(tiny_config(root, run_id))
    _assert_nothing_committed(root, run_id)


def test_windows_that_disagree_with_the_recorded_count_are_refused(new_run, tiny_config):
    root, run_id = new_run()
    window = root / "runs" / run_id / "window"
    recorded = json.loads((window / "data_distribution.json").read_text())["val"]["windows"]
    lost = sorted((window / "val").glob("*.parquet"))[0]
    lost_rows = sum(pq.read_table(lost).column("run_counts").to_pylist()[0])  # the windows it defines
    lost.unlink()
    with pytest.raises(
        InputError,
        match=rf"^{window}/val: its Parquet files hold {recorded - lost_rows} windows but the window step "
        rf"recorded {recorded} in {window}/data_distribution.json; re-run the window step$",
    ):
        train.run(tiny_config(root, run_id))
    _assert_nothing_committed(root, run_id)


def test_a_chunk_shorter_than_its_windows_is_named(new_run, tiny_config):
    root, run_id = new_run()
    part = sorted((root / "runs" / run_id / "window" / "train").glob("*.parquet"))[0]
    table = pq.read_table(part)
    ids = table.column("ids").to_pylist()[0]
    pq.write_table(table.set_column(3, "ids", pa.array([ids[:-5]], pa.list_(pa.int32()))), part)
    with pytest.raises(InputError) as info:
        train.run(tiny_config(root, run_id))
    message = str(info.value)
    assert message.startswith(f"{part}: part ") and f"holds {len(ids) - 5} tokens but its" in message
    assert "re-run the window step" in message and "\n" not in message
    _assert_nothing_committed(root, run_id)


def test_windows_in_the_old_one_row_per_window_format_are_refused(new_run, tiny_config):
    root, run_id = new_run()
    folder = root / "runs" / run_id / "window" / "val"
    for part in folder.glob("*.parquet"):
        part.unlink()
    old = pa.table(
        {
            "doc_id": pa.array([0], pa.int32()),
            "start": pa.array([0], pa.int64()),
            "ids": pa.array([list(range(17))], pa.list_(pa.int32())),
        }
    )
    pq.write_table(old, folder / "part-00000.parquet")
    with pytest.raises(InputError) as info:
        train.run(tiny_config(root, run_id))
    assert str(info.value) == (
        f"{folder / 'part-00000.parquet'}: windows from an older version of the window step; "
        "re-run the window step"
    )
    _assert_nothing_committed(root, run_id)


def _strict_lines(path):
    def refuse(token):
        raise AssertionError(f"{path}: bare {token} in JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_non_finite_validation_loss_stops_the_run_with_a_reason(new_run, tiny_config):
    """lr 1e30 blows the weights up in one step; evaluating after it is what finds out."""
    root, run_id = new_run()
    config = tiny_config(
        root,
        run_id,
        "training.learning_rate=1e30",
        "training.warmup_steps=0",
        "training.grad_clip=0",
        "training.eval_interval=1",
    )
    with pytest.raises(TrainingError) as info:
        train.run(config)
    message = str(info.value)
    assert message.startswith(("val_loss is nan at step 1: ", "val_loss is inf at step 1: "))
    assert "the model's predictions are not finite" in message and "last good checkpoint: none" in message
    metrics = root / "runs" / run_id / "metrics"
    records = _strict_lines(metrics / "steps.jsonl")  # whatever was written is strict JSON
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0]
    _assert_nothing_committed(root, run_id)


def test_no_validation_windows_is_refused_naming_the_folder(new_run, tiny_config):
    root, run_id = new_run()
    window = root / "runs" / run_id / "window"
    for part in (window / "val").glob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.slice(0, 0), part)
    distribution = json.loads((window / "data_distribution.json").read_text())
    distribution["val"]["windows"] = 0
    (window / "data_distribution.json").write_text(json.dumps(distribution))
    with pytest.raises(InputError, match=r"window/val: no validation windows to score .*re-run window$"):
        train.run(tiny_config(root, run_id))


def test_ddp_needs_a_validation_window_for_every_rank(new_run, tiny_config):
    root, run_id = new_run()
    window = root / "runs" / run_id / "window"
    parts = sorted((window / "val").glob("*.parquet"))
    for part in parts:
        part.unlink()
    write_stream_split(str(window / "val"), np.arange(17, dtype=np.int32), 0, 16, 4, files=1)  # one window
    distribution = json.loads((window / "data_distribution.json").read_text())
    distribution["val"]["windows"] = 1
    (window / "data_distribution.json").write_text(json.dumps(distribution))
    with pytest.raises(
        InputError,
        match=rf"^{window}/val: 1 validation windows for training.num_workers=2 ddp ranks, and every rank "
        r"needs at least one; use fewer workers or more validation text \(training.valid_split\)$",
    ):
        train.run(tiny_config(root, run_id, "training.strategy=ddp", "training.num_workers=2"))
    _assert_nothing_committed(root, run_id)


def test_an_mlp_on_a_preprocess_output_without_embeddings_is_one_line(new_run, tiny_config):
    """preprocess makes embeddings only for a model that uses them (a gpt's run has none)."""
    root, run_id = new_run()
    path = root / "runs" / run_id / "preprocess" / "embeddings.safetensors"
    path.unlink()
    with pytest.raises(InputError, match=rf"^{path} not found: model.kind=mlp needs .*re-run preprocess"):
        train.run(tiny_config(root, run_id, "model.kind=mlp"))
    _assert_nothing_committed(root, run_id)
