//! Helpers shared by the integration tests: run the built binary, build log lines, read outputs.

use arrow_array::{Array, BinaryArray, Date32Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{json, Value};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A time inside the tests' usual week.
pub const T: &str = "2021-01-05T10:00:00Z";

/// A tag push.
pub fn push_tag(id: &str, ts: &str, repo: &str, user: &str) -> Ev {
    Ev::new(id, ts, "push", repo, user).tag("v1")
}

/// What a run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `regtally` with `args` and no standard input.
pub fn regtally(args: &[&str]) -> Run {
    regtally_stdin(args, None)
}

/// Runs `regtally` with `args`, feeding `stdin` when given.
pub fn regtally_stdin(args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_regtally"));
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd.spawn().expect("the binary runs");
    if let Some(bytes) = stdin {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code().expect("exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A temporary folder with `logs/` for inputs and `out/` for outputs.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn s(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// Writes `bytes` to `rel`, creating folders.
    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Writes lines joined by `\n` with a final newline.
    pub fn write_lines(&self, rel: &str, lines: &[String]) -> PathBuf {
        let mut text = lines.join("\n");
        text.push('\n');
        self.write(rel, text)
    }

    /// Runs `regtally run <inputs> -o <out> --as-of 2021-02-01 <extra>`.
    pub fn run(&self, inputs: &[&str], out: &str, extra: &[&str]) -> Run {
        let out = self.s(out);
        let mut args = vec!["run"];
        let inputs: Vec<String> = inputs
            .iter()
            .map(|i| if *i == "-" { "-".to_owned() } else { self.s(i) })
            .collect();
        args.extend(inputs.iter().map(String::as_str));
        args.extend(["-o", &out, "--as-of", "2021-02-01", "-q"]);
        args.extend(extra);
        regtally(&args)
    }

    pub fn json(&self, rel: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.path(rel)).unwrap()).unwrap()
    }

    pub fn text(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap()
    }

    pub fn rejects(&self, out: &str) -> Vec<Value> {
        self.text(&format!("{out}/rejects.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn rows(&self, out: &str) -> Vec<Row> {
        read_rows(&self.path(&format!("{out}/aggregates.parquet")))
    }
}

/// One event's fields, for building log lines.
#[derive(Clone, Debug)]
pub struct Ev {
    pub id: String,
    pub timestamp: String,
    pub action: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub actor: Option<(String, String)>,
}

impl Ev {
    /// An event by a personal-access-token user.
    pub fn new(id: &str, timestamp: &str, action: &str, repository: &str, user: &str) -> Ev {
        Ev {
            id: id.into(),
            timestamp: timestamp.into(),
            action: action.into(),
            repository: repository.into(),
            tag: None,
            digest: Some(format!("sha256:{:064x}", id.len())),
            actor: Some((user.into(), "personal_access_token".into())),
        }
    }

    pub fn tag(mut self, tag: &str) -> Ev {
        self.tag = Some(tag.into());
        self
    }

    pub fn no_digest(mut self) -> Ev {
        self.digest = None;
        self
    }

    pub fn actor(mut self, name: &str, user_type: &str) -> Ev {
        self.actor = Some((name.into(), user_type.into()));
        self
    }

    pub fn no_actor(mut self) -> Ev {
        self.actor = None;
        self
    }

    pub fn value(&self) -> Value {
        let mut target = json!({
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 528,
            "repository": self.repository,
        });
        if let Some(t) = &self.tag {
            target["tag"] = json!(t);
        }
        if let Some(d) = &self.digest {
            target["digest"] = json!(d);
        }
        let mut v = json!({
            "id": self.id,
            "timestamp": self.timestamp,
            "action": self.action,
            "target": target,
            "request": {"id": "r", "method": "PUT", "useragent": "docker/20.10.18"},
            "source": {"addr": "registry:5000"},
        });
        if let Some((name, ty)) = &self.actor {
            v["actor"] = json!({"name": name, "user_type": ty});
        }
        v
    }

    /// This event as a single-event line.
    pub fn line(&self) -> String {
        self.value().to_string()
    }
}

/// An envelope line holding `events`.
pub fn envelope(events: &[Ev]) -> String {
    json!({"events": events.iter().map(Ev::value).collect::<Vec<_>>()}).to_string()
}

/// One row of `aggregates.parquet`, typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub event_name: String,
    pub period_kind: String,
    pub period: String,
    pub period_start: i32,
    pub period_end: i32,
    pub unique_users: i64,
    /// The 95% interval, `unique_users_lower` and `unique_users_upper`.
    pub bounds: (i64, i64),
    pub events: i64,
    pub sketch: Vec<u8>,
    pub hll_sketch: Option<Vec<u8>>,
}

impl Row {
    /// The estimate of the `hll_sketch` column (DataSketches), if the row has one.
    pub fn hll_estimate(&self) -> Option<f64> {
        let bytes = self.hll_sketch.as_ref()?;
        Some(
            datasketches::hll::HllSketch::deserialize(bytes)
                .unwrap()
                .estimate(),
        )
    }
}

/// Reads every row of an aggregates file with the parquet crate.
pub fn read_rows(path: &Path) -> Vec<Row> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let b = batch.unwrap();
        let s = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone()
        };
        let d = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Date32Array>()
                .unwrap()
                .clone()
        };
        let n = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let (name, kind, period) = (s(0), s(1), s(2));
        let (start, end) = (d(3), d(4));
        let (users, events) = (n(5), n(6));
        let binary = |i: usize| {
            b.column(i)
                .as_any()
                .downcast_ref::<BinaryArray>()
                .unwrap()
                .clone()
        };
        let (sketch, hll_sketch) = (binary(7), binary(8));
        let (lower, upper) = (n(9), n(10));
        for i in 0..b.num_rows() {
            assert!(!name.is_null(i) && !sketch.is_null(i));
            rows.push(Row {
                event_name: name.value(i).into(),
                period_kind: kind.value(i).into(),
                period: period.value(i).into(),
                period_start: start.value(i),
                period_end: end.value(i),
                unique_users: users.value(i),
                bounds: (lower.value(i), upper.value(i)),
                events: events.value(i),
                sketch: sketch.value(i).to_vec(),
                hll_sketch: (!hll_sketch.is_null(i)).then(|| hll_sketch.value(i).to_vec()),
            });
        }
    }
    rows
}

/// The row of one metric and period label.
pub fn row<'a>(rows: &'a [Row], event_name: &str, period: &str) -> &'a Row {
    rows.iter()
        .find(|r| r.event_name == event_name && r.period == period)
        .unwrap_or_else(|| panic!("no row {event_name} {period}"))
}

/// `(unique_users, events)` of one metric and period.
pub fn cell(rows: &[Row], event: &str, period: &str) -> (i64, i64) {
    let name = if event == "total" {
        "user_container_registry_total".to_owned()
    } else {
        format!("i_container_registry_{event}_user")
    };
    let r = row(rows, &name, period);
    (r.unique_users, r.events)
}

/// Compresses with gzip.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Random numbers from a seed, to vary logs and mutations: the same numbers for the same seed
/// on every run.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    pub fn next(&mut self) -> u64 {
        self.0.u64(..)
    }
    /// A number below `n` (not zero).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// One row of the events dataset (`run --events`), typed.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRow {
    /// The `month=` folder the row's file is in.
    pub month: String,
    pub time_micros: i64,
    pub id: String,
    pub action: String,
    pub class: Option<String>,
    pub repository: String,
    pub namespace: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub media_type: Option<String>,
    pub user: Option<String>,
    pub deploy_token: Option<String>,
    pub actor_name: Option<String>,
    pub actor_type: Option<String>,
    pub counted: bool,
    pub file: String,
    pub line: i64,
    pub index: Option<i64>,
}

/// The part files of an events dataset, sorted, relative to `dir`.
pub fn dataset_files(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for month in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(month.path()).unwrap().flatten() {
            files.push(format!(
                "{}/{}",
                month.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    files.sort();
    files
}

/// Every file of an events dataset with its bytes, for byte-for-byte comparisons.
pub fn dataset_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    dataset_files(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// Reads every row of an events dataset with the parquet crate, file by file in name order.
pub fn read_events(dir: &Path) -> Vec<EventRow> {
    use arrow_array::{BooleanArray, TimestampMicrosecondArray};
    let mut rows = Vec::new();
    for f in dataset_files(dir) {
        let month = f
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("month=")
            .to_owned();
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(dir.join(&f)).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let b = batch.unwrap();
            let col = |name: &str| b.column_by_name(name).unwrap().clone();
            let text = |name: &str| {
                let c = col(name);
                let a = c.as_any().downcast_ref::<StringArray>().unwrap().clone();
                (0..b.num_rows())
                    .map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned()))
                    .collect::<Vec<_>>()
            };
            let int = |name: &str| {
                let c = col(name);
                let a = c.as_any().downcast_ref::<Int64Array>().unwrap().clone();
                (0..b.num_rows())
                    .map(|i| (!a.is_null(i)).then(|| a.value(i)))
                    .collect::<Vec<_>>()
            };
            let time = col("time");
            let time = time
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .unwrap();
            let counted = col("counted");
            let counted = counted.as_any().downcast_ref::<BooleanArray>().unwrap();
            let (id, action, class, repository, namespace) = (
                text("id"),
                text("action"),
                text("class"),
                text("repository"),
                text("namespace"),
            );
            let (tag, digest, media_type) = (text("tag"), text("digest"), text("media_type"));
            let (user, actor_name, actor_type, file) = (
                text("user"),
                text("actor_name"),
                text("actor_type"),
                text("file"),
            );
            let (line, index) = (int("line"), int("index"));
            let deploy_token = text("deploy_token");
            for i in 0..b.num_rows() {
                rows.push(EventRow {
                    month: month.clone(),
                    time_micros: time.value(i),
                    id: id[i].clone().unwrap(),
                    action: action[i].clone().unwrap(),
                    class: class[i].clone(),
                    repository: repository[i].clone().unwrap(),
                    namespace: namespace[i].clone().unwrap(),
                    tag: tag[i].clone(),
                    digest: digest[i].clone(),
                    media_type: media_type[i].clone(),
                    user: user[i].clone(),
                    deploy_token: deploy_token[i].clone(),
                    actor_name: actor_name[i].clone(),
                    actor_type: actor_type[i].clone(),
                    counted: counted.value(i),
                    file: file[i].clone().unwrap(),
                    line: line[i].unwrap(),
                    index: index[i],
                });
            }
        }
    }
    rows
}

/// `n` pushes and deletes of a few users and repositories, about a tenth of the ids repeated.
pub fn busy_lines(n: usize, seed: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("e{}", (i * 7 + seed) % (n * 9 / 10)); // about a tenth repeat
            let ts = format!("2021-01-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60);
            let action = if i % 6 == 0 { "delete" } else { "push" };
            let mut e = Ev::new(
                &id,
                &ts,
                action,
                &format!("g/r{}", i % 37),
                &format!("U{}", i % 23),
            );
            if i % 3 == 0 {
                e = e.tag("t");
            }
            if i % 5 == 0 {
                e = e.no_digest();
            }
            e.line()
        })
        .collect()
}

/// The outputs a run must reproduce byte for byte (all but the summary).
pub fn outputs(ws: &Workspace, out: &str) -> Vec<Vec<u8>> {
    [
        "aggregates.parquet",
        "service_ping.json",
        "rejects.jsonl",
        "repositories.txt",
    ]
    .iter()
    .map(|f| std::fs::read(ws.path(&format!("{out}/{f}"))).unwrap())
    .collect()
}

/// Runs the binary with `args` in the folder `cwd`.
pub fn regtally_in(cwd: &Path, args: &[&str]) -> Run {
    regtally_with(cwd, args, &[])
}

/// Runs the binary with `args` in the folder `cwd`, with `env` added to its environment.
pub fn regtally_with(cwd: &Path, args: &[&str], env: &[(&str, String)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_regtally"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A token as newer registries forward it in `actor.user`, with this `user_info`: only its
/// payload is read.
fn registry_jwt(user_info: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let payload = format!(r#"{{"user_info":{{{user_info}}}}}"#);
    format!(
        "{}.{}.c2ln",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// A user's token: `user_info.user_id`.
pub fn jwt(user_id: u64) -> String {
    registry_jwt(&format!(
        r#""token_type":"personal_access_token","user_id":{user_id}"#
    ))
}

/// A deploy token's: `user_info.deploy_token_id`.
pub fn deploy_token_jwt(token_id: u64) -> String {
    registry_jwt(&format!(
        r#""token_type":"deploy_token","deploy_token_id":{token_id}"#
    ))
}

/// A local port no one listens on now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A push of a tag by `user` at `time`, with a JWT for `jwt_id`.
pub fn push(id: &str, time: &str, repository: &str, user: &str, jwt_id: Option<u64>) -> String {
    let mut v = Ev::new(id, time, "push", repository, user)
        .tag("v1")
        .value();
    if let Some(uid) = jwt_id {
        v["actor"]["user"] = serde_json::json!(jwt(uid));
    }
    v.to_string()
}

/// Every file under `dir`, at any depth.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// The files directly in `dir`, by name, with their bytes, sorted by name.
pub fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    all.sort();
    all
}

/// Copies every file under `from` to the same place under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(file.strip_prefix(from).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&file, target).unwrap();
    }
}
