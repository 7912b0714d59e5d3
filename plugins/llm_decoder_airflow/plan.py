"""`make emr-plan`: print the exact requests the EMR DAG would send, without any AWS call.

    python -m llm_decoder_airflow.plan [--set key=value ...]

One JSON object on stdout: `{"run_job_flow": {...}, "steps": [...], "estimate_usd": 1.2,
"security_configuration": {...}, "bootstrap_pip_install": "... --no-index ..."}`,
for configs/emr.yaml (or $LLM_DECODER_EMR_CONFIG) and the DAG's Param defaults, rendered by
the same code as the `stage` task (tasks.plan_emr_run) under the placeholder run id `plan`.
`--set` overrides any key of the config file before it is read, the steps' sections
(`training.num_workers=8`) and the Airflow-only ones (`emr.core_instance_count=4`) alike.
Nothing is uploaded and no cluster is created. `estimate_usd` is the cluster's instances ×
emr.prices × emr.default_run_hours, and `estimate_basis` says so: with no AWS call, the earlier
runs' cluster hours, which the `stage` task's estimate uses, are not read (llm_decoder_airflow.cost).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from llm_decoder_airflow.params import emr_params
from llm_decoder_airflow.security import planned_request
from llm_decoder_airflow.settings import emr_config_path, read_yaml, split_config
from llm_decoder_airflow.tasks import plan_emr_run
from llm_decoder_airflow.wheelhouse import bootstrap_pip_command
from spark_jobs.common.config import apply_overrides
from spark_jobs.common.errors import ConfigError

PLAN_RUN_ID = "plan"


def plan(overrides: list[str]) -> dict[str, Any]:
    """The run_job_flow request and the add_job_flow_steps requests of a default-Params run."""
    path = emr_config_path()
    raw = apply_overrides(read_yaml(path), overrides)
    pipeline_raw, settings = split_config(raw, f"{path} (with --set)")
    # The Params a manual trigger sends when nothing in the form is changed.
    params = {name: param.value for name, param in emr_params(pipeline_raw, settings.emr).items()}
    _, requests = plan_emr_run(pipeline_raw, settings, params, PLAN_RUN_ID)
    return {
        "run_job_flow": requests["job_flow"],
        "steps": requests["steps"],
        **requests["estimate"],
        # What `stage` creates if absent (its JSON as an object), or null when
        # emr.security_configuration names one: run_job_flow's SecurityConfiguration says which.
        "security_configuration": planned_request(settings.emr),
        # What the bootstrap action (run_job_flow's BootstrapActions) installs with on every node.
        "bootstrap_pip_install": bootstrap_pip_command(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llm_decoder_airflow.plan", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    args = parser.parse_args(argv)
    # stdout holds only the JSON: Airflow's logging writes to stdout, so while the plan is
    # built, file descriptor 1 points at stderr (whatever stream object a logger kept).
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        result = plan(args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
