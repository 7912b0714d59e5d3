"""EMRFS in a box: Spark's `s3://` paths served by the emulated S3 API.

On EMR, `s3://` in Spark (spark-submit's --py-files and script, spark.read, df.write) is
EMRFS. pip's pyspark has no S3 filesystem and these machines reach no Maven repository for
hadoop-aws, so the box mounts the bucket with `s3fs` (a FUSE client of the S3 API) and points
Hadoop's `s3` scheme at the mount with ViewFileSystemOverloadScheme, which ships in the
hadoop-client jar of pyspark. Every byte still goes through the emulator's S3 API: s3fs
turns a file write into PutObject/multipart upload and a read into GetObject.

This is cluster configuration (spark-defaults), like EMR's own EMRFS settings: the steps'
arguments keep their `s3://` URIs unchanged.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from launchers.emr_box.errors import BoxError

log = logging.getLogger(__name__)


def hadoop_s3_conf(bucket: str, mount: Path) -> dict[str, str]:
    """spark-defaults that make `s3://<bucket>/key` the file `<mount>/key`."""
    return {
        "spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.viewfs.ViewFileSystemOverloadScheme",
        # The mount table is named by the URI's authority: the bucket.
        f"spark.hadoop.fs.viewfs.mounttable.{bucket}.linkFallback": f"file://{mount}",
        "spark.hadoop.fs.viewfs.overload.scheme.target.file.impl": "org.apache.hadoop.fs.LocalFileSystem",
    }


class S3Mount:
    """`s3fs BUCKET DIR` against the emulator's endpoint; unmounted on exit."""

    def __init__(self, bucket: str, mount: Path, endpoint: str, region: str, key: str, secret: str) -> None:
        self.bucket = bucket
        self.mount = mount
        self.endpoint = endpoint
        self.region = region
        self._credentials = f"{key}:{secret}"

    def __enter__(self) -> S3Mount:
        if shutil.which("s3fs") is None:
            raise BoxError(
                "s3fs not found: the box mounts the emulated bucket with it (apt-get install s3fs)"
            )
        if not Path("/dev/fuse").exists():
            raise BoxError("/dev/fuse is missing: the box needs FUSE to mount the emulated bucket")
        self.mount.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mount):
            self._unmount()
        passwd = self.mount.parent / f".{self.mount.name}.passwd"
        passwd.write_text(self._credentials)
        passwd.chmod(0o600)
        command = [
            "s3fs", self.bucket, str(self.mount),
            "-o", f"passwd_file={passwd}",
            "-o", f"url={self.endpoint}",
            "-o", f"endpoint={self.region}",
            "-o", "use_path_request_style",
            "-o", "stat_cache_expire=1",  # other writers (the driver's pyarrow, Airflow) change objects
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BoxError(
                f"s3fs could not mount s3://{self.bucket}: {result.stderr.strip() or result.stdout.strip()}"
            )
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mount):
            if time.monotonic() > deadline:
                raise BoxError(f"s3fs did not mount s3://{self.bucket} at {self.mount} within 15 s")
            time.sleep(0.2)
        log.info("s3://%s mounted at %s (EMRFS stand-in)", self.bucket, self.mount)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unmount()

    def _unmount(self) -> None:
        # umount as root; fusermount -u as the user who mounted it (FUSE without root).
        for command in (
            ["umount", str(self.mount)],
            ["fusermount", "-u", str(self.mount)],
            ["umount", "-l", str(self.mount)],
        ):
            if not os.path.ismount(self.mount):
                return
            try:
                subprocess.run(command, capture_output=True, check=False)
            except FileNotFoundError:  # no fusermount on this machine
                continue
            time.sleep(0.2)
