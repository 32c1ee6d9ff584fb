#!/usr/bin/env python3
"""regtally's benchmark: synthetic logs, the release binary, MB/s, events/s and peak memory.

    python3 benches/run.py [--events N] [--runs K] [--no-duckdb]

Generates N synthetic events (default 1,000,000, about 900 MB; kept under target/bench-data and
reused) as one big file, as 32 files, and as 32 gzip files; runs `regtally run` on each at one
thread and at all cores, best of K runs (default 3), page cache warm; runs zlib-rs decompression
alone on the gzip files as that input's baseline; and runs DuckDB (installed by this script into
target/bench-venv) on the same files with the SQL in benches/duckdb_query.sql, at all cores.
Prints a table and writes target/bench-results.json.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "target"


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def timed(args, env=None):
    """Runs a command; returns (seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{err}")
    return seconds, usage.ru_maxrss / 1024


def best(args, runs, env=None):
    results = [timed(args, env) for _ in range(runs)]
    return min(r[0] for r in results), max(r[1] for r in results)


def size_of(folder):
    return sum(p.stat().st_size for p in folder.iterdir())


def generate(data, events):
    gen = TARGET / "release" / "examples" / "gen_logs"
    marker = data / f"events-{events}"
    if marker.exists():
        return
    sh("rm", "-rf", str(data))
    data.mkdir(parents=True)
    sh(str(gen), str(data / "one"), str(events), "1")
    sh(str(gen), str(data / "many"), str(events), "32")
    sh(str(gen), str(data / "gz"), str(events), "32", "--gzip")
    marker.touch()


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {cpu}, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def duckdb_python():
    venv = TARGET / "bench-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        sh(sys.executable, "-m", "venv", str(venv))
    probe = subprocess.run([str(python), "-c", "import duckdb"], capture_output=True)
    if probe.returncode != 0:
        sh(str(python), "-m", "pip", "install", "--quiet", "duckdb")
    return python


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-duckdb", action="store_true")
    opts = ap.parse_args()

    sh("cargo", "build", "--release", "--quiet", "--bin", "regtally", "--example", "gen_logs", "--example", "gunzip", cwd=ROOT)
    data = TARGET / "bench-data"
    generate(data, opts.events)
    binary = str(TARGET / "release" / "regtally")
    cores = os.cpu_count() or 1
    out = TARGET / "bench-out"
    rows = []

    def regtally(name, folder, threads, decoded=None):
        args = [binary, "run", str(folder), "-o", str(out), "-q", "--as-of", "2024-01-15", "--max-bad-ratio", "1", "-j", str(threads)]
        timed(args)  # warm the page cache
        secs, rss = best(args, opts.runs)
        size = size_of(folder)
        row = {
            "scenario": name,
            "threads": threads,
            "seconds": round(secs, 3),
            "MB/s": round(size / secs / 1e6, 1),
            "events/s": round(opts.events / secs),
            "peak MiB": round(rss, 1),
        }
        if decoded:
            row["decoded MB/s per core"] = round(decoded / secs / 1e6 / threads, 1)
        rows.append(row)
        return secs

    one = regtally("one file", data / "one", 1)
    one_all = regtally("one file", data / "one", cores)
    many = regtally("32 files", data / "many", 1)
    many_all = regtally("32 files", data / "many", cores)
    decoded = size_of(data / "many")  # the gzip files hold the same events as many/
    gz_files = sorted(str(p) for p in (data / "gz").iterdir())
    gz_one = regtally("32 gzip files", data / "gz", 1, decoded)
    gz_all = regtally("32 gzip files", data / "gz", cores, decoded)

    gunzip = str(TARGET / "release" / "examples" / "gunzip")
    subprocess.run([gunzip, *gz_files], capture_output=True, check=True)
    best_gunzip = min(
        float(subprocess.run([gunzip, *gz_files], capture_output=True, check=True, text=True).stdout.split()[1])
        for _ in range(opts.runs)
    )
    gunzip_rate = decoded / best_gunzip / 1e6

    duck = None
    if not opts.no_duckdb:
        python = duckdb_python()
        sql = (ROOT / "benches" / "duckdb_query.sql").read_text()
        sql = sql.replace("{INPUT}", str(data / "many" / "*")).replace("{OUTPUT}", str(TARGET / "bench-duckdb.parquet"))
        script = TARGET / "bench-duckdb.py"
        script.write_text(
            "import duckdb, sys\n"
            f"con = duckdb.connect()\ncon.execute('SET threads = {cores}')\n"
            f"con.execute(open({str(TARGET / 'bench-duckdb.sql')!r}).read())\n"
        )
        (TARGET / "bench-duckdb.sql").write_text(sql)
        timed([str(python), str(script)])
        duck, duck_rss = best([str(python), str(script)], opts.runs)
        rows.append({
            "scenario": "DuckDB, 32 files",
            "threads": cores,
            "seconds": round(duck, 3),
            "MB/s": round(decoded / duck / 1e6, 1),
            "events/s": round(opts.events / duck),
            "peak MiB": round(duck_rss, 1),
        })

    print(f"\n{opts.events:,} events, {size_of(data / 'one') / 1e6:.0f} MB plain; machine: {machine()}\n")
    keys = ["scenario", "threads", "seconds", "MB/s", "events/s", "peak MiB", "decoded MB/s per core"]
    print(" | ".join(keys))
    print(" | ".join("---" for _ in keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")) for k in keys))
    summary = {
        "speedup one file 1->all": round(one / one_all, 2),
        "speedup 32 files 1->all": round(many / many_all, 2),
        "gzip: zlib-rs decompression alone, MB/s one core": round(gunzip_rate, 1),
        "gzip: regtally decoded MB/s per core / decompression alone": round(decoded / gz_all / 1e6 / cores / gunzip_rate, 2),
        "gzip speedup 1->all": round(gz_one / gz_all, 2),
    }
    if duck:
        summary["regtally (32 files, all cores) vs DuckDB"] = round(duck / many_all, 2)
    print()
    for k, v in summary.items():
        print(f"{k}: {v}")
    (TARGET / "bench-results.json").write_text(json.dumps({"machine": machine(), "events": opts.events, "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
