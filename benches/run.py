#!/usr/bin/env python3
"""regtally's benchmark: synthetic logs, the release binary, MB/s, events/s and peak memory.

    python3 benches/run.py [--events N] [--runs K] [--no-duckdb]

Generates N synthetic events (default 1,000,000, about 900 MB; kept under target/bench-data and
reused) as one big file, as 32 files, and as 32 gzip files; runs `regtally run` on each at one
thread and at all cores, zlib-rs decompression alone on the gzip files (that input's baseline),
and DuckDB (installed by this script into target/bench-venv) on the 32 files and on the 32 gzip
files with the SQL in benches/duckdb_query.sql, at all cores. Page cache warm; K rounds (default
3) in which every command runs once, each command's best round reported.
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

    gz_files = sorted(str(p) for p in (data / "gz").iterdir())
    decoded = size_of(data / "many")  # the gzip files hold the same events as many/
    scenarios = [
        ("one file", data / "one", 1),
        ("one file", data / "one", cores),
        ("32 files", data / "many", 1),
        ("32 files", data / "many", cores),
        ("32 gzip files", data / "gz", 1),
        ("32 gzip files", data / "gz", cores),
    ]
    commands = {
        (name, threads): [binary, "run", str(folder), "-o", str(out), "-q", "--as-of", "2024-01-15", "--max-bad-ratio", "1", "-j", str(threads)]
        for name, folder, threads in scenarios
    }
    duck_key = ("DuckDB, 32 files", cores)
    duck_gz_key = ("DuckDB, 32 gzip files", cores)
    if not opts.no_duckdb:
        python = duckdb_python()
        # The same query on the plain files and on the gzip files (read_json decompresses
        # `.gz` by its name), for the two ratios.
        for key, folder, name in [(duck_key, "many", "bench-duckdb"), (duck_gz_key, "gz", "bench-duckdb-gz")]:
            sql = (ROOT / "benches" / "duckdb_query.sql").read_text()
            sql = sql.replace("{INPUT}", str(data / folder / "*")).replace("{OUTPUT}", str(TARGET / f"{name}.parquet"))
            script = TARGET / f"{name}.py"
            script.write_text(
                "import duckdb, sys\n"
                f"con = duckdb.connect()\ncon.execute('SET threads = {cores}')\n"
                f"con.execute(open({str(TARGET / f'{name}.sql')!r}).read())\n"
            )
            (TARGET / f"{name}.sql").write_text(sql)
            commands[key] = [str(python), str(script)]
    gunzip = str(TARGET / "release" / "examples" / "gunzip")
    commands[("gunzip", 1)] = [gunzip, *gz_files]

    # This machine's speed drifts by tens of percent over minutes: every command runs once per
    # round, round after round, so that the ones compared (one thread against all, regtally
    # against DuckDB) meet the same drift; each keeps its best round.
    for args in commands.values():
        timed(args)  # warm the page cache
    results = {key: [] for key in commands}
    gunzip_secs = []
    for _ in range(opts.runs):
        for key, args in commands.items():
            if key[0] == "gunzip":
                gunzip_secs.append(float(subprocess.run(args, capture_output=True, check=True, text=True).stdout.split()[1]))
            else:
                results[key].append(timed(args))
    best_of = {key: (min(r[0] for r in rs), max(r[1] for r in rs)) for key, rs in results.items() if rs}
    gunzip_rate = decoded / min(gunzip_secs) / 1e6

    rows = []
    for (name, threads), (secs, rss) in best_of.items():
        folder = {"one file": data / "one", "32 files": data / "many", "32 gzip files": data / "gz", "DuckDB, 32 gzip files": data / "gz"}.get(name, data / "many")
        row = {
            "scenario": name,
            "threads": threads,
            "seconds": round(secs, 3),
            "MB/s": round(size_of(folder) / secs / 1e6, 1),
            "events/s": round(opts.events / secs),
            "peak MiB": round(rss, 1),
        }
        if name.endswith("gzip files"):
            row["decoded MB/s per core"] = round(decoded / secs / 1e6 / threads, 1)
        if name == "DuckDB, 32 files":
            row["MB/s"] = round(decoded / secs / 1e6, 1)
        rows.append(row)
    secs = {key: v[0] for key, v in best_of.items()}
    one, one_all = secs[("one file", 1)], secs[("one file", cores)]
    many, many_all = secs[("32 files", 1)], secs[("32 files", cores)]
    gz_one, gz_all = secs[("32 gzip files", 1)], secs[("32 gzip files", cores)]
    duck = secs.get(duck_key)
    duck_gz = secs.get(duck_gz_key)

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
    if duck_gz:
        summary["regtally (32 gzip files, all cores) vs DuckDB on them"] = round(duck_gz / gz_all, 2)
        # Decompression alone on every core bounds any reader of these files from below.
        summary["gzip: decompression alone on all cores vs DuckDB"] = round(duck_gz / (decoded / gunzip_rate / 1e6 / cores), 2)
    print()
    for k, v in summary.items():
        print(f"{k}: {v}")
    (TARGET / "bench-results.json").write_text(json.dumps({"machine": machine(), "events": opts.events, "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
