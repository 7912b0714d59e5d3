"""Storage failures are one InputError line naming the URI, never a pyarrow OSError traceback.

S3 through a moto server over HTTP, with moto's authentication switched on for the denied
cases (an unknown access key; a real IAM user without any policy); local files on disk.
"""

from __future__ import annotations

import subprocess
import sys

import boto3
import pytest
from moto.server import ThreadedMotoServer

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError


@pytest.fixture(scope="module")
def moto_url() -> str:
    """A moto server holding s3://corpora/text/corpus.txt and an IAM user `nobody` without policies."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    keys = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=url, **keys)
    s3.create_bucket(Bucket="corpora")
    s3.put_object(Bucket="corpora", Key="text/corpus.txt", Body=b"First Citizen:\nSpeak.\n")
    s3.put_object(Bucket="corpora", Key="text/latin1.txt", Body=b"caf\xe9\n")
    yield url
    server.stop()


@pytest.fixture
def s3_env(moto_url, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr(storage, "_bucket_regions", {})
    return moto_url


@pytest.fixture
def moto_auth(s3_env, monkeypatch):
    """Switch moto's IAM authentication on (moto reads these per request); returns a policy-less user's keys."""
    from moto import settings
    from moto.core.responses import ActionAuthenticatorMixin

    iam = boto3.client(
        "iam",
        endpoint_url=s3_env,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    name = f"nobody-{id(monkeypatch)}"
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
    return key["AccessKeyId"], key["SecretAccessKey"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_missing_bucket_names_the_uri(s3_env):
    with pytest.raises(InputError) as caught:
        storage.read_text("s3://no-such-bucket/corpus.txt")
    assert _one_line(caught) == (
        "cannot reach s3://no-such-bucket/corpus.txt: no such bucket: s3://no-such-bucket"
    )


def test_an_unknown_access_key_is_denied_in_one_line(moto_auth, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    for call in (storage.read_bytes, storage.exists, storage.list_dir):
        with pytest.raises(InputError) as caught:
            call("s3://corpora/text/corpus.txt")
        message = _one_line(caught)
        assert message.startswith("cannot ") and " s3://corpora/text/corpus.txt: " in message
        assert "check the AWS credentials and the bucket's policy" in message
        assert "Request ID" not in message and "When " not in message


def test_a_user_without_permission_is_denied_in_one_line(moto_auth, monkeypatch):
    access_key, secret = moto_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(InputError) as caught:
        storage.write_text("s3://corpora/out/x.txt", "x")
    assert _one_line(caught).startswith("cannot write s3://corpora/out/x.txt: AWS Error ACCESS_DENIED")


def test_the_preprocess_step_names_a_denied_s3_corpus(moto_auth, monkeypatch, tmp_path):
    from spark_jobs.common.config import validate_config
    from spark_jobs.steps import preprocess

    access_key, secret = moto_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    config = validate_config(
        {"data": {"corpus_path": "s3://corpora/text/corpus.txt"}, "run": {"root": str(tmp_path), "id": "r"}}
    )
    with pytest.raises(InputError) as caught:
        preprocess.run(config)
    message = _one_line(caught)
    assert message.startswith("cannot look up s3://corpora/text/corpus.txt: AWS Error ACCESS_DENIED")
    assert not storage.is_complete(storage.step_dir(str(tmp_path), "r", "preprocess"))


def test_the_preprocess_step_prints_one_line_for_a_missing_bucket(s3_env, repo, tmp_path):
    """The step as spark-submit runs it: exit 2 and `error: preprocess: ...`, no traceback."""
    args = [
        sys.executable,
        "spark_jobs/steps/preprocess.py",
        *("--set", "data.corpus_path=s3://no-such-bucket/corpus.txt"),
        *("--set", f"run.root={tmp_path}"),
    ]
    result = subprocess.run(args, cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: preprocess: cannot reach s3://no-such-bucket/corpus.txt: no such bucket: s3://no-such-bucket"
    )


def test_text_that_is_not_utf8_names_the_file_and_offset(s3_env):
    with pytest.raises(InputError) as caught:
        storage.read_text("s3://corpora/text/latin1.txt")
    assert _one_line(caught) == "s3://corpora/text/latin1.txt: not UTF-8 text (byte 0xe9 at offset 3)"


def test_a_directory_where_a_file_is_expected(s3_env, tmp_path):
    with pytest.raises(InputError) as caught:
        storage.read_bytes(str(tmp_path))
    assert _one_line(caught) == f"{tmp_path} is a directory, expected a file"
    with pytest.raises(InputError) as caught:
        storage.read_bytes("s3://corpora/text")
    assert _one_line(caught) == "s3://corpora/text is a directory, expected a file"


def test_a_missing_file_is_still_file_not_found(s3_env, tmp_path):
    with pytest.raises(InputError, match=rf"^file not found: {tmp_path}/nope.txt$"):
        storage.read_bytes(str(tmp_path / "nope.txt"))
    with pytest.raises(InputError, match=r"^file not found: s3://corpora/nope.txt$"):
        storage.read_bytes("s3://corpora/nope.txt")
