"""The plugin's pure parts: pipeline definition, EMR requests, staging, collection, promotion."""

from __future__ import annotations

import io
import json
import logging
import re
import time
import zipfile

import pytest
import yaml
from airflow_testing import REPO
from llm_decoder_airflow import emr, pipeline, staging
from llm_decoder_airflow.capacity import check_training_fits
from llm_decoder_airflow.collect import collect_run
from llm_decoder_airflow.files import FileStore
from llm_decoder_airflow.promote import champion_uri, decide, promote
from llm_decoder_airflow.settings import EmrSettings, read_yaml, split_config

from spark_jobs.common.config import RUN_ID_PATTERN
from spark_jobs.common.errors import ConfigError, InputError
from spark_jobs.common.pipeline import STEP_NAMES, STEPS
from spark_jobs.reporting.summary import HEADLINE_KEYS


@pytest.mark.parametrize(
    "airflow_run_id",
    [
        "manual__2026-11-28T12:00:00.123456+00:00",
        "scheduled__2026-11-28T00:00:00+00:00",
        "__odd id/with:chars",
    ],
)
def test_run_ids_are_safe(airflow_run_id):
    run_id = pipeline.run_id_from_airflow(airflow_run_id)
    assert re.match(RUN_ID_PATTERN, run_id)
    assert "/" not in run_id and ":" not in run_id


def test_overrides_round_trip_through_the_steps_config():
    params = {
        "corpus_uri": "s3://b/data/a: b.txt",
        "embeddings_uri": "",
        "model_kind": "mlp",
        "strategy": "ddp",
        "epochs": 3,
        "window_size": 32,
        "stride": 2,
        "overrides": ["training.batch_size=8"],
    }
    overrides = pipeline.config_overrides(params, "s3://b/p", "r1")
    config = pipeline.run_config({}, overrides, "test")
    assert config.data.corpus_path == "s3://b/data/a: b.txt"
    assert config.data.embeddings_path is None
    assert (config.model.kind, config.training.strategy, config.training.num_epochs) == ("mlp", "ddp", 3)
    assert (config.model.window_size, config.data.window_stride, config.training.batch_size) == (32, 2, 8)
    assert (config.run.root, config.run.id) == ("s3://b/p", "r1")


def test_a_bad_override_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="training.num_epochs"):
        pipeline.run_config({}, ["training.num_epochs=0"], "Params")


def test_step_arguments_are_the_same_for_local_and_emr_but_for_the_front():
    config = pipeline.run_config({}, [], "test")
    specs = emr.step_specs("r1", "s3://b/p/runs/r1/code", config)
    assert [emr.step_of(s["Name"]) for s in specs] == list(STEP_NAMES)
    for spec, step in zip(specs, STEPS, strict=True):
        assert spec["ActionOnFailure"] == "CANCEL_AND_WAIT"
        assert spec["HadoopJarStep"]["Jar"] == "command-runner.jar"
        args = spec["HadoopJarStep"]["Args"]
        assert args[:3] == ["spark-submit", "--deploy-mode", "cluster"]
        assert args[args.index("spark.yarn.maxAppAttempts=1") - 1] == "--conf"  # one YARN attempt
        assert args[args.index("--py-files") + 1] == "s3://b/p/runs/r1/code/spark_jobs.zip"
        script = args.index(f"s3://b/p/runs/r1/code/{step.name}.py")
        # the staged config is the one record of the run: no --set list beside it
        assert args[script + 1 :] == ["--config", "s3://b/p/runs/r1/code/config.yaml"]
        assert ("spark.dynamicAllocation.enabled=false" in args) == (step.name == "train")
        local = pipeline.spark_submit_args(
            script="x.py",
            config_uri="c.yaml",
            spark_options=pipeline.step_spark_options(step, config, executors=False),
            submit_options=["--master", "local[2]"],
        )
        assert local[local.index("x.py") + 1 :][2:] == args[script + 1 :][2:]


def _step_options(config, step_name: str) -> dict[str, str]:
    """A step's EMR spark-submit options (before the script) as {flag or conf key: value}."""
    [spec] = [s for s in emr.step_specs("r1", "s3://b/code", config) if emr.step_of(s["Name"]) == step_name]
    args = spec["HadoopJarStep"]["Args"]
    args = args[1 : next(i for i, a in enumerate(args) if a.endswith(".py"))]
    options = dict(zip(args[::2], args[1::2], strict=True))
    confs = [args[i + 1] for i in range(0, len(args), 2) if args[i] == "--conf"]
    options.update(conf.split("=", 1) for conf in confs)
    return options


@pytest.mark.parametrize(
    ("training", "train_executors", "task_cpus"),
    [
        ({"strategy": "single"}, "3", None),
        ({"strategy": "ddp", "ddp_local_mode": True}, "3", None),  # torchrun on the driver
        ({"strategy": "ddp", "ddp_local_mode": False}, "5", "4"),
        ({"strategy": "parameter_averaging"}, "5", "4"),
    ],
)
def test_the_spark_section_sizes_the_emr_steps(training, train_executors, task_cpus):
    spark = {"driver_memory": "3g", "executor_memory": "6g", "executor_cores": 4, "num_executors": 3}
    config = pipeline.run_config({"spark": spark, "training": {**training, "num_workers": 5}}, [], "test")
    for step in STEP_NAMES:
        options = _step_options(config, step)
        assert (options["--driver-memory"], options["--executor-memory"]) == ("3g", "6g")
        assert options["--executor-cores"] == "4"
        # one executor per training worker, each barrier task holding all of its executor's cores
        assert options["--num-executors"] == (train_executors if step == "train" else "3")
        assert options.get("spark.task.cpus") == (task_cpus if step == "train" else None)
        assert options.get("spark.dynamicAllocation.enabled") == ("false" if step == "train" else None)
    # local[N] has no executors to size: only the driver's memory and the step's own properties
    [train] = [step for step in STEPS if step.name == "train"]
    assert pipeline.step_spark_options(train, config, executors=False) == [
        "--driver-memory",
        "3g",
        "--conf",
        "spark.dynamicAllocation.enabled=false",
    ]
    assert not pipeline.has_executors("local[2]") and not pipeline.has_executors("local-cluster[2,1,1024]")
    assert pipeline.has_executors("yarn") and pipeline.has_executors("spark://127.0.0.1:7077")


def test_spark_executor_settings_have_the_documented_defaults_and_clear_errors():
    spark = pipeline.run_config({}, [], "test").spark
    assert (spark.executor_memory, spark.executor_cores, spark.num_executors) == ("2g", 1, 2)
    with pytest.raises(
        ConfigError, match=r"spark.executor_memory: .*memory size such as 512m or 8g, got '8 GB'"
    ):
        pipeline.run_config({}, ["spark.executor_memory=8 GB"], "Params")
    with pytest.raises(ConfigError, match="spark.executor_cores"):
        pipeline.run_config({}, ["spark.executor_cores=0"], "Params")


@pytest.mark.parametrize("key", ["executor_memory", "executor_cores", "driver_memory"])
def test_the_old_emr_executor_keys_say_where_they_moved(key):
    with pytest.raises(ConfigError) as info:
        split_config({"emr": {key: 4}}, "my-emr.yaml")
    assert str(info.value).startswith(f"my-emr.yaml: emr.{key} has moved to spark.{key} ")
    assert "\n" not in str(info.value)


def test_cluster_spec():
    settings = EmrSettings(
        bucket="b",
        prefix="p",
        region="eu-west-1",
        task_instance_type="m5.2xlarge",
        task_instance_count=3,
        ec2_subnet_id="subnet-1",
    )
    spec = emr.cluster_spec(settings, "r1", "s3://b/p/runs/r1/code")
    groups = {g["InstanceRole"]: g for g in spec["Instances"]["InstanceGroups"]}
    assert groups["MASTER"]["InstanceCount"] == 1 and groups["CORE"]["InstanceCount"] == 2
    assert groups["TASK"]["Market"] == "SPOT" and groups["CORE"]["Market"] == "ON_DEMAND"
    assert spec["Instances"]["Ec2SubnetId"] == "subnet-1"
    assert spec["ReleaseLabel"] == "emr-7.12.0"
    assert spec["LogUri"] == "s3://b/p/emr-logs/"
    assert spec["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    # current IAM defaults: AmazonEMRServicePolicy_v2 acts only on resources with this tag
    assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in spec["Tags"]
    assert (spec["ServiceRole"], spec["JobFlowRole"]) == ("EMR_DefaultRole_V2", "EMR_EC2_DefaultRole")
    shipped = split_config(read_yaml(REPO / "configs" / "emr.yaml"), "configs/emr.yaml")[1].emr
    assert (shipped.service_role, shipped.job_flow_role) == ("EMR_DefaultRole_V2", "EMR_EC2_DefaultRole")
    assert {"Key": "run_id", "Value": "r1"} in spec["Tags"] and {
        "Key": "project",
        "Value": "llm-decoder",
    } in spec["Tags"]
    [bootstrap] = spec["BootstrapActions"]
    assert bootstrap["ScriptBootstrapAction"]["Path"] == "s3://b/p/runs/r1/code/install_python_deps.sh"
    assert bootstrap["ScriptBootstrapAction"]["Args"][-2:] == ["--torch", "cpu"]
    defaults = next(c for c in spec["Configurations"] if c["Classification"] == "spark-defaults")[
        "Properties"
    ]
    assert defaults["spark.serializer"].endswith("KryoSerializer")
    assert not any(key.startswith(("spark.executor.", "spark.driver.")) for key in defaults)  # per step
    env = spec["Configurations"][0]["Configurations"][0]["Properties"]
    assert env["PYSPARK_PYTHON"] == emr.NODE_PYTHON
    # YARN containers learn the cluster's region (an instance profile gives none)
    for variable in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        assert env[variable] == "eu-west-1"
        assert defaults[f"spark.executorEnv.{variable}"] == "eu-west-1"
        assert defaults[f"spark.yarn.appMasterEnv.{variable}"] == "eu-west-1"
    no_task = emr.cluster_spec(EmrSettings(), "r1", "s3://x")
    assert [g["InstanceRole"] for g in no_task["Instances"]["InstanceGroups"]] == ["MASTER", "CORE"]


def test_params_override_the_cluster_settings():
    settings = emr.settings_for_run(
        EmrSettings(), {"instance_type": "c5.2xlarge", "instance_count": 5, "bucket": "x", "prefix": "y/z"}
    )
    assert (settings.core_instance_type, settings.core_instance_count) == ("c5.2xlarge", 5)
    assert emr.run_root(settings) == "s3://x/y/z"


def test_staging_archive_and_requirements():
    first, second = staging.build_code_archive(), staging.build_code_archive()
    assert first == second  # byte-identical for identical code
    names = zipfile.ZipFile(io.BytesIO(first)).namelist()
    assert "spark_jobs/common/config.py" in names and "spark_jobs/steps/preprocess.py" in names
    assert not any("__pycache__" in n for n in names)
    requirements = staging.runtime_requirements().splitlines()
    assert "torch==2.13.0" in requirements
    assert not any(r.startswith("pyspark") for r in requirements)  # EMR brings its own Spark
    assert set(staging.entry_scripts()) == {"preprocess.py", "window.py", "train.py"}
    assert staging.BOOTSTRAP_PATH.read_text().startswith("#!/usr/bin/env bash")


def test_emr_config_splits_into_steps_config_and_settings():
    raw, settings = split_config(read_yaml(REPO / "configs" / "emr.yaml"), "configs/emr.yaml")
    config = pipeline.run_config(raw, ["run.root=s3://b/p"], "configs/emr.yaml")
    assert config.data.corpus_path.startswith("s3://")
    assert settings.emr.release_label == "emr-7.12.0"
    assert settings.airflow.schedule is None
    with pytest.raises(ConfigError, match="unknown section 'clusterr'"):
        split_config({**raw, "clusterr": {}}, "emr.yaml")
    with pytest.raises(ConfigError, match="emr.core_instance_count"):
        split_config({"emr": {"core_instance_count": 0}}, "emr.yaml")


def test_collect_writes_a_summary_that_names_what_is_missing(tmp_path):
    run = tmp_path / "runs" / "r1"
    (run / "metrics").mkdir(parents=True)
    (run / "metrics" / "summary.json").write_text(json.dumps({"val_loss": 2.5, "first_val_loss": 5.0}))
    (run / "window").mkdir()
    (run / "window" / "data_distribution.json").write_text("{not json")
    summary = collect_run(FileStore(None), str(tmp_path), "r1", {"dag_id": "d"})
    written = json.loads((run / "summary.json").read_text())
    assert written == summary
    assert set(HEADLINE_KEYS) <= set(written)
    assert written["status"] == "incomplete"
    assert written["missing"] == [
        "preprocess/stats.json: not found",
        "window/data_distribution.json: not valid JSON (line 1: Expecting property name enclosed in double quotes)",
    ]
    assert written["val_loss"] == 2.5 and written["train_loss"] is None
    report = (run / "report.md").read_text()
    assert "## Missing" in report and "preprocess/stats.json: not found" in report


def test_collect_with_no_metrics_at_all(tmp_path):
    summary = collect_run(FileStore(None), str(tmp_path), "r2")
    assert summary["status"] == "incomplete" and len(summary["missing"]) == 3
    assert (tmp_path / "runs" / "r2" / "summary.json").exists()


FINGERPRINT = {"version": 2, "corpus_sha256": "c1", "split_by": "document", "valid_split": 0.1, "val_chars_scored": 1000,
               "loss": "cross_entropy", "embeddings_sha256": None}  # fmt: skip


def _summary(run_id, bpc, kind="gpt", val_loss=None, **evaluation):
    loss = "mse" if kind == "mlp" else "cross_entropy"
    return {"run_id": run_id, "model_kind": kind, "val_bits_per_char": bpc if kind == "gpt" else None,
            "val_loss": val_loss if val_loss is not None else (bpc * 1.6 if bpc is not None else None),
            "evaluation": {**FINGERPRINT, "loss": loss, **evaluation}}  # fmt: skip


def test_promotion_decisions():
    assert decide(_summary("a", 2.0), None)[0] == "promoted"
    assert decide(_summary("b", 1.5), _summary("a", 2.0))[0] == "promoted"
    assert decide(_summary("b", 2.5), _summary("a", 2.0))[0] == "kept"
    assert decide(_summary("a", 2.0), _summary("a", 2.0))[0] == "unchanged"
    assert decide(_summary("b", float("nan")), _summary("a", 2.0))[0] == "skipped"
    # gpt runs compare on full-split bits per character, even when their losses say otherwise
    assert decide(_summary("b", 1.9, val_loss=9.0), _summary("a", 2.0, val_loss=1.0))[0] == "promoted"
    # like with like only: another corpus, split or scored text, another model kind, no fingerprint
    for other in ({"corpus_sha256": "c2"}, {"valid_split": 0.2}, {"val_chars_scored": 999}):
        decision, reason = decide(_summary("b", 1.0, **other), _summary("a", 2.0))
        assert decision == "not comparable" and next(iter(other)) in reason, reason
    assert decide(_summary("m", None, "mlp", 0.01), _summary("a", 2.0))[0] == "not comparable"
    legacy = {"run_id": "old", "model_kind": "gpt", "val_loss": 3.0, "val_bits_per_char": 2.5}
    # a champion from before fingerprints can never be compared: the next fingerprinted run replaces it
    decision, reason = decide(_summary("b", 3.0), legacy)
    assert decision == "promoted" and "the champion old has no evaluation fingerprint" in reason
    # a champion evaluated by an older version of the figures: replaced the same way, saying why
    decision, reason = decide(_summary("b", 3.0), _summary("old", 2.0, version=1))
    assert decision == "promoted" and "evaluation version 1, now 2" in reason
    assert decide(_summary("b", 1.0, version=1), _summary("a", 2.0))[0] == "not comparable"
    unfingerprinted = {k: v for k, v in _summary("c", 1.0).items() if k != "evaluation"}
    assert decide(unfingerprinted, _summary("a", 2.0)) == (
        "not comparable",
        "the new run has no evaluation fingerprint; the champion stays",
    )
    # mlp: val_loss, and only against the same embedding table
    assert (
        decide(
            _summary("m2", None, "mlp", 0.01, embeddings_sha256="e1"),
            _summary("m1", None, "mlp", 0.02, embeddings_sha256="e1"),
        )[0]
        == "promoted"
    )
    assert (
        decide(
            _summary("m2", None, "mlp", 0.01, embeddings_sha256="e2"),
            _summary("m1", None, "mlp", 0.02, embeddings_sha256="e1"),
        )[0]
        == "not comparable"
    )


def test_promote_updates_the_pointer_only_when_better_and_is_idempotent(tmp_path):
    files, root = FileStore(None), str(tmp_path)
    assert promote(files, root, _summary("a", 2.0))["decision"] == "promoted"
    assert promote(files, root, _summary("a", 2.0))["decision"] == "unchanged"
    assert promote(files, root, _summary("b", 2.5))["decision"] == "kept"
    assert json.loads(open(champion_uri(root)).read())["run_id"] == "a"
    result = promote(files, root, _summary("c", 1.0))
    assert result["decision"] == "promoted" and result["champion_val_loss"] == 3.2
    pointer = json.loads(open(champion_uri(root)).read())
    assert pointer["run_id"] == "c" and pointer["previous"]["run_id"] == "a"
    assert pointer["evaluation"] == _summary("c", 1.0)["evaluation"]


def test_a_corrupt_champion_pointer_is_a_one_line_error(tmp_path):
    files, root = FileStore(None), str(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "champion.json").write_text('{"run_id": "a", ')
    with pytest.raises(
        InputError, match=r"models/champion.json: not valid JSON \(line 1: .*\); fix or delete it"
    ):
        promote(files, root, _summary("b", 1.0))


def test_the_champion_pointer_is_written_only_if_nobody_wrote_it_meanwhile(tmp_path, s3):
    from airflow_testing import BUCKET

    files = FileStore("aws_default")
    for pointer in (
        str(tmp_path / "models" / "champion.json"),
        f"s3://{BUCKET}/cas-test/models/champion.json",
    ):
        assert files.read_versioned(pointer) == (None, None)
        assert files.write_if_version(pointer, '{"run_id": "a"}', None)
        assert not files.write_if_version(pointer, '{"run_id": "b"}', None)  # it exists by now
        text, version = files.read_versioned(pointer)
        assert json.loads(text)["run_id"] == "a"
        files.write_text(pointer, '{"run_id": "c"}')  # another run promoted in between
        assert not files.write_if_version(pointer, '{"run_id": "d"}', version)
        assert json.loads(files.read_versioned(pointer)[0])["run_id"] == "c"
        assert files.write_if_version(pointer, '{"run_id": "e"}', files.read_versioned(pointer)[1])
        assert json.loads(files.read_versioned(pointer)[0])["run_id"] == "e"


def test_bootstrap_script_is_valid_bash():
    import subprocess

    subprocess.run(["bash", "-n", str(staging.BOOTSTRAP_PATH)], check=True)
    text = staging.BOOTSTRAP_PATH.read_text()
    assert "python${PYTHON_VERSION}" in text and "--no-index" in text and "--require-hashes" in text
    assert "download.pytorch.org" not in text and "pypi.org" not in text  # the nodes need no index
    assert yaml.safe_load((REPO / "configs" / "emr.yaml").read_text())["emr"]["python_version"] == "3.11"


def test_a_missing_aws_connection_is_a_clear_error():
    from llm_decoder_airflow.tasks import check_aws

    with pytest.raises(ConfigError, match="AWS connection 'no_such_conn' is not defined"):
        check_aws("no_such_conn", "some-bucket")


def _ddp_on_executors(workers: int, executor_cores: int = 4, executor_memory: str = "8g"):
    spark = {"executor_cores": executor_cores, "executor_memory": executor_memory}
    training = {"strategy": "ddp", "ddp_local_mode": False, "num_workers": workers}
    return pipeline.run_config({"spark": spark, "training": training}, [], "test")


def test_the_cluster_must_hold_every_training_worker_at_once():
    m5 = EmrSettings(core_instance_type="m5.xlarge", core_instance_count=2)
    with pytest.raises(ConfigError) as info:
        check_training_fits(_ddp_on_executors(8), m5)
    assert str(info.value).startswith(
        "training.num_workers=8 needs 8 executors with spark.executor_cores=4 and "
        "spark.executor_memory=8g, but emr core nodes (2 × m5.xlarge, 4 vCPUs, 16 GiB: "
        "1 executor each) give 2: "
    )
    check_training_fits(_ddp_on_executors(2), m5)
    # memory permitting: 8 vCPUs hold two 4-core executors, 16 GiB only one of 8g (+ overhead)
    with pytest.raises(ConfigError, match="c5.2xlarge, 8 vCPUs, 16 GiB: 1 executor each"):
        check_training_fits(_ddp_on_executors(4), EmrSettings(core_instance_type="c5.2xlarge"))
    check_training_fits(_ddp_on_executors(4), EmrSettings(core_instance_type="r5.2xlarge"))
    # task nodes add their executors
    with_task = m5.model_copy(update={"task_instance_type": "m5.2xlarge", "task_instance_count": 3})
    check_training_fits(_ddp_on_executors(8), with_task)
    with pytest.raises(ConfigError, match=r"and emr task nodes \(3 × m5.2xlarge, .*\) give 8"):
        check_training_fits(_ddp_on_executors(9), with_task)
    # torchrun on the driver, or a single process: no executors to count
    local_ddp = pipeline.run_config({"training": {"strategy": "ddp", "num_workers": 64}}, [], "test")
    check_training_fits(local_ddp, m5)


def test_an_unknown_instance_type_skips_the_check_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="llm_decoder_airflow.capacity"):
        check_training_fits(_ddp_on_executors(64), EmrSettings(core_instance_type="x9.metal"))
    assert "x9.metal is not in the capacity table" in caplog.text


def test_stage_refuses_a_run_the_cluster_cannot_hold_before_touching_aws():
    from llm_decoder_airflow.settings import load_emr_config
    from llm_decoder_airflow.tasks import stage_emr_run

    raw, settings = load_emr_config()
    params = {
        "strategy": "ddp",
        "instance_type": "m5.xlarge",
        "instance_count": 2,
        "overrides": ["training.ddp_local_mode=false", "training.num_workers=8", "spark.executor_cores=4"],
    }
    # no moto server: the refusal comes before any AWS call
    with pytest.raises(ConfigError, match=r"^training.num_workers=8 needs 8 executors .* give 2: "):
        stage_emr_run(raw, settings, params, "manual__too-many-workers")


def test_step_log_tail_prefers_our_error_line_and_says_when_logs_are_missing(s3):
    import gzip

    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow_testing import BUCKET, REGION
    from llm_decoder_airflow.steplogs import error_lines, step_log_tail

    hook = S3Hook(aws_conn_id="aws_default", region_name=REGION)
    log_uri = f"s3n://{BUCKET}/units-logs/"  # as DescribeCluster reports it
    base = "units-logs/j-UNIT/steps/s-1"
    started = time.monotonic()
    missing = step_log_tail(hook, log_uri, "j-UNIT", "s-1", wait_s=1, poll_s=0.3)
    assert 1 <= time.monotonic() - started < 30  # it waited, and the wait is bounded
    assert missing.startswith("step logs not in S3 yet after 1 s")
    assert f"s3://{BUCKET}/{base}/stderr.gz" in missing

    # client mode: the Python driver's output is in the step's stdout
    stdout = "INFO starting\nTraceback (most recent call last):\nerror: train: corpus is empty\nINFO bye\n"
    s3.put_object(Bucket=BUCKET, Key=f"{base}/stdout.gz", Body=gzip.compress(stdout.encode()))
    s3.put_object(Bucket=BUCKET, Key=f"{base}/stderr.gz", Body=gzip.compress(b"WARN nothing\n"))
    tail = step_log_tail(hook, log_uri, "j-UNIT", "s-1", wait_s=0)
    assert tail == f"step log: error: train: corpus is empty (in s3://{BUCKET}/{base}/stdout.gz)"
    # no `error: ` line: the last lines that name an error, of each log
    assert error_lines("a\nValueError: bad\nb\n") == ["ValueError: bad"]
    assert error_lines("a\nb\n", count=1) == ["b"]
    assert step_log_tail(hook, None, "j-UNIT", "s-1", wait_s=0) == "no step logs: the cluster has no LogUri"


def test_staging_checks_the_inputs_exist_in_s3(s3):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from airflow_testing import BUCKET, CORPUS_KEY, REGION
    from llm_decoder_airflow.tasks import check_inputs, s3_input_exists

    hook = S3Hook(aws_conn_id="aws_default", region_name=REGION)
    s3.put_object(Bucket=BUCKET, Key="inputs/books/a.txt", Body=b"a")
    for uri in [
        f"s3://{BUCKET}/{CORPUS_KEY}",
        f"s3a://{BUCKET}/inputs/books",
        f"s3://{BUCKET}/inputs/*/a.txt",
    ]:
        assert s3_input_exists(hook, uri), uri
    for uri in [f"s3://{BUCKET}/inputs/book", f"s3://{BUCKET}/inputs/*.csv", f"s3://{BUCKET}/nothing"]:
        assert not s3_input_exists(hook, uri), uri

    corpus = f"s3://{BUCKET}/{CORPUS_KEY}"
    check_inputs(pipeline.run_config({"data": {"corpus_path": corpus}}, [], "t"), "aws_default", REGION)
    missing = pipeline.run_config(
        {"data": {"corpus_path": corpus, "embeddings_path": f"s3://{BUCKET}/no/vectors.txt"}}, [], "t"
    )
    with pytest.raises(InputError) as info:
        check_inputs(missing, "aws_default", REGION)
    assert str(info.value).startswith(f"embeddings not found: s3://{BUCKET}/no/vectors.txt (")
    assert "\n" not in str(info.value)


def test_release_label_is_emr_7_only():
    with pytest.raises(ConfigError) as info:
        split_config({"emr": {"release_label": "emr-6.15.0"}}, "emr.yaml")
    assert str(info.value) == (
        "emr.yaml: emr.release_label: 'emr-6.15.0': emr-7.x only: the bootstrap action installs "
        "Python 3.11 with dnf, which needs the Amazon Linux 2023 of EMR 7 (EMR 6 runs Amazon Linux 2)"
    )
    with pytest.raises(ConfigError, match="emr-7.x only"):
        emr.settings_for_run(EmrSettings(), {"release_label": "emr-6.15.0"})
    assert emr.settings_for_run(EmrSettings(), {"release_label": "emr-7.13.0"}).release_label == "emr-7.13.0"


def test_emr_plan_prints_the_requests_the_dag_would_send_without_aws():
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "LLM_DECODER_EMR_CONFIG": str(REPO / "configs" / "emr.yaml"),  # the shipped config
        "PYTHONPATH": str(REPO / "plugins"),
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # nothing answers there: a call would fail
    }
    env.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
    sets = ["training.strategy=ddp", "training.ddp_local_mode=false", "training.num_workers=3"]
    done = subprocess.run(
        [sys.executable, "-m", "llm_decoder_airflow.plan", *(arg for s in sets for arg in ("--set", s))],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)  # stdout is one JSON object, nothing else
    assert {"run_job_flow", "steps", "estimate_usd", "estimate_basis", "security_configuration"} <= set(plan)
    assert plan["estimate_usd"] == pytest.approx(1.2) and "emr.default_run_hours" in plan["estimate_basis"]
    flow = plan["run_job_flow"]
    security = plan["security_configuration"]
    assert flow["SecurityConfiguration"] == security["Name"]
    imds = security["SecurityConfiguration"]["InstanceMetadataServiceConfiguration"]
    assert imds["MinimumInstanceMetadataServiceVersion"] == 2
    assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in flow["Tags"]
    assert {"Key": "run_id", "Value": "plan"} in flow["Tags"] and flow["ServiceRole"] == "EMR_DefaultRole_V2"
    assert [emr.step_of(step["Name"]) for step in plan["steps"]] == list(STEP_NAMES)
    for step in plan["steps"]:
        args = step["HadoopJarStep"]["Args"]
        assert args[args.index("spark.yarn.maxAppAttempts=1") - 1] == "--conf"
    [train] = [s["HadoopJarStep"]["Args"] for s in plan["steps"] if emr.step_of(s["Name"]) == "train"]
    assert train[train.index("--num-executors") + 1] == "3"  # one executor per training worker

    refused = subprocess.run(
        [sys.executable, "-m", "llm_decoder_airflow.plan", "--set", "emr.release_label=emr-6.15.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert "emr.release_label: 'emr-6.15.0': emr-7.x only" in refused.stderr


def test_the_nodes_lock_is_exact_current_and_cpu_only(tmp_path):
    from llm_decoder_airflow import wheelhouse

    wheelhouse.check_lock_current()  # pyproject.toml changed without `make lock` fails here
    text = wheelhouse.LOCK_PATH.read_text()
    pins = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]
    assert pins and all(re.fullmatch(r"[a-z0-9.-]+==\S+ \\", line) for line in pins)
    assert text.count("--hash=sha256:") == len(pins)
    versions = wheelhouse.locked_versions()
    assert versions["torch"] == "2.13.0+cpu" and "pyspark" not in versions and "pip" in versions
    assert not any(name.startswith("nvidia-") for name in versions)  # no CUDA on CPU nodes
    stale = tmp_path / "nodes.lock"
    stale.write_text(re.sub(r"(?m)^tokenizers==.*\n.*\n", "", text))
    with pytest.raises(InputError, match=r"^nodes.lock is out of date: .*tokenizers.*run `make lock`$"):
        wheelhouse.check_lock_current(stale)


def _fake_wheelhouse(path, names=("a-1.0-py3-none-any.whl", "nodes.lock")):
    from llm_decoder_airflow import wheelhouse

    path.mkdir(parents=True)
    for name in names:
        (path / name).write_text(name)
    manifest = {"files": {name: "sha" for name in names}}
    (path / wheelhouse.MANIFEST).write_text(json.dumps(manifest))
    return path


def test_the_wheelhouse_is_staged_once_with_its_manifest_last(tmp_path, s3):
    from airflow_testing import BUCKET
    from llm_decoder_airflow import wheelhouse

    files, uri = FileStore("aws_default"), f"s3://{BUCKET}/p/wheelhouse/abc"
    # A file missing locally stops the upload before the manifest: the next staging retries.
    broken = _fake_wheelhouse(tmp_path / "broken")
    (broken / "nodes.lock").unlink()
    with pytest.raises(FileNotFoundError):
        wheelhouse.stage(files, uri, broken)
    assert files.exists(f"{uri}/a-1.0-py3-none-any.whl") and not files.exists(f"{uri}/{wheelhouse.MANIFEST}")

    built = _fake_wheelhouse(tmp_path / "built")
    assert wheelhouse.stage(files, uri, built) is True
    assert files.read_text(f"{uri}/nodes.lock") == "nodes.lock" and files.exists(
        f"{uri}/{wheelhouse.MANIFEST}"
    )
    # Reused by later runs, even from a machine without the local build.
    assert wheelhouse.stage(files, uri, tmp_path / "absent") is False


def test_staging_without_a_wheelhouse_is_one_error_and_stages_nothing(tmp_path, s3, monkeypatch):
    from airflow_testing import BUCKET
    from llm_decoder_airflow import wheelhouse

    monkeypatch.setattr(wheelhouse, "BUILD_DIR", tmp_path / "build")  # no `make wheelhouse` here
    code = f"s3://{BUCKET}/p/runs/r1/code"
    expected = rf"no wheelhouse for the nodes' lock at s3://{BUCKET}/p/wheelhouse/{wheelhouse.lock_hash()}/MANIFEST.json"
    with pytest.raises(InputError, match=re.escape(expected) + ".*run `make wheelhouse`"):
        staging.stage_code(FileStore("aws_default"), code, "run: {}\n")
    assert not FileStore("aws_default").exists(f"{code}/{staging.CONFIG_FILE}")


def test_the_nodes_install_from_the_staged_wheelhouse_with_no_index():
    from llm_decoder_airflow import wheelhouse

    spec = emr.cluster_spec(EmrSettings(bucket="b", prefix="p"), "r1", "s3://b/p/runs/r1/code")
    args = spec["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[args.index("--wheelhouse") + 1] == f"s3://b/p/wheelhouse/{wheelhouse.lock_hash()}"
    assert args[args.index("--requirements") + 1] == "s3://b/p/runs/r1/code/requirements.txt"
    command = wheelhouse.bootstrap_pip_command()
    assert (
        command.startswith("<--venv>/bin/python")
        and "--no-index" in command
        and "--require-hashes" in command
    )


def test_transport_errors_are_transient_and_a_bad_request_is_not():
    """What the watchers ride out (the step's state is unknown) and what fails them at once."""
    import aiohttp
    from botocore.exceptions import ClientError, EndpointConnectionError
    from llm_decoder_airflow.operators import is_transient

    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(aiohttp.ServerDisconnectedError())  # a body cut off in the trigger
    assert is_transient(aiohttp.ClientPayloadError("cut off"))
    throttled = {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    assert is_transient(ClientError(throttled, "DescribeStep"))
    invalid = {"Error": {"Code": "ValidationException"}, "ResponseMetadata": {"HTTPStatusCode": 400}}
    assert not is_transient(ClientError(invalid, "DescribeStep"))
    assert not is_transient(KeyError("Step"))
