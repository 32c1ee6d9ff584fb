#!/usr/bin/env python3
"""The Spark driver beside `regtally run`: wall time, the job's own time, per-core throughput.

    python3 benches/spark.py [--rounds K] [--events N...] [--files F] [--only local|standalone]

Needs target/interop-venv (made by .ci/run) with PySpark and pandas. Builds the release binary,
the release package into that venv (`maturin develop --release`) and N synthetic events
(default 1,000,000 and 4,000,000, each in 16 files, under target/bench-spark; a Spark read task
reads one input, so one file would be one task). Then, for each size, page cache warm, K rounds
(default 3) of:

- `regtally run -j 1` and `-j 2`;
- the Spark driver on `local[2]` (`spark.sql.shuffle.partitions` 4);
- with `--only standalone` or by default: a standalone master with one one-core worker, and
  then with two, the driver submitting to it.

For a Spark run it reports the whole command (JVM and session start included) and the job: from
the session being up to the outputs written, as the driver prints it (`spark: S s`). Per-core
throughput is the input's bytes over (seconds x cores); once running, it is the larger size's
extra bytes over its extra seconds, which leaves out what every run pays (the JVM, the Python
workers' start, Spark's scheduling). Every Spark run's outputs are compared with `regtally
run`'s. Prints a table; writes target/bench-spark.json.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target"
VENV = TARGET / "interop-venv"
PYTHON = VENV / "bin" / "python"
sys.path.insert(0, str(ROOT / "python" / "tests"))
from spark_equivalence import compare, standalone  # noqa: E402


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, **kw)


def timed(args, env=None):
    """(wall seconds, the Spark job's seconds or None) of a command that must succeed."""
    started = time.perf_counter()
    proc = subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{proc.stderr[-3000:]}")
    job = re.search(r"^spark: ([0-9.]+) s$", proc.stderr, re.M)
    return wall, float(job.group(1)) if job else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--files", type=int, default=16)
    p.add_argument("--only", choices=["local", "standalone"])
    args = p.parse_args()
    if not PYTHON.exists():
        sys.exit("no target/interop-venv: run .ci/run once (or make it as it does)")
    if Path(sys.prefix).resolve() != VENV.resolve():
        # The standalone cluster is started from the venv's PySpark.
        os.execv(PYTHON, [str(PYTHON), __file__, *sys.argv[1:]])

    sh("cargo", "build", "--release", "--quiet", "--bin", "regtally", "--example", "gen_logs", cwd=ROOT)
    env = dict(os.environ, VIRTUAL_ENV=str(VENV), PATH=f"{VENV / 'bin'}:{os.environ['PATH']}")
    sh(VENV / "bin" / "maturin", "develop", "--release", "-q", cwd=ROOT / "python", env=env)
    binary = TARGET / "release" / "regtally"
    flags = ["--as-of", "2023-03-01", "--quiet"]
    out = TARGET / "bench-spark-out"
    best = {}
    sizes = {}
    problems = []

    def spark(data, master, name, partitions):
        spark_env = dict(os.environ, PYSPARK_PYTHON=str(PYTHON),
                         PYSPARK_SUBMIT_ARGS=f"--conf spark.sql.shuffle.partitions={partitions} "
                                             "--conf spark.ui.enabled=false --driver-memory 2g pyspark-shell")
        return [PYTHON, "-m", "regtally.spark", "run", data, "-o", out / name, *flags[:-1],
                "--master", master], spark_env

    def rounds(events, todo):
        for r in range(args.rounds):
            for name, (cmd, env_, cores) in todo.items():
                wall, job = timed(cmd, env_)
                print(f"{events:,} events, round {r + 1}: {name}: {wall:.2f} s"
                      + (f" (job {job:.2f} s)" if job else ""), flush=True)
                key = (events, name)
                if key not in best or wall < best[key]["wall"]:
                    best[key] = {"wall": wall, "job": job, "cores": cores}

    for events in args.events:
        data = TARGET / "bench-spark" / f"{events}-{args.files}"
        if not (data.parent / f"{data.name}-done").exists():
            sh("rm", "-rf", data)
            sh(TARGET / "release" / "examples" / "gen_logs", data, events, args.files, "--seed", 26)
            (data.parent / f"{data.name}-done").touch()
        sizes[events] = sum(f.stat().st_size for f in data.iterdir())
        sh("rm", "-rf", out)
        commands = {
            "regtally run -j 1": ([binary, "run", data, "-o", out / "j1", "-j", "1", *flags], None, 1),
            "regtally run -j 2": ([binary, "run", data, "-o", out / "j2", "-j", "2", *flags], None, 2),
        }
        if args.only in (None, "local"):
            commands["spark local[2]"] = (*spark(data, "local[2]", "local2", 4), 2)
        rounds(events, commands)
        if args.only in (None, "standalone"):
            for workers in (1, 2):
                with standalone(workers) as master:
                    name = f"spark standalone, {workers} one-core worker(s)"
                    rounds(events, {name: (*spark(data, master, f"standalone{workers}", 4), workers)})
        problems += [f"{events:,} events: {p}" for name in ["local2", "standalone1", "standalone2"]
                     if (out / name).exists() for p in compare(out / "j2", out / name, name)]

    print(f"\nbest of {args.rounds}; {args.files} files; MB/s per core: the input's bytes over (the job's "
          "seconds, or the wall time, x cores)")
    print(f"{'events':>11} {'MB':>6}  {'command':40} {'wall s':>8} {'job s':>8} {'MB/s/core':>10}")
    for (events, name), b in best.items():
        seconds = b["job"] or b["wall"]
        b["mb_per_core_second"] = sizes[events] / 1e6 / seconds / b["cores"]
        print(f"{events:>11,} {sizes[events] / 1e6:6.0f}  {name:40} {b['wall']:8.2f} {b['job'] or 0:8.2f} "
              f"{b['mb_per_core_second']:10.0f}")
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        print(f"\nonce running: the {large:,}-event run's extra bytes over its extra seconds, per core")
        for name in sorted({n for _, n in best}):
            a, b = best.get((small, name)), best.get((large, name))
            if a and b:
                extra = (b["job"] or b["wall"]) - (a["job"] or a["wall"])
                rate = (sizes[large] - sizes[small]) / 1e6 / extra / b["cores"] if extra > 0 else float("inf")
                print(f"  {name:40} {rate:10.0f} MB/s/core")
    (TARGET / "bench-spark.json").write_text(json.dumps(
        {"sizes": sizes, "files": args.files, "problems": problems,
         "best": [{"events": e, "command": n, **b} for (e, n), b in best.items()]}, indent=2))
    for p_ in problems:
        print("DIFFERENT", p_)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
