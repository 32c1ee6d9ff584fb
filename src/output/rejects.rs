//! `rejects.jsonl`: one line per malformed line or invalid event, written as the consumer takes
//! each chunk in input order, so that the file is in input order and nothing waits in memory.

use crate::records::{FileReject, Reject};
use std::io::{self, Write};

/// How many rejects are kept for the message when there were too many.
const FIRST_REJECTS: usize = 5;

/// One line of `rejects.jsonl`.
#[derive(serde::Serialize)]
struct RejectLine<'a> {
    file: &'a str,
    line: u64,
    index: Option<u32>,
    reason: &'a str,
    /// Only with a line's first reject.
    #[serde(skip_serializing_if = "str::is_empty")]
    text: &'a str,
}

/// Writes one line of `rejects.jsonl`: a malformed line or invalid event of `file`.
pub fn write_reject(file: &str, r: &Reject, w: &mut dyn Write) -> io::Result<()> {
    let line = RejectLine {
        file,
        line: r.line,
        index: r.index,
        reason: &r.reason,
        text: &r.text,
    };
    serde_json::to_writer(&mut *w, &line)?;
    w.write_all(b"\n")
}

/// Writes a run's rejects, chunk after chunk, and keeps the first few for the message the run
/// ends with when the bad ratio is passed.
pub struct RejectWriter<'w> {
    out: &'w mut (dyn Write + Send),
    first: Vec<FileReject>,
}

impl<'w> RejectWriter<'w> {
    pub fn new(out: &'w mut (dyn Write + Send)) -> RejectWriter<'w> {
        RejectWriter {
            out,
            first: Vec::new(),
        }
    }

    /// Writes the rejects of one chunk of `file`, their lines already counted from the
    /// input's start.
    pub fn write_all(&mut self, file: &str, rejects: Vec<Reject>) -> io::Result<()> {
        for reject in rejects {
            write_reject(file, &reject, &mut *self.out)?;
            if self.first.len() < FIRST_REJECTS {
                self.first.push(FileReject {
                    file: file.to_owned(),
                    reject,
                });
            }
        }
        Ok(())
    }

    /// The first rejects written.
    pub fn into_first(self) -> Vec<FileReject> {
        self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_lines_of_json_and_the_first_few_are_kept() {
        let reject = |line, text: &str| Reject {
            line,
            index: (line == 2).then_some(3),
            reason: format!("reason {line}"),
            text: text.to_owned(),
        };
        let mut out = Vec::new();
        let mut w = RejectWriter::new(&mut out);
        w.write_all("a.log", vec![reject(1, "x"), reject(2, "")])
            .unwrap();
        w.write_all("b.log", (3..10).map(|l| reject(l, "y")).collect())
            .unwrap();
        let first = w.into_first();
        assert_eq!(first.len(), FIRST_REJECTS);
        assert_eq!((first[1].file.as_str(), first[1].reject.line), ("a.log", 2));
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 9);
        assert_eq!(
            lines[0],
            r#"{"file":"a.log","line":1,"index":null,"reason":"reason 1","text":"x"}"#
        );
        // A line's later rejects carry no text.
        assert_eq!(
            lines[1],
            r#"{"file":"a.log","line":2,"index":3,"reason":"reason 2"}"#
        );
    }
}
