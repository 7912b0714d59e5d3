"""Benchmark: the preprocess and window steps on Spark against one plain process.

    .venv/bin/python bench/data_steps.py [--copies 10] [--window-size 64] [--stride 1]

Runs both steps on the bundled corpus and on `--copies` copies of it laid end to end, and,
in the same process, the single-process baseline: HF tokenizers `encode_batch_fast` over the
lines (with the tokenizer the preprocess step trained, so both do the same encoding) plus
numpy `sliding_window_view` for the same train/val windows. Prints one JSON object.

The Spark steps do more than the baseline (preprocess also counts tokens and trains
Word2Vec embeddings; both write Parquet and mark completion), so `preprocess_tokens_per_s`
is the whole step and `encode_tokens_per_s` its encoding phase alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from spark_jobs.common import storage
from spark_jobs.common.config import load_config
from spark_jobs.common.spark_session import get_spark
from spark_jobs.data.tokenizer import load_tokenizer
from spark_jobs.steps import preprocess, window

REPO = Path(__file__).resolve().parents[1]


def baseline(text: str, tokenizer_uri: str, window_size: int, stride: int, train_chars: int) -> dict:
    """Encode line by line in one process, then cut the train/val windows with numpy; the split
    is where the preprocess step put it (`train_chars`, a line start, from its split.json)."""
    tokenizer = load_tokenizer(tokenizer_uri)
    began = time.perf_counter()
    parts = []
    for piece in (text[:train_chars], text[train_chars:]):
        encodings = tokenizer.encode_batch_fast(piece.splitlines(keepends=True))
        parts.append(np.fromiter((i for e in encodings for i in e.ids), dtype=np.int32))
    encoded = time.perf_counter()
    windows = 0
    for part in parts:
        if len(part) > window_size:
            view = np.lib.stride_tricks.sliding_window_view(part, window_size + 1)[::stride]
            windows += len(np.ascontiguousarray(view))
    done = time.perf_counter()
    tokens = sum(len(part) for part in parts)
    return {
        "tokens": tokens,
        "windows": windows,
        "encode_tokens_per_s": tokens / (encoded - began),
        "window_tokens_per_s": tokens / (done - encoded),
        "seconds": done - began,
    }


def bench_corpus(name: str, corpus: Path, scratch: Path, args: argparse.Namespace) -> dict:
    overrides = [
        f"data.corpus_path={corpus}",
        f"run.root={scratch}",
        f"run.id={name}",
        f"model.window_size={args.window_size}",
        f"data.window_stride={args.stride}",
        "run.log_level=WARNING",
    ]
    config = load_config(REPO / "configs" / "local.yaml", overrides)
    get_spark(config, "bench")  # start the session outside the timings

    began = time.perf_counter()
    stats = preprocess.run(config)
    preprocess_seconds = time.perf_counter() - began
    began = time.perf_counter()
    windows = window.run(config)
    window_seconds = time.perf_counter() - began

    preprocess_dir = storage.step_dir(config.run.root, name, "preprocess")
    train_chars = json.loads(storage.read_text(storage.join(preprocess_dir, "split.json")))["chars"]["train"]
    text = corpus.read_text(encoding="utf-8")
    single = baseline(
        text, storage.join(preprocess_dir, "tokenizer.json"), args.window_size, args.stride, train_chars
    )
    tokens = stats["tokens"]
    spark = {
        "tokens": tokens,
        "windows": windows["train_windows"] + windows["val_windows"],
        "preprocess_seconds": preprocess_seconds,
        "preprocess_tokens_per_s": tokens / preprocess_seconds,
        "encode_tokens_per_s": stats["tokens_per_s"],
        "window_seconds": window_seconds,
        "window_tokens_per_s": tokens / window_seconds,
    }
    return {
        "chars": len(text),
        "spark": spark,
        "single_process": single,
        "ratio_spark_over_single": {
            "encode": spark["encode_tokens_per_s"] / single["encode_tokens_per_s"],
            "preprocess_vs_encode": spark["preprocess_tokens_per_s"] / single["encode_tokens_per_s"],
            "window": spark["window_tokens_per_s"] / single["window_tokens_per_s"],
        },
        "same_tokens": tokens == single["tokens"],
        "same_windows": spark["windows"] == single["windows"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "tinyshakespeare.txt")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--window-size", type=int, default=64)
    parser.add_argument("--stride", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="bench-data-steps-") as tmp:
        scratch = Path(tmp)
        copies = scratch / f"corpus_x{args.copies}.txt"
        copies.write_text(args.corpus.read_text(encoding="utf-8") * args.copies, encoding="utf-8")
        # Warm up (JVM, Python workers) on a slice, so the first timing is not start-up.
        warmup = scratch / "warmup.txt"
        warmup.write_text(args.corpus.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
        bench_corpus("warmup", warmup, scratch, args)
        result = {
            "window_size": args.window_size,
            "stride": args.stride,
            "corpus": bench_corpus("x1", args.corpus, scratch, args),
            f"corpus_x{args.copies}": bench_corpus(f"x{args.copies}", copies, scratch, args),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
