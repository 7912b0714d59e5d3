"""Reading and writing a run's small files (JSON, Markdown, code) on S3 or a local disk.

S3 goes through the amazon provider's S3Hook, so the Airflow connection (credentials,
endpoint) decides how, and the region is the caller's (the EMR DAG's emr.region) or else the
connection's; local paths are plain files. The run layout mirrors
spark_jobs.common.storage, which this module does not import: pyarrow pulls in numpy, and the DAG
files must parse without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import posixpath
from pathlib import Path

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join("s3://" + base.split("://", 1)[1].rstrip("/"), *parts)
    return os.path.join(str(Path(base).expanduser().resolve()), *parts)


def run_dir(root: str, run_id: str) -> str:
    return join(root, "runs", run_id)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/key → (bucket, key)."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def s3_encryption_args(kms_key_arn: str | None) -> dict[str, str]:
    """The PutObject arguments of every S3 object the DAG writes: SSE-KMS with the key (the EMR
    DAG's emr.s3_kms_key_arn), else SSE-S3. Explicit, so a bucket without default encryption
    (or one whose default is another key) still gets what the security configuration promises."""
    if kms_key_arn:
        return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_arn}
    return {"ServerSideEncryption": "AES256"}


class FileStore:
    """Small-file access by URI (read, write, exists): S3 through S3Hook(aws_conn_id), else the local disk.

    `region_name`: the bucket's region (the EMR DAG's emr.region); None: the connection's.
    `kms_key_arn`: S3 writes are SSE-KMS with this key; None: SSE-S3 (s3_encryption_args)."""

    def __init__(
        self,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        kms_key_arn: str | None = None,
    ) -> None:
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.encryption = s3_encryption_args(kms_key_arn)
        self._hook = None

    @property
    def s3(self):
        if self._hook is None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            # extra_args go with every upload of the hook (load_bytes, load_file, ...).
            self._hook = S3Hook(
                aws_conn_id=self.aws_conn_id, region_name=self.region_name, extra_args=self.encryption
            )
        return self._hook

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.s3.check_for_key(key, bucket_name=bucket)
        return Path(uri).exists()

    def read_text(self, uri: str) -> str | None:
        """The file's text, or None when it does not exist."""
        if is_s3(uri):
            if not self.exists(uri):
                return None
            bucket, key = split_s3(uri)
            return self.s3.read_key(key, bucket_name=bucket)
        path = Path(uri)
        return path.read_text(encoding="utf-8") if path.is_file() else None

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.load_bytes(data, key=key, bucket_name=bucket, replace=True)
        else:
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)  # a reader never sees half a file
        log.info("wrote %s (%d bytes)", uri, len(data))

    def read_versioned(self, uri: str) -> tuple[str | None, str | None]:
        """(text, version) of a small file; (None, None) when it does not exist. The version is
        the S3 ETag, or the content's sha256 on a local disk: what `write_if_version` checks."""
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                obj = self.s3.get_conn().get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise
            return obj["Body"].read().decode("utf-8"), obj["ETag"]
        path = Path(uri)
        if not path.is_file():
            return None, None
        data = path.read_bytes()
        return data.decode("utf-8"), hashlib.sha256(data).hexdigest()

    def write_if_version(self, uri: str, text: str, version: str | None) -> bool:
        """Replace the file only if it is still at `version` (None: only if it does not exist).

        S3: a conditional PUT (If-Match on the ETag, or If-None-Match: *). Local: under an
        exclusive lock on a sibling `.lock` file, compare, then replace atomically. False when
        someone else wrote it in between (read again and decide again)."""
        data = text.encode("utf-8")
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            condition = {"IfMatch": version} if version is not None else {"IfNoneMatch": "*"}
            try:
                self.s3.get_conn().put_object(
                    Bucket=bucket, Key=key, Body=data, **condition, **self.encryption
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in (
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                ):
                    return False
                raise
            log.info("wrote %s (%d bytes, conditional)", uri, len(data))
            return True
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.read_versioned(uri)[1] != version:
                return False
            self.write_bytes(uri, data)
        return True

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))
