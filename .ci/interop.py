#!/usr/bin/env python3
"""Interop check: regtally's aggregates.parquet read by pyarrow, polars, DuckDB and Spark 4, and its
`hll_sketch` column merged with DataSketches HLL sketches that Spark and Python build themselves; the
events dataset (`--events`) opened as one table by the same four, and GUIDE.md's DuckDB questions
run on it against answers computed here from samples/.

    target/interop-venv/bin/python .ci/interop.py --bin target/debug/regtally [--guide GUIDE.md]

Needs the packages of .ci/interop-requirements.txt and a Java 17 runtime; no network. Exits 1 with a
message on the first failed check (temporary outputs are then kept), 2 on a usage error.
"""
import argparse, datetime as dt, gzip, json, os, re, shutil, struct, subprocess, sys, tempfile, time
from collections import defaultdict

import datasketches as ds
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = "user_container_registry_total"
USER_TYPES = {"personal_access_token", "build", "gitlab_or_ldap"}
QUARTER = (dt.date(2023, 1, 1), dt.date(2023, 4, 1))  # the GUIDE.md examples' quarter: 2023-Q1
COLUMNS = [("event_name", pa.string()), ("period_kind", pa.string()), ("period", pa.string()),
           ("period_start", pa.date32()), ("period_end", pa.date32()), ("unique_users", pa.int64()),
           ("events", pa.int64()), ("sketch", pa.binary()), ("hll_sketch", pa.binary()),
           ("unique_users_lower", pa.int64()), ("unique_users_upper", pa.int64())]
# name -> (flags, precision, since, until); the two --state runs share one state folder.
RUNS = {"out": (["--events", "{tmp}/events"], 14, None, None),
        "since_until": (["--since", "2023-01-02", "--until", "2023-01-16"], 14, "2023-01-02", "2023-01-16"),
        "precision10": (["--precision", "10"], 10, None, None),
        "state1": (["--state", "{tmp}/state", "--events", "{tmp}/state-events"], 14, None, None),
        "state2": (["--state", "{tmp}/state", "--events", "{tmp}/state-events"], 14, None, None)}
EVENT_COLUMNS = [("time", pa.timestamp("us", tz="UTC")), ("id", pa.string()), ("action", pa.string()),
                 ("class", pa.string()), ("repository", pa.string()), ("namespace", pa.string()),
                 ("tag", pa.string()), ("digest", pa.string()), ("media_type", pa.string()),
                 ("user", pa.string()), ("actor_name", pa.string()), ("actor_type", pa.string()),
                 ("counted", pa.bool_()), ("file", pa.string()), ("line", pa.int64()), ("index", pa.int64()),
                 ("deploy_token", pa.string())]
PUSHES = {"push_tag", "create_repository", "push_repository"}


class Fail(Exception):
    pass


def ok(msg):
    print("ok   " + msg, flush=True)


def check(cond, msg):
    if not cond:
        raise Fail(msg)


# ---------------------------------------------------------------- Parquet footer, read by hand
def kv_metadata(path):
    """[(key, value or None)] from the footer's Thrift bytes. pyarrow and DuckDB show a missing
    value as b'', so only the bytes tell a null value (which Spark 4 cannot read) from an empty one."""
    with open(path, "rb") as f:
        f.seek(-8, os.SEEK_END)
        size, magic = struct.unpack("<I4s", f.read(8))
        check(magic == b"PAR1", f"{path}: not a Parquet file")
        f.seek(-8 - size, os.SEEK_END)
        buf = f.read(size)
    pos = 0

    def varint():
        nonlocal pos
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return result

    def value(t, in_collection=False):  # Thrift compact protocol
        nonlocal pos
        if t in (1, 2):  # bool: in the field header, or one byte in a collection
            if in_collection:
                pos += 1
                return buf[pos - 1] == 1
            return t == 1
        if t == 3:
            pos += 1
            return buf[pos - 1]
        if t in (4, 5, 6):
            v = varint()
            return (v >> 1) ^ -(v & 1)
        if t == 7:
            pos += 8
            return None
        if t == 8:
            n = varint()
            pos += n
            return buf[pos - n:pos]
        if t in (9, 10):
            head = buf[pos]
            pos += 1
            n = head >> 4 if head >> 4 != 15 else varint()
            return [value(head & 0x0F, True) for _ in range(n)]
        if t == 11:
            n = varint()
            if n:
                kv = buf[pos]
                pos += 1
                return [(value(kv >> 4, True), value(kv & 0x0F, True)) for _ in range(n)]
            return []
        if t == 12:
            fields, last = {}, 0
            while buf[pos]:
                head = buf[pos]
                pos += 1
                last = last + (head >> 4) if head >> 4 else value(4)
                fields[last] = value(head & 0x0F)
            pos += 1
            return fields
        raise Fail(f"{path}: unexpected Thrift type {t} in the footer")

    meta = value(12)  # FileMetaData; field 5 = key_value_metadata, KeyValue{1: key, 2: optional value}
    return [(kv[1].decode(), kv.get(2)) for kv in meta.get(5, [])]


# ---------------------------------------------------------------- what the samples hold
TS = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(\.\d+)?(?:[Zz]|([+-])(\d\d):(\d\d))")


def utc_date(ts):
    m = TS.fullmatch(ts)
    check(m, f"timestamp {ts!r}: regtally accepted it, this check cannot parse it")
    y, mo, d, h, mi, s, _frac, sign, oh, om = m.groups()
    t = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59))  # leap second :60
    if sign:
        t -= (1 if sign == "+" else -1) * dt.timedelta(hours=int(oh), minutes=int(om))
    return t.date()


def input_files(root):
    found = set()
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found.update(os.path.realpath(os.path.join(d, f)) for f in files if not f.startswith("."))
    return sorted(found, key=os.fsencode)


def utc_time(ts):
    """(UTC datetime to the microsecond, nanoseconds): the replay's order key, and the dataset's time."""
    m = TS.fullmatch(ts)
    check(m, f"timestamp {ts!r}: regtally accepted it, this check cannot parse it")
    y, mo, d, h, mi, s, frac, sign, oh, om = m.groups()
    nanos = int((frac or ".0")[1:10].ljust(9, "0"))
    t = dt.datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59), tzinfo=dt.timezone.utc)
    if sign:
        t -= (1 if sign == "+" else -1) * dt.timedelta(hours=int(oh), minutes=int(om))
    return t, nanos


def first_deliveries(rejects_path):
    """Every first delivery of samples/ read line by line, minus what the run's rejects.jsonl lists:
    (path, line, index or None, event), in input order."""
    whole, single = set(), set()
    with open(rejects_path) as f:
        for r in map(json.loads, f):
            key = (os.path.realpath(os.path.join(REPO, r["file"])), r["line"])
            if r["index"] is None:
                whole.add(key)
            else:
                single.add(key + (r["index"],))
    seen_ids, out = set(), []
    for path in input_files(os.path.join(REPO, "samples")):
        with open(path, "rb") as f:
            data = f.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        check(data[:4] != b"\x28\xb5\x2f\xfd", f"{path}: zstd input, which this check does not read")
        data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        for no, raw in enumerate(lines, 1):
            if not raw.strip(b" \t\r\n\f") or (path, no) in whole:
                continue
            try:
                obj = json.loads(raw)
            except ValueError as e:
                raise Fail(f"{path}:{no}: not JSON ({e}) but not in rejects.jsonl")
            envelope = "events" in obj
            for i, ev in enumerate(obj["events"] if envelope else [obj]):
                if (path, no, i if envelope else None) in single or ev["id"] in seen_ids:
                    continue
                seen_ids.add(ev["id"])
                out.append((path, no, i if envelope else None, ev))
    return out


def identity(ev, types=USER_TYPES):
    actor = ev.get("actor")
    if (isinstance(actor, dict) and actor.get("user_type") in types
            and isinstance(actor.get("name"), str) and actor["name"]):
        return actor["name"].lower()
    return None


def expected_events(rejects_path, since=None, until=None):
    """The events dataset as SPEC §2 to §6 make it of samples/: {id: row}, each row a dict of the
    columns the questions use, repository pushes resolved by replaying the ledger in (time, id) order."""
    rows = {}
    for path, no, index, ev in first_deliveries(rejects_path):
        target, action = ev["target"], ev["action"]
        kind = {("push", True): "push_tag", ("delete", True): "delete_tag"}.get((action, "tag" in target))
        if kind is None and action == "delete":
            kind = "manifest_delete" if "digest" in target else "delete_repository"
        if kind is None and action == "push":
            kind = "repository_push"
        t, nanos = utc_time(ev["timestamp"])
        day = t.date()
        in_range = not ((since and day < dt.date.fromisoformat(since)) or (until and day >= dt.date.fromisoformat(until)))
        actor = ev.get("actor") if isinstance(ev.get("actor"), dict) else {}
        rows[ev["id"]] = {"id": ev["id"], "time": t.replace(microsecond=nanos // 1000), "order": (t, nanos, ev["id"].encode()),
                          "class": kind, "repository": target["repository"],
                          "namespace": target["repository"].split("/")[0], "user": identity(ev),
                          "deploy_token": identity(ev, {"deploy_token"}),
                          "actor_type": actor.get("user_type") if isinstance(actor.get("user_type"), str) else None,
                          "in_range": in_range, "line": no, "index": index}
    existing = set()
    for r in sorted(rows.values(), key=lambda r: r["order"]):
        if r["class"] == "repository_push":
            r["class"] = "push_repository" if r["repository"] in existing else "create_repository"
        if r["class"] in PUSHES:
            existing.add(r["repository"])
        elif r["class"] == "delete_repository":
            existing.discard(r["repository"])
    for r in rows.values():
        r["counted"] = bool(r["in_range"] and (r["user"] or r["deploy_token"])
                            and r["class"] not in (None, "manifest_delete"))
    return rows


def expected_cells(rejects_path, since=None, until=None):
    """{(period_kind, period): (set of identities, counted events)} for user_container_registry_total."""
    names, counts = defaultdict(set), defaultdict(int)
    for r in expected_events(rejects_path, since, until).values():
        if not r["counted"] or not r["user"]:
            continue
        day = r["time"].date()
        year, week, _ = day.isocalendar()
        for cell in (("day", day.isoformat()), ("week", f"{year}-W{week:02d}"), ("month", day.strftime("%Y-%m"))):
            names[cell].add(r["user"])
            counts[cell] += 1
    return {cell: (names[cell], counts[cell]) for cell in names}


# ---------------------------------------------------------------- checks of one file
def estimate(sketch_bytes):
    return round(ds.hll_sketch.deserialize(sketch_bytes).get_estimate()) if sketch_bytes is not None else 0


def check_file(name, path, precision, since, until):
    kvs = kv_metadata(path)
    nulls = [k for k, v in kvs if v is None]
    schema = pq.read_schema(path)
    got = [(f.name, f.type) for f in schema]
    problems = []
    if nulls:
        problems.append(f"key-value metadata without a value (null): {', '.join(nulls)}; Spark 4's Parquet "
                        "reader fails on such a file (NullPointerException in "
                        "SpecificParquetRecordReaderBase.toSetMultiMap)")
    if got != COLUMNS:
        problems.append("schema is " + ", ".join(f"{n} {t}" for n, t in got) + "; wanted "
                        + ", ".join(f"{n} {t}" for n, t in COLUMNS))
    md = {k: v.decode() for k, v in kvs if v is not None}
    want = {"regtally.precision": str(precision), "regtally.hll_sketch.family": "HLL",
            "regtally.hll_sketch.type": "HLL_8", "regtally.hll_sketch.lg_k": str(precision)}
    want.update({"regtally.since": since} if since else {})
    want.update({"regtally.until": until} if until else {})
    problems += [f"metadata {k} = {md.get(k)!r}, wanted {v!r}" for k, v in want.items() if md.get(k) != v]
    problems += [f"metadata {k} is missing or empty" for k in ("regtally.version", "regtally.hash",
                 "regtally.sketch_format", "regtally.hll_sketch.hash") if not md.get(k)]
    problems += [f"metadata {k} is present but {k[9:]} was not given"
                 for k, given in (("regtally.since", since), ("regtally.until", until)) if not given and k in md]
    check(not problems, f"{name}/aggregates.parquet:\n  - " + "\n  - ".join(problems))
    ok(f"{name}: schema (11 columns, hll_sketch binary) and key-value metadata (every value set, lg_k {precision})")

    table = pq.read_table(path)
    rows = sorted(tuple(r.values()) for r in table.drop_columns(["sketch"]).to_pylist())
    check(table.num_rows > 0, f"{name}: aggregates.parquet has no rows")
    pl_df = pl.read_parquet(path)
    check(pl_df.schema["hll_sketch"] == pl.Binary, f"{name}: polars reads hll_sketch as {pl_df.schema['hll_sketch']}")
    check(sorted(pl_df.drop("sketch").rows()) == rows, f"{name}: polars reads other rows than pyarrow")
    n_duck = duckdb.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]
    duck_rows = duckdb.execute("SELECT * EXCLUDE (sketch) FROM read_parquet(?)", [path]).fetchall()
    check(n_duck == table.num_rows and sorted(duck_rows) == rows, f"{name}: DuckDB reads other rows than pyarrow")
    ok(f"{name}: pyarrow, polars and DuckDB read the same {table.num_rows} rows (hll_sketch bytes included)")

    kinds = set(table.column("period_kind").to_pylist())
    check(kinds <= {"day", "week", "month"}, f"{name}: unknown period_kind values {sorted(kinds)}")
    by_cell = defaultdict(dict)
    for r in table.drop_columns(["sketch"]).to_pylist():
        cell = r["hll_sketch"]
        if cell is not None:
            sk = ds.hll_sketch.deserialize(cell)
            check(sk.lg_config_k == precision and sk.tgt_type == ds.tgt_hll_type.HLL_8,
                  f"{name}: {r['event_name']} {r['period']}: hll_sketch is {sk.tgt_type} lg_k {sk.lg_config_k}")
        check(estimate(cell) == r["unique_users"], f"{name}: {r['event_name']} {r['period']}: hll_sketch "
              f"estimates {estimate(cell)}, unique_users is {r['unique_users']} (tiny sets: both should be exact)")
        by_cell[(r["period_kind"], r["period"])][r["event_name"]] = r
    for (kind, period), events in by_cell.items():
        union = ds.hll_union(precision)
        for ev, r in events.items():
            if ev.endswith("_user") and r["hll_sketch"] is not None:
                union.update(ds.hll_sketch.deserialize(r["hll_sketch"]))
        check(TOTAL in events and round(union.get_estimate()) == estimate(events[TOTAL]["hll_sketch"]),
              f"{name}: {period}: the union of the five users' events' hll_sketch cells differs from the total's")
        for ev, r in events.items():
            check(r["unique_users_lower"] == r["unique_users"] == r["unique_users_upper"],
                  f"{name}: {ev} {period}: bounds [{r['unique_users_lower']}, {r['unique_users_upper']}] "
                  f"around {r['unique_users']}: a sketch of so few users is exact")
    ok(f"{name}: every hll_sketch is HLL_8 lg_k {precision}, estimates unique_users (its bounds equal), and the "
       f"five users' events' cells merge into the total's")
    return table, by_cell


def check_against_samples(name, by_cell, expected, precision):
    """The Python half of the hash check: datasketches' own sketch of the samples' identities,
    merged with regtally's cell, must estimate what each does alone (a different hash would about
    double it), and that must be the exact count."""
    days = any(k == "day" for k, _ in by_cell)  # day rows are optional: checked when the file has them
    missing = [f"{k} {p}" for k, p in expected if (k != "day" or days) and (k, p) not in by_cell]
    check(not missing, f"{name}: no row for {', '.join(sorted(missing))}, where the samples have counted events")
    for cell, events in by_cell.items():
        r = events[TOTAL]
        names, n_events = expected.get(cell, (set(), 0))
        mine = ds.hll_sketch(precision, ds.tgt_hll_type.HLL_8)
        for n in names:
            mine.update(n)
        union = ds.hll_union(precision)
        union.update(mine)
        if r["hll_sketch"] is not None:
            union.update(ds.hll_sketch.deserialize(r["hll_sketch"]))
        got = (round(union.get_estimate()), estimate(r["hll_sketch"]), round(mine.get_estimate()),
               r["unique_users"], r["events"])
        check(got == (len(names),) * 4 + (n_events,),
              f"{name}: {TOTAL} {cell[1]}: union/regtally/python estimates, unique_users, events = {got}; "
              f"the samples give {len(names)} users {sorted(names)} and {n_events} events")
    ok(f"{name}: {TOTAL} cells (week, month{', day' if days else ''}) merged in Python with sketches of the "
       f"samples' users: same hash (union estimate = each estimate = exact count), events exact")


# ---------------------------------------------------------------- Spark
def start_spark(tmp):
    """One local SparkSession for the whole check. The JVM inherits file descriptors 1 and 2 pointed
    at tmp/spark.log, so its start-up banner, warnings and stack traces stay out of the output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.path.join(tmp, "spark.log"), "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        from pyspark.sql import SparkSession
        spark = (SparkSession.builder.master("local[1]").appName("regtally-interop")
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.driver.memory", "512m").config("spark.sql.shuffle.partitions", "1")
                 .config("spark.sql.session.timeZone", "UTC")
                 .config("spark.sql.warehouse.dir", os.path.join(tmp, "spark-warehouse"))
                 .config("spark.local.dir", os.path.join(tmp, "spark-local")).getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        from pyspark.logger import PySparkLogger
        for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger"):  # JSON error logs, Python side
            PySparkLogger.getLogger(name).disabled = True
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
    return spark


def spark_error(e):
    lines = [ln.lstrip(": ").strip() for ln in str(e).splitlines()] or [repr(e)]
    head = next((ln for ln in lines if ln.startswith("[") or "Exception:" in ln), lines[0])
    causes = [ln for ln in lines if ln.startswith("Caused by:")]
    return " / ".join([head] + causes[-1:])


def spark_hash_check(spark, name, path, expected, precision):
    """Spark's own lg_k 14 sketch of each week's users, merged with regtally's cell. hll_union refuses
    sketches of different lg_k ([HLL_UNION_DIFFERENT_LG_K]) unless its third argument is true."""
    users = [(period, n) for (kind, period), (names, _) in expected.items() if kind == "week" for n in names]
    spark.createDataFrame(users, "period string, name string").createOrReplaceTempView("interop_users")
    spark.read.parquet(path).createOrReplaceTempView("interop_agg")
    different = ", true" if precision != 14 else ""
    rows = spark.sql(f"""
        WITH s AS (SELECT period, hll_sketch_agg(name, 14) AS sk, count(DISTINCT name) AS exact
                   FROM interop_users GROUP BY period),
             r AS (SELECT period, unique_users, hll_sketch FROM interop_agg
                   WHERE event_name = '{TOTAL}' AND period_kind = 'week')
        SELECT coalesce(r.period, s.period) AS period, r.unique_users, coalesce(s.exact, 0) AS exact,
               hll_sketch_estimate(r.hll_sketch) AS regtally, hll_sketch_estimate(s.sk) AS spark,
               hll_sketch_estimate(hll_union(s.sk, r.hll_sketch{different})) AS merged
        FROM r FULL OUTER JOIN s ON r.period = s.period ORDER BY period""").collect()
    for r in rows:
        check(r.unique_users is not None, f"{name}: week {r.period} has users in the samples but no row")
        if r.exact == 0:
            check(r.unique_users == 0 and not r.regtally, f"{name}: {r.period}: users where the samples have none")
            continue
        check(r.merged == r.regtally == r.spark == r.exact == r.unique_users,
              f"{name}: {TOTAL} {r.period}: Spark hll_union estimate {r.merged}, regtally's hll_sketch {r.regtally}, "
              f"Spark's hll_sketch_agg {r.spark}, exact {r.exact}, unique_users {r.unique_users}")
    ok(f"{name}: Spark hll_union(hll_sketch_agg(name, 14), hll_sketch{different}) per week = each estimate = "
       f"exact count, {len(rows)} weeks")


# ---------------------------------------------------------------- GUIDE.md examples
def snippets_of(path, wanted):
    """{tag: code} of the GUIDE.md blocks marked `<!-- interop: tag -->`, one each, for `wanted`:
    [(tag, language, a string the code must hold)]."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise Fail(f"GUIDE.md: {e}")
    found = {}
    for tag, lang, must in wanted:
        hits = re.findall(rf"^<!-- interop: {tag} -->[ \t]*\n```{lang}[ \t]*\n(.*?)^```", text, re.M | re.S)
        check(len(hits) == 1, f"{path}: wanted one `<!-- interop: {tag} -->` line right before a ```{lang} "
              f"block, found {len(hits)}")
        check(must in hits[0], f"{path}: the {tag} example must read {must}")
        found[tag] = hits[0]
    return found


def guide_snippets(path):
    return snippets_of(path, [("spark-sql", "sql", "out/aggregates.parquet"),
                              ("python", "python", "out/aggregates.parquet")])


def check_guide(spark, snippets, tmp, table):
    path = os.path.join(tmp, "out", "aggregates.parquet")
    union, weekly = ds.hll_union(14), []
    for r in table.drop_columns(["sketch"]).to_pylist():
        if r["event_name"] == TOTAL and r["period_kind"] == "week" and QUARTER[0] <= r["period_start"] < QUARTER[1]:
            weekly.append(r["unique_users"])
            union.update(ds.hll_sketch.deserialize(r["hll_sketch"]))
    want = round(union.get_estimate())
    check(len(weekly) > 1 and want > max(weekly), f"GUIDE.md quarter {QUARTER}: too few weekly cells to be a test")
    sql = snippets["spark-sql"].strip().rstrip(";").replace("out/aggregates.parquet", path)
    try:
        got = spark.sql(sql).collect()
    except Exception as e:  # noqa: BLE001 (any Spark error is a failed example)
        raise Fail(f"GUIDE.md Spark SQL example fails: {spark_error(e)}")
    check(len(got) == 1 and len(got[0]) == 1 and got[0][0] == want,
          f"GUIDE.md Spark SQL example gives {got}, wanted one row with {want}")
    ok(f"GUIDE.md Spark SQL example: {want} users in 2023-Q1 (weekly unique_users add up to {sum(weekly)})")
    proc = subprocess.run([sys.executable, "-c", snippets["python"]], cwd=tmp,  # so out/ is the default run
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout.strip().splitlines()
    check(proc.returncode == 0 and out and out[-1].strip() == str(want),
          f"GUIDE.md Python example: exit {proc.returncode}, printed {out[-1:] or 'nothing'}, wanted {want}\n"
          + proc.stderr[-2000:])
    ok(f"GUIDE.md Python example: {want} users in 2023-Q1")


# ---------------------------------------------------------------- the events dataset
DUCKDB_QUESTIONS = ("duckdb-namespace-users", "duckdb-top-created", "duckdb-pushed-then-not", "duckdb-actor-types")


def utc_iso(t):
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def event_key(r):
    """What every engine must agree on for one row of the dataset."""
    return (r["id"], r["class"], bool(r["counted"]), r["user"], r["deploy_token"], r["month"], r["line"],
            r["index"], r["time"])


def check_dataset(name, directory, expected):
    parts = sorted(os.path.relpath(os.path.join(d, f), directory) for d, _, fs in os.walk(directory) for f in fs)
    check(parts and all(re.fullmatch(r"month=\d{4}-\d\d/part-[0-9a-f-]+\.parquet", p) for p in parts),
          f"{name}: the events dataset's files are {parts}")
    for p in parts:
        path = os.path.join(directory, p)
        got = [(f.name, f.type) for f in pq.read_schema(path)]
        check(got == EVENT_COLUMNS, f"{name}/{p}: schema is {got}")
        check(all(v is not None for _, v in kv_metadata(path)), f"{name}/{p}: key-value metadata without a value")
    table = pq.read_table(directory)  # discovers month=... as a column
    arrow_rows = sorted(event_key(dict(r, time=utc_iso(r["time"]), month=str(r["month"]))) for r in table.to_pylist())
    glob = os.path.join(directory, "**", "*.parquet")
    pl_rows = sorted(event_key(dict(r, time=utc_iso(r["time"]))) for r in
                     pl.read_parquet(glob, hive_partitioning=True).to_dicts())
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    cur = con.execute("SELECT * FROM read_parquet(?, hive_partitioning = true)", [glob])
    cols = [c[0] for c in cur.description]
    duck_rows = sorted(event_key(dict(zip(cols, r), time=None) | {"time": utc_iso(dict(zip(cols, r))["time"])})
                       for r in cur.fetchall())
    want = sorted(event_key(dict(r, time=r["time"].strftime("%Y-%m-%dT%H:%M:%S.%f"),
                                 month=r["time"].strftime("%Y-%m"))) for r in expected.values())
    check(arrow_rows == want, f"{name}: pyarrow reads other events than samples/ hold: "
          f"{sorted(set(arrow_rows) ^ set(want))[:5]}")
    check(pl_rows == want, f"{name}: polars reads other events than pyarrow")
    check(duck_rows == want, f"{name}: DuckDB reads other events than pyarrow")
    ok(f"{name}: events dataset ({len(parts)} files, 17 columns and month) read by pyarrow, polars and DuckDB: "
       f"the {len(want)} first deliveries of samples/, each classified (repository pushes by the ledger) and "
       f"counted as computed here")
    return want


def spark_dataset_check(spark, name, directory, want):
    try:
        df = spark.read.parquet(directory)
        rows = df.selectExpr("id", "class", "counted", "user", "deploy_token", "CAST(month AS STRING) AS month",
                             "line", "index",
                             "date_format(time, \"yyyy-MM-dd'T'HH:mm:ss.SSSSSS\") AS time").collect()
    except Exception as e:  # noqa: BLE001
        raise Fail(f"{name}: Spark cannot read the events dataset: {spark_error(e)}")
    got = sorted(event_key(r.asDict()) for r in rows)
    check(got == want, f"{name}: Spark reads other events than pyarrow: {sorted(set(got) ^ set(want))[:5]}")
    ok(f"{name}: Spark reads the events dataset as one table, the same {len(got)} rows")


def duckdb_snippets(path):
    return snippets_of(path, [(tag, "sql", "'events/**/*.parquet'") for tag in DUCKDB_QUESTIONS])


def duckdb_answers(expected):
    """What GUIDE.md's four questions must answer, computed from samples/ without the dataset."""
    rows = list(expected.values())
    cells = defaultdict(lambda: (set(), [0]))
    for r in rows:
        if r["counted"] and r["user"]:
            users, n = cells[(r["namespace"], r["time"].strftime("%Y-%m"))]
            users.add(r["user"])
            n[0] += 1
    namespace_users = sorted(((ns, m, len(u), n[0]) for (ns, m), (u, n) in cells.items()),
                             key=lambda x: (x[1], -x[2], x[0]))
    q = lambda y, m: dt.datetime(y, m, 1, tzinfo=dt.timezone.utc)  # noqa: E731
    created = defaultdict(int)
    for r in rows:
        if r["class"] == "create_repository" and q(2023, 4) <= r["time"] < q(2023, 7):
            created[r["repository"]] += 1
    top_created = sorted(created.items(), key=lambda x: (-x[1], x[0]))[:10]
    pushers = lambda lo, hi: {r["user"] for r in rows if r["class"] in PUSHES and r["user"] and lo <= r["time"] < hi}  # noqa: E731
    gone = [(u,) for u in sorted(pushers(q(2023, 1), q(2023, 4)) - pushers(q(2023, 4), q(2023, 7)))]
    types = defaultdict(lambda: [0, 0])
    for r in rows:
        types[r["actor_type"]][0] += 1
        types[r["actor_type"]][1] += r["counted"]
    actor_types = sorted(((t, e, c) for t, (e, c) in types.items()), key=lambda x: (-x[1], x[0] is None, x[0] or ""))
    return dict(zip(DUCKDB_QUESTIONS, (namespace_users, top_created, gone, actor_types)))


def check_guide_duckdb(snippets, directory, expected):
    answers = duckdb_answers(expected)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = os.path.join(directory, "**", "*.parquet").replace("'", "''")
    for tag, sql in snippets.items():
        want = [tuple(r) for r in answers[tag]]
        check(want, f"GUIDE.md {tag}: the samples give no answer, so the query is not tested")
        try:
            got = con.execute(sql.strip().rstrip(";").replace("'events/**/*.parquet'", f"'{glob}'")).fetchall()
        except duckdb.Error as e:
            raise Fail(f"GUIDE.md {tag}: the query fails in DuckDB: {e}")
        check(got == want, f"GUIDE.md {tag}: DuckDB answers {got}, samples/ give {want}")
        ok(f"GUIDE.md {tag}: DuckDB's answer ({len(got)} rows) is the one computed from samples/")


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="the regtally binary to test")
    ap.add_argument("--guide", default=os.path.join(REPO, "GUIDE.md"), help="default: GUIDE.md beside .ci")
    args = ap.parse_args()
    binary = os.path.abspath(args.bin)
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="regtally-interop-")
    try:
        snippets = guide_snippets(args.guide)
        questions = duckdb_snippets(args.guide)
        for name, (flags, *_rest) in RUNS.items():
            cmd = [binary, "run", "samples", "-o", os.path.join(tmp, name), "--as-of", "2023-02-01", "-q"]
            cmd += [f.format(tmp=tmp) for f in flags]
            try:
                proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
            except OSError as e:
                raise Fail(f"cannot run {binary}: {e}")
            check(proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr.strip()}")
        ok(f"{len(RUNS)} runs of {args.bin}: none, --since/--until, --precision 10, --state twice")

        tables = {}
        for name, (_flags, precision, since, until) in RUNS.items():
            path = os.path.join(tmp, name, "aggregates.parquet")
            tables[name], by_cell = check_file(name, path, precision, since, until)
            if not name.startswith("state"):
                expected = expected_cells(os.path.join(tmp, name, "rejects.jsonl"), since, until)
                check_against_samples(name, by_cell, expected, precision)
        for name in ("state1", "state2"):
            check(tables[name].equals(tables["out"]), f"{name}: aggregates differ from the run without --state")
        ok("state1, state2: the same aggregates as the run without --state")
        events = expected_events(os.path.join(tmp, "out", "rejects.jsonl"))
        dataset = check_dataset("out", os.path.join(tmp, "events"), events)
        nightly = check_dataset("state1+state2", os.path.join(tmp, "state-events"), events)
        check(nightly == dataset, "state1+state2: the nightly events dataset differs from the run without --state")
        check_guide_duckdb(questions, os.path.join(tmp, "events"), events)

        spark = start_spark(tmp)
        ok(f"Spark {spark.version} started in local mode")
        for name in RUNS:
            path = os.path.join(tmp, name, "aggregates.parquet")
            try:
                df = spark.read.parquet(path)
                count, rows = df.count(), df.drop("sketch").collect()
            except Exception as e:  # noqa: BLE001
                raise Fail(f"{name}: Spark cannot read aggregates.parquet: {spark_error(e)}")
            got = sorted(tuple(bytes(v) if isinstance(v, bytearray) else v for v in r) for r in rows)
            want = sorted(tuple(r.values()) for r in tables[name].drop_columns(["sketch"]).to_pylist())
            check(count == len(want) and got == want, f"{name}: Spark reads {count} rows, other than pyarrow's")
            ok(f"{name}: Spark reads the same {count} rows")
        expected = expected_cells(os.path.join(tmp, "out", "rejects.jsonl"))
        spark_hash_check(spark, "out", os.path.join(tmp, "out", "aggregates.parquet"), expected, 14)
        spark_hash_check(spark, "precision10", os.path.join(tmp, "precision10", "aggregates.parquet"), expected, 10)
        check_guide(spark, snippets, tmp, tables["out"])
        spark_dataset_check(spark, "out", os.path.join(tmp, "events"), dataset)
        spark.stop()
    except Fail as e:
        print(f"interop: FAIL: {e}\n(temporary outputs and spark.log kept in {tmp})", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"interop: all checks passed in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
