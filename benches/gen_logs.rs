//! Writes synthetic, realistic registry notification logs for the benchmark.
//!
//! `gen_logs OUT_DIR EVENTS FILES [--envelopes] [--bodies] [--gzip] [--seed N]
//! [--repositories N] [--users N] [--no-pulls] [--days N]`: EVENTS events over FILES files,
//! about 1 KB a line, one event a line (or envelopes of 1 to 5 events, or with `--bodies` the
//! same envelopes pretty-printed as the registry POSTs them, one after another), plain or gzip.
//! Actions: 70% pull, 22% push, 5% delete (about one in ten a repository delete), 3% mount, or
//! with `--no-pulls` 80% push and 20% delete, so that every event counts for a user; users and
//! repositories drawn uniformly from 20,000 and 30,000 (or the numbers given: millions of
//! repositories, or so many users that most of a day's are distinct); a year of timestamps (or
//! the first N days of 2023: `--days 31` puts every event in one month, as a nightly run's
//! are); 1% redeliveries. Deterministic for a seed and shape.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use fastrand::Rng;

/// How many users and repositories events are drawn from.
struct Shape {
    users: u64,
    repositories: u64,
    no_pulls: bool,
    days: u64,
}

fn event(rng: &mut Rng, shape: &Shape, n: u64, out: &mut Vec<u8>) {
    let roll = rng.u64(..100);
    let action = match (shape.no_pulls, roll) {
        (false, 0..=69) => "pull",
        (false, 70..=91) | (true, 0..=79) => "push",
        (false, 92..=96) | (true, _) => "delete",
        (false, _) => "mount",
    };
    let user = rng.u64(..shape.users);
    let repo = rng.u64(..shape.repositories);
    let secs = 1_672_531_200 + rng.u64(..shape.days * 86_400); // 2023
    let nanos = rng.u64(..1_000_000_000);
    let ts = chrono::DateTime::from_timestamp(secs as i64, nanos as u32)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.9fZ");
    let digest = format!(
        "sha256:{:016x}{:016x}{:016x}{:016x}",
        rng.u64(..),
        rng.u64(..),
        rng.u64(..),
        rng.u64(..)
    );
    let tag = match (action, rng.u64(..10)) {
        ("push" | "pull", 0..=5) | ("delete", 0..=3) => format!(
            ",\"tag\":\"v{}.{}.{}\"",
            rng.u64(..5),
            rng.u64(..20),
            rng.u64(..100)
        ),
        _ => String::new(),
    };
    // A delete with neither tag nor digest is a repository delete: about one delete in ten.
    let digest_field = if action == "delete" && tag.is_empty() && rng.u64(..6) == 0 {
        String::new()
    } else {
        format!(",\"digest\":\"{digest}\"")
    };
    let (name, user_type) = match rng.u64(..20) {
        0 => (
            format!("gitlab+deploy-token-{}", user % 500),
            "deploy_token",
        ),
        1..=6 => (format!("project_{}_bot", repo % 2000), "build"),
        7..=8 => (format!("User{user}"), "gitlab_or_ldap"),
        _ => (format!("user{user}"), "personal_access_token"),
    };
    let group = repo % 997;
    write!(
        out,
        concat!(
            r#"{{"id":"{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}","timestamp":"{}","action":"{}","#,
            r#""target":{{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","size":{}{},"length":{},"#,
            r#""repository":"group-{}/project-{}","url":"https://registry.example.com/v2/group-{}/project-{}/manifests/{}"{}}},"#,
            r#""request":{{"id":"{:08x}-{:04x}-{:04x}-{:04x}-{:012x}","addr":"10.{}.{}.{}:{}","host":"registry.example.com","method":"{}","#,
            r#""useragent":"docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0-13-amd64 os/linux arch/amd64 UpstreamClient(Docker-Client/24.0.7 \\(linux\\))"}},"#,
            r#""actor":{{"name":"{}","user_type":"{}"}},"#,
            r#""source":{{"addr":"registry-{}:5000","instanceID":"{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}"}}}}"#
        ),
        n >> 32, (n >> 16) & 0xffff, n & 0xfff, (n >> 12) & 0xfff, rng.u64(..1 << 48),
        ts, action,
        500 + rng.u64(..5000), digest_field, 500 + rng.u64(..5000),
        group, repo, group, repo, digest, tag,
        rng.u64(..) as u32, rng.u64(..1 << 16), rng.u64(..1 << 16), rng.u64(..1 << 16), rng.u64(..1 << 48),
        rng.u64(..256), rng.u64(..256), rng.u64(..256), 30_000 + rng.u64(..30_000),
        if action == "pull" { "GET" } else if action == "delete" { "DELETE" } else { "PUT" },
        name, user_type,
        rng.u64(..8), rng.u64(..) as u32, rng.u64(..1 << 16), rng.u64(..1 << 12), rng.u64(..1 << 12), rng.u64(..1 << 48),
    )
    .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!(
            "usage: gen_logs OUT_DIR EVENTS FILES [--envelopes] [--bodies] [--gzip] [--seed N] \
             [--repositories N] [--users N] [--no-pulls] [--days N]"
        );
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[0]);
    let events: u64 = args[1].parse().expect("EVENTS is a number");
    let files: u64 = args[2].parse().expect("FILES is a number");
    let bodies = args.iter().any(|a| a == "--bodies");
    let envelopes = bodies || args.iter().any(|a| a == "--envelopes");
    let gzip = args.iter().any(|a| a == "--gzip");
    let number = |flag: &str, default: u64| -> u64 {
        match args.iter().position(|a| a == flag) {
            Some(i) => args
                .get(i + 1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{flag} takes a number")),
            None => default,
        }
    };
    let seed = number("--seed", 1);
    let shape = Shape {
        users: number("--users", 20_000).max(1),
        repositories: number("--repositories", 30_000).max(1),
        no_pulls: args.iter().any(|a| a == "--no-pulls"),
        days: number("--days", 365).max(1),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::with_seed(seed);
    let per_file = events.div_ceil(files.max(1));
    let mut n = 0u64;
    let mut recent: Vec<Vec<u8>> = Vec::new();
    for f in 0..files {
        let name = dir.join(format!(
            "registry-{f:05}.log{}",
            if gzip { ".gz" } else { "" }
        ));
        let file = BufWriter::with_capacity(1 << 20, File::create(&name).unwrap());
        let mut w: Box<dyn Write> = if gzip {
            Box::new(flate2::write::GzEncoder::new(
                file,
                flate2::Compression::new(6),
            ))
        } else {
            Box::new(file)
        };
        let mut written = 0;
        let mut line = Vec::with_capacity(8192);
        while written < per_file && n < events {
            line.clear();
            let k = if envelopes { 1 + rng.u64(..5) } else { 1 };
            if envelopes {
                line.extend_from_slice(b"{\"events\":[");
            }
            for i in 0..k.min(per_file - written) {
                if i > 0 {
                    line.push(b',');
                }
                let mut ev = Vec::with_capacity(1200);
                if !recent.is_empty() && rng.u64(..100) == 0 {
                    ev = recent[rng.u64(..recent.len() as u64) as usize].clone();
                // a redelivery
                } else {
                    event(&mut rng, &shape, n, &mut ev);
                    if recent.len() < 1000 {
                        recent.push(ev.clone());
                    } else {
                        let slot = rng.u64(..1000) as usize;
                        recent[slot] = ev.clone();
                    }
                }
                line.extend_from_slice(&ev);
                written += 1;
                n += 1;
            }
            if envelopes {
                line.extend_from_slice(b"]}");
            }
            if bodies {
                // As the registry's json.MarshalIndent(envelope, "", "   ").
                let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
                let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
                line.clear();
                let mut ser = serde_json::Serializer::with_formatter(&mut line, formatter);
                serde::Serialize::serialize(&value, &mut ser).unwrap();
            }
            line.push(b'\n');
            w.write_all(&line).unwrap();
        }
        w.flush().unwrap();
    }
}
