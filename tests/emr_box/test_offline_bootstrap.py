"""The EMR bootstrap action with no network: the nodes' venv from a wheelhouse alone.

As root, `unshare -n` runs the bootstrap script in a network namespace with nothing but its own
loopback (a private subnet with no route to a package index; only the S3 copy is skipped: the
wheelhouse is given as a local folder). The new venv must then import the project the way a
step does on EMR (spark_jobs.zip on the path, as `--py-files` puts it) and run a tiny train
step (`single` strategy: torch, tokenizers, pyarrow, safetensors, yaml, pydantic), still offline.
The step is the pure-Python part of train: on EMR pyspark comes from the cluster, not the venv.

The wheelhouse is the one `make wheelhouse` builds under build/ (git-ignored, reused across runs;
built here once when missing, from pip's cache and PyPI). This machine is the nodes' platform
(CPython 3.11, manylinux x86_64), so the same wheels install here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from llm_decoder_airflow import staging, wheelhouse

from spark_jobs.common.config import dump_config

REPO = Path(__file__).resolve().parents[2]


def _offline_namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


pytestmark = [
    pytest.mark.skipif(
        not _offline_namespaces_work(), reason="needs root and `unshare -n` (a network namespace)"
    ),
    # On EMR the bootstrap installs python3.11 with dnf; here it must be on PATH already.
    pytest.mark.skipif(shutil.which("python3.11") is None, reason="needs python3.11 on PATH"),
    pytest.mark.skipif(
        platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11),
        reason="the wheelhouse is for CPython 3.11 on x86_64, the nodes' platform",
    ),
]

# Runs in the namespace with the new venv's python: no network, the project from the zip.
OFFLINE_STEP = textwrap.dedent(
    """
    import importlib.util, json, socket, sys
    try:
        socket.create_connection(("pypi.org", 443), timeout=3)
        online = True
    except OSError:
        online = False
    import spark_jobs, torch, pyarrow, tokenizers, safetensors, yaml, pydantic
    from spark_jobs.common.config import load_config
    from spark_jobs.models.artifact import load_model
    from spark_jobs.steps import train

    summary = train.run(load_config(sys.argv[1]))
    model, tokenizer, _ = load_model(sys.argv[2])
    with torch.no_grad():
        scores = model.next_token_scores(torch.tensor([tokenizer.encode("ROMEO: ").ids[-8:]]))
    print(json.dumps({
        "online": online, "spark_jobs": spark_jobs.__file__, "torch": torch.__version__,
        "pyspark": importlib.util.find_spec("pyspark") is not None,
        "steps": summary["steps"], "strategy": summary["strategy"], "val_loss": summary["val_loss"],
        "scores": list(scores.shape),
    }))
    """
)


def _timed(label: str, began: float, cpu_before: float) -> None:
    """Wall and CPU seconds of a phase (CPU: the children's, independent of a loaded machine)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"{label}: {time.perf_counter() - began:.1f} s wall, {usage.ru_utime + usage.ru_stime - cpu_before:.1f} s CPU"
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _node_env() -> dict[str, str]:
    """A fresh node's environment: no project venv, no pip settings of this machine."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not p.startswith(sys.prefix))
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def _bootstrap(venv: Path, lock: Path, wheels: Path) -> subprocess.CompletedProcess:
    command = [
        "unshare", "-n", "bash", str(staging.BOOTSTRAP_PATH), "--python", "3.11", "--venv", str(venv),
        "--requirements", str(lock), "--wheelhouse", str(wheels), "--no-compile", "--torch", "cpu",
    ]  # fmt: skip
    return subprocess.run(command, env=_node_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def node_wheelhouse() -> Path:
    began = time.perf_counter()
    path = wheelhouse.build()
    print(f"wheelhouse {path.name}: {time.perf_counter() - began:.1f} s (built or reused)")
    return path


def _training_conftest():
    """tests/training/conftest.py's tiny run builder (pre-made windows, tokenizer, embeddings)."""
    spec = importlib.util.spec_from_file_location(
        "training_conftest", REPO / "tests" / "training" / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bootstrap_builds_a_venv_that_runs_a_step_with_no_network(tmp_path, node_wheelhouse, small_corpus):
    venv = tmp_path / "node" / "venv"
    began, cpu = time.perf_counter(), _children_cpu()
    proc = _bootstrap(venv, wheelhouse.LOCK_PATH, node_wheelhouse)
    _timed("offline bootstrap", began, cpu)
    assert proc.returncode == 0, proc.stderr
    assert "torch 2.13.0+cpu" in proc.stdout

    # The run's inputs as the preprocess and window steps leave them, and its config.
    built = _training_conftest()
    root, run_id = tmp_path / "root", "offline"
    built.build_run(root / "runs" / run_id, small_corpus.read_text(encoding="utf-8"))
    config = built.make_tiny_config(
        root, run_id, "training.strategy=single", "training.max_steps=2", "training.eval_interval=2",
        "training.checkpoint_interval=2", "training.log_interval=1", "training.histogram_interval=2",
    )  # fmt: skip
    config_path = tmp_path / "config.yaml"
    config_path.write_text(dump_config(config), encoding="utf-8")
    code = tmp_path / "code" / staging.CODE_ARCHIVE
    code.parent.mkdir()
    code.write_bytes(staging.build_code_archive())

    model_dir = root / "runs" / run_id / "train" / "model"
    env = {**_node_env(), "PYTHONPATH": str(code)}
    began, cpu = time.perf_counter(), _children_cpu()
    step = subprocess.run(
        ["unshare", "-n", str(venv / "bin" / "python"), "-c", OFFLINE_STEP, str(config_path), str(model_dir)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    _timed("offline step", began, cpu)
    assert step.returncode == 0, step.stderr
    result = json.loads(step.stdout.strip().splitlines()[-1])
    assert result["online"] is False  # the namespace really had no network
    assert result["spark_jobs"].startswith(str(code))  # the project from the archive, not the repo
    assert result["torch"] == "2.13.0+cpu" and result["pyspark"] is False
    assert (result["steps"], result["strategy"]) == (2, "single")
    assert result["val_loss"] > 0 and result["scores"][0] == 1


def test_a_wheel_that_does_not_match_the_lock_stops_the_bootstrap(tmp_path, node_wheelhouse):
    # The lock's pip, with a hash no wheel has: as if the wheelhouse held another build of it.
    pin = f"pip=={wheelhouse.locked_versions()['pip']}"
    lock = tmp_path / "nodes.lock"
    lock.write_text(f"{pin} \\\n    --hash=sha256:{'0' * 64}\n", encoding="utf-8")
    proc = _bootstrap(tmp_path / "venv", lock, node_wheelhouse)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert (
        f"install_python_deps.sh: {pin} in the wheelhouse" in lines[0]
        and "does not match its hash" in lines[0]
    )
