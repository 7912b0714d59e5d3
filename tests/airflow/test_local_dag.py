"""The local DAG end to end with dag.test(): real spark-submit steps on a corpus slice."""

from __future__ import annotations

import json
import math

import pytest

from spark_jobs.common.pipeline import STEPS
from spark_jobs.reporting.summary import HEADLINE_KEYS

pytestmark = pytest.mark.timeout(600)


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
    params = {"corpus_uri": str(tmp_path / "missing.txt"), "root": str(tmp_path / "root")}
    prepared = prepare_local_run(pipeline_raw, params, "manual__bad-corpus", settings.airflow.local_master)
    with pytest.raises(RuntimeError, match=r"preprocess step failed \(exit 2\): error: .*corpus not found"):
        run_local_step("preprocess", prepared, settings)
    assert not (tmp_path / "root" / "runs" / prepared["run_id"] / "preprocess" / "_SUCCESS").exists()


def test_invalid_overrides_are_refused_before_anything_runs(tmp_path):
    from llm_decoder_airflow.settings import load_local_config
    from llm_decoder_airflow.tasks import prepare_local_run

    from spark_jobs.common.errors import ConfigError

    pipeline_raw, settings = load_local_config()
    params = {"root": str(tmp_path), "overrides": ["training.batch_size=-1"]}
    with pytest.raises(ConfigError, match="training.batch_size"):
        prepare_local_run(pipeline_raw, params, "manual__bad-params", settings.airflow.local_master)
    assert not (tmp_path / "runs").exists()
