"""What a run costs: the price table, the estimate before a run, the cost after it, and the
refusals at staging (an instance type without a price, GPU training), before any cluster exists."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from airflow_testing import BUCKET, REGION, REPO, mark_wheelhouse_staged
from llm_decoder_airflow import cost, emr
from llm_decoder_airflow.collect import collect_run
from llm_decoder_airflow.files import FileStore
from llm_decoder_airflow.plan import plan
from llm_decoder_airflow.settings import EmrSettings, load_emr_config, read_yaml, split_config
from llm_decoder_airflow.tasks import stage_emr_run

from spark_jobs.common.errors import ConfigError
from spark_jobs.reporting.html.render import build_html_report

PRICES = {"m5.xlarge": 0.24, "m5.2xlarge": 0.48, "c5.2xlarge": 0.425}


def test_the_price_table_covers_the_suggested_instance_types():
    _, settings = split_config(read_yaml(REPO / "configs" / "emr.yaml"), "configs/emr.yaml")
    prices = settings.emr.prices
    for instance_type in ("m5.xlarge", "m5.2xlarge", "m5.4xlarge", "c5.2xlarge", "r5.xlarge",
                          "g4dn.xlarge", "g5.xlarge", "m6g.xlarge", "m7g.xlarge"):  # fmt: skip
        assert prices[instance_type] > 0, instance_type
    assert settings.emr.prices_taken is not None
    # the README's "about 1.2 USD per hour" of the default cluster: 1 × m5.xlarge + 2 × m5.2xlarge
    assert cost.usd_per_hour(settings.emr) == pytest.approx(1.2)


def test_estimate_is_instances_times_prices_times_the_median_of_earlier_runs():
    cluster = EmrSettings(
        prices=PRICES,
        master_instance_type="m5.xlarge",
        core_instance_type="m5.2xlarge",
        core_instance_count=3,
        task_instance_type="c5.2xlarge",
        task_instance_count=2,
        default_run_hours=1.5,
    )
    per_hour = 0.24 + 3 * 0.48 + 2 * 0.425
    assert cost.usd_per_hour(cluster) == pytest.approx(per_hour)

    earlier = cost.estimate(cluster, [0.5, 4.0, 2.0])  # median 2 h
    assert earlier["estimate_usd"] == round(2 * per_hour, 2)
    assert earlier["estimate_hours"] == 2.0
    assert "median cluster hours of 3 earlier run(s)" in earlier["estimate_basis"]
    assert "1 x m5.xlarge + 3 x m5.2xlarge + 2 x c5.2xlarge" in earlier["estimate_basis"]

    none_recorded = cost.estimate(cluster, [])
    assert none_recorded["estimate_usd"] == round(1.5 * per_hour, 2)
    assert "emr.default_run_hours: no earlier run recorded" in none_recorded["estimate_basis"]
    assert "earlier runs not read" in cost.estimate(cluster)["estimate_basis"]


def test_make_emr_plan_prints_an_estimate_and_its_basis():
    printed = plan([])
    assert printed["estimate_usd"] == 1.2  # 1 h (emr.default_run_hours) of the default cluster
    assert "emr.default_run_hours" in printed["estimate_basis"]
    assert plan(["emr.core_instance_count=4"])["estimate_usd"] == round(0.24 + 4 * 0.48, 2)


@pytest.mark.parametrize(
    "emr_update, params, message",
    [
        (
            {},
            {"instance_type": "m5.24xlarge"},
            r"m5\.24xlarge \(emr\.core_instance_type or Param instance_type\)",
        ),
        ({"master_instance_type": "m5.8xlarge"}, {}, r"m5\.8xlarge \(emr\.master_instance_type\)"),
        (
            {"task_instance_type": "c6i.2xlarge", "task_instance_count": 1},
            {},
            r"c6i\.2xlarge \(emr\.task_instance_type\)",
        ),
    ],
)
def test_an_instance_type_without_a_price_is_refused_at_staging(emr_update, params, message):
    raw, settings = load_emr_config()
    settings = settings.model_copy(update={"emr": settings.emr.model_copy(update=emr_update)})
    # no AWS call: the refusal comes before the bucket check, the upload and the cluster
    with pytest.raises(ConfigError, match=rf"^instance type {message} has no price in emr\.prices") as error:
        stage_emr_run(raw, settings, params, "manual__unpriced")
    assert "\n" not in str(error.value)


def test_gpu_training_is_refused_at_config_load_and_at_staging():
    raw = read_yaml(REPO / "configs" / "emr.yaml")
    raw["emr"]["gpu"] = True
    with pytest.raises(
        ConfigError, match=r"^emr\.yaml: emr\.gpu: GPU training is not supported yet: .*use CPU"
    ):
        split_config(raw, "emr.yaml")
    raw["emr"].update(gpu=False, task_instance_type="g5.xlarge", task_instance_count=1)
    with pytest.raises(
        ConfigError, match=r"^emr\.yaml: emr\.task_instance_type: g5\.xlarge is a GPU instance"
    ):
        split_config(raw, "emr.yaml")

    # a GPU core type from the trigger form's Param, at staging
    pipeline_raw, settings = load_emr_config()
    with pytest.raises(
        ConfigError, match=r"core_instance_type: g4dn\.xlarge is a GPU instance type: GPU"
    ) as error:
        stage_emr_run(pipeline_raw, settings, {"instance_type": "g4dn.xlarge"}, "manual__gpu")
    assert "\n" not in str(error.value)
    # and the bootstrap is never asked for a CUDA torch
    args = emr.cluster_spec(settings.emr, "r1", "s3://b/code")["BootstrapActions"][0][
        "ScriptBootstrapAction"
    ]["Args"]
    assert "gpu" not in args and args[args.index("--torch") + 1] == "cpu"


def test_graviton_nodes_are_refused_at_config_load_and_at_staging():
    """The nodes' wheelhouse is x86_64 only: an aarch64 node would fail in bootstrap, billed."""
    raw = read_yaml(REPO / "configs" / "emr.yaml")
    raw["emr"]["master_instance_type"] = "m7g.xlarge"
    with pytest.raises(
        ConfigError, match=r"^emr\.yaml: emr\.master_instance_type: m7g\.xlarge is a Graviton instance type"
    ):
        split_config(raw, "emr.yaml")
    pipeline_raw, settings = load_emr_config()
    with pytest.raises(
        ConfigError, match=r"core_instance_type: m6g\.2xlarge is a Graviton .*x86_64"
    ) as error:
        stage_emr_run(pipeline_raw, settings, {"instance_type": "m6g.2xlarge"}, "manual__graviton")
    assert "\n" not in str(error.value)


def _cluster(emr_client, core_type: str = "m5.2xlarge") -> str:
    groups = [
        {"InstanceRole": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1, "Market": "ON_DEMAND"},
        {"InstanceRole": "CORE", "InstanceType": core_type, "InstanceCount": 2, "Market": "ON_DEMAND"},
    ]
    return emr_client.run_job_flow(
        Name="cost-test",
        ReleaseLabel="emr-7.12.0",
        Instances={"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole_V2",
    )["JobFlowId"]


def test_cluster_cost_is_instance_groups_times_prices_times_hours(emr_client):
    cluster_id = _cluster(emr_client)
    created = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["Timeline"][
        "CreationDateTime"
    ]
    figures = cost.cluster_cost(
        emr_client, cluster_id, PRICES, "2026-11-29", now=created + timedelta(hours=2)
    )
    assert figures["cost_usd_estimate"] == pytest.approx(2 * (0.24 + 2 * 0.48))
    assert figures["cluster_hours"] == 2.0
    assert figures["instance_hours"] == 0  # moto's NormalizedInstanceHours (EMR counts them as it runs)
    assert figures["cost_basis"].startswith("estimate: 1 x m5.xlarge + 2 x m5.2xlarge")
    assert "was still running" in figures["cost_basis"]

    emr_client.terminate_job_flows(JobFlowIds=[cluster_id])
    ended = cost.cluster_cost(emr_client, cluster_id, PRICES)
    assert "creation to end" in ended["cost_basis"]
    assert 0 <= ended["cluster_hours"] < 0.1

    unpriced = cost.cluster_cost(emr_client, _cluster(emr_client, "r5.4xlarge"), PRICES)
    assert unpriced["cost_usd_estimate"] is None
    assert unpriced["cost_basis"] == "not known: no price in emr.prices for r5.4xlarge"


def test_collect_writes_the_cost_into_summary_and_reports_and_a_local_run_has_none(emr_client, tmp_path):
    store = FileStore("aws_default", REGION)
    cluster_id = _cluster(emr_client)
    summary = collect_run(store, str(tmp_path), "emr", {"cluster": cluster_id}, EmrSettings(prices=PRICES))
    run = tmp_path / "runs" / "emr"
    written = json.loads((run / "summary.json").read_text())
    assert written["cost_usd_estimate"] == summary["cost_usd_estimate"] >= 0
    assert written["instance_hours"] == 0 and written["cluster_hours"] >= 0
    assert "| cost (estimate), USD |" in (run / "report.md").read_text()
    html = (run / "metrics" / "report.html").read_text()
    assert "Cluster and cost (estimate)" in html and "cost (estimate), USD" in html
    # report.html rendered again later (llm-decoder report) reads them from <run>/summary.json
    assert "Cluster and cost (estimate)" in build_html_report(str(run))

    local = collect_run(FileStore(None), str(tmp_path), "local", {"dag_id": "llm_decoder_local"})
    assert "cost_usd_estimate" not in local
    assert "Cluster and cost" not in (tmp_path / "runs" / "local" / "report.md").read_text()
    assert "Cluster and cost" not in (tmp_path / "runs" / "local" / "metrics" / "report.html").read_text()


def test_staging_estimates_from_the_median_hours_of_earlier_runs(s3):
    root = f"s3://{BUCKET}/cost-estimate"
    for run_id, hours in [("a", 0.5), ("b", 3.0), ("c", 2.0), ("d", None)]:
        body = json.dumps({"run_id": run_id, "cluster_hours": hours})
        s3.put_object(Bucket=BUCKET, Key=f"cost-estimate/runs/{run_id}/summary.json", Body=body.encode())
    s3.put_object(Bucket=BUCKET, Key="cost-estimate/runs/e/summary.json", Body=b"{not json")
    store = FileStore("aws_default", REGION)
    # the run being staged is not one of its own earlier runs
    assert sorted(cost.earlier_cluster_hours(store, root, "c")) == [0.5, 3.0]
    hours = cost.earlier_cluster_hours(store, root, "new")
    assert sorted(hours) == [0.5, 2.0, 3.0]
    assert (
        cost.estimate(EmrSettings(prices=PRICES, core_instance_type="m5.2xlarge"), hours)["estimate_hours"]
        == 2.0
    )
    assert cost.earlier_cluster_hours(store, f"s3://{BUCKET}/no-runs-here", "new") == []


def test_stage_logs_the_estimate_from_the_earlier_runs(s3, caplog):
    from llm_decoder_airflow.params import emr_params

    raw, settings = load_emr_config()
    params = {name: param.value for name, param in emr_params(raw, settings.emr).items()}
    params["prefix"] = "cost-staging"  # a root of its own: its earlier runs are these two
    mark_wheelhouse_staged(s3, BUCKET, "cost-staging")
    for run_id, hours in [("a", 1.0), ("b", 3.0)]:
        body = json.dumps({"cluster_hours": hours}).encode()
        s3.put_object(Bucket=BUCKET, Key=f"cost-staging/runs/{run_id}/summary.json", Body=body)
    with caplog.at_level("INFO", logger="llm_decoder_airflow.tasks"):
        staged = stage_emr_run(raw, settings, params, "manual__cost-estimate")
    assert staged["estimate"]["estimate_hours"] == 2.0  # the median of 1 h and 3 h
    assert staged["estimate"]["estimate_usd"] == round(2.0 * 1.2, 2)
    assert "median cluster hours of 2 earlier run(s)" in staged["estimate"]["estimate_basis"]
    assert f"run {staged['run_id']}: about 2.4 USD, estimate: 2.00 h" in caplog.text
