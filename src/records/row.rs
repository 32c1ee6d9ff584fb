//! The events dataset's row (`run --events`): one valid event as the parse tasks encode it and
//! the dataset's writer decodes it, after the rows have waited on disk for the run to know
//! which are first deliveries and which repository pushes created their repository.
//!
//! A row is little-endian fields of fixed width after its length, as the spilled records are
//! ([`crate::spill::codec`], which says why not postcard): the time (seconds, nanoseconds),
//! the id's key, the line within its chunk, the position in an envelope (`u64::MAX` for none),
//! the event's kind ([`EventKind::code`]), then the texts, each a `u32` length (`u32::MAX`
//! for none) and its UTF-8 bytes. The writer reads a row in place, borrowing every text from
//! its bytes.

use crate::classify::{EventKind, TrackedEvent};
use crate::spill::codec::{put_u32, put_u64};
use crate::timestamp::Timestamp;
use chrono::Datelike;
use std::io;

/// A month of the dataset: (year, month).
pub type Month = (i32, u32);

/// The month of an event's UTC time, which names its folder in the dataset.
pub fn month_of(time: Timestamp) -> Month {
    let d = time.date();
    (d.year(), d.month())
}

/// The length of a null string.
const NULL: u32 = u32::MAX;

/// One row: what the parse tasks encode and the writer reads back.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedRow<'a> {
    pub time: Timestamp,
    pub id_key: u128,
    /// Line within its chunk.
    pub line: u64,
    pub index: Option<u32>,
    /// The event's kind, as [`EventKind::code`] spells it.
    pub kind: u8,
    pub id: &'a str,
    pub action: &'a str,
    pub repository: &'a str,
    pub tag: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub media_type: Option<&'a str>,
    /// The identity of SPEC §4, when the actor is a user.
    pub user: Option<&'a str>,
    /// The identity of SPEC §4, when the actor is a deploy token.
    pub deploy_token: Option<&'a str>,
    pub actor_name: Option<&'a str>,
    pub actor_type: Option<&'a str>,
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            put_u32(out, s.len() as u32);
            out.extend_from_slice(s.as_bytes());
        }
        None => put_u32(out, NULL),
    }
}

/// Bytes that are not a row: a temporary file changed under the run.
pub fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("events dataset's temporary rows: bad {what}"),
    )
}

/// Reads rows off the front of a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("row"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> io::Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn str(&mut self) -> io::Result<Option<&'a str>> {
        let len = self.u32()?;
        if len == NULL {
            return Ok(None);
        }
        simdutf8::basic::from_utf8(self.take(len as usize)?)
            .map(Some)
            .map_err(|_| corrupt("row text"))
    }
    fn text(&mut self) -> io::Result<&'a str> {
        self.str()?.ok_or_else(|| corrupt("row"))
    }
}

impl<'a> EncodedRow<'a> {
    /// Appends the row to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put_u32(out, 0);
        put_u64(out, self.time.secs as u64);
        put_u32(out, self.time.nanos);
        crate::spill::codec::put_u128(out, self.id_key);
        put_u64(out, self.line);
        put_u64(out, self.index.map_or(u64::MAX, u64::from));
        out.push(self.kind);
        put_str(out, Some(self.id));
        put_str(out, Some(self.action));
        put_str(out, Some(self.repository));
        put_str(out, self.tag);
        put_str(out, self.digest);
        put_str(out, self.media_type);
        put_str(out, self.user);
        put_str(out, self.deploy_token);
        put_str(out, self.actor_name);
        put_str(out, self.actor_type);
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The row at the front of `bytes` and the bytes after it.
    pub fn decode(bytes: &'a [u8]) -> io::Result<(EncodedRow<'a>, &'a [u8])> {
        let mut c = Cursor(bytes);
        let len = c.u32()? as usize;
        let mut r = Cursor(c.take(len)?);
        let row = EncodedRow {
            time: Timestamp {
                secs: r.u64()? as i64,
                nanos: r.u32()?,
            },
            id_key: u128::from_le_bytes(r.take(16)?.try_into().unwrap_or_default()),
            line: r.u64()?,
            index: u32::try_from(r.u64()?).ok(),
            kind: r.take(1)?[0],
            id: r.text()?,
            action: r.text()?,
            repository: r.text()?,
            tag: r.str()?,
            digest: r.str()?,
            media_type: r.str()?,
            user: r.str()?,
            deploy_token: r.str()?,
            actor_name: r.str()?,
            actor_type: r.str()?,
        };
        Ok((row, c.0))
    }

    /// The length and the time of the row at the front of `bytes`: all the spool needs to file
    /// a row under its month, without decoding the rest.
    pub fn peek_len_and_time(bytes: &[u8]) -> io::Result<(usize, Timestamp)> {
        let mut c = Cursor(bytes);
        let len = c.u32()? as usize;
        let secs = c.u64()? as i64;
        if bytes.len() < 4 + len {
            return Err(corrupt("row"));
        }
        Ok((4 + len, Timestamp { secs, nanos: 0 }))
    }

    /// The row's tracked event, once the ledger has said whether a repository push created its
    /// repository.
    pub fn tracked(&self, created_repository: bool) -> Option<TrackedEvent> {
        match EventKind::from_code(self.kind)? {
            EventKind::PushTag => Some(TrackedEvent::PushTag),
            EventKind::DeleteTag => Some(TrackedEvent::DeleteTag),
            EventKind::DeleteRepository => Some(TrackedEvent::DeleteRepository),
            EventKind::RepositoryPush if created_repository => Some(TrackedEvent::CreateRepository),
            EventKind::RepositoryPush => Some(TrackedEvent::PushRepository),
            _ => None,
        }
    }

    /// The dataset's `class` of the row: its tracked event's short name (`push_tag`, ...),
    /// `manifest_delete`, or none.
    pub fn class(&self, tracked: Option<TrackedEvent>) -> Option<&'static str> {
        match EventKind::from_code(self.kind) {
            Some(EventKind::ManifestDelete) => Some("manifest_delete"),
            _ => tracked.map(TrackedEvent::class),
        }
    }

    /// Whether the row's event is a repository push, whose class the ledger decides.
    pub fn is_repository_push(&self) -> bool {
        self.kind == EventKind::RepositoryPush.code()
    }
}

#[cfg(test)]
impl<'a> EncodedRow<'a> {
    /// A push of `g/r` at `time`, on line 1, with every optional text absent: a test's row,
    /// which it changes what it tests of.
    pub fn bare(id: &'a str, time: Timestamp, kind: EventKind) -> EncodedRow<'a> {
        EncodedRow {
            time,
            id_key: 0,
            line: 1,
            index: None,
            kind: kind.code(),
            id,
            action: "push",
            repository: "g/r",
            tag: None,
            digest: None,
            media_type: None,
            user: None,
            deploy_token: None,
            actor_name: None,
            actor_type: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_back_as_written() {
        let a = EncodedRow {
            time: Timestamp {
                secs: 1_674_657_954,
                nanos: 123_456_789,
            },
            id_key: 7,
            line: 3,
            index: None,
            kind: EventKind::RepositoryPush.code(),
            id: "eé",
            action: "push",
            repository: "g/r",
            tag: None,
            digest: Some("sha256:1"),
            media_type: Some("m"),
            user: Some("root"),
            deploy_token: None,
            actor_name: Some("Root"),
            actor_type: Some("build"),
        };
        let b = EncodedRow {
            id_key: 8,
            line: 4,
            index: Some(2),
            kind: EventKind::Untracked.code(),
            user: None,
            deploy_token: Some("gitlab+deploy-token-1"),
            ..a.clone()
        };
        let mut out = Vec::new();
        a.encode(&mut out);
        b.encode(&mut out);
        let (got_a, rest) = EncodedRow::decode(&out).unwrap();
        assert_eq!(
            EncodedRow::peek_len_and_time(&out).unwrap(),
            (out.len() - rest.len(), Timestamp { nanos: 0, ..a.time })
        );
        let a_len = out.len() - rest.len();
        let (got_b, rest) = EncodedRow::decode(rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!((got_a, got_b), (a, b));
        // A cut row is an error, not a panic.
        for cut in 0..a_len {
            assert!(EncodedRow::decode(&out[..cut]).is_err());
            assert!(cut < 12 || EncodedRow::peek_len_and_time(&out[..cut]).is_err());
        }
    }

    #[test]
    fn kinds_resolve_to_the_dataset_classes() {
        let row = |kind| EncodedRow::bare("", Timestamp { secs: 0, nanos: 0 }, kind);
        let class = |kind, created| {
            let r = row(kind);
            r.class(r.tracked(created))
        };
        assert_eq!(class(EventKind::PushTag, false), Some("push_tag"));
        assert_eq!(class(EventKind::DeleteTag, false), Some("delete_tag"));
        assert_eq!(
            class(EventKind::ManifestDelete, false),
            Some("manifest_delete")
        );
        assert_eq!(
            class(EventKind::DeleteRepository, false),
            Some("delete_repository")
        );
        assert_eq!(
            class(EventKind::RepositoryPush, true),
            Some("create_repository")
        );
        assert_eq!(
            class(EventKind::RepositoryPush, false),
            Some("push_repository")
        );
        assert_eq!(class(EventKind::Untracked, false), None);
        assert!(row(EventKind::RepositoryPush).is_repository_push());
    }
}
