//! Which inputs a nightly run reads: the state's manifest of consumed inputs, and the
//! selection of those not consumed yet (same path and size, and the same modification time or
//! else the same content hash, are skipped).

use super::RunState;
use crate::read::{InputPath, InputReport};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An input a state has consumed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumedInput {
    /// The file's canonical path (earlier releases recorded the path as it was named), or the
    /// object's URL.
    pub path: String,
    pub size: u64,
    /// xxh3-128 of the file's bytes, as 32 hex digits.
    pub hash: String,
    /// The file's modification time when it was read (`seconds.nanoseconds` since the epoch):
    /// a file with the same path, size and time is skipped without hashing it again. For an
    /// object, its ETag or version id ([`crate::read::object::ListedObject::stamp`]), with
    /// which it is skipped without being downloaded.
    #[serde(default)]
    pub modified: Option<String>,
}

/// A file's modification time as [`ConsumedInput::modified`] stores it.
pub fn modified_stamp(meta: &std::fs::Metadata) -> Option<String> {
    let t = meta
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{}.{:09}", t.as_secs(), t.subsec_nanos()))
}

/// An input the state said not to read again, and why.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedInput {
    pub path: String,
    pub reason: String,
}

/// What a nightly run reads: the inputs the state has not consumed.
#[derive(Debug, Default)]
pub struct InputSelection {
    pub read: Vec<InputPath>,
    pub skipped: Vec<SkippedInput>,
    /// Modification times of the files looked at (read or skipped), by canonical path, taken
    /// before reading them.
    pub modified: HashMap<PathBuf, String>,
}

/// A consumed input's path, as the manifest records it: the canonical path. Entries written by
/// earlier releases hold the path as it was named; those are resolved from the current folder.
fn manifest_key(path: &str) -> PathBuf {
    if crate::read::object::is_url(path) {
        return PathBuf::from(path);
    }
    std::fs::canonicalize(path).unwrap_or_else(|_| PathBuf::from(path))
}

impl RunState {
    /// Splits `inputs` into those to read and those already consumed: same canonical path and
    /// size, and either the recorded modification time (no hashing: a nightly run must not
    /// re-read the archive) or, failing that, the recorded content hash; for an object, the
    /// same URL, size and ETag (or version id), as listed (an object is never downloaded to be
    /// compared). Standard input, and a file that cannot be looked at now (it fails when
    /// read), are always read.
    pub fn select_inputs(&self, inputs: Vec<InputPath>) -> InputSelection {
        let consumed: HashMap<PathBuf, &ConsumedInput> = self
            .inputs
            .iter()
            .map(|c| (manifest_key(&c.path), c))
            .collect();
        let mut selection = InputSelection::default();
        for input in inputs {
            if let InputPath::Object(object) = &input {
                let key = PathBuf::from(&object.url);
                let stamp = object.stamp();
                let consumed = stamp.as_deref().is_some_and(|stamp| {
                    consumed.get(&key).is_some_and(|c| {
                        c.size == object.size && c.modified.as_deref() == Some(stamp)
                    })
                });
                if let Some(stamp) = stamp {
                    selection.modified.insert(key, stamp);
                }
                if consumed {
                    selection.skipped.push(SkippedInput {
                        path: object.url.clone(),
                        reason: "already consumed: same URL, size and ETag".to_owned(),
                    });
                } else {
                    selection.read.push(input);
                }
                continue;
            }
            let InputPath::File { canonical, name } = &input else {
                selection.read.push(input);
                continue;
            };
            let Ok(meta) = std::fs::metadata(canonical) else {
                selection.read.push(input);
                continue;
            };
            let stamp = modified_stamp(&meta);
            let reason = consumed
                .get(canonical)
                .filter(|c| c.size == meta.len())
                .and_then(|c| already_consumed(canonical, c, stamp.as_deref()));
            if let Some(stamp) = stamp {
                selection.modified.insert(canonical.clone(), stamp);
            }
            match reason {
                Some(reason) => selection.skipped.push(SkippedInput {
                    path: name.clone(),
                    reason,
                }),
                None => selection.read.push(input),
            }
        }
        selection
    }

    /// Adds the inputs this run read completely to the manifest (a changed file replaces its
    /// old entry), and notes the current modification time of inputs skipped by their hash,
    /// so that a touched file is hashed once, not every night.
    pub(super) fn record_consumed(
        &mut self,
        read: &[InputPath],
        reports: &[InputReport],
        modified: &HashMap<PathBuf, String>,
    ) {
        let mut entries: HashMap<PathBuf, ConsumedInput> = std::mem::take(&mut self.inputs)
            .into_iter()
            .map(|c| (manifest_key(&c.path), c))
            .collect();
        for (input, report) in read.iter().zip(reports) {
            let (key, Some(hash)) = (
                match input {
                    InputPath::File { canonical, .. } => canonical.clone(),
                    InputPath::Object(object) => PathBuf::from(&object.url),
                    InputPath::Stdin => continue,
                },
                &report.content_hash,
            ) else {
                continue;
            };
            entries.insert(
                key,
                ConsumedInput {
                    path: String::new(),
                    size: report.bytes,
                    hash: hash.clone(),
                    modified: None,
                },
            );
        }
        // Every input looked at this run, read or skipped, records the time it was seen with.
        self.inputs = entries
            .into_iter()
            .map(|(key, mut entry)| {
                if let Some(stamp) = modified.get(&key) {
                    entry.modified = Some(stamp.clone());
                }
                entry.path = key.to_string_lossy().into_owned();
                entry
            })
            .collect();
        self.inputs.sort_by(|a, b| a.path.cmp(&b.path));
    }
}

/// Why a consumed input of the same path and size need not be read again, if it need not.
fn already_consumed(path: &Path, entry: &ConsumedInput, modified: Option<&str>) -> Option<String> {
    if modified.is_some() && entry.modified.as_deref() == modified {
        return Some("already consumed: same path, size and modification time".into());
    }
    let (_, hash) = hash_file(path).ok()?;
    (hash == entry.hash).then(|| "already consumed: same path, size and content hash".to_owned())
}

/// The size and xxh3-128 (32 hex digits) of a file's bytes.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("{:032x}", hasher.digest128())))
}
