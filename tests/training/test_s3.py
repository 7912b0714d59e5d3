"""The train step with the run root on S3 (a moto server on 127.0.0.1), as on EMR."""

from __future__ import annotations

import json

import pytest

from spark_jobs.common import storage
from spark_jobs.common.errors import TrainingError
from spark_jobs.steps import train


@pytest.fixture
def s3_root(s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="runs")
    return "s3://runs/prefix"


def test_train_reads_writes_and_resumes_on_s3(s3_root, new_run, tiny_config, upload_tree):
    local_root, run_id = new_run()
    for step in ("preprocess", "window"):
        upload_tree(str(local_root / "runs" / run_id / step), f"{s3_root}/runs/{run_id}/{step}")
    common = ("training.max_steps=8", "training.checkpoint_interval=4")
    with pytest.raises(TrainingError, match=r"at step 6; last good checkpoint: s3://runs/prefix/.*/step-4"):
        train.run(tiny_config(s3_root, run_id, *common, "training.debug_nan_at_step=6"))
    summary = train.run(tiny_config(s3_root, run_id, *common))  # resumes from step-4 on S3

    run = f"{s3_root}/runs/{run_id}"
    assert summary["steps"] == 8 and summary["checkpoint"] == f"{run}/checkpoints/step-8"
    assert storage.is_complete(f"{run}/train") and storage.is_complete(f"{run}/metrics")
    assert storage.exists(f"{run}/train/model/model.safetensors")
    assert json.loads(storage.read_text(f"{run}/metrics/summary.json"))["steps"] == 8
    steps = [json.loads(line) for line in storage.read_text(f"{run}/metrics/steps.jsonl").splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "train"] == [5]
    assert "plots/loss.png" in storage.read_text(f"{run}/metrics/report.md")
    assert storage.list_dir(f"{run}/checkpoints") == ["step-4", "step-8"]
