"""The Spark driver gives exactly what `regtally run` gives, on random logs.

    python python/tests/spark_equivalence.py --bin target/debug/regtally [--cases N]
        [--deployments local1,local3,local7,standalone]

Each case writes a random archive (redeliveries across files, repositories created and deleted
in every partition, deploy tokens, mixed-case users, malformed lines, pretty-printed bodies,
gzip, envelopes, events out of --since/--until, a --known-repositories file), runs
`regtally run` on it, then `python -m regtally.spark run` with the same flags on each
deployment: Spark `local[2]` with 1, 3 and 7 shuffle partitions, and a standalone cluster (a
master and two one-core workers started here on free ports, stopped after). Every output must
be byte-identical but `summary.json`, whose counts must be equal; so must the exit status. Two
cases of three also write the events dataset, whose files must be the same, byte for byte, with
no staged file left, and a stale part removed. One more case reads its archive (a prefix) and
known repositories from object storage, a moto S3 server started here, on `local[2]` and on the
standalone cluster, whose executors get the credentials through `spark.executorEnv`.

Needs the package installed in this Python (`pip install ./python`), PySpark, pandas and Java 17.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

USER_TYPES = ["personal_access_token", "build", "gitlab_or_ldap"]


def event(rng: random.Random, eid: str, repos: list[str]) -> dict:
    action = rng.choices(["push", "delete", "pull", "mount", "rename"], [8, 4, 3, 1, 1])[0]
    target = {"repository": rng.choice(repos), "mediaType": "application/json"}
    shape = rng.random()
    if shape < 0.4:
        target["tag"] = f"v{rng.randrange(5)}"
    # Neither tag nor digest (shape >= 0.85): a delete is a delete_repository.
    if 0.25 < shape < 0.85:
        target["digest"] = f"sha256:{rng.randrange(1000):04x}"
    who = rng.random()
    if who < 0.6:
        actor = {"name": rng.choice(["Root", "root", "alice", "Bob", "bob", "carol", "dave"] + [f"u{i}" for i in range(40)]),
                 "user_type": rng.choice(USER_TYPES)}
    elif who < 0.8:
        actor = {"name": rng.choice(["gitlab+deploy-token-1", "GitLab+Deploy-Token-2", "dt3"]),
                 "user_type": "deploy_token"}
    elif who < 0.9:
        actor = {"name": "ci", "user_type": "something_else"}
    else:
        actor = {}
    day = rng.randrange(0, 70)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1672531200 + day * 86400 + rng.randrange(86400)))
    frac = "" if rng.random() < 0.5 else f".{rng.randrange(10**6):06d}"
    offset = rng.choice(["Z", "Z", "+02:00", "-05:30"])
    return {"id": eid, "timestamp": stamp + frac + offset, "action": action, "target": target, "actor": actor}


def archive(rng: random.Random, folder: Path) -> None:
    repos = [f"group{g}/project{p}" for g in range(4) for p in range(rng.randrange(3, 12))]
    ids = [f"{rng.getrandbits(64):016x}-{i}" for i in range(rng.randrange(200, 900))]
    files = rng.randrange(2, 6)
    sent: list[list[str]] = [[] for _ in range(files)]
    for eid in ids:
        value = event(rng, eid, repos)
        for _ in range(1 if rng.random() < 0.8 else rng.randrange(2, 4)):
            # A redelivery: the same id in any file, sometimes changed (the first counts).
            if rng.random() < 0.2:
                value = dict(value, action=rng.choice(["push", "delete"]))
            f = rng.randrange(files)
            if rng.random() < 0.15:
                text = json.dumps({"events": [value, event(rng, f"{eid}-b", repos)]})
            elif rng.random() < 0.15:
                text = json.dumps({"events": [value]}, indent=3)
            else:
                text = json.dumps(value, separators=(",", ":"))
            sent[f].append(text)
    for f, lines in enumerate(sent):
        for _ in range(rng.randrange(0, 4)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(['{"id": ', "not json", "", '{"id":"x"}']))
        body = "\n".join(lines) + "\n"
        name = folder / f"part-{f:02d}.jsonl"
        if rng.random() < 0.3:
            name.with_suffix(".jsonl.gz").write_bytes(gzip.compress(body.encode()))
        else:
            name.write_text(body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def standalone(workers: int = 2):
    """A Spark master and `workers` one-core workers on free local ports."""
    import pyspark

    home = Path(pyspark.__file__).parent
    spark_class = home / "bin" / "spark-class"
    env = dict(os.environ, SPARK_HOME=str(home), PYSPARK_PYTHON=sys.executable)
    port, ui = free_port(), free_port()
    logs = Path(tempfile.mkdtemp(prefix="regtally-spark-logs-"))
    procs = [subprocess.Popen(
        [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
         "--port", str(port), "--webui-port", str(ui)],
        env=env, stdout=open(logs / "master.log", "w"), stderr=subprocess.STDOUT)]
    url = f"spark://127.0.0.1:{port}"
    try:
        for w in range(workers):
            procs.append(subprocess.Popen(
                [str(spark_class), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                 "--cores", "1", "--memory", "1g", "--webui-port", str(free_port()),
                 "--work-dir", str(logs / f"work{w}")],
                env=env, stdout=open(logs / f"worker{w}.log", "w"), stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as r:
                    if json.load(r).get("aliveworkers", 0) >= workers:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standalone cluster did not start: see {logs}")
            time.sleep(1)
        yield url
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(logs, ignore_errors=True)


def run_spark(args: list[str], master: str, partitions: int,
              executor_env: Optional[dict] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """The driver on `master`; `executor_env` goes to the driver and to every executor."""
    confs = "".join(f"--conf spark.executorEnv.{k}={v} " for k, v in (executor_env or {}).items())
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **(executor_env or {}),
               PYSPARK_SUBMIT_ARGS=f"--conf spark.sql.shuffle.partitions={partitions} {confs}"
                                   "--conf spark.ui.enabled=false --driver-memory 1g pyspark-shell")
    return subprocess.run([sys.executable, "-m", "regtally.spark", "run", *args, "--master", master],
                          env=env, capture_output=True, text=True, cwd=cwd)


SUMMARY_TIMES = {"elapsed_seconds", "phase_seconds", "write_seconds"}


def summary_counts(path: Path) -> dict:
    s = json.loads(path.read_text())
    if "events_dataset" in s:
        s["events_dataset"].pop("dir")
    return {k: v for k, v in s.items() if k not in SUMMARY_TIMES}


def dataset_files(folder: Path) -> dict:
    """Every file under the events dataset's folder (staged leftovers included), by relative
    path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def compare(ref: Path, got: Path, label: str, events: Optional[tuple] = None) -> list[str]:
    problems = []
    if events is not None:
        a, b = dataset_files(events[0]), dataset_files(events[1])
        if sorted(a) != sorted(b):
            problems.append(f"{label}: the events dataset's files differ: {sorted(a)} != {sorted(b)}")
        else:
            problems += [f"{label}: events dataset {name} differs" for name in a if a[name] != b[name]]
    for name in ["aggregates.parquet", "service_ping.json", "repositories.txt", "rejects.jsonl"]:
        a, b = ref / name, got / name
        if a.exists() != b.exists():
            problems.append(f"{label}: {name} exists in one output only")
        elif a.exists() and a.read_bytes() != b.read_bytes():
            problems.append(f"{label}: {name} differs")
    if (ref / "summary.json").exists():
        a, b = summary_counts(ref / "summary.json"), summary_counts(got / "summary.json")
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"{label}: summary.json {key}: {a.get(key)!r} != {b.get(key)!r}")
    return problems


def failed_run(work: Path) -> list[str]:
    """A run over the --max-bad-ratio exits 1 and leaves nothing: no output, and none of the
    events dataset's files its tasks staged."""
    logs = work / "bad"
    logs.mkdir()
    event = {"id": "e1", "timestamp": "2023-01-02T03:04:05Z", "action": "push",
             "target": {"repository": "g/r", "tag": "v1"},
             "actor": {"name": "alice", "user_type": "personal_access_token"}}
    (logs / "a.jsonl").write_text(json.dumps(event) + "\nnot json\n" * 3)
    events = work / "bad-events"
    got = run_spark([str(logs), "-o", str(work / "bad-out"), "--events", str(events),
                     "--max-bad-ratio", "0.1", "--as-of", "2023-03-01"], "local[2]", 2)
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if p.is_file() and p.is_relative_to(events) or p.parent == work / "bad-out")
    if got.returncode != 1 or left:
        return [f"a failed run: exit {got.returncode}, left {left}\n{got.stderr[-2000:]}"]
    return []


def refusals(work: Path) -> list[str]:
    """What the driver does not offer is refused with exit status 2, before Spark starts."""
    problems = []
    (work / "in.jsonl").write_text("")
    for flags, says in [
        (["--state", str(work / "state")], "--state"),
        (["--events", "s3://bucket/events"], "--events in object storage"),
        (["--redis", str(work / "redis")], "--redis"),
    ]:
        got = subprocess.run(
            [sys.executable, "-m", "regtally.spark", "run", str(work / "in.jsonl"), "-o",
             str(work / "out"), *flags], capture_output=True, text=True)
        if got.returncode != 2 or says not in got.stderr:
            problems.append(f"{flags}: exit {got.returncode}, {got.stderr[-500:]!r}")
    return problems


@contextlib.contextmanager
def s3_server():
    """A moto S3 server on a free local port, and the environment that points regtally (and
    every executor, through `spark.executorEnv`) at it."""
    port = free_port()
    # This Python's, or the one CI installs into target/interop-venv (the Spark 3.5 venv has
    # none of its own).
    candidates = [Path(sys.executable).parent / "moto_server",
                  Path(__file__).resolve().parents[2] / "target/interop-venv/bin/moto_server"]
    moto = next((c for c in candidates if c.exists()), Path("moto_server"))
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not listen")
                time.sleep(0.1)
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def put(endpoint: str, key: str, body: bytes) -> None:
    """An unsigned PUT, which moto takes: a bucket (`key` without a slash) or an object."""
    # Not urllib's default form type, which moto's server tries to parse as a form.
    request = urllib.request.Request(f"{endpoint}/{key}", data=body, method="PUT",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=30) as r:
        r.read()


def check_case(bin_: str, case: int, work: Path, deployments: list[str], cluster: Optional[str],
               s3: Optional[dict] = None) -> list[str]:
    """Writes case `case`'s archive and compares each deployment's outputs with `regtally
    run`'s; with `s3`, the archive and the known repositories are read from object storage."""
    problems = []
    rng = random.Random(SEED * 1000 + case)
    logs = work / "logs"
    logs.mkdir()
    archive(rng, logs)
    known = work / "known.txt"
    known.write_text("group0/project0\ngroup9/old\n\n")
    inputs, known_at, env = [str(logs)], str(known), None
    if s3 is not None:
        endpoint = s3["AWS_ENDPOINT_URL"]
        put(endpoint, "logs", b"")
        put(endpoint, "logs/known.txt", known.read_bytes())
        for f in sorted(logs.iterdir()):
            put(endpoint, f"logs/archive/{f.name}", f.read_bytes())
        # A prefix: the driver lists it as regtally run does.
        inputs, known_at, env = ["s3://logs/archive/"], "s3://logs/known.txt", s3
    flags = ["--as-of", "2023-03-01", "--known-repositories", known_at, "--max-bad-ratio", "1"]
    if case % 2 == 1:
        flags += ["--since", "2023-01-10", "--until", "2023-02-20", "--precision", "10"]
    # The events dataset in two cases of three, one of them with --since/--until.
    with_events = case % 3 != 2
    ref = work / "ref"
    events = ["--events", str(work / "events-ref")] if with_events else []
    # In the work folder, as the driver runs: inputs under the current folder are named
    # relative to it.
    want = subprocess.run([bin_, "run", *inputs, "-o", str(ref), "--quiet", *flags, *events],
                          capture_output=True, text=True, env=dict(os.environ, **(env or {})),
                          cwd=work)
    if want.returncode not in (0, 1):
        return [f"case {case}: regtally run: exit {want.returncode}\n{want.stderr[-3000:]}"]
    for d in deployments:
        if d == "standalone":
            master, partitions = cluster, 3
        else:
            master, partitions = "local[2]", int(d.removeprefix("local"))
        out = work / f"out-{d}"
        # Relative on one deployment (the run's folder is the work folder): the tasks write
        # at the absolute path, and the parts found there must be those same files.
        events_dir = f"events-{d}" if d == "local1" else str(work / f"events-{d}")
        events = ["--events", events_dir] if with_events else []
        if with_events:
            # A stale part, which the run must remove, and a part it rewrites.
            for month in ["month=2020-01", "month=2023-01"]:
                (work / f"events-{d}" / month).mkdir(parents=True)
                (work / f"events-{d}" / month / "part-00000.parquet").write_bytes(b"old")
        got = run_spark([*inputs, "-o", str(out), *flags, *events], master, partitions, env, cwd=work)
        label = f"case {case}{' (s3)' if s3 else ''} ({d})"
        print(f"{label}: exit {got.returncode} (regtally run: {want.returncode})", flush=True)
        if got.returncode != want.returncode:
            problems.append(f"{label}: exit {got.returncode}, regtally run {want.returncode}\n{got.stderr[-3000:]}")
            continue
        dirs = (work / "events-ref", work / f"events-{d}") if with_events else None
        problems += compare(ref, out, label, dirs)
    return problems


SEED = int(os.environ.get("REGTALLY_SPARK_SEED", "26"))


def main() -> int:
    global SEED
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--cases", type=int, default=int(os.environ.get("REGTALLY_SPARK_CASES", "3")))
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--deployments", default="local1,local3,local7,standalone")
    p.add_argument("--no-s3", action="store_true", help="skip the case read from object storage")
    args = p.parse_args()
    SEED = args.seed
    # The runs start in their work folders.
    args.bin = str(Path(args.bin).resolve())
    deployments = args.deployments.split(",")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="regtally-spark-") as work:
        problems += refusals(Path(work))
        problems += failed_run(Path(work))
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(standalone()) if "standalone" in deployments else None
        for case in range(args.cases):
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regtally-spark-")))
            problems += check_case(args.bin, case, work, deployments, cluster)
        if not args.no_s3:
            # One more case, its inputs and known repositories in moto's S3: on one local and the
            # standalone deployment, whose executors get the credentials as a cluster's would.
            s3 = stack.enter_context(s3_server())
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regtally-spark-")))
            on = [d for d in deployments if d in ("local3", "standalone")] or deployments[:1]
            problems += check_case(args.bin, args.cases, work, on, cluster, s3)
    for problem in problems:
        print("FAIL", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
