"""One EMR box per module: moto + s3fs + a two-worker Spark standalone cluster + step runner.

The box needs s3fs and FUSE (`.ci/run` installs s3fs); without them these tests skip with the
reason, as the browser test does without Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")  # torn down after the module: its Spark nodes hold memory
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if shutil.which("s3fs") is None or not Path("/dev/fuse").exists():
        pytest.skip("the EMR box needs s3fs and /dev/fuse (apt-get install s3fs)")
    subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    from launchers.emr_box.box import EmrBox

    with EmrBox(tmp_path_factory.mktemp("emr-box")) as running:
        yield running


@pytest.fixture
def box_dag(box, monkeypatch):
    """Write the box's config for one run and point the DAG and its connection at the box."""

    def configure(corpus_uri: str, **training) -> None:
        config = box.write_config(corpus_uri, **training)
        for key, value in box.airflow_env(config).items():
            monkeypatch.setenv(key, value)

    return configure
