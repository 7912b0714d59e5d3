"""Secrets in Spark properties never reach a saved copy, a report or a log line.

`spark.conf` may carry credentials (`spark.hadoop.fs.s3a.secret.key`, a session token, an
executor's `AWS_SECRET_ACCESS_KEY`). The step that builds its SparkSession needs the real
value, so the run's own config (<run>/code/config.yaml, the step's input) keeps it; every copy
made for people (metrics/config.yaml, report.html, the logged spark-submit line) shows
REDACTED instead. Better still, set no credential in the config at all: the default credential
chain (an instance profile on EMR, the environment or ~/.aws locally) needs none.

    is_secret_key("spark.hadoop.fs.s3a.access.key")   -> True
    redact_conf({"spark.hadoop.fs.s3a.secret.key": "abc"})  -> {...: "***REDACTED***"}
    redact_args(["--conf", "spark.authenticate.secret=abc"]) -> ["--conf", "spark.authenticate.secret=***REDACTED***"]
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

REDACTED = "***REDACTED***"
# Case-insensitive substrings of a property name that holds a secret (Spark's own
# spark.redaction.regex is narrower: secret|password|token|access.key). A false positive only
# hides a value from people (e.g. spark.yarn.keytab, a path); a false negative leaks one.
SECRET_WORDS = ("key", "secret", "token", "password", "credential")
_CONF_FLAGS = ("--conf", "-c")
# One `name: value` line of YAML, for text that does not parse (see redact_config_text).
_YAML_LINE = re.compile(r"^(\s*-?\s*['\"]?)([^:'\"#]+)(['\"]?\s*:\s+)(\S.*)$")


def is_secret_key(key: str) -> bool:
    """Whether a Spark property (or environment variable) name looks like it holds a secret."""
    lowered = key.lower()
    return any(word in lowered for word in SECRET_WORDS)


def redact_conf(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of Spark properties with the value of every secret-looking key replaced."""
    return {key: REDACTED if is_secret_key(str(key)) else value for key, value in conf.items()}


def _redact_pair(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    return f"{key}={REDACTED}" if sep and is_secret_key(key) else pair


def redact_args(args: Sequence[str]) -> list[str]:
    """A spark-submit argument list with the secret values of `--conf k=v` (`--conf=k=v`, `-c k=v`) replaced."""
    redacted: list[str] = []
    after_flag = False
    for arg in args:
        if after_flag:
            redacted.append(_redact_pair(arg))
        elif arg.startswith("--conf="):
            redacted.append("--conf=" + _redact_pair(arg[len("--conf=") :]))
        else:
            redacted.append(arg)
        after_flag = arg in _CONF_FLAGS
    return redacted


def redact_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A raw config dict (sections) with the secret values of its spark.conf replaced."""
    redacted = dict(raw)
    spark = raw.get("spark")
    if isinstance(spark, Mapping) and isinstance(spark.get("conf"), Mapping):
        redacted["spark"] = {**spark, "conf": redact_conf(spark["conf"])}
    return redacted


def redact_config_text(text: str) -> str:
    """A config file's YAML text, for showing: spark.conf's secret values replaced.

    Text that does not parse as a mapping (a truncated file) is redacted line by line: every
    `name: value` whose name looks secret, wherever it is (over-redacting beats leaking)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None
    if isinstance(raw, dict):
        if redact_config(raw) == raw:
            return text  # nothing to hide: keep the file exactly as written
        return yaml.safe_dump(redact_config(raw), sort_keys=False)
    lines = []
    for line in text.splitlines():
        match = _YAML_LINE.match(line)
        if match and is_secret_key(match.group(2)):
            line = f"{match.group(1)}{match.group(2)}{match.group(3)}{REDACTED}"
        lines.append(line)
    return "\n".join(lines)
