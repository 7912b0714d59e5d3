"""Shared test setup: environment for Spark and Airflow, a session-scoped local Spark.

Airflow reads its settings when first imported, so every AIRFLOW_* variable is set here,
before any test module imports airflow.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "data" / "tinyshakespeare.txt"

_SCRATCH = Path(tempfile.mkdtemp(prefix="llm-decoder-tests-"))
_AIRFLOW_HOME = _SCRATCH / "airflow"
_AIRFLOW_HOME.mkdir()

os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(_AIRFLOW_HOME / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "TMPDIR": str(_SCRATCH),
    }
)
# plugins/ is on Airflow's sys.path at run time; make it importable in tests too.
sys.path.insert(0, str(REPO / "plugins"))


# Fixtures that build something costly once per pytest-xdist worker (a preprocess run, an
# Airflow run): the tests that use one go to one worker together (`--dist loadgroup`), so it is
# built once, not once per worker.
SHARED_BUILDS = ("baseline", "bundled_preprocess", "quiet_run")
# The longest groups start first, one per worker; the other tests fill in around them.
LONGEST_GROUPS = ("box", "stack")


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return marker.args[0] if marker is not None and marker.args else None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist names the items by group
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        shared = [name for name in SHARED_BUILDS if name in getattr(item, "fixturenames", ())]
        if shared and _group(item) is None:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
    rank = {name: i for i, name in enumerate(LONGEST_GROUPS)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: file order otherwise


@pytest.fixture(autouse=True)
def _spark_jobs_logs_propagate() -> None:
    """A step run in this process (configure_logging) stops `spark_jobs` logs from propagating to
    the root logger, where caplog listens: each test starts with them propagating again."""
    import logging

    logging.getLogger("spark_jobs").propagate = True


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    return CORPUS


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ~40 kB of Tiny Shakespeare: enough text for every step, fast to train on."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    text = CORPUS.read_text(encoding="utf-8")[:40_000]
    path.write_text(text[: text.rfind("\n\n") + 1], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test session (starting one costs seconds)."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("llm-decoder-tests")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.serializer", "org.apache.spark.serializer.KryoSerializer")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def upload_tree():
    """upload_tree(local_dir, uri): copy a folder tree to a URI (s3:// on the moto server) with pyarrow."""
    from pyarrow import fs as pafs

    from spark_jobs.common import storage

    def upload(local_dir: str, uri: str) -> None:
        fs, path = storage.filesystem(uri)
        pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    return upload


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server on 127.0.0.1 as the S3 endpoint, reached through the environment variables the
    steps read (as on EMR); yields its URL."""
    from moto.server import ThreadedMotoServer

    from spark_jobs.common import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for key, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setattr(storage, "_bucket_regions", {})  # regions resolved against another server
    try:
        yield url
    finally:
        server.stop()
