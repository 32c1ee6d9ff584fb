//! Integration tests: the built binary on log files in a temp folder, one group per SPEC section.

use crate::support::*;
use std::fs;

// ---- SPEC §1: input forms ----

#[test]
fn plain_gzip_zstd_and_stdin_read_the_same() {
    let ws = Workspace::new();
    let lines: Vec<String> = (0..20)
        .map(|i| push_tag(&format!("e{i}"), T, "g/r", &format!("u{}", i % 7)).line())
        .collect();
    let mut text = lines.join("\n");
    text.push('\n');
    ws.write("plain/a.jsonl", &text);
    // Two gzip members, as log rotation appends them.
    let half = text.find("\n{\"action").unwrap() + 1;
    let mut gz = gzip(&text.as_bytes()[..half]);
    gz.extend(gzip(&text.as_bytes()[half..]));
    ws.write("gz/a.log", gz);
    // Two zstd frames.
    let mut zs = zstd::encode_all(&text.as_bytes()[..half], 3).unwrap();
    zs.extend(zstd::encode_all(&text.as_bytes()[half..], 3).unwrap());
    ws.write("zst/a.data", zs);
    for (input, out) in [("plain", "o1"), ("gz", "o2"), ("zst", "o3")] {
        assert_eq!(ws.run(&[input], out, &[]).code, 0);
    }
    let r = regtally_stdin(
        &["run", "-", "-o", &ws.s("o4"), "--as-of", "2021-02-01"],
        Some(text.as_bytes()),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = ws.rows("o1");
    assert_eq!(cell(&want, "push_tag", "2021-W01"), (7, 20));
    for out in ["o2", "o3", "o4"] {
        assert_eq!(ws.rows(out), want, "{out}");
        assert_eq!(ws.json(&format!("{out}/summary.json"))["lines"], 20);
    }
    let s = ws.json("o2/summary.json");
    assert_eq!(s["inputs"][0]["compression"], "gzip");
    assert_eq!(
        ws.json("o3/summary.json")["inputs"][0]["compression"],
        "zstd"
    );
    assert_eq!(ws.json("o4/summary.json")["inputs"][0]["path"], "-");
}

#[test]
fn folders_are_walked_hidden_entries_skipped_names_ignored() {
    let ws = Workspace::new();
    ws.write_lines("logs/a/one.txt", &[push_tag("e1", T, "g/r", "a").line()]);
    ws.write_lines("logs/b/c/two", &[push_tag("e2", T, "g/r", "b").line()]);
    ws.write_lines(
        "logs/.hidden.jsonl",
        &[push_tag("e3", T, "g/r", "c").line()],
    );
    ws.write_lines("logs/.git/objects", &[push_tag("e4", T, "g/r", "d").line()]);
    assert_eq!(ws.run(&["logs"], "out", &[]).code, 0);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (2, 2));
    // A hidden file named on the command line is read.
    assert_eq!(ws.run(&["logs", "logs/.hidden.jsonl"], "out", &[]).code, 0);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (3, 3));
}

#[test]
fn crlf_blank_lines_and_a_last_line_without_newline() {
    let ws = Workspace::new();
    let text = format!(
        "{}\r\n\r\n   \n{}\r\n{}",
        push_tag("e1", T, "g/r", "a").line(),
        envelope(&[push_tag("e2", T, "g/r", "b")]),
        push_tag("e3", T, "g/r", "c").line()
    );
    ws.write("in.jsonl", text);
    assert_eq!(
        ws.run(&["in.jsonl"], "out", &["--max-bad-ratio", "0"]).code,
        0
    );
    let s = ws.json("out/summary.json");
    assert_eq!(
        (s["lines"].as_u64(), s["blank_lines"].as_u64()),
        (Some(5), Some(2))
    );
    assert_eq!(s["events_seen"], 3);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (3, 3));
}

#[test]
fn an_overlong_line_is_rejected_and_nothing_else_is_lost() {
    let ws = Workspace::new();
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300_000));
    let lines = vec![
        push_tag("e1", T, "g/r", "a").line(),
        big,
        push_tag("e2", T, "g/r", "b").line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    let r = ws.run(
        &["in.jsonl"],
        "out",
        &["--max-line-bytes", "1000", "--max-bad-ratio", "0.5"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rejects = ws.rejects("out");
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0]["line"], 2);
    assert!(rejects[0]["reason"]
        .as_str()
        .unwrap()
        .contains("longer than --max-line-bytes 1000"));
    assert_eq!(rejects[0]["text"].as_str().unwrap().len(), 1024);
    assert_eq!(ws.json("out/summary.json")["malformed_lines"], 1);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (2, 2));
}

// ---- SPEC §2: validity and rejects ----

#[test]
fn invalid_events_are_rejected_one_by_one() {
    let ws = Workspace::new();
    let mut no_repo = push_tag("e3", T, "", "a");
    no_repo.repository = String::new();
    let lines = vec![
        envelope(&[
            push_tag("e1", T, "g/r", "a"),
            Ev::new("e2", "2021-01-05 10:00:00", "push", "g/r", "b").tag("t"),
            no_repo,
            push_tag("e4", T, "g/r", "d"),
        ]),
        r#"{"events":"nope"}"#.to_owned(),
        "[1,2,3]".to_owned(),
        push_tag("", T, "g/r", "e").line(),
    ];
    let mut lines = lines;
    lines.extend(
        (0..6).map(|i| push_tag(&format!("ok{i}"), "2021-01-20T00:00:00Z", "g/r", "f").line()),
    );
    ws.write_lines("in.jsonl", &lines);
    let r = ws.run(&["in.jsonl"], "out", &[]);
    assert_eq!(r.code, 1, "bad ratio 5/10 is over 0.05");
    assert!(r.stderr.contains("--max-bad-ratio"), "{}", r.stderr);
    assert!(
        !ws.path("out/summary.json").exists(),
        "no output without --keep-going"
    );
    assert_eq!(
        ws.run(&["in.jsonl"], "out", &["--max-bad-ratio", "0.49"])
            .code,
        1
    );
    assert_eq!(
        ws.run(&["in.jsonl"], "out", &["--max-bad-ratio", "0.5"])
            .code,
        0
    );
    let rejects = ws.rejects("out");
    let file = ws.s("in.jsonl");
    let got: Vec<(String, u64, Option<u64>)> = rejects
        .iter()
        .map(|r| {
            (
                r["file"].as_str().unwrap().to_owned(),
                r["line"].as_u64().unwrap(),
                r["index"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (file.clone(), 1, Some(1)),
            (file.clone(), 1, Some(2)),
            (file.clone(), 2, None),
            (file.clone(), 3, None),
            (file.clone(), 4, None),
        ]
    );
    assert!(rejects[0]["reason"].as_str().unwrap().contains("timestamp"));
    assert!(rejects[1]["reason"]
        .as_str()
        .unwrap()
        .contains("repository"));
    assert!(rejects[2]["reason"]
        .as_str()
        .unwrap()
        .contains("not an array"));
    assert!(rejects[4]["reason"].as_str().unwrap().contains("id"));
    let s = ws.json("out/summary.json");
    assert_eq!(
        (s["malformed_lines"].as_u64(), s["invalid_events"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (2, 2));
}

// ---- SPEC §3: de-duplication ----

#[test]
fn the_first_delivery_in_path_order_wins_whatever_the_argument_order() {
    let ws = Workspace::new();
    // The same id, delivered twice with different content: a.jsonl sorts first and wins.
    ws.write_lines("a.jsonl", &[push_tag("same", T, "g/r", "alice").line()]);
    ws.write_lines(
        "b.jsonl",
        &[
            Ev::new("same", "2021-01-12T00:00:00Z", "delete", "g/r", "bob")
                .tag("v1")
                .line(),
            push_tag("other", T, "g/r", "carol").line(),
        ],
    );
    for (order, out) in [
        (["a.jsonl", "b.jsonl"], "o1"),
        (["b.jsonl", "a.jsonl"], "o2"),
    ] {
        assert_eq!(ws.run(&order, out, &[]).code, 0);
        let rows = ws.rows(out);
        assert_eq!(cell(&rows, "push_tag", "2021-W01"), (2, 2));
        assert!(
            rows.iter().all(|r| r.period != "2021-W02"),
            "the later delivery's week is not counted"
        );
        assert_eq!(
            ws.json(&format!("{out}/summary.json"))["duplicate_events"],
            1
        );
    }
}

#[test]
fn duplicates_within_an_envelope_and_line_count_once() {
    let ws = Workspace::new();
    let e = push_tag("dup", T, "g/r", "a");
    ws.write_lines("in.jsonl", &[envelope(&[e.clone(), e.clone()]), e.line()]);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    let s = ws.json("out/summary.json");
    assert_eq!(
        (s["events_seen"].as_u64(), s["duplicate_events"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (1, 1));
}

// ---- SPEC §4 and §5: users and classification ----

#[test]
fn users_are_named_case_insensitively_and_other_actors_do_not_count() {
    let ws = Workspace::new();
    let lines = vec![
        push_tag("e1", T, "g/r", "Root").line(),
        push_tag("e2", T, "g/r", "ROOT")
            .actor("ROOT", "build")
            .line(),
        push_tag("e3", T, "g/r", "ÉLODIE")
            .actor("ÉLODIE", "gitlab_or_ldap")
            .line(),
        push_tag("e4", T, "g/r", "élodie").line(),
        push_tag("e5", T, "g/r", "x")
            .actor("gitlab+deploy-token-1", "deploy_token")
            .line(),
        push_tag("e6", T, "g/r", "x").actor("", "build").line(),
        push_tag("e7", T, "g/r", "x").no_actor().line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01"), (2, 4));
}

#[test]
fn every_classification_of_spec_5() {
    let ws = Workspace::new();
    let lines = vec![
        Ev::new("a1", T, "pull", "g/r", "u").tag("t").line(),
        Ev::new("a2", T, "mount", "g/r", "u").line(),
        Ev::new("a3", T, "push", "g/r", "u").tag("t").line(), // push_tag, creates g/r
        Ev::new("a4", "2021-01-05T10:00:01Z", "push", "g/r", "u").line(), // push_repository
        Ev::new("a5", "2021-01-05T10:00:02Z", "push", "g/new", "v")
            .no_digest()
            .line(), // create_repository (a blob)
        Ev::new("a6", "2021-01-05T10:00:03Z", "delete", "g/r", "u")
            .tag("t")
            .line(), // delete_tag
        Ev::new("a7", "2021-01-05T10:00:04Z", "delete", "g/r", "w").line(), // manifest delete
        Ev::new("a8", "2021-01-05T10:00:05Z", "delete", "g/r", "x")
            .no_digest()
            .line(), // delete_repository
        Ev::new("a9", "2021-01-05T10:00:06Z", "rename", "g/r", "u").line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    let rows = ws.rows("out");
    for (event, want) in [
        ("push_tag", (1, 1)),
        ("push_repository", (1, 1)),
        ("create_repository", (1, 1)),
        ("delete_tag", (1, 1)),
        ("delete_repository", (1, 1)),
        ("total", (3, 5)),
    ] {
        assert_eq!(cell(&rows, event, "2021-W01"), want, "{event}");
    }
    let s = ws.json("out/summary.json");
    assert_eq!(s["manifest_deletes"], 1);
    assert_eq!(
        s["events_by_action"],
        serde_json::json!({"delete": 3, "mount": 1, "pull": 1, "push": 3, "rename": 1})
    );
    assert_eq!(ws.text("out/repositories.txt"), "g/new\n");
}

// ---- SPEC §6: repository existence ----

#[test]
fn the_ledger_follows_event_time_not_file_order() {
    let ws = Workspace::new();
    // In the file the later push comes first; by time, "early" creates the repository.
    let lines = vec![
        Ev::new("late", "2021-01-05T12:00:00Z", "push", "g/r", "late-user").line(),
        Ev::new(
            "early",
            "2021-01-05T11:00:00+00:00",
            "push",
            "g/r",
            "early-user",
        )
        .line(),
        // Same instant as the delete below, smaller id: applied before it.
        Ev::new("t-a", "2021-01-05T13:00:00Z", "push", "g/r", "tie-user").line(),
        Ev::new(
            "t-b",
            "2021-01-05T14:00:00+01:00",
            "delete",
            "g/r",
            "deleter",
        )
        .no_digest()
        .line(),
        Ev::new("again", "2021-01-06T00:00:00Z", "push", "g/r", "again-user").line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    let rows = ws.rows("out");
    assert_eq!(cell(&rows, "create_repository", "2021-W01"), (2, 2)); // early, again
    assert_eq!(cell(&rows, "push_repository", "2021-W01"), (2, 2)); // late, tie
    assert_eq!(ws.text("out/repositories.txt"), "g/r\n");
}

#[test]
fn known_repositories_seed_the_ledger_and_any_actor_changes_it() {
    let ws = Workspace::new();
    ws.write("known.txt", "g/known\n\n  \ng/gone\r\n");
    let lines = vec![
        Ev::new("k1", T, "push", "g/known", "u").line(),
        Ev::new("d1", T, "delete", "g/gone", "u")
            .no_digest()
            .actor("t", "deploy_token")
            .line(),
        Ev::new("c1", "2021-01-05T11:00:00Z", "push", "g/gone", "u").line(),
        Ev::new("p0", T, "push", "g/deploy", "u")
            .actor("t", "deploy_token")
            .line(),
        Ev::new("p1", "2021-01-05T11:00:00Z", "push", "g/deploy", "v").line(),
    ];
    ws.write_lines("logs/in.jsonl", &lines);
    let known = ws.s("known.txt");
    assert_eq!(
        ws.run(&["logs"], "out", &["--known-repositories", &known])
            .code,
        0
    );
    let rows = ws.rows("out");
    assert_eq!(cell(&rows, "push_repository", "2021-W01"), (2, 2)); // k1, p1
    assert_eq!(cell(&rows, "create_repository", "2021-W01"), (1, 1)); // c1
    assert_eq!(
        ws.text("out/repositories.txt"),
        "g/deploy\ng/gone\ng/known\n"
    );
    // The next run starts from this run's final set.
    let state = ws.s("out/repositories.txt");
    ws.write_lines(
        "next/in.jsonl",
        &[Ev::new("n1", "2021-01-20T00:00:00Z", "push", "g/deploy", "w").line()],
    );
    assert_eq!(
        ws.run(&["next"], "out2", &["--known-repositories", &state])
            .code,
        0
    );
    assert_eq!(
        cell(&ws.rows("out2"), "push_repository", "2021-W03"),
        (1, 1)
    );
}

// ---- SPEC §7 and §8: periods and metrics ----

#[test]
fn week_year_boundary_months_and_dense_periods() {
    let ws = Workspace::new();
    let lines = vec![
        push_tag("a", "2021-01-03T23:59:59Z", "g/r", "u1").line(), // 2020-W53, 2021-01
        push_tag("b", "2021-01-04T00:30:00+01:00", "g/r", "u2").line(), // 2021-01-03T23:30Z: 2020-W53
        push_tag("c", "2020-12-31T20:00:00-05:00", "g/r", "u3").line(), // 2021-01-01T01:00Z: 2021-01
        push_tag("d", "2021-02-15T00:00:00Z", "g/r", "u1").line(),      // 2021-W07, 2021-02
    ];
    ws.write_lines("in.jsonl", &lines);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    let rows = ws.rows("out");
    assert_eq!(cell(&rows, "push_tag", "2020-W53"), (3, 3));
    assert_eq!(cell(&rows, "push_tag", "2021-01"), (3, 3));
    assert_eq!(cell(&rows, "push_tag", "2021-02"), (1, 1));
    for w in 1..=6 {
        assert_eq!(cell(&rows, "push_tag", &format!("2021-W{w:02}")), (0, 0));
    }
    assert_eq!(cell(&rows, "delete_tag", "2021-W07"), (0, 0));
    // UTC days 2021-01-01..2021-02-15 are 46, 2020-W53..2021-W07 is 8 weeks, 2021-01..02 is
    // 2 months: 56 periods, 11 names.
    assert_eq!(rows.len(), 616);
    assert_eq!(cell(&rows, "push_tag", "2021-01-03"), (2, 2));
    assert_eq!(cell(&rows, "push_tag", "2021-01-01"), (1, 1));
    assert_eq!(cell(&rows, "push_tag", "2021-01-02"), (0, 0));
    let w53 = row(&rows, "i_container_registry_push_tag_user", "2020-W53");
    let days = |y, m, d| {
        (chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap() - chrono::NaiveDate::default())
            .num_days() as i32
    };
    assert_eq!(
        (w53.period_start, w53.period_end),
        (days(2020, 12, 28), days(2021, 1, 4))
    );
    let jan = row(&rows, "i_container_registry_push_tag_user", "2021-01");
    assert_eq!(
        (jan.period_start, jan.period_end),
        (days(2021, 1, 1), days(2021, 2, 1))
    );
}

#[test]
fn since_and_until_limit_counting_but_not_the_ledger() {
    let ws = Workspace::new();
    let lines = vec![
        Ev::new("old", "2020-12-20T00:00:00Z", "push", "g/r", "a").line(),
        Ev::new("in1", "2021-01-05T00:00:00Z", "push", "g/r", "b").line(),
        Ev::new("in2", "2021-01-09T23:59:59Z", "push", "g/s", "c").line(),
        Ev::new("new", "2021-01-10T00:00:00Z", "push", "g/t", "d").line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    let r = ws.run(
        &["in.jsonl"],
        "out",
        &["--since", "2021-01-01", "--until", "2021-01-10"],
    );
    assert_eq!(r.code, 0);
    let rows = ws.rows("out");
    // "old" created g/r before the range: "in1" is a push, not a create.
    assert_eq!(cell(&rows, "push_repository", "2021-W01"), (1, 1));
    assert_eq!(cell(&rows, "create_repository", "2021-W01"), (1, 1));
    assert!(rows
        .iter()
        .all(|r| r.period != "2020-W51" && r.period != "2021-W02"));
    assert_eq!(ws.json("out/summary.json")["out_of_range_events"], 2);
    assert_eq!(ws.text("out/repositories.txt"), "g/r\ng/s\ng/t\n");
}

// ---- SPEC §9: outputs ----

#[test]
fn parquet_schema_order_and_metadata() {
    let ws = Workspace::new();
    ws.write_lines(
        "in.jsonl",
        &[
            push_tag("a", T, "g/r", "u").line(),
            Ev::new("b", T, "delete", "g/r", "u").tag("t").line(),
        ],
    );
    assert_eq!(
        ws.run(
            &["in.jsonl"],
            "out",
            &["--since", "2020-06-01", "--precision", "12"]
        )
        .code,
        0
    );
    let file = fs::File::open(ws.path("out/aggregates.parquet")).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = builder.schema().clone();
    let fields: Vec<(String, String, bool)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string(), f.is_nullable()))
        .collect();
    let want = [
        ("event_name", "Utf8"),
        ("period_kind", "Utf8"),
        ("period", "Utf8"),
        ("period_start", "Date32"),
        ("period_end", "Date32"),
        ("unique_users", "Int64"),
        ("events", "Int64"),
        ("sketch", "Binary"),
        ("hll_sketch", "Binary"),
        ("unique_users_lower", "Int64"),
        ("unique_users_upper", "Int64"),
    ];
    // Only `hll_sketch` may be null: for cells carried over from a state of regtally 0.3.
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string(), *n == "hll_sketch"))
        .collect();
    assert_eq!(fields, want);
    let kv: std::collections::HashMap<String, Option<String>> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|k| (k.key.clone(), k.value.clone()))
        .collect();
    assert_eq!(kv["regtally.precision"].as_deref(), Some("12"));
    assert_eq!(kv["regtally.since"].as_deref(), Some("2020-06-01"));
    // A row group per event name, each holding that name's rows only.
    let groups = builder.metadata().row_groups();
    assert_eq!(groups.len(), 11);
    assert!(groups.iter().all(|g| {
        let stats = g.column(0).statistics().unwrap();
        stats.min_bytes_opt() == stats.max_bytes_opt()
    }));
    // No key without a value: Spark's Parquet reader fails on one.
    assert!(!kv.contains_key("regtally.until"));
    assert!(kv.values().all(Option::is_some), "{kv:?}");
    assert!(kv["regtally.hash"]
        .as_deref()
        .unwrap()
        .starts_with("xxh3-64"));
    assert_eq!(
        kv["regtally.version"].as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(kv["regtally.sketch_format"]
        .as_deref()
        .unwrap()
        .starts_with("2: "));

    let rows = ws.rows("out");
    let keys: Vec<(String, String, i32)> = rows
        .iter()
        .map(|r| (r.event_name.clone(), r.period_kind.clone(), r.period_start))
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    // Its days, 2021-W01 and 2021-01, 11 names.
    let days = rows.iter().filter(|r| r.period_kind == "day").count();
    assert_eq!(rows.len(), 22 + days);
    assert!(days > 0 && days % 11 == 0);
    for r in &rows {
        assert_eq!(r.sketch[0], 2, "sketch format version");
        assert_eq!(r.sketch[1], 12, "sketch precision");
        let mut sketch = regtally::aggregate::sketch::UserSketch::from_bytes(&r.sketch).unwrap();
        assert_eq!(sketch.estimate(), r.unique_users);
    }
}

#[test]
fn service_ping_uses_complete_iso_weeks_before_the_as_of_week() {
    let ws = Workspace::new();
    let lines = vec![
        push_tag("w", "2021-01-27T00:00:00Z", "g/r", "weekly").line(), // 2021-W04: the weekly frame
        push_tag("m", "2021-01-04T00:00:00Z", "g/r", "monthly").line(), // 2021-W01: first of the 28 days
        push_tag("o", "2021-01-03T23:00:00Z", "g/r", "outside").line(), // 2020-W53: before the 28 days
        push_tag("n", "2021-02-01T08:00:00Z", "g/r", "current").line(), // the as-of week itself
        Ev::new("d", "2021-01-26T00:00:00Z", "delete", "g/r", "Weekly")
            .tag("t")
            .line(),
    ];
    ws.write_lines("in.jsonl", &lines);
    assert_eq!(ws.run(&["in.jsonl"], "out", &[]).code, 0);
    let sp = ws.json("out/service_ping.json");
    assert_eq!(sp["as_of"], "2021-02-01");
    assert_eq!(
        sp["time_frames"]["weekly"],
        serde_json::json!({"start": "2021-01-25", "end": "2021-02-01"})
    );
    assert_eq!(
        sp["time_frames"]["monthly"],
        serde_json::json!({"start": "2021-01-04", "end": "2021-02-01"})
    );
    let c = &sp["redis_hll_counters"]["user_container_registry"];
    assert_eq!(c.as_object().unwrap().len(), 12);
    assert_eq!(c["i_container_registry_push_tag_user_weekly"], 1);
    assert_eq!(c["i_container_registry_push_tag_user_monthly"], 2);
    assert_eq!(c["i_container_registry_delete_tag_user_weekly"], 1);
    assert_eq!(c["i_container_registry_create_repository_user_monthly"], 0);
    assert_eq!(c["user_container_registry_total_unique_counts_weekly"], 1);
    assert_eq!(c["user_container_registry_total_unique_counts_monthly"], 2);
}

#[test]
fn summary_accounts_for_every_line_and_input() {
    let ws = Workspace::new();
    ws.write_lines(
        "a.jsonl",
        &[
            push_tag("a", T, "g/r", "u").line(),
            String::new(),
            "{".into(),
        ],
    );
    ws.write("b.gz", gzip(push_tag("a", T, "g/r", "u").line().as_bytes()));
    assert_eq!(
        ws.run(&["a.jsonl", "b.gz"], "out", &["--max-bad-ratio", "0.5"])
            .code,
        0
    );
    let s = ws.json("out/summary.json");
    for (k, v) in [
        ("lines", 4),
        ("blank_lines", 1),
        ("malformed_lines", 1),
        ("invalid_events", 0),
        ("events_seen", 2),
        ("duplicate_events", 1),
        ("out_of_range_events", 0),
        ("manifest_deletes", 0),
    ] {
        assert_eq!(s[k], v, "{k}");
    }
    assert_eq!(s["first_event"], "2021-01-05T10:00:00Z");
    assert_eq!(s["last_event"], "2021-01-05T10:00:00Z");
    assert_eq!(s["inputs"].as_array().unwrap().len(), 2);
    assert_eq!(s["inputs"][0]["lines"], 3);
    assert_eq!(s["inputs"][1]["lines"], 1);
    assert!(s["inputs"][1]["bytes"].as_u64().unwrap() > 0);
    assert!(s["elapsed_seconds"].as_f64().unwrap() >= 0.0);
    let phases: Vec<&str> = s["phase_seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[0].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "read_and_parse",
            "deduplicate",
            "repository_ledger",
            "aggregate",
            "sketches",
            "write"
        ]
    );
    assert_eq!(s["failures"], serde_json::json!([]));
}

// ---- SPEC §9 and §10: atomic outputs and exit status ----

#[test]
fn a_failed_run_leaves_earlier_outputs_untouched() {
    let ws = Workspace::new();
    ws.write_lines("good/in.jsonl", &[push_tag("a", T, "g/r", "u").line()]);
    assert_eq!(ws.run(&["good"], "out", &[]).code, 0);
    let before: Vec<(String, Vec<u8>)> = fs::read_dir(ws.path("out"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    assert_eq!(before.len(), 5);
    // A truncated gzip file cannot be read completely.
    let lines: Vec<String> = (0..500)
        .map(|i| push_tag(&format!("x{i}"), T, "g/r", "u").line())
        .collect();
    let gz = gzip(lines.join("\n").as_bytes());
    ws.write("bad/cut.gz", &gz[..gz.len() / 2]);
    ws.write_lines("bad/fine.jsonl", &[push_tag("b", T, "g/r", "v").line()]);
    let r = ws.run(&["bad"], "out", &[]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("cut.gz") && r.stderr.contains("read failed at line"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("no output was replaced"), "{}", r.stderr);
    let mut after: Vec<(String, Vec<u8>)> = fs::read_dir(ws.path("out"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert!(
        before == after,
        "outputs changed or temporary files were left"
    );

    // With --keep-going the outputs are written from what could be read; the status stays 1.
    let r = ws.run(&["bad"], "out", &["--keep-going"]);
    assert_eq!(r.code, 1);
    let s = ws.json("out/summary.json");
    let failures = s["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1);
    assert!(failures[0]["file"].as_str().unwrap().ends_with("cut.gz"));
    assert!(
        s["lines"].as_u64().unwrap() > 1,
        "lines before the cut are kept"
    );
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2021-W01").0, 2);
}

#[test]
fn corrupt_zstd_fails_with_the_file_named() {
    let ws = Workspace::new();
    let mut z = zstd::encode_all(&b"{}\n"[..], 3).unwrap();
    let n = z.len();
    z[n - 3] ^= 0xff;
    z.truncate(n - 1);
    ws.write("x.zst", z);
    let r = ws.run(&["x.zst"], "out", &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("x.zst"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2_before_reading() {
    let ws = Workspace::new();
    ws.write_lines("in.jsonl", &[push_tag("a", T, "g/r", "u").line()]);
    fs::create_dir_all(ws.path("empty")).unwrap();
    ws.write("file-not-dir", "x");
    let out = ws.s("out");
    let input = ws.s("in.jsonl");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--since".into(),
                "2021-13-01".into(),
            ],
            "YYYY-MM-DD",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--as-of".into(),
                "tomorrow".into(),
            ],
            "YYYY-MM-DD",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--since".into(),
                "2021-02-01".into(),
                "--until".into(),
                "2021-01-01".into(),
            ],
            "before --until",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--precision".into(),
                "19".into(),
            ],
            "19",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--max-bad-ratio".into(),
                "2".into(),
            ],
            "0 to 1",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--bogus".into(),
            ],
            "--bogus",
        ),
        (
            vec!["run".into(), ws.s("empty"), "-o".into(), out.clone()],
            "no input found",
        ),
        (
            vec![
                "run".into(),
                ws.s("missing.jsonl"),
                "-o".into(),
                out.clone(),
            ],
            "missing.jsonl",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                ws.s("file-not-dir"),
            ],
            "file-not-dir",
        ),
        (
            vec![
                "run".into(),
                input.clone(),
                "-o".into(),
                out.clone(),
                "--known-repositories".into(),
                ws.s("nope.txt"),
            ],
            "nope.txt",
        ),
        (vec!["run".into(), "-o".into(), out.clone()], "INPUT"),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = regtally(&args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
        assert!(!ws.path("out/summary.json").exists());
    }
}

#[test]
fn human_summary_on_stdout() {
    let ws = Workspace::new();
    ws.write_lines(
        "in.jsonl",
        &[push_tag("a", "2021-01-27T00:00:00Z", "g/r", "u").line()],
    );
    let r = ws.run(&["in.jsonl"], "out", &[]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("inputs: 1"), "{}", r.stdout);
    assert!(
        r.stdout.contains("events: 1 valid, 0 duplicate"),
        "{}",
        r.stdout
    );
    let push_tag_line = r
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("push_tag"))
        .unwrap();
    let numbers: Vec<&str> = push_tag_line.split_whitespace().skip(1).collect();
    assert_eq!(numbers, ["1", "1"]);
    assert!(r.stdout.contains(&format!("outputs: {}", ws.s("out"))));
    assert!(
        r.stderr.is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        r.stderr
    );
}

#[test]
fn the_samples_run_clean() {
    let ws = Workspace::new();
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");
    let out = ws.s("out");
    let r = regtally(&["run", samples, "-o", &out, "--as-of", "2023-02-01"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = ws.json("out/summary.json");
    assert_eq!(s["duplicate_events"], 2);
    assert_eq!(s["malformed_lines"], 1);
    assert_eq!(s["invalid_events"], 1);
    let sp = ws.json("out/service_ping.json");
    assert_eq!(
        sp["redis_hll_counters"]["user_container_registry"]
            ["i_container_registry_push_tag_user_weekly"],
        2
    );
}
