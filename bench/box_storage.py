"""Benchmark: Spark's own Parquet I/O through the box's s3fs mount against pyarrow in the tasks.

    .venv/bin/python bench/box_storage.py [--rows 200000] [--partitions 4] [--repeats 3]

The EMR box serves Spark's `s3://` reads and writes by mounting the emulated bucket with s3fs
and pointing Hadoop's `s3` scheme at the mount (launchers/emr_box/emrfs.py). The alternative
is to keep Hadoop out of the data path: each task writes its partition as one Parquet file
with pyarrow to the project's S3 filesystem (spark_jobs.common.storage), and a read lists the
files on the driver and reads them in tasks with pyarrow. This compares the two in one
process, against one moto server on 127.0.0.1 and one local[2] SparkSession:

    spark_s3fs_write      df.write.parquet("s3://bucket/a/")  (Hadoop committer on the mount)
    spark_s3fs_read       spark.read.parquet("s3://bucket/a/") + a checksum pass in Python
    pyarrow_tasks_write   mapInArrow: each task writes part-<partition>.parquet with pyarrow
    pyarrow_tasks_read    one row per file; each task reads its file with pyarrow and checksums it
    pyarrow_tasks_read_df the same read, but the tasks hand the rows back as a DataFrame (what
                          replacing spark.read.parquet would do) and the checksum runs after it

The data is shaped like the window step's output: one column `window` = array<int> of 65
int32 token ids (sliding windows, stride 4, over a pseudo-random stream of 8192 ids), cached
in Spark before any timing, zstd-compressed on both paths. Every measurement runs once as a
warm-up and then `--repeats` times, interleaved (a, b, c, d, d' per round) so that load from
other processes hits both designs alike; `seconds` are medians, `ratios` pyarrow / s3fs
(below 1: pyarrow faster). `requests` are the S3 API calls the moto server answered during
one run of each measurement (median, by HTTP method, with server-side copies apart as
COPY; s3fs's calls included). Every read is checked against the source's row count and
checksum; the benchmark fails on a mismatch.

Needs s3fs and /dev/fuse (as the box does). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from launchers.emr_box.emrfs import S3Mount, hadoop_s3_conf  # noqa: E402
from launchers.emr_box.nodes import free_port  # noqa: E402

from spark_jobs.common import storage  # noqa: E402

BUCKET = "bench-box-storage"
REGION = "eu-west-1"
KEY, SECRET = "bench-key", "bench-secret"
WIDTH = 65  # window_size 64 + 1
STRIDE = 4
VOCAB = 8192
WINDOW_DDL = "window array<int>"
CHECKSUM_DDL = "rows long, s1 long, s2 long, s3 long"
MEASUREMENTS = (
    "spark_s3fs_write",
    "spark_s3fs_read",
    "pyarrow_tasks_write",
    "pyarrow_tasks_read",
    "pyarrow_tasks_read_df",
)


# --- the moto server, counting requests -------------------------------------------------


class CountingMotoServer:
    """moto's ThreadedMotoServer, with a WSGI wrapper that counts requests by HTTP method."""

    def __init__(self, port: int) -> None:
        from moto.server import ThreadedMotoServer

        self.counts: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    def __enter__(self) -> CountingMotoServer:
        from moto.moto_server import werkzeug_app

        plain = werkzeug_app.DomainDispatcherApplication.__call__
        counts, lock = self.counts, self._lock

        def counted(app, environ, start_response):  # noqa: ANN001, ANN202
            with lock:
                method = environ.get("REQUEST_METHOD", "?")
                # A server-side copy (s3fs's rename is copy + delete) is a PUT with a source.
                counts["COPY" if "HTTP_X_AMZ_COPY_SOURCE" in environ else method] += 1
            return plain(app, environ, start_response)

        werkzeug_app.DomainDispatcherApplication.__call__ = counted
        self._restore = lambda: setattr(werkzeug_app.DomainDispatcherApplication, "__call__", plain)
        self.server.start()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        self._restore()

    def take(self) -> dict[str, int]:
        """The requests since the last take, by method, and reset."""
        with self._lock:
            taken = dict(self.counts)
            self.counts.clear()
        return taken


# --- functions that run in the tasks ------------------------------------------------------


def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """spark.range ids -> windows: row i is stream[i*STRIDE : i*STRIDE+WIDTH] of a hashed stream."""
    offsets_in_window = np.arange(WIDTH, dtype=np.uint64)
    for batch in batches:
        ids = batch.column(0).to_numpy().astype(np.uint64)
        x = ids[:, None] * np.uint64(STRIDE) + offsets_in_window  # stream positions
        x = x * np.uint64(0x9E3779B97F4A7C15)  # splitmix64-style mixing; wraps mod 2**64
        x ^= x >> np.uint64(31)
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(29)
        values = (x % np.uint64(VOCAB)).astype(np.int32)
        n = len(ids)
        offsets = pa.array(np.arange(0, n * WIDTH + 1, WIDTH, dtype=np.int32))
        window = pa.ListArray.from_arrays(offsets, pa.array(values.ravel()))
        yield pa.RecordBatch.from_arrays([window], names=["window"])


def _sums(window: pa.Array) -> tuple[int, int, int, int]:
    """(rows, sum of ids, position-weighted sum, sum of squared row sums) of a list<int> column;
    independent of row order and of how the rows are split into batches and files."""
    if isinstance(window, pa.ChunkedArray):
        window = window.combine_chunks()
    n = len(window)
    flat = window.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    if len(flat) != n * WIDTH:
        raise ValueError(f"{n} windows hold {len(flat)} ids, expected {WIDTH} each")
    m = flat.reshape(n, WIDTH)
    weights = np.arange(1, WIDTH + 1, dtype=np.int64)
    row_sums = m.sum(axis=1)
    return n, int(m.sum()), int((m * weights).sum()), int((row_sums * row_sums).sum())


def _checksum_batch(totals: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {
            name: pa.array([value], pa.int64())
            for name, value in zip(("rows", "s1", "s2", "s3"), totals, strict=True)
        }
    )


def checksum(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One (rows, s1, s2, s3) row per partition: touches every value."""
    totals = [0, 0, 0, 0]
    for batch in batches:
        totals = [a + b for a, b in zip(totals, _sums(batch.column(0)), strict=True)]
    yield _checksum_batch(totals)


def write_partition(prefix: str):  # noqa: ANN201
    """A mapInArrow function: the task's partition -> one Parquet file under `prefix`."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        from spark_jobs.common import storage

        uri = storage.join(prefix, f"part-{TaskContext.get().partitionId():05d}.parquet")
        fs, path = storage.filesystem(uri)
        rows = 0
        with fs.open_output_stream(path) as stream:
            writer = None
            for batch in batches:
                if writer is None:
                    writer = pq.ParquetWriter(stream, batch.schema, compression="zstd")
                writer.write_batch(batch)
                rows += batch.num_rows
            if writer is None:  # an empty partition still gets its (empty) file
                schema = pa.schema([("window", pa.list_(pa.int32()))])
                writer = pq.ParquetWriter(stream, schema, compression="zstd")
            writer.close()
        yield pa.RecordBatch.from_pydict({"file": [uri], "rows": pa.array([rows], pa.int64())})

    return write


def _read_files(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    import pyarrow.parquet as pq

    from spark_jobs.common import storage

    for batch in batches:
        for uri in batch.column(0).to_pylist():
            fs, path = storage.filesystem(uri)
            yield pq.read_table(path, filesystem=fs)


def read_and_checksum(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    totals = [0, 0, 0, 0]
    for table in _read_files(batches):
        totals = [a + b for a, b in zip(totals, _sums(table.column(0)), strict=True)]
    yield _checksum_batch(totals)


def read_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for table in _read_files(batches):
        yield from table.to_batches()


# --- the measurements ---------------------------------------------------------------------


def total(rows: list) -> tuple[int, int, int, int]:  # noqa: ANN001
    return tuple(sum(r[k] for r in rows) for k in ("rows", "s1", "s2", "s3"))  # type: ignore[return-value]


class Bench:
    def __init__(self, spark, df, server: CountingMotoServer, expected: tuple) -> None:  # noqa: ANN001
        self.spark, self.df, self.server, self.expected = spark, df, server, expected
        self.s3fs_uri = f"s3://{BUCKET}/a"
        self.pyarrow_uri = f"s3://{BUCKET}/p"

    def check(self, name: str, got: tuple) -> None:
        if got != self.expected:
            raise SystemExit(
                f"{name}: read back (rows, s1, s2, s3) = {got}, but the source has {self.expected}"
            )

    def spark_s3fs_write(self) -> None:
        self.df.write.mode("overwrite").option("compression", "zstd").parquet(self.s3fs_uri + "/")

    def spark_s3fs_read(self) -> None:
        frame = self.spark.read.parquet(self.s3fs_uri + "/")
        self.check("spark_s3fs_read", total(frame.mapInArrow(checksum, CHECKSUM_DDL).collect()))

    def pyarrow_tasks_write(self) -> None:
        storage.delete(self.pyarrow_uri)  # mode("overwrite")
        written = self.df.mapInArrow(write_partition(self.pyarrow_uri), "file string, rows long").collect()
        if sum(r["rows"] for r in written) != self.expected[0]:
            raise SystemExit(f"pyarrow_tasks_write: the tasks wrote {written}")
        storage.write_text(storage.join(self.pyarrow_uri, storage.SUCCESS_MARKER), "")

    def _files(self):  # noqa: ANN202
        from pyspark.sql import functions as F

        names = [n for n in storage.list_dir(self.pyarrow_uri) if n.endswith(".parquet")]
        uris = [storage.join(self.pyarrow_uri, n) for n in names]
        # One row, and one partition, per file; built in the JVM (no Python pass before the read).
        paths = F.array(*[F.lit(u) for u in uris])
        ids = self.spark.range(0, len(uris), numPartitions=max(1, len(uris)))
        return ids.select(F.element_at(paths, (F.col("id") + 1).cast("int")).alias("path"))

    def pyarrow_tasks_read(self) -> None:
        sums = self._files().mapInArrow(read_and_checksum, CHECKSUM_DDL).collect()
        self.check("pyarrow_tasks_read", total(sums))

    def pyarrow_tasks_read_df(self) -> None:
        frame = self._files().mapInArrow(read_rows, WINDOW_DDL)
        self.check("pyarrow_tasks_read_df", total(frame.mapInArrow(checksum, CHECKSUM_DDL).collect()))

    def run(self, name: str) -> tuple[float, dict[str, int]]:
        self.server.take()
        began = time.perf_counter()
        getattr(self, name)()
        seconds = time.perf_counter() - began
        return seconds, self.server.take()


def listing(s3, prefix: str) -> dict:  # noqa: ANN001
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        objects += page.get("Contents", [])
    parquet = [o for o in objects if o["Key"].endswith(".parquet")]
    return {
        "objects": len(objects),
        "parquet_files": len(parquet),
        "bytes": sum(o["Size"] for o in objects),
        "parquet_bytes": sum(o["Size"] for o in parquet),
        "keys": sorted(o["Key"][len(prefix) :] for o in objects),
    }


def median_requests(samples: list[dict[str, int]]) -> dict[str, float]:
    methods = sorted({m for s in samples for m in s})
    return {m: statistics.median(s.get(m, 0) for s in samples) for m in methods}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import boto3
    from pyspark.sql import SparkSession

    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-box-storage-")))
        port = free_port()
        server = stack.enter_context(CountingMotoServer(port))
        endpoint = f"http://127.0.0.1:{port}"
        # The driver's pyarrow, the Python workers and s3fs all reach the server with these.
        os.environ.update(
            {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": endpoint}
        )
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        mount = scratch / "emrfs" / BUCKET
        stack.enter_context(S3Mount(BUCKET, mount, endpoint, REGION, KEY, SECRET))

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            SparkSession.builder.master("local[2]")
            .appName("bench-box-storage")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.local.dir", str(scratch / "spark-local"))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        )
        for key, value in hadoop_s3_conf(BUCKET, mount).items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        stack.callback(spark.stop)
        spark.sparkContext.setLogLevel("ERROR")

        df = spark.range(0, args.rows, numPartitions=args.partitions).mapInArrow(generate, WINDOW_DDL).cache()
        expected = total(df.mapInArrow(checksum, CHECKSUM_DDL).collect())  # also fills the cache
        if expected[0] != args.rows:
            raise SystemExit(f"generated {expected[0]} rows, asked for {args.rows}")
        bench = Bench(spark, df, server, expected)

        seconds: dict[str, list[float]] = {name: [] for name in MEASUREMENTS}
        requests: dict[str, list[dict[str, int]]] = {name: [] for name in MEASUREMENTS}
        for round_ in range(args.repeats + 1):  # round 0 is the warm-up
            for name in MEASUREMENTS:
                took, calls = bench.run(name)
                if round_:
                    seconds[name].append(took)
                    requests[name].append(calls)

        s3fs_files = listing(s3, "a/")
        pyarrow_files = listing(s3, "p/")
        med = {name: statistics.median(values) for name, values in seconds.items()}
        result = {
            "rows": args.rows,
            "partitions": args.partitions,
            "repeats": args.repeats,
            "bytes_s3fs": s3fs_files["bytes"],
            "bytes_pyarrow": pyarrow_files["bytes"],
            "objects": {"s3fs": s3fs_files, "pyarrow": pyarrow_files},
            "seconds": med,
            "seconds_all": seconds,
            "ratios": {
                "write": med["pyarrow_tasks_write"] / med["spark_s3fs_write"],
                "read": med["pyarrow_tasks_read"] / med["spark_s3fs_read"],
                "read_df": med["pyarrow_tasks_read_df"] / med["spark_s3fs_read"],
            },
            "requests": {name: median_requests(samples) for name, samples in requests.items()},
            "same_data": True,  # every read matched the source's rows and checksum, or we exited
            "checksum": dict(zip(("rows", "s1", "s2", "s3"), expected, strict=True)),
            "note": (
                "ratios are pyarrow/s3fs medians (below 1: pyarrow faster); local[2] on a shared "
                "2-core machine, one moto server for both paths; requests include s3fs's own calls"
            ),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
