"""Secrets in spark.conf stay out of saved config copies, reports and logged command lines."""

from __future__ import annotations

import pytest
import yaml

from spark_jobs.common.config import PipelineConfig, dump_config
from spark_jobs.common.redact import REDACTED, is_secret_key, redact_args, redact_conf, redact_config_text
from spark_jobs.reporting.html.read import read_run
from spark_jobs.reporting.html.render import build_html_report

SECRET = "wJalrXUtnFEMI-K7MDENG-s3cr3t"
CONF = {
    "spark.hadoop.fs.s3a.access.key": "AKIAEXAMPLE",
    "spark.hadoop.fs.s3a.secret.key": SECRET,
    "spark.hadoop.fs.s3a.session.token": "tok-123",
    "spark.sql.shuffle.partitions": "8",
    "spark.serializer": "org.apache.spark.serializer.KryoSerializer",
}


@pytest.mark.parametrize(
    "key",
    [
        "spark.hadoop.fs.s3a.access.key",
        "spark.hadoop.fs.s3a.secret.key",
        "spark.hadoop.fs.s3a.session.token",
        "spark.authenticate.secret",
        "spark.ssl.keyPassword",
        "spark.executorEnv.AWS_SECRET_ACCESS_KEY",
        "spark.yarn.appMasterEnv.DB_PASSWORD",
        "spark.kubernetes.authenticate.submission.oauthToken",
        "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net",
        "spark.hadoop.google.cloud.auth.service.account.json.keyfile",
        "spark.hadoop.fs.s3a.aws.credentials.provider",
    ],
)
def test_secret_looking_keys_are_recognised(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "spark.serializer",
        "spark.sql.shuffle.partitions",
        "spark.dynamicAllocation.enabled",
        "spark.driver.host",
        "spark.executor.memory",
        "spark.task.cpus",
    ],
)
def test_ordinary_keys_are_shown(key):
    assert not is_secret_key(key)


def test_redact_conf_replaces_only_secret_values():
    redacted = redact_conf(CONF)
    assert redacted["spark.hadoop.fs.s3a.secret.key"] == REDACTED
    assert redacted["spark.hadoop.fs.s3a.session.token"] == REDACTED
    assert redacted["spark.sql.shuffle.partitions"] == "8"
    assert redacted["spark.serializer"] == CONF["spark.serializer"]
    assert CONF["spark.hadoop.fs.s3a.secret.key"] == SECRET  # the input is left alone


def test_redact_args_covers_every_conf_form():
    args = [
        "spark-submit",
        "--conf",
        f"spark.hadoop.fs.s3a.secret.key={SECRET}",
        f"--conf=spark.authenticate.secret={SECRET}",
        "-c",
        f"spark.executorEnv.AWS_SECRET_ACCESS_KEY={SECRET}",
        "--conf",
        "spark.sql.shuffle.partitions=8",
        "/opt/jobs/keys_and_tokens.py",  # not a --conf value: a path, kept
        "--config",
        "/runs/r1/code/config.yaml",
    ]
    redacted = redact_args(args)
    assert SECRET not in " ".join(redacted)
    assert redacted[2] == f"spark.hadoop.fs.s3a.secret.key={REDACTED}"
    assert redacted[3] == f"--conf=spark.authenticate.secret={REDACTED}"
    assert redacted[5] == f"spark.executorEnv.AWS_SECRET_ACCESS_KEY={REDACTED}"
    assert redacted[7:] == args[7:]
    assert len(redacted) == len(args)


def _config() -> PipelineConfig:
    return PipelineConfig.model_validate({"spark": {"conf": CONF}, "run": {"id": "r1"}})


def test_dump_config_redacts_saved_copies_and_keeps_the_steps_input_whole():
    config = _config()
    saved = dump_config(config)
    assert SECRET not in saved and "tok-123" not in saved and "AKIAEXAMPLE" not in saved
    copy = yaml.safe_load(saved)
    assert copy["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] == REDACTED
    assert copy["spark"]["conf"]["spark.sql.shuffle.partitions"] == "8"
    # Everything but the secrets is the same config.
    assert PipelineConfig.model_validate(copy).model_dump(exclude={"spark"}) == config.model_dump(
        exclude={"spark"}
    )
    # The config a step reads must carry the real value (its SparkSession uses it).
    step_input = PipelineConfig.model_validate(yaml.safe_load(dump_config(config, redact=False)))
    assert step_input == config


def test_config_text_that_does_not_parse_is_redacted_line_by_line():
    text = f"spark:\n  conf:\n    spark.hadoop.fs.s3a.secret.key: {SECRET}\n  master: [local\n"
    shown = redact_config_text(text)
    assert SECRET not in shown
    assert "master: [local" in shown
    assert redact_config_text("spark:\n  master: local[2]\n") == "spark:\n  master: local[2]\n"


def test_the_html_report_never_shows_a_secret_of_the_steps_config(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "code").mkdir(parents=True)
    # code/config.yaml is the steps' input: it holds the real value; the report reads it.
    (run / "code" / "config.yaml").write_text(dump_config(_config(), redact=False))
    artifacts = read_run(str(run))
    assert artifacts.config_text is not None and SECRET not in artifacts.config_text
    html = build_html_report(str(run), champion={})
    assert SECRET not in html and "tok-123" not in html and "AKIAEXAMPLE" not in html
    assert REDACTED in html
    assert "spark.sql.shuffle.partitions" in html  # the rest of the config is still shown
