"""`make run`: the local DAG end to end on SQLite (no server), then the headline figures,
the report's path and a generated sample.

    python -m launchers.run_local [--corpus PATH] [--root DIR] [--prompt TEXT]

Airflow reads its settings when first imported: the Makefile sets AIRFLOW_HOME and the
folders; `airflow_env` fills in whatever is missing before anything imports airflow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
    args = parser.parse_args(argv)

    for key, value in airflow_env(PROJECT / ".airflow").items():
        os.environ.setdefault(key, value)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)

    from airflow.dag_processing.dagbag import DagBag
    from llm_decoder_airflow.collect import headline_table
    from llm_decoder_airflow.pipeline import run_id_from_airflow

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        for path, error in bag.import_errors.items():
            print(f"error: {path}: {error}", file=sys.stderr)
        return 1
    dag = bag.get_dag("llm_decoder_local")
    conf = {k: v for k, v in {"corpus_uri": args.corpus, "root": args.root}.items() if v}
    dag_run = dag.test(run_conf=conf)

    root = conf.get("root") or dag.params["root"]
    run = Path(root) / "runs" / run_id_from_airflow(dag_run.run_id)
    if str(dag_run.state) != "success":
        print(
            f"\nerror: the run {dag_run.run_id} ended {dag_run.state}; see the task logs above",
            file=sys.stderr,
        )
        return 1
    summary = json.loads((run / "summary.json").read_text())
    print(f"\n== run {summary['run_id']} ({summary['status']}) ==\n{headline_table(summary)}")
    print(f"\nreport:  {run / 'report.md'}")
    print(f"metrics: {summary['metrics_report_uri']}")
    if summary.get("html_report_uri"):
        print(f"html:    {summary['html_report_uri']}")
    champion = json.loads((Path(root) / "models" / "champion.json").read_text())
    figure = "val_bits_per_char" if champion.get("val_bits_per_char") is not None else "val_loss"
    print(f"champion: {champion['run_id']} ({figure} {champion[figure]:.4f})")
    print(f"\n== sample: {args.prompt!r} ==")
    sample = subprocess.run(
        [str(bin_dir / "llm-decoder"), "generate", "--model", summary["model_uri"], "--prompt", args.prompt],
        check=False,
    )
    return sample.returncode


if __name__ == "__main__":
    sys.exit(main())
