//! Property test: on random logs, the binary at one thread and at two threads (with tiny chunks,
//! so one file is parsed in many parallel pieces) agrees with a naive exact count computed here,
//! from the generator's own knowledge of every event rather than from parsing its JSON.

use crate::support::*;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A generated event as the model sees it.
#[derive(Clone, Debug)]
struct ModelEvent {
    id: String,
    utc: (i64, u32),
    action: &'static str,
    repository: String,
    has_tag: bool,
    has_digest: bool,
    user: Option<String>,
    deploy_token: Option<String>,
}

const USERS: [&str; 8] = [
    "alice", "Bob", "CAROL", "dave", "Élodie", "ÉLODIE", "bob", "frank",
];
const REPOS: [&str; 5] = ["g/a", "g/b", "g/c/d", "h/e", "h/f"];

struct Generated {
    files: Vec<(String, String)>,
    /// Valid events in input order, duplicates included.
    valid: Vec<ModelEvent>,
    lines: u64,
    blank: u64,
    malformed: u64,
    invalid: u64,
    known: Vec<String>,
}

/// The time as written, and the nanoseconds it keeps (a written time may drop digits).
fn format_time(rng: &mut Rng, secs: i64, nanos: u32) -> (String, u32) {
    let offset_min: i64 = *rng.pick(&[0, 0, 330, -480, 60]);
    let local = DateTime::<Utc>::from_timestamp(secs + offset_min * 60, nanos)
        .unwrap()
        .naive_utc();
    let base = local.format("%Y-%m-%dT%H:%M:%S").to_string();
    let (frac, kept) = match rng.below(4) {
        0 => (String::new(), 0),
        1 => (
            format!(".{:03}", nanos / 1_000_000),
            nanos / 1_000_000 * 1_000_000,
        ),
        2 => (format!(".{nanos:09}"), nanos),
        _ => (format!(".{nanos:09}123"), nanos), // digits past nanoseconds
    };
    let zone = if offset_min == 0 && rng.chance(70) {
        "Z".to_owned()
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        format!(
            "{sign}{:02}:{:02}",
            offset_min.abs() / 60,
            offset_min.abs() % 60
        )
    };
    (format!("{base}{frac}{zone}"), kept)
}

/// `value` as the registry's `json.MarshalIndent(envelope, "", "   ")` writes a body.
pub fn pretty(value: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"   ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(value, &mut ser).unwrap();
    String::from_utf8(out).unwrap()
}

fn generate(seed: u64) -> Generated {
    let mut rng = Rng::new(seed);
    let mut g = Generated {
        files: Vec::new(),
        valid: Vec::new(),
        lines: 0,
        blank: 0,
        malformed: 0,
        invalid: 0,
        known: REPOS
            .iter()
            .filter(|_| rng.chance(30))
            .map(|s| s.to_string())
            .collect(),
    };
    let start = NaiveDate::from_ymd_opt(2020, 12, 20)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp();
    // A few shared instants, so that ties in time are common and the id decides.
    let shared: Vec<i64> = (0..4)
        .map(|_| start + rng.below(60 * 86_400) as i64)
        .collect();
    let mut ids: Vec<String> = Vec::new();
    let n_files = 1 + rng.below(4);
    for f in 0..n_files {
        let mut text = String::new();
        for _ in 0..rng.below(60) {
            g.lines += 1;
            let roll = rng.below(100);
            let line = if roll < 5 {
                g.blank += 1;
                "  ".to_owned()
            } else if roll < 9 {
                g.malformed += 1;
                rng.pick(&[
                    "{\"events\":[",
                    "[]",
                    "{\"events\":5}",
                    "nonsense",
                    "\"str\"",
                ])
                .to_string()
            } else {
                let n = if roll < 55 { 1 } else { rng.below(4) as usize };
                let mut values = Vec::new();
                for _ in 0..n {
                    let id = if !ids.is_empty() && rng.chance(15) {
                        rng.pick(&ids).clone()
                    } else {
                        let id = format!("id-{}", rng.below(1_000_000));
                        ids.push(id.clone());
                        id
                    };
                    let secs = if rng.chance(20) {
                        *rng.pick(&shared)
                    } else {
                        start + rng.below(60 * 86_400) as i64
                    };
                    let nanos = if rng.chance(50) {
                        0
                    } else {
                        rng.below(1_000_000_000) as u32
                    };
                    let action =
                        *rng.pick(&["push", "push", "push", "delete", "delete", "pull", "mount"]);
                    let repository = rng.pick(&REPOS).to_string();
                    let (has_tag, has_digest) = (rng.chance(40), rng.chance(60));
                    let user_type = *rng.pick(&[
                        "personal_access_token",
                        "build",
                        "gitlab_or_ldap",
                        "deploy_token",
                        "",
                    ]);
                    let name = rng.pick(&USERS).to_string();
                    let mut target = json!({"repository": repository, "mediaType": "x"});
                    if has_tag {
                        target["tag"] = json!("t");
                    }
                    if has_digest {
                        target["digest"] = json!("sha256:00");
                    }
                    let (timestamp, nanos) = format_time(&mut rng, secs, nanos);
                    let mut v = json!({
                        "id": id,
                        "timestamp": timestamp,
                        "action": action,
                        "target": target,
                    });
                    if user_type.is_empty() {
                        if rng.chance(50) {
                            v["actor"] = json!({"name": name});
                        }
                    } else {
                        v["actor"] = json!({"name": name, "user_type": user_type});
                    }
                    let is_user =
                        ["personal_access_token", "build", "gitlab_or_ldap"].contains(&user_type);
                    // Now and then break the event in one of the ways SPEC §2 names.
                    match rng.below(25) {
                        0 => v["timestamp"] = json!("2021-01-05 10:00:00"),
                        1 => v["id"] = json!(""),
                        2 => v["target"] = json!({"tag": "t"}),
                        3 => v["action"] = json!(7),
                        _ => {
                            g.valid.push(ModelEvent {
                                id: id.clone(),
                                utc: (secs, nanos),
                                action,
                                repository,
                                has_tag,
                                has_digest,
                                user: is_user.then(|| name.to_lowercase()),
                                deploy_token: (user_type == "deploy_token")
                                    .then(|| name.to_lowercase()),
                            });
                            values.push(v);
                            continue;
                        }
                    }
                    g.invalid += 1;
                    values.push(v);
                }
                let value = if roll < 55 {
                    values.pop().unwrap()
                } else {
                    json!({ "events": values })
                };
                if rng.chance(20) {
                    // As the registry POSTs it: over many lines (SPEC §1).
                    let text = pretty(&value);
                    g.lines += text.matches('\n').count() as u64;
                    text
                } else {
                    value.to_string()
                }
            };
            text.push_str(&line);
            text.push_str(if rng.chance(10) { "\r\n" } else { "\n" });
        }
        g.files.push((format!("logs/f{f}.jsonl"), text));
    }
    g
}

/// The naive exact count: (metric, period label) -> (users, events), plus the accounting.
type ModelRow = (Option<String>, bool, Option<String>, Option<String>);

struct Model {
    cells: BTreeMap<(String, String), (BTreeSet<String>, i64)>,
    duplicates: u64,
    out_of_range: u64,
    repositories: BTreeSet<String>,
    /// Each first delivery's row of the events dataset: id -> (class, counted, user, deploy
    /// token).
    rows: BTreeMap<String, ModelRow>,
}

fn model(g: &Generated, since: Option<NaiveDate>, until: Option<NaiveDate>) -> Model {
    let mut seen = HashSet::new();
    let unique: Vec<ModelEvent> = g
        .valid
        .iter()
        .filter(|e| seen.insert(e.id.clone()))
        .cloned()
        .collect();
    let duplicates = (g.valid.len() - unique.len()) as u64;

    let mut classes: Vec<Option<&str>> = unique
        .iter()
        .map(|e| match (e.action, e.has_tag, e.has_digest) {
            ("push", true, _) => Some("push_tag"),
            ("delete", true, _) => Some("delete_tag"),
            ("delete", false, true) => Some("manifest"),
            ("delete", false, false) => Some("delete_repository"),
            ("push", false, _) => Some("repo_push"),
            _ => None,
        })
        .collect();
    let mut order: Vec<usize> = (0..unique.len()).collect();
    order.sort_by(|&a, &b| (unique[a].utc, &unique[a].id).cmp(&(unique[b].utc, &unique[b].id)));
    let mut existing: BTreeSet<String> = g.known.iter().cloned().collect();
    for i in order {
        let repo = unique[i].repository.clone();
        match classes[i] {
            Some("repo_push") => {
                classes[i] = Some(if existing.insert(repo) {
                    "create_repository"
                } else {
                    "push_repository"
                });
            }
            Some("push_tag") => {
                existing.insert(repo);
            }
            Some("delete_repository") => {
                existing.remove(&repo);
            }
            _ => {}
        }
    }

    let mut cells: BTreeMap<(String, String), (BTreeSet<String>, i64)> = BTreeMap::new();
    let mut out_of_range = 0;
    let mut rows = BTreeMap::new();
    for (e, class) in unique.iter().zip(&classes) {
        let date = DateTime::<Utc>::from_timestamp(e.utc.0, e.utc.1)
            .unwrap()
            .date_naive();
        let in_range = !(since.is_some_and(|s| date < s) || until.is_some_and(|u| date >= u));
        let shown = class.map(|c| {
            if c == "manifest" {
                "manifest_delete"
            } else {
                c
            }
        });
        let counted = in_range
            && (e.user.is_some() || e.deploy_token.is_some())
            && class.is_some_and(|c| c != "manifest");
        rows.insert(
            e.id.clone(),
            (
                shown.map(str::to_owned),
                counted,
                e.user.clone(),
                e.deploy_token.clone(),
            ),
        );
        if !in_range {
            out_of_range += 1;
            continue;
        }
        let Some(class) = class.filter(|c| *c != "manifest") else {
            continue;
        };
        let (identity, metrics) = match (&e.user, &e.deploy_token) {
            (Some(user), _) => (
                user,
                vec![
                    format!("i_container_registry_{class}_user"),
                    "user_container_registry_total".to_owned(),
                ],
            ),
            (None, Some(token)) => (
                token,
                vec![format!("i_container_registry_{class}_deploy_token")],
            ),
            (None, None) => continue,
        };
        let week = date.iso_week();
        let labels = [
            format!("{}-W{:02}", week.year(), week.week()),
            format!("{}-{:02}", date.year(), date.month()),
            date.format("%Y-%m-%d").to_string(),
        ];
        for metric in metrics {
            for label in &labels {
                let c = cells.entry((metric.clone(), label.clone())).or_default();
                c.0.insert(identity.clone());
                c.1 += 1;
            }
        }
    }
    Model {
        cells,
        duplicates,
        out_of_range,
        repositories: existing,
        rows,
    }
}

/// The cells of `aggregates.parquet` computed from the events dataset's counted rows:
/// (metric, period label) -> (distinct users, events).
fn cells_of_dataset(rows: &[EventRow]) -> BTreeMap<(String, String), (BTreeSet<String>, i64)> {
    let mut cells: BTreeMap<(String, String), (BTreeSet<String>, i64)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.counted) {
        let date = DateTime::<Utc>::from_timestamp_micros(r.time_micros)
            .unwrap()
            .date_naive();
        let week = date.iso_week();
        let class = r.class.as_deref().unwrap();
        let metrics = if r.user.is_some() {
            vec![
                format!("i_container_registry_{class}_user"),
                "user_container_registry_total".to_owned(),
            ]
        } else {
            vec![format!("i_container_registry_{class}_deploy_token")]
        };
        for metric in metrics {
            for label in [
                format!("{}-W{:02}", week.year(), week.week()),
                format!("{}-{:02}", date.year(), date.month()),
                date.format("%Y-%m-%d").to_string(),
            ] {
                let c = cells.entry((metric.clone(), label)).or_default();
                c.0.insert(r.user.clone().or(r.deploy_token.clone()).unwrap());
                c.1 += 1;
            }
        }
    }
    cells
}

/// Checks one random log; returns what the spilling run spilled, and how many valid events
/// the log held.
fn check(seed: u64) -> (Vec<String>, usize) {
    let g = generate(seed);
    let ws = Workspace::new();
    for (name, text) in &g.files {
        ws.write(name, text);
    }
    let mut extra: Vec<String> = vec!["--max-bad-ratio".into(), "1".into(), "--keep-going".into()];
    let mut rng = Rng::new(seed + 7);
    let since = rng
        .chance(30)
        .then(|| NaiveDate::from_ymd_opt(2021, 1, 1 + rng.below(20) as u32).unwrap());
    let until = rng
        .chance(30)
        .then(|| NaiveDate::from_ymd_opt(2021, 1, 25).unwrap() + chrono::Days::new(rng.below(20)));
    if let Some(s) = since {
        extra.extend(["--since".into(), s.to_string()]);
    }
    if let Some(u) = until {
        extra.extend(["--until".into(), u.to_string()]);
    }
    if !g.known.is_empty() {
        ws.write("known.txt", g.known.join("\n"));
        extra.extend(["--known-repositories".into(), ws.s("known.txt")]);
    }
    let m = model(&g, since, until);
    let chunk = (1 + rng.below(400)).to_string();
    // A limit so small that de-duplication and the ledger spill nearly at once.
    let limit = (1 + rng.below(3000)).to_string();
    let runs: [(&str, Vec<&str>); 3] = [
        ("seq", vec!["--threads", "1"]),
        ("par", vec!["--threads", "2", "--chunk-bytes", &chunk]),
        (
            "spill",
            vec![
                "--threads",
                "2",
                "--chunk-bytes",
                &chunk,
                "--memory-limit",
                &limit,
            ],
        ),
    ];
    let mut outputs = Vec::new();
    for (out, threads) in &runs {
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(threads.iter());
        let events_dir = ws.s(&format!("{out}-events"));
        args.extend(["--events", &events_dir]);
        let r = ws.run(&["logs"], out, &args);
        // Exit 1 only when the bad ratio is over 1 (invalid events are counted per event).
        let bad = (g.malformed + g.invalid) as f64;
        let want_code = if g.lines > 0 && bad / g.lines as f64 > 1.0 {
            1
        } else {
            0
        };
        assert_eq!(r.code, want_code, "seed {seed}: {}", r.stderr);

        let s = ws.json(&format!("{out}/summary.json"));
        let counts = [
            ("lines", g.lines),
            ("blank_lines", g.blank),
            ("malformed_lines", g.malformed),
            ("invalid_events", g.invalid),
            ("events_seen", g.valid.len() as u64),
            ("duplicate_events", m.duplicates),
            ("out_of_range_events", m.out_of_range),
        ];
        for (k, v) in counts {
            assert_eq!(s[k].as_u64(), Some(v), "seed {seed} {out}: {k}");
        }

        let rows = ws.rows(out);
        let by_key: HashMap<(String, String), &Row> = rows
            .iter()
            .map(|r| ((r.event_name.clone(), r.period.clone()), r))
            .collect();
        assert_eq!(
            by_key.len(),
            rows.len(),
            "seed {seed}: one row per metric and period"
        );
        for ((metric, period), (users, events)) in &m.cells {
            let r = by_key
                .get(&(metric.clone(), period.clone()))
                .unwrap_or_else(|| panic!("seed {seed} {out}: no row {metric} {period}"));
            assert_eq!(
                r.events, *events,
                "seed {seed} {out}: events of {metric} {period}"
            );
            // Sketches this small are sparse, and sparse HyperLogLog++ counts them exactly:
            // their 95% interval is the count.
            assert_eq!(
                (r.unique_users, r.bounds),
                (users.len() as i64, (users.len() as i64, users.len() as i64)),
                "seed {seed} {out}: users of {metric} {period}"
            ); // So does a DataSketches list or set: a user whose coupon went missing on
               // the way (threads, spilling) would show here.
            assert_eq!(
                r.hll_estimate().map(|e| e.round() as usize),
                Some(users.len()),
                "seed {seed} {out}: hll_sketch of {metric} {period}"
            );
        }
        for r in &rows {
            if !m
                .cells
                .contains_key(&(r.event_name.clone(), r.period.clone()))
            {
                assert_eq!(
                    (r.unique_users, r.events),
                    (0, 0),
                    "seed {seed} {out}: {} {}",
                    r.event_name,
                    r.period
                );
            }
        }
        let repos: BTreeSet<String> = ws
            .text(&format!("{out}/repositories.txt"))
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(repos, m.repositories, "seed {seed} {out}: repositories");
        // The events dataset: one row per first delivery, classified as the model says, and
        // its counted rows are exactly the events and users behind aggregates.parquet.
        let events = read_events(&ws.path(&format!("{out}-events")));
        let got: BTreeMap<String, ModelRow> = events
            .iter()
            .map(|r| {
                let row = (
                    r.class.clone(),
                    r.counted,
                    r.user.clone(),
                    r.deploy_token.clone(),
                );
                (r.id.clone(), row)
            })
            .collect();
        assert_eq!(events.len(), got.len(), "seed {seed} {out}: one row per id");
        assert_eq!(got, m.rows, "seed {seed} {out}: events dataset");
        let from_rows = cells_of_dataset(&events);
        for ((metric, period), (users, n)) in &from_rows {
            let r = by_key[&(metric.clone(), period.clone())];
            assert_eq!(
                (r.unique_users, r.events),
                (users.len() as i64, *n),
                "seed {seed} {out}: dataset against aggregates, {metric} {period}"
            );
        }
        assert_eq!(
            rows.iter().filter(|r| r.events > 0).count(),
            from_rows.len(),
            "seed {seed} {out}: cells with events"
        );
        let mut files: Vec<Vec<u8>> = [
            "aggregates.parquet",
            "service_ping.json",
            "rejects.jsonl",
            "repositories.txt",
        ]
        .map(|f| std::fs::read(ws.path(&format!("{out}/{f}"))).unwrap())
        .into();
        for (name, bytes) in dataset_bytes(&ws.path(&format!("{out}-events"))) {
            files.push(name.into_bytes());
            files.push(bytes);
        }
        outputs.push(files);
    }
    assert!(
        outputs[0] == outputs[1],
        "seed {seed}: sequential and parallel outputs differ"
    );
    assert!(
        outputs[0] == outputs[2],
        "seed {seed}: spilled and in-memory outputs differ"
    );
    let spilled = ws.json("spill/summary.json")["spilled"].clone();
    (
        spilled
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect(),
        g.valid.len(),
    )
}

#[test]
fn parallel_sequential_and_naive_counts_agree_on_random_logs() {
    let cases: u64 = std::env::var("REGTALLY_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut spilled_both = 0;
    for seed in 1..=cases {
        let (spilled, events) = check(seed);
        if spilled == ["deduplicate", "repository_ledger"] {
            spilled_both += 1;
        } else {
            assert!(
                events < 100,
                "seed {seed}: {events} events and only {spilled:?} spilled"
            );
        }
    }
    // The spilling runs really took the spilled path.
    assert!(
        spilled_both * 2 > cases,
        "{spilled_both} of {cases} spilled"
    );
}
