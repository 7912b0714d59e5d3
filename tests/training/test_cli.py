"""`llm-decoder train` as a user runs it: a one-line error with exit 2, and SIGKILL then --resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from spark_jobs.common.config import dump_config
from spark_jobs.reporting.train_metrics import read_steps
from spark_jobs.steps import train

CLI = str(Path(sys.executable).parent / "llm-decoder")


def _write_config(config, path: Path) -> str:
    path.write_text(dump_config(config))
    return str(path)


def test_missing_windows_is_one_line_and_exit_2(new_run, tiny_config, tmp_path):
    root, run_id = new_run()
    (root / "runs" / run_id / "window" / "_SUCCESS").unlink()
    config = _write_config(tiny_config(root, run_id), tmp_path / "c.yaml")
    done = subprocess.run([CLI, "train", "--config", config], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no _SUCCESS marker" in errors[0]
    assert "Traceback" not in done.stderr


def test_killed_then_resumed_from_the_cli_matches_an_uninterrupted_run(new_run, tiny_config, tmp_path):
    overrides = ("training.max_steps=60", "training.checkpoint_interval=4", "training.log_interval=1")
    root, straight_id = new_run()
    straight = train.run(tiny_config(root, straight_id, *overrides))

    _, killed_id = new_run()
    config = _write_config(tiny_config(root, killed_id, *overrides), tmp_path / "c.yaml")
    run = root / "runs" / killed_id
    process = subprocess.Popen([CLI, "train", "--config", config], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step-8" / "_SUCCESS").exists():
        assert process.poll() is None and time.monotonic() < deadline, (
            "train ended before its step-8 checkpoint"
        )
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (run / "train" / "_SUCCESS").exists(), "the run finished before it was killed"

    done = subprocess.run(
        [CLI, "train", "--config", config, "--resume"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    a = load_file(root / "runs" / straight_id / "train" / "model" / "model.safetensors")
    b = load_file(run / "train" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[(r["step"], r["loss"]) for r in read_steps(str(root / "runs" / i / "metrics")) if r["kind"] == "train"]
              for i in (straight_id, killed_id)]  # fmt: skip
    assert losses[0] == losses[1] and len(losses[0]) == 60
    assert (run / "metrics" / "_SUCCESS").exists()
    assert straight["steps"] == 60
