"""Training throughput: our trainer against a plain PyTorch loop, and 1 vs 2 workers per strategy.

    .venv/bin/python bench/train_throughput.py [--steps 30] [--batch-size 64]

Prints JSON with, all measured in this one run:
- `matmul_gflops`: fp32 2048x2048 matmul, 1 and 2 threads: the machine's practical peak;
- `allocator`: the plain loop in fresh processes with glibc's default malloc vs with
  `keep_freed_memory` (what every training process applies, with subnormals flushed to zero:
  `prepare_cpu_for_training`; the rest of the bench runs with both);
- `trainer_vs_plain`: samples/s on wall-clock of a whole `single` training call (loading the
  windows, the schedule, clipping, the periodic evaluations, checkpoints and metric writes at
  configs/local.yaml's intervals, the final result) vs a plain loop of the same recipe
  (schedule, forward, backward, clipping, optimizer step) on the same model and batches; the
  ratio is the median of the interleaved pairs' ratios (one pair's two runs see the same load);
  target >= 0.95;
- `scaling`: samples/s with 1 and 2 workers for `single` (threads), `ddp` (ranks) and
  `parameter_averaging` (Spark tasks), each worker on one thread; target >= 1.7x;
- FLOP utilisation = model.flops_per_sample() x samples/s / matmul peak at the same threads.

The data are byte-level windows (vocab 256) of Tiny Shakespeare in the window step's
format (token chunks, configs/local.yaml's window and stride), so no preprocessing runs here.
The models and the recipe (optimizer, learning rate, clipping) are configs/local.yaml's: its gpt,
and the same sizes with `model.kind=mlp`.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from spark_jobs.common.config import PipelineConfig
from spark_jobs.data.loader import count_windows
from spark_jobs.data.window_chunks import write_stream_split
from spark_jobs.models import build_model
from spark_jobs.training.inputs import TrainInputs
from spark_jobs.training.loop import keep_freed_memory, prepare_cpu_for_training
from spark_jobs.training.optim import learning_rate_at, make_optimizer, set_learning_rate
from spark_jobs.training.strategies import STRATEGIES

REPO = Path(__file__).resolve().parents[1]
LOCAL = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
WINDOW = LOCAL["model"]["window_size"]
VOCAB = 256
log = logging.getLogger("bench.train_throughput")


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - began) / 1e9


def write_windows(root: Path, chars: int) -> Path:
    """window/train and window/val (last 10 %) of byte ids, stride 8, in the window step's format."""
    text = (REPO / "data" / "tinyshakespeare.txt").read_bytes()[:chars]
    ids = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
    split = int(len(ids) * 0.9)
    window_dir = root / "window"
    for name, stream, offset in (("train", ids[:split], 0), ("val", ids[split:], split)):
        write_stream_split(
            str(window_dir / name), stream, offset, WINDOW, LOCAL["data"]["window_stride"], files=1
        )
    return window_dir


def make_config(kind: str, root: Path, run_id: str, **training: object) -> PipelineConfig:
    """configs/local.yaml's model (as `kind`) and recipe; no evaluations or checkpoints unless
    `training` sets their intervals."""
    return PipelineConfig.model_validate(
        {
            "model": {**LOCAL["model"], "kind": kind},
            "training": {
                **LOCAL["training"],
                "eval_interval": 100_000,
                "eval_batches": 2,
                "checkpoint_interval": 100_000,
                "shuffle": True,
                **training,
            },
            "run": {"root": str(root), "id": run_id},
        }
    )


def make_inputs(window_dir: Path, run: Path, kind: str) -> TrainInputs:
    rows = {s: count_windows(str(window_dir), s) for s in ("train", "val")}
    return TrainInputs(
        run_uri=str(run),
        window_dir=str(window_dir),
        checkpoint_dir=str(run / "checkpoints"),
        metrics_dir=str(run / "metrics"),
        scratch_dir=str(run / "scratch"),
        vocab_size=VOCAB,
        embeddings=torch.randn(
            VOCAB, LOCAL["model"]["embedding_size"], generator=torch.Generator().manual_seed(0)
        )
        if kind == "mlp"
        else None,
        chars_per_token=1.0,
        num_train_windows=rows["train"],
        num_val_windows=rows["val"],
    )


def plain_loop(config: PipelineConfig, inputs: TrainInputs, steps: int, threads: int) -> float:
    """samples/s of the same recipe with none of the bookkeeping, as nanoGPT's train.py writes it:
    the learning-rate schedule, forward, backward, gradient clipping, optimizer step, on the same
    model and batches (wall-clock from loading the windows to the last step, as the trainer's)."""
    from spark_jobs.data.loader import batch_order, load_windows

    cfg = config.training
    torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    began = time.perf_counter()
    windows = load_windows(inputs.window_dir, "train")
    model = build_model(config.model, inputs.vocab_size, inputs.embeddings)
    optimizer = make_optimizer(model, cfg)
    order = batch_order(len(windows), cfg.batch_size, 0, cfg.seed)
    for i in range(steps):
        set_learning_rate(optimizer, learning_rate_at(i, cfg, steps))
        out = model(windows[order[i % len(order)]])
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
    return steps * cfg.batch_size / (time.perf_counter() - began)


def _plain_in_fresh_process(
    kind: str, root: str, window_dir: str, steps: int, batch: int, threads: int, keep: bool
) -> float:
    if keep:
        keep_freed_memory()
    config = make_config(kind, Path(root), "allocator", batch_size=batch, num_threads=threads)
    return plain_loop(config, make_inputs(Path(window_dir), Path(root) / "allocator", kind), steps, threads)


def allocator_effect(
    kind: str, root: Path, window_dir: Path, steps: int, batch: int, threads: int, repeats: int
) -> dict:
    """The plain loop in fresh processes (malloc's settings are per process and one-way): glibc's
    default malloc vs `keep_freed_memory`, which every training process applies."""
    context = multiprocessing.get_context("spawn")
    best = {False: 0.0, True: 0.0}
    for _ in range(repeats):  # interleaved, so a burst of load hits both alike
        for keep in best:
            with context.Pool(1) as pool:
                args = (kind, str(root), str(window_dir), steps, batch, threads, keep)
                best[keep] = max(best[keep], pool.apply(_plain_in_fresh_process, args))
    return {
        "default_malloc_samples_per_s": round(best[False], 1),
        "kept_memory_samples_per_s": round(best[True], 1),
        "speedup": round(best[True] / best[False], 3),
    }


def run_strategy(
    strategy: str, kind: str, root: Path, window_dir: Path, run_id: str, **training: object
) -> dict:
    run = root / run_id
    config = make_config(kind, root, run_id, strategy=strategy, **training)
    began = time.perf_counter()
    result = STRATEGIES[strategy](config, make_inputs(window_dir, run, kind), False)
    wall_s = time.perf_counter() - began
    figures = {
        "samples_per_s": result["samples_per_s"],  # inside the steps only
        "wall_samples_per_s": result["steps"]
        * config.training.batch_size
        * max(1, result["world_size"])
        / wall_s,
        "wall_s": round(wall_s, 1),
    }
    if strategy == "parameter_averaging":
        # steady state: rounds after the first (which starts the Python workers and imports torch)
        records = [json.loads(line) for line in (run / "metrics" / "steps.jsonl").read_text().splitlines()]
        rounds = [r for r in records if r.get("kind") == "train"]
        steady = rounds[1:] or rounds
        per_round = (
            config.training.averaging_frequency * config.training.batch_size * config.training.num_workers
        )
        figures["steady_samples_per_s"] = per_round / float(np.median([r["round_s"] for r in steady]))
        figures["round_overhead_s"] = float(np.median([r["round_overhead_s"] for r in steady]))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per scaling measurement")
    parser.add_argument(
        "--trainer-steps",
        type=int,
        default=200,
        help="steps of trainer vs plain (the default intervals apply)",
    )
    parser.add_argument("--batch-size", type=int, default=LOCAL["training"]["batch_size"])
    parser.add_argument("--averaging-frequency", type=int, default=10)
    parser.add_argument("--chars", type=int, default=300_000, help="corpus prefix to cut windows from")
    parser.add_argument("--skip", default="", help="comma list of: ddp,parameter_averaging")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="tries of each single-process loop (pairs for trainer vs plain)",
    )
    parser.add_argument(
        "--out", default=None, help="also write the JSON here (ddp ranks print to stdout too)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    window_dir = write_windows(root, args.chars)
    steps, batch = args.steps, args.batch_size
    cores = os.cpu_count() or 1
    results: dict = {"cores": cores, "steps": steps, "batch_size": batch, "window": WINDOW}

    # The machine may be shared: keep the best of a few tries, for the peak and for each loop.
    peak = {t: max(matmul_gflops(t) for _ in range(3)) for t in sorted({1, min(2, cores)})}
    results["matmul_gflops"] = {str(t): round(g, 1) for t, g in peak.items()}

    def utilisation(kind: str, samples_per_s: float, threads: int) -> float:
        embeddings = make_inputs(window_dir, root, kind).embeddings
        model = build_model(make_config(kind, root, "x").model, VOCAB, embeddings)
        return model.flops_per_sample() * samples_per_s / (peak[threads] * 1e9)

    def best_of(tries: int, strategy: str, kind: str, run_id: str, **training: object) -> dict:
        runs = [
            run_strategy(strategy, kind, root, window_dir, f"{run_id}-{i}", **training) for i in range(tries)
        ]
        return max(runs, key=lambda r: r["samples_per_s"])

    # 0. glibc's malloc returning freed memory to the kernel after every step, vs keeping it
    threads = max(peak)
    results["allocator"] = {
        kind: allocator_effect(kind, root, window_dir, args.trainer_steps, batch, threads, args.repeats)
        for kind in ("gpt", "mlp")
    }
    prepare_cpu_for_training()  # from here on this process too: the plain loop gets what the trainer has

    # 1. our trainer vs a plain loop, same model, batch, threads (all cores), on wall-clock, with
    #    evaluations, checkpoints and metric writes at the intervals `make run` uses
    intervals = {
        k: LOCAL["training"][k]
        for k in ("eval_interval", "eval_batches", "checkpoint_interval", "log_interval")
    }
    results["trainer_vs_plain"] = {}
    for kind in ("gpt", "mlp"):
        training = {"batch_size": batch, "max_steps": args.trainer_steps, "num_threads": threads, **intervals}
        config = make_config(kind, root, f"plain-{kind}", **training)
        plain, ours = [], []
        for attempt in range(args.repeats):  # interleaved, so a burst of load hits both alike
            inputs = make_inputs(window_dir, root / "plain", kind)
            plain.append(plain_loop(config, inputs, args.trainer_steps, threads))
            run = run_strategy("single", kind, root, window_dir, f"single-{kind}-{attempt}", **training)
            ours.append(run["wall_samples_per_s"])
        ratios = [o / p for o, p in zip(ours, plain, strict=True)]
        results["trainer_vs_plain"][kind] = {
            "threads": threads,
            "steps": args.trainer_steps,
            **intervals,
            "plain_samples_per_s_median": round(float(np.median(plain)), 1),
            "trainer_samples_per_s_median": round(float(np.median(ours)), 1),
            "pair_ratios": [round(r, 3) for r in ratios],
            "ratio": round(float(np.median(ratios)), 3),
            "flop_utilisation": round(utilisation(kind, float(np.median(ours)), threads), 3),
        }

    # 2. 1 vs 2 workers, one thread per worker, the same per-worker batch
    skip = set(filter(None, args.skip.split(",")))
    results["scaling"] = {}
    for strategy in ("single", "ddp", "parameter_averaging"):
        if strategy in skip:
            continue
        by_workers = {}
        for workers in (1, 2):
            training = {"batch_size": batch, "max_steps": steps, "num_workers": workers, "num_threads": 1}
            if strategy == "single":  # one process: "workers" are its threads
                training["num_threads"] = workers
            if strategy == "parameter_averaging":
                training.update(
                    averaging_frequency=args.averaging_frequency, log_interval=args.averaging_frequency
                )
            tries = args.repeats if strategy == "single" else 1  # a ddp or PA run costs 10-20 s
            by_workers[workers] = best_of(tries, strategy, "gpt", f"{strategy}-{workers}", **training)
        key = "steady_samples_per_s" if strategy == "parameter_averaging" else "samples_per_s"
        one, two = by_workers[1][key], by_workers[2][key]
        results["scaling"][strategy] = {
            "1": by_workers[1],
            "2": by_workers[2],
            "speedup": round(two / one, 3),
            "flop_utilisation_2": round(utilisation("gpt", two, max(peak)), 3),
        }
    text = json.dumps(results, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
