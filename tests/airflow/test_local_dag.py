"""The local DAG end to end with dag.test(): real spark-submit steps on a corpus slice."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml
from airflow_testing import LOCAL_ROOT, SCRATCH, corpus_slice, fresh_dag
from conftest import task_states

from spark_jobs.common.pipeline import STEPS
from spark_jobs.reporting.summary import HEADLINE_KEYS

pytestmark = pytest.mark.timeout(600)


# Shares the session's one run of llm_decoder_local (local_run): one worker runs both.
@pytest.mark.xdist_group("local_run")
def test_local_dag_trains_and_reports(local_run):
    print(f"\nlocal DAG end to end: {local_run['seconds']:.1f} s")
    assert local_run["state"] == "success", local_run["tasks"]
    assert set(local_run["tasks"].values()) == {"success"}
    run = local_run["root"] / "runs" / local_run["run_id"]

    for step in STEPS:  # every output the pipeline definition promises, committed
        for output in step.outputs:
            assert (run / output).is_dir(), (step.name, output)
    for folder in ("preprocess", "window", "train", "metrics"):
        assert (run / folder / "_SUCCESS").exists(), folder
    assert (run / "train" / "model" / "model.safetensors").stat().st_size > 0
    assert (run / "metrics" / "report.md").read_text().strip()
    samples = json.loads((run / "metrics" / "samples.json").read_text())
    assert samples

    summary = json.loads((run / "summary.json").read_text())
    assert set(HEADLINE_KEYS) <= set(summary)
    assert summary["status"] == "complete", summary["missing"]
    assert summary["run_id"] == local_run["run_id"]
    assert math.isfinite(summary["val_loss"])
    assert summary["val_loss"] < summary["first_val_loss"]
    assert "| val_loss |" in (run / "report.md").read_text()

    champion = json.loads((local_run["root"] / "models" / "champion.json").read_text())
    assert champion["run_id"] == local_run["run_id"]
    assert champion["val_loss"] == summary["val_loss"]


def test_a_missing_corpus_fails_the_first_step_with_one_clear_line(tmp_path):
    from llm_decoder_airflow.settings import load_local_config
    from llm_decoder_airflow.tasks import prepare_local_run, run_local_step

    pipeline_raw, settings = load_local_config()
    root = LOCAL_ROOT / "bad-corpus"
    params = {"corpus_uri": str(tmp_path / "missing.txt"), "root": str(root)}
    prepared = prepare_local_run(pipeline_raw, params, "manual__bad-corpus", settings.airflow.local_master)
    with pytest.raises(RuntimeError, match=r"preprocess step failed \(exit 2\): error: .*corpus not found"):
        run_local_step("preprocess", prepared, settings)
    assert not (root / "runs" / prepared["run_id"] / "preprocess" / "_SUCCESS").exists()


def test_invalid_overrides_are_refused_before_anything_runs(tmp_path):
    from llm_decoder_airflow.settings import load_local_config
    from llm_decoder_airflow.tasks import prepare_local_run

    from spark_jobs.common.errors import ConfigError

    pipeline_raw, settings = load_local_config()
    root = LOCAL_ROOT / "bad-params"
    params = {"root": str(root), "overrides": ["training.batch_size=-1"]}
    with pytest.raises(ConfigError, match="training.batch_size"):
        prepare_local_run(pipeline_raw, params, "manual__bad-params", settings.airflow.local_master)
    assert not (root / "runs").exists()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def test_a_step_past_its_timeout_fails_and_leaves_no_process(tmp_path, monkeypatch, airflow_db):
    """execution_timeout ends the step's spark-submit, its JVM and its Python: nothing outlives
    the attempt, so a retry could not run beside it."""
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    config = yaml.safe_load((SCRATCH / "local.yaml").read_text())
    config["airflow"].update({"local_step_timeout_s": 4, "retries": 0})
    config_path = tmp_path / "local.yaml"
    config_path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("LLM_DECODER_LOCAL_CONFIG", str(config_path))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(corpus_slice(), encoding="utf-8")

    dag = fresh_dag("llm_decoder_local")
    assert {dag.get_task(step.name).execution_timeout.total_seconds() for step in STEPS} == {4}
    dag_run = dag.test(run_conf={"corpus_uri": str(corpus), "root": str(LOCAL_ROOT / "timeout")})

    assert str(dag_run.state) == "failed"
    states = task_states(dag.dag_id, dag_run.run_id)
    assert states["preprocess"] == "failed"  # preprocess needs far more than 4 s: the timeout ended it
    run_id = run_id_from_airflow(dag_run.run_id)
    deadline = time.monotonic() + 5
    while _processes_mentioning(run_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(run_id) == []
    assert not (LOCAL_ROOT / "timeout" / "runs" / run_id / "preprocess" / "_SUCCESS").exists()
