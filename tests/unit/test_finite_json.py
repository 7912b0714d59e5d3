"""The JSON the pipeline writes never holds a bare NaN or Infinity."""

from __future__ import annotations

import json
import math

import pytest

from spark_jobs.common import finite_json
from spark_jobs.common.errors import PipelineError


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as jq or JSON.parse would."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_dumps_refuses_a_non_finite_number_naming_where():
    value = {"val_loss": math.nan, "history": [1.0, {"grad_norm": -math.inf}], "ok": 2.5}
    with pytest.raises(PipelineError) as info:
        finite_json.dumps(value, "summary.json")
    assert str(info.value) == (
        "refusing to write summary.json: val_loss is nan, history[1].grad_norm is -inf "
        "(JSON has no NaN or Infinity)"
    )
    assert strict_loads(finite_json.dumps({"a": 1.5, "b": None}, "x")) == {"a": 1.5, "b": None}


def test_with_nulls_keeps_the_record_and_says_why():
    record = {"step": 5, "loss": 2.0, "grad_norm": math.inf, "layer_grad_norms": {"h.0": math.nan}}
    cleaned = finite_json.with_nulls(record)
    assert cleaned == {
        "step": 5,
        "loss": 2.0,
        "grad_norm": None,
        "layer_grad_norms": {"h.0": None},
        "non_finite": {"grad_norm": "inf", "layer_grad_norms.h.0": "nan"},
    }
    assert strict_loads(finite_json.dumps(cleaned, "steps.jsonl")) == cleaned
    assert record["grad_norm"] == math.inf  # the caller's record is not changed
    assert finite_json.with_nulls({"a": 1.0}) == {"a": 1.0}
