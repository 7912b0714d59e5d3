"""A step's output is committed only when the attempt succeeded: a failed re-run loses nothing,
locally and on S3 (a moto server over HTTP), and a commit cut short is finished by the next reader."""

from __future__ import annotations

import boto3
import pytest

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError

BUCKET = "step-output"


@pytest.fixture(params=["local", "s3"])
def step_uri(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "runs" / "r1" / "preprocess")
    request.getfixturevalue("s3_endpoint")
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    # moto keeps its buckets per process, not per server: one prefix per test
    return f"s3://{BUCKET}/{tmp_path.name}/runs/r1/preprocess"


def _write_good(step_uri: str, text: str) -> None:
    with storage.step_output(step_uri) as out:
        storage.write_text(storage.join(out, "tokens", "part-0.txt"), text)
        storage.write_text(storage.join(out, "stats.json"), '{"tokens": 1}')


def _siblings(step_uri: str) -> list[str]:
    parent = step_uri.rsplit("/", 1)[0]
    return storage.list_dir(parent)


def test_a_failed_rerun_leaves_the_last_good_output_complete(step_uri):
    _write_good(step_uri, "first")
    with pytest.raises(InputError, match="bad corpus"), storage.step_output(step_uri) as out:
        storage.write_text(storage.join(out, "tokens", "part-0.txt"), "half of the second")
        raise InputError("bad corpus")
    assert storage.is_complete(step_uri)
    assert storage.read_text(storage.join(step_uri, "tokens", "part-0.txt")) == "first"
    assert _siblings(step_uri) == ["preprocess"]  # the failed attempt is gone


def test_a_successful_rerun_replaces_the_output_whole(step_uri):
    _write_good(step_uri, "first")
    with storage.step_output(step_uri) as out:
        storage.write_text(storage.join(out, "tokens", "part-1.txt"), "second")
    assert storage.is_complete(step_uri)
    assert storage.list_dir(storage.join(step_uri, "tokens")) == ["part-1.txt"]  # nothing of the first
    assert not storage.exists(storage.join(step_uri, "stats.json"))
    assert _siblings(step_uri) == ["preprocess"]


def test_an_attempt_in_progress_never_hides_the_previous_output(step_uri):
    _write_good(step_uri, "first")
    with storage.step_output(step_uri) as out:
        storage.write_text(storage.join(out, "tokens", "part-0.txt"), "second")
        storage.require_complete(step_uri, "preprocess")  # a reader meanwhile: the old one, complete
        assert storage.read_text(storage.join(step_uri, "tokens", "part-0.txt")) == "first"
    assert storage.read_text(storage.join(step_uri, "tokens", "part-0.txt")) == "second"


def test_a_commit_cut_short_is_finished_by_the_next_reader(step_uri):
    """The attempt had its marker; the process died after the old output's marker was removed."""
    _write_good(step_uri, "first")
    attempt = storage.join(step_uri.rsplit("/", 1)[0], ".preprocess.attempt-dead0001")
    storage.write_text(storage.join(attempt, "tokens", "part-0.txt"), "second")
    storage.write_text(storage.join(attempt, storage.SUCCESS_MARKER), "")
    storage.delete(storage.join(step_uri, storage.SUCCESS_MARKER))

    storage.require_complete(step_uri, "preprocess")
    assert storage.read_text(storage.join(step_uri, "tokens", "part-0.txt")) == "second"
    assert _siblings(step_uri) == ["preprocess"]


def test_an_unfinished_attempt_alone_is_not_an_output(step_uri):
    attempt = storage.join(step_uri.rsplit("/", 1)[0], ".preprocess.attempt-dead0002")
    storage.write_text(storage.join(attempt, "tokens", "part-0.txt"), "half")
    with pytest.raises(InputError, match="preprocess output not found"):
        storage.require_complete(step_uri, "preprocess")
    _write_good(step_uri, "first")  # the next attempt clears the dead one
    assert _siblings(step_uri) == ["preprocess"]
