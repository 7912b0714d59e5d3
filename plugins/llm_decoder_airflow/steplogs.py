"""The last error lines of a failed EMR step, read from the cluster's LogUri in S3.

EMR copies each step's output to `<LogUri>/<cluster id>/steps/<step id>/stdout.gz` and
`stderr.gz` (every few minutes while the cluster runs, and when it ends). What they hold:

- `stderr.gz`: spark-submit's own output. In cluster mode (our steps) that is the YARN
  client's report, ending in "Application application_… finished with failed status".
- `stdout.gz`: in client mode, the Python driver's output (spark-submit's PythonRunner merges
  the driver's stderr into its stdout), with our steps' one `error: <step>: …` line.
- In cluster mode the driver runs in the YARN application master's container: its output is
  under `<LogUri>/<cluster id>/containers/<application id>/<container>_000001/` once YARN's
  log aggregation has copied it. The application id is read from the step's stderr.

`step_log_tail` reads all three (the ones that exist), waiting up to `wait_s` for the step's
stderr to appear, and returns one short text for the sensor's failure message.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

ERROR_PREFIX = "error: "  # our steps print exactly one such line before exiting non-zero
TAIL_LINES = 5
MAX_LINE = 500
APPLICATION_ID = re.compile(r"application_\d+_\d+")


def s3_base(log_uri: str) -> str:
    """A LogUri as DescribeCluster reports it (`s3n://b/p/`) as `s3://b/p` (no trailing slash)."""
    return re.sub(r"^s3[an]?://", "s3://", log_uri).rstrip("/")


def step_log_uris(log_uri: str, cluster_id: str, step_id: str) -> dict[str, str]:
    base = f"{s3_base(log_uri)}/{cluster_id}/steps/{step_id}"
    return {name: f"{base}/{name}.gz" for name in ("stderr", "stdout")}


def error_lines(text: str, count: int = TAIL_LINES) -> list[str]:
    """Our step's `error: ` line if there is one, else the last lines that name an error."""
    lines = [line.strip()[:MAX_LINE] for line in text.splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith(ERROR_PREFIX)]
    if ours:
        return ours[-1:]
    named = [line for line in lines if "Error" in line or "Exception" in line or "error" in line]
    return (named or lines)[-count:]


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _read_gzip(s3_hook: Any, uri: str) -> str | None:
    bucket, key = _split(uri)
    if not s3_hook.check_for_key(key, bucket_name=bucket):
        return None
    data = s3_hook.get_key(key, bucket_name=bucket).get()["Body"].read()
    try:
        data = gzip.decompress(data)
    except OSError:
        pass  # not compressed after all: read it as it is
    return data.decode("utf-8", errors="replace")


def _driver_logs(s3_hook: Any, log_uri: str, cluster_id: str, application_id: str) -> dict[str, str]:
    """The cluster-mode driver's stdout/stderr (container _000001 is YARN's application master)."""
    bucket, prefix = _split(f"{s3_base(log_uri)}/{cluster_id}/containers/{application_id}/")
    keys = s3_hook.list_keys(bucket_name=bucket, prefix=prefix) or []
    found = {}
    for key in sorted(keys):
        match = re.search(r"_000001/(stdout|stderr)\.gz$", key)
        if match:
            found.setdefault(f"driver {match.group(1)}", f"s3://{bucket}/{key}")
    return found


def step_log_tail(
    s3_hook: Any,
    log_uri: str | None,
    cluster_id: str,
    step_id: str,
    wait_s: float,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """One text for a failure message: the error lines of the step's logs, or why there are none."""
    if not log_uri:
        return "no step logs: the cluster has no LogUri"
    uris = step_log_uris(log_uri, cluster_id, step_id)
    deadline = time.monotonic() + wait_s
    stderr = _read_gzip(s3_hook, uris["stderr"])
    while stderr is None and time.monotonic() < deadline:
        log.info("waiting for the step's logs at %s (EMR uploads them every few minutes)", uris["stderr"])
        sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        stderr = _read_gzip(s3_hook, uris["stderr"])
    if stderr is None:
        return (
            f"step logs not in S3 yet after {wait_s:.0f} s (EMR uploads them every few minutes): "
            f"look at {uris['stderr']} and {uris['stdout']} later"
        )
    logs = {
        "stderr": (uris["stderr"], stderr),
        "stdout": (uris["stdout"], _read_gzip(s3_hook, uris["stdout"])),
    }
    application = APPLICATION_ID.findall(stderr)
    if application:
        for name, uri in _driver_logs(s3_hook, log_uri, cluster_id, application[-1]).items():
            logs[name] = (uri, _read_gzip(s3_hook, uri))
    return summarize(logs)


def summarize(logs: dict[str, tuple[str, str | None]]) -> str:
    """Our `error: ` line, from whichever log has it; else each log's last error lines."""
    for uri, text in logs.values():
        ours = [line for line in error_lines(text or "") if line.startswith(ERROR_PREFIX)]
        if ours:
            return f"step log: {ours[-1]} (in {uri})"
    parts = [f"{name} ({uri}): {' | '.join(error_lines(text))}" for name, (uri, text) in logs.items() if text]
    return "last lines of the step's logs: " + ("; ".join(parts) or "all empty")
