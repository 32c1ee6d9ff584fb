"""`regtally run` on Apache Spark (3.5 or 4), regtally's Rust stages inside the executors.

    python -m regtally.spark run INPUT... -o OUT [--known-repositories FILE] [--as-of DATE]
        [--since DATE] [--until DATE] [--precision P] [--max-bad-ratio F] [--keep-going]
        [--max-line-bytes N] [--memory-limit SIZE] [--events DIR] [--master URL]

The plan, each step a Spark stage whose work is the library's (`regtally::pipeline::distributed`):

1. The driver checks the flags and finds the inputs as `regtally run` does (exit status 2 for
   what it refuses), and hands out the manifest of inputs in input order.
2. Read tasks (`mapInArrow`) read and parse inputs: valid events stamped with (input,
   position), in Arrow batches by the bucket of their id; and each input's accounting and
   rejects.
3. The id shuffle: each bucket's task keeps, per event id, the delivery with the smallest
   (input, position), and hands its first deliveries on by the bucket of their repository.
4. The repository shuffle (the known repositories join it): each bucket's task replays the
   repository ledger in (time, id) order and folds its events into per-period users.
5. The cell shuffle: each bucket's task sorts its rows by (metric, period) and builds both
   sketches of each cell.
6. With `--events`: the dataset's rows (each first delivery's, with whether a repository push
   created its repository, which only the ledger's replay knows) are shuffled by month and
   sorted by (input, position) by Spark; a task per month writes its files, as `regtally run`
   does, staged in the `--events` folder (which every executor must see at the driver's path).
7. The driver gathers only each input's accounting, the rejects, each bucket's counts and
   repositories, the cells and the names of the dataset's staged files, and writes the outputs
   `regtally run` writes, renaming the dataset's files with them.

Spark shuffles whole Arrow batches (a row of `BLOBS` each, a bucket of rows in it), not a row
per event: a row through Spark costs more than reading the event did. A bucket is a shuffle
partition (`spark.sql.shuffle.partitions`).

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
    "--events": True,
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


# A shuffle's rows: one bucket's rows (of the library's READ_SCHEMA or CELL_SCHEMA) as an Arrow
# IPC stream. Spark moves a few large values instead of a row per event, and never looks
# inside them.
BLOBS = "bucket int, payload binary"


# Buckets of the rows that go to the driver, not to a task of the next stage: each input's
# accounting and rejects, and each partition's repositories and counts. Every task passes them
# on, so the driver finds them all in the last stage's output.
ACCOUNTING = -1
COUNTS = -2
# A partition's rows of the events dataset, on their way to the tasks that write them.
EVENTS = -3


def _blobs(pairs, labels: List[int], apart: int = ACCOUNTING) -> pa.RecordBatch:
    """(bucket, IPC stream) pairs of a task as BLOBS rows: a bucket as the label of its
    partition, the rows for the driver (bucket -1 from the library) as `apart`, and the
    events dataset's rows (-3) as EVENTS."""
    def label(b: int) -> int:
        return labels[b] if b >= 0 else apart if b == ACCOUNTING else b

    return pa.RecordBatch.from_arrays(
        [pa.array([label(b) for b, _ in pairs], pa.int32()),
         pa.array([d for _, d in pairs], pa.binary())],
        names=["bucket", "payload"])


def _labels(spark, n: int) -> List[int]:
    """For each of `n` buckets, a value that `repartition(n, column)` puts in the partition of
    the same number: Spark's hash partitioning is pmod(hash(value), n), whose hash SQL's
    `hash` is, so each bucket gets a partition of its own."""
    from pyspark.sql import functions as F

    values = spark.range(0, 64 * n).select(
        F.col("id").cast("int").alias("value"),
        F.expr(f"pmod(hash(cast(id as int)), {n})").alias("partition"),
    )
    found = {r["partition"]: r["value"] for r in values.groupBy("partition").agg(F.min("value").alias("value")).collect()}
    if len(found) < n:
        raise RuntimeError(f"no value for each of {n} partitions")
    return [found[p] for p in range(n)]


def _read_task(config: str, buckets: int, labels: List[int]):
    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        for batch in batches:
            for entry in batch.column("entry").to_pylist():
                reader = native.InputReader(config, entry, buckets)
                while True:
                    pairs = reader.next_blobs()
                    if pairs is None:
                        break
                    yield _blobs(pairs, labels)

    return read


def _apart(batch: pa.RecordBatch):
    """The rows for the driver, and the others."""
    import pyarrow.compute as pc

    apart = pc.less(batch.column("bucket"), 0)
    return batch.filter(apart), batch.filter(pc.invert(apart))


def _payloads(batches: Iterator[pa.RecordBatch], add) -> Iterator[pa.RecordBatch]:
    """Hands each payload for this task to `add`; yields the rows for the driver."""
    for batch in batches:
        apart, batch = _apart(batch)
        if apart.num_rows:
            yield apart
        for payload in batch.column("payload").to_pylist():
            add(payload)


def _firsts_task(buckets: int, labels: List[int]):
    def firsts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        task = native.FirstsFinder()
        yield from _payloads(batches, task.add)
        pairs = task.finish(buckets)
        if pairs:
            yield _blobs(pairs, labels)

    return firsts


def _known_task(source: str, buckets: int, labels: List[int]):
    def known(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        for _ in batches:
            pass
        pairs = native.split(native.known_repositories(source), "repository", buckets)
        if pairs:
            yield _blobs(pairs, labels)

    return known


def _partition_task(config: str, buckets: int, labels: List[int]):
    def fold(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        task = native.PartitionFolder(config, tempfile.gettempdir())
        yield from _payloads(batches, task.add)
        yield _blobs(task.finish_blobs(buckets), labels, apart=COUNTS)

    return fold


def _cell_task(config: str):
    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from regtally import _native as native

        rows = [b for batch in batches for payload in batch.column("payload").to_pylist()
                for b in _batches(payload)]
        if not rows:
            return
        # A cell's users, together: what the cell task takes.
        rows = pa.Table.from_batches(rows).sort_by(
            [("metric", "ascending"), ("period_kind", "ascending"), ("start", "ascending")])
        task = native.CellBuilder(config)
        for batch in rows.to_batches(max_chunksize=1 << 16):
            data = task.add(_ipc(batch))
            if data is not None:
                yield from _batches(data)
        data = task.finish()
        if data is not None:
            yield from _batches(data)

    return build


def _dataset_rows(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The events dataset's rows out of their BLOBS rows, so that Spark sorts them (spilling
    as it needs to)."""
    for batch in batches:
        for payload in batch.column("payload").to_pylist():
            yield from _batches(payload)


def _dataset_task(config: str, names: List[str], events_dir: str, suffix: str):
    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import uuid

        from regtally import _native as native

        # A name of its own for each attempt: a retried task never writes over another's
        # files, and the driver renames only those of the attempts that succeeded.
        task = native.DatasetWriter(config, names, events_dir, f"-{uuid.uuid4().hex}{suffix}")
        for batch in batches:
            task.add(_ipc(batch))
        yield from _batches(task.finish())

    return write


def _collect(df) -> List[pa.RecordBatch]:
    """The rows of a small result, as Arrow batches (both 3.5 and 4 have this)."""
    return df._collect_as_arrow()


def run_job(spark, job, known_repositories: Optional[str]) -> bool:
    """Runs a planned job on `spark`; whether it was clean (exit status 0)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    config = job.task_config()
    manifest = job.manifest()
    sc = spark.sparkContext
    # As many buckets as shuffle partitions, so that each partition gets about one.
    buckets = int(spark.conf.get("spark.sql.shuffle.partitions"))
    labels = _labels(spark, buckets)
    # A read task per core: each task costs Spark a Python worker's start (a quarter of a
    # second here), more than reading 100 MB; an input is read by one task, in order.
    slices = max(1, min(len(manifest), sc.defaultParallelism))
    # Each entry names its place in input order itself.
    entries = sc.parallelize([(e,) for e in manifest], slices).toDF("entry string")

    read = entries.mapInArrow(_read_task(config, buckets, labels), BLOBS)
    firsts = read.repartition(buckets, "bucket").mapInArrow(_firsts_task(buckets, labels), BLOBS)
    if known_repositories is not None:
        known = spark.range(1).mapInArrow(_known_task(known_repositories, buckets, labels), BLOBS)
        firsts = firsts.unionByName(known)
    parts = firsts.repartition(buckets, "bucket").mapInArrow(
        _partition_task(config, buckets, labels), BLOBS
    )
    # The cells go on, the accounting, rejects, repositories and counts to the driver, and the
    # events dataset's rows to the tasks that write them.
    parts = parts.persist(StorageLevel.MEMORY_AND_DISK)
    cells = (
        parts.filter(F.col("bucket") >= 0)
        .repartition(buckets, "bucket")
        .mapInArrow(_cell_task(config), _spark_schema("sketch"))
    )

    events_dir = job.events_dir()
    if events_dir is not None:
        # Each month's rows in one task, in input order: the files `regtally run` writes.
        files = (
            parts.filter(F.col("bucket") == EVENTS)
            .mapInArrow(_dataset_rows, _spark_schema("dataset_rows"))
            .repartition(buckets, "month")
            .sortWithinPartitions("month", "input", "pos")
            .mapInArrow(
                _dataset_task(config, job.input_names(), events_dir, job.staged_suffix()),
                _spark_schema("dataset_files"),
            )
        )
        for batch in _collect(files):
            job.add_dataset_files(_ipc(batch))

    accounting = []
    for blob in _collect(parts.filter(F.col("bucket").isin(ACCOUNTING, COUNTS))):
        for bucket, payload in zip(blob.column("bucket").to_pylist(), blob.column("payload").to_pylist()):
            if bucket == ACCOUNTING:
                accounting.extend(_batches(payload))
            else:
                job.add_partition_rows(payload)
    if accounting:
        rows = pa.Table.from_batches(accounting).sort_by(
            [("input", "ascending"), ("rec", "ascending"), ("pos", "ascending")])
        for batch in rows.to_batches():
            job.add_read_rows(_ipc(batch))
    for batch in _collect(cells):
        job.add_cells(_ipc(batch))
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
    except Exception as e:
        # Nothing of a failed job stays: the dataset's staged files go (the outputs were not
        # touched).
        job.discard()
        if not isinstance(e, RuntimeError):
            raise
        print(f"regtally: {e}", file=sys.stderr)
        return 1
    finally:
        print(f"spark: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
