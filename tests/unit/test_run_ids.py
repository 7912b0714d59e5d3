"""Run ids of the CLI: a new one per preprocess/pipeline, the latest continuable run otherwise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from spark_jobs.common.config import RUN_ID_PATTERN
from spark_jobs.common.errors import InputError
from spark_jobs.common.run_ids import latest_run_for, new_run_id, with_run_id

CLI = str(Path(sys.executable).parent / "llm-decoder")


def _complete(root: Path, run_id: str, *steps: str, mtime: float) -> None:
    for step in steps:
        marker = root / "runs" / run_id / step / "_SUCCESS"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("")
        os.utime(marker, (mtime, mtime))


def test_new_ids_are_valid_and_never_repeat():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(
        re.match(RUN_ID_PATTERN, run_id) and re.match(r"^\d{8}-\d{6}-[0-9a-f]{6}$", run_id) for run_id in ids
    )


def test_preprocess_gets_a_new_run_and_a_named_run_is_kept(tmp_path):
    first, note = with_run_id(None, [f"run.root={tmp_path}"], "preprocess")
    second, _ = with_run_id(None, [f"run.root={tmp_path}"], "preprocess")
    assert first[-1].startswith("run.id=") and first[-1] != second[-1]
    assert note == f"run id {first[-1][7:]}: a new run (--set run.id=... names one)"
    assert with_run_id(None, ["run.id=mine"], "train") == (["run.id=mine"], None)


def test_later_steps_continue_the_newest_run_their_inputs_are_complete_in(tmp_path):
    _complete(tmp_path, "older", "preprocess", "window", mtime=1_000)
    _complete(tmp_path, "newer", "preprocess", mtime=2_000)
    (tmp_path / "runs" / "newer" / "window").mkdir()  # started, not finished
    assert latest_run_for(str(tmp_path), "window") == "newer"
    assert latest_run_for(str(tmp_path), "train") == "older"
    assert with_run_id(None, [f"run.root={tmp_path}"], "train")[0][-1] == "run.id=older"


def test_nothing_to_continue_is_one_line_naming_the_runs_folder(tmp_path):
    with pytest.raises(
        InputError, match=r"no run under .*runs has a completed preprocess and window for train"
    ):
        latest_run_for(str(tmp_path), "train")
    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  root: {tmp_path}\n")
    done = subprocess.run(
        [CLI, "train", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: no run under ")
    assert "Traceback" not in done.stderr
