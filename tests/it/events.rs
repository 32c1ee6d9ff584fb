//! The events dataset (`run --events DIR`): its columns, where each row points, how it is
//! replaced without a state and added to with one. The property test holds its rows to the
//! naive model and its counted rows to `aggregates.parquet` on random logs.

use crate::support::*;
use std::collections::BTreeSet;

/// The samples, copied into the workspace.
fn samples(ws: &Workspace) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    for rel in [
        "registry-2022-W52.jsonl",
        "seed-2023-01.jsonl",
        "archive/registry-2023-01-10.log.gz",
    ] {
        ws.write(
            &format!("samples/{rel}"),
            std::fs::read(root.join(rel)).unwrap(),
        );
    }
}

#[test]
fn every_first_delivery_is_a_row_that_points_at_its_line() {
    let ws = Workspace::new();
    let lines = vec![
        Ev::new("a", "2023-01-02T10:00:00Z", "push", "grp/app", "Alice")
            .tag("v1")
            .line(),
        // An envelope: a repository push by a deploy token, then a pull with escapes.
        envelope(&[
            Ev::new("b", "2023-01-02T11:00:00+01:00", "push", "grp/app", "x")
                .actor("deployer", "deploy_token")
                .no_digest(),
            Ev::new("c", "2023-02-01T00:00:00Z", "pull", "other/sub/img", "bob"),
        ])
        .replace("\"other/sub/img\"", "\"other\\/sub\\/img\"")
        .replace("\"pull\"", "\"p\\u0075ll\""),
        // A later delivery of "a": not a row.
        Ev::new("a", "2023-01-02T10:00:00Z", "push", "grp/app", "Alice")
            .tag("v1")
            .line(),
        Ev::new("d", "2023-01-03T00:00:00Z", "delete", "grp/app", "carol")
            .tag("old")
            .no_actor()
            .line(),
    ];
    ws.write_lines("logs/x.jsonl", &lines);
    let r = ws.run(&["logs"], "out", &["--events", &ws.s("ev")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("events dataset: 4 rows in 2 files"),
        "{}",
        r.stdout
    );
    assert_eq!(
        dataset_files(&ws.path("ev")),
        [
            "month=2023-01/part-00000.parquet",
            "month=2023-02/part-00000.parquet"
        ]
    );
    let rows = read_events(&ws.path("ev"));
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    // Months in order, rows of a month in input order.
    assert_eq!(ids, ["a", "b", "d", "c"]);
    let (a, b, d, c) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert_eq!(a.class.as_deref(), Some("push_tag"));
    assert!(a.counted);
    assert_eq!(
        (
            a.user.as_deref(),
            a.actor_name.as_deref(),
            a.actor_type.as_deref()
        ),
        (Some("alice"), Some("Alice"), Some("personal_access_token"))
    );
    assert_eq!((a.tag.as_deref(), a.index), (Some("v1"), None));
    assert_eq!((a.namespace.as_str(), a.month.as_str()), ("grp", "2023-01"));
    assert_eq!(a.time_micros, 1_672_653_600_000_000);
    // A push without a tag to a repository that exists: push_repository, by a deploy token,
    // which counts in the deploy tokens' metric.
    assert_eq!(b.class.as_deref(), Some("push_repository"));
    assert!(b.counted);
    assert_eq!(
        (b.user.as_deref(), b.deploy_token.as_deref()),
        (None, Some("deployer"))
    );
    assert_eq!(
        (
            b.user.as_deref(),
            b.actor_type.as_deref(),
            b.digest.as_deref()
        ),
        (None, Some("deploy_token"), None)
    );
    assert_eq!(b.time_micros, 1_672_653_600_000_000);
    assert_eq!((b.line, b.index), (2, Some(0)));
    // Escapes decoded; the namespace is the first segment of the path.
    assert_eq!(
        (c.action.as_str(), c.repository.as_str()),
        ("pull", "other/sub/img")
    );
    assert_eq!((c.class.as_deref(), c.namespace.as_str()), (None, "other"));
    assert_eq!((c.line, c.index), (2, Some(1)));
    assert_eq!(
        c.media_type.as_deref(),
        Some("application/vnd.docker.distribution.manifest.v2+json")
    );
    assert_eq!(
        (d.actor_name.as_deref(), d.actor_type.as_deref()),
        (None, None)
    );
    assert_eq!((d.class.as_deref(), d.counted), (Some("delete_tag"), false));
    // file and line lead back to the event.
    let text = ws.text("logs/x.jsonl");
    for r in &rows {
        assert!(r.file.ends_with("logs/x.jsonl"), "{}", r.file);
        let line = text.lines().nth(r.line as usize - 1).unwrap();
        assert!(line.contains(&format!("\"id\":\"{}\"", r.id)), "{line}");
    }
}

#[test]
fn without_a_state_the_dataset_is_replaced() {
    let ws = Workspace::new();
    samples(&ws);
    let ev = ws.s("ev");
    let r = ws.run(&["samples"], "out", &["--events", &ev, "-j", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let one = dataset_bytes(&ws.path("ev"));
    assert_eq!(one.len(), 2);
    // A second run over one file replaces the dataset: the other month's file and folder go.
    let r = ws.run(
        &["samples/seed-2023-01.jsonl"],
        "out",
        &["--events", &ev, "--max-bad-ratio", "1"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        dataset_files(&ws.path("ev")),
        ["month=2023-01/part-00000.parquet"]
    );
    assert!(!ws.path("ev/month=2022-12").exists());
    // Nothing staged is left behind.
    let all = files_under(&ws.path("ev"));
    assert!(
        all.iter()
            .all(|p| p.extension().is_some_and(|e| e == "parquet")),
        "{all:?}"
    );
}

#[test]
fn with_a_state_each_night_adds_its_own_files_and_together_they_are_one_run() {
    let ws = Workspace::new();
    samples(&ws);
    let full = ws.run(&["samples"], "full", &["--events", &ws.s("full-ev")]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    let state = ws.s("state");
    let ev = ws.s("ev");
    // In the full run's input order, so that each first delivery is the same line.
    let nights = [
        vec!["samples/archive"],
        vec!["samples/registry-2022-W52.jsonl", "samples/archive"],
        vec!["samples"],
        // Nothing new: no file added, none removed.
        vec!["samples"],
    ];
    let mut files_after = Vec::new();
    for inputs in &nights {
        let r = ws.run(
            inputs,
            "out",
            &[
                "--state",
                &state,
                "--events",
                &ev,
                "--max-bad-ratio",
                "1",
                // Re-deliveries a month apart are still found (see GUIDE.md, "Run it nightly", on the window).
                "--dedup-window",
                "60",
            ],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        files_after.push(dataset_files(&ws.path("ev")));
    }
    // Each night's files stay; a night that read something added files of its own.
    for pair in files_after.windows(2) {
        let before: BTreeSet<_> = pair[0].iter().collect();
        let after: BTreeSet<_> = pair[1].iter().collect();
        assert!(before.is_subset(&after), "{pair:?}");
    }
    assert!(files_after[0].len() < files_after[1].len());
    assert!(files_after[1].len() < files_after[2].len());
    assert_eq!(files_after[2], files_after[3]);
    // The nights' rows are the full run's rows.
    let key = |r: &EventRow| (r.time_micros, r.id.clone());
    let mut nightly = read_events(&ws.path("ev"));
    let mut once = read_events(&ws.path("full-ev"));
    nightly.sort_by_key(key);
    once.sort_by_key(key);
    assert_eq!(nightly.len(), once.len());
    assert!(nightly == once, "nightly rows differ from one run's");
}

#[test]
fn a_state_that_does_not_move_on_leaves_the_dataset_as_it_was() {
    let ws = Workspace::new();
    samples(&ws);
    let state = ws.s("state");
    let ev = ws.s("ev");
    let r = ws.run(
        &["samples/seed-2023-01.jsonl"],
        "out",
        &["--state", &state, "--events", &ev],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before = dataset_bytes(&ws.path("ev"));
    // An input that cannot be read: outputs written with --keep-going, the state kept.
    ws.write("bad.gz", b"\x1f\x8b\x08\x00not gzip at all");
    let r = ws.run(
        &["samples/registry-2022-W52.jsonl", "bad.gz"],
        "out",
        &["--state", &state, "--events", &ev, "--keep-going"],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("events dataset"), "{}", r.stderr);
    assert!(dataset_bytes(&ws.path("ev")) == before);
}

/// A month of more rows than a row group holds, read back batch by batch while the batch before
/// is encoded on every core: every first delivery is one row, in input order, and the files
/// are the same bytes at one thread and at three.
#[test]
fn a_month_of_many_row_groups_is_every_first_delivery_in_input_order_for_any_threads() {
    let ws = Workspace::new();
    let lines = busy_lines(80_000, 3);
    ws.write_lines("logs/a.jsonl", &lines[..50_000]);
    ws.write_lines("logs/b.jsonl", &lines[50_000..]);
    let mut datasets = Vec::new();
    for threads in ["1", "3"] {
        let (out, ev) = (format!("out{threads}"), format!("ev{threads}"));
        let r = ws.run(&["logs"], &out, &["--events", &ws.s(&ev), "-j", threads]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        datasets.push(dataset_bytes(&ws.path(&ev)));
    }
    assert_eq!(datasets[0].len(), 1, "one month, one file");
    assert!(
        datasets[0] == datasets[1],
        "-j 1 and -j 3 wrote different bytes"
    );
    let mut ids = BTreeSet::new();
    let firsts: Vec<(String, &str, i64)> = (lines.iter().enumerate())
        .filter_map(|(i, l)| {
            let event: serde_json::Value = serde_json::from_str(l).unwrap();
            let id = event["id"].as_str().unwrap().to_owned();
            let (file, line) = if i < 50_000 {
                ("a", i)
            } else {
                ("b", i - 50_000)
            };
            ids.insert(id.clone()).then(|| (id, file, line as i64 + 1))
        })
        .collect();
    assert!(
        firsts.len() > 65_536,
        "{} rows: fewer than a row group",
        firsts.len()
    );
    let rows: Vec<(String, &str, i64)> = (read_events(&ws.path("ev1")).into_iter())
        .map(|r| {
            let file = if r.file.ends_with("a.jsonl") {
                "a"
            } else {
                "b"
            };
            (r.id, file, r.line)
        })
        .collect();
    assert_eq!(rows.len(), firsts.len());
    assert!(
        rows == firsts,
        "rows are not the first deliveries in input order"
    );
}
