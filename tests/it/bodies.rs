//! Bodies as the registry sent them (SPEC §1): pretty-printed envelopes over many lines, one
//! after another with or without whitespace between them, one a file, cut short, and the same
//! events one a line, all giving the same outputs.

use crate::property::pretty;
use crate::support::*;
use serde_json::{json, Value};

/// Envelopes of a busy archive: `n` events in envelopes of one to four.
fn envelopes(n: usize) -> Vec<Value> {
    let lines = busy_lines(n, 3);
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    events
        .chunks(3)
        .enumerate()
        .map(|(i, c)| json!({ "events": c[..c.len().min(1 + i % 4)] }))
        .collect()
}

#[test]
fn bodies_in_every_form_give_the_outputs_of_one_value_a_line() {
    let bodies = envelopes(900);
    let ws = Workspace::new();
    let jsonl: Vec<String> = bodies.iter().map(Value::to_string).collect();
    ws.write_lines("jsonl/all.jsonl", &jsonl);
    // One file of bodies, each followed by a newline, a blank line, or nothing; CRLF now and
    // then.
    let mut joined = String::new();
    for (i, b) in bodies.iter().enumerate() {
        let text = pretty(b);
        joined.push_str(&if i % 7 == 0 {
            text.replace('\n', "\r\n")
        } else {
            text
        });
        joined.push_str(["\n", "\n\n", "", " \n"][i % 4]);
    }
    ws.write("joined/all.log", &joined);
    // One body a file, as an HTTP sink that writes each request to its own file does (names
    // sort in arrival order).
    for (i, b) in bodies.iter().enumerate() {
        ws.write(&format!("files/{i:05}.json"), pretty(b));
    }
    // Gzipped, as rotated.
    ws.write("gz/all.log.gz", gzip(joined.as_bytes()));
    // Compact bodies appended with nothing between them: one line.
    let compact: String = jsonl.concat();
    ws.write("compact/all.log", &compact);
    // One value a line and bodies mixed in one file, as a sink that changed its format.
    let mixed: String = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| if i % 2 == 0 { b.to_string() } else { pretty(b) } + "\n")
        .collect();
    ws.write("mixed/all.log", &mixed);
    let base = ws.run(&["jsonl"], "out-jsonl", &[]);
    assert_eq!(base.code, 0, "{}", base.stderr);
    let expected = outputs(&ws, "out-jsonl");
    for (input, extra) in [
        ("joined", &[][..]),
        // Chunks far smaller than a body: cut only between bodies.
        ("joined", &["--chunk-bytes", "100", "-j", "2"][..]),
        ("joined", &["-j", "1"][..]),
        ("files", &[][..]),
        ("gz", &["--chunk-bytes", "4096"][..]),
        ("compact", &[][..]),
        ("mixed", &["--chunk-bytes", "1000"][..]),
    ] {
        let out = format!("out-{input}-{}", extra.len());
        let r = ws.run(&[input], &out, extra);
        assert_eq!(r.code, 0, "{input} {extra:?}: {}", r.stderr);
        assert!(outputs(&ws, &out) == expected, "{input} {extra:?}");
        let summary = ws.json(&format!("{out}/summary.json"));
        let text = match input {
            "files" => bodies.iter().map(|b| pretty(b) + "\n").collect(),
            "compact" => compact.clone(),
            "mixed" => mixed.clone(),
            _ => joined.clone(),
        };
        // Every line is counted; a file's last line needs no newline.
        assert_eq!(summary["lines"], text.lines().count() as u64, "{input}");
        assert_eq!(summary["malformed_lines"], 0);
        let blank = text.lines().filter(|l| l.trim().is_empty()).count();
        assert_eq!(summary["blank_lines"], blank as u64, "{input}");
    }
}

#[test]
fn a_cut_body_is_one_malformed_record_placed_on_its_first_line() {
    let bodies = envelopes(12);
    let ws = Workspace::new();
    let texts: Vec<String> = bodies.iter().map(pretty).collect();
    // The third body is cut at odd places; the log goes on with the fourth.
    for (k, cut) in [1, 17, texts[2].len() / 2, texts[2].len() - 2]
        .into_iter()
        .enumerate()
    {
        let mut log = String::new();
        for (i, t) in texts.iter().enumerate() {
            log.push_str(if i == 2 { &t[..cut] } else { t });
            log.push('\n');
        }
        let logs = format!("logs{k}");
        ws.write(&format!("{logs}/a.log"), &log);
        let out = format!("out{k}");
        let r = ws.run(&[&logs], &out, &["--max-bad-ratio", "1"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let summary = ws.json(&format!("{out}/summary.json"));
        assert_eq!(summary["malformed_lines"], 1, "cut at {cut}");
        assert_eq!(summary["lines"], log.lines().count() as u64);
        let rejects = ws.rejects(&out);
        let first_line = 1 + texts[..2].iter().map(|t| t.lines().count()).sum::<usize>();
        assert_eq!(rejects.len(), 1);
        assert_eq!(rejects[0]["line"], first_line as u64, "cut at {cut}");
        assert!(rejects[0]["file"].as_str().unwrap().ends_with("a.log"));
        // Every event of the other bodies counts.
        let seen: u64 = bodies
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, b)| b["events"].as_array().unwrap().len() as u64)
            .sum();
        assert_eq!(summary["events_seen"], seen, "cut at {cut}");
    }
}

#[test]
fn a_body_longer_than_the_limit_is_rejected_without_being_held() {
    let ws = Workspace::new();
    let small = pretty(&envelopes(3)[0]);
    let mut big = String::from("{\n   \"events\": [\n");
    while big.len() < 300_000 {
        big.push_str("      {\"id\": \"x\", \"pad\": \"");
        big.push_str(&"p".repeat(100));
        big.push_str("\"},\n");
    }
    big.push_str("      {}\n   ]\n}");
    let log = format!("{small}\n{big}\n{small}\n");
    ws.write("logs/a.log", &log);
    let r = ws.run(
        &["logs"],
        "out",
        &["--max-line-bytes", "65536", "--max-bad-ratio", "1"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let summary = ws.json("out/summary.json");
    assert_eq!(summary["lines"], log.lines().count() as u64);
    assert_eq!(summary["malformed_lines"], 1);
    let rejects = ws.rejects("out");
    assert_eq!(rejects[0]["line"], small.lines().count() as u64 + 1);
    let reason = rejects[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("longer than --max-line-bytes 65536"),
        "{reason}"
    );
    assert!(rejects[0]["text"].as_str().unwrap().len() <= 1024);
}
