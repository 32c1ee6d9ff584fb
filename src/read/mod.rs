//! Reading: input paths to byte chunks of whole lines (SPEC §1).
//!
//! Each input is one byte stream (plain, or gzip or zstd recognised by magic bytes). A single
//! reader per input cuts the stream at newlines into chunks that workers parse in parallel, so
//! one large file keeps every core busy. A line longer than `--max-line-bytes` is skipped over as
//! it streams by: only its first KiB is kept, for the reject record.

pub mod chunker;
mod gzip;
pub mod object;
pub mod read_ahead;
pub mod user_ids;

pub use chunker::{continues_record, BufferPool, Chunk, Chunker};
pub use read_ahead::ReadAhead;

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use xxhash_rust::xxh3::Xxh3;

/// A decoded byte stream, as the chunker takes it: appended to a chunk's buffer.
pub trait Source {
    /// Appends at least `want` bytes to `buf`, fewer only where the stream ends (or fails). It
    /// may append more, up to the room `buf` has.
    fn append(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<()>;
}

/// Any reader appends by reading into the buffer's spare room. `read_to_end` on a `take` reads
/// straight into it from a file, which fills a `BorrowedBuf` itself; any other reader gets the
/// room zeroed first.
impl<R: Read> Source for R {
    fn append(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
        self.take(want as u64).read_to_end(buf).map(drop)
    }
}

/// An opened input's decoded byte stream.
pub enum Stream {
    Read(Box<dyn Read + Send>),
    Gzip(Box<gzip::Gzip<BufReader<CountingReader<Raw>>>>),
}

impl Source for Stream {
    fn append(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
        match self {
            Stream::Read(r) => r.append(buf, want),
            Stream::Gzip(g) => g.append(buf, want),
        }
    }
}

/// Everything `source` appends, `want` bytes at a time (tests).
#[cfg(test)]
fn append_all(source: &mut impl Source, want: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let before = out.len();
        source.append(&mut out, want)?;
        if out.len() - before < want {
            return Ok(out);
        }
    }
}

#[cfg(test)]
impl Stream {
    /// The whole stream.
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        append_all(self, 64 << 10)
    }
}

/// An input's raw bytes: the few sniffed for its compression, then the rest.
type Raw = io::Chain<io::Cursor<Vec<u8>>, Box<dyn Read + Send>>;

/// The UTF-8 byte-order mark, dropped from the start of an input.
const UTF8_BOM: &[u8] = &[0xEF, 0xBB, 0xBF];

/// How much of a rejected line is kept for `rejects.jsonl`.
pub const REJECT_TEXT_BYTES: usize = 1024;

/// One input: a file, an object in object storage, or standard input (`-`).
///
/// A file is known by its canonical path (absolute, symbolic links resolved), so that one
/// file reached by two spellings, through a link or through overlapping folders is one input.
/// Its name in rejects and the summary is that path relative to the current folder when the
/// file is inside it, else the canonical path itself: neither depends on how it was named. An
/// object is known and named by its URL.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InputPath {
    File { canonical: PathBuf, name: String },
    Object(object::ListedObject),
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
            InputPath::Object(o) => &o.url,
            InputPath::Stdin => "-",
        }
    }

    /// The sort key of SPEC §1, the byte-wise order of URLs, in two parts that compare as
    /// their concatenation would: a file is `file://` and its canonical path, an object its URL,
    /// standard input `-`, before every URL.
    pub fn sort_key(&self) -> (&[u8], &[u8]) {
        match self {
            InputPath::File { canonical, .. } => {
                (b"file://", canonical.as_os_str().as_encoded_bytes())
            }
            InputPath::Object(o) => (o.url.as_bytes(), b""),
            InputPath::Stdin => (b"-", b""),
        }
    }
}

/// How one input was read.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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

impl InputReport {
    /// The report of an input not read yet.
    pub fn new(input: &InputPath) -> InputReport {
        InputReport {
            path: input.name().to_owned(),
            compression: None,
            bytes: 0,
            decoded_bytes: 0,
            lines: 0,
            content_hash: None,
            error: None,
        }
    }

    /// Records what the reader read of the input, once it ended (with `failed`, on an error):
    /// the bytes of the file and after decompression, and the file's hash when it was asked
    /// for and the input was read completely.
    pub fn read_to_end(
        &mut self,
        chunker: &Chunker<impl Source>,
        raw_bytes: Option<&RawBytes>,
        failed: bool,
    ) {
        self.decoded_bytes = chunker.decoded_bytes;
        let (bytes, hash) = match (raw_bytes, &chunker.hasher) {
            (Some(raw), _) => (raw.count(), raw.hash()),
            (None, Some(h)) => (self.decoded_bytes, Some(format!("{:032x}", h.digest128()))),
            (None, None) => (self.decoded_bytes, None),
        };
        self.bytes = bytes;
        if !failed {
            self.content_hash = hash;
        }
    }

    /// Records the input's `lines`, and the error that stopped its reading, if one did: where,
    /// by line and by byte, decoded and in the file.
    pub fn lines_read(&mut self, lines: u64, error: Option<io::Error>) {
        self.lines = lines;
        if let Some(e) = error {
            self.error = Some(format!(
                "read failed at line {} (decoded byte {}, file byte {}): {e}",
                lines + 1,
                self.decoded_bytes,
                self.bytes
            ));
        }
    }
}

/// The bytes of a side file (`--known-repositories`, `--user-ids`): a local path or a URL.
pub fn read_side_file(source: &Path) -> Result<Vec<u8>, String> {
    let text = source.to_string_lossy();
    if object::is_url(&text) {
        return object::read_whole(&text);
    }
    std::fs::read(source).map_err(|e| format!("{}: {e}", source.display()))
}

/// The inputs' size on disk (compressed ones hold more than they weigh; standard input, nothing).
pub fn total_bytes(inputs: &[InputPath]) -> u64 {
    inputs
        .iter()
        .filter_map(|i| match i {
            InputPath::File { canonical, .. } => std::fs::metadata(canonical).ok().map(|m| m.len()),
            InputPath::Object(o) => Some(o.size),
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
/// skipped, a hidden path named on the command line is read. Symbolic links are followed (a
/// link back to a folder above it is not). A file reached more than once, by any path, is read
/// once: inputs are known by their canonical path.
pub fn discover_inputs(args: &[PathBuf]) -> io::Result<Vec<InputPath>> {
    let cwd = std::env::current_dir().and_then(|d| d.canonicalize()).ok();
    let mut files = Vec::new();
    let mut objects = Vec::new();
    let mut stdin = false;
    for arg in args {
        if arg.as_os_str() == "-" {
            stdin = true;
            continue;
        }
        let text = arg.to_string_lossy();
        if object::is_url(&text) {
            objects.extend(object::list(&text).map_err(io::Error::other)?);
            continue;
        }
        let local;
        let arg = match text.strip_prefix("file://") {
            Some(_) => {
                local = url::Url::parse(&text)
                    .ok()
                    .and_then(|u| u.to_file_path().ok())
                    .ok_or_else(|| io::Error::other(format!("{text}: not a file URL")))?;
                &local
            }
            None => arg,
        };
        let meta = std::fs::metadata(arg)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", arg.display())))?;
        if meta.is_dir() {
            walk(arg, &mut files)?;
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
    out.extend(objects.into_iter().map(InputPath::Object));
    if stdin {
        out.push(InputPath::Stdin);
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup();
    Ok(out)
}

/// Adds every file under `dir` to `out`: hidden entries are skipped, links followed, and a
/// link back to a folder being walked is not followed again.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in entries {
        match entry {
            Ok(e) if e.file_type().is_file() => out.push(e.into_path()),
            Ok(_) => {}
            Err(e) if e.loop_ancestor().is_some() => {}
            Err(e) => {
                let kind = e.io_error().map_or(io::ErrorKind::Other, io::Error::kind);
                let path = e.path().unwrap_or(dir).display().to_string();
                let why = e
                    .into_io_error()
                    .map_or_else(|| "cannot walk".to_owned(), |e| e.to_string());
                return Err(io::Error::new(kind, format!("{path}: {why}")));
            }
        }
    }
    Ok(())
}

/// The compression an input was found to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
pub struct CountingReader<R> {
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
    pub stream: Stream,
    pub compression: Compression,
    pub raw_bytes: Option<Arc<RawBytes>>,
    /// For a file (on Linux), the kernel's read-ahead of its next bytes.
    pub read_ahead: Option<ReadAhead>,
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
    let (mut raw, read_ahead): (Box<dyn Read + Send>, _) = match input {
        InputPath::File { canonical, .. } => {
            let file = File::open(canonical)?;
            let read_ahead = ReadAhead::of(&file);
            (Box::new(file), read_ahead)
        }
        InputPath::Object(o) => (Box::new(object::ObjectReader::open(o)?), None),
        InputPath::Stdin => (Box::new(io::stdin()), None),
    };
    let mut head = Vec::with_capacity(4);
    (&mut raw).take(4).read_to_end(&mut head)?;
    let compression = Compression::sniff(&head);
    let raw: Raw = io::Cursor::new(head).chain(raw);
    if compression == Compression::Plain {
        return Ok(OpenInput {
            stream: Stream::Read(Box::new(raw)),
            compression,
            raw_bytes: None,
            read_ahead,
        });
    }
    let raw_bytes = Arc::new(RawBytes::new(hashed));
    let counting = CountingReader {
        inner: raw,
        raw: raw_bytes.clone(),
        progress,
    };
    let buffered = BufReader::with_capacity(256 * 1024, counting);
    let stream = match compression {
        Compression::Gzip => Stream::Gzip(Box::new(gzip::Gzip::new(buffered))),
        _ => Stream::Read(Box::new(zstd::stream::read::Decoder::with_buffer(
            buffered,
        )?)),
    };
    Ok(OpenInput {
        stream,
        compression,
        raw_bytes: Some(raw_bytes),
        read_ahead,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
        assert_eq!(open.stream.read_all().unwrap(), b"one\ntwo\n");
    }

    /// The gzip trailer's CRC-32 is checked, by the CPU's instructions where it has them (the
    /// members here are long enough for zlib-rs to take them): a member whose bytes do not
    /// match it is an error, not text.
    #[test]
    fn a_gzip_member_that_fails_its_crc_is_an_error() {
        let text: String = (0..2000).map(|i| format!("line {i}\n")).collect();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        let good = enc.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let read = |bytes: &[u8]| {
            let path = dir.path().join("x.gz");
            std::fs::write(&path, bytes).unwrap();
            let mut open = open_input(&InputPath::file(path, None), None, false).unwrap();
            open.stream.read_all()
        };
        assert_eq!(read(&good).unwrap(), text.as_bytes());
        let mut bad = good.clone();
        let crc_at = bad.len() - 8;
        bad[crc_at] ^= 1;
        assert!(read(&bad).is_err());
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
            open.stream.read_all().unwrap();
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
        assert_eq!(open.stream.read_all().unwrap(), b"one\ntwo\n");
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
        // A link back up (a loop) and a second way into `b`: neither adds an input.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("..", d.join("b/sub/up")).unwrap();
            std::os::unix::fs::symlink("b", d.join("c")).unwrap();
        }
        let found = discover_inputs(&[d.join("b"), d.to_path_buf(), d.join("a.gz")]).unwrap();
        let names: Vec<String> = found
            .iter()
            .map(|i| i.name().replace(&d.display().to_string(), ""))
            .collect();
        // Each file once, whichever argument or link reached it, in byte-wise order.
        assert_eq!(names, ["/a.gz", "/b/a.log", "/b/sub/z.log"]);
    }
}
