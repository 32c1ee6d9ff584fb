//! Integration tests of what the warehouse and the nightly state rely on: times no registry
//! wrote, the `hll_sketch` column, Parquet metadata, the state's format and its lock.

use crate::support::*;
use std::fs;

/// A log of `n` ordinary pushes in January 2021 by seven users.
fn ordinary(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let ts = format!("2021-01-{:02}T10:00:00Z", 4 + i % 20);
            push_tag(&format!("e{i}"), &ts, "g/r", &format!("u{}", i % 7)).line()
        })
        .collect()
}

// ---- Times no registry wrote ----

#[test]
fn times_no_registry_wrote_are_invalid_and_stretch_nothing() {
    let ws = Workspace::new();
    ws.write_lines("clean/log.jsonl", &ordinary(200));
    let mut lines = ordinary(200);
    // Go's zero time, the Unix epoch, the day before the first day, a clock years ahead, and
    // an offset that puts a year-0 time before year 0 in UTC.
    for (i, ts) in [
        "0001-01-01T00:00:00Z",
        "1970-01-01T00:00:00Z",
        "2014-12-31T23:59:59.999999999Z",
        "2099-06-01T00:00:00Z",
        "0000-01-01T00:30:00+01:00",
    ]
    .iter()
    .enumerate()
    {
        lines.insert(
            i * 10,
            push_tag(&format!("odd{i}"), ts, "g/r", "zed").line(),
        );
    }
    // In an envelope with a good event: only the bad one is rejected.
    lines.push(envelope(&[
        push_tag("odd-env", "1970-01-01T00:00:00Z", "g/r", "zed"),
        push_tag("fine-env", "2021-01-06T00:00:00Z", "g/r", "u1"),
    ]));
    ws.write_lines("odd/log.jsonl", &lines);
    assert_eq!(ws.run(&["clean"], "clean-out", &[]).code, 0);
    let r = ws.run(&["odd"], "out", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = ws.json("out/summary.json");
    assert_eq!(s["invalid_events"], 6);
    assert_eq!(s["implausible_time_events"], 6);
    assert_eq!(s["events_seen"], 201);
    let rejects = ws.rejects("out");
    assert_eq!(rejects.len(), 6);
    for r in &rejects {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.contains("no registry sent notifications then")
                || reason.contains("later than the day after this run"),
            "{reason}"
        );
    }
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("timestamp 0001-01-01T00:00:00Z is before 2015-01-01"));
    assert_eq!(rejects[5]["index"], 0);
    // The same periods as without them: nothing stretched to year 1 or 2099.
    let periods =
        |out: &str| -> Vec<String> { ws.rows(out).into_iter().map(|r| r.period).collect() };
    assert_eq!(periods("out"), periods("clean-out"));
    assert_eq!(
        cell(&ws.rows("out"), "push_tag", "2021-W01").1,
        1 + cell(&ws.rows("clean-out"), "push_tag", "2021-W01").1
    );
}

#[test]
fn a_zero_time_event_among_normal_ones_changes_no_row() {
    let ws = Workspace::new();
    let lines = ordinary(300);
    ws.write_lines("a/log.jsonl", &lines);
    let mut with_zero = lines.clone();
    with_zero.insert(
        150,
        push_tag("zero", "0001-01-01T00:00:00Z", "g/r", "u1").line(),
    );
    ws.write_lines("b/log.jsonl", &with_zero);
    assert_eq!(ws.run(&["a"], "oa", &[]).code, 0);
    assert_eq!(ws.run(&["b"], "ob", &[]).code, 0);
    assert_eq!(ws.rows("oa"), ws.rows("ob"));
    assert_eq!(ws.json("ob/summary.json")["implausible_time_events"], 1);
    // `--since` and `--until` work as before, inside the window.
    for o in ["oa", "ob"] {
        let r = ws.run(
            &[if o == "oa" { "a" } else { "b" }],
            &format!("{o}-range"),
            &["--since", "2021-01-11", "--until", "2021-01-18"],
        );
        assert_eq!(r.code, 0);
    }
    assert_eq!(ws.rows("oa-range"), ws.rows("ob-range"));
    let s = ws.json("ob-range/summary.json");
    assert_eq!(s["out_of_range_events"], 300 - 7 * 15);
}

/// A stored period no registry can have written (a damaged or hostile file) refuses the file:
/// `report` exits 2 naming it, instead of writing a table dense from 2021 to the year 9999.
#[test]
fn a_stored_period_no_registry_wrote_is_refused() {
    use regtally::aggregate::period::Period;
    use regtally::aggregate::sketch::{UserSketch, WarehouseSketch};
    use regtally::aggregate::MetricRow;
    use regtally::classify::TOTAL_METRIC;
    use regtally::keys::{identity_coupon, identity_hash};
    let ws = Workspace::new();
    let row = |year: i32| {
        let mut sketch = UserSketch::new(14);
        sketch.insert(identity_hash("u"));
        MetricRow {
            metric: TOTAL_METRIC,
            period: Period::week_of(chrono::NaiveDate::from_ymd_opt(year, 1, 4).unwrap()),
            unique_users: 1,
            bounds: regtally::aggregate::sketch::Bounds { lower: 1, upper: 1 },
            events: 1,
            sketch,
            hll_sketch: Some(WarehouseSketch::of_users(14, &[identity_coupon("u")])),
        }
    };
    let meta = regtally::output::aggregates::AggregatesMetadata {
        precision: 14,
        since: None,
        until: None,
    };
    for (name, years) in [("fine", vec![2021]), ("far", vec![2021, 9999])] {
        let mut rows: Vec<MetricRow> = years.into_iter().map(row).collect();
        let file = fs::File::create(ws.path(&format!("{name}.parquet"))).unwrap();
        regtally::output::aggregates::write_aggregates(&mut rows, &meta, file).unwrap();
    }
    assert_eq!(
        regtally(&["report", "--from", &ws.s("fine.parquet")]).code,
        0
    );
    let r = regtally(&["report", "--from", &ws.s("far.parquet")]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("far.parquet") && r.stderr.contains("9999-W"),
        "{}",
        r.stderr
    );
}

// ---- The state: format, migration, lock ----

/// Runs `regtally run <inputs> --state state -o out` plus `extra`.
fn nightly(ws: &Workspace, input: &str, extra: &[&str]) -> Run {
    let mut args = vec!["--state".to_owned(), ws.s("state")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ws.run(&[input], "out", &args)
}

#[test]
fn a_year_0_push_and_another_night() {
    let ws = Workspace::new();
    let mut lines = ordinary(50);
    lines.push(push_tag("year0", "0000-01-01T00:30:00+01:00", "g/r", "u1").line());
    lines.push(
        Ev::new(
            "year0-repo",
            "0000-01-01T00:30:00+01:00",
            "push",
            "g/old",
            "u1",
        )
        .line(),
    );
    ws.write_lines("n1/log.jsonl", &lines);
    let r = nightly(&ws, "n1", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ws.json("out/summary.json")["implausible_time_events"], 2);
    ws.write_lines(
        "n2/log.jsonl",
        &[push_tag("next", "2021-01-25T10:00:00Z", "g/r", "u9").line()],
    );
    let r = nightly(&ws, "n2", &[]);
    assert_eq!(r.code, 0, "the next night loads the state: {}", r.stderr);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W04").0, 1);
}

#[test]
fn a_state_of_0_3_loads_and_is_replaced() {
    let ws = Workspace::new();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-0.3");
    fs::create_dir_all(ws.path("state")).unwrap();
    fs::copy(
        fixture.join("regtally-state.json.zst"),
        ws.path("state/regtally-state.json.zst"),
    )
    .unwrap();
    // Night 2, in the weeks after 0.3's night 1 and in one of its weeks.
    ws.write_lines(
        "n2/log.jsonl",
        &[
            push_tag("new1", "2021-01-25T10:00:00Z", "g/r", "u9").line(),
            push_tag("new2", "2021-01-05T10:00:00Z", "g/r", "u9").line(),
        ],
    );
    let r = nightly(&ws, "n2", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = ws.rows("out");
    // 0.3's counts carry on: 30 pushes by 5 users in 2021-01, and night 2's two.
    assert_eq!(cell(&rows, "push_tag", "2021-01"), (6, 32));
    // A cell only night 2 filled has its hll_sketch; one 0.3 had a part in stays null.
    assert_eq!(
        row(&rows, "i_container_registry_push_tag_user", "2021-W04")
            .hll_estimate()
            .map(f64::round),
        Some(1.0)
    );
    assert_eq!(
        row(&rows, "i_container_registry_push_tag_user", "2021-W01").hll_sketch,
        None
    );
    assert_eq!(
        row(&rows, "i_container_registry_push_tag_user", "2021-01").hll_sketch,
        None
    );
    // The new file is written; the old one holds only a header 0.3 refuses.
    assert!(ws.path("state/regtally-state.bin.zst").exists());
    let old =
        zstd::decode_all(&fs::read(ws.path("state/regtally-state.json.zst")).unwrap()[..]).unwrap();
    let header: serde_json::Value = serde_json::from_slice(&old).unwrap();
    assert_eq!(header["version"], 2);
    // Distinct users over days: not where 0.3 kept no days (an error, not an undercount);
    // where only 0.4 counted, yes.
    let distinct = |since: &str, until: &str| {
        regtally(&[
            "report",
            "--state",
            &ws.s("state"),
            "--distinct",
            "--since",
            since,
            "--until",
            until,
        ])
    };
    let r = distinct("2021-01-04", "2021-01-11");
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("rebuild the state"), "{}", r.stderr);
    let r = distinct("2021-01-25", "2021-02-01");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // And the night after loads the new file.
    ws.write_lines(
        "n3/log.jsonl",
        &[push_tag("new3", "2021-01-26T10:00:00Z", "g/r", "u8").line()],
    );
    let r = nightly(&ws, "n3", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W04"), (2, 2));
}

#[test]
fn a_held_lock_stops_a_run_before_it_reads_and_a_released_one_is_taken() {
    let ws = Workspace::new();
    ws.write_lines("n1/log.jsonl", &ordinary(20));
    fs::create_dir_all(ws.path("state")).unwrap();
    let lock_path = ws.path("state/regtally-state.lock");
    let mut lock = fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    use std::io::Write;
    writeln!(lock, "{}", std::process::id()).unwrap();
    let r = nightly(&ws, "n1", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("regtally-state.lock"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("process {}", std::process::id())),
        "{}",
        r.stderr
    );
    assert!(
        !ws.path("out/aggregates.parquet").exists(),
        "no output written"
    );
    assert!(!ws.path("state/regtally-state.bin.zst").exists());
    // A killed run's lock: the file is left, its lock is free.
    drop(lock);
    let r = nightly(&ws, "n1", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn two_runs_on_one_state_started_together_count_every_input_once() {
    let ws = Workspace::new();
    // Enough lines that the first run still holds the lock when the second starts.
    let lines: Vec<String> = (0..60_000)
        .map(|i| {
            let ts = format!("2021-01-{:02}T10:00:00Z", 4 + i % 20);
            push_tag(&format!("e{i}"), &ts, "g/r", &format!("u{}", i % 97)).line()
        })
        .collect();
    ws.write_lines("in/a.jsonl", &lines[..30_000]);
    ws.write_lines("in/b.jsonl", &lines[30_000..]);
    let spawn = |out: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_regtally"))
            .args([
                "run",
                &ws.s("in"),
                "-o",
                &ws.s(out),
                "--state",
                &ws.s("state"),
            ])
            .args(["--as-of", "2021-02-01", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn("o1"), spawn("o2"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort();
    let stderr = format!(
        "{}{}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    match codes {
        // They overlapped: one was refused, naming the lock.
        [0, 1] => assert!(stderr.contains("in use by another run"), "{stderr}"),
        // One finished before the other took the lock: the second skipped both inputs.
        [0, 0] => {}
        _ => panic!("exit codes {codes:?}: {stderr}"),
    }
    // Either way the state counted every input once: a run now reads nothing new.
    assert_eq!(ws.run(&["in"], "full", &[]).code, 0);
    let r = ws.run(&["in"], "after", &["--state", &ws.s("state")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ws.json("after/summary.json")["lines"], 0);
    assert_eq!(ws.rows("after"), ws.rows("full"));
}

// ---- hll_sketch ----

#[test]
fn hll_sketch_counts_the_users_unique_users_counts() {
    let ws = Workspace::new();
    // Names differing in case are one user; a deploy token is none.
    let mut lines = ordinary(300);
    lines.push(push_tag("upper", "2021-01-05T11:00:00Z", "g/r", "U1").line());
    lines.push(
        push_tag("token", "2021-01-05T12:00:00Z", "g/r", "x")
            .actor("deployer", "deploy_token")
            .line(),
    );
    ws.write_lines("a/log.jsonl", &lines);
    assert_eq!(ws.run(&["a"], "out", &["--threads", "1"]).code, 0);
    assert_eq!(
        ws.run(&["a"], "out2", &["--threads", "2", "--memory-limit", "300"])
            .code,
        0
    );
    let rows = ws.rows("out");
    assert_eq!(
        rows,
        ws.rows("out2"),
        "bytes do not depend on threads or spilling"
    );
    for r in &rows {
        let e = r.hll_estimate().unwrap();
        assert_eq!(
            e.round() as i64,
            r.unique_users,
            "{} {}",
            r.event_name,
            r.period
        );
    }
    assert_eq!(cell(&rows, "push_tag", "2021-01").0, 7);
}
