"""Nothing stale is used: windows made before preprocess ran again are refused, a checkpoint
trained on other data is never resumed, and re-made inputs drop the run's checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest

from spark_jobs.common import lineage, storage
from spark_jobs.common.errors import InputError, TrainingError
from spark_jobs.steps import train


def _remake(step_dir, made_from=None) -> str:
    """Commit the step's output again, unchanged, as a re-run would: a new output id."""
    copy = step_dir.parent / f"{step_dir.name}-copy"
    shutil.copytree(step_dir, copy)
    with storage.step_output(str(step_dir), made_from=made_from) as out:
        for item in copy.iterdir():
            if item.name != "_SUCCESS":
                shutil.copytree(item, f"{out}/{item.name}") if item.is_dir() else shutil.copy(item, out)
    shutil.rmtree(copy)
    return storage.output_record(str(step_dir))["output"]


def test_windows_made_before_preprocess_ran_again_are_refused(new_run, tiny_config):
    root, run_id = new_run()
    run = root / "runs" / run_id
    first = _remake(run / "preprocess")
    _remake(run / "window", made_from={"preprocess": first})
    assert train.resolve_inputs(tiny_config(root, run_id)).made_from["preprocess"] == first

    second = _remake(run / "preprocess")
    with pytest.raises(
        InputError, match=rf"window is stale: .*preprocess output {first} is now {second}.*re-run window"
    ):
        train.resolve_inputs(tiny_config(root, run_id))


def test_a_checkpoint_trained_on_other_windows_is_not_resumed(new_run, tiny_config):
    root, run_id = new_run()
    run = root / "runs" / run_id
    preprocess = _remake(run / "preprocess")
    old_windows = _remake(run / "window", made_from={"preprocess": preprocess})
    common = ("training.batch_size=8", "training.checkpoint_interval=4")
    train.run(tiny_config(root, run_id, *common, "training.max_steps=4"))
    marker = json.loads((run / "train" / "_SUCCESS").read_text())
    assert marker["made_from"] == {"preprocess": preprocess, "window": old_windows}

    new_windows = _remake(run / "window", made_from={"preprocess": preprocess})
    with pytest.raises(
        TrainingError,
        match=rf"step-4 was trained on other data \(window output {old_windows} is now {new_windows}\)",
    ):
        train.run(tiny_config(root, run_id, *common, "training.max_steps=8"))


def test_remade_inputs_drop_the_checkpoints(tmp_path):
    checkpoint = tmp_path / "runs" / "r" / "checkpoints" / "step-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "_SUCCESS").write_text("")
    lineage.drop_checkpoints(str(tmp_path), "r", because="the window step")
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()
    lineage.drop_checkpoints(str(tmp_path), "r", because="the window step")  # nothing there: fine
