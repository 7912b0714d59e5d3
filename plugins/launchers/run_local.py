"""`make run`: the local DAG end to end on SQLite (no server), then the headline figures,
the report's path and a generated sample.

    python -m launchers.run_local [--corpus PATH] [--root DIR] [--prompt TEXT] [--verbose]

The terminal gets one line per task as it starts and ends; Airflow's and Spark's logs go to
.airflow/logs/make-run/<time>.log (launchers/progress.py), or to the terminal with --verbose.

Airflow reads its settings when first imported: the Makefile sets AIRFLOW_HOME and the
folders; `airflow_env` fills in whatever is missing before anything imports airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from launchers.progress import Console, loud_output, quiet_output, run_dag

PROJECT = Path(__file__).resolve().parents[2]


def airflow_env(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", help="corpus path (default: the config's, data/tinyshakespeare.txt)")
    parser.add_argument("--root", help="run root (default: ./output)")
    parser.add_argument("--prompt", default="ROMEO:", help="prompt for the sample")
    parser.add_argument("--verbose", action="store_true", help="Airflow's and Spark's logs on the terminal")
    args = parser.parse_args(argv)

    for key, value in airflow_env(PROJECT / ".airflow").items():
        os.environ.setdefault(key, value)
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    if args.verbose:
        with loud_output() as console:
            return run(args, console)
    log_path = home / "logs" / "make-run" / f"{time.strftime('%Y%m%dT%H%M%S')}.log"
    print(f"Airflow's and Spark's logs: {log_path}", flush=True)
    try:
        with quiet_output(log_path) as console:
            code = run(args, console)
    except KeyboardInterrupt:
        print(f"interrupted; logs: {log_path}", file=sys.stderr)
        return 130
    except BaseException:
        print(f"logs:    {log_path}", file=sys.stderr)
        raise
    print(f"logs:    {log_path}", file=sys.stdout if code == 0 else sys.stderr)
    return code


def run(args: argparse.Namespace, console: Console) -> int:
    """Run the local DAG, then print the summary and a sample on the console."""
    out, err = console.out, console.err
    bin_dir = Path(sys.executable).parent
    migrate = subprocess.run(
        [str(bin_dir / "airflow"), "db", "migrate"], check=False, stdout=subprocess.DEVNULL
    )
    if migrate.returncode != 0:
        print(f"error: airflow db migrate failed (exit {migrate.returncode})", file=err)
        return 1

    from airflow.dag_processing.dagbag import DagBag
    from llm_decoder_airflow.collect import headline_table
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"error: {path}: {error}", file=err)
        return 1
    dag = bag.get_dag("llm_decoder_local")
    conf = {k: v for k, v in {"corpus_uri": args.corpus, "root": args.root}.items() if v}
    print(f"{dag.dag_id}: {len(dag.task_ids)} tasks", file=out, flush=True)
    dag_run = run_dag(dag, conf, console)

    root = conf.get("root") or dag.params["root"]
    run = Path(root) / "runs" / run_id_from_airflow(dag_run.run_id)
    if str(dag_run.state) != "success":
        where = "the task logs above" if console.log_path is None else "the full log below"
        print(f"\nerror: the run {dag_run.run_id} ended {dag_run.state}; see {where}", file=err)
        return 1
    summary = json.loads((run / "summary.json").read_text())
    print(f"\n== run {summary['run_id']} ({summary['status']}) ==\n{headline_table(summary)}", file=out)
    print(f"\nreport:  {run / 'report.md'}", file=out)
    print(f"metrics: {summary['metrics_report_uri']}", file=out)
    if summary.get("html_report_uri"):
        print(f"html:    {summary['html_report_uri']}", file=out)
    champion = json.loads((Path(root) / "models" / "champion.json").read_text())
    figure = "val_bits_per_char" if champion.get("val_bits_per_char") is not None else "val_loss"
    print(f"champion: {champion['run_id']} ({figure} {champion[figure]:.4f})", file=out)
    print(f"\n== sample: {args.prompt!r} ==", file=out, flush=True)
    sample = subprocess.run(
        [str(bin_dir / "llm-decoder"), "generate", "--model", summary["model_uri"], "--prompt", args.prompt],
        check=False,
        stdout=out,
        stderr=err,
    )
    return sample.returncode


if __name__ == "__main__":
    sys.exit(main())
