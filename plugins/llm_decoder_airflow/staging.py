"""Staging a run: the code archive, the entry scripts, the rendered config, the nodes' lock and
the bootstrap script, uploaded to `<root>/runs/<run_id>/code/` (s3:// through S3Hook, or a local
folder); and, once per lock, the nodes' wheelhouse to `<root>/wheelhouse/<lock hash>/`.

The steps on the cluster then need nothing but S3: `spark-submit --py-files spark_jobs.zip
s3://.../code/<step>.py --config s3://.../code/config.yaml ...`.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

from llm_decoder_airflow import wheelhouse
from llm_decoder_airflow.files import FileStore, join
from llm_decoder_airflow.pipeline import package_dir
from spark_jobs.common.pipeline import STEPS, Step

log = logging.getLogger(__name__)

# What <root>/runs/<run_id>/code/ holds, beside each step's entry script.
CODE_ARCHIVE = "spark_jobs.zip"  # the spark_jobs package, for --py-files
CONFIG_FILE = "config.yaml"  # the run's rendered config: the one record every step reads
REQUIREMENTS = "requirements.txt"  # the nodes' lock (bootstrap/nodes.lock): what every node installs
BOOTSTRAP_SCRIPT = "install_python_deps.sh"
BOOTSTRAP_PATH = Path(__file__).parent / "bootstrap" / BOOTSTRAP_SCRIPT
# A fixed timestamp keeps the archive byte-identical for identical code.
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


def build_code_archive() -> bytes:
    """spark_jobs/ as a zip for --py-files (sources only, in a stable order)."""
    package = package_dir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(package.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(str(Path("spark_jobs") / path.relative_to(package)), _ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def staged_script(step: Step) -> str:
    """The name of a step's entry script under code/ (flat: code/preprocess.py, ...)."""
    return Path(step.script).name


def entry_scripts() -> dict[str, bytes]:
    """{staged name: source} of each step's entry script."""
    package = package_dir()
    return {staged_script(step): (package / step.script).read_bytes() for step in STEPS}


def runtime_requirements() -> str:
    """The project's pinned runtime dependencies, minus what EMR provides, one per line (what
    `make lock` resolves into the nodes' lock)."""
    return "\n".join(wheelhouse.runtime_requirements()) + "\n"


def wheelhouse_uri(code: str) -> str:
    """Where the bootstrap action finds the wheelhouse of the nodes' lock: beside the runs, under
    the same root, so every run of a bucket shares it (`code` is `<root>/runs/<run_id>/code`)."""
    root = code.rstrip("/").rsplit("/runs/", 1)[0]
    return wheelhouse.s3_uri(root)


def stage_code(files: FileStore, code: str, config_yaml: str) -> dict[str, str]:
    """Upload everything one run's EMR steps and bootstrap action need; return {name: uri}.

    The wheelhouse comes first: without it no node could install, and nothing of the run is staged."""
    wheelhouse.check_lock_current()
    wheelhouse.stage(files, wheelhouse_uri(code), wheelhouse.local_dir())
    uploads = {
        CODE_ARCHIVE: build_code_archive(),
        CONFIG_FILE: config_yaml.encode("utf-8"),
        REQUIREMENTS: wheelhouse.LOCK_PATH.read_bytes(),
        BOOTSTRAP_SCRIPT: BOOTSTRAP_PATH.read_bytes(),
        **entry_scripts(),
    }
    staged = {}
    for name, data in uploads.items():
        uri = join(code, name)
        files.write_bytes(uri, data)
        staged[name] = uri
    log.info("staged %d files under %s", len(staged), code)
    return staged
