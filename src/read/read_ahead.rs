//! Read-ahead: the kernel asked for each input file's next bytes while the cores parse the
//! bytes before them (Linux only; elsewhere nothing is asked).

use std::fs::File;

/// How far ahead of the reader a file's bytes are asked for.
pub const READ_AHEAD_BYTES: u64 = 32 << 20;

/// Asks the kernel to read a file's next [`READ_AHEAD_BYTES`] into the page cache while the
/// bytes before them are parsed (`posix_fadvise` `WILLNEED`, and `SEQUENTIAL` for the
/// kernel's own read-ahead), so that a file not wholly in memory is read from disk while the
/// cores work, not while they wait.
///
/// A backfill over archives not read for months finds most of their pages on disk, and a
/// machine that reclaims cold page cache (as the benchmark's VM does: benches/README.md)
/// evicts even recent ones; without the advice, every read of an evicted page stops a core.
/// The advice is a hint: it reads no memory of ours and cannot fail a run.
pub struct ReadAhead {
    /// The input's file, opened once more (its own descriptor: the stream owns the other).
    #[cfg(target_os = "linux")]
    file: File,
    /// Bytes from the start of the file asked for so far.
    advised: u64,
}

impl ReadAhead {
    /// Starts read-ahead of `file` from its start; `None` where it cannot be asked for.
    pub fn of(file: &File) -> Option<ReadAhead> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let file = file.try_clone().ok()?;
            // SAFETY: `posix_fadvise` only advises the kernel about the file behind a
            // descriptor we own; it touches no memory of this process.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
            let mut read_ahead = ReadAhead { file, advised: 0 };
            read_ahead.ahead_of(0);
            Some(read_ahead)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = file;
            None
        }
    }

    /// The reader is at byte `position`: once less than half the window is asked for ahead
    /// of it, asks for the rest of the window.
    pub fn ahead_of(&mut self, position: u64) {
        if self.advised >= position.saturating_add(READ_AHEAD_BYTES / 2) {
            return;
        }
        let end = position.saturating_add(READ_AHEAD_BYTES);
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let start = self.advised.max(position);
            let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
                return;
            };
            // SAFETY: as in `ReadAhead::of`.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
        }
        self.advised = end;
    }

    /// Bytes from the start of the file asked for so far.
    #[cfg(test)]
    fn advised(&self) -> u64 {
        self.advised
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reader asks for the next window once less than half of it is ahead, and only then,
    /// from where it had asked up to.
    #[cfg(target_os = "linux")]
    #[test]
    fn read_ahead_keeps_half_a_window_to_a_window_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"{}\n").unwrap();
        let mut p = ReadAhead::of(&File::open(&path).unwrap()).unwrap();
        assert_eq!(p.advised(), READ_AHEAD_BYTES);
        let half = READ_AHEAD_BYTES / 2;
        p.ahead_of(half);
        assert_eq!(
            p.advised(),
            READ_AHEAD_BYTES,
            "half a window ahead: nothing asked"
        );
        p.ahead_of(half + 1);
        assert_eq!(p.advised(), half + 1 + READ_AHEAD_BYTES);
        // A reader that jumped past what was asked for asks from where it is.
        p.ahead_of(10 * READ_AHEAD_BYTES);
        assert_eq!(p.advised(), 11 * READ_AHEAD_BYTES);
    }

    /// On Linux, a file's pages evicted from the page cache are read back in by the advice
    /// alone, before anything reads them (checked with `mincore`).
    #[cfg(target_os = "linux")]
    #[test]
    #[ignore = "needs TMPDIR on a disk: the pages of a tmpfs cannot be evicted"]
    fn read_ahead_reads_an_evicted_file_into_the_page_cache() {
        use std::os::fd::AsRawFd;
        // A page of tmpfs cannot be evicted: the test needs TMPDIR on a disk.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let len = 8 << 20;
        std::fs::write(&path, vec![b'x'; len]).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        let fd = file.as_raw_fd();
        // SAFETY: `posix_fadvise` touches no memory of ours; `sysconf` only answers.
        let page = unsafe {
            libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
            usize::try_from(libc::sysconf(libc::_SC_PAGESIZE)).unwrap()
        };
        let pages = len.div_ceil(page);
        let resident = || -> usize {
            // SAFETY: a fresh read-only shared mapping of the whole file, read only by
            // `mincore` (one byte per page into `resident`, `pages` long) and unmapped before
            // returning.
            unsafe {
                let at = libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ,
                    libc::MAP_SHARED,
                    fd,
                    0,
                );
                assert_ne!(at, libc::MAP_FAILED);
                let mut resident = vec![0u8; pages];
                assert_eq!(libc::mincore(at, len, resident.as_mut_ptr()), 0);
                libc::munmap(at, len);
                resident.iter().filter(|p| *p & 1 == 1).count()
            }
        };
        assert!(
            resident() < pages / 2,
            "the file was not evicted: is TMPDIR ({}) on a tmpfs?",
            dir.path().display()
        );
        let _read_ahead = ReadAhead::of(&file).unwrap();
        // The reads it asked for complete on their own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while resident() < pages && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(resident(), pages);
    }
}
