"""Fixtures for the preprocess step: small configs, a two-document corpus, one baseline run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from spark_jobs.common import storage
from spark_jobs.common.config import PipelineConfig, validate_config

# Small and fast: a tiny vocab and embedding size keep every run to a few seconds.
EMBEDDING_SIZE = 16
VOCAB_SIZE = 300
SECOND_DOC = "Caf\u00e9 \u2014 na\u00efve \u65e5\u672c\u8a9e\r\nwindows line\r\nold mac line\rlast line without newline"


def make_config(
    root: Path, corpus: Path | str, run_id: str = "t", kind: str = "gpt", **data: object
) -> PipelineConfig:
    """A small config; kind="mlp" makes preprocess train Word2Vec embeddings (gpt needs none)."""
    raw = {
        "spark": {"master": "local[2]"},
        "model": {"kind": kind, "embedding_size": EMBEDDING_SIZE, "num_heads": 4},
        "training": {"seed": 7},
        "data": {"corpus_path": str(corpus), "vocab_size": VOCAB_SIZE, "word2vec_iterations": 1, **data},
        "run": {"root": str(root), "id": run_id},
    }
    return validate_config(raw)


def step_dir(config: PipelineConfig) -> str:
    return storage.step_dir(config.run.root, config.run.id, "preprocess")


@pytest.fixture(scope="session")
def two_doc_corpus(tmp_path_factory, small_corpus) -> Path:
    """A directory: Tiny Shakespeare's start, plus a CRLF/CR, non-ASCII document."""
    folder = tmp_path_factory.mktemp("two_docs")
    shutil.copy(small_corpus, folder / "a_shakespeare.txt")
    (folder / "b_mixed.txt").write_bytes(SECOND_DOC.encode("utf-8"))
    (folder / ".hidden.txt").write_text("ignored\n")
    return folder


@pytest.fixture(scope="session")
def baseline(spark, tmp_path_factory, two_doc_corpus):
    """One preprocess run on the two-document corpus, for the mlp (Word2Vec embeddings)."""
    from spark_jobs.steps.preprocess import run

    root = tmp_path_factory.mktemp("baseline")
    config = make_config(root, two_doc_corpus, run_id="base", kind="mlp")
    stats = run(config)
    return config, Path(step_dir(config)), stats
