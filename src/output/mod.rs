//! Writing: the run's results to the five files of SPEC §9, replaced all together or not at all.

pub mod aggregates;
pub mod chart;
pub mod events;
pub mod redis;
pub mod rejects;
pub mod service_ping;
pub mod summary;

use crate::ledger::ReplayedLedger;
use crate::spill::{keep_on_signal, remove_on_signal};
use anyhow::{Context, Result};
use rayon::prelude::*;
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
/// [`StagedOutputs::commit`] (and, for folders that mirror object storage, written there first). Dropped uncommitted, it removes its temporary files, so a failed
/// run leaves the previous outputs (and state) as they were; a signal removes them too (see
/// [`crate::spill::exit_cleanly_on_signals`]), and what a killed run left is removed by the
/// next one, which recognises it by its `suffix`.
pub struct StagedOutputs {
    /// Temporary and final path of each file, in the order they will be renamed.
    staged: Vec<(PathBuf, PathBuf)>,
    suffix: String,
    /// Files the commit removes once every staged file is in place.
    removals: Vec<PathBuf>,
    /// Folders whose staged files go to object storage.
    mirrors: Vec<Mirror>,
}

/// A local folder whose staged files the commit writes to object storage, under `url` at the
/// same relative paths (`--out` or `--events` at a URL, staged in the run's temporary folder).
pub struct Mirror {
    pub local: PathBuf,
    pub url: String,
    /// The objects under `url` that this run does not write are removed (a dataset that each
    /// run replaces whole).
    pub replace: bool,
}

/// What writes one file of [`StagedOutputs::stage_together`].
pub type StageWrite<'a> = Box<dyn FnOnce(&mut BufWriter<File>) -> Result<()> + Send + 'a>;

/// A staged output filled while the run goes on ([`StagedOutputs::open`]).
pub struct StagedFile {
    w: BufWriter<File>,
    temp: PathBuf,
}

impl Write for StagedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf).map_err(|e| self.error(e))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.w.write_all(buf).map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush().map_err(|e| self.error(e))
    }
}

impl StagedFile {
    fn error(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.temp.display()))
    }
}

impl StagedOutputs {
    /// Temporary files are named `.<name><suffix>` beside their final names.
    pub fn new(suffix: impl Into<String>) -> StagedOutputs {
        StagedOutputs {
            staged: Vec::new(),
            suffix: suffix.into(),
            removals: Vec::new(),
            mirrors: Vec::new(),
        }
    }

    fn create(&mut self, final_path: &Path) -> Result<(File, PathBuf)> {
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp_path = final_path.with_file_name(format!(".{name}{}", self.suffix));
        let file = File::create(&temp_path)
            .with_context(|| format!("cannot create {}", temp_path.display()))?;
        remove_on_signal(&temp_path);
        self.staged
            .push((temp_path.clone(), final_path.to_path_buf()));
        Ok((file, temp_path))
    }

    /// Writes one file under a temporary name in its final folder and syncs it to disk.
    pub fn stage(
        &mut self,
        final_path: &Path,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        let (file, temp_path) = self.create(final_path)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w).with_context(|| format!("cannot write {}", temp_path.display()))?;
        Self::sync(w, &temp_path)
    }

    /// [`StagedOutputs::stage`] of several files, written and synced on all cores at once
    /// (one file's serial steps, its encoding's last pass, its writes and its sync, overlap
    /// another's), renamed in the order given.
    pub fn stage_together(&mut self, files: Vec<(PathBuf, StageWrite<'_>)>) -> Result<()> {
        let created = files
            .into_iter()
            .map(|(path, write)| Ok((self.create(&path)?, write)))
            .collect::<Result<Vec<_>>>()?;
        created
            .into_par_iter()
            .map(|((file, temp_path), write)| {
                let mut w = BufWriter::with_capacity(1 << 20, file);
                write(&mut w).with_context(|| format!("cannot write {}", temp_path.display()))?;
                Self::sync(w, &temp_path)
            })
            .collect()
    }

    /// Starts a staged file that the run fills as it goes; [`StagedOutputs::close`] ends it.
    pub fn open(&mut self, final_path: &Path) -> Result<StagedFile> {
        let (file, temp) = self.create(final_path)?;
        Ok(StagedFile {
            w: BufWriter::with_capacity(1 << 20, file),
            temp,
        })
    }

    /// Ends a file started by [`StagedOutputs::open`]; it is renamed after those staged so far.
    pub fn close(&mut self, file: StagedFile) -> Result<()> {
        if let Some(at) = self.staged.iter().position(|(t, _)| *t == file.temp) {
            let entry = self.staged.remove(at);
            self.staged.push(entry);
        }
        Self::sync(file.w, &file.temp)
    }

    fn sync(w: BufWriter<File>, temp_path: &Path) -> Result<()> {
        let file = w
            .into_inner()
            .map_err(io::IntoInnerError::into_error)
            .with_context(|| format!("cannot write {}", temp_path.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", temp_path.display()))?;
        Ok(())
    }

    /// Takes over the files `other` staged (with the same suffix), to be renamed after these.
    pub fn absorb(&mut self, mut other: StagedOutputs) {
        self.staged.append(&mut other.staged);
        self.removals.append(&mut other.removals);
        self.mirrors.append(&mut other.mirrors);
    }

    /// Hands over the staged files, each (staged path, final path), to be renamed by another
    /// process's [`StagedOutputs::adopt`]: an engine's task stages, its driver commits.
    pub fn release(mut self) -> Vec<(PathBuf, PathBuf)> {
        let staged = std::mem::take(&mut self.staged);
        for (temp, _) in &staged {
            keep_on_signal(temp);
        }
        staged
    }

    /// Takes a file another process staged and synced ([`StagedOutputs::release`]), to be
    /// renamed to `final_path` after those staged so far.
    pub fn adopt(&mut self, temp: PathBuf, final_path: PathBuf) {
        remove_on_signal(&temp);
        self.staged.push((temp, final_path));
    }

    /// The suffix of the staged files' names.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    /// Has the commit remove `path` (an output this run replaces by nothing) after the renames,
    /// and its folder too if that is left empty.
    pub fn remove_on_commit(&mut self, path: PathBuf) {
        self.removals.push(path);
    }

    /// Has the commit write the files staged under `mirror.local` to object storage.
    pub fn mirror(&mut self, mirror: Mirror) {
        self.mirrors.push(mirror);
    }

    /// Writes the files staged in mirrored folders to object storage, in the order staged
    /// (`summary.json`, staged last, goes last), after removing, for a replaced folder, the
    /// objects this run does not write.
    fn upload(&self) -> Result<()> {
        let mut uploads: Vec<(&Path, String)> = Vec::new();
        for (temp, fin) in &self.staged {
            for m in &self.mirrors {
                if let Ok(rel) = fin.strip_prefix(&m.local) {
                    let rel = rel
                        .to_string_lossy()
                        .replace(std::path::MAIN_SEPARATOR, "/");
                    uploads.push((temp, format!("{}/{rel}", m.url.trim_end_matches('/'))));
                }
            }
        }
        let Some((last, first)) = uploads.split_last() else {
            return Ok(());
        };
        let put = |(temp, url): &(&Path, String)| {
            crate::read::object::put_file(url, temp).map_err(anyhow::Error::msg)
        };
        first.iter().try_for_each(put)?;
        for m in self.mirrors.iter().filter(|m| m.replace) {
            for old in crate::read::object::list_under(&m.url).map_err(anyhow::Error::msg)? {
                if !uploads.iter().any(|(_, url)| *url == old) {
                    crate::read::object::delete(&old).map_err(anyhow::Error::msg)?;
                }
            }
        }
        put(last)
    }

    /// Writes the files of mirrored folders to object storage, then renames every staged file
    /// into place, in the order staged, removes what [`StagedOutputs::remove_on_commit`] named,
    /// then syncs the folders. If a write or a rename fails, the files not yet renamed are
    /// removed (by `Drop`): the state, renamed after the outputs, stays as it was.
    pub fn commit(mut self) -> Result<()> {
        self.upload()?;
        let mut dirs: Vec<PathBuf> = Vec::new();
        while !self.staged.is_empty() {
            let (temp, fin) = &self.staged[0];
            fs::rename(temp, fin).with_context(|| {
                format!("cannot rename {} to {}", temp.display(), fin.display())
            })?;
            let (temp, fin) = self.staged.remove(0);
            keep_on_signal(&temp);
            if let Some(parent) = fin.parent() {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        for old in std::mem::take(&mut self.removals) {
            fs::remove_file(&old).with_context(|| format!("cannot remove {}", old.display()))?;
            if let Some(parent) = old.parent() {
                // Only an empty folder goes.
                if fs::remove_dir(parent).is_err() && !dirs.iter().any(|d| d == parent) {
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
            keep_on_signal(temp);
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

/// Writes `repositories.txt`: one path a line, sorted.
pub fn write_repositories<W: Write>(ledger: &ReplayedLedger, w: &mut W) -> Result<()> {
    if let Some(paths) = ledger.existing_paths_in_memory() {
        for path in paths {
            w.write_all(path.as_bytes())?;
            w.write_all(b"\n")?;
        }
        return Ok(());
    }
    for entry in ledger.entries()? {
        let entry = entry?;
        if entry.exists {
            w.write_all(entry.path.as_bytes())?;
            w.write_all(b"\n")?;
        }
    }
    Ok(())
}
