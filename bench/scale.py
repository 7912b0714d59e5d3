"""Scale benchmark: the real CLI's steps on the bundled corpus x1, x10, x100, against one process.

    .venv/bin/python bench/scale.py [--scales 1,10,100] [--train-scale 10] [--write-table] [--keep]
                                    [--train-runs single,ddp_2w,ddp_1w,...]

For each scale (copies of data/tinyshakespeare.txt laid end to end) it runs `llm-decoder
preprocess` and `window` (stride 1) as subprocesses of `python -m spark_jobs.cli`, and on the
`--train-scale` corpus 50 training steps of each strategy (`single`, `ddp` and
`parameter_averaging` with 2 workers, and the latter two with 1 worker). Each step records:
wall seconds, tokens/s, peak RSS of the CLI's Python process (the driver), of the JVM, and of
the Python workers (the largest one and the largest sum, from a psutil sample of the process
tree every 0.2 s), and the bytes of the step's output folder.

The single-process baseline, in this process: HF tokenizers `encode_batch_fast` over the lines (with
the tokenizer the preprocess step trained), pyarrow writing the token ids as Parquet, and then
what the window step writes (token-chunks: each chunk about `spark.window_chunk_tokens` tokens
of windows plus their run, zstd Parquet). Its figures are `baseline`.

Prints one JSON object (stdout), progress on stderr, and the issue's targets with pass/fail.
`--write-table` also writes the per-core throughputs to bench/throughput.json, which
`llm-decoder estimate` reads (docs/scaling.md).

Caveats: RSS counts pages shared between forked Python workers once per worker, so the sums are
upper bounds; the machine may be shared with other work (note `load_average` in the output).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from spark_jobs.common.config import load_config
from spark_jobs.data.tokenizer import load_tokenizer
from spark_jobs.data.windows import windows_per_chunk

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "local.yaml"
STRIDE = 1
TRAIN_RUNS = (  # (strategy, workers)
    ("single", 1),
    ("ddp", 2),
    ("ddp", 1),
    ("parameter_averaging", 2),
    ("parameter_averaging", 1),
)
MB = 2**20


def progress(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


class TreeSampler(threading.Thread):
    """Peak RSS of a process (the driver), its JVM children and its Python children."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.done = threading.Event()
        self.driver = self.jvm = self.worker_max = self.worker_sum = 0

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval_s)

    def sample(self) -> None:
        try:
            self.driver = max(self.driver, self.process.memory_info().rss)
            children = self.process.children(recursive=True)
        except psutil.Error:
            return  # the driver has exited
        jvm, workers = 0, []
        for child in children:
            try:
                name, rss = child.name(), child.memory_info().rss
            except psutil.Error:
                continue  # exited between the listing and the read
            if "java" in name:
                jvm += rss
            elif "python" in name:
                workers.append(rss)
        self.jvm = max(self.jvm, jvm)
        self.worker_max = max([self.worker_max, *workers])
        self.worker_sum = max(self.worker_sum, sum(workers))

    def figures(self) -> dict[str, float]:
        return {
            "driver_peak_rss_mb": round(self.driver / MB, 1),
            "jvm_peak_rss_mb": round(self.jvm / MB, 1),
            "worker_max_peak_rss_mb": round(self.worker_max / MB, 1),
            "worker_sum_peak_rss_mb": round(self.worker_sum / MB, 1),
        }


def run_cli(step: str, overrides: list[str], log_path: Path) -> dict[str, Any]:
    """Run `python -m spark_jobs.cli STEP` and sample its process tree; wall seconds and peaks."""
    command = [sys.executable, "-m", "spark_jobs.cli", step, "--config", str(CONFIG)]
    command += [arg for override in overrides for arg in ("--set", override)]
    with log_path.open("ab") as log:
        began = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(child.pid)
        sampler.start()
        code = child.wait()
        wall_s = time.perf_counter() - began
        sampler.done.set()
        sampler.join()
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise SystemExit(f"{step} failed (exit {code}); log {log_path}:\n" + "\n".join(tail))
    return {"wall_s": round(wall_s, 2), **sampler.figures()}


def write_chunks(path: Path, stream: np.ndarray, window_size: int, windows_per_chunk: int) -> int:
    """The window step's idea in one process: per chunk, the tokens its windows read and its run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = max(0, (len(stream) - window_size - 1) // STRIDE + 1)
    rows: dict[str, list] = {"ids": [], "run_start": [], "run_count": []}
    for first in range(0, count, windows_per_chunk):
        windows = min(windows_per_chunk, count - first)
        start = first * STRIDE
        rows["ids"].append(stream[start : start + (windows - 1) * STRIDE + window_size + 1])
        rows["run_start"].append(start)
        rows["run_count"].append(windows)
    table = pa.table(
        {
            "ids": pa.array(rows["ids"], type=pa.list_(pa.int32())),
            "run_start": pa.array(rows["run_start"], type=pa.int64()),
            "run_count": pa.array(rows["run_count"], type=pa.int64()),
        }
    )
    pq.write_table(table, path, compression="zstd")
    return count


def baseline(corpus: Path, preprocess_dir: Path, out: Path, window_size: int, per_chunk: int) -> dict:
    """Encode, write tokens, write windows, in this one process (see the module docstring)."""
    tokenizer = load_tokenizer(str(preprocess_dir / "tokenizer.json"))
    train_chars = json.loads((preprocess_dir / "split.json").read_text())["chars"]["train"]
    text = corpus.read_text(encoding="utf-8")
    began = time.perf_counter()
    streams = {}
    for split, piece in (("train", text[:train_chars]), ("val", text[train_chars:])):
        lines = piece.splitlines(keepends=True)
        parts = []
        for i in range(0, len(lines), 50_000):  # batches: the Encoding objects of x100 are GBs
            encodings = tokenizer.encode_batch_fast(lines[i : i + 50_000])
            parts.append(np.fromiter(itertools.chain.from_iterable(e.ids for e in encodings), np.int32))
        streams[split] = np.concatenate(parts) if parts else np.zeros(0, np.int32)
    encoded = time.perf_counter()
    for split, stream in streams.items():  # the token ids, 64 Ki per row (preprocess: per segment)
        rows = [stream[i : i + 65_536] for i in range(0, len(stream), 65_536)]
        table = pa.table({"ids": pa.array(rows, type=pa.list_(pa.int32()))})
        (out / "tokens").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "tokens" / f"{split}.parquet", compression="zstd")
    tokens_written = time.perf_counter()
    windows = sum(
        write_chunks(out / "window" / split / "part-0.parquet", stream, window_size, per_chunk)
        for split, stream in streams.items()
    )
    done = time.perf_counter()
    tokens = sum(len(s) for s in streams.values())
    return {
        "tokens": tokens,
        "windows": windows,
        "encode_s": round(encoded - began, 2),
        "write_tokens_s": round(tokens_written - encoded, 2),
        "write_windows_s": round(done - tokens_written, 2),
        "seconds": round(done - began, 2),
        "tokens_per_s": round(tokens / (done - began), 1),
        "tokens_bytes": dir_bytes(out / "tokens"),
        "window_bytes": dir_bytes(out / "window"),
    }


def bench_scale(scale: int, args: argparse.Namespace, scratch: Path, text: str) -> dict[str, Any]:
    corpus = scratch / f"corpus_x{scale}.txt"
    corpus.write_text(text * scale, encoding="utf-8")
    run_id = f"x{scale}"
    overrides = [
        f"run.root={scratch}",
        f"run.id={run_id}",
        f"data.corpus_path={corpus}",
        f"data.window_stride={STRIDE}",
    ]
    run = scratch / "runs" / run_id
    log = scratch / f"{run_id}.log"
    result: dict[str, Any] = {"corpus_bytes": corpus.stat().st_size}
    for step in ("preprocess", "window"):
        progress(f"x{scale}: {step}…")
        figures = run_cli(step, overrides, log)
        if step == "preprocess":
            stats = json.loads((run / "preprocess" / "stats.json").read_text())
            result["tokens"] = stats["tokens"]
            figures["encode_s"] = stats["encode_seconds"]
        figures["tokens_per_s"] = round(result["tokens"] / figures["wall_s"], 1)
        figures["bytes_written"] = dir_bytes(run / step)
        result[step] = figures
        progress(f"x{scale}: {step} {figures['wall_s']:.1f} s, {figures['tokens_per_s']:.0f} tokens/s")
    data_s = result["preprocess"]["wall_s"] + result["window"]["wall_s"]
    result["data_steps_tokens_per_s"] = round(result["tokens"] / data_s, 1)

    progress(f"x{scale}: single-process baseline…")
    config = load_config(CONFIG, overrides)
    result["baseline"] = baseline(
        corpus,
        run / "preprocess",
        scratch / "baseline" / run_id,
        config.model.window_size,
        windows_per_chunk(config.spark.window_chunk_tokens, STRIDE),
    )
    result["baseline"]["same_tokens"] = result["baseline"]["tokens"] == result["tokens"]
    progress(f"x{scale}: baseline {result['baseline']['seconds']:.1f} s")

    if scale == args.train_scale:
        result["train"] = bench_training(
            overrides, run, log, config.training.batch_size, config.model.window_size, args.train_runs
        )
    if not args.keep:
        corpus.unlink()
    return result


def run_name(strategy: str, workers: int) -> str:
    return f"{strategy}_{workers}w" if strategy != "single" else "single"


def bench_training(
    overrides: list[str], data_run: Path, log: Path, batch_size: int, window_size: int, wanted: set[str]
) -> dict:
    """50 steps of each strategy on this scale's windows, each in a run of its own: a run's
    checkpoints would otherwise carry one strategy's steps into the next."""
    results = {}
    for strategy, workers in TRAIN_RUNS:
        name = run_name(strategy, workers)
        if name not in wanted:
            continue
        run = data_run.with_name(f"{data_run.name}-{name}")
        for step in ("preprocess", "window"):  # lineage compares content ids, not paths
            shutil.copytree(data_run / step, run / step)
        progress(f"train {name}…")
        extra = [
            f"run.id={run.name}",
            f"training.strategy={strategy}",
            f"training.num_workers={workers}",
            "training.max_steps=50",
        ]
        figures = run_cli("train", overrides + extra, log)
        summary = json.loads((run / "metrics" / "summary.json").read_text())
        tokens = summary["steps"] * batch_size * window_size * workers
        figures.update(
            steps=summary["steps"],
            tokens_trained=tokens,
            tokens_per_s=round(tokens / figures["wall_s"], 1),
            # inside the training loop only: what a long run approaches once start-up is paid
            train_s=summary.get("train_s"),
            loop_tokens_per_s=round(tokens / summary["train_s"], 1) if summary.get("train_s") else None,
            bytes_written=dir_bytes(run / "train"),
        )
        results[name] = figures
        progress(f"train {name}: {figures['wall_s']:.1f} s wall, {figures['tokens_per_s']:.0f} tokens/s")
    return results


def targets(scales: dict[int, dict], train_scale: int) -> dict[str, Any]:
    """The issue's targets, each with its figures and pass/fail (None: not measured)."""
    out: dict[str, Any] = {}
    top = max(scales)
    if 10 in scales and 100 in scales:
        small, big = scales[10], scales[100]
        for step in ("preprocess", "window"):
            growth = big[step]["wall_s"] / small[step]["wall_s"]
            out[f"{step}_time_x10_to_x100_le_11x"] = {"ratio": round(growth, 2), "pass": growth <= 11}
            rss = big[step]["driver_peak_rss_mb"] / small[step]["driver_peak_rss_mb"]
            out[f"{step}_driver_rss_x100_le_1.2x_x10"] = {"ratio": round(rss, 2), "pass": rss <= 1.2}
    else:
        out["x10_to_x100"] = {"pass": None, "note": "x100 not run"}
        if 1 in scales and 10 in scales:  # for information only: the same ratios one decade lower
            for step in ("preprocess", "window"):
                out[f"{step}_x1_to_x10_info"] = {
                    "time_ratio": round(scales[10][step]["wall_s"] / scales[1][step]["wall_s"], 2),
                    "driver_rss_ratio": round(
                        scales[10][step]["driver_peak_rss_mb"] / scales[1][step]["driver_peak_rss_mb"], 2
                    ),
                }
    stream_bytes = scales[top]["tokens"] * 4
    window_ratio = scales[top]["window"]["bytes_written"] / stream_bytes
    out["window_bytes_le_1.3x_stream"] = {
        "scale": f"x{top}",
        "ratio": round(window_ratio, 3),
        "pass": window_ratio <= 1.3,
    }
    vs_baseline = scales[top]["data_steps_tokens_per_s"] / scales[top]["baseline"]["tokens_per_s"]
    out["data_steps_ge_0.5x_baseline"] = {
        "scale": f"x{top}",
        "ratio": round(vs_baseline, 3),
        "pass": vs_baseline >= 0.5,
    }
    train = scales.get(train_scale, {}).get("train")
    if train:
        for strategy in ("ddp", "parameter_averaging"):
            if f"{strategy}_2w" not in train or f"{strategy}_1w" not in train:
                continue
            two, one = train[f"{strategy}_2w"], train[f"{strategy}_1w"]
            wall = two["tokens_per_s"] / one["tokens_per_s"]
            loop = (
                two["loop_tokens_per_s"] / one["loop_tokens_per_s"]
                if two["loop_tokens_per_s"] and one["loop_tokens_per_s"]
                else None
            )
            out[f"{strategy}_2_workers_ge_1.7x_1"] = {
                "ratio_wall": round(wall, 2),
                "ratio_loop_only": round(loop, 2) if loop else None,
                "pass": wall >= 1.7,
            }
    return out


def throughput_table(scales: dict[int, dict], train_scale: int) -> dict[str, Any]:
    """bench/throughput.json: per-core tokens/s per step (see spark_jobs.reporting.estimate)."""
    cores = os.cpu_count() or 1
    top = max(scales)
    data = scales[top]
    steps: dict[str, Any] = {}
    for step in ("preprocess", "window"):
        figures = data[step]
        steps[step] = {
            "tokens_per_s": figures["tokens_per_s"],
            "tokens_per_core_s": round(figures["tokens_per_s"] / cores, 1),
            "cores": cores,
            **{k: figures[k] for k in figures if k.endswith("_rss_mb")},
        }
    steps["preprocess"]["input_bytes_per_token"] = round(data["corpus_bytes"] / data["tokens"], 3)
    steps["window"]["output_bytes_per_token"] = round(data["window"]["bytes_written"] / data["tokens"], 3)
    train = scales[train_scale]["train"]
    for strategy in ("single", "ddp", "parameter_averaging"):
        figures = train["single" if strategy == "single" else f"{strategy}_2w"]
        # The loop's throughput: at 1e9 tokens the start-up (Spark, torch, the final
        # evaluation) is a rounding error; it is in `wall_s` here, not in the estimate.
        tokens_per_s = figures["loop_tokens_per_s"] or figures["tokens_per_s"]
        steps[f"train_{strategy}"] = {
            "tokens_per_s": tokens_per_s,
            "tokens_per_core_s": round(tokens_per_s / cores, 1),
            "cores": cores,
            **{k: figures[k] for k in figures if k.endswith("_rss_mb")},
        }
        if strategy != "single":
            one = train[f"{strategy}_1w"]
            steps[f"train_{strategy}"]["scaling_2_vs_1"] = round(
                tokens_per_s / (one["loop_tokens_per_s"] or one["tokens_per_s"]), 2
            )
    return {
        "measured_on": {"machine": machine(), "cores": cores, "date": f"{datetime.now(UTC):%Y-%m-%d}"},
        "scale": f"x{top}",
        "corpus_tokens": data["tokens"],
        "train_scale": f"x{train_scale}",
        "note": "written by bench/scale.py --write-table; local Spark (local[2]), local disk, configs/local.yaml",
        "steps": steps,
    }


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,10,100", help="comma-separated copies of the corpus")
    parser.add_argument("--train-scale", type=int, default=10, help="the scale the training runs use")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "tinyshakespeare.txt")
    parser.add_argument("--write-table", action="store_true", help="write bench/throughput.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    all_runs = [run_name(strategy, workers) for strategy, workers in TRAIN_RUNS]
    parser.add_argument(
        "--train-runs", default=",".join(all_runs), help="which training runs, of " + ", ".join(all_runs)
    )
    args = parser.parse_args()
    args.train_runs = set(args.train_runs.split(","))
    if args.train_runs - set(all_runs):
        parser.error(
            f"--train-runs: unknown {sorted(args.train_runs - set(all_runs))}; choose from {all_runs}"
        )
    wanted = sorted({int(s) for s in args.scales.split(",")})

    scratch = Path(tempfile.mkdtemp(prefix="bench-scale-", dir="/tmp"))
    progress(f"scratch {scratch}")
    text = args.corpus.read_text(encoding="utf-8")
    try:
        scales = {scale: bench_scale(scale, args, scratch, text) for scale in wanted}
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    result = {
        "machine": machine(),
        "cores": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "stride": STRIDE,
        "scales": {f"x{scale}": figures for scale, figures in scales.items()},
        "targets": targets(scales, args.train_scale),
    }
    if args.write_table and args.train_scale in scales and args.train_runs == set(all_runs):
        table = throughput_table(scales, args.train_scale)
        (REPO / "bench" / "throughput.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
        result["table_written"] = str(REPO / "bench" / "throughput.json")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
