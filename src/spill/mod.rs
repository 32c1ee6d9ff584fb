//! Spilling: the memory budget of a run, and the temporary files that take what does not fit.
//!
//! Only two stages keep anything from one chunk to the next: de-duplication (the ids seen) and
//! the repository ledger (the pushes and repository deletes it must replay in time order).
//! Each gets a share of one [`MemoryBudget`]; past it, the stage sorts what it holds and
//! writes it as a *run* to a [`RunFile`] in the run's [`SpillDir`], and at the end merges its
//! runs back in order ([`merge`]). The in-memory and the spilled path end in the same code, so
//! a test with a tiny budget runs exactly what a large run does.

pub mod budget;
pub mod runs;

pub use budget::MemoryBudget;
pub use runs::{codec, merge, RunFile, SealedRuns, SpillRecord};

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Paths removed if the process is interrupted (SIGINT, SIGTERM, SIGHUP) before it removes
/// them itself: the run's spill folder (with its parent, the temporary folder, if that is left
/// empty) and its staged outputs.
static REMOVE_ON_SIGNAL: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());

/// Removes `path` (a file or a folder) if a signal ends the run.
pub fn remove_on_signal(path: &Path) {
    lock_registry().push((path.to_path_buf(), false));
}

/// Forgets a path given to [`remove_on_signal`]: it was removed, or renamed into place.
pub fn keep_on_signal(path: &Path) {
    lock_registry().retain(|(p, _)| p != path);
}

fn lock_registry() -> std::sync::MutexGuard<'static, Vec<(PathBuf, bool)>> {
    REMOVE_ON_SIGNAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a file, or a folder with everything in it, while the run's other threads may still
/// be making files in it: a spill that makes its files as the folder is removed leaves it not
/// empty, so the removal is tried again until the folder is gone (a few times 5 ms at most).
/// Nothing makes the folder itself again: spills only make files inside it.
fn remove_while_written(path: &Path) {
    for _ in 0..200 {
        let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
        if fs::symlink_metadata(path).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// On SIGINT, SIGTERM or SIGHUP: removes every registered path and exits with 128 + the
/// signal's number, as a shell reports a process killed by it. Installed once, by `run`.
pub fn exit_cleanly_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("regtally-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                for (path, empty_parent_too) in lock_registry().iter() {
                    remove_while_written(path);
                    if let (true, Some(parent)) = (empty_parent_too, path.parent()) {
                        let _ = fs::remove_dir(parent);
                    }
                }
                eprintln!("regtally: interrupted by signal {signal}; temporary files removed");
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// The name of a run's folder inside the temporary folder: `run-<pid>-<start in ns>`.
const RUN_PREFIX: &str = "run-";
/// The same folder's name while it is made, before its lock is held.
const MAKING_PREFIX: &str = "making-";
const LOCK_FILE: &str = "lock";

/// One run's folder of temporary files, `TEMP/run-<pid>-<ns>/`, held by a lock on its `lock`
/// file for as long as the run lives. Dropped, it is removed with everything in it; a folder
/// whose lock nobody holds was left by a run that was killed, and the next run removes it.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    /// Holds the folder's lock until the run ends.
    _lock: File,
}

impl SpillDir {
    /// Creates the run's folder inside `parent` (creating `parent` if need be), after removing
    /// what killed runs left in `parent`. `stale_outputs` are folders where those runs may have
    /// left staged outputs (see [`SpillDir::staged_suffix`]); they are removed too.
    pub fn create(parent: &Path, stale_outputs: &[&Path]) -> io::Result<SpillDir> {
        let with_path =
            |e: io::Error, p: &Path| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
        remove_stale_runs(parent, stale_outputs);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}-{nanos}", std::process::id());
        // Made and locked under another name, then renamed: a run sweeping stale folders
        // must never find this one before its lock is held.
        let making = parent.join(format!("{MAKING_PREFIX}{name}"));
        let path = parent.join(format!("{RUN_PREFIX}{name}"));
        // Another run may remove `parent` the moment it finds it empty: create it again then.
        fs::create_dir(&making)
            .or_else(|_| fs::create_dir_all(parent).and_then(|()| fs::create_dir(&making)))
            .map_err(|e| with_path(e, &making))?;
        lock_registry().push((making.clone(), true));
        let lock = File::create(making.join(LOCK_FILE))
            .and_then(|f| f.try_lock().map(|()| f).map_err(io::Error::from))
            .and_then(|f| fs::rename(&making, &path).map(|()| f))
            .map_err(|e| {
                let _ = fs::remove_dir_all(&making);
                keep_on_signal(&making);
                with_path(e, &making)
            })?;
        keep_on_signal(&making);
        lock_registry().push((path.clone(), true));
        Ok(SpillDir { path, _lock: lock })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The suffix this run gives its staged outputs (`.aggregates.parquet.tmp-run-…`), so that
    /// a later run can tell whose they are.
    pub fn staged_suffix(&self) -> String {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        format!(".tmp-{name}")
    }
}

impl Drop for SpillDir {
    /// Removes the run's folder, and the temporary folder too if no other run is using it, so
    /// that a run leaves nothing behind.
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
        keep_on_signal(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// Removes the run folders in `parent` whose lock is free (their run is gone), and the staged
/// outputs those runs left in `stale_outputs`. Best effort: what cannot be removed stays.
fn remove_stale_runs(parent: &Path, stale_outputs: &[&Path]) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let older_than_a_minute = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 60))
        };
        let stale = if name.starts_with(RUN_PREFIX) {
            File::open(dir.join(LOCK_FILE)).is_ok_and(|f| f.try_lock().is_ok())
        } else {
            // Being made this instant, or left by a run killed while making it: only the
            // second is older than a minute.
            name.starts_with(MAKING_PREFIX) && older_than_a_minute()
        };
        if !stale {
            continue;
        }
        let _ = fs::remove_dir_all(&dir);
        let suffix = format!(".tmp-{name}");
        for folder in stale_outputs {
            for file in fs::read_dir(folder).into_iter().flatten().flatten() {
                if file.file_name().to_string_lossy().ends_with(&suffix) {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
    }
}

/// A spill file error that names the file (a full disk says where).
pub(crate) fn spill_error(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot spill to the temporary folder {}: {e}",
            path.parent().unwrap_or(path).display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_folder_is_removed_when_dropped_and_stale_ones_by_the_next_run() {
        let parent = tempfile::tempdir().unwrap();
        let outputs = tempfile::tempdir().unwrap();
        let live = SpillDir::create(parent.path(), &[]).unwrap();
        // A folder left by a killed run: its lock file is there, and nobody holds it.
        let dead = parent.path().join("run-1-2");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join(LOCK_FILE), "").unwrap();
        fs::write(dead.join("dedup.runs"), "x").unwrap();
        let left = outputs.path().join(".rejects.jsonl.tmp-run-1-2");
        let other = outputs.path().join(".rejects.jsonl.tmp-run-9-9");
        fs::write(&left, "").unwrap();
        fs::write(&other, "").unwrap();
        let next = SpillDir::create(parent.path(), &[outputs.path()]).unwrap();
        assert!(!dead.exists());
        assert!(!left.exists());
        assert!(other.exists(), "another run's staged file stays");
        assert!(live.path().exists(), "a live run's folder stays");
        assert_ne!(live.path(), next.path());
        let path = next.path().to_path_buf();
        drop(next);
        assert!(!path.exists());
    }
}
