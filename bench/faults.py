"""Fault suite: kills, bad inputs and a second writer, all through the `llm-decoder` CLI.

    .venv/bin/python bench/faults.py [--trials 5] [--s3-trials 3] [--writer-trials 3] [--seed 0] [--quick]

Builds one tiny run with the real CLI steps (`preprocess` and `window` on the first 40 kB of
Tiny Shakespeare; a 1-layer gpt of width 32 on 16-token windows) and copies it per trial under
its own run id. Prints one JSON object on stdout (progress goes to stderr):

- `kill_resume_local`: `--trials` seeded trials of SIGKILL on `llm-decoder train` at a random
  point (a random time, while a checkpoint is being written, just after one is complete, or
  while the trained model is committed to train/), then the same command again, which resumes from the newest valid checkpoint. `resumed_exact`:
  the final model.safetensors equals, tensor for tensor (torch.equal), that of an uninterrupted
  run of the same config; `corrupt_checkpoints`: checkpoints marked complete after the kill
  that `load_checkpoint` refuses (a half-written one marked complete; must be 0).
- `kill_resume_s3`: the same with the run root on a moto S3 server over HTTP (in this process).
- `bad_inputs`: a catalogue of bad configs, corpora and step outputs (from the test suite and
  issue 12), each run through the CLI. Clean = non-zero exit, no "Traceback" in stderr, the last
  non-empty stderr line starts with "error:" and contains the case's culprit (a path, URI or
  key we passed in), and no `_SUCCESS` appeared or changed under the case's run.
- `second_writer`: a live `llm-decoder train` holds `<run>/_LEASE`; a second `train` and a
  second `window` on the same run id must exit non-zero within `REFUSE_WITHIN_S` with a one-line
  error naming the holder (its pid), and leave the first one running.

Not part of `make test`: a full run takes about 17 minutes on a loaded 2-core machine (`--quick`,
1 trial of each kind and every bad input: about 11); `--sections` runs a subset.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from safetensors.torch import load as load_tensors

from spark_jobs.common import storage
from spark_jobs.data import window_chunks
from spark_jobs.data.windows import Run
from spark_jobs.training import checkpoints

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "llm-decoder")
BUCKET = "faults"
CORPUS_BYTES = 40_000
MAX_STEPS = 60
CHECKPOINT_INTERVAL = 5
REFUSE_WITHIN_S = 60.0

# The tiny run: small enough that an uninterrupted train takes ~20 s on a loaded 2-core machine.
CONFIG = """\
spark: {{master: "local[2]", driver_memory: 1g}}
model: {{kind: gpt, window_size: 16, embedding_size: 32, hidden_size: 64, num_layers: 1, num_heads: 2, dropout: 0.0}}
training:
  strategy: single
  batch_size: 16
  max_steps: {max_steps}
  learning_rate: 0.01
  min_learning_rate: 0.001
  warmup_steps: 5
  eval_interval: 20
  eval_batches: 2
  checkpoint_interval: {checkpoint_interval}
  keep_checkpoints: 2
  log_interval: 5
  histogram_interval: 20
  num_threads: 1
  num_workers: 2
  sample_prompts: ["ROMEO:"]
  sample_tokens: 4
data: {{corpus_path: {corpus}, vocab_size: 300, window_stride: 4}}
run: {{root: {root}, id: base}}
"""


def say(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def cli(
    step: str, config: Path, sets: list[str], env: dict, timeout: float = 600
) -> subprocess.CompletedProcess:
    args = [CLI, step, "--config", str(config)]
    for item in sets:
        args += ["--set", item]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def start_cli(step: str, config: Path, sets: list[str], env: dict, log: Path) -> subprocess.Popen:
    args = [CLI, step, "--config", str(config)]
    for item in sets:
        args += ["--set", item]
    with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=handle, env=env, cwd=REPO)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def check(done: subprocess.CompletedProcess, what: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{what} failed (exit {done.returncode}): {done.stderr[-3000:]}")


def equal_tensors(a: bytes, b: bytes) -> bool:
    x, y = load_tensors(a), load_tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


# --- the run everything starts from ------------------------------------------------------


@dataclasses.dataclass
class Bench:
    scratch: Path
    config: Path  # the tiny run's config; run.root and run.id come as --set
    root: Path  # local run root holding runs/base
    env: dict  # the subprocess environment, pointing S3 at the moto server
    s3: object  # boto3 client on the moto server

    def base(self) -> Path:
        return self.root / "runs" / "base"

    def new_run(self, run_id: str, root: Path | None = None) -> Path:
        """A copy of the base run's preprocess and window outputs under `run_id`."""
        target = (root or self.root) / "runs" / run_id
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.base(), target)
        return target

    def upload_run(self, run_id: str) -> str:
        prefix = f"root/runs/{run_id}/"
        for path in self.base().rglob("*"):
            if path.is_file():
                self.s3.upload_file(str(path), BUCKET, prefix + str(path.relative_to(self.base())))
        return f"s3://{BUCKET}/root"

    def s3_keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def build_base(bench: Bench) -> float:
    began = time.perf_counter()
    if (bench.base() / "window" / storage.SUCCESS_MARKER).exists():  # --keep of an earlier run
        return 0.0
    sets = [f"run.root={bench.root}", "run.id=base"]
    for step in ("preprocess", "window"):
        say(f"base run: {step} ...")
        # Embeddings too (made for models that use them): the mlp cases damage them.
        more = ["model.kind=mlp"] if step == "preprocess" else []
        check(cli(step, bench.config, sets + more, bench.env), f"base {step}")
    return time.perf_counter() - began


# --- (a) and (b): kill and resume -------------------------------------------------------


class LocalRun:
    def __init__(self, bench: Bench, run_id: str):
        self.bench, self.run_id = bench, run_id
        self.dir = bench.new_run(run_id)
        self.root = str(bench.root)

    def names(self, relative: str = "") -> list[str]:
        """The entries of a folder of the run (none if it does not exist)."""
        folder = self.dir / relative
        return sorted(os.listdir(folder)) if folder.is_dir() else []

    def model_bytes(self) -> bytes:
        return (self.dir / "train" / "model" / "model.safetensors").read_bytes()


class S3Run:
    def __init__(self, bench: Bench, run_id: str):
        self.bench, self.run_id = bench, run_id
        self.root = bench.upload_run(run_id)
        self.prefix = f"root/runs/{run_id}/"

    def names(self, relative: str = "") -> list[str]:
        """The entries of a folder of the run: the next part of every key under it."""
        prefix = self.prefix + (relative.rstrip("/") + "/" if relative else "")
        names = {key[len(prefix) :].split("/", 1)[0] for key in self.bench.s3_keys(prefix)}
        return sorted(names - {""})  # "" is the folder's own marker object

    def model_bytes(self) -> bytes:
        key = self.prefix + "train/model/model.safetensors"
        return self.bench.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def train_sets(run) -> list[str]:
    return [f"run.root={run.root}", f"run.id={run.run_id}"]


def corrupt_checkpoints(run) -> tuple[int, int]:
    """(checkpoints marked complete, those of them that do not load)."""
    checkpoint_dir = storage.join(storage.run_dir(run.root, run.run_id), "checkpoints")
    complete = corrupt = 0
    for step, uri in checkpoints.list_checkpoints(checkpoint_dir):
        if storage.is_complete(uri):
            complete += 1
            try:
                checkpoints.load_checkpoint(uri)
            except Exception as exc:  # any failure to load is what we count
                corrupt += 1
                say(f"  corrupt checkpoint step-{step}: {exc}")
    return complete, corrupt


def kill_point(rng: random.Random, straight_s: float) -> tuple[str, float | int | None]:
    """Where to kill: at a random time (from start-up to the end), while checkpoint step-k is
    written, just after it is complete, or while the trained model is committed to train/."""
    mode = rng.choice(["time", "writing", "after", "committing"])
    if mode == "time":
        return mode, round(rng.uniform(0.5, straight_s), 2)
    if mode == "committing":
        return mode, None
    return mode, rng.randrange(CHECKPOINT_INTERVAL, MAX_STEPS + 1, CHECKPOINT_INTERVAL)


def reached(run, mode: str, point: float | int | None, began: float) -> bool:
    if mode == "time":
        return time.monotonic() - began >= point
    if mode == "committing":  # step_output's attempt folder of train/ exists
        return any(name.startswith(".train.attempt-") for name in run.names()) or "train" in run.names()
    names = run.names("checkpoints")
    if mode == "writing":  # step_output's attempt folder exists: the checkpoint is being written
        return any(name.startswith(f".step-{point}.attempt-") for name in names) or f"step-{point}" in names
    return storage.SUCCESS_MARKER in run.names(f"checkpoints/step-{point}")


def leftovers(run) -> list[str]:
    """Attempt folders, old outputs and the lease that a finished run should not leave behind."""
    found = [name for name in run.names() if name.startswith(".") or name == "_LEASE"]
    return found + [f"checkpoints/{name}" for name in run.names("checkpoints") if name.startswith(".")]


def kill_and_resume(bench: Bench, make_run: Callable, label: str, trials: int, seed: int) -> dict:
    began_all = time.perf_counter()
    say(f"{label}: uninterrupted run ...")
    straight = make_run(bench, f"{label}-straight")
    began = time.perf_counter()
    check(cli("train", bench.config, train_sets(straight), bench.env), f"{label} uninterrupted train")
    straight_s = time.perf_counter() - began
    reference = straight.model_bytes()

    rng = random.Random(f"{label}:{seed}")  # str seeds are stable across runs and Python versions
    details = []
    for trial in range(trials):
        mode, point = kill_point(rng, straight_s)
        run = make_run(bench, f"{label}-{trial}")
        log = bench.scratch / f"{label}-{trial}.log"
        process = start_cli("train", bench.config, train_sets(run), bench.env, log)
        started = time.monotonic()
        poll = 0.005 if isinstance(run, LocalRun) else 0.05
        while process.poll() is None and not reached(run, mode, point, started):
            time.sleep(poll)
        if mode == "after":
            time.sleep(rng.uniform(0, 0.2))
        finished_first = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        killed_at = time.monotonic() - started
        at_kill = run.names("checkpoints")
        complete, corrupt = corrupt_checkpoints(run)
        resumed = cli("train", bench.config, train_sets(run), bench.env)
        found = re.search(r"resuming from \S*?step-(\d+)", resumed.stderr)
        exact = resumed.returncode == 0 and equal_tensors(reference, run.model_bytes())
        record = {
            "kill": mode,
            "point": point,
            "killed_after_s": round(killed_at, 2),
            "finished_before_kill": finished_first,
            "checkpoints_at_kill": at_kill,
            "complete_at_kill": complete,
            "corrupt": corrupt,
            "resume_exit": resumed.returncode,
            "resumed_from_step": int(found.group(1)) if found else None,
            "exact": exact,
            "left_after_resume": leftovers(run),
        }
        if resumed.returncode != 0:
            record["resume_last_line"] = last_line(resumed.stderr)
        say(f"{label} trial {trial}: {record}")
        details.append(record)
    return {
        "trials": trials,
        "resumed_exact": sum(r["exact"] for r in details),
        "corrupt_checkpoints": sum(r["corrupt"] for r in details),
        "uninterrupted_train_s": round(straight_s, 1),
        "wall_s": round(time.perf_counter() - began_all, 1),
        "details": details,
    }


# --- (c) bad inputs ---------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    step: str
    sets: list[str]
    culprits: tuple[str, ...]  # each must appear in the last stderr line
    run: Path | None = None  # the run folder where nothing may become complete
    config: Path | None = None  # instead of the tiny run's config


GOOD_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _vectors(rows: list[str], header: str | None = None, dim: int = 32) -> str:
    head = f"{header}\n" if header is not None else f"{len(rows)} {dim}\n"
    return head + "".join(r + "\n" for r in rows)


def _row(token: str, value: str = "0.1", dim: int = 32) -> str:
    return token + " " + " ".join([value] * dim)


def bad_cases(bench: Bench) -> dict[str, Callable[[Path], Case]]:
    """name -> setup(folder) returning the case; each setup writes only under its folder."""
    cases: dict[str, Callable[[Path], Case]] = {}

    def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
        cases[fn.__name__] = fn
        return fn

    def pre(folder: Path, corpus: str, *more: str) -> Case:
        """A preprocess of `corpus` under its own root; the culprit defaults to the corpus."""
        run = folder / "root" / "runs" / "bad"
        return Case("preprocess", [f"run.root={folder / 'root'}", "run.id=bad", f"data.corpus_path={corpus}", *more],
                    (corpus,), run)  # fmt: skip

    def good(folder: Path) -> Path:
        path = folder / "good.txt"
        path.write_text(GOOD_TEXT)
        return path

    def copied(folder: Path, *more: str) -> tuple[Path, list[str]]:
        """A copy of the base run (its own root); the sets that point at it."""
        run = bench.new_run("bad", folder / "root")
        return run, [f"run.root={folder / 'root'}", "run.id=bad", *more]

    def train(folder: Path, culprit: Path | str, *more: str) -> Case:
        run = folder / "root" / "runs" / "bad"
        return Case("train", [f"run.root={folder / 'root'}", "run.id=bad", *more], (str(culprit),), run)

    def own(folder: Path) -> list[str]:
        """A root of its own, so a config error that went unnoticed writes nowhere else."""
        return [f"run.root={folder / 'root'}", "run.id=bad"]

    # -- the config file and --set ----------------------------------------------------
    @case
    def config_missing(f: Path) -> Case:
        return Case("preprocess", own(f), (str(f / "nope.yaml"),), config=f / "nope.yaml")

    @case
    def config_is_a_directory(f: Path) -> Case:
        (f / "conf.yaml").mkdir()
        return Case("preprocess", own(f), (str(f / "conf.yaml"),), config=f / "conf.yaml")

    @case
    def config_not_utf8(f: Path) -> Case:
        (f / "c.yaml").write_bytes(b"model:\n  kind: gpt \xff\xfe\n")
        return Case("preprocess", own(f), (str(f / "c.yaml"),), config=f / "c.yaml")

    @case
    def config_section_written_twice(f: Path) -> Case:
        (f / "c.yaml").write_text(
            "model:\n  window_size: 16\ntraining:\n  max_steps: 3\nmodel:\n  hidden_size: 64\n"
        )
        return Case("preprocess", own(f), (str(f / "c.yaml"), "model"), config=f / "c.yaml")

    @case
    def config_not_a_mapping(f: Path) -> Case:
        (f / "c.yaml").write_text("- just\n- a list\n")
        return Case("preprocess", own(f), (str(f / "c.yaml"),), config=f / "c.yaml")

    @case
    def config_invalid_yaml(f: Path) -> Case:
        (f / "c.yaml").write_text("model: {kind: gpt\n")
        return Case("preprocess", own(f), (str(f / "c.yaml"),), config=f / "c.yaml")

    for name, override, culprit in [
        ("unknown_key", "model.windw_size=3", "model.windw_size"),
        ("unknown_section", "sparkk.master=local", "sparkk"),
        ("wrong_type", "model.window_size=abc", "model.window_size"),
        ("negative_batch_size", "training.batch_size=-4", "training.batch_size"),
        ("zero_checkpoint_interval", "training.checkpoint_interval=0", "training.checkpoint_interval"),
        ("vocab_below_bytes", "data.vocab_size=200", "data.vocab_size"),
        ("unknown_model_kind", "model.kind=rnn", "model.kind"),
        ("run_id_escaping", "run.id=../escape", "run.id"),
        ("splits_not_summing_to_1", "training.valid_split=0.3", "valid_split"),
        ("malformed_override", "training.num_epochs", "training.num_epochs"),
        ("bad_driver_memory", "spark.driver_memory=lots", "spark.driver_memory"),
    ]:

        def config_error(f: Path, override: str = override, culprit: str = culprit) -> Case:
            return Case(
                "preprocess", [f"run.root={f / 'root'}", "run.id=bad", override], (culprit,), f / "root"
            )

        config_error.__name__ = f"set_{name}"
        case(config_error)

    # -- the corpus (preprocess) ------------------------------------------------------
    @case
    def corpus_missing(f: Path) -> Case:
        return pre(f, str(f / "nope.txt"))

    @case
    def corpus_empty(f: Path) -> Case:
        (f / "empty.txt").write_bytes(b"")
        return pre(f, str(f / "empty.txt"))

    @case
    def corpus_whitespace_only(f: Path) -> Case:
        (f / "ws.txt").write_text(" \n\t\r\n\n")
        return pre(f, str(f / "ws.txt"))

    @case
    def corpus_binary(f: Path) -> Case:
        (f / "data.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
        return pre(f, str(f / "data.bin"))

    @case
    def corpus_invalid_utf8_in_a_directory(f: Path) -> Case:
        (f / "dir").mkdir()
        (f / "dir" / "a.txt").write_text(GOOD_TEXT)
        (f / "dir" / "b.txt").write_bytes(b"hello\nw\xc3rld\n")
        c = pre(f, str(f / "dir"))
        return dataclasses.replace(c, culprits=(str(f / "dir" / "b.txt"),))

    @case
    def corpus_directory_without_text(f: Path) -> Case:
        (f / "emptydir").mkdir()
        (f / "emptydir" / ".DS_Store").write_text("x")
        return pre(f, str(f / "emptydir"))

    @case
    def corpus_glob_matching_nothing(f: Path) -> Case:
        return pre(f, str(f / "*.md"))

    @case
    def corpus_only_a_symlink_loop(f: Path) -> Case:
        (f / "loop").mkdir()
        (f / "loop" / "again").symlink_to(f / "loop")
        return pre(f, str(f / "loop"))

    @case
    def corpus_only_a_dangling_link(f: Path) -> Case:
        (f / "dangling").mkdir()
        (f / "dangling" / "gone.txt").symlink_to(f / "nowhere.txt")
        return pre(f, str(f / "dangling"))

    @case
    def corpus_s3_no_such_bucket(f: Path) -> Case:
        return pre(f, "s3://no-such-bucket-faults/corpus.txt")

    @case
    def corpus_s3_no_such_key(f: Path) -> Case:
        return pre(f, f"s3://{BUCKET}/corpora/nope.txt")

    # -- embeddings and tokenizer given to preprocess -----------------------------------
    for name, rows, header, line in [
        ("wrong_dimension", [_row("a", dim=33)], "1 33", None),
        ("nan", [_row("a"), _row("b", "NaN")], None, ":3"),
        ("duplicate_token", [_row("a"), _row("b"), _row("a")], None, ":4"),
        ("malformed_line", [_row("a"), "b 0.1 0.2"], None, ":3"),
        ("header_disagrees", [_row("a"), _row("b")], "5 32", None),
    ]:

        def embeddings(f: Path, rows=rows, header=header, line=line) -> Case:
            emb = f / "emb.txt"
            emb.write_text(_vectors(rows, header))
            c = pre(f, str(good(f)), f"data.embeddings_path={emb}")
            return dataclasses.replace(c, culprits=(f"{emb}{line or ''}",))

        embeddings.__name__ = f"embeddings_{name}"
        case(embeddings)

    @case
    def embeddings_missing(f: Path) -> Case:
        c = pre(f, str(good(f)), f"data.embeddings_path={f / 'emb.txt'}")
        return dataclasses.replace(c, culprits=(str(f / "emb.txt"),))

    for name, content in [
        ("not_json", "this is not json"),
        ("wrong_json", json.dumps({"vocab": {"a": 0}})),
        ("missing", None),
    ]:

        def tokenizer(f: Path, content=content) -> Case:
            tok = f / "tokenizer.json"
            if content is not None:
                tok.write_text(content)
            c = pre(f, str(good(f)), f"data.tokenizer_path={tok}")
            return dataclasses.replace(c, culprits=(str(tok),))

        tokenizer.__name__ = f"tokenizer_{name}"
        case(tokenizer)

    @case
    def tokenizer_lossy(f: Path) -> Case:
        from tokenizers import Tokenizer, models, pre_tokenizers

        lossy = Tokenizer(models.WordLevel({"[UNK]": 0, "First": 1}, unk_token="[UNK]"))
        lossy.pre_tokenizer = pre_tokenizers.Whitespace()
        lossy.save(str(f / "lossy.json"))
        c = pre(f, str(good(f)), f"data.tokenizer_path={f / 'lossy.json'}")
        return dataclasses.replace(c, culprits=(str(f / "lossy.json"),))

    # -- window --------------------------------------------------------------------------
    @case
    def window_without_preprocess(f: Path) -> Case:
        run = f / "root" / "runs" / "bad"
        return Case("window", [f"run.root={f / 'root'}", "run.id=bad"], (str(run / "preprocess"),), run)

    @case
    def window_preprocess_without_success(f: Path) -> Case:
        run, sets = copied(f)
        shutil.rmtree(run / "window")
        (run / "preprocess" / "_SUCCESS").unlink()
        return Case("window", sets, (str(run / "preprocess"),), run)

    @case
    def window_truncated_token_parquet(f: Path) -> Case:
        run, sets = copied(f)
        shutil.rmtree(run / "window")
        part = sorted((run / "preprocess" / "tokens").glob("*.parquet"))[-1]
        _truncate(part)
        return Case("window", sets, (str(part),), run)

    # -- train -----------------------------------------------------------------------------
    @case
    def train_without_preprocess(f: Path) -> Case:
        return train(f, f / "root" / "runs" / "bad" / "preprocess")

    @case
    def train_windows_missing(f: Path) -> Case:
        run, _ = copied(f)
        shutil.rmtree(run / "window")
        return train(f, run / "window")

    @case
    def train_windows_without_success(f: Path) -> Case:
        run, _ = copied(f)
        (run / "window" / "_SUCCESS").unlink()
        return train(f, run / "window")

    @case
    def train_window_size_mismatch(f: Path) -> Case:
        copied(f)
        return train(f, "model.window_size", "model.window_size=32")

    @case
    def train_embedding_size_mismatch(f: Path) -> Case:
        run, _ = copied(f)
        return train(
            f, run / "preprocess" / "embeddings.safetensors", "model.kind=mlp", "model.embedding_size=64"
        )

    @case
    def train_more_workers_than_windows(f: Path) -> Case:
        copied(f)
        return train(f, "training.num_workers", "training.strategy=ddp", "training.num_workers=100000")

    @case
    def train_batch_larger_than_a_worker_share(f: Path) -> Case:
        copied(f)
        return train(f, "training.batch_size", "training.strategy=ddp", "training.batch_size=5000")

    @case
    def train_ddp_fewer_val_windows_than_ranks(f: Path) -> Case:
        run, _ = copied(f)
        window = run / "window"
        parts = sorted((window / "val").glob("*.parquet"))
        chunk = pq.read_table(parts[0]).to_pylist()[0]  # keep its first window only
        one = window_chunks.chunk_batch(
            0,
            chunk["window_size"],
            chunk["stride"],
            np.array(chunk["ids"][: chunk["window_size"] + 1]),
            [Run(chunk["run_starts"][0], 1)],
            np.array(chunk["doc_ids"]),
            np.array(chunk["doc_starts"]),
        )
        window_chunks.write_chunk_file(str(parts[0]), one)
        for part in parts[1:]:
            part.unlink()
        distribution = json.loads((window / "data_distribution.json").read_text())
        distribution["val"]["windows"] = 1
        (window / "data_distribution.json").write_text(json.dumps(distribution))
        return train(f, window / "val", "training.strategy=ddp", "training.num_workers=2")

    @case
    def train_no_validation_windows(f: Path) -> Case:
        run, _ = copied(f)
        window = run / "window"
        for part in (window / "val").glob("*.parquet"):
            pq.write_table(pq.read_table(part).slice(0, 0), part)
        distribution = json.loads((window / "data_distribution.json").read_text())
        distribution["val"]["windows"] = 0
        (window / "data_distribution.json").write_text(json.dumps(distribution))
        return train(f, window / "val")

    for damage in ("truncated", "not_utf8", "directory"):

        def tokenizer_damaged(f: Path, damage=damage) -> Case:
            run, _ = copied(f)
            path = run / "preprocess" / "tokenizer.json"
            if damage == "truncated":
                _truncate(path)
            elif damage == "not_utf8":
                path.write_bytes(b'{"version": "1.0", "model": "\xff"}')
            else:
                path.unlink()
                path.mkdir()
            return train(f, path)

        tokenizer_damaged.__name__ = f"train_tokenizer_{damage}"
        case(tokenizer_damaged)

    for damage in ("truncated", "garbled_header"):

        def embeddings_damaged(f: Path, damage=damage) -> Case:
            run, _ = copied(f)
            path = run / "preprocess" / "embeddings.safetensors"
            if damage == "truncated":
                _truncate(path, 0.9)
            else:
                data = bytearray(path.read_bytes())
                data[8:20] = b"\x00garbled!!!\x00"
                path.write_bytes(bytes(data))
            return train(f, path, "model.kind=mlp")

        embeddings_damaged.__name__ = f"train_embeddings_{damage}"
        case(embeddings_damaged)

    for split in ("train", "val"):

        def truncated_windows(f: Path, split=split) -> Case:
            run, _ = copied(f)
            part = sorted((run / "window" / split).glob("*.parquet"))[-1]
            _truncate(part)
            return train(f, part)

        truncated_windows.__name__ = f"train_truncated_{split}_parquet"
        case(truncated_windows)

    @case
    def train_extra_window_file(f: Path) -> Case:
        run, _ = copied(f)
        part = sorted((run / "window" / "train").glob("*.parquet"))[0]
        shutil.copy(part, part.with_name("part-99999-copy.parquet"))
        return train(f, run / "window" / "train")

    @case
    def train_stale_window_after_preprocess_rerun(f: Path) -> Case:
        run, _ = copied(f)
        preprocess = str(run / "preprocess")
        with storage.step_output(preprocess) as out:  # commit a new preprocess output (a new id)
            shutil.copytree(preprocess, out, dirs_exist_ok=True)
            os.remove(os.path.join(out, storage.SUCCESS_MARKER))
        return train(f, run / "window")

    @case
    def train_every_checkpoint_corrupt(f: Path) -> Case:
        run, _ = copied(f)
        for step in (5, 10):
            folder = run / "checkpoints" / f"step-{step}"
            folder.mkdir(parents=True)
            (folder / "state.json").write_text("{")
            (folder / "_SUCCESS").write_text("")
        return train(f, run / "checkpoints")

    @case
    def train_run_root_is_a_file(f: Path) -> Case:
        (f / "root").write_text("not a folder")
        return Case("train", [f"run.root={f / 'root'}", "run.id=bad"], (str(f / "root"),), None)

    @case
    def train_s3_root_no_such_bucket(f: Path) -> Case:
        return Case("train", ["run.root=s3://no-such-bucket-faults/root", "run.id=bad"],
                    ("s3://no-such-bucket-faults",), None)  # fmt: skip

    @case
    def train_s3_run_without_windows(f: Path) -> Case:
        return Case("train", [f"run.root=s3://{BUCKET}/empty-root", "run.id=bad"],
                    (f"s3://{BUCKET}/empty-root/runs/bad/preprocess",), None)  # fmt: skip

    return cases


def successes(run: Path | None) -> dict[str, int]:
    """Every _SUCCESS under the run folder, with its modification time."""
    if run is None or not run.is_dir():
        return {}
    return {str(p): p.stat().st_mtime_ns for p in run.rglob(storage.SUCCESS_MARKER)}


def bad_inputs(bench: Bench) -> dict:
    began = time.perf_counter()
    results, unclean = [], []
    for name, setup in bad_cases(bench).items():
        folder = bench.scratch / "bad" / name
        shutil.rmtree(folder, ignore_errors=True)  # an earlier --keep run's
        folder.mkdir(parents=True)
        c = setup(folder)
        before = successes(c.run)
        started = time.perf_counter()
        try:
            done = cli(c.step, c.config or bench.config, c.sets, bench.env, timeout=600)
            code, stderr = done.returncode, done.stderr
        except subprocess.TimeoutExpired as exc:
            code, stderr = "timeout", (exc.stderr or b"").decode(errors="replace")
        seconds = time.perf_counter() - started
        line = last_line(stderr)
        after = successes(c.run)
        marked = sorted(p for p, t in after.items() if before.get(p) != t)
        problems = []
        if code == 0 or code == "timeout":
            problems.append(f"exit {code}")
        if "Traceback" in stderr:
            problems.append("traceback")
        if not line.startswith("error:"):
            problems.append("last line is not 'error:'")
        missing = [culprit for culprit in c.culprits if culprit not in line]
        if missing:
            problems.append(f"last line does not name {missing}")
        if marked:
            problems.append(f"marked complete: {marked}")
        record = {"case": name, "step": c.step, "exit": code, "s": round(seconds, 1), "last_line": line}
        say(f"bad input {name}: {'clean' if not problems else problems} ({seconds:.1f} s) {line[:200]}")
        results.append(record)
        if problems:
            unclean.append({**record, "problems": problems})
    return {
        "bad_inputs_total": len(results),
        "bad_inputs_clean": len(results) - len(unclean),
        "unclean": unclean,
        "wall_s": round(time.perf_counter() - began, 1),
        "cases": results,
    }


# --- (d) a second writer on a live run --------------------------------------------------


def second_writer(bench: Bench, trials: int) -> dict:
    began = time.perf_counter()
    details = []
    for trial in range(trials):
        run_id = f"writer-{trial}"
        run = bench.new_run(run_id)
        sets = [f"run.root={bench.root}", f"run.id={run_id}"]
        first = start_cli(
            "train", bench.config, [*sets, "training.max_steps=1000000", "training.checkpoint_interval=100000"],
            bench.env, bench.scratch / f"{run_id}.log",
        )  # fmt: skip
        lease = run / "_LEASE"
        deadline = time.monotonic() + 120
        while not lease.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)  # the record is written just after the file is created
        record: dict = {"trial": trial, "lease_taken": lease.exists()}
        for step in ("train", "window"):
            started = time.perf_counter()
            done = cli(step, bench.config, sets, bench.env, timeout=300)
            seconds = time.perf_counter() - started
            line = last_line(done.stderr)
            errors = [x for x in done.stderr.splitlines() if x.startswith("error:")]
            refused = (
                done.returncode != 0
                and seconds < REFUSE_WITHIN_S
                and "Traceback" not in done.stderr
                and line.startswith("error:")
                and len(errors) == 1
                and "being written by" in line
                and f"pid {first.pid}" in line
            )
            record[step] = {
                "refused": refused,
                "exit": done.returncode,
                "s": round(seconds, 1),
                "last_line": line,
            }
        record["first_still_running"] = first.poll() is None
        record["refused"] = (
            record["train"]["refused"] and record["window"]["refused"] and record["first_still_running"]
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        say(f"second writer trial {trial}: {record}")
        details.append(record)
    return {
        "second_writer_trials": trials,
        "second_writer_refused": sum(r["refused"] for r in details),
        "wall_s": round(time.perf_counter() - began, 1),
        "details": details,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5, help="local kill-and-resume trials")
    parser.add_argument(
        "--s3-trials", type=int, default=3, help="kill-and-resume trials on the moto S3 server"
    )
    parser.add_argument("--writer-trials", type=int, default=3, help="second-writer trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1 trial of each kind (a smoke run)")
    parser.add_argument("--sections", default="kill_local,kill_s3,bad_inputs,second_writer",
                        help="comma-separated subset to run")  # fmt: skip
    parser.add_argument("--keep", type=Path, help="work here and keep the files (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.trials = args.s3_trials = args.writer_trials = 1
    sections = set(args.sections.split(","))

    import boto3
    from moto.server import ThreadedMotoServer

    began = time.perf_counter()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the moto server's request log
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    with contextlib.redirect_stdout(sys.stderr):  # it prints a line; stdout is for the JSON
        server.start()
    host, port = server.get_host_and_port()
    aws = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(aws)  # this process reads the S3 checkpoints too
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)

    scratch = args.keep or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    scratch.mkdir(parents=True, exist_ok=True)
    corpus = scratch / "corpus.txt"
    corpus.write_bytes((REPO / "data" / "tinyshakespeare.txt").read_bytes()[:CORPUS_BYTES])
    config = scratch / "tiny.yaml"
    root = scratch / "root"
    config.write_text(
        CONFIG.format(max_steps=MAX_STEPS, checkpoint_interval=CHECKPOINT_INTERVAL, corpus=corpus, root=root)
    )
    bench = Bench(scratch=scratch, config=config, root=root, env=env, s3=s3)
    out: dict = {}
    try:
        out["base_run_s"] = round(build_base(bench), 1)
        if "kill_local" in sections:
            out["kill_resume_local"] = kill_and_resume(bench, LocalRun, "local", args.trials, args.seed)
        if "kill_s3" in sections:
            out["kill_resume_s3"] = kill_and_resume(bench, S3Run, "s3", args.s3_trials, args.seed)
        if "bad_inputs" in sections:
            out["bad_inputs"] = bad_inputs(bench)
        if "second_writer" in sections:
            out["second_writer"] = second_writer(bench, args.writer_trials)
    finally:
        server.stop()
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    out["wall_s"] = round(time.perf_counter() - began, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
