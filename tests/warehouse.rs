//! Integration tests of what the warehouse and the nightly state rely on: times no registry
//! wrote, the `hll_sketch` column, Parquet metadata, the state's format and its lock.

mod common;

use common::*;

fn push_tag(id: &str, ts: &str, user: &str) -> Ev {
    Ev::new(id, ts, "push", "g/r", user).tag("v1")
}

/// A log of `n` ordinary pushes in January 2021 by seven users.
fn ordinary(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let ts = format!("2021-01-{:02}T10:00:00Z", 4 + i % 20);
            push_tag(&format!("e{i}"), &ts, &format!("u{}", i % 7)).line()
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
        lines.insert(i * 10, push_tag(&format!("odd{i}"), ts, "zed").line());
    }
    // In an envelope with a good event: only the bad one is rejected.
    lines.push(envelope(&[
        push_tag("odd-env", "1970-01-01T00:00:00Z", "zed"),
        push_tag("fine-env", "2021-01-06T00:00:00Z", "u1"),
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
    with_zero.insert(150, push_tag("zero", "0001-01-01T00:00:00Z", "u1").line());
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
