"""`llm-decoder preprocess` and `spark-submit spark_jobs/steps/preprocess.py` do the same thing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from spark_jobs.common import storage

from .conftest import EMBEDDING_SIZE, VOCAB_SIZE


def _sets(root, corpus) -> list[str]:
    # A user embeddings file for the 256 byte symbols skips Word2Vec (tested in-process), which
    # keeps these two end-to-end runs short.
    from tokenizers.pre_tokenizers import ByteLevel

    vectors = root / "bytes.txt"
    symbols = sorted(ByteLevel.alphabet())
    vectors.write_text(
        f"{len(symbols)} {EMBEDDING_SIZE}\n"
        + "".join(f"{t} {' '.join(['0.25'] * EMBEDDING_SIZE)}\n" for t in symbols),
        encoding="utf-8",
    )
    items = [
        f"data.embeddings_path={vectors}",
        "data.max_oov_rate=1.0",
        f"data.corpus_path={corpus}",
        f"data.vocab_size={VOCAB_SIZE}",
        f"model.embedding_size={EMBEDDING_SIZE}",
        f"run.root={root}",
        "run.id=entry",
    ]
    return [arg for item in items for arg in ("--set", item)]


def _check_output(root, corpus) -> dict:
    out = storage.step_dir(str(root), "entry", "preprocess")
    assert storage.is_complete(out)
    stats = json.loads(open(os.path.join(out, "stats.json")).read())
    tokenizer = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
    import pyarrow.parquet as pq

    table = pq.read_table(os.path.join(out, "tokens")).sort_by(
        [("doc_id", "ascending"), ("seq", "ascending")]
    )
    ids = [i for row in table.column("ids").to_pylist() for i in row]
    assert tokenizer.decode(ids) == corpus.read_text(encoding="utf-8")
    assert stats["tokens"] == len(ids)
    assert stats["embeddings_source"].startswith("file:")
    return stats


def test_cli_preprocess(spark, repo, tmp_path, small_corpus, monkeypatch):
    """`llm-decoder preprocess` in-process (it reuses the session's Spark through getOrCreate);
    the same command as a subprocess is exercised by the bad-input tests."""
    from typer.testing import CliRunner

    from spark_jobs.cli import app

    monkeypatch.chdir(repo)
    result = CliRunner().invoke(
        app, ["preprocess", "--config", "configs/local.yaml", *_sets(tmp_path, small_corpus)]
    )
    assert result.exit_code == 0, result.output
    _check_output(tmp_path, small_corpus)


def test_cli_pipeline_runs_the_three_steps_and_writes_the_html_report(
    spark, repo, tmp_path, small_corpus, monkeypatch
):
    """`llm-decoder pipeline` in-process: preprocess, window, train (a few steps), then report.html."""
    from typer.testing import CliRunner

    from spark_jobs.cli import app

    monkeypatch.chdir(repo)
    tiny = ["model.window_size=16", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
            "data.window_stride=16", "training.max_steps=3", "training.batch_size=8", "training.eval_batches=1",
            "training.sample_tokens=4", "training.num_threads=1"]  # fmt: skip
    sets = [*_sets(tmp_path, small_corpus), *[arg for item in tiny for arg in ("--set", item)]]
    result = CliRunner().invoke(app, ["pipeline", "--config", "configs/local.yaml", *sets])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "entry"
    assert all(storage.is_complete(str(run / step)) for step in ("preprocess", "window", "train"))
    html = (run / "metrics" / "report.html").read_text()
    assert result.output.strip().endswith(str(run / "metrics" / "report.html"))
    assert "<html" in html and "entry" in html


@pytest.mark.slow
def test_spark_submit_preprocess(repo, tmp_path, small_corpus):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    args = [
        str(repo / ".venv/bin/spark-submit"),
        "--master",
        "local[2]",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "--conf",
        "spark.driver.bindAddress=127.0.0.1",
        "--conf",
        "spark.ui.enabled=false",
        "spark_jobs/steps/preprocess.py",
        "--config",
        "configs/local.yaml",
    ]
    result = subprocess.run(
        args + _sets(tmp_path, small_corpus), cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # spark-submit's PythonRunner sends the Python driver's stderr to its stdout.
    assert "[run=entry step=preprocess]" in result.stdout + result.stderr
    _check_output(tmp_path, small_corpus)
