"""A tiny run root for the training tests: preprocess and window outputs as the steps write them.

Building it with the real Spark steps costs minutes on a loaded 2-core machine, so the
fixture writes the same files directly (the contract in docs/architecture.md): the real BPE
tokenizer trained on the first 40 kB of Tiny Shakespeare, random embeddings, tokens/ as two
segments (train = the first 90 % of the token stream, val = the rest) with split.json, and
windows of W+1 = 17 ids with stride 4 over each.
Each test copies it under a fresh run id, so checkpoints never leak between tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from spark_jobs.common.config import PipelineConfig, apply_overrides, validate_config
from spark_jobs.data.tokenizer import train_tokenizer
from spark_jobs.data.window_chunks import write_stream_split

WINDOW = 16
EMBEDDING = 32
STRIDE = 4
BASE_RUN = "base"


def _write_windows(split_dir: Path, stream: np.ndarray, base: int, files: int = 2) -> int:
    # several files, named against the stream's order: readers must not depend on file order
    return write_stream_split(str(split_dir), stream, base, WINDOW, STRIDE, files)


def build_run(run_dir: Path, text: str, vocab_size: int = 300) -> None:
    preprocess, window = run_dir / "preprocess", run_dir / "window"
    preprocess.mkdir(parents=True)
    tokenizer = train_tokenizer([text], vocab_size)
    (preprocess / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
    ids = np.array(tokenizer.encode(text).ids, dtype=np.int64)
    vocab = tokenizer.get_vocab_size()
    generator = torch.Generator().manual_seed(0)
    save_file(
        {"embeddings": torch.randn(vocab, EMBEDDING, generator=generator) * 0.3},
        preprocess / "embeddings.safetensors",
    )
    chars_per_token = len(text) / len(ids)
    stats = {
        "documents": 1,
        "chars": len(text),
        "tokens": len(ids),
        "vocab_size": vocab,
        "chars_per_token": chars_per_token,
    }
    (preprocess / "stats.json").write_text(json.dumps(stats))
    cut = int(len(ids) * 0.9)
    # tokens/ as two segments, training and validation, and split.json saying where that is
    (preprocess / "tokens").mkdir()
    segments = pa.table(
        {
            "doc_id": pa.array([0, 0], pa.int32()),
            "seq": pa.array([0, 1], pa.int64()),
            "ids": pa.array([ids[:cut].tolist(), ids[cut:].tolist()], pa.list_(pa.int32())),
        }
    )
    pq.write_table(segments, preprocess / "tokens" / "part-00000.parquet")
    val_chars = len(tokenizer.decode(ids[cut:].tolist(), skip_special_tokens=False))
    split = {
        "split_by": "document",
        "valid_split": 0.1,
        "val_first_segment": {"0": 1},
        "chars": {"train": len(text) - val_chars, "val": val_chars},
    }
    (preprocess / "split.json").write_text(json.dumps(split))
    (preprocess / "_SUCCESS").write_text("")

    counts = {
        "train": _write_windows(window / "train", ids[:cut], 0),
        "val": _write_windows(window / "val", ids[cut:], cut),
    }
    distribution = {
        "window_size": WINDOW,
        "stride": STRIDE,
        "chars_per_token": chars_per_token,
        "format": "token-chunks-v1",
        **{split: {"windows": n} for split, n in counts.items()},
    }
    (window / "data_distribution.json").write_text(json.dumps(distribution))
    (window / "_SUCCESS").write_text("")


@pytest.fixture(scope="session")
def run_root(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Path:
    root = tmp_path_factory.mktemp("train-root")
    build_run(root / "runs" / BASE_RUN, small_corpus.read_text(encoding="utf-8"))
    return root


def make_tiny_config(root: Path, run_id: str, *overrides: str) -> PipelineConfig:
    """A config for the tiny run (2-layer models of width 32, 16-token windows); overrides: "a.b=value"."""
    raw = {
        "model": {"kind": "gpt", "window_size": WINDOW, "embedding_size": EMBEDDING, "hidden_size": 64,
                  "num_layers": 2, "num_heads": 2, "dropout": 0.0},
        "training": {"batch_size": 16, "max_steps": 40, "learning_rate": 0.01, "min_learning_rate": 0.001,
                     "warmup_steps": 5, "eval_interval": 20, "eval_batches": 4, "checkpoint_interval": 20,
                     "log_interval": 5, "histogram_interval": 10, "num_threads": 1, "num_workers": 2,
                     "sample_prompts": ["ROMEO:"], "sample_tokens": 8},
        "spark": {"master": "local[2]"},
        "run": {"root": str(root), "id": run_id},
    }  # fmt: skip
    return validate_config(apply_overrides(raw, list(overrides)))


@pytest.fixture
def new_run(run_root: Path, request: pytest.FixtureRequest):
    """Copy the base run's inputs under a fresh run id; returns (root, run_id)."""
    counter = {"n": 0}

    def make(name: str | None = None) -> tuple[Path, str]:
        counter["n"] += 1
        run_id = name or f"{request.node.name[:40]}-{counter['n']}".replace("[", "-").replace("]", "")
        source, target = run_root / "runs" / BASE_RUN, run_root / "runs" / run_id
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        return run_root, run_id

    return make


@pytest.fixture(scope="session")
def tiny_config():
    """make_tiny_config(root, run_id, "training.max_steps=5", ...) (test modules cannot import conftest)."""
    return make_tiny_config
