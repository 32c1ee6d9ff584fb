#!/usr/bin/env python3
"""Two regtally binaries side by side on archives already on disk.

    python3 benches/compare.py BASE NEW ARCHIVE... [--rounds K] [--flags='--memory-limit 256M']
        [--events]

Each round runs `BASE run ARCHIVE` and `NEW run ARCHIVE` once (every other round in the
reverse order), `-j 2`, page cache warm after the first. For each archive it prints each
binary's best and median wall time, the median share of the wall time spent after reading
(the phases `summary.json` reports after `read_and_parse`; and, as "wall", all but the
reading, what the phases don't time such as exiting counted too), the highest peak resident
set (of all its runs), the median of the rounds' own ratios BASE/NEW (a spell that slows a whole round leaves its
ratio alone), and whether the two wrote the same aggregates, Service Ping, repositories and
rejects. With `--events`, each binary's plain run is followed by the same run with `--events`:
its median time and write phase, the median of the rounds' ratios to the plain run just before
(what the dataset costs: issue 27's item 2), and whether the two binaries wrote the same
dataset, file by file.

A lever of issue 27 is measured so: the binary of the commit before it against the binary with
it (`git worktree` and `cargo build --release` of each), on archives of more than one shape
(`gen_logs N FILES`, `gen_logs N FILES --repositories 1000000`).
"""

import argparse
import filecmp
import json
import os
import shlex
import statistics
import subprocess
import tempfile
import time

AFTER_READING = ("deduplicate", "repository_ledger", "aggregate", "sketches", "write")
COMPARED = ("aggregates.parquet", "service_ping.json", "repositories.txt", "rejects.jsonl")


def run(binary, archive, out, extra):
    """One run: wall seconds, peak RSS in MiB, share of the wall time after reading (by the
    phases after reading, and by the wall time less the reading's), and the phases."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [binary, "run", archive, "-o", out, "--quiet", "--as-of", "2023-03-01", "-j", "2", *extra],
        stdout=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{binary} run {archive} failed")
    with open(os.path.join(out, "summary.json")) as f:
        phases = dict(json.load(f)["phase_seconds"])
    after = sum(phases.get(p, 0.0) for p in AFTER_READING)
    return wall, usage.ru_maxrss / 1024, (after / wall, 1 - phases["read_and_parse"] / wall), phases


def same_tree(a, b):
    """Whether two folders hold the same files, byte for byte."""
    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    return files(a) == files(b) and all(
        filecmp.cmp(os.path.join(a, f), os.path.join(b, f), shallow=False) for f in files(a))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("archives", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--flags", default="", help="flags of `run` added to both binaries' runs")
    ap.add_argument("--events", action="store_true", help="also run each binary with --events after its plain run")
    opts = ap.parse_args()
    extra = shlex.split(opts.flags)
    bins = {"base": opts.base, "new": opts.new}
    with tempfile.TemporaryDirectory(prefix="regtally-compare-") as tmp:
        for archive in opts.archives:
            walls = {k: [] for k in bins}
            shares = {k: [] for k in bins}
            peaks = {k: 0.0 for k in bins}
            # With --events: (wall, write phase, ratio to the plain run before it) per round.
            events = {k: [] for k in bins}
            for r in range(opts.rounds):
                for k in (list(bins) if r % 2 == 0 else list(reversed(bins))):
                    wall, peak, share, _ = run(bins[k], archive, os.path.join(tmp, k), extra)
                    walls[k].append(wall)
                    shares[k].append(share)
                    peaks[k] = max(peaks[k], peak)
                    if opts.events:
                        dataset = ["--events", os.path.join(tmp, f"{k}-events")]
                        ev, peak, _, phases = run(bins[k], archive, os.path.join(tmp, f"{k}-ev"), extra + dataset)
                        events[k].append((ev, phases["write"], ev / wall))
                        peaks[k] = max(peaks[k], peak)
            ratio = statistics.median(b / n for b, n in zip(walls["base"], walls["new"]))
            same = all(
                filecmp.cmp(os.path.join(tmp, "base", f), os.path.join(tmp, "new", f), shallow=False)
                for f in COMPARED
            )
            print(archive)
            for k in bins:
                print(
                    f"  {k}: best {min(walls[k]):.3f} s, median {statistics.median(walls[k]):.3f} s, "
                    f"after reading {100 * statistics.median(s[0] for s in shares[k]):.1f}% "
                    f"(wall {100 * statistics.median(s[1] for s in shares[k]):.1f}%), peak {peaks[k]:.0f} MiB"
                )
            print(f"  median ratio base/new {ratio:.3f}, outputs {'the same' if same else 'DIFFERENT'}", flush=True)
            if opts.events:
                for k in bins:
                    ev, write, cost = (statistics.median(e[i] for e in events[k]) for i in range(3))
                    print(f"  {k} with --events: median {ev:.3f} s, write phase {write:.3f} s, "
                          f"{cost:.2f} times its plain run (median of the rounds)")
                same = same_tree(os.path.join(tmp, "base-events"), os.path.join(tmp, "new-events"))
                print(f"  datasets {'the same' if same else 'DIFFERENT'}", flush=True)


if __name__ == "__main__":
    main()
