#!/usr/bin/env python3
"""What Spark itself costs to move the driver's shuffles, with no regtally work in them.

    target/interop-venv/bin/python benches/spark_floor.py [--bytes N] [--rounds K]

The Spark driver moves every event through two shuffles as opaque Arrow batches (`BLOBS`: a
bucket and a few MB of payload per row). This runs the same plan on `local[2]` with 4 shuffle
partitions over blobs that hold nothing: a stage makes N bytes of blobs (default 506 MB, what
the driver's read tasks write for 4M of the benchmark's events), a stage passes them through
(a shuffle read and a shuffle write), a stage only reads them. Each blob is 5 MiB of random
bytes repeated once, so that Spark's shuffle compression has work as it has on real rows. It
prints, per stage, the tasks' summed run time and the JVM's CPU time (from Spark's REST API):
a floor under the driver's per-core throughput on the same machine, whatever the tasks do.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

import pyarrow as pa

BLOB = 5 << 20
BLOBS = "bucket int, payload binary"


def _make(batches):
    for b in batches:
        for i in b.column("id").to_pylist():
            data = os.urandom(BLOB // 2) * 2
            yield pa.RecordBatch.from_arrays(
                [pa.array([i % 4], pa.int32()), pa.array([data], pa.binary())],
                names=["bucket", "payload"])


def _pass(batches):
    for b in batches:
        for p in b.column("payload").to_pylist():
            yield pa.RecordBatch.from_arrays(
                [pa.array([len(p) % 4], pa.int32()), pa.array([p], pa.binary())],
                names=["bucket", "payload"])


def _count(batches):
    n = 0
    for b in batches:
        n += sum(len(p) for p in b.column("payload").to_pylist())
    yield pa.RecordBatch.from_arrays(
        [pa.array([0], pa.int32()), pa.array([str(n).encode()], pa.binary())],
        names=["bucket", "payload"])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bytes", type=int, default=506_000_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[2]")
             .config("spark.sql.shuffle.partitions", 4)
             .config("spark.driver.memory", "2g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    blobs = max(1, args.bytes // BLOB)
    best = None
    for r in range(args.rounds):
        df = spark.range(blobs, numPartitions=2).mapInArrow(_make, BLOBS)
        df = df.repartition(4, "bucket").mapInArrow(_pass, BLOBS)
        df = df.repartition(4, "bucket").mapInArrow(_count, BLOBS)
        started = time.monotonic()
        df.collect()
        seconds = time.monotonic() - started
        print(f"round {r + 1}: {seconds:.2f} s", flush=True)
        best = seconds if best is None else min(best, seconds)
    sc = spark.sparkContext
    stages = json.load(urllib.request.urlopen(
        f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages"))
    last = sorted((s for s in stages if s["status"] == "COMPLETE"), key=lambda s: s["stageId"])[-3:]
    print(f"\n{blobs * BLOB / 1e6:.0f} MB through two shuffles; the last round's stages:")
    for name, s in zip(["make and write", "read and write again", "read"], last):
        print(f"  {name:22} {s['numTasks']} tasks, run {s['executorRunTime'] / 1000:6.2f} s, "
              f"JVM CPU {s['executorCpuTime'] / 1e9:5.2f} s")
    print(f"best job: {best:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
