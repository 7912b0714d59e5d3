"""The trigger forms cannot escape: `overrides` may not set run.*, spark.conf or any *_path, and
the local DAG's `root` lies under the configured root. A spark-submit line is logged redacted."""

from __future__ import annotations

import logging
import os

import pytest
from airflow_testing import LOCAL_ROOT, REPO
from llm_decoder_airflow.pipeline import check_local_root, config_overrides, logged_command, spark_submit_args
from llm_decoder_airflow.settings import load_emr_config, load_local_config

from spark_jobs.common.errors import ConfigError
from spark_jobs.common.redact import REDACTED

REFUSED = [
    "run.id=champion",
    "run.root=/tmp/anywhere",
    "spark.conf.x=1",
    "spark.conf={spark.hadoop.fs.s3a.secret.key: x}",
    "data.corpus_path=/etc/passwd",
    "data.embeddings_path=/home/someone/.aws/credentials",
    "data.tokenizer_path=/etc/shadow",
]
ALLOWED = ["training.batch_size=64", "spark.executor_cores=4", "model.kind=mlp"]


@pytest.fixture(scope="module")
def local_dag_params(dagbag):
    """The local DAG's Params as the API server holds them: serialized, then deserialized."""
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["llm_decoder_local"]
    return DagSerialization.from_dict(DagSerialization.to_dict(dag)).params


def _server_validates(params, conf: dict) -> None:
    # What POST /api/v2/dags/{id}/dagRuns does before it creates the run (its 400 on failure).
    params.deep_merge(conf).validate()


@pytest.mark.parametrize("override", REFUSED + ["run={id: x}"])
def test_the_trigger_api_refuses_escaping_overrides(local_dag_params, override):
    from airflow.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="param overrides"):
        _server_validates(local_dag_params, {"overrides": ["training.batch_size=64", override]})


def test_the_trigger_api_accepts_ordinary_overrides(local_dag_params):
    _server_validates(local_dag_params, {"overrides": ALLOWED})


@pytest.mark.parametrize("override", REFUSED)
def test_the_emr_form_refuses_escaping_overrides(override):
    from airflow.exceptions import ParamValidationError
    from airflow.sdk.definitions.param import ParamsDict
    from llm_decoder_airflow.params import emr_params

    pipeline_raw, settings = load_emr_config()
    params = ParamsDict(emr_params(pipeline_raw, settings.emr))
    params.validate()  # the defaults pass
    params["overrides"] = ALLOWED
    params.validate()
    with pytest.raises(ParamValidationError, match="overrides"):
        params["overrides"] = [override]


@pytest.mark.parametrize("override", REFUSED + ["run={id: x}"])
def test_config_overrides_refuses_them_too(override):
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"^Param overrides: '{override[:8]}.*' is refused: ") as error:
        config_overrides({"overrides": [override]}, "/r", "r1")
    assert key in str(error.value) and "\n" not in str(error.value)


def test_config_overrides_passes_ordinary_ones():
    overrides = config_overrides({"overrides": ALLOWED}, "/r", "r1")
    assert overrides == ["run.root=/r", "run.id=r1", *ALLOWED]


def test_a_root_under_the_configured_root_is_accepted(tmp_path):
    (tmp_path / "output").mkdir()
    assert check_local_root(str(tmp_path / "output"), "output", tmp_path) == str(tmp_path / "output")
    assert check_local_root(str(tmp_path / "output" / "team-a"), "output", tmp_path) == str(
        tmp_path / "output" / "team-a"
    )
    assert check_local_root("output/team-b", "output", tmp_path) == str(tmp_path / "output" / "team-b")
    (tmp_path / "output" / "link").symlink_to(tmp_path / "output" / "team-a", target_is_directory=True)
    assert check_local_root(str(tmp_path / "output" / "link"), "output", tmp_path)


@pytest.mark.parametrize(
    "escape", ["/tmp/elsewhere", "{out}/../x", "{out}/link/x", "output/../x", "s3://b/p"]
)
def test_a_root_outside_the_configured_root_is_refused(tmp_path, escape):
    out = tmp_path / "output"
    out.mkdir()
    (tmp_path / "outside").mkdir()
    (out / "link").symlink_to(tmp_path / "outside", target_is_directory=True)  # a symlink escaping
    value = escape.format(out=out)
    with pytest.raises(ConfigError) as error:
        check_local_root(value, "output", tmp_path)
    message = str(error.value)
    assert message.startswith(f"Param root: {value!r} is not under {os.path.realpath(out)}")
    assert "\n" not in message


def test_an_s3_configured_root_admits_only_its_own_prefix():
    assert check_local_root("s3://b/p", "s3://b/p/", REPO) == "s3://b/p"
    assert check_local_root("s3://b/p/team", "s3://b/p", REPO) == "s3://b/p/team"
    for escape in ("s3://b/p-other", "s3://b/p/../q", "s3://other/p", "/tmp/p"):
        with pytest.raises(ConfigError, match=r"^Param root: .* is not under s3://b/p "):
            check_local_root(escape, "s3://b/p", REPO)


def test_prepare_local_run_refuses_a_root_outside_before_writing_anything(tmp_path):
    from llm_decoder_airflow.tasks import prepare_local_run

    pipeline_raw, settings = load_local_config()
    params = {"root": str(tmp_path / "elsewhere")}
    with pytest.raises(ConfigError, match=r"^Param root: .*elsewhere.* is not under .*local-root"):
        prepare_local_run(pipeline_raw, params, "manual__escape", settings.airflow.local_master)
    assert not (tmp_path / "elsewhere").exists()


def test_the_steps_config_keeps_a_secret_that_every_copy_hides(caplog):
    from llm_decoder_airflow.tasks import prepare_local_run

    pipeline_raw, settings = load_local_config()
    secret = "s3cr3t-value-for-the-test"
    pipeline_raw = {
        **pipeline_raw,
        "spark": {**pipeline_raw.get("spark", {}), "conf": {"spark.x.secret.key": secret}},
    }
    root = LOCAL_ROOT / "param-limits"
    with caplog.at_level(logging.DEBUG):
        prepared = prepare_local_run(
            pipeline_raw, {"root": str(root)}, "manual__secret", settings.airflow.local_master
        )
    # The step's input: its SparkSession needs the real value.
    assert secret in (root / "runs" / prepared["run_id"] / "code" / "config.yaml").read_text()
    assert secret not in caplog.text


def test_the_logged_spark_submit_line_is_redacted():
    args = spark_submit_args(
        script="steps/train.py",
        config_uri="/r/runs/r1/code/config.yaml",
        spark_options=["--conf", "spark.hadoop.fs.s3a.secret.key=s3cr3t", "--conf", "spark.task.cpus=2"],
    )
    line = logged_command(args)
    assert "s3cr3t" not in line
    assert f"spark.hadoop.fs.s3a.secret.key={REDACTED}" in line
    assert "spark.task.cpus=2" in line and line.endswith("--config /r/runs/r1/code/config.yaml")
