#!/usr/bin/env python3
"""Reading from object storage, against reading local copies and against plain GETs.

    python3 benches/objects.py [--rounds K] [--events N] [--files F]

Starts moto_server (from target/interop-venv, which .ci/run makes) on a free local port, uploads
N synthetic events (default 1,000,000 in F = 16 objects, about 900 MB, from benches/gen_logs.rs)
to a bucket, and times, best of K rounds (default 5), every command once per round in turn:

- (a) plain sequential GETs of every object, bodies read and dropped (boto3, one connection);
- (b) `regtally run` over the local copies;
- (c) `regtally run` over `s3://bench/logs/`.

The target of the object-storage issue: (c) at most 1.2 times the longer of (a) and (b). The
outputs of (b) and (c) are compared (every file but the summary; the rejects' file names differ).
"""

import argparse
import filecmp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from streaming import ROOT, TARGET, sh, timed  # noqa: E402

VENV = TARGET / "interop-venv" / "bin"
DATA = TARGET / "bench-objects"

GETS = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
for key in sys.argv[2:]:
    body = s3.get_object(Bucket="bench", Key=key)["Body"]
    while body.read(1 << 20):
        pass
"""

UPLOAD = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="test", aws_secret_access_key="test")
s3.create_bucket(Bucket="bench")
for path in sys.argv[3:]:
    s3.upload_file(path, "bench", "logs/" + path[len(sys.argv[2]) + 1:])
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=16)
    opts = ap.parse_args()
    moto, python = VENV / "moto_server", VENV / "python"
    if not moto.exists():
        sys.exit(f"{moto} is missing: run .ci/run once, or pip install 'moto[server]' into that venv")
    sh("cargo", "build", "--release", "--quiet", "--bin", "regtally", "--example", "gen_logs", cwd=ROOT)
    binary = TARGET / "release" / "regtally"
    logs = DATA / f"{opts.events}-{opts.files}"
    if not (logs / "done").exists():
        sh("rm", "-rf", logs)
        sh(TARGET / "release" / "examples" / "gen_logs", logs / "logs", opts.events, opts.files, "--seed", 7)
        (logs / "done").touch()
    files = sorted(str(p) for p in (logs / "logs").iterdir())
    size = sum(os.path.getsize(f) for f in files)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() > deadline:
                    sys.exit("moto_server does not listen")
                time.sleep(0.1)
        sh(python, "-c", UPLOAD, endpoint, str(logs / "logs"), *files)
        keys = ["logs/" + os.path.basename(f) for f in files]
        os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
                           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"})
        out = DATA / "out"
        commands = {
            "(a) sequential GETs": [python, "-c", GETS, endpoint, *keys],
            "(b) regtally, local copies": [binary, "run", logs / "logs", "-o", out / "local", "-q"],
            "(c) regtally, s3://": [binary, "run", "s3://bench/logs/", "-o", out / "s3", "-q"],
        }
        for args in commands.values():
            timed(args)  # warm the page cache and the server
        best = {k: None for k in commands}
        for r in range(opts.rounds):
            order = list(commands.items())
            for key, args in (order if r % 2 == 0 else order[::-1]):
                got = timed(args)
                if best[key] is None or got[0] < best[key][0]:
                    best[key] = got
    finally:
        server.kill()
        server.wait()

    print(f"\n{opts.events:,} events in {opts.files} objects, {size / 1e6:,.0f} MB; "
          f"{os.cpu_count()} cores; best of {opts.rounds} rounds\n")
    print("command | seconds | MB/s | peak MiB | CPU s")
    print("--- | --- | --- | --- | ---")
    for key, (seconds, peak, cpu) in best.items():
        print(f"{key} | {seconds:.2f} | {size / 1e6 / seconds:,.0f} | {peak:.0f} | {cpu:.2f}")
    bound = max(best["(a) sequential GETs"][0], best["(b) regtally, local copies"][0])
    ratio = best["(c) regtally, s3://"][0] / bound
    same = all(filecmp.cmp(out / "local" / f, out / "s3" / f, shallow=False)
               for f in ["aggregates.parquet", "service_ping.json", "repositories.txt"])
    print(f"\n(c) over the longer of (a) and (b): {ratio:.2f} (target <= 1.2)")
    print(f"outputs of (b) and (c) byte-identical: {same}")


if __name__ == "__main__":
    main()
