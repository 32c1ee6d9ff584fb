#!/usr/bin/env python3
"""The memory budget at scale: archives over millions of repositories, a year of many users a
day, and the fold of a year of 200,000 users a day.

    python3 benches/scale.py [--baseline REV] [--only NAME]

Builds the release binary of this tree (and of REV, as benches/streaming.py does), generates
with benches/gen_logs.rs, under target/bench-scale (reused; about 27 GB):

- repos12: 12M events in 25 files (about 11 GB) drawn from 50M repositories: about 2.5M left;
- repos6: 6M events in 12 files (about 5 GB) drawn from 50M repositories: about 1.3M left;
- users12: 12M events in 25 files, no pulls (every event counts), 40,000 users: about
  13,000 distinct users a day in each of the busiest metrics, for a year;

and runs each binary on each with --memory-limit 256M and 16G, -j all cores, page cache warm
(one run each: they take tens of seconds): seconds and peak memory, and whether every output
but the summary is byte-identical across the limits and binaries. On repos6 it also runs two
nights with --state at 256M: the whole archive, then a night with nothing new (the state's 1.3M
repositories read and written). Then it runs the fold of 365 days of 200,000 users a day
(benches/fold_users.rs) with dense days and as lists.

Targets (issue 24): 12M over 2.5M repositories and 6M over 1.3M, 256M: peak under 400 MiB,
outputs byte-identical to 16G.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import ROOT, TARGET, build_baseline, same_outputs, sh, timed  # noqa: E402

DATA = TARGET / "bench-scale"
ARCHIVES = {
    "repos12": (12_000_000, 25, ["--seed", 12, "--repositories", 50_000_000]),
    "repos6": (6_000_000, 12, ["--seed", 6, "--repositories", 50_000_000]),
    "users12": (12_000_000, 25, ["--seed", 17, "--users", 40_000, "--no-pulls"]),
}


def generate(name):
    events, files, extra = ARCHIVES[name]
    folder, marker = DATA / name, DATA / f"{name}-done"
    if not marker.exists():
        sh("rm", "-rf", folder)
        sh(TARGET / "release" / "examples" / "gen_logs", folder, events, files, *extra)
        marker.touch()
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", action="append", default=[],
                    help="git revision to compare with, e.g. a release tag (may be repeated)")
    ap.add_argument("--only", choices=list(ARCHIVES) + ["fold"], action="append",
                    help="run only these scenarios")
    opts = ap.parse_args()
    sh("cargo", "build", "--release", "--quiet", "--bin", "regtally", "--example", "gen_logs",
       "--example", "fold_users", cwd=ROOT)
    binaries = {"this tree": TARGET / "release" / "regtally"}
    for rev in opts.baseline:
        binary, sha = build_baseline(rev)
        binaries[f"baseline {rev} ({sha})"] = binary
    cores = str(os.cpu_count() or 1)
    out = TARGET / "bench-scale-out"
    rows, targets = [], {}
    for name in ARCHIVES:
        if opts.only and name not in opts.only:
            continue
        logs = generate(name)
        outputs = {}
        for key, binary in binaries.items():
            for limit in ["256M", "16G"]:
                folder = out / f"{name}-{len(outputs)}"
                args = [binary, "run", logs, "-o", folder, "-q", "--as-of", "2024-01-01", "-j", cores,
                        "--memory-limit", limit]
                timed(args)  # the page cache warm for the run measured
                secs, mib, cpu = timed(args)
                summary = json.loads((folder / "summary.json").read_text())
                outputs[(key, limit)] = folder
                rows.append({"archive": name, "binary": key, "limit": limit, "seconds": round(secs, 2),
                             "peak MiB": round(mib, 1), "CPU s": round(cpu, 2),
                             "repositories": summary["repositories"], "spilled": summary["spilled"]})
        if name == "repos6":
            for i, (key, binary) in enumerate(binaries.items()):
                state, folder = out / f"state-{i}", out / f"state-out-{i}"
                sh("rm", "-rf", state)
                for night in ["first night", "nothing new"]:
                    secs, mib, cpu = timed([binary, "run", logs, "-o", folder, "-q", "--as-of", "2024-01-01",
                                            "-j", cores, "--memory-limit", "256M", "--state", state])
                    rows.append({"archive": f"{name}, --state, {night}", "binary": key, "limit": "256M",
                                 "seconds": round(secs, 2), "peak MiB": round(mib, 1), "CPU s": round(cpu, 2),
                                 "repositories": "", "spilled": ""})
        first = outputs[("this tree", "256M")]
        targets[f"{name}: every output byte-identical across limits and binaries"] = all(
            same_outputs(first, other) for other in outputs.values())
        tree = [r for r in rows if r["archive"] == name and r["binary"] == "this tree"]
        targets[f"{name}: this tree, 256M, peak MiB"] = tree[0]["peak MiB"]
    if not opts.only or "fold" in opts.only:
        fold = TARGET / "release" / "examples" / "fold_users"
        for mode in [[], ["--lists"]]:
            line = subprocess.run([str(fold), "365", "200000", "1000000", *mode], check=True,
                                  capture_output=True, text=True).stdout.strip()
            print(line)
            targets[f"fold, {'lists' if mode else 'dense days'}"] = line
    keys = ["archive", "binary", "limit", "seconds", "peak MiB", "CPU s", "repositories", "spilled"]
    print(f"\n{cores} cores, one run each, page cache warm\n")
    print(" | ".join(keys))
    print(" | ".join("---" for _ in keys))
    for r in rows:
        print(" | ".join(str(r[k]) for k in keys))
    print()
    for k, v in targets.items():
        print(f"{k}: {v}")
    (TARGET / "bench-scale.json").write_text(json.dumps({"rows": rows, "targets": targets}, indent=2))


if __name__ == "__main__":
    main()
