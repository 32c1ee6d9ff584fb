//! Integration tests of `run --state` (nightly batches) and `report`, on the built binary.

use crate::support::*;
use std::fs;

/// Ten days of events, one file a day, in time order: tag and repository pushes and deletes
/// across a few repositories and users, pulls, and redeliveries of the previous day's events.
fn nightly_files() -> Vec<(String, Vec<String>)> {
    let users = ["alice", "Bob", "carol", "dave", "erin"];
    let repos = ["g/a", "g/b", "g/c", "h/d"];
    let mut days = Vec::new();
    let mut previous: Vec<Ev> = Vec::new();
    for day in 1..=10u32 {
        let mut events = Vec::new();
        for i in 0..12u32 {
            let n = day * 100 + i;
            let ts = format!("2021-01-{day:02}T{:02}:{:02}:00Z", i * 2, (n * 7) % 60);
            let user = users[(n % 5) as usize];
            let repo = repos[((n / 3) % 4) as usize];
            let id = format!("ev-{n}");
            let e = match n % 6 {
                0 => Ev::new(&id, &ts, "push", repo, user).tag("v1"),
                1 => Ev::new(&id, &ts, "push", repo, user),
                2 => Ev::new(&id, &ts, "pull", repo, user).tag("v1"),
                3 => Ev::new(&id, &ts, "delete", repo, user).tag("v1"),
                4 if day % 3 == 0 => Ev::new(&id, &ts, "delete", repo, user).no_digest(),
                _ => Ev::new(&id, &ts, "push", repo, user).actor("ci", "build"),
            };
            events.push(e);
        }
        let mut lines: Vec<String> = events.iter().map(Ev::line).collect();
        // The registry redelivers: yesterday's first two events arrive again today.
        lines.extend(previous.iter().take(2).map(Ev::line));
        previous = events;
        days.push((format!("day-{day:02}.jsonl"), lines));
    }
    days
}

const OUTPUTS: [&str; 3] = [
    "aggregates.parquet",
    "service_ping.json",
    "repositories.txt",
];

/// Whether two runs' outputs agree, byte for byte.
fn assert_same_outputs(ws: &Workspace, a: &str, b: &str, what: &str) {
    let (x, y) = (outputs(ws, a), outputs(ws, b));
    for (f, (p, q)) in OUTPUTS.iter().zip(x.iter().zip(&y)) {
        assert!(p == q, "{what}: {f} differs");
    }
}

fn outputs(ws: &Workspace, out: &str) -> Vec<Vec<u8>> {
    OUTPUTS
        .iter()
        .map(|f| fs::read(ws.path(&format!("{out}/{f}"))).unwrap())
        .collect()
}

fn state_bytes(ws: &Workspace) -> Vec<u8> {
    fs::read(ws.path("state/regtally-state.bin.zst")).unwrap()
}

/// Runs `regtally run incoming --state state -o out` plus `extra`.
fn nightly(ws: &Workspace, extra: &[&str]) -> Run {
    let state = ws.s("state");
    let mut args = vec!["--state", state.as_str()];
    args.extend(extra);
    ws.run(&["incoming"], "out", &args)
}

#[test]
fn nightly_batches_give_what_one_run_over_everything_gives() {
    let ws = Workspace::new();
    let days = nightly_files();
    for (i, (name, lines)) in days.iter().enumerate() {
        ws.write_lines(&format!("incoming/{name}"), lines);
        let r = nightly(&ws, &[]);
        assert_eq!(r.code, 0, "night {}: {}", i + 1, r.stderr);
        let s = ws.json("out/summary.json");
        assert_eq!(
            s["skipped_inputs"].as_array().unwrap().len(),
            i,
            "earlier nights are skipped"
        );
        assert_eq!(
            s["inputs"].as_array().unwrap().len(),
            1,
            "only the new file is read"
        );
        if i > 0 {
            assert_eq!(
                s["duplicate_events"],
                2,
                "night {}: yesterday's redeliveries are caught",
                i + 1
            );
        }
        assert_eq!(s["late_events"], 0);
    }
    assert_eq!(ws.run(&["incoming"], "full", &[]).code, 0);
    assert_same_outputs(&ws, "full", "out", "nightly batches and one full run");
    assert_eq!(ws.json("full/summary.json")["duplicate_events"], 18);
    // The rows are real: the history spans all ten days.
    let rows = ws.rows("out");
    assert!(cell(&rows, "push_tag", "2021-01").1 > 10);
    assert!(cell(&rows, "create_repository", "2021-01").1 > 0);

    // Running the last night again changes nothing.
    let batched = outputs(&ws, "out");
    let before = state_bytes(&ws);
    let r = nightly(&ws, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        outputs(&ws, "out") == batched,
        "a re-run changed the outputs"
    );
    assert!(state_bytes(&ws) == before, "a re-run changed the state");
    let s = ws.json("out/summary.json");
    assert_eq!(s["lines"], 0);
    let skipped = s["skipped_inputs"].as_array().unwrap();
    assert_eq!(skipped.len(), 10);
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .contains("already consumed"));
    assert!(r.stdout.contains("skipped: 10 inputs"), "{}", r.stdout);
}

#[test]
fn the_dedup_window_bounds_what_is_remembered() {
    // Night 1 sees e1; night 2 sees an event three days later; night 3 gets e1 again.
    let first = Ev::new("e1", "2021-01-01T00:00:00Z", "push", "g/r", "u").tag("t");
    let later = Ev::new("e2", "2021-01-04T00:00:00Z", "push", "g/r", "v").tag("t");
    for (window, duplicates, e1_counted) in [("14", 1, 1), ("2", 0, 2)] {
        let ws = Workspace::new();
        let flags = ["--dedup-window", window];
        ws.write_lines("incoming/1.jsonl", &[first.line()]);
        assert_eq!(nightly(&ws, &flags).code, 0);
        ws.write_lines("incoming/2.jsonl", &[later.line()]);
        assert_eq!(nightly(&ws, &flags).code, 0);
        ws.write_lines("incoming/3.jsonl", &[first.line()]);
        assert_eq!(nightly(&ws, &flags).code, 0);
        let s = ws.json("out/summary.json");
        assert_eq!(s["duplicate_events"], duplicates, "window {window}");
        // Past the window a redelivery is counted again: the cost of bounded memory.
        assert_eq!(
            cell(&ws.rows("out"), "push_tag", "2020-W53").1,
            e1_counted,
            "window {window}"
        );
    }
}

#[test]
fn a_changed_file_is_read_again_and_its_old_events_are_duplicates() {
    let ws = Workspace::new();
    let a = Ev::new("a", "2021-01-01T00:00:00Z", "push", "g/r", "u")
        .tag("t")
        .line();
    ws.write_lines("incoming/log.jsonl", std::slice::from_ref(&a));
    assert_eq!(nightly(&ws, &[]).code, 0);
    // The shipper appended to the same file.
    let b = Ev::new("b", "2021-01-01T01:00:00Z", "push", "g/r", "w")
        .tag("t")
        .line();
    ws.write_lines("incoming/log.jsonl", &[a, b]);
    assert_eq!(nightly(&ws, &[]).code, 0);
    let s = ws.json("out/summary.json");
    assert_eq!(
        (s["events_seen"].as_u64(), s["duplicate_events"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(cell(&ws.rows("out"), "push_tag", "2020-W53"), (2, 2));
}

#[test]
fn late_arrivals_are_counted_in_their_period_and_reported() {
    let ws = Workspace::new();
    ws.write_lines(
        "incoming/1.jsonl",
        &[Ev::new("p2", "2021-01-10T00:00:00Z", "push", "g/r", "second").line()],
    );
    assert_eq!(nightly(&ws, &[]).code, 0);
    // An older push of the same repository arrives a night later.
    ws.write_lines(
        "incoming/2.jsonl",
        &[Ev::new("p1", "2021-01-02T00:00:00Z", "push", "g/r", "first").line()],
    );
    let r = nightly(&ws, &[]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("late: 1"), "{}", r.stdout);
    assert_eq!(ws.json("out/summary.json")["late_events"], 1);
    let rows = ws.rows("out");
    // Counted in its own week; the ledger already held g/r, so it is a push, not a create
    // (a full run would have called it the create: see GUIDE.md on late arrivals).
    assert_eq!(cell(&rows, "push_repository", "2020-W53"), (1, 1));
    assert_eq!(cell(&rows, "create_repository", "2021-W01"), (1, 1));
}

#[test]
fn other_precisions_versions_and_broken_states_are_refused() {
    let ws = Workspace::new();
    ws.write_lines(
        "incoming/a.jsonl",
        &[Ev::new("a", "2021-01-01T00:00:00Z", "push", "g/r", "u").line()],
    );
    assert_eq!(nightly(&ws, &[]).code, 0);
    let r = nightly(&ws, &["--precision", "12"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("precision 14") && r.stderr.contains("12"),
        "{}",
        r.stderr
    );
    ws.write("known.txt", "g/x\n");
    let known = ws.s("known.txt");
    let r = nightly(&ws, &["--known-repositories", &known]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("only seeds a new state"), "{}", r.stderr);

    let path = ws.path("state/regtally-state.bin.zst");
    fs::remove_file(&path).unwrap();
    let other = br#"{"format":"regtally-state","version":9,"written_by":"0.9.0"}"#;
    let legacy = ws.path("state/regtally-state.json.zst");
    fs::write(&legacy, zstd::encode_all(&other[..], 3).unwrap()).unwrap();
    let r = nightly(&ws, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("version 9") && r.stderr.contains("0.9.0"),
        "{}",
        r.stderr
    );
    fs::write(&path, b"garbage").unwrap();
    let r = nightly(&ws, &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a regtally state"), "{}", r.stderr);
}

#[test]
fn a_failed_night_leaves_state_and_outputs_as_they_were() {
    let ws = Workspace::new();
    ws.write_lines(
        "incoming/a.jsonl",
        &[Ev::new("a", "2021-01-01T00:00:00Z", "push", "g/r", "u")
            .tag("t")
            .line()],
    );
    assert_eq!(nightly(&ws, &[]).code, 0);
    let state = state_bytes(&ws);
    let out = outputs(&ws, "out");
    let lines: Vec<String> = (0..400)
        .map(|i| {
            Ev::new(&format!("x{i}"), "2021-01-02T00:00:00Z", "push", "g/r", "v")
                .tag("t")
                .line()
        })
        .collect();
    let gz = gzip(lines.join("\n").as_bytes());
    ws.write("incoming/b.gz", &gz[..gz.len() / 2]);
    assert_eq!(nightly(&ws, &[]).code, 1);
    assert!(state_bytes(&ws) == state && outputs(&ws, "out") == out);
    // --keep-going writes outputs for inspection, never the state.
    let r = nightly(&ws, &["--keep-going"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("state was left as it was"),
        "{}",
        r.stderr
    );
    assert!(state_bytes(&ws) == state);
    assert!(outputs(&ws, "out") != out);
    let mut leftovers: Vec<_> = fs::read_dir(ws.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["regtally-state.bin.zst", "regtally-state.lock"],
        "no temporary files"
    );
}

#[test]
fn report_prints_the_service_ping_of_any_date_without_reading_logs() {
    let ws = Workspace::new();
    for (name, lines) in nightly_files() {
        ws.write_lines(&format!("incoming/{name}"), &lines);
    }
    assert_eq!(nightly(&ws, &[]).code, 0);
    let state = ws.s("state");
    let aggregates = ws.s("out/aggregates.parquet");
    for as_of in ["2021-01-05", "2021-01-12", "2021-02-01"] {
        let (incoming, full) = (ws.s("incoming"), ws.s("full"));
        let r = regtally(&["run", &incoming, "-o", &full, "--as-of", as_of]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let want = ws.text("full/service_ping.json");
        for source in [["--state", state.as_str()], ["--from", aggregates.as_str()]] {
            let mut args = vec!["report", "--format", "json", "--as-of", as_of];
            args.extend(source);
            let r = regtally(&args);
            assert_eq!(r.code, 0, "{}", r.stderr);
            assert_eq!(r.stdout, want, "report {source:?} --as-of {as_of}");
        }
    }
    let r = regtally(&[
        "report",
        "--state",
        &state,
        "--since",
        "2021-01-01",
        "--until",
        "2021-02-01",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines[0].starts_with("period")
            && lines[0].contains("push_tag")
            && lines[0].contains("total")
    );
    assert!(lines[1].starts_with("2021-W01"), "{}", r.stdout);
    assert!(
        lines.iter().any(|l| l.starts_with("2021-01 ")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("2020-W53"), "before --since");
    let rows = ws.rows("out");
    let (users, events) = cell(&rows, "total", "2021-W01");
    let w01 = lines[1].split_whitespace().last().unwrap();
    assert_eq!(w01, format!("{users}/{events}"));

    let r = regtally(&["report", "--state", &ws.s("nothing-here")]);
    assert_eq!(r.code, 2);
    let r = regtally(&["report", "--from", &ws.s("incoming/day-01.jsonl")]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("not a Parquet file"), "{}", r.stderr);
    let r = regtally(&["report"]);
    assert_eq!(r.code, 2);
}

/// Each input's bytes are hashed for a state's manifest only: without `--state` the
/// summary's `content_hash` is null, with it the xxh3-128 of the file's bytes (plain or
/// compressed).
#[test]
fn inputs_are_hashed_only_for_a_state() {
    let ws = Workspace::new();
    let line = Ev::new("a", "2021-01-01T00:00:00Z", "push", "g/r", "u")
        .tag("t")
        .line();
    ws.write_lines("incoming/a.jsonl", std::slice::from_ref(&line));
    let zipped = gzip(format!("{line}\n").as_bytes());
    ws.write("incoming/b.jsonl.gz", &zipped);
    let hashes = |extra: &[&str]| -> Vec<serde_json::Value> {
        assert_eq!(ws.run(&["incoming"], "out", extra).code, 0);
        let s = ws.json("out/summary.json");
        let inputs = s["inputs"].as_array().unwrap();
        inputs.iter().map(|i| i["content_hash"].clone()).collect()
    };
    assert_eq!(
        hashes(&[]),
        [serde_json::Value::Null, serde_json::Value::Null]
    );
    let want = |bytes: &[u8]| format!("{:032x}", xxhash_rust::xxh3::xxh3_128(bytes));
    let plain = fs::read(ws.path("incoming/a.jsonl")).unwrap();
    assert_eq!(
        hashes(&["--state", &ws.s("state")]),
        [want(&plain), want(&zipped)]
    );
}

#[test]
fn skipping_trusts_path_size_and_time_then_the_content_hash() {
    let ws = Workspace::new();
    let a = Ev::new("a", "2021-01-01T00:00:00Z", "push", "g/r", "u")
        .tag("t")
        .line();
    let path = ws.write_lines("incoming/log.jsonl", std::slice::from_ref(&a));
    assert_eq!(nightly(&ws, &[]).code, 0);
    let touch = |secs: u64| {
        let f = fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
            .unwrap();
    };
    // Touched, same bytes: hashed, found equal, skipped.
    touch(1_000_000);
    assert_eq!(nightly(&ws, &[]).code, 0);
    let s = ws.json("out/summary.json");
    assert!(s["skipped_inputs"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("content hash"));
    // Untouched since: skipped on path, size and time alone.
    assert_eq!(nightly(&ws, &[]).code, 0);
    let s = ws.json("out/summary.json");
    assert!(s["skipped_inputs"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("modification time"));
    // Rewritten with other bytes of the same length: read again.
    let b = a.replace("\"push\"", "\"pull\"");
    assert_eq!(a.len(), b.len());
    ws.write_lines("incoming/log.jsonl", &[b]);
    touch(2_000_000);
    assert_eq!(nightly(&ws, &[]).code, 0);
    let s = ws.json("out/summary.json");
    assert_eq!(s["skipped_inputs"].as_array().unwrap().len(), 0);
    assert_eq!(
        s["duplicate_events"], 1,
        "its event was seen the first night"
    );
}

/// On random logs split into nightly files in time order (with redeliveries up to three
/// nights late, rejects and blank lines), running night by night with a state gives what one
/// run over all the files gives.
#[test]
fn random_nights_equal_one_run_over_everything() {
    let users = ["ann", "Ben", "BEN", "cat", "dan", "Émile", "émile"];
    let repos = ["g/a", "g/b", "g/c/d", "h/e"];
    for seed in 1..=12u64 {
        let mut rng = Rng::new(seed);
        let ws = Workspace::new();
        let nights = 3 + rng.below(6) as u32;
        let mut sent: Vec<(u32, String)> = Vec::new();
        for night in 1..=nights {
            let mut lines = Vec::new();
            for i in 0..rng.below(25) {
                let ts = format!(
                    "2021-03-{night:02}T{:02}:{:02}:{:02}.{}Z",
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(1000)
                );
                let id = format!("s{seed}-n{night}-{i}");
                let action = ["push", "push", "delete", "pull"][rng.below(4) as usize];
                let user = users[rng.below(users.len() as u64) as usize];
                let repo = repos[rng.below(repos.len() as u64) as usize];
                let mut e = Ev::new(&id, &ts, action, repo, user);
                if rng.below(2) == 0 {
                    e = e.tag("t");
                }
                if rng.below(3) == 0 {
                    e = e.no_digest();
                }
                if rng.below(5) == 0 {
                    e = e.actor("deployer", "deploy_token");
                }
                let line = if rng.below(3) == 0 {
                    envelope(&[e])
                } else {
                    e.line()
                };
                sent.push((night, line.clone()));
                lines.push(line);
            }
            // Redeliveries of the last three nights, rejects and a blank line.
            for _ in 0..rng.below(4) {
                let recent: Vec<&String> = sent
                    .iter()
                    .filter(|(n, _)| *n + 3 >= night && *n < night)
                    .map(|(_, l)| l)
                    .collect();
                if !recent.is_empty() {
                    lines.push(recent[rng.below(recent.len() as u64) as usize].clone());
                }
            }
            if rng.below(3) == 0 {
                lines.push("{\"events\":[".into());
                lines.push(String::new());
            }
            ws.write_lines(&format!("incoming/night-{night:02}.jsonl"), &lines);
            // Every other night with a memory limit that spills even the state's own ids.
            let limit = if night % 2 == 0 {
                "--memory-limit=300"
            } else {
                "--memory-limit=1G"
            };
            let r = nightly(&ws, &["--max-bad-ratio", "1", limit]);
            assert_eq!(r.code, 0, "seed {seed} night {night}: {}", r.stderr);
        }
        assert_eq!(
            ws.run(&["incoming"], "full", &["--max-bad-ratio", "1"])
                .code,
            0
        );
        assert_same_outputs(
            &ws,
            "full",
            "out",
            &format!("seed {seed}: nights and one run"),
        );
    }
}

#[test]
fn report_distinct_merges_the_days_of_any_range() {
    let ws = Workspace::new();
    // Day d of January: users u(d % 7) push tags, and u(d % 3) deletes one.
    let mut lines = Vec::new();
    for d in 1..=31u32 {
        for k in 0..3 {
            let ts = format!("2021-01-{d:02}T{:02}:00:00Z", 8 + k);
            let user = format!("u{}", (d + k) % 7);
            lines.push(
                Ev::new(&format!("p{d}-{k}"), &ts, "push", "g/r", &user)
                    .tag("v1")
                    .line(),
            );
        }
        let ts = format!("2021-01-{d:02}T20:00:00Z");
        let user = format!("U{}", d % 3);
        lines.push(
            Ev::new(&format!("d{d}"), &ts, "delete", "g/r", &user)
                .tag("v1")
                .line(),
        );
    }
    ws.write_lines("incoming/jan.jsonl", &lines);
    assert_eq!(nightly(&ws, &[]).code, 0);
    let (since, until) = (5u32, 12u32); // 2021-01-05 to 2021-01-11, both included
    let mut push_users = std::collections::BTreeSet::new();
    let mut delete_users = std::collections::BTreeSet::new();
    for d in since..until {
        for k in 0..3 {
            push_users.insert((d + k) % 7);
        }
        delete_users.insert(d % 3);
    }
    let total: std::collections::BTreeSet<String> = push_users
        .iter()
        .map(|u| format!("u{u}"))
        .chain(delete_users.iter().map(|u| format!("u{u}")))
        .collect();
    for source in [
        vec!["--state".to_owned(), ws.s("state")],
        vec!["--from".to_owned(), ws.s("out/aggregates.parquet")],
    ] {
        let mut args = vec![
            "report",
            "--distinct",
            "--since",
            "2021-01-05",
            "--until",
            "2021-01-12",
        ];
        args.extend(source.iter().map(String::as_str));
        args.extend(["--format", "json"]);
        let r = regtally(&args);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["since"], "2021-01-05");
        assert_eq!(v["until"], "2021-01-12");
        let m = &v["metrics"];
        let push = &m["i_container_registry_push_tag_user"];
        assert_eq!(push["unique_users"], push_users.len() as u64);
        assert_eq!(push["events"], 3 * (until - since) as u64);
        let del = &m["i_container_registry_delete_tag_user"];
        assert_eq!(del["unique_users"], delete_users.len() as u64);
        assert_eq!(del["events"], (until - since) as u64);
        let all = &m["user_container_registry_total"];
        assert_eq!(all["unique_users"], total.len() as u64);
        assert_eq!(all["events"], 4 * (until - since) as u64);
        assert_eq!(
            m["i_container_registry_create_repository_user"]["events"],
            0
        );
        assert_eq!(m.as_object().unwrap().len(), 11);
        // A sparse sketch of a few users: its interval is the estimate.
        for cell in m.as_object().unwrap().values() {
            assert_eq!(cell["unique_users_lower"], cell["unique_users"]);
            assert_eq!(cell["unique_users_upper"], cell["unique_users"]);
        }
    }
    let r = regtally(&[
        "report",
        "--state",
        &ws.s("state"),
        "--distinct",
        "--since",
        "2021-01-05",
        "--until",
        "2021-01-12",
    ]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("from 2021-01-05 to 2021-01-11"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.lines().any(|l| l.starts_with("push_tag")
        && l.split_whitespace().nth(1) == Some(&push_users.len().to_string())));
    // --distinct needs both ends.
    let r = regtally(&[
        "report",
        "--state",
        &ws.s("state"),
        "--distinct",
        "--since",
        "2021-01-05",
    ]);
    assert_eq!(r.code, 2);
}

#[test]
fn report_draws_weekly_users_as_svg_and_sparklines() {
    let ws = Workspace::new();
    for (name, lines) in nightly_files() {
        ws.write_lines(&format!("incoming/{name}"), &lines);
    }
    assert_eq!(nightly(&ws, &[]).code, 0);
    let r = regtally(&["report", "--state", &ws.s("state"), "--format", "svg"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let svg = &r.stdout;
    assert!(
        svg.starts_with("<svg width=\"800\" height=\"450\""),
        "{}",
        &svg[..80]
    );
    assert!(svg.trim_end().ends_with("</svg>"));
    // Axes with dates and counts, a legend naming the five events and the total, a line each.
    assert!(
        svg.contains("Weekly unique users, 2020-W53 to 2021-W01"),
        "{svg}"
    );
    assert!(svg.contains("2021-01-04") && svg.contains("unique users"));
    for name in [
        "create_repository",
        "delete_repository",
        "delete_tag",
        "push_repository",
        "push_tag",
        "total",
    ] {
        assert!(svg.contains(&format!("\n{name}\n")), "legend {name}");
    }
    assert!(
        svg.matches("<polyline").count() >= 12,
        "a line and a legend mark per series"
    );
    // The terminal table ends with a sparkline per event.
    let r = regtally(&["report", "--state", &ws.s("state")]);
    let spark = r
        .stdout
        .lines()
        .find(|l| l.starts_with("push_tag "))
        .unwrap();
    assert_eq!(
        spark.split_whitespace().nth(1).unwrap().chars().count(),
        2,
        "{spark}"
    );
    assert!(spark.chars().any(|c| ('▁'..='█').contains(&c)), "{spark}");
}

/// The chart GUIDE.md shows ("Charts") is what the README's first command and GUIDE.md's
/// chart command draw for `samples/`.
#[test]
fn the_guides_chart_is_the_samples_chart() {
    let ws = Workspace::new();
    let samples = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");
    let r = regtally(&[
        "run",
        samples,
        "-o",
        &ws.s("out"),
        "--as-of",
        "2023-02-01",
        "-q",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = regtally(&[
        "report",
        "--from",
        &ws.s("out/aggregates.parquet"),
        "--format",
        "svg",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let committed = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/samples-weekly-users.svg"
    ))
    .unwrap();
    assert!(
        r.stdout == committed,
        "docs/samples-weekly-users.svg is stale: draw it again with GUIDE.md's command (Charts)"
    );
}
