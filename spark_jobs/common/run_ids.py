"""Run ids for the CLI: a new one per run, or the latest run a step can continue.

A constant default id made two runs on one machine write into each other. The CLI now gives
every `preprocess` and `pipeline` a new id (`20261129-101500-3fa2c1`: time, then 6 random hex
digits), and a bare `window` or `train` continues the newest run whose inputs are complete.
Naming the run (`--set run.id=...`) always wins.
"""

from __future__ import annotations

import secrets
import time

from spark_jobs.common import storage
from spark_jobs.common.config import RunConfig, apply_overrides, load_raw
from spark_jobs.common.errors import InputError
from spark_jobs.common.pipeline import step_by_name


def with_run_id(config_path: str | None, overrides: list[str], step: str) -> tuple[list[str], str | None]:
    """The overrides, plus run.id when neither the config file nor them name the run: a new
    id for preprocess (and `pipeline`), the latest run whose inputs are complete for a later step.
    Also the line to log once the step's logging is set up (None when the run was named)."""
    raw = apply_overrides(load_raw(config_path) if config_path else {}, list(overrides))
    run = raw.get("run") or {}
    if run.get("id") is not None:
        return list(overrides), None
    if step in ("preprocess", "pipeline"):
        run_id, how = new_run_id(), "a new run"
    else:
        run_id = latest_run_for(str(run.get("root") or RunConfig().root), step)
        how = f"the latest run whose {step} inputs are complete"
    return [*overrides, f"run.id={run_id}"], f"run id {run_id}: {how} (--set run.id=... names one)"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def latest_run_for(root: str, step: str) -> str:
    """The run under `root` whose inputs of `step` are complete and finished last."""
    inputs = [name for name in step_by_name(step).inputs if name != "corpus"]
    runs_uri = storage.join(root, "runs")
    candidates: list[tuple[float, str]] = []
    if storage.exists(runs_uri):
        for run_id in storage.list_dir(runs_uri):
            markers = [
                storage.join(storage.step_dir(root, run_id, name), storage.SUCCESS_MARKER) for name in inputs
            ]
            times = [storage.modified_time(marker) for marker in markers]
            if all(t is not None for t in times):
                candidates.append((max(times), run_id))  # type: ignore[arg-type]
    if not candidates:
        needed = " and ".join(inputs)
        raise InputError(
            f"no run under {runs_uri} has a completed {needed} for {step}: run the earlier steps "
            "first, or name the run with --set run.id=..."
        )
    return max(candidates)[1]
