"""An emulated AWS for trying llm_decoder_emr by hand: a moto server whose EMR steps complete.

    .venv/bin/python tests/airflow/moto_emr.py --port 5000 [--fail-step train]
    # in another shell:
    export AIRFLOW_CONN_AWS_DEFAULT='{"conn_type":"aws","login":"test","password":"test",
        "extra":{"region_name":"us-east-1","endpoint_url":"http://127.0.0.1:5000"}}'
    LLM_DECODER_EMR_CONFIG=<a config with bucket llm-test-bucket and short waits> \\
        airflow dags test llm_decoder_emr

moto alone accepts EMR steps but never runs them; the test harness thread moves them on
(PENDING → RUNNING → COMPLETED, or FAILED for --fail-step) and writes stand-in metrics.
The bucket `llm-test-bucket` is created with a corpus slice at data/small.txt.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from airflow_testing import BUCKET, CORPUS_KEY, REGION, EmrHarness, corpus_slice, watches_recorded  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--fail-step", choices=["preprocess", "window", "train"])
    parser.add_argument("--step-seconds", type=float, default=0.3, help="how long each step runs at least")
    parser.add_argument(
        "--until-watched", type=int, default=0, help="and until DescribeStep said RUNNING this many times"
    )
    args = parser.parse_args()

    import boto3
    from launchers.emr_box.box import failure_details_reported
    from moto.server import ThreadedMotoServer

    failure_details_reported().__enter__()  # for the server's lifetime: this process ends with it
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{args.port}"
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=CORPUS_KEY, Body=corpus_slice().encode())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    harness = EmrHarness(
        s3, fail_step=args.fail_step, step_seconds=args.step_seconds, until_watched=args.until_watched
    )
    with watches_recorded([harness]), harness:
        print(f"moto with EMR steps on {endpoint}; s3://{BUCKET}/{CORPUS_KEY} ready", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    server.stop()


if __name__ == "__main__":
    main()
