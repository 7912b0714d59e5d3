"""The JSON the pipeline writes: never a bare NaN or Infinity.

Python's `json` writes float("nan") as the token `NaN`, which is not JSON: strict readers
(jq, JavaScript's JSON.parse, most Java libraries) refuse the whole file. So every JSON file
goes through `dumps`, which refuses a non-finite number and names where it is. A writer
for which such a number is a fact worth keeping (a step record of steps.jsonl, Spark's
figures) passes the record through `with_nulls` first: the number becomes null, and
"non_finite" says which field held what.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from spark_jobs.common.errors import PipelineError

NON_FINITE_KEY = "non_finite"


def non_finite(value: Any, path: str = "") -> dict[str, str]:
    """{"a.b[2]": "nan", ...}: where a value holds NaN or an infinity, and which."""
    if isinstance(value, float) and not math.isfinite(value):
        return {path or "(value)": str(value)}
    found: dict[str, str] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(non_finite(item, f"{path}.{key}" if path else str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found.update(non_finite(item, f"{path}[{i}]"))
    return found


def dumps(
    value: Any,
    what: str,
    *,
    indent: int | None = None,
    sort_keys: bool = False,
    default: Callable | None = None,
) -> str:
    """json.dumps(allow_nan=False); a non-finite number is a PipelineError naming `what` and where."""
    found = non_finite(value)
    if found:
        where = ", ".join(f"{path} is {number}" for path, number in found.items())
        raise PipelineError(f"refusing to write {what}: {where} (JSON has no NaN or Infinity)")
    return json.dumps(value, indent=indent, sort_keys=sort_keys, default=default, allow_nan=False)


def write(uri: str, value: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write a JSON file (local or s3://) with a final newline; refused as `dumps` refuses."""
    from spark_jobs.common import storage

    storage.write_text(uri, dumps(value, uri, indent=indent, sort_keys=sort_keys) + "\n")


def with_nulls(value: Any) -> Any:
    """A copy of a dict with every non-finite number replaced by null, and listed under "non_finite"."""
    found = non_finite(value)
    if not found:
        return value
    result = _replace(value)
    if isinstance(result, dict):
        result[NON_FINITE_KEY] = found
    return result


def _replace(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _replace(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_replace(item) for item in value]
    return value
