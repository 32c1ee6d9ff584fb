//! regtally 0.3's state, `regtally-state.json.zst` (version 1: JSON, times as RFC 3339 text,
//! ids and sketches as hex), still loaded: the next run writes the state anew and leaves in
//! the old file only a header that 0.3 refuses.

use super::*;

#[derive(Deserialize)]
struct StoredCell {
    metric: String,
    kind: String,
    start: NaiveDate,
    events: u64,
    sketch: String,
}

#[derive(Deserialize)]
struct StoredRepository {
    path: String,
    exists: bool,
    last_applied: Option<String>,
}

#[derive(Deserialize)]
struct StateFile {
    precision: u8,
    hash: String,
    sketch_format: u8,
    metrics: Vec<StoredCell>,
    repositories: Vec<StoredRepository>,
    recent_ids: Vec<(String, i64)>,
    inputs: Vec<ConsumedInput>,
}

/// The header every version of the JSON file starts with.
#[derive(Deserialize, Serialize)]
pub(super) struct Header {
    pub format: String,
    pub version: u32,
    pub written_by: String,
}

/// The header left in place of a migrated version 1 file: regtally 0.3 reads it and
/// refuses the folder, naming this release, instead of starting a new state beside it.
pub(super) fn moved_header() -> Vec<u8> {
    let header = Header {
        format: STATE_FORMAT.to_owned(),
        version: STATE_VERSION,
        written_by: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let json = serde_json::to_vec(&header).expect("serializing to memory cannot fail");
    zstd::encode_all(&json[..], 3).expect("compressing in memory cannot fail")
}

/// Reads a version 1 state. Its cells have no `hll_sketch` (their users were hashed only
/// for the `sketch` column): those cells' `hll_sketch` stays null.
pub(super) fn load(
    path: &Path,
    compressed: &[u8],
    precision: Option<u8>,
    mut ledger: PriorLedger,
) -> Result<RunState, StateError> {
    let not_state = not_state(path);
    let text = unzstd(compressed).map_err(|e| not_state(format!("not zstd: {e}")))?;
    let header: Header = serde_json::from_slice(&text).map_err(|e| not_state(e.to_string()))?;
    if header.format != STATE_FORMAT {
        return Err(not_state(format!("format is {:?}", header.format)));
    }
    if header.version == STATE_VERSION {
        return Err(not_state(format!(
            "it says the state moved to {STATE_FILE}, which is missing"
        )));
    }
    if header.version != 1 {
        return Err(StateError::Version {
            path: path.to_owned(),
            found: header.version,
            tool: header.written_by,
        });
    }
    let file: StateFile = serde_json::from_slice(&text).map_err(|e| not_state(e.to_string()))?;
    let check = Checked::new(
        path,
        file.precision,
        precision,
        &file.hash,
        file.sketch_format,
    )?;
    let mut metrics = MetricTable::new(check.precision);
    for c in file.metrics {
        let bytes = hex::decode(&c.sketch).map_err(|_| not_state("sketch is not hex".into()))?;
        check.add_cell(
            &mut metrics,
            &c.metric,
            &c.kind,
            c.start,
            &bytes,
            None,
            c.events,
        )?;
    }
    for r in file.repositories {
        let last_applied = match r.last_applied {
            None => None,
            Some(t) => Some(parse_rfc3339(&t).map_err(|e| not_state(format!("{t:?}: {e}")))?),
        };
        ledger
            .push(LedgerEntry {
                path: r.path,
                exists: r.exists,
                last_applied,
            })
            .map_err(|source| StateError::Io {
                path: path.to_owned(),
                source,
            })?;
    }
    let mut recent_ids = Vec::with_capacity(file.recent_ids.len());
    for (text, secs) in file.recent_ids {
        recent_ids.push((
            id_of_hex(&text).ok_or_else(|| not_state(format!("bad id {text:?}")))?,
            secs,
        ));
    }
    Ok(RunState {
        metrics,
        ledger,
        recent_ids,
        inputs: file.inputs,
        legacy: true,
        gitlab_weeks: WeekIds::default(),
    })
}

/// What stands in the old state file once a run has moved its state to [`STATE_FILE`]:
/// zstd-compressed JSON, as 0.3 reads it.
pub fn legacy_moved_header() -> Vec<u8> {
    moved_header()
}

/// An id as 0.3 wrote it: the xxh3-128, 32 hex digits.
fn id_of_hex(text: &str) -> Option<u128> {
    let mut bytes = [0u8; 16];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only whole hex digits: a sign is not one (`u8::from_str_radix` takes `+f` for 15).
    #[test]
    fn ids_are_32_hex_digits() {
        assert_eq!(id_of_hex(&format!("{:032x}", 7)), Some(7));
        assert_eq!(id_of_hex(&format!("{:032x}", u128::MAX)), Some(u128::MAX));
        assert_eq!(id_of_hex(&format!("+{:031x}", 7)), None);
        assert_eq!(id_of_hex("7"), None);
        assert_eq!(id_of_hex(&"zz".repeat(16)), None);
        assert!(hex::decode("+f").is_err());
    }
}
