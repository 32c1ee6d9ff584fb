//! Reading: input paths to byte chunks of whole lines (SPEC §1).
//!
//! Each input is one byte stream (plain, or gzip or zstd recognised by magic bytes). A single
//! reader per input cuts the stream at newlines into chunks that workers parse in parallel, so
//! one large file keeps every core busy. A line longer than `--max-line-bytes` is skipped over as
//! it streams by: only its first KiB is kept, for the reject record.

pub mod user_ids;

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::Xxh3;

/// The UTF-8 byte-order mark, dropped from the start of an input.
const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// How much of a rejected line is kept for `rejects.jsonl`.
pub const REJECT_TEXT_BYTES: usize = 1024;

/// One input: a file, or standard input (`-`).
///
/// A file is known by its canonical path (absolute, symbolic links resolved), so that one
/// file reached by two spellings, through a link or through overlapping folders is one input.
/// Its name in rejects and the summary is that path relative to the current folder when the
/// file is inside it, else the canonical path itself: neither depends on how it was named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputPath {
    File { canonical: PathBuf, name: String },
    Stdin,
}

impl InputPath {
    /// A file input, named relative to `cwd` (itself canonical) when it is inside it.
    pub fn file(canonical: PathBuf, cwd: Option<&Path>) -> InputPath {
        let name = cwd
            .and_then(|cwd| canonical.strip_prefix(cwd).ok())
            .filter(|rel| !rel.as_os_str().is_empty())
            .unwrap_or(&canonical)
            .to_string_lossy()
            .into_owned();
        InputPath::File { canonical, name }
    }

    /// The name used in messages, rejects and the summary.
    pub fn name(&self) -> &str {
        match self {
            InputPath::File { name, .. } => name,
            InputPath::Stdin => "-",
        }
    }

    /// The sort key of SPEC §1: byte-wise order of canonical paths; standard input sorts as
    /// `-`, before every absolute path.
    pub fn sort_key(&self) -> &[u8] {
        match self {
            InputPath::File { canonical, .. } => canonical.as_os_str().as_encoded_bytes(),
            InputPath::Stdin => b"-",
        }
    }
}

/// How one input was read.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputReport {
    pub path: String,
    pub compression: Option<Compression>,
    /// Bytes read from the file (compressed size for compressed inputs).
    pub bytes: u64,
    /// Bytes after decompression.
    pub decoded_bytes: u64,
    pub lines: u64,
    /// xxh3-128 of the file's bytes (32 hex digits), when it was read completely and
    /// the run asked for it (with a state, whose manifest records it).
    pub content_hash: Option<String>,
    /// Why the input could not be read completely.
    pub error: Option<String>,
}

/// The inputs' size on disk (compressed ones hold more than they weigh; standard input, nothing).
pub fn total_bytes(inputs: &[InputPath]) -> u64 {
    inputs
        .iter()
        .filter_map(|i| match i {
            InputPath::File { canonical, .. } => std::fs::metadata(canonical).ok().map(|m| m.len()),
            InputPath::Stdin => None,
        })
        .sum()
}

/// A progress bar of `total` bytes read, on stderr, when `shown`.
pub fn progress_bar(shown: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !shown {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// Resolves command-line arguments into the inputs to read, in input order.
///
/// Folders are walked recursively; hidden entries (name starting with `.`) inside them are
/// skipped, a hidden path named on the command line is read. Symbolic links are followed, each
/// folder only once. A file reached more than once, by any path, is read once.
pub fn discover_inputs(args: &[PathBuf]) -> io::Result<Vec<InputPath>> {
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize()).ok();
    let mut files = Vec::new();
    let mut stdin = false;
    let mut seen_dirs = std::collections::HashSet::new();
    for arg in args {
        if arg.as_os_str() == "-" {
            stdin = true;
            continue;
        }
        let meta = std::fs::metadata(arg)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", arg.display())))?;
        if meta.is_dir() {
            walk(arg, &mut files, &mut seen_dirs)?;
        } else {
            files.push(arg.clone());
        }
    }
    let mut out: Vec<InputPath> = files
        .into_iter()
        .map(|f| match f.canonicalize() {
            Ok(canonical) => InputPath::file(canonical, cwd.as_deref()),
            // A pipe named by the shell (`<(zcat x.gz)` is `/dev/fd/63`, a link to no path),
            // or a file gone since the folder was walked: read by the path as given, where it
            // is read or fails as one input.
            Err(_) => InputPath::File {
                name: f.to_string_lossy().into_owned(),
                canonical: cwd.as_deref().map_or_else(|| f.clone(), |cwd| cwd.join(&f)),
            },
        })
        .collect();
    if stdin {
        out.push(InputPath::Stdin);
    }
    out.sort_by(|a, b| a.sort_key().cmp(b.sort_key()));
    out.dedup();
    Ok(out)
}

fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> io::Result<()> {
    let canonical = dir.canonicalize()?;
    if !seen.insert(canonical) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let meta = std::fs::metadata(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            walk(&path, out, seen)?;
        } else if meta.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// The compression an input was found to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    /// Recognises gzip (`1f 8b`) and zstd (`28 b5 2f fd`) by their first bytes.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::Plain
        }
    }
}

/// How many raw (compressed) bytes were taken from an input, for progress and error offsets,
/// and, for a state's manifest of consumed inputs, their hash.
#[derive(Default)]
pub struct RawBytes {
    count: AtomicU64,
    hash: Option<Mutex<Xxh3>>,
}

impl RawBytes {
    /// Counts bytes, and hashes them if `hashed`.
    fn new(hashed: bool) -> RawBytes {
        RawBytes {
            count: AtomicU64::new(0),
            hash: hashed.then(|| Mutex::new(Xxh3::new())),
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// xxh3-128 of the bytes read so far, as 32 hex digits, if they are hashed.
    pub fn hash(&self) -> Option<String> {
        let hash = self.hash.as_ref()?;
        let digest = hash.lock().unwrap_or_else(|p| p.into_inner()).digest128();
        Some(format!("{digest:032x}"))
    }
}

/// Counts and hashes the raw bytes a decoder takes from a compressed input.
struct CountingReader<R> {
    inner: R,
    raw: Arc<RawBytes>,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.raw.count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(hash) = &self.raw.hash {
            hash.lock()
                .unwrap_or_else(|p| p.into_inner())
                .update(&buf[..n]);
        }
        if let Some(p) = &self.progress {
            p.inc(n as u64);
        }
        Ok(n)
    }
}

/// An opened input: its decoded byte stream and, for compressed inputs, a handle on the raw
/// bytes read (for plain inputs the raw bytes are the decoded ones: the chunker hashes them).
pub struct OpenInput {
    pub stream: Box<dyn Read + Send>,
    pub compression: Compression,
    pub raw_bytes: Option<Arc<RawBytes>>,
    /// For a file (on Linux), the kernel's read-ahead of its next bytes.
    pub prefetch: Option<Prefetch>,
}

/// How far ahead of the reader a file's bytes are asked for.
pub const PREFETCH_BYTES: u64 = 32 << 20;

/// Asks the kernel to read a file's next [`PREFETCH_BYTES`] into the page cache while the
/// bytes before them are parsed (`posix_fadvise` `WILLNEED`, and `SEQUENTIAL` for the
/// kernel's own read-ahead), so that a file not wholly in memory is read from disk while the
/// cores work, not while they wait.
///
/// On the benchmark's VM the kernel keeps evicting cold pages of the page cache (README,
/// "Why a page cache is not always warm here"): in two 4M runs `perf sched` found the
/// threads blocked in `read` on evicted pages for 98 and 668 ms in all. A backfill over
/// archives not read for months finds most of its pages on disk. The advice is a hint: it
/// reads no memory of ours and cannot fail a run.
pub struct Prefetch {
    /// The input's file, opened once more (its own descriptor: the stream owns the other).
    #[cfg(target_os = "linux")]
    file: File,
    /// Bytes from the start of the file asked for so far.
    advised: u64,
}

impl Prefetch {
    /// Starts read-ahead of `file` from its start; `None` where it cannot be asked for.
    fn of(file: &File) -> Option<Prefetch> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let file = file.try_clone().ok()?;
            // SAFETY: `posix_fadvise` only advises the kernel about the file behind a
            // descriptor we own; it touches no memory of this process.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
            let mut prefetch = Prefetch { file, advised: 0 };
            prefetch.ahead_of(0);
            Some(prefetch)
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
        if self.advised >= position.saturating_add(PREFETCH_BYTES / 2) {
            return;
        }
        let end = position.saturating_add(PREFETCH_BYTES);
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let start = self.advised.max(position);
            let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
                return;
            };
            // SAFETY: as in `Prefetch::of`.
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

/// Opens an input and wraps it in the decoder its magic bytes call for; with `hashed`, the
/// raw bytes of a compressed input are hashed as they are read.
///
/// A plain input is handed on unwrapped, so that reads go straight from the file into the
/// chunk buffer (a wrapper without `read_buf` makes std zero every buffer first); the caller
/// counts its bytes and drives `progress` for it.
pub fn open_input(
    input: &InputPath,
    progress: Option<indicatif::ProgressBar>,
    hashed: bool,
) -> io::Result<OpenInput> {
    let (mut raw, prefetch): (Box<dyn Read + Send>, _) = match input {
        InputPath::File { canonical, .. } => {
            let file = File::open(canonical)?;
            let prefetch = Prefetch::of(&file);
            (Box::new(file), prefetch)
        }
        InputPath::Stdin => (Box::new(io::stdin()), None),
    };
    let mut head = Vec::with_capacity(4);
    (&mut raw).take(4).read_to_end(&mut head)?;
    let compression = Compression::sniff(&head);
    let raw = io::Cursor::new(head).chain(raw);
    if compression == Compression::Plain {
        return Ok(OpenInput {
            stream: Box::new(raw),
            compression,
            raw_bytes: None,
            prefetch,
        });
    }
    let raw_bytes = Arc::new(RawBytes::new(hashed));
    let counting = CountingReader {
        inner: raw,
        raw: raw_bytes.clone(),
        progress,
    };
    let buffered = BufReader::with_capacity(256 * 1024, counting);
    let stream: Box<dyn Read + Send> = match compression {
        // Log rotation appends gzip members; the plain decoder would stop after the first.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        _ => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    };
    Ok(OpenInput {
        stream,
        compression,
        raw_bytes: Some(raw_bytes),
        prefetch,
    })
}

/// A piece of an input handed to a parser.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Whole lines: every line ends in `\n` except perhaps the input's very last one.
    Lines(Vec<u8>),
    /// One line longer than the limit, of which only the start was kept.
    Overlong { prefix: Vec<u8>, len: u64 },
}

/// Buffers handed back after use, to be filled again: chunk buffers from the parsers to the
/// reader, record vectors from the consumer to the parsers.
///
/// Fresh multi-megabyte buffers cost page faults and zeroing on every chunk (a tenth of a
/// one-thread run), and freeing them unmaps their pages, which interrupts every core to flush
/// its address translations; recycled ones are already mapped.
pub struct BufferPool<T = u8> {
    idle: Arc<std::sync::Mutex<Vec<Vec<T>>>>,
    /// How many idle buffers are kept; more would only hold memory.
    keep: usize,
}

impl<T> Clone for BufferPool<T> {
    fn clone(&self) -> Self {
        BufferPool {
            idle: self.idle.clone(),
            keep: self.keep,
        }
    }
}

impl<T> Default for BufferPool<T> {
    fn default() -> BufferPool<T> {
        BufferPool::new(4)
    }
}

impl<T> BufferPool<T> {
    /// A pool that keeps up to `keep` idle buffers: as many as chunks may be in flight.
    pub fn new(keep: usize) -> BufferPool<T> {
        BufferPool {
            idle: Arc::default(),
            keep,
        }
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, mut buf: Vec<T>) {
        buf.clear();
        let mut pool = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.keep {
            pool.push(buf);
        }
    }

    /// An empty buffer, recycled when one is idle.
    pub fn take(&self, capacity: usize) -> Vec<T> {
        let recycled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = recycled.unwrap_or_default();
        buf.reserve(capacity);
        buf
    }
}

/// Cuts a byte stream into [`Chunk`]s at newlines.
pub struct Chunker<R> {
    pool: BufferPool,
    reader: R,
    buf: Vec<u8>,
    chunk_bytes: usize,
    max_line_bytes: usize,
    eof: bool,
    /// A read error, reported once the complete lines before it are handed out.
    failed: Option<io::Error>,
    /// Nothing decoded yet: a byte-order mark may still come.
    at_start: bool,
    /// Decoded bytes taken from `reader` so far.
    pub decoded_bytes: u64,
    /// When set, every decoded byte is hashed (for plain inputs, whose decoded bytes are the
    /// file's bytes).
    pub hasher: Option<Xxh3>,
}

impl<R: Read> Chunker<R> {
    /// `chunk_bytes` is the size a chunk is cut at (at least one line, so it may be larger);
    /// `max_line_bytes` the longest line kept whole.
    pub fn new(reader: R, chunk_bytes: usize, max_line_bytes: usize) -> Chunker<R> {
        Chunker::with_pool(reader, chunk_bytes, max_line_bytes, BufferPool::default())
    }

    /// As [`Chunker::new`], taking chunk buffers from `pool`.
    pub fn with_pool(
        reader: R,
        chunk_bytes: usize,
        max_line_bytes: usize,
        pool: BufferPool,
    ) -> Chunker<R> {
        Chunker {
            buf: pool.take(0),
            pool,
            reader,
            chunk_bytes: chunk_bytes.max(1),
            max_line_bytes,
            eof: false,
            failed: None,
            at_start: true,
            decoded_bytes: 0,
            hasher: None,
        }
    }

    /// The next chunk, or `None` at the end of the stream.
    ///
    /// After a read error (a corrupt or truncated archive) the complete lines read before it
    /// still come out, so that `--keep-going` loses only what really could not be read; the
    /// error follows, and the incomplete line it cut is dropped.
    pub fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        loop {
            let tail_start = memchr::memrchr(b'\n', &self.buf).map_or(0, |p| p + 1);
            if let Some(e) = self.failed.take() {
                if tail_start > 0 {
                    self.failed = Some(e);
                    return Ok(Some(self.split_at(tail_start)));
                }
                self.buf.clear();
                return Err(e);
            }
            let tail_len = self.buf.len() - tail_start;
            if tail_len > self.max_line_bytes {
                if tail_start > 0 {
                    return Ok(Some(self.split_at(tail_start)));
                }
                return self.skip_overlong().map(Some);
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Chunk::Lines(std::mem::take(&mut self.buf))));
            }
            if self.buf.len() >= self.chunk_bytes && tail_start > 0 {
                return Ok(Some(self.split_at(tail_start)));
            }
            if let Err(e) = self.fill() {
                self.failed = Some(e);
            }
        }
    }

    /// Returns `buf[..at]` as a chunk and keeps the rest for the next one.
    fn split_at(&mut self, at: usize) -> Chunk {
        let mut rest = self
            .pool
            .take(self.chunk_bytes.max(self.buf.len() - at) + 64 * 1024);
        rest.extend_from_slice(&self.buf[at..]);
        self.buf.truncate(at);
        Chunk::Lines(std::mem::replace(&mut self.buf, rest))
    }

    /// Appends up to one chunk's worth of bytes. `read_to_end` on a `take` reads straight into
    /// the buffer's spare capacity, without zeroing it first as a plain `read` into a resized
    /// buffer would (that zeroing was a tenth of the instructions of a run).
    fn fill(&mut self) -> io::Result<()> {
        let want = self
            .chunk_bytes
            .saturating_sub(self.buf.len())
            .max(64 * 1024);
        self.buf.reserve(want);
        let before = self.buf.len();
        let result = (&mut self.reader)
            .take(want as u64)
            .read_to_end(&mut self.buf);
        let n = self.buf.len() - before;
        self.decoded_bytes += n as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&self.buf[before..]);
        }
        if n < want && result.is_ok() {
            self.eof = true;
        }
        // Some tools start a file with a UTF-8 byte-order mark; it is not part of the first line.
        if self.at_start && (self.buf.len() >= 3 || self.eof || result.is_err()) {
            self.at_start = false;
            if self.buf.starts_with(UTF8_BOM) {
                self.buf.drain(..UTF8_BOM.len());
            }
        }
        result?;
        Ok(())
    }

    /// `buf` holds only the start of a line that is already too long: keep its first KiB and
    /// read on to its newline without storing the rest.
    fn skip_overlong(&mut self) -> io::Result<Chunk> {
        let prefix = self.buf[..self.buf.len().min(REJECT_TEXT_BYTES)].to_vec();
        let mut len = self.buf.len() as u64;
        self.buf.clear();
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            let n = match self.reader.read(&mut scratch) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.decoded_bytes += n as u64;
            if let Some(h) = &mut self.hasher {
                h.update(&scratch[..n]);
            }
            if n == 0 {
                self.eof = true;
                return Ok(Chunk::Overlong { prefix, len });
            }
            if let Some(p) = memchr::memchr(b'\n', &scratch[..n]) {
                len += p as u64;
                self.buf.extend_from_slice(&scratch[p + 1..n]);
                return Ok(Chunk::Overlong { prefix, len });
            }
            len += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn chunks(data: &[u8], chunk: usize, max_line: usize) -> Vec<Chunk> {
        let mut c = Chunker::new(data, chunk, max_line);
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk().unwrap() {
            out.push(ch);
        }
        assert_eq!(c.decoded_bytes, data.len() as u64);
        out
    }

    fn joined(chs: &[Chunk]) -> Vec<u8> {
        chs.iter()
            .flat_map(|c| match c {
                Chunk::Lines(v) => v.clone(),
                Chunk::Overlong { .. } => b"<long>\n".to_vec(),
            })
            .collect()
    }

    #[test]
    fn chunks_end_at_newlines_and_lose_nothing() {
        let data: Vec<u8> = (0..1000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        for size in [1, 7, 100, 4096, 1 << 20] {
            let chs = chunks(&data, size, 1 << 20);
            assert_eq!(joined(&chs), data, "chunk size {size}");
            for c in &chs {
                let Chunk::Lines(v) = c else { panic!() };
                assert_eq!(v.last(), Some(&b'\n'));
            }
        }
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_dropped_and_only_there() {
        let mut c = Chunker::new(&b"\xEF\xBB\xBFone\n\xEF\xBB\xBFtwo\n"[..], 1 << 20, 100);
        assert_eq!(
            c.next_chunk().unwrap(),
            Some(Chunk::Lines(b"one\n\xEF\xBB\xBFtwo\n".to_vec()))
        );
        // Arriving a byte at a time, as from a pipe.
        let bytes = b"\xEF\xBB\xBFx\n";
        let reader = std::io::Read::chain(&bytes[..1], &bytes[1..2]).chain(&bytes[2..]);
        let mut c = Chunker::new(reader, 1, 100);
        assert_eq!(c.next_chunk().unwrap(), Some(Chunk::Lines(b"x\n".to_vec())));
        assert_eq!(
            chunks(b"\xEF\xBB", 10, 100),
            [Chunk::Lines(b"\xEF\xBB".to_vec())]
        );
    }

    #[test]
    fn last_line_without_newline_is_kept() {
        let chs = chunks(b"a\nb", 1, 100);
        assert_eq!(joined(&chs), b"a\nb");
        assert!(chunks(b"", 10, 100).is_empty());
    }

    #[test]
    fn overlong_lines_are_skipped_with_a_prefix() {
        // Longer than one read, so the line is seen growing past the limit and skipped.
        let long = vec![b'x'; 200_000];
        let mut data = b"short\n".to_vec();
        data.extend_from_slice(&long);
        data.extend_from_slice(b"\nafter\n");
        let chs = chunks(&data, 64, 100);
        assert!(joined(&chs) == b"short\n<long>\nafter\n");
        let Some(Chunk::Overlong { prefix, len }) =
            chs.iter().find(|c| matches!(c, Chunk::Overlong { .. }))
        else {
            panic!("no overlong chunk")
        };
        assert_eq!(*len, 200_000);
        assert_eq!(prefix.len(), REJECT_TEXT_BYTES);
        // An overlong last line without a newline.
        let chs = chunks(&long, 64, 100);
        assert!(
            chs == [Chunk::Overlong {
                prefix: vec![b'x'; REJECT_TEXT_BYTES],
                len: 200_000
            }]
        );
    }

    #[test]
    fn long_lines_read_in_one_block_reach_the_parser_whole() {
        // Shorter than one read: the chunk carries it and the parser rejects it by length.
        let mut data = vec![b'x'; 5000];
        data.push(b'\n');
        assert!(chunks(&data, 64, 100) == [Chunk::Lines(data.clone())]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut data = vec![b'y'; 100];
        data.push(b'\n');
        assert_eq!(chunks(&data, 10, 100), [Chunk::Lines(data.clone())]);
    }

    /// Yields its bytes, then fails.
    struct FailingReader(&'static [u8]);

    impl Read for FailingReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "truncated"));
            }
            let n = self.0.len().min(buf.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn complete_lines_before_a_read_error_come_out_first() {
        let mut c = Chunker::new(FailingReader(b"one\ntwo\nthr"), 1 << 20, 100);
        assert_eq!(
            c.next_chunk().unwrap(),
            Some(Chunk::Lines(b"one\ntwo\n".to_vec()))
        );
        assert_eq!(
            c.next_chunk().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn magic_bytes_pick_the_decoder() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"{\"events\""), Compression::Plain);
        assert_eq!(Compression::sniff(b""), Compression::Plain);
    }

    #[test]
    fn concatenated_gzip_members_are_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rotated.log");
        let mut file = File::create(&path).unwrap();
        for part in [&b"one\n"[..], b"two\n"] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(part).unwrap();
            file.write_all(&enc.finish().unwrap()).unwrap();
        }
        drop(file);
        let mut open = open_input(&InputPath::file(path, None), None, true).unwrap();
        assert_eq!(open.compression, Compression::Gzip);
        let mut text = String::new();
        open.stream.read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }

    /// A compressed input's raw bytes are hashed only when asked (for a state): nothing else
    /// reads the hash.
    #[test]
    fn raw_bytes_are_hashed_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("one.zst");
        let bytes = zstd::encode_all(&b"one\n"[..], 1).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        for hashed in [true, false] {
            let mut open = open_input(&InputPath::file(path.clone(), None), None, hashed).unwrap();
            std::io::copy(&mut open.stream, &mut std::io::sink()).unwrap();
            let raw = open.raw_bytes.unwrap();
            assert_eq!(raw.count(), bytes.len() as u64);
            let want = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
            assert_eq!(raw.hash(), hashed.then_some(want));
        }
    }

    #[test]
    fn concatenated_zstd_frames_are_all_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames");
        let mut bytes = zstd::encode_all(&b"one\n"[..], 1).unwrap();
        bytes.extend(zstd::encode_all(&b"two\n"[..], 1).unwrap());
        std::fs::write(&path, bytes).unwrap();
        let mut open = open_input(&InputPath::file(path, None), None, true).unwrap();
        assert_eq!(open.compression, Compression::Zstd);
        let mut text = String::new();
        open.stream.read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }

    /// The reader asks for the next window once less than half of it is ahead, and only then,
    /// from where it had asked up to.
    #[cfg(target_os = "linux")]
    #[test]
    fn prefetch_keeps_half_a_window_to_a_window_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, b"{}\n").unwrap();
        let mut p = Prefetch::of(&File::open(&path).unwrap()).unwrap();
        assert_eq!(p.advised(), PREFETCH_BYTES);
        let half = PREFETCH_BYTES / 2;
        p.ahead_of(half);
        assert_eq!(
            p.advised(),
            PREFETCH_BYTES,
            "half a window ahead: nothing asked"
        );
        p.ahead_of(half + 1);
        assert_eq!(p.advised(), half + 1 + PREFETCH_BYTES);
        // A reader that jumped past what was asked for asks from where it is.
        p.ahead_of(10 * PREFETCH_BYTES);
        assert_eq!(p.advised(), 11 * PREFETCH_BYTES);
    }

    /// On Linux, a file's pages evicted from the page cache are read back in by the advice
    /// alone, before anything reads them (checked with `mincore`).
    #[cfg(target_os = "linux")]
    #[test]
    fn prefetch_reads_an_evicted_file_into_the_page_cache() {
        use std::os::fd::AsRawFd;
        // Beside the crate, on disk: a page of tmpfs cannot be evicted.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
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
        assert!(resident() < pages / 2, "the file was evicted");
        let _prefetch = Prefetch::of(&file).unwrap();
        // The reads it asked for complete on their own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while resident() < pages && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(resident(), pages);
    }

    #[test]
    fn discovery_sorts_skips_hidden_and_dedups() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b/sub")).unwrap();
        for f in ["b/sub/z.log", "b/a.log", "b/.hidden", "a.gz"] {
            std::fs::write(d.join(f), "").unwrap();
        }
        std::fs::create_dir_all(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/x"), "").unwrap();
        let found = discover_inputs(&[d.join("b"), d.to_path_buf(), d.join("a.gz")]).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|i| i.name().replace(&d.display().to_string(), ""))
            .collect();
        // Each file once, whichever argument reached it first, in byte-wise order.
        assert_eq!(names, ["/a.gz", "/b/a.log", "/b/sub/z.log"]);
    }
}
