"""storage on S3 without a region in the environment, as on EMR's YARN containers: each
bucket is addressed in its own region, which S3 reports (a moto server on 127.0.0.1)."""

from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from spark_jobs.common import storage
from spark_jobs.common.errors import InputError


@pytest.fixture(scope="module")
def moto_url() -> str:
    """A moto server with bucket `eu-runs` in eu-west-1 (moto's state is per process: create it once)."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket="eu-runs", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    yield url
    server.stop()


@pytest.fixture
def endpoint(moto_url, monkeypatch) -> str:
    """The moto server as the S3 endpoint, and no region in the environment (as on YARN)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(storage, "_bucket_regions", {})  # every test resolves the region afresh
    return moto_url


def test_the_bucket_region_comes_from_s3_not_the_environment(endpoint):
    fs, path = storage.filesystem("s3://eu-runs/runs/r1/x")
    assert fs.region == "eu-west-1" and path == "eu-runs/runs/r1/x"
    storage.write_text("s3://eu-runs/runs/r1/note.txt", "hello\n")
    assert storage.read_text("s3://eu-runs/runs/r1/note.txt") == "hello\n"
    assert storage.list_dir("s3://eu-runs/runs/r1") == ["note.txt"]


def test_the_bucket_region_wins_over_another_env_region(endpoint, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert storage.filesystem("s3://eu-runs/x")[0].region == "eu-west-1"
    storage.write_text("s3://eu-runs/y.txt", "y")
    assert storage.read_text("s3://eu-runs/y.txt") == "y"


def test_a_missing_bucket_is_a_one_line_error(endpoint):
    with pytest.raises(
        InputError, match=r"^cannot reach s3://no-such-bucket/a.txt: no such bucket: s3://no-such-bucket$"
    ):
        storage.read_text("s3://no-such-bucket/a.txt")


def test_no_bucket_in_the_uri_is_a_one_line_error(endpoint):
    with pytest.raises(InputError, match=r"^no bucket in 's3://': expected s3://bucket/key$"):
        storage.exists("s3://")


def test_an_unreachable_endpoint_falls_back_to_the_env_region_or_says_which_bucket(monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(InputError) as caught:
        storage.filesystem("s3://lost-bucket/x")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot reach s3://lost-bucket/x: cannot resolve the region of bucket s3://lost-bucket (HEAD http://127.0.0.1:"
    )
    assert message.endswith("and neither AWS_REGION nor AWS_DEFAULT_REGION is set")

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert storage.filesystem("s3://lost-bucket/x")[0].region == "eu-central-1"
