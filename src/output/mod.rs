//! Writing: the run's results to the five files of SPEC §9, replaced all together or not at all.

pub mod aggregates;
pub mod service_ping;
pub mod summary;

use crate::ledger::RepositoryLedger;
use crate::pipeline::FileReject;
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The output file names.
pub const AGGREGATES: &str = "aggregates.parquet";
pub const SERVICE_PING: &str = "service_ping.json";
pub const SUMMARY: &str = "summary.json";
pub const REJECTS: &str = "rejects.jsonl";
pub const REPOSITORIES: &str = "repositories.txt";

/// Output files written under temporary names beside their final names, renamed into place by
/// [`StagedOutputs::commit`]. Dropped uncommitted, it removes its temporary files, so a failed
/// run leaves the previous outputs (and state) as they were.
#[derive(Default)]
pub struct StagedOutputs {
    staged: Vec<(PathBuf, PathBuf)>,
}

impl StagedOutputs {
    pub fn new() -> StagedOutputs {
        StagedOutputs::default()
    }

    /// Writes one file under a temporary name in its final folder and syncs it to disk.
    pub fn stage(
        &mut self,
        final_path: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp_path = final_path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temp_path)
            .with_context(|| format!("cannot create {}", temp_path.display()))?;
        self.staged
            .push((temp_path.clone(), final_path.to_path_buf()));
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w).with_context(|| format!("cannot write {}", temp_path.display()))?;
        let file = w
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .with_context(|| format!("cannot write {}", temp_path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", temp_path.display()))?;
        Ok(())
    }

    /// Renames every staged file into place, in the order staged, then syncs their folders.
    pub fn commit(mut self) -> Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (temp, fin) in std::mem::take(&mut self.staged) {
            fs::rename(&temp, &fin).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), fin.display())
            })?;
            if let Some(parent) = fin.parent() {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        // Make the renames durable; not every platform can open a folder, so this is best effort.
        for dir in dirs {
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for StagedOutputs {
    fn drop(&mut self) {
        for (temp, _) in &self.staged {
            let _ = fs::remove_file(temp);
        }
    }
}

/// Checks before any log is read that the output folder exists (creating it) and is writable.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let probe = dir.join(format!(".regtally-probe-{}", std::process::id()));
    File::create(&probe)
        .with_context(|| format!("output folder {} is not writable", dir.display()))?;
    fs::remove_file(&probe).with_context(|| format!("cannot clean up {}", probe.display()))?;
    Ok(())
}

/// One line of `rejects.jsonl`.
#[derive(serde::Serialize)]
struct RejectLine<'a> {
    file: &'a str,
    line: u64,
    index: Option<u32>,
    reason: &'a str,
    text: &'a str,
}

/// Writes `rejects.jsonl`: one object per malformed line or invalid event, in input order.
pub fn write_rejects<W: Write>(rejects: &[FileReject], w: &mut W) -> Result<()> {
    for r in rejects {
        let line = RejectLine {
            file: &r.file,
            line: r.reject.line,
            index: r.reject.index,
            reason: &r.reject.reason,
            text: &r.reject.text,
        };
        serde_json::to_writer(&mut *w, &line)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes `repositories.txt`: one path a line, sorted.
pub fn write_repositories<W: Write>(ledger: &RepositoryLedger, w: &mut W) -> Result<()> {
    for r in ledger.sorted_paths() {
        w.write_all(r.as_bytes())?;
        w.write_all(b"\n")?;
    }
    Ok(())
}
