//! Inputs in object storage (`s3://`), against a real S3-compatible server: moto's
//! `moto_server`, started by each test on a free local port and stopped after. `.ci/run`
//! installs it into `target/interop-venv`; `REGTALLY_MOTO_SERVER` names another. A proxy in the
//! test stands between regtally and the server to break connections and answer 503 or 404.

use crate::support::*;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("REGTALLY_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv/bin/moto_server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("moto_server")
}

/// A moto S3 server of this test's own.
struct S3Server {
    child: Child,
    port: u16,
    runtime: tokio::runtime::Runtime,
}

impl S3Server {
    fn start() -> S3Server {
        let port = free_port();
        let child = Command::new(moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; pip install 'moto[server]' (.ci/run installs it)",
                    moto_server().display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        S3Server {
            child,
            port,
            runtime,
        }
    }

    /// The environment that points regtally at `port` (this server, or a proxy before it).
    fn env(port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn store(&self, bucket: &str) -> AmazonS3 {
        let mut builder = AmazonS3Builder::new().with_bucket_name(bucket);
        for (key, value) in Self::env(self.port) {
            builder = builder.with_config(key.to_ascii_lowercase().parse().unwrap(), value);
        }
        builder.build().unwrap()
    }

    /// Creates `bucket` (moto takes an unsigned `PUT /bucket`).
    fn bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    fn put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        let store = self.store(bucket);
        self.runtime
            .block_on(store.put(&ObjectPath::from(key), PutPayload::from(bytes)))
            .unwrap();
    }

    fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let store = self.store(bucket);
        self.runtime
            .block_on(async { store.get(&ObjectPath::from(key)).await?.bytes().await })
            .unwrap_or_else(|e| panic!("{bucket}/{key}: {e}"))
            .to_vec()
    }

    /// The keys under `prefix`, sorted.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = self.store(bucket);
        let mut keys: Vec<String> = self
            .runtime
            .block_on(
                store
                    .list(Some(&ObjectPath::from(prefix)))
                    .try_collect::<Vec<_>>(),
            )
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }

    fn delete(&self, bucket: &str, key: &str) {
        let store = self.store(bucket);
        self.runtime
            .block_on(store.delete(&ObjectPath::from(key)))
            .unwrap();
    }

    /// Uploads every file under `dir` to `bucket` under `prefix`, keyed by its path below `dir`.
    fn upload_tree(&self, bucket: &str, prefix: &str, dir: &Path) {
        for file in files_under(dir) {
            let rel = file
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            self.put(
                bucket,
                &format!("{prefix}{rel}"),
                std::fs::read(&file).unwrap(),
            );
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does with a request for an object's bytes (a GET with a `Range`).
#[derive(Clone, Copy)]
enum Fault {
    /// Forwards everything.
    None,
    /// Answers the first `n` ranged GETs with `503 SlowDown`.
    SlowDown(usize),
    /// Cuts the first `n` ranged GETs' answers off after `after` bytes.
    Reset { n: usize, after: usize },
    /// Answers every ranged GET of keys ending in `suffix` with 404, as for a deleted object.
    Gone(&'static str),
}

/// A proxy on a port of its own in front of the server, injecting `fault`; runs until the test
/// ends. Each request is forwarded on a connection of its own, told to close after it.
fn proxy(server_port: u16, fault: Fault) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let faulted = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let faulted = faulted.clone();
            std::thread::spawn(move || serve(client, server_port, fault, &faulted));
        }
    });
    port
}

/// Reads one request (headers, and a body of `Content-Length` bytes).
fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).ok()? == 0 {
            return None;
        }
        request.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&request).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    client.read_exact(&mut body).ok()?;
    request.extend(body);
    Some(request)
}

fn serve(mut client: TcpStream, server_port: u16, fault: Fault, faulted: &AtomicUsize) {
    while let Some(request) = read_request(&mut client) {
        let head = String::from_utf8_lossy(&request).into_owned();
        let ranged = head.starts_with("GET ") && head.to_ascii_lowercase().contains("\r\nrange:");
        let first = |n: usize| faulted.fetch_add(1, Ordering::SeqCst) < n;
        let answer = |client: &mut TcpStream, status: &str, body: &str| {
            let _ = write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/xml\r\n\r\n{body}",
                body.len()
            );
        };
        match fault {
            Fault::SlowDown(n) if ranged && first(n) => {
                answer(
                    &mut client,
                    "503 Slow Down",
                    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
                );
                continue;
            }
            Fault::Gone(suffix)
                if ranged && head.split(' ').nth(1).is_some_and(|p| p.ends_with(suffix)) =>
            {
                answer(
                    &mut client,
                    "404 Not Found",
                    "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>",
                );
                continue;
            }
            _ => {}
        }
        let cut = match fault {
            Fault::Reset { n, after } if ranged && first(n) => Some(after),
            _ => None,
        };
        // One request per connection to the server: its answer ends where the connection does.
        let request = head.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        let mut upstream = TcpStream::connect(("127.0.0.1", server_port)).unwrap();
        upstream.write_all(request.as_bytes()).unwrap();
        let mut response = Vec::new();
        upstream.read_to_end(&mut response).unwrap();
        // The client keeps its connection: tell it this one closes too.
        let text = String::from_utf8_lossy(&response);
        let end = text.find("\r\n\r\n").map_or(response.len(), |i| i + 4);
        let mut headers = String::from_utf8_lossy(&response[..end]).into_owned();
        if !headers.to_ascii_lowercase().contains("\r\nconnection:") {
            headers = headers.replacen("\r\n", "\r\nConnection: close\r\n", 1);
        }
        let mut whole = headers.into_bytes();
        whole.extend_from_slice(&response[end..]);
        match cut {
            Some(after) => {
                let _ = client.write_all(&whole[..(end + after).min(whole.len())]);
                let _ = client.shutdown(Shutdown::Both);
            }
            None => {
                let _ = client.write_all(&whole);
            }
        }
        return;
    }
}

/// Whether two runs wrote the same aggregates, Service Ping and repositories, byte for byte.
fn same_tables(ws: &Workspace, a: &str, b: &str) {
    for f in [
        "aggregates.parquet",
        "service_ping.json",
        "repositories.txt",
    ] {
        assert!(
            std::fs::read(ws.path(&format!("{a}/{f}"))).unwrap()
                == std::fs::read(ws.path(&format!("{b}/{f}"))).unwrap(),
            "{f} differs between {a} and {b}"
        );
    }
}

/// The outputs a run over objects shares byte for byte with a run over the same files on
/// disk: all but the summary, and the rejects but for their file names.
fn same_as_local(ws: &Workspace, s3: &str, local: &str) {
    same_tables(ws, s3, local);
    let without_file = |out: &str| -> Vec<serde_json::Value> {
        ws.rejects(out)
            .into_iter()
            .map(|mut r| {
                r.as_object_mut().unwrap().remove("file");
                r
            })
            .collect()
    };
    assert_eq!(without_file(s3), without_file(local));
    let (a, b) = (
        ws.json(&format!("{s3}/summary.json")),
        ws.json(&format!("{local}/summary.json")),
    );
    for k in ["lines", "events_seen", "duplicate_events", "counted_events"] {
        assert_eq!(a[k], b[k], "{k}");
    }
}

/// The logs of the tests: the samples, the same files compressed with zstd under another
/// prefix, a hidden folder that is not read, and one object of 70 MiB, larger than the memory
/// budget and than one range of a GET (64 MiB).
fn logs(ws: &Workspace) {
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"),
        &ws.path("copy/samples"),
    );
    for f in ["registry-2022-W52.jsonl", "registry-2023-Q2.jsonl"] {
        let text = std::fs::read(ws.path(&format!("copy/samples/{f}"))).unwrap();
        ws.write(
            &format!("copy/zstd/{f}.zst"),
            zstd::encode_all(&text[..], 3).unwrap(),
        );
    }
    ws.write("copy/.partial/x.jsonl", "not read\n");
    let mut big = String::new();
    let mut i = 0;
    while big.len() < 70 << 20 {
        let ts = format!("2023-03-{:02}T{:02}:00:00Z", 1 + i % 28, i % 24);
        big.push_str(
            &push_tag(
                &format!("big{i}"),
                &ts,
                &format!("g/r{}", i % 301),
                &format!("u{}", i % 97),
            )
            .line(),
        );
        big.push('\n');
        i += 1;
    }
    ws.write("copy/zz-big.jsonl", big);
}

/// `regtally run INPUTS -o OUT -q --as-of AS_OF --max-bad-ratio 1 EXTRA` in the workspace with
/// `env` (the S3 server's): the run every test here makes (the samples hold bad lines on
/// purpose, so the ratio is lifted).
fn run_logs(
    ws: &Workspace,
    inputs: &[&str],
    out: &str,
    as_of: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> Run {
    let mut args = vec!["run"];
    args.extend(inputs);
    args.extend(["-o", out, "-q", "--as-of", as_of, "--max-bad-ratio", "1"]);
    args.extend(extra);
    regtally_with(ws.dir.path(), &args, env)
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn objects_under_a_prefix_read_as_their_local_copies() {
    let server = S3Server::start();
    let ws = Workspace::new();
    logs(&ws);
    server.bucket("logs");
    server.upload_tree("logs", "archive/", &ws.path("copy"));
    // Another prefix that only shares the first letters: not under `archive/`.
    server.put("logs", "archived-elsewhere/x.jsonl", b"not read\n".to_vec());
    let env = S3Server::env(server.port);
    let run = |input: &str, out: &str, env: &[(&str, String)]| {
        run_logs(
            &ws,
            &[input],
            out,
            "2023-02-01",
            &["--memory-limit", "1M"],
            env,
        )
    };
    let r = run("copy", "local", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run("s3://logs/archive", "s3", &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    same_as_local(&ws, "s3", "local");
    let inputs: Vec<String> = ws.json("s3/summary.json")["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        inputs,
        [
            "s3://logs/archive/samples/archive/registry-2023-01-10.log.gz",
            "s3://logs/archive/samples/registry-2022-W52.jsonl",
            "s3://logs/archive/samples/registry-2023-Q2.jsonl",
            "s3://logs/archive/samples/seed-2023-01.jsonl",
            "s3://logs/archive/zstd/registry-2022-W52.jsonl.zst",
            "s3://logs/archive/zstd/registry-2023-Q2.jsonl.zst",
            "s3://logs/archive/zz-big.jsonl",
        ]
    );
    let rejects = ws.rejects("s3");
    assert!(rejects[0]["file"]
        .as_str()
        .unwrap()
        .starts_with("s3://logs/archive/samples/"));

    // One object named whole, mixed with a local file: local files sort first (file:// < s3://).
    let inputs = [
        "s3://logs/archive/zz-big.jsonl",
        "copy/samples/seed-2023-01.jsonl",
    ];
    let r = run_logs(&ws, &inputs, "mixed", "2023-02-01", &[], &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = ws.json("mixed/summary.json");
    assert_eq!(s["inputs"][0]["path"], "copy/samples/seed-2023-01.jsonl");
    assert_eq!(s["inputs"][1]["path"], "s3://logs/archive/zz-big.jsonl");
    assert_eq!(
        s["inputs"][1]["bytes"].as_u64(),
        Some(
            std::fs::metadata(ws.path("copy/zz-big.jsonl"))
                .unwrap()
                .len()
        )
    );
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn a_thousand_small_objects_are_a_thousand_inputs() {
    let server = S3Server::start();
    let ws = Workspace::new();
    server.bucket("many");
    for i in 0..1000 {
        let lines: Vec<String> = (0..3)
            .map(|j| {
                push_tag(
                    &format!("e{i}-{j}"),
                    T,
                    &format!("g/r{}", i % 17),
                    &format!("u{}", (i + j) % 41),
                )
                .line()
            })
            .collect();
        let text = format!("{}\n", lines.join("\n"));
        ws.write(&format!("copy/d{}/f{i:04}.jsonl", i % 10), &text);
        server.put(
            "many",
            &format!("d{}/f{i:04}.jsonl", i % 10),
            text.into_bytes(),
        );
    }
    let r = regtally_with(ws.dir.path(), &["run", "copy", "-o", "local", "-q"], &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let env = S3Server::env(server.port);
    let r = regtally_with(ws.dir.path(), &["run", "s3://many", "-o", "s3", "-q"], &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    same_as_local(&ws, "s3", "local");
    assert_eq!(
        ws.json("s3/summary.json")["inputs"]
            .as_array()
            .unwrap()
            .len(),
        1000
    );
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn what_cannot_be_listed_fails_before_any_log_is_read() {
    let server = S3Server::start();
    let ws = Workspace::new();
    server.bucket("logs");
    server.put(
        "logs",
        "a/x.jsonl",
        push_tag("e", T, "g/r", "u").line().into_bytes(),
    );
    let env = S3Server::env(server.port);
    let dead = S3Server::env(free_port());
    let no_keys: Vec<(&str, String)> = env
        .iter()
        .filter(|(k, _)| !k.contains("ACCESS_KEY"))
        .cloned()
        .chain([("AWS_EC2_METADATA_DISABLED", "true".to_owned())])
        .collect();
    for (url, env, why) in [
        ("s3://nobucket/a", &env, "no such bucket (NoSuchBucket)"),
        ("s3://logs/empty", &env, "no object there"),
        ("s3://logs/a", &dead, "error sending request"),
        ("s3://logs/a", &no_keys, "no credentials"),
    ] {
        let started = Instant::now();
        let r = regtally_with(ws.dir.path(), &["run", url, "-o", "out", "-q"], env);
        assert_eq!(r.code, 2, "{url}: {}", r.stderr);
        assert!(
            r.stderr.contains(url) && r.stderr.contains(why),
            "{url}: {}",
            r.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(60), "{url}: slow");
        assert!(!ws.path("out/summary.json").exists(), "nothing was written");
    }
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn throttling_and_broken_connections_are_retried_and_a_lost_object_fails_the_run() {
    let server = S3Server::start();
    let ws = Workspace::new();
    logs(&ws);
    server.bucket("logs");
    server.upload_tree("logs", "", &ws.path("copy"));
    let run = |out: &str, port: u16| {
        run_logs(
            &ws,
            &["s3://logs"],
            out,
            "2023-02-01",
            &[],
            &S3Server::env(port),
        )
    };
    let r = run("direct", server.port);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (name, fault) in [
        ("slowdown", Fault::SlowDown(4)),
        ("reset", Fault::Reset { n: 3, after: 3000 }),
        ("none", Fault::None),
    ] {
        let r = run(name, proxy(server.port, fault));
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        same_as_local(&ws, name, "direct");
    }
    // An object gone between listing and reading: exit 1 naming it, nothing replaced.
    let before = std::fs::read(ws.path("direct/aggregates.parquet")).unwrap();
    let r = run("direct", proxy(server.port, Fault::Gone("zz-big.jsonl")));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://logs/zz-big.jsonl")
            && r.stderr.contains("at byte 0")
            && r.stderr.contains("deleted since it was listed"),
        "{}",
        r.stderr
    );
    assert!(std::fs::read(ws.path("direct/aggregates.parquet")).unwrap() == before);
    // A connection that breaks on every try: the read fails at its byte, loudly.
    let r = run(
        "broken",
        proxy(
            server.port,
            Fault::Reset {
                n: usize::MAX,
                after: 100,
            },
        ),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://logs/") && r.stderr.contains("at byte"),
        "{}",
        r.stderr
    );
    assert!(!ws.path("broken/aggregates.parquet").exists());
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn nightly_runs_over_a_growing_prefix_equal_one_run_over_everything() {
    let server = S3Server::start();
    let ws = Workspace::new();
    server.bucket("logs");
    let env = S3Server::env(server.port);
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    // In time order, as a log shipper writes them (the first two files overlap in time, so
    // they arrive the same night).
    let nights: [&[&str]; 3] = [
        &[
            "registry-2022-W52.jsonl",
            "archive/registry-2023-01-10.log.gz",
        ],
        &["seed-2023-01.jsonl"],
        &["registry-2023-Q2.jsonl"],
    ];
    let night = |out: &str| {
        run_logs(
            &ws,
            &["s3://logs/in"],
            out,
            "2023-07-01",
            &["--state", "state"],
            &env,
        )
    };
    let mut before = 0;
    for files in nights {
        for f in files {
            server.put(
                "logs",
                &format!("in/{f}"),
                std::fs::read(samples.join(f)).unwrap(),
            );
        }
        let r = night("nightly");
        assert_eq!(r.code, 0, "{}", r.stderr);
        let s = ws.json("nightly/summary.json");
        assert_eq!(s["skipped_inputs"].as_array().unwrap().len(), before, "{s}");
        assert_eq!(s["inputs"].as_array().unwrap().len(), files.len(), "{s}");
        assert_eq!(s["late_events"], 0);
        before += files.len();
    }
    let r = run_logs(&ws, &["s3://logs/in"], "once", "2023-07-01", &[], &env);
    assert_eq!(r.code, 0, "{}", r.stderr);
    same_tables(&ws, "nightly", "once");
    // An object rewritten under its key is read again; a deleted one is simply not listed.
    let mut grown = std::fs::read(samples.join("seed-2023-01.jsonl")).unwrap();
    grown.extend(
        push_tag("late", "2023-01-20T10:00:00Z", "acme/late", "zed")
            .line()
            .into_bytes(),
    );
    grown.push(b'\n');
    server.put("logs", "in/seed-2023-01.jsonl", grown);
    server.delete("logs", "in/registry-2022-W52.jsonl");
    let r = night("nightly");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = ws.json("nightly/summary.json");
    assert_eq!(s["inputs"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["inputs"][0]["path"], "s3://logs/in/seed-2023-01.jsonl");
    assert_eq!(s["skipped_inputs"].as_array().unwrap().len(), 2);
    // Side files at URLs: a repository the logs create is known before them, and the GitLab
    // ids of the samples' users come from a CSV in the bucket.
    server.put("logs", "known.txt", b"team-x/docs\n".to_vec());
    let ids = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/samples-gitlab-users.csv");
    server.put("logs", "ids.csv", std::fs::read(&ids).unwrap());
    let side = |out: &str, known: &str, csv: &str| {
        let redis = format!("{out}-redis");
        let extra = [
            "--known-repositories",
            known,
            "--redis",
            &redis,
            "--user-ids",
            csv,
        ];
        run_logs(&ws, &["s3://logs/in"], out, "2023-07-01", &extra, &env)
    };
    ws.write("known.txt", "team-x/docs\n");
    let r = side("side-s3", "s3://logs/known.txt", "s3://logs/ids.csv");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = side("side-local", "known.txt", &ids.to_string_lossy());
    assert_eq!(r.code, 0, "{}", r.stderr);
    same_as_local(&ws, "side-s3", "side-local");
    assert!(folder_bytes(&ws.path("side-s3-redis")) == folder_bytes(&ws.path("side-local-redis")));
    let created = |out: &str| {
        ws.json(&format!("{out}/summary.json"))["counted_events"]
            ["i_container_registry_create_repository_user"]
            .as_u64()
            .unwrap()
    };
    ws.write("none.txt", "");
    let r = side("side-unknown", "none.txt", "s3://logs/ids.csv");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        created("side-s3"),
        created("side-unknown") - 1,
        "team-x/docs existed before"
    );
}

#[test]
#[ignore = "needs moto_server (pip install 'moto[server]'; .ci/run installs it)"]
fn outputs_and_the_events_dataset_go_to_the_bucket() {
    let server = S3Server::start();
    let ws = Workspace::new();
    server.bucket("out");
    let env = S3Server::env(server.port);
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"),
        &ws.path("samples"),
    );
    let run = |inputs: &[&str], out: &str, events: &str, extra: &[&str]| {
        let extra = [&["--events", events][..], extra].concat();
        run_logs(&ws, inputs, out, "2023-02-01", &extra, &env)
    };
    let r = run(&["samples"], "local", "local-events", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(&["samples"], "s3://out/run", "s3://out/events/", &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("outputs: s3://out/run"), "{}", r.stdout);
    for f in [
        "aggregates.parquet",
        "service_ping.json",
        "repositories.txt",
        "rejects.jsonl",
    ] {
        assert!(
            server.get("out", &format!("run/{f}"))
                == std::fs::read(ws.path(&format!("local/{f}"))).unwrap(),
            "{f} differs"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&server.get("out", "run/summary.json")).unwrap();
    assert_eq!(summary["lines"], ws.json("local/summary.json")["lines"]);
    assert_eq!(summary["events_dataset"]["dir"], "s3://out/events/");
    let local_parts = dataset_bytes(&ws.path("local-events"));
    let remote: Vec<(String, Vec<u8>)> = server
        .keys("out", "events")
        .into_iter()
        .map(|k| {
            (
                k.trim_start_matches("events/").to_owned(),
                server.get("out", &k),
            )
        })
        .collect();
    assert!(remote == local_parts, "the dataset differs");
    assert!(remote.len() > 1);
    // Nothing else was left: no probe, no staged file.
    assert_eq!(server.keys("out", "run").len(), 5);

    // A run over one month replaces the dataset: the other months' objects go.
    let r = run(
        &["samples/seed-2023-01.jsonl"],
        "s3://out/run",
        "s3://out/events",
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        server.keys("out", "events"),
        ["events/month=2023-01/part-00000.parquet"]
    );

    // With a state, each night adds its own files and leaves the others.
    for (i, f) in [
        "samples/registry-2022-W52.jsonl",
        "samples/registry-2023-Q2.jsonl",
    ]
    .iter()
    .enumerate()
    {
        let r = run(
            &[f],
            "s3://out/night",
            "s3://out/nightly-events",
            &["--state", "state"],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let keys = server.keys("out", "nightly-events");
        assert!(!keys.is_empty() && keys.len() > i, "{keys:?}");
    }
    let keys = server.keys("out", "nightly-events");
    assert!(keys.iter().any(|k| k.contains("month=2022-12")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("month=2023-04")), "{keys:?}");

    // An output prefix that cannot be written is refused before any log is read.
    let r = run(&["samples"], "s3://nobucket/run", "local-events", &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("s3://nobucket/run is not writable"),
        "{}",
        r.stderr
    );
}
