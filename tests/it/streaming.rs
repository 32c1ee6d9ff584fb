//! Integration tests of the streaming data path: rejects capped per line, one input per file
//! however it is named, the memory limit and its spilling, and temporary files left by runs
//! that were killed.

use crate::support::*;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An envelope line of thousands of empty objects among good lines: every invalid event is
/// counted, the line's text is written once, and at most 1,000 rejects for it, then one that
/// says how many more there were. Nothing else is lost.
#[test]
fn an_envelope_bomb_writes_capped_rejects_and_counts_exactly() {
    let ws = Workspace::new();
    let good: Vec<String> = (0..3000)
        .map(|i| push_tag(&format!("g{i}"), T, "g/r", &format!("u{}", i % 9)).line())
        .collect();
    let bomb = format!("{{\"events\":[{}]}}", vec!["{}"; 3000].join(","));
    let mut lines = good[..25].to_vec();
    lines.push(bomb);
    lines.extend_from_slice(&good[25..]);
    ws.write_lines("logs/a.jsonl", &lines);
    ws.write_lines("clean/a.jsonl", &good);
    let r = ws.run(&["logs"], "out", &["--max-bad-ratio", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(ws.run(&["clean"], "clean_out", &[]).code, 0);

    let s = ws.json("out/summary.json");
    assert_eq!(s["invalid_events"], 3000);
    assert_eq!(s["lines"], 3001);
    assert_eq!(s["events_seen"], 3000);
    let rejects = ws.rejects("out");
    assert_eq!(rejects.len(), 1001);
    assert!(rejects.iter().all(|r| r["line"] == 26));
    assert!(rejects[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("{\"events\":[{},{}"));
    assert!(rejects[1..].iter().all(|r| r.get("text").is_none()));
    assert_eq!(rejects[999]["index"], 999);
    assert_eq!(rejects[1000]["index"], serde_json::Value::Null);
    assert!(
        rejects[1000]["reason"]
            .as_str()
            .unwrap()
            .starts_with("2000 more invalid events"),
        "{}",
        rejects[1000]
    );
    // The good lines around it count exactly as without it.
    assert_eq!(ws.rows("out"), ws.rows("clean_out"));
}

/// One file named twice, by other spellings, through a symbolic link and through
/// overlapping folders is read once, and under one name.
#[test]
fn a_file_reached_many_ways_is_one_input() {
    let ws = Workspace::new();
    let lines = busy_lines(40, 0);
    ws.write_lines("d/sub/a.jsonl", &lines[..20]);
    ws.write_lines("d/b.jsonl", &lines[20..]);
    std::os::unix::fs::symlink(ws.path("d/sub/a.jsonl"), ws.path("link.jsonl")).unwrap();
    let dir = ws.dir.path();
    let r = regtally_in(
        dir,
        &[
            "run",
            "d/sub/a.jsonl",
            "./d/sub/a.jsonl",
            "d/./sub/../sub/a.jsonl",
            "link.jsonl",
            "d",
            "./d/sub",
            "-o",
            "out",
            "-q",
            "--as-of",
            "2021-02-01",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = ws.json("out/summary.json");
    let names: Vec<&str> = s["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["d/b.jsonl", "d/sub/a.jsonl"]);
    assert_eq!(s["lines"], 40);
    let r = regtally_in(
        dir,
        &["run", "d", "-o", "once", "-q", "--as-of", "2021-02-01"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(outputs(&ws, "out"), outputs(&ws, "once"));
    assert_eq!(
        s["duplicate_events"],
        ws.json("once/summary.json")["duplicate_events"]
    );
}

/// Waits until `dir` holds a run folder with a spilled file in it.
fn wait_for_spill(dir: &Path, child: &mut std::process::Child) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let spilled = fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|run| {
                fs::read_dir(run.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|f| f.file_name().to_string_lossy().ends_with(".runs"))
            });
        if spilled {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// Names in `dir` that a run leaves only while it runs.
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with("run-"))
        .collect()
}

/// A run killed while it spills leaves its temporary files; the next run removes them. A run
/// stopped by SIGTERM removes its own and exits 143 without replacing any output.
#[test]
fn temporary_files_of_killed_and_stopped_runs_are_removed() {
    let ws = Workspace::new();
    let lines = busy_lines(20_000, 3);
    ws.write_lines("logs/big.jsonl", &lines);
    let start = |out: &str| {
        Command::new(env!("CARGO_BIN_EXE_regtally"))
            .args([
                "run",
                &ws.s("logs"),
                "-o",
                &ws.s(out),
                "-q",
                "--as-of",
                "2021-02-01",
            ])
            .args(["--memory-limit", "1K", "--chunk-bytes", "2000", "-j", "1"])
            .args(["--temp-dir", &ws.s("tmp")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // SIGKILL: nothing can run, so the files stay until the next run.
    let mut child = start("out");
    assert!(
        wait_for_spill(&ws.path("tmp"), &mut child),
        "the run spilled"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !leftovers(&ws.path("tmp")).is_empty(),
        "a killed run's folder is left"
    );
    assert!(
        leftovers(&ws.path("out"))
            .iter()
            .any(|n| n.starts_with(".rejects.jsonl.tmp-run-")),
        "{:?}",
        leftovers(&ws.path("out"))
    );
    fs::write(ws.path("small.jsonl"), format!("{}\n", lines[0])).unwrap();
    let r = ws.run(&["small.jsonl"], "out", &["--temp-dir", &ws.s("tmp")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!ws.path("tmp").exists(), "{:?}", leftovers(&ws.path("tmp")));
    assert_eq!(leftovers(&ws.path("out")), Vec::<String>::new());

    // SIGTERM: the run removes its files itself and replaces nothing.
    let before = outputs(&ws, "out");
    let mut child = start("out");
    assert!(
        wait_for_spill(&ws.path("tmp"), &mut child),
        "the run spilled"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(!ws.path("tmp").exists(), "{:?}", leftovers(&ws.path("tmp")));
    assert_eq!(leftovers(&ws.path("out")), Vec::<String>::new());
    assert_eq!(outputs(&ws, "out"), before);
}

#[test]
fn a_bad_memory_limit_is_a_usage_error() {
    let ws = Workspace::new();
    ws.write_lines("a.jsonl", &[push_tag("a", T, "g/r", "u").line()]);
    for bad in ["12Q", "0", "-5", "1.5G", ""] {
        let r = ws.run(&["a.jsonl"], "out", &[&format!("--memory-limit={bad}")]);
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("--memory-limit"), "{}", r.stderr);
        assert!(!ws.path("out/summary.json").exists());
    }
    let r = ws.run(&["a.jsonl"], "out", &["--memory-limit", "64M"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ws.json("out/summary.json")["flags"]["memory_limit"],
        64 << 20
    );
}

/// A temporary folder on a file system too small for the spill: the run fails with exit 1,
/// naming the folder, removes what it wrote and leaves earlier outputs as they were.
#[test]
#[ignore = "needs root, to mount a tiny tmpfs"]
fn a_full_disk_while_spilling_is_an_error_naming_the_folder() {
    let ws = Workspace::new();
    ws.write_lines("logs/a.jsonl", &busy_lines(3000, 5));
    let disk = ws.path("disk");
    fs::create_dir(&disk).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&disk)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        mounted,
        "cannot mount a tmpfs on {}: run as root",
        disk.display()
    );
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&disk);
    assert_eq!(ws.run(&["logs"], "out", &[]).code, 0);
    let before = outputs(&ws, "out");
    let tmp = disk.join("tmp");
    let r = ws.run(
        &["logs"],
        "out",
        &[
            "--memory-limit",
            "1K",
            "--chunk-bytes",
            "4000",
            "--temp-dir",
            &tmp.to_string_lossy(),
        ],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("No space left on device"), "{}", r.stderr);
    assert!(r.stderr.contains(&*tmp.to_string_lossy()), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(outputs(&ws, "out"), before);
    assert_eq!(leftovers(&ws.path("out")), Vec::<String>::new());
    assert!(!tmp.exists(), "{:?}", leftovers(&tmp));
}

/// A pipe the shell names (`<(zcat x.gz)` is `/dev/fd/63`, which resolves to no path) is read
/// by the name it was given.
#[test]
fn a_pipe_named_by_the_shell_is_read() {
    let ws = Workspace::new();
    let lines = busy_lines(50, 4);
    ws.write_lines("logs/a.jsonl", &lines);
    assert_eq!(ws.run(&["logs"], "file", &[]).code, 0);
    let script = format!(
        "exec {} run <(cat {}) -o {} -q --as-of 2021-02-01",
        env!("CARGO_BIN_EXE_regtally"),
        ws.s("logs/a.jsonl"),
        ws.s("pipe")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = ws.json("pipe/summary.json");
    assert!(
        s["inputs"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("/dev/fd/"),
        "{s}"
    );
    assert_eq!(s["lines"], 50);
    assert_eq!(ws.rows("pipe"), ws.rows("file"));
}

/// The ledger spills while reading goes on (its events are large, the ids few), on more
/// threads than the machine has: a fold task spilling holds the ledger's lock, and nothing it
/// does may wait for another fold task. The outputs are those of a run that kept everything.
#[test]
fn the_ledger_spills_while_reading_on_many_threads() {
    let ws = Workspace::new();
    let long = "i".repeat(300);
    for f in 0..4 {
        let lines: Vec<String> = (0..500)
            .map(|i| {
                let id = format!("{long}-{f}-{i}");
                let ts = format!("2021-01-{:02}T{:02}:00:00Z", 1 + i % 28, i % 24);
                let e = Ev::new(
                    &id,
                    &ts,
                    "push",
                    &format!("g/r{}", i % 50),
                    &format!("u{}", i % 7),
                );
                if i % 2 == 0 {
                    e.tag("t").line()
                } else {
                    e.line()
                }
            })
            .collect();
        ws.write_lines(&format!("logs/f{f}.jsonl"), &lines);
    }
    assert_eq!(ws.run(&["logs"], "memory", &[]).code, 0);
    let r = ws.run(
        &["logs"],
        "spilled",
        &["-j", "6", "--chunk-bytes", "5000", "--memory-limit", "400K"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ws.json("spilled/summary.json")["spilled"],
        serde_json::json!(["repository_ledger"])
    );
    assert_eq!(outputs(&ws, "spilled"), outputs(&ws, "memory"));
}

/// Logs shaped like a registry with far more repositories than a run's events name twice, and
/// users that rarely come back: nearly every push creates a repository, and deletes remove
/// some of them again. `files` files of `per_file` events over a year.
fn many_repositories(ws: &Workspace, dir: &str, files: u64, per_file: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    for f in 0..files {
        let lines: Vec<String> = (0..per_file)
            .map(|i| {
                let n = f * per_file + i;
                let ts = format!(
                    "2021-{:02}-{:02}T{:02}:{:02}:00Z",
                    1 + rng.below(12),
                    1 + rng.below(28),
                    rng.below(24),
                    rng.below(60)
                );
                let user = format!("u{}", rng.below(5_000));
                let repo = |r: u64| format!("group-{}/project-{r}", r % 97);
                match rng.below(10) {
                    0 => Ev::new(
                        &format!("e{n}"),
                        &ts,
                        "delete",
                        &repo(rng.below(n + 1)),
                        &user,
                    )
                    .no_digest(),
                    1 => Ev::new(&format!("e{n}"), &ts, "delete", &repo(n), &user).tag("v1"),
                    2..=5 => Ev::new(&format!("e{n}"), &ts, "push", &repo(n), &user),
                    _ => Ev::new(&format!("e{n}"), &ts, "push", &repo(n), &user).tag("v1"),
                }
                .line()
            })
            .collect();
        ws.write_lines(&format!("{dir}/f{f}.jsonl"), &lines);
    }
}

/// Over thousands of repositories, a budget of a few KiB spills the ledger's events, the
/// paths of their repositories and the repositories each part of the replay leaves; the
/// outputs are those of a run that kept everything, and nightly runs with a state that spills
/// the same way end where one run over everything ends.
#[test]
fn many_repositories_spill_under_a_tiny_budget() {
    let ws = Workspace::new();
    many_repositories(&ws, "logs", 4, 2_000, 24);
    let whole = ws.run(&["logs"], "memory", &["--memory-limit", "16G"]);
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let repositories = ws.text("memory/repositories.txt").lines().count();
    assert!(repositories > 4_000, "{repositories} repositories");
    let tiny = ["-j", "2", "--chunk-bytes", "20000", "--memory-limit", "64K"];
    let r = ws.run(&["logs"], "spilled", &tiny);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        ws.json("spilled/summary.json")["spilled"],
        serde_json::json!(["deduplicate", "repository_ledger"])
    );
    assert_eq!(
        ws.json("spilled/summary.json")["repositories"],
        repositories
    );
    assert_same_files(&ws, "spilled", "memory");

    // The same files arriving over two nights, the state's ledger split and spilled again,
    // end where the same nights with room for everything end.
    for (name, budget) in [
        ("tiny", &tiny[..]),
        ("roomy", &["--memory-limit", "16G"][..]),
    ] {
        let state = ws.s(&format!("{name}-state"));
        let incoming = format!("{name}-incoming");
        fs::create_dir_all(ws.path(&incoming)).unwrap();
        for night in 0..2 {
            for f in [2 * night, 2 * night + 1] {
                let from = ws.path(&format!("logs/f{f}.jsonl"));
                fs::copy(from, ws.path(&format!("{incoming}/f{f}.jsonl"))).unwrap();
            }
            let mut args = vec!["--state", state.as_str()];
            args.extend(budget);
            let r = ws.run(&[&incoming], name, &args);
            assert_eq!(r.code, 0, "{name}, night {night}: {}", r.stderr);
        }
    }
    assert_same_files(&ws, "tiny", "roomy");
    for key in ["repositories", "late_events"] {
        assert_eq!(
            ws.json("tiny/summary.json")[key],
            ws.json("roomy/summary.json")[key]
        );
    }
    assert_eq!(
        ws.json("tiny/summary.json")["spilled"],
        serde_json::json!(["deduplicate", "repository_ledger"])
    );
}

/// Asserts that two runs wrote the same outputs, naming the first file that differs.
fn assert_same_files(ws: &Workspace, a: &str, b: &str) {
    for (name, (x, y)) in [
        "aggregates.parquet",
        "service_ping.json",
        "rejects.jsonl",
        "repositories.txt",
    ]
    .iter()
    .zip(outputs(ws, a).iter().zip(&outputs(ws, b)))
    {
        assert!(x == y, "{name} of {a} and {b} differ");
    }
}

/// Days with so many users that both their sketches are dense are held as the sketches: the
/// outputs are those of the same run keeping every day's users as a list (as `--redis`
/// does), under a tiny budget or not, with weeks and months that union dense and listed days.
#[test]
fn days_of_many_users_give_the_outputs_of_lists() {
    let ws = Workspace::new();
    let mut rng = Rng::new(31);
    let mut lines = Vec::new();
    for day in 1..=20u64 {
        // Every other day busy: thousands of users, far past where precision 10 is dense.
        let users = if day % 2 == 0 { 3_000 } else { 40 };
        for i in 0..users {
            let ts = format!(
                "2021-03-{day:02}T{:02}:{:02}:00Z",
                rng.below(24),
                rng.below(60)
            );
            let user = format!("u{}", rng.below(20_000));
            let repo = format!("g/r{}", i % 50);
            lines.push(
                Ev::new(&format!("e{day}-{i}"), &ts, "push", &repo, &user)
                    .tag("v1")
                    .line(),
            );
            if i % 3 == 0 {
                lines.push(
                    Ev::new(&format!("d{day}-{i}"), &ts, "delete", &repo, &user)
                        .tag("v1")
                        .line(),
                );
            }
        }
    }
    ws.write_lines("logs/a.jsonl", &lines);
    let common = ["--precision", "10", "-j", "2", "--chunk-bytes", "50000"];
    let lists = ws.run(
        &["logs"],
        "lists",
        &[&common[..], &["--redis", &ws.s("redis")]].concat(),
    );
    assert_eq!(lists.code, 0, "{}", lists.stderr);
    for (out, extra) in [
        ("dense", &[][..]),
        ("dense-tiny", &["--memory-limit", "64K"][..]),
    ] {
        let r = ws.run(&["logs"], out, &[&common[..], extra].concat());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_same_files(&ws, out, "lists");
    }
}
