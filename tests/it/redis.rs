//! The Redis export (`run --redis`) and `redis-merge`, against a real Redis server: Debian's
//! `redis-server`, started by each test on a free local port and stopped after (`.ci/run`
//! installs it).

use crate::support::*;
use regtally::output::redis::hll::RedisHll;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of this test's own, killed when dropped.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian's package redis-server; .ci/run installs it)");
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            let ping = redis::Client::open(server.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return server;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not answer on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One command, its reply typed by the caller.
macro_rules! q {
    ($con:expr, $($arg:expr),+) => {{
        let mut cmd = redis::Cmd::new();
        $(cmd.arg($arg);)+
        cmd.query($con).unwrap()
    }};
}

/// `PFADD` of `ids` to `key`, a thousand at a time.
pub(crate) fn pfadd(con: &mut dyn redis::ConnectionLike, key: &str, ids: &[u64]) {
    for batch in ids.chunks(1000) {
        let mut cmd = redis::cmd("PFADD");
        cmd.arg(key);
        for id in batch {
            cmd.arg(id.to_string());
        }
        let _: i64 = cmd.query(con).unwrap();
    }
}

#[test]
#[ignore = "needs redis-server on the PATH (Debian: apt-get install redis-server)"]
fn regtallys_value_counts_exactly_as_pfadd_of_the_same_ids() {
    let server = RedisServer::start();
    let mut con = server.con();
    let mut rng = Rng::new(0x5eed);
    for n in [1usize, 100, 10_000, 200_000] {
        let ids: Vec<u64> = (0..n).map(|_| rng.below(50_000_000)).collect();
        let (added, ours) = (format!("pfadd-{n}"), format!("regtally-{n}"));
        pfadd(&mut con, &added, &ids);
        let value = RedisHll::of_ids(ids.iter().copied()).to_dense();
        let () = q!(&mut con, "SET", &ours, &value);
        let a: u64 = q!(&mut con, "PFCOUNT", &added);
        let b: u64 = q!(&mut con, "PFCOUNT", &ours);
        assert_eq!(a, b, "{n} members");
        // Merged, the two are one set.
        let () = q!(&mut con, "PFMERGE", &format!("both-{n}"), &added, &ours);
        let both: u64 = q!(&mut con, "PFCOUNT", &format!("both-{n}"));
        assert_eq!(both, a, "{n} members merged");
        if n >= 10_000 {
            // Redis has made the PFADD key dense by now: its registers are ours.
            let stored: Vec<u8> = q!(&mut con, "GET", &added);
            assert_eq!(
                RedisHll::from_dense(&stored),
                RedisHll::from_dense(&value),
                "{n} members: registers differ"
            );
        }
    }
}

/// This week's Monday, UTC, and the keys of its push_tag and create_repository counters.
pub(crate) fn this_week() -> (chrono::NaiveDate, String, String) {
    use chrono::Datelike;
    let today = chrono::Utc::now().date_naive();
    let monday = today - chrono::Days::new(u64::from(today.weekday().num_days_from_monday()));
    let w = monday.iso_week();
    let suffix = format!("{:04}-{:02}", w.year(), w.week());
    (
        monday,
        format!("{{hll_counters}}_i_container_registry_push_tag_user-{suffix}"),
        format!("{{hll_counters}}_i_container_registry_create_repository_user-{suffix}"),
    )
}

#[test]
#[ignore = "needs redis-server on the PATH (Debian: apt-get install redis-server)"]
fn merging_keeps_gitlabs_members_and_expiry_and_refuses_other_types() {
    let server = RedisServer::start();
    let mut con = server.con();
    let ws = Workspace::new();
    let (monday, push_key, create_key) = this_week();
    let t = monday.format("%Y-%m-%dT00:30:00Z").to_string();
    // 60 users: ids 1000.. from the CSV for the first 30 (names in another case), from their
    // JWT for the next 29; the last has neither.
    let mut lines = Vec::new();
    let mut csv = String::from("username,id\n");
    for u in 0..60u64 {
        let name = format!("user{u}");
        if u < 30 {
            csv.push_str(&format!("USER{u},{}\n", 1000 + u));
        }
        let jwt_id = (30..59).contains(&u).then_some(1000 + u);
        lines.push(push(&format!("e{u}"), &t, "g/new", &name, jwt_id));
    }
    // A repository created this week, by user0.
    lines.push(Ev::new("c", &t, "push", "g/fresh", "user0").line());
    // An old week: its key expired long ago and is not created.
    lines.push(push("old", "2023-01-10T00:00:00Z", "g/old", "user1", None));
    ws.write_lines("logs/a.jsonl", &lines);
    ws.write("ids.csv", csv);
    let r = regtally(&[
        "run",
        &ws.s("logs"),
        "-o",
        &ws.s("out"),
        "-q",
        "--redis",
        &ws.s("redis"),
        "--user-ids",
        &ws.s("ids.csv"),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("1 counted users have no GitLab id"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("user59"), "{}", r.stdout);
    assert_eq!(ws.json("out/summary.json")["redis_unresolved_users"], 1);
    let manifest = ws.json("redis/manifest.json");
    let entry = manifest["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == push_key.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["members"], 59);

    // GitLab's live counter saw the first 20 users and a user of its own; its key expires in
    // 1000 s. Another key holds a list, one more a plain string.
    pfadd(
        &mut con,
        &push_key,
        &(1000..1020).chain([77]).collect::<Vec<_>>(),
    );
    let _: bool = q!(&mut con, "EXPIRE", &push_key, 1000);
    let list_key = push_key.replace("push_tag", "delete_tag");
    let string_key = push_key.replace("push_tag", "push_repository");
    // The export has keys for those two only if they had users: make them.
    let _: i64 = q!(&mut con, "RPUSH", &list_key, "x");
    let () = q!(&mut con, "SET", &string_key, "hello");
    let union = "expected";
    pfadd(
        &mut con,
        union,
        &(1000..1059).chain([77]).collect::<Vec<_>>(),
    );

    // A dry run changes nothing.
    let snapshot = |con: &mut redis::Connection| {
        let mut keys: Vec<String> = q!(con, "KEYS", "*");
        keys.sort();
        keys.into_iter()
            .map(|k| {
                let dump: Vec<u8> = q!(con, "DUMP", &k);
                (k, dump)
            })
            .collect::<Vec<_>>()
    };
    let want_after: u64 = q!(&mut con, "PFCOUNT", &union);
    let before = snapshot(&mut con);
    let merge = |extra: &[&str]| {
        let mut args = vec!["redis-merge", &ws.s("redis"), "--url", &server.url()]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        regtally(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let dry = merge(&["--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    let line = dry
        .stdout
        .lines()
        .find(|l| l.starts_with(&push_key))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        numbers[1..4],
        ["21", "59", want_after.to_string().as_str()],
        "{line}"
    );
    assert!(
        snapshot(&mut con) == before,
        "the dry run changed something"
    );

    let merged = merge(&[]);
    assert_eq!(merged.code, 0, "{}{}", merged.stdout, merged.stderr);
    let live: u64 = q!(&mut con, "PFCOUNT", &push_key);
    assert_eq!(live, want_after);
    // GitLab's expiry stays; a key regtally created expires 6 weeks after its week ends.
    let ttl: i64 = q!(&mut con, "TTL", &push_key);
    assert!((1..=1000).contains(&ttl), "ttl {ttl}");
    let ttl: i64 = q!(&mut con, "TTL", &create_key);
    let expires = (monday + chrono::Days::new(7 + 42))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    let now = chrono::Utc::now().timestamp();
    assert!((expires - now - ttl).abs() <= 5, "ttl {ttl}");
    let created: u64 = q!(&mut con, "PFCOUNT", &create_key);
    assert_eq!(created, 1);
    // No temporary key is left, and the old week was not written.
    let mut keys: Vec<String> = q!(&mut con, "KEYS", "*");
    keys.sort();
    assert!(
        keys.iter().all(|k| !k.contains("regtally-merge")),
        "{keys:?}"
    );
    assert!(keys.iter().all(|k| !k.ends_with("2023-02")), "{keys:?}");
    assert!(
        merged.stdout.contains("skipped: the week's key expired"),
        "{}",
        merged.stdout
    );
    // Merging again changes no count.
    let again = merge(&[]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let live_again: u64 = q!(&mut con, "PFCOUNT", &push_key);
    assert_eq!(live_again, live);

    // Keys of other types: refused, left as they were, exit 1; the rest still merged.
    let ws2 = Workspace::new();
    let mut lines = Vec::new();
    for (i, action_tag) in ["delete_tag", "push_repository"].iter().enumerate() {
        let ev = match *action_tag {
            "delete_tag" => Ev::new(&format!("d{i}"), &t, "delete", "g/new", "user1").tag("v1"),
            _ => Ev::new(&format!("p{i}"), &t, "push", "g/new", "user1").no_digest(),
        };
        lines.push(ev.line());
    }
    ws2.write_lines("logs/b.jsonl", &lines);
    ws2.write("ids.csv", "user1,1001\n");
    let known = ws2.write("known.txt", "g/new\n");
    let r = regtally(&[
        "run",
        &ws2.s("logs"),
        "-o",
        &ws2.s("out"),
        "-q",
        "--redis",
        &ws2.s("redis"),
        "--user-ids",
        &ws2.s("ids.csv"),
        "--known-repositories",
        known.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let before_list: Vec<String> = q!(&mut con, "LRANGE", &list_key, 0, -1);
    let r = regtally(&["redis-merge", &ws2.s("redis"), "--url", &server.url()]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("refused: holds a list"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("refused: holds a string that is not a HyperLogLog"),
        "{}",
        r.stdout
    );
    let after_list: Vec<String> = q!(&mut con, "LRANGE", &list_key, 0, -1);
    assert_eq!(before_list, after_list);
    let s: String = q!(&mut con, "GET", &string_key);
    assert_eq!(s, "hello");
}

#[test]
fn a_server_that_does_not_answer_is_named_and_exits_1() {
    let ws = Workspace::new();
    let (monday, _, _) = this_week();
    let t = monday.format("%Y-%m-%dT00:30:00Z").to_string();
    ws.write_lines("logs/a.jsonl", &[push("e", &t, "g/r", "alice", Some(5))]);
    let r = ws.run(&["logs"], "out", &["--redis", &ws.s("redis")]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let r = regtally(&["redis-merge", &ws.s("redis"), "--url", &url]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    // A folder without a manifest is a usage error.
    let r = regtally(&["redis-merge", &ws.s("out"), "--url", &url]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn two_nights_with_a_state_export_what_one_run_exports() {
    let ws = Workspace::new();
    let mut a = Vec::new();
    let mut b = Vec::new();
    for i in 0..300u64 {
        let week = 2 + i % 5;
        let t = format!("2024-01-{:02}T10:00:00Z", week * 3);
        let line = push(
            &format!("e{i}"),
            &t,
            &format!("g/r{}", i % 7),
            &format!("u{}", i % 40),
            Some(i % 40 + 1),
        );
        if i % 2 == 0 {
            a.push(line)
        } else {
            b.push(line)
        }
    }
    ws.write_lines("logs/a.jsonl", &a);
    ws.write_lines("logs/b.jsonl", &b);
    let files = |dir: &str| folder_bytes(&ws.path(dir));
    let one = ws.run(&["logs"], "o1", &["--redis", &ws.s("r1"), "-j", "1"]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert!(files("r1").len() > 3);
    // Two nights with a state write what one run writes.
    let state = ws.s("state");
    for f in ["logs/a.jsonl", "logs/b.jsonl"] {
        let r = ws.run(&[f], "o3", &["--redis", &ws.s("r3"), "--state", &state]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    assert!(files("r1") == files("r3"), "nightly export differs");
}

/// Deploy tokens' events are exported to GitLab's `_deploy_token` keys with the deploy token's
/// id (the JWT's `deploy_token_id`, or `--user-ids` `deploy_token:NAME,ID`), apart from the
/// users of the same names, whose keys hold users' ids only.
#[test]
fn deploy_tokens_are_exported_with_their_ids_to_their_own_keys() {
    let ws = Workspace::new();
    let t = "2024-01-09T10:00:00Z"; // 2024-W02
    let by_token = |id: &str, name: &str, jwt: Option<u64>| {
        let mut v = Ev::new(id, t, "push", "g/r", name)
            .actor(name, "deploy_token")
            .tag("v1")
            .value();
        if let Some(token_id) = jwt {
            v["actor"]["user"] = serde_json::json!(deploy_token_jwt(token_id));
        }
        v.to_string()
    };
    let lines = vec![
        push("u1", t, "g/r", "alice", Some(1)),
        // A user and a deploy token of one name: two actors.
        push("u2", t, "g/r", "ci", Some(2)),
        by_token("d1", "ci", Some(70)),
        by_token("d2", "gitlab+deploy-token-71", None),
        by_token("d3", "nobody-knows", None),
    ];
    ws.write_lines("logs/a.jsonl", &lines);
    ws.write(
        "ids.csv",
        "username,id\ndeploy_token:gitlab+deploy-token-71,71\n",
    );
    let r = ws.run(
        &["logs"],
        "out",
        &["--redis", &ws.s("r"), "--user-ids", &ws.s("ids.csv")],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let manifest = ws.json("r/manifest.json");
    let keys: Vec<(String, u64)> = manifest["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_owned(),
                k["members"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            (
                "{hll_counters}_i_container_registry_push_tag_deploy_token-2024-02".to_owned(),
                2
            ),
            (
                "{hll_counters}_i_container_registry_push_tag_user-2024-02".to_owned(),
                2
            ),
        ]
    );
    let value = |key: &str| {
        let k = manifest["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == key)
            .unwrap();
        let bytes = std::fs::read(ws.path(&format!("r/{}", k["file"].as_str().unwrap()))).unwrap();
        RedisHll::from_dense(&bytes).unwrap()
    };
    assert_eq!(
        value("{hll_counters}_i_container_registry_push_tag_deploy_token-2024-02"),
        RedisHll::of_ids([70, 71])
    );
    assert_eq!(
        value("{hll_counters}_i_container_registry_push_tag_user-2024-02"),
        RedisHll::of_ids([1, 2])
    );
    // The token without an id is named, as users without one are.
    let summary = ws.json("out/summary.json");
    assert_eq!(summary["redis_unresolved_users"], 1, "{summary}");
    assert_eq!(summary["redis_unresolved_first"][0], "nobody-knows");
}

/// GUIDE.md's walk-through, line by line, against this test's server: `redis-server` is
/// this test's own, port 6379 is its port, `cargo run --release --` is the binary under test.
#[test]
#[ignore = "needs redis-server on the PATH (Debian: apt-get install redis-server)"]
fn the_guides_walk_through_runs() {
    let server = RedisServer::start();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("GUIDE.md")).unwrap();
    let start = guide
        .find("<!-- redis-walkthrough -->\n```sh\n")
        .expect("GUIDE.md's walk-through block");
    let block = &guide[start..].split("```").nth(1).unwrap()["sh\n".len()..];
    let ws = Workspace::new();
    copy_tree(&root.join("samples"), &ws.path("samples"));
    ws.write(
        "docs/samples-gitlab-users.csv",
        std::fs::read(root.join("docs/samples-gitlab-users.csv")).unwrap(),
    );
    let port = server.port.to_string();
    let mut last = String::new();
    let mut ran = 0;
    for line in block
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        let words: Vec<String> = shell_words(line)
            .into_iter()
            .map(|w| match w.as_str() {
                "6379" => port.clone(),
                "redis://localhost:6379" => server.url(),
                _ => w,
            })
            .collect();
        let mut cmd = match words[0].as_str() {
            "redis-server" => continue,
            "redis-cli" => Command::new("redis-cli"),
            "cargo" => {
                assert_eq!(words[..4], ["cargo", "run", "--release", "--"], "{line}");
                Command::new(env!("CARGO_BIN_EXE_regtally"))
            }
            other => panic!("the walk-through runs {other}, which this test does not know"),
        };
        let skip = if words[0] == "cargo" { 4 } else { 1 };
        let out = cmd
            .args(&words[skip..])
            .current_dir(ws.dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{line}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        last = stdout;
        ran += 1;
    }
    assert_eq!(ran, 5);
    // What GUIDE.md says the last line prints.
    assert_eq!(last.trim(), "4");
    assert!(guide.contains("The last line prints 4"));
}

/// Words of a shell line: spaces split, single quotes group.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}
