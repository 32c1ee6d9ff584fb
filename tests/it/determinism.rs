//! What every output promises (README, "Outputs"): for the same inputs and flags, every output
//! but `summary.json`'s timings is byte-identical whatever `--threads`, the chunk size, whether
//! the memory limit made de-duplication and the ledger spill, and however the input paths are
//! spelled and ordered. The events dataset and the Redis export are included.

use crate::support::*;
use std::path::Path;

#[test]
fn every_output_is_the_same_for_any_threads_chunks_budget_and_path_spelling_and_order() {
    let ws = Workspace::new();
    // Ids repeat across files, so which delivery is first depends on input order; a malformed
    // line in each file, so that rejects.jsonl names both; one file compressed.
    // Users without a line in ids.csv get their GitLab id from their pushes' JWT: each file
    // gives them another one, and the smaller must win however the files are split up.
    let jwt_pushes = |file: u64| -> Vec<String> {
        (0..40)
            .map(|i| {
                let t = format!("2021-01-{:02}T10:00:00Z", 1 + i % 28);
                let user = format!("w{}", i % 8);
                push(
                    &format!("j{file}-{i}"),
                    &t,
                    "g/j",
                    &user,
                    Some(i % 8 + 1 + 100 * file),
                )
            })
            .collect()
    };
    let mut x = busy_lines(300, 1);
    x.extend(jwt_pushes(2));
    let mut y = busy_lines(300, 2);
    y.extend(jwt_pushes(1));
    ws.write("d/x.jsonl", format!("{}\nnot json\n", x.join("\n")));
    ws.write(
        "d/sub/y.jsonl.gz",
        gzip(format!("{}\n[1]\n", y.join("\n")).as_bytes()),
    );
    // And the samples: other months, a gzip file in a folder of its own, a malformed line and
    // an invalid event.
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("samples"),
        &ws.path("samples"),
    );
    let ids: Vec<String> = (0..20).map(|u| format!("u{u},{}", 100 + u)).collect();
    ws.write_lines("ids.csv", &ids);
    let (abs, abs_samples) = (ws.s("d"), ws.s("samples"));
    let runs: [(Vec<&str>, Vec<&str>); 4] = [
        (vec!["d", "samples"], vec!["-j", "1"]),
        (
            vec!["samples", "./d/sub", "samples/archive/../archive", "d"],
            vec!["-j", "2", "--chunk-bytes", "700"],
        ),
        (
            vec![
                "samples/seed-2023-01.jsonl",
                "samples/registry-2023-Q2.jsonl",
                "samples/registry-2022-W52.jsonl",
                "samples/archive/registry-2023-01-10.log.gz",
                "d/sub/y.jsonl.gz",
                "d/x.jsonl",
            ],
            vec!["-j", "2", "--chunk-bytes", "3000"],
        ),
        (
            vec![&abs_samples, &abs, "d/sub/../x.jsonl"],
            vec![
                "-j",
                "2",
                "--chunk-bytes",
                "900",
                "--memory-limit",
                "2000",
                "--temp-dir",
                "tmp",
            ],
        ),
    ];
    let mut first = None;
    for (i, (inputs, extra)) in runs.iter().enumerate() {
        let (out, events, redis) = (format!("o{i}"), format!("ev{i}"), format!("r{i}"));
        let mut args = vec!["run"];
        args.extend(inputs.iter());
        args.extend(extra.iter());
        args.extend([
            "-o",
            &out,
            "-q",
            "--as-of",
            "2021-02-01",
            "--max-bad-ratio",
            "1",
            "--events",
            &events,
            "--redis",
            &redis,
            "--user-ids",
            "ids.csv",
        ]);
        let r = regtally_in(ws.dir.path(), &args);
        assert_eq!(r.code, 0, "{inputs:?}: {}", r.stderr);
        let s = ws.json(&format!("{out}/summary.json"));
        let spilled = if extra.contains(&"--memory-limit") {
            serde_json::json!(["deduplicate", "repository_ledger"])
        } else {
            serde_json::json!([])
        };
        assert_eq!(
            s["spilled"], spilled,
            "run {i}: only the small budget spills"
        );
        let counts: Vec<&serde_json::Value> = [
            "duplicate_events",
            "events_by_action",
            "counted_events",
            "late_events",
        ]
        .iter()
        .map(|k| &s[k])
        .collect();
        let got = (
            outputs(&ws, &out),
            format!("{:?} {counts:?}", s["inputs"]),
            dataset_bytes(&ws.path(&events)),
            folder_bytes(&ws.path(&redis)),
        );
        // Five months of events, and weeks of GitLab ids.
        assert!(
            got.2.len() == 5 && got.3.len() > 3,
            "{} {}",
            got.2.len(),
            got.3.len()
        );
        match &first {
            None => first = Some(got),
            Some(f) => assert!(*f == got, "run {i} ({inputs:?} {extra:?}) differs"),
        }
    }
    assert!(!ws.path("tmp").exists(), "the temporary folder is removed");
    assert!(!ws.path("o0/.regtally-tmp").exists());
    // Names come from the canonical path relative to the current folder.
    let mut files: Vec<String> = ws
        .rejects("o0")
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_owned())
        .collect();
    files.dedup();
    assert_eq!(files[..2], ["d/sub/y.jsonl.gz", "d/x.jsonl"]);
    assert!(
        files.len() > 2 && files[2..].iter().all(|f| f.starts_with("samples/")),
        "{files:?}"
    );
}
