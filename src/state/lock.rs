//! The lock a run holds on its state folder (`regtally-state.lock`): two runs on one state
//! would each count only their own inputs.

use super::LOCK_FILE;
use std::io::{Read, Write};
use std::path::Path;

/// The lock a run holds on its state folder, from before it loads the state until its outputs
/// are in place. An advisory lock (`flock`) on `regtally-state.lock`, which holds the pid of
/// the run that took it: the kernel releases it when that run ends, however it ends, so a lock
/// left by a killed run is simply taken by the next.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of `dir`, or fails naming the lock and the process holding it.
    pub fn acquire(dir: &Path) -> anyhow::Result<StateLock> {
        use std::fs::TryLockError;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                anyhow::anyhow!("{}: cannot open the state's lock: {e}", path.display())
            })?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0)?;
                writeln!(file, "{}", std::process::id())?;
                Ok(StateLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "a process that has not written its pid yet".to_owned(),
                    pid => format!("process {pid}"),
                };
                anyhow::bail!(
                    "{}: the state is in use by another run ({holder}); no log was read. Run again when it has ended",
                    path.display()
                )
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("{}: cannot lock the state: {e}", path.display())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(LOCK_FILE), "{err}");
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(held);
        // The file stays, as a killed run leaves it; its lock is free.
        assert!(dir.path().join(LOCK_FILE).exists());
        StateLock::acquire(dir.path()).unwrap();
    }
}
