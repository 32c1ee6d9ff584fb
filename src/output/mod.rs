//! Writing: the run's results to the five files of SPEC §9, replaced all together or not at all.

pub mod aggregates;
pub mod service_ping;
pub mod summary;

use crate::pipeline::{FileReject, Tally};
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

/// Output files written under temporary names in the output folder, renamed into place by
/// [`StagedOutputs::commit`]. Dropped uncommitted, it removes its temporary files, so a failed
/// run leaves the previous outputs as they were.
pub struct StagedOutputs {
    dir: PathBuf,
    staged: Vec<(PathBuf, PathBuf)>,
}

impl StagedOutputs {
    pub fn new(dir: &Path) -> StagedOutputs {
        StagedOutputs {
            dir: dir.to_path_buf(),
            staged: Vec::new(),
        }
    }

    /// Writes one file under a temporary name and syncs it to disk.
    pub fn stage(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        let final_path = self.dir.join(name);
        let temp_path = self.dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let file = File::create(&temp_path)
            .with_context(|| format!("cannot create {}", temp_path.display()))?;
        self.staged.push((temp_path.clone(), final_path));
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

    /// Renames every staged file into place, then syncs the folder.
    pub fn commit(mut self) -> Result<()> {
        for (temp, fin) in std::mem::take(&mut self.staged) {
            fs::rename(&temp, &fin).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), fin.display())
            })?;
        }
        // Make the renames durable; not every platform can open a folder, so this is best effort.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
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
pub fn write_repositories<W: Write>(tally: &Tally, w: &mut W) -> Result<()> {
    for r in &tally.repositories {
        w.write_all(r.as_bytes())?;
        w.write_all(b"\n")?;
    }
    Ok(())
}
