"""`regtally run` on Apache Spark (3.5 or 4), regtally's Rust stages inside the executors.

    python -m regtally.spark run INPUT... -o OUT [--known-repositories FILE] [--as-of DATE]
        [--since DATE] [--until DATE] [--precision P] [--max-bad-ratio F] [--keep-going]
        [--max-line-bytes N] [--memory-limit SIZE] [--master URL]

The plan, each step a Spark stage whose work is the library's (`regtally::pipeline::distributed`):

1. The driver checks the flags and finds the inputs as `regtally run` does (exit status 2 for
   what it refuses), and hands out the manifest of inputs in input order.
2. Read tasks (`mapInArrow`) read and parse inputs: valid events stamped with (input,
   position), and each input's accounting and rejects.
3. De-duplication keeps, per event id, the delivery with the smallest (input, position): a
   window over the ids, Spark's shuffle.
4. The first deliveries (and the known repositories) are repartitioned by repository; each
   partition's task replays the repository ledger in (time, id) order and folds its events into
   per-period users.
5. Those rows are repartitioned by (metric, period) and sorted; cell tasks build both sketches.
6. The driver gathers only each input's accounting, the rejects, each partition's counts and
   repositories, and the cells, and writes the outputs `regtally run` writes.

No event reaches the driver. The executors need this package (and pyarrow) installed; see the
GUIDE's "Beyond one machine".
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Iterator, List, Optional

import pyarrow as pa

# Absolute, so that spark-submit can run this file as its application.
from regtally import _native

# The `regtally run` flags a Spark run takes, and whether each takes a value.
FLAGS = {
    "--known-repositories": True,
    "--as-of": True,
    "--since": True,
    "--until": True,
    "--precision": True,
    "--max-bad-ratio": True,
    "--max-line-bytes": True,
    "--memory-limit": True,
    "--keep-going": False,
}


def _ipc(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def _batches(data: bytes) -> List[pa.RecordBatch]:
    return list(pa.ipc.open_stream(pa.py_buffer(data)))


def _spark_schema(name: str):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.ipc.open_stream(pa.py_buffer(_native.schema(name))).schema)


def _read_task(config: str):
    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        for batch in batches:
            for entry in batch.column("entry").to_pylist():
                reader = native.InputReader(config, entry)
                while True:
                    data = reader.next_batch()
                    if data is None:
                        break
                    yield from _batches(data)

    return read


def _known_task(source: str):
    def known(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        for _ in batches:
            pass
        yield from _batches(native.known_repositories(source))

    return known


def _partition_task(config: str):
    def fold(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        task = native.PartitionFolder(config, tempfile.gettempdir())
        for batch in batches:
            task.add(_ipc(batch))
        yield from _batches(task.finish())

    return fold


def _cell_task(config: str):
    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        task = native.CellBuilder(config)
        for batch in batches:
            data = task.add(_ipc(batch))
            if data is not None:
                yield from _batches(data)
        data = task.finish()
        if data is not None:
            yield from _batches(data)

    return build


def _collect(df) -> List[pa.RecordBatch]:
    """The rows of a small result, as Arrow batches (both 3.5 and 4 have this)."""
    return df._collect_as_arrow()


def run_job(spark, job, known_repositories: Optional[str]) -> bool:
    """Runs a planned job on `spark`; whether it was clean (exit status 0)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    config = job.task_config()
    manifest = job.manifest()
    sc = spark.sparkContext
    # A task per input up to a few per core: an input is read by one task, in order.
    slices = max(1, min(len(manifest), 4 * sc.defaultParallelism))
    entries = sc.parallelize(list(enumerate(manifest)), slices).toDF("index int, entry string")

    read = entries.mapInArrow(_read_task(config), _spark_schema("read"))
    # Read once: the events go on, the accounting and rejects to the driver.
    read = read.persist(StorageLevel.MEMORY_AND_DISK)
    events = read.filter(F.col("rec") == 0)
    first = Window.partitionBy("id").orderBy("input", "pos")
    firsts = events.withColumn("_n", F.row_number().over(first)).filter("_n = 1").drop("_n")
    if known_repositories is not None:
        known = spark.range(1).mapInArrow(_known_task(known_repositories), _spark_schema("read"))
        firsts = firsts.unionByName(known)
    parts = firsts.repartition("repository").mapInArrow(
        _partition_task(config), _spark_schema("cell")
    )
    parts = parts.persist(StorageLevel.MEMORY_AND_DISK)
    cells = (
        parts.filter(F.col("part") == 0)
        .repartition("metric", "period_kind", "start")
        .sortWithinPartitions("metric", "period_kind", "start")
        .mapInArrow(_cell_task(config), _spark_schema("sketch"))
    )

    for batch in _collect(read.filter(F.col("rec") != 0).orderBy("input", "rec", "pos")):
        job.add_read_rows(_ipc(batch))
    for batch in _collect(parts.filter(F.col("part") != 0)):
        job.add_partition_rows(_ipc(batch))
    for batch in _collect(cells):
        job.add_cells(_ipc(batch))
    read.unpersist()
    parts.unpersist()
    return job.finish()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m regtally.spark",
        description="regtally run on Apache Spark: the same outputs, the work in the executors.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="read logs and write the outputs of `regtally run`")
    run.add_argument("inputs", nargs="+", metavar="INPUT")
    run.add_argument("-o", "--out", required=True, metavar="DIR")
    for flag, takes_value in FLAGS.items():
        if takes_value:
            run.add_argument(flag)
        else:
            run.add_argument(flag, action="store_true")
    run.add_argument("--master", help="Spark master URL (default: spark-submit's, or local[*])")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    forwarded = list(args.inputs) + ["--out", args.out, "--quiet"]
    for flag, takes_value in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if takes_value and value is not None:
            forwarded += [flag, value]
        elif not takes_value and value:
            forwarded.append(flag)
    try:
        job = _native.Job(forwarded)
    except _native.UsageError as e:
        print(f"regtally: {e}", file=sys.stderr)
        return 2

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("regtally")
    if args.master:
        builder = builder.master(args.master)
    elif "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Not under spark-submit, which gives its own master.
        builder = builder.master("local[*]")
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        # Python workers on this machine run this Python, which has the package.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = builder.getOrCreate()
    started = time.monotonic()
    try:
        clean = run_job(spark, job, args.known_repositories)
    except RuntimeError as e:
        print(f"regtally: {e}", file=sys.stderr)
        return 1
    finally:
        print(f"spark: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
