"""Where a run's files live: a local directory or s3://bucket/prefix, through pyarrow.fs.

Layout of one run (every step writes only under its own folder):

    <root>/runs/<run_id>/preprocess/   tokenizer.json, tokens/, token_counts/, embeddings.*, stats.json
    <root>/runs/<run_id>/window/       train/, val/, data_distribution.json
    <root>/runs/<run_id>/checkpoints/  step-<n>/ (kept across retries of the train step)
    <root>/runs/<run_id>/train/        model/ (model.safetensors, config.json, tokenizer.json)
    <root>/runs/<run_id>/metrics/      steps.jsonl, epochs.csv, spark.json, summary.json, report.*
    <root>/runs/<run_id>/train-attempts/<id>/  rank-<r>.json: a ddp rank's error (removed after the attempt)
    <root>/models/champion.json        the promoted model

A step is complete when its folder holds `_SUCCESS`. `step_output` writes each attempt of a
step into its own sibling folder and puts it in place only once it succeeded (a rename
locally; a server-side copy with the marker last on S3): a reader never takes a half-written
step for a finished one, and a re-run that fails leaves the previous output as it was.

An S3 filesystem is made per bucket in the bucket's own region (`bucket_region`).

Every failure to reach a file (no credentials, access denied, no such bucket, a directory
where a file was expected, bytes that are not UTF-8 text) is an `InputError` of one line that
names the URI, not a pyarrow OSError traceback: the step's entry point prints it as
`error: <step>: <message>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from spark_jobs.common.errors import InputError

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def normalize(uri: str) -> str:
    """Absolute local path, or the s3:// URI without a trailing slash."""
    if is_s3(uri):
        return "s3://" + uri.split("://", 1)[1].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return posixpath.join(normalize(base), *parts)
    return os.path.join(normalize(base), *parts)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a URI."""
    if is_s3(uri):
        bucket_and_key = normalize(uri)[len("s3://") :]
        bucket = bucket_and_key.split("/", 1)[0]
        if not bucket:
            raise InputError(f"no bucket in {uri!r}: expected s3://bucket/key")
        try:
            return _s3_filesystem(bucket), bucket_and_key
        except InputError as exc:  # no such bucket, or no region for it: say which file was wanted
            raise InputError(f"cannot reach {uri}: {exc}") from None
    return pafs.LocalFileSystem(), normalize(uri)


# pyarrow's S3 messages start with "When reading information for key 'k' in bucket 'b': ",
# which the URI in our message already says, and end with a request id nobody can act on.
_S3_CONTEXT = re.compile(r"^When [^:]*: ")
_REQUEST_ID = re.compile(r"\s*\(Request ID: [^)]*\)")
_DENIED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "NO_SUCH_BUCKET")


def _reason(exc: OSError) -> str:
    """An OSError's message on one line, without what the URI already says."""
    text = _REQUEST_ID.sub("", _S3_CONTEXT.sub("", " ".join(str(exc).split())))
    if "NO_SUCH_BUCKET" in text:
        return "no such bucket"
    if any(code in text for code in _DENIED):
        return f"{text.rstrip('.')}; check the AWS credentials and the bucket's policy"
    return text or type(exc).__name__


def _input_error(uri: str, action: str, exc: OSError) -> InputError:
    if isinstance(exc, FileNotFoundError):
        return InputError(f"file not found: {uri}")
    return InputError(f"cannot {action} {uri}: {_reason(exc)}")


@contextlib.contextmanager
def _errors_name(uri: str, action: str) -> Iterator[None]:
    """Turn a filesystem error inside the block into one InputError line naming the URI."""
    try:
        yield
    except OSError as exc:
        raise _input_error(uri, action, exc) from None


def _s3_endpoint() -> str | None:
    """An S3 endpoint override (moto in tests, an S3-compatible store), or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_filesystem(bucket: str) -> pafs.S3FileSystem:
    # Credentials come from the default chain (instance profile on EMR, env vars locally).
    endpoint = _s3_endpoint()
    region = bucket_region(bucket)
    if endpoint:
        scheme = "https" if endpoint.startswith("https") else "http"
        host = endpoint.split("://", 1)[-1].rstrip("/")
        return pafs.S3FileSystem(endpoint_override=host, scheme=scheme, region=region)
    return pafs.S3FileSystem(region=region)


# A bucket lives in one region: resolve it once per process, keyed by (endpoint, bucket).
_bucket_regions: dict[tuple[str, str], str] = {}


def bucket_region(bucket: str) -> str:
    """The region a bucket lives in, as S3 reports it.

    Not the process's AWS_REGION: executors on EMR (YARN containers) have none, and a bucket
    in another region than the cluster still has to be addressed in its own. The environment's
    region is only the fallback when S3 does not say.
    """
    endpoint = _s3_endpoint() or ""
    key = (endpoint, bucket)
    if key not in _bucket_regions:
        _bucket_regions[key] = _resolve_bucket_region(bucket, endpoint)
    return _bucket_regions[key]


def _resolve_bucket_region(bucket: str, endpoint: str) -> str:
    if endpoint:
        region, why = _head_bucket_region(bucket, endpoint)
    else:
        try:
            region, why = pafs.resolve_s3_region(bucket), ""
        except OSError as exc:
            if f"Bucket '{bucket}' not found" in str(exc):
                raise InputError(f"no such bucket: s3://{bucket}") from None
            region, why = None, " ".join(str(exc).split())
    if region:
        log.info("bucket s3://%s is in %s", bucket, region)
        return region
    env_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if env_region:
        log.warning(
            "cannot resolve the region of s3://%s (%s); using %s from the environment",
            bucket,
            why,
            env_region,
        )
        return env_region
    raise InputError(
        f"cannot resolve the region of bucket s3://{bucket} ({why}) and neither AWS_REGION "
        "nor AWS_DEFAULT_REGION is set"
    )


# pyarrow's S3 client ignores HTTP(S)_PROXY; so does the region lookup, to reach the same endpoint.
_no_proxy_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _head_bucket_region(bucket: str, endpoint: str) -> tuple[str | None, str]:
    """(region or None, why not) from an unsigned path-style HEAD <endpoint>/<bucket>.

    Standard library only (executors may lack boto3). S3 names the bucket's region in the
    x-amz-bucket-region header even when it refuses the request (301, 403); moto does too.
    """
    url = f"{endpoint.rstrip('/')}/{urllib.parse.quote(bucket)}"
    request = urllib.request.Request(url, method="HEAD")
    try:
        with _no_proxy_opener.open(request, timeout=10) as response:
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as exc:  # an answer all the same: 301, 403, 404
        status, headers = exc.code, exc.headers
        exc.close()
    except OSError as exc:  # no answer: connection refused, timeout, bad host
        reason = getattr(exc, "reason", exc)
        return None, f"HEAD {url}: {' '.join(str(reason).split())}"
    if status == 404:
        raise InputError(f"no such bucket: s3://{bucket}")
    region = headers.get("x-amz-bucket-region")
    return region, "" if region else f"HEAD {url} answered {status} without x-amz-bucket-region"


def spark_path(uri: str) -> str:
    """A path Spark can read or write: s3:// as-is (EMRFS), local as an absolute path."""
    return normalize(uri)


def _file_type(uri: str) -> pafs.FileType:
    fs, path = filesystem(uri)
    with _errors_name(uri, "look up"):
        return fs.get_file_info(path).type


def exists(uri: str) -> bool:
    return _file_type(uri) != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return _file_type(uri) == pafs.FileType.Directory


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except OSError as exc:
        error = _input_error(uri, "read", exc)
    # Only now, so a good read costs no extra request: S3 calls a directory "not found".
    if is_dir(uri):
        raise InputError(f"{uri} is a directory, expected a file")
    raise error


def read_text(uri: str) -> str:
    """A file's text; bytes that are not UTF-8 are an error naming the file and the offset."""
    data = read_bytes(uri)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{uri}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; locally via a temporary file and an atomic rename."""
    fs, path = filesystem(uri)
    with _errors_name(uri, "write"):
        if is_s3(uri):
            with fs.open_output_stream(path) as stream:
                stream.write(data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str) -> None:
    """Delete a file or a folder tree; missing is fine."""
    fs, path = filesystem(uri)
    with _errors_name(uri, "delete"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)


def list_dir(uri: str) -> list[str]:
    """Names (not paths) directly under a folder; [] if it does not exist."""
    fs, path = filesystem(uri)
    with _errors_name(uri, "list"):
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    with _errors_name(uri, "create"):
        fs.create_dir(path, recursive=True)


# --- the run layout -------------------------------------------------------------------


def modified_time(uri: str) -> float | None:
    """A file's modification time (seconds since the epoch), local or S3; None if absent."""
    fs, path = filesystem(uri)
    with _errors_name(uri, "read"):
        info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound or info.mtime is None:
        return None
    return info.mtime.timestamp()


def run_dir(root: str, run_id: str) -> str:
    return join(root, "runs", run_id)


def step_dir(root: str, run_id: str, step: str) -> str:
    return join(run_dir(root, run_id), step)


def is_complete(step_uri: str) -> bool:
    return exists(join(step_uri, SUCCESS_MARKER))


def output_record(step_uri: str) -> dict[str, Any]:
    """What a complete step's marker says: {"output": id, "made_from": {step: id}}; {} when it
    says nothing (an output written before markers carried records)."""
    try:
        record = json.loads(read_text(join(step_uri, SUCCESS_MARKER)) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def require_complete(step_uri: str, step: str) -> None:
    """Refuse to read a previous step's output unless it was marked complete."""
    _finish_interrupted_commit(normalize(step_uri))
    if not exists(step_uri):
        raise InputError(f"{step} output not found: {step_uri} (run the {step} step first)")
    if not is_complete(step_uri):
        raise InputError(
            f"{step} output at {step_uri} has no {SUCCESS_MARKER} marker: the step did not finish; re-run it"
        )


@contextlib.contextmanager
def step_output(final_uri: str, made_from: Mapping[str, str | None] | None = None) -> Iterator[str]:
    """Yield a fresh attempt folder to write a step's output into; commit it on success.

    The attempt is a sibling of `final_uri` (`.<name>.attempt-<id>`). Until the attempt has
    succeeded, the previous output stays in place and complete: a re-run that fails (a bad
    corpus, a killed process) loses nothing. On success the attempt gets its `_SUCCESS` and
    replaces the old output: by two renames locally; on S3, which has no rename, by copying
    its objects in (server side) with the marker last. A commit cut short on S3 is finished by
    the next reader (`require_complete`) or attempt, from the attempt, which is complete.
    """
    final_uri = normalize(final_uri)
    _finish_interrupted_commit(final_uri)
    for stale in _attempts(final_uri):  # leftovers of attempts that failed or were killed
        delete(stale)
    output_id = uuid.uuid4().hex[:8]
    attempt = _sibling(final_uri, f"attempt-{output_id}")
    makedirs(attempt)
    try:
        yield attempt
    except BaseException:
        delete(attempt)
        raise
    # The marker names this output and what it was made from (spark_jobs.common.lineage).
    record = {"output": output_id, "made_from": dict(made_from or {})}
    write_text(join(attempt, SUCCESS_MARKER), json.dumps(record, sort_keys=True))
    _commit(attempt, final_uri)
    log.info("committed %s", final_uri)


def _sibling(final_uri: str, suffix: str) -> str:
    parent, name = posixpath.split(final_uri.rstrip("/"))
    return join(parent, f".{name}.{suffix}")


def _attempts(final_uri: str) -> list[str]:
    parent, name = posixpath.split(final_uri.rstrip("/"))
    prefix = f".{name}.attempt-"
    return [join(parent, entry) for entry in list_dir(parent) if entry.startswith(prefix)]


def _commit(attempt: str, final_uri: str) -> None:
    """Put a complete attempt in place of `final_uri`."""
    if not is_s3(final_uri):
        old = _sibling(final_uri, f"old-{uuid.uuid4().hex[:8]}")
        if os.path.exists(final_uri):
            os.rename(final_uri, old)
        os.rename(attempt, final_uri)  # the data and its marker appear at once
        delete(old)
        return
    delete(join(final_uri, SUCCESS_MARKER))  # from here the old output no longer counts
    delete(final_uri)
    fs, source = filesystem(attempt)
    _, target = filesystem(final_uri)
    with _errors_name(attempt, "copy"):
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(source, recursive=True)) if i.is_file]
        for path in files:
            if posixpath.basename(path) != SUCCESS_MARKER or posixpath.dirname(path) != source:
                fs.copy_file(path, target + path[len(source) :])
    write_text(join(final_uri, SUCCESS_MARKER), read_text(join(attempt, SUCCESS_MARKER)))
    delete(attempt)


def _finish_interrupted_commit(final_uri: str) -> None:
    """Finish a commit that was cut short: forward from its complete attempt or, locally, back
    from the renamed-away old output; so the last good output is never left unmarked."""
    parent, name = posixpath.split(final_uri.rstrip("/"))
    if not is_complete(final_uri):
        done = [attempt for attempt in _attempts(final_uri) if is_complete(attempt)]
        if done:
            log.warning("finishing the interrupted commit of %s", final_uri)
            _commit(max(done, key=lambda a: modified_time(join(a, SUCCESS_MARKER)) or 0.0), final_uri)
            return
    if is_s3(final_uri):
        return
    for old in [join(parent, e) for e in list_dir(parent) if e.startswith(f".{name}.old-")]:
        if not os.path.exists(final_uri) and is_complete(old):
            os.rename(old, final_uri)
        else:
            delete(old)
