"""`make emr-box`: one run of the EMR DAG in the box; the last line printed is its JSON summary.

python -m launchers.emr_box [--strategy ddp|parameter_averaging] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from launchers.run_local import airflow_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="ddp", choices=["ddp", "parameter_averaging"])
    parser.add_argument(
        "--dir", help="where the box keeps its nodes, logs and Airflow home (default: a temp dir)"
    )
    parser.add_argument("--max-steps", type=int, default=40)
    args = parser.parse_args(argv)

    base = Path(args.dir or tempfile.mkdtemp(prefix="emr-box-")).resolve()
    for key, value in airflow_env(base / "airflow").items():
        os.environ[key] = value
    (base / "airflow").mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's access log

    from launchers.emr_box.box import EmrBox, corpus_slice
    from launchers.emr_box.errors import BoxError

    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / "airflow"), "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    try:
        with EmrBox(base / "box") as box:
            corpus = box.put_corpus("data/small.txt", corpus_slice())
            config = box.write_config(corpus, strategy=args.strategy, max_steps=args.max_steps)
            os.environ.update(box.airflow_env(config))
            result = box.run_dag({"strategy": args.strategy})
            summary = box.summary(result, args.strategy)
    except BoxError as exc:
        print(f"error: emr box: {exc}", file=sys.stderr)
        return 2
    print(f"box files, step logs and Spark node logs: {base}", flush=True)
    print(json.dumps(summary), flush=True)
    return 0 if result.state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
