"""The EMR DAG end to end with dag.test() against a moto server on 127.0.0.1.

Real provider operators, real boto3 over HTTP; the harness (conftest) moves EMR steps on,
which moto never does. Each run must end with its cluster TERMINATED, whatever failed.

The step sensors are deferrable by default: dag.test() runs their trigger in line (in this
process, until it fires), then resumes the task, as a triggerer would.
"""

from __future__ import annotations

import json
import threading
from typing import NamedTuple

import pytest
from airflow_testing import BUCKET, PREFIX, fresh_dag, step_base_name, step_log_error
from conftest import aws_connection
from launchers.emr_box.proxy import OutageProxy

from spark_jobs.common.pipeline import STEP_NAMES
from spark_jobs.reporting.summary import HEADLINE_KEYS

pytestmark = pytest.mark.timeout(180)


class Run(NamedTuple):
    state: str
    tasks: dict[str, str]  # task id: state
    tries: dict[str, int]  # task id: try number (1: it never retried)


def run_emr_dag(dagbag, conf: dict | None = None) -> Run:
    """Run llm_decoder_emr with dag.test(); return the run's state and its tasks' states and tries."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    dag = fresh_dag("llm_decoder_emr")
    dag_run = dag.test(run_conf=conf or {})
    with create_session() as session:
        tis = session.query(TaskInstance).filter(
            TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dag_run.run_id
        )
        states = {ti.task_id: str(ti.state) for ti in tis}
        tries = {ti.task_id: ti.try_number for ti in tis}
    return Run(str(dag_run.state), states, tries)


def not_succeeded(tasks: dict[str, str]) -> str:
    """The tasks that did not succeed, short enough for pytest to print whole."""
    return ", ".join(f"{task}={state}" for task, state in tasks.items() if state != "success") or "none"


def clusters_of_run(emr_client, known: set[str]) -> list[dict]:
    """The clusters this test created (those not in `known`)."""
    found = emr_client.list_clusters()["Clusters"]
    return [c for c in found if c["Id"] not in known]


def all_cluster_ids(emr_client) -> set[str]:
    return {c["Id"] for c in emr_client.list_clusters()["Clusters"]}


def test_success_path(dagbag, harness, s3, emr_client, caplog):
    before = all_cluster_ids(emr_client)
    with harness(until_watched=1) as h:  # each sensor finds its step running, and defers
        state, tasks, tries = run_emr_dag(dagbag)
    assert state == "success", not_succeeded(tasks)
    assert set(tasks.values()) == {"success"}
    assert set(tries.values()) == {1}
    assert h.completed == list(STEP_NAMES)
    # dag.test() runs a deferred task's trigger in line, then resumes the task: every sensor deferred
    assert caplog.text.count("[DAG TEST] running trigger in line") == len(STEP_NAMES)

    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] == "TERMINATED"
    assert detail["ReleaseLabel"] == "emr-7.12.0"
    tags = {t["Key"]: t["Value"] for t in detail["Tags"]}
    assert tags["project"] == "llm-decoder"
    assert tags["for-use-with-amazon-emr-managed-policies"] == "true"
    assert detail["ServiceRole"] == "EMR_DefaultRole_V2"
    # stage created the security configuration (IMDSv2, encryption at rest) that the cluster names
    security = emr_client.describe_security_configuration(Name=detail["SecurityConfiguration"])
    assert '"MinimumInstanceMetadataServiceVersion":2' in security["SecurityConfiguration"]
    run_id = tags["run_id"]

    steps = emr_client.list_steps(ClusterId=cluster["Id"])["Steps"]
    assert sorted(step_base_name(s["Name"]) for s in steps) == sorted(STEP_NAMES)
    assert all(s["Status"]["State"] == "COMPLETED" for s in steps)
    assert all(s["ActionOnFailure"] == "CANCEL_AND_WAIT" for s in steps)

    run = f"{PREFIX}/runs/{run_id}"
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{run}/summary.json")["Body"].read())
    assert set(HEADLINE_KEYS) <= set(summary)
    assert summary["run_id"] == run_id and summary["val_loss"] == 3.4
    assert summary["status"] == "complete" and summary["missing"] == []
    assert summary["pipeline"]["cluster"] == cluster["Id"]
    # what the cluster cost: its instance groups at configs/emr.yaml's prices, for as long as it ran
    assert summary["instance_hours"] == 0  # moto's NormalizedInstanceHours
    assert 0 < summary["cluster_hours"] < 0.1
    # both are rounded to 4 decimals: up to 0.5e-4 off each, the hours' error times 1.2 USD/h
    assert summary["cost_usd_estimate"] == pytest.approx(1.2 * summary["cluster_hours"], abs=1.2e-4)
    assert summary["cost_basis"].startswith("estimate: 1 x m5.xlarge + 2 x m5.2xlarge")
    report = s3.get_object(Bucket=BUCKET, Key=f"{run}/report.md")["Body"].read().decode()
    assert "| val_loss | 3.4 |" in report
    assert "| cost (estimate), USD |" in report
    html = s3.get_object(Bucket=BUCKET, Key=f"{run}/metrics/report.html")["Body"].read().decode()
    assert "Cluster and cost (estimate)" in html

    staged = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/code/")["Contents"]
    names = {o["Key"].rsplit("/", 1)[1] for o in staged}
    assert {"spark_jobs.zip", "config.yaml", "install_python_deps.sh", "requirements.txt"} <= names
    assert {"preprocess.py", "window.py", "train.py"} <= names

    champion = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/models/champion.json")["Body"].read())
    assert champion["val_loss"] <= 3.4


@pytest.mark.parametrize("failing", STEP_NAMES)
def test_a_failed_step_fails_the_run_and_terminates_the_cluster(failing, dagbag, harness, emr_client, capfd):
    before = all_cluster_ids(emr_client)
    with harness(fail_step=failing) as h:
        state, tasks, tries = run_emr_dag(dagbag)
    assert state == "failed", not_succeeded(tasks)
    assert tasks[f"watch_{failing}"] == "failed"
    assert tries[f"watch_{failing}"] == 1  # a failed step is final: no retry, although retries=1
    assert tasks["terminate_cluster"] == "success"
    assert tasks["collect_metrics"] == "upstream_failed"
    assert tasks["promote_model"] == "upstream_failed"
    assert h.completed == list(STEP_NAMES[: STEP_NAMES.index(failing)])

    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] == "TERMINATED"
    steps = emr_client.list_steps(ClusterId=cluster["Id"])["Steps"]
    names = [step_base_name(s["Name"]) for s in steps]
    assert sorted(names) == sorted(STEP_NAMES)  # each step added exactly once
    states = {step_base_name(s["Name"]): s["Status"]["State"] for s in steps}
    assert states[failing] == "FAILED"
    assert all(states[later] == "CANCELLED" for later in STEP_NAMES[STEP_NAMES.index(failing) + 1 :])
    log = capfd.readouterr().out  # dag.test() prints the task logs
    assert f"simulated failure of the {failing} step" in log
    assert "stderr.gz" in log  # the failing step's log location
    # the error line of the step's own logs in S3 (the cluster-mode driver's container log)
    assert (
        f"step log: {step_log_error(failing)} (in s3://{BUCKET}/{PREFIX}/emr-logs/{cluster['Id']}/containers/"
        in log
    )


def test_a_failed_step_whose_logs_are_not_in_s3_yet_says_so(dagbag, harness, emr_client, emr_settings, capfd):
    emr_settings(step_log_wait_s=1)
    before = all_cluster_ids(emr_client)
    with harness(fail_step="window", step_logs=False):
        state, tasks, tries = run_emr_dag(dagbag)
    assert state == "failed", not_succeeded(tasks)
    assert tasks["watch_window"] == "failed" and tasks["terminate_cluster"] == "success"
    [cluster] = clusters_of_run(emr_client, before)
    log = capfd.readouterr().out
    assert "simulated failure of the window step" in log
    assert "step logs not in S3 yet after 1 s (EMR uploads them every few minutes): look at " in log
    assert f"emr-logs/{cluster['Id']}/steps/" in log


def test_cluster_creation_failure_fails_the_run_and_terminates(dagbag, emr_moto, s3, emr_client, capfd):
    from moto.core.utils import utcnow
    from moto.emr.models import Cluster

    def bootstrap_fails(self):
        self.state = "TERMINATED_WITH_ERRORS"
        self.last_state_change_reason = "bootstrap action 1 returned a non-zero return code"
        self.end_datetime = utcnow()

    emr_moto.setattr(Cluster, "run_bootstrap_actions", bootstrap_fails)
    before = all_cluster_ids(emr_client)
    state, tasks, _ = run_emr_dag(dagbag)
    assert state == "failed", not_succeeded(tasks)
    assert tasks["create_cluster"] == "failed"
    assert "bootstrap action 1 returned a non-zero return code" in capfd.readouterr().out
    assert tasks["add_steps"] == "upstream_failed"
    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] in ("TERMINATED", "TERMINATED_WITH_ERRORS")
    assert emr_client.list_steps(ClusterId=cluster["Id"])["Steps"] == []


def test_add_steps_twice_adds_each_step_once(s3, emr_client):
    from airflow_testing import REGION
    from llm_decoder_airflow.emr import add_missing_steps, step_specs
    from llm_decoder_airflow.pipeline import run_config

    cluster = emr_client.run_job_flow(
        Name="idempotence",
        ReleaseLabel="emr-7.12.0",
        Instances={
            "InstanceCount": 1,
            "MasterInstanceType": "m5.xlarge",
            "KeepJobFlowAliveWhenNoSteps": True,
        },
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    specs = step_specs("r1", f"s3://{BUCKET}/{PREFIX}/runs/r1/code", run_config({}, [], "test"))
    first = add_missing_steps(cluster, specs[:1], "aws_default", REGION)  # an attempt that died half-way
    second = add_missing_steps(cluster, specs, "aws_default", REGION)
    third = add_missing_steps(cluster, specs, "aws_default", REGION)
    assert second == third and list(second) == list(STEP_NAMES)
    assert second["preprocess"] == first["preprocess"]
    assert len(emr_client.list_steps(ClusterId=cluster)["Steps"]) == len(STEP_NAMES)
    emr_client.terminate_job_flows(JobFlowIds=[cluster])


def test_missing_bucket_fails_before_any_cluster(dagbag, harness, emr_client, capfd):
    before = all_cluster_ids(emr_client)
    with harness():
        state, tasks, tries = run_emr_dag(dagbag, {"bucket": "no-such-bucket"})
    assert state == "failed"
    assert tasks["stage"] == "failed" and tries["stage"] == 1  # a retry cannot create the bucket
    assert clusters_of_run(emr_client, before) == []
    assert "S3 bucket 'no-such-bucket' does not exist" in capfd.readouterr().out


def test_a_run_the_cluster_cannot_hold_fails_at_stage(dagbag, harness, emr_client, capfd):
    before = all_cluster_ids(emr_client)
    conf = {
        "strategy": "ddp",
        "instance_type": "m5.xlarge",
        "instance_count": 2,
        "overrides": ["training.ddp_local_mode=false", "training.num_workers=8", "spark.executor_cores=4"],
    }
    with harness():
        state, tasks, tries = run_emr_dag(dagbag, conf)
    assert state == "failed"
    assert tasks["stage"] == "failed" and tries["stage"] == 1
    assert clusters_of_run(emr_client, before) == []
    assert "training.num_workers=8 needs 8 executors with spark.executor_cores=4" in capfd.readouterr().out


def test_a_step_that_hangs_is_stopped_by_the_timeout_and_the_cluster_terminated(
    dagbag, harness, emr_client, emr_settings, capfd
):
    emr_settings(step_timeout_s=4)
    before = all_cluster_ids(emr_client)
    with harness(hold_step="train"):  # train never ends
        state, tasks, tries = run_emr_dag(dagbag)
    assert state == "failed", not_succeeded(tasks)
    assert tasks["watch_train"] == "failed" and tries["watch_train"] == 1  # a timeout is not retried
    assert tasks["terminate_cluster"] == "success"
    assert tasks["collect_metrics"] == "upstream_failed"
    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] == "TERMINATED"
    assert "still RUNNING after the sensor's timeout of 4 s" in capfd.readouterr().out


OUTAGE_S = 20  # longer than botocore's own retries of one call (5 attempts, at most ~15 s of backoff)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferred", "poke"])
def test_an_emr_api_outage_while_a_step_runs_does_not_fail_the_run(
    deferrable, dagbag, harness, emr_client, emr_settings, moto_endpoint, monkeypatch, capfd
):
    """The EMR API goes away for OUTAGE_S while train is RUNNING: the sensor waits it out, the
    run succeeds, and the cluster is terminated once, after training."""
    emr_settings(deferrable_sensors=deferrable)
    before = all_cluster_ids(emr_client)
    with OutageProxy(int(moto_endpoint.rsplit(":", 1)[1])) as proxy, harness(hold_step="train") as h:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(f"http://127.0.0.1:{proxy.port}"))

        def outage_during_train() -> None:
            h.wait_watched("train", timeout=120)  # watch_train is waiting for it
            proxy.outage(OUTAGE_S)
            h.release()  # train completes only after the API is back

        outage = threading.Thread(target=outage_during_train, daemon=True)
        outage.start()
        state, tasks, tries = run_emr_dag(dagbag)
        outage.join(timeout=5)
    out = capfd.readouterr().out
    assert state == "success", not_succeeded(tasks)
    assert set(tasks.values()) == {"success"}
    assert h.completed == list(STEP_NAMES)  # train finished on the cluster: it was not terminated
    assert tries["watch_train"] == 1  # waited out inside the sensor, not by a task retry
    assert tries["terminate_cluster"] == 1
    assert "EMR API not answering (EndpointConnectionError" in out  # errors got past botocore
    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] == "TERMINATED"


def test_an_emr_api_outage_as_a_watch_task_starts_does_not_fail_the_run(
    dagbag, harness, emr_client, moto_endpoint, monkeypatch, capfd
):
    """The API goes away just before watch_train's first look (on a fast cluster the step can
    already run by then): the watcher asks again until the API answers, within the same try."""
    import time

    from llm_decoder_airflow import operators

    plain_lookup = operators.step_on_cluster
    before = all_cluster_ids(emr_client)
    with OutageProxy(int(moto_endpoint.rsplit(":", 1)[1])) as proxy, harness() as h:
        monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(f"http://127.0.0.1:{proxy.port}"))

        def dark_before_the_first_look_at_train(client, job_flow_id, spec, known_id):
            if step_base_name(spec["Name"]) == "train" and proxy.outages == 0:
                threading.Thread(target=proxy.outage, args=(OUTAGE_S,), daemon=True).start()
                while proxy.outages == 0:
                    time.sleep(0.01)
            return plain_lookup(client, job_flow_id, spec, known_id)

        monkeypatch.setattr(operators, "step_on_cluster", dark_before_the_first_look_at_train)
        state, tasks, tries = run_emr_dag(dagbag)
    out = capfd.readouterr().out
    assert state == "success", not_succeeded(tasks)
    assert proxy.outages == 1
    assert tries["watch_train"] == 1  # waited out inside the task, not by a task retry
    assert "EMR API not answering (EndpointConnectionError" in out
    assert h.completed == list(STEP_NAMES)
    [cluster] = clusters_of_run(emr_client, before)
    assert emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]["Status"]["State"] == "TERMINATED"


def test_a_cluster_whose_id_never_reached_xcom_is_terminated_by_its_run_id_tag(
    dagbag, emr_moto, s3, emr_client, capfd
):
    """create_cluster dies after RunJobFlow returned (a lost worker): the teardown finds the
    cluster by its run_id tag and terminates it."""
    from airflow.providers.amazon.aws.hooks.emr import EmrHook

    plain_create = EmrHook.create_job_flow

    def create_then_die(self, *args, **kwargs):
        plain_create(self, *args, **kwargs)
        raise RuntimeError("worker lost right after RunJobFlow")

    emr_moto.setattr(EmrHook, "create_job_flow", create_then_die)
    before = all_cluster_ids(emr_client)
    state, tasks, _ = run_emr_dag(dagbag)
    assert state == "failed", not_succeeded(tasks)
    assert tasks["create_cluster"] == "failed" and tasks["add_steps"] == "upstream_failed"
    assert tasks["terminate_cluster"] == "success"
    [cluster] = clusters_of_run(emr_client, before)
    detail = emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]
    assert detail["Status"]["State"] == "TERMINATED"
    assert "no cluster id from create_cluster: active clusters tagged run_id=" in capfd.readouterr().out


def test_the_owner_lookup_terminates_only_the_runs_own_active_clusters(emr_client):
    """The teardown's logic without a cluster id, on clusters made with moto directly."""
    from airflow_testing import REGION
    from llm_decoder_airflow.emr import active_clusters_of_run
    from llm_decoder_airflow.operators import EmrTerminateRunClusters

    def cluster(run_id: str) -> str:
        return emr_client.run_job_flow(
            Name=f"owner-{run_id}",
            ReleaseLabel="emr-7.12.0",
            Instances={
                "InstanceCount": 1,
                "MasterInstanceType": "m5.xlarge",
                "KeepJobFlowAliveWhenNoSteps": True,
            },
            JobFlowRole="EMR_EC2_DefaultRole",
            ServiceRole="EMR_DefaultRole_V2",
            Tags=[{"Key": "project", "Value": "llm-decoder"}, {"Key": "run_id", "Value": run_id}],
        )["JobFlowId"]

    orphan, other = cluster("r-orphan"), cluster("r-other")
    assert active_clusters_of_run(emr_client, "r-orphan") == [orphan]
    terminate = EmrTerminateRunClusters(
        task_id="terminate_cluster", job_flow_id=None, cluster_run_id="r-orphan", region_name=REGION
    )
    terminate.execute({})
    state = {
        c: emr_client.describe_cluster(ClusterId=c)["Cluster"]["Status"]["State"] for c in (orphan, other)
    }
    assert state == {orphan: "TERMINATED", other: "WAITING"}
    assert active_clusters_of_run(emr_client, "r-orphan") == []
    emr_client.terminate_job_flows(JobFlowIds=[other])


def test_a_missing_corpus_fails_at_stage_before_any_cluster(dagbag, harness, emr_client, capfd):
    before = all_cluster_ids(emr_client)
    with harness():
        state, tasks, tries = run_emr_dag(dagbag, {"corpus_uri": f"s3://{BUCKET}/data/no-such-corpus.txt"})
    assert state == "failed"
    assert tasks["stage"] == "failed" and tries["stage"] == 1  # a retry cannot create the corpus
    assert clusters_of_run(emr_client, before) == []
    assert f"corpus not found: s3://{BUCKET}/data/no-such-corpus.txt (" in capfd.readouterr().out


def clear_like_the_ui(dag, run_id: str, task_id: str) -> None:
    """What the UI's Clear on one task does (downstream included): the task, what follows it, and
    the setups and teardowns around it (create_cluster, stage, terminate_cluster)."""
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.state import DagRunState

    scheduler_dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
    subset = scheduler_dag.partial_subset(task_ids=[task_id], include_downstream=True, include_upstream=False)
    subset.clear(run_id=run_id, dag_run_state=DagRunState.RUNNING)


def test_clearing_a_failed_train_runs_train_alone_on_a_new_cluster(dagbag, harness, emr_client, monkeypatch):
    """A train step that failed for good: the user clears watch_train. The run gets a new cluster
    (create_cluster is a setup, cleared with it) holding one new train step, not the whole
    pipeline again (preprocess and window are complete in S3) and not a duplicate."""
    from airflow.serialization.definitions.dag import SerializedDAG

    before = all_cluster_ids(emr_client)
    dag = fresh_dag("llm_decoder_emr")
    with harness(fail_step="train"):
        first = dag.test(run_conf={})
    assert str(first.state) == "failed"
    [old] = clusters_of_run(emr_client, before)

    clear_like_the_ui(dag, first.run_id, "watch_train")
    # dag.test() always starts a fresh run (it clears every task and recreates the run); here it
    # must continue the cleared one, as the scheduler would: same loop, the existing run.
    import airflow.models.dagrun as dagrun_module
    from sqlalchemy import select

    def existing_run(*, dag, session, **_):
        run = session.scalar(select(dagrun_module.DagRun).where(dagrun_module.DagRun.run_id == first.run_id))
        run.dag = dag
        return run

    monkeypatch.setattr(SerializedDAG, "clear_dags", classmethod(lambda *args, **kwargs: 0))
    monkeypatch.setattr(dagrun_module, "get_or_create_dagrun", existing_run)
    with harness() as h:
        again = fresh_dag("llm_decoder_emr").test()
    assert again.run_id == first.run_id
    assert str(again.state) == "success"
    assert h.completed == ["train"]

    [new] = clusters_of_run(emr_client, before | {old["Id"]})
    new_steps = emr_client.list_steps(ClusterId=new["Id"])["Steps"]
    assert [(step_base_name(s["Name"]), s["Status"]["State"]) for s in new_steps] == [("train", "COMPLETED")]
    old_steps = {
        step_base_name(s["Name"]): s["Status"]["State"]
        for s in emr_client.list_steps(ClusterId=old["Id"])["Steps"]
    }
    assert old_steps == {"preprocess": "COMPLETED", "window": "COMPLETED", "train": "FAILED"}
    for cluster in (old, new):
        assert (
            emr_client.describe_cluster(ClusterId=cluster["Id"])["Cluster"]["Status"]["State"] == "TERMINATED"
        )
