//! An input's decoded byte stream cut into chunks of whole records for the parse tasks, and the
//! pools their buffers are recycled through.
//!
//! A record is a line and the lines that continue it: lines that begin with JSON whitespace, `}`
//! or `]`, as every line inside a pretty-printed body does but the first (SPEC §1, "Bodies as the
//! registry sent them"). A chunk is cut only before a line that begins a record, so a body is
//! never split between two parse tasks; for one JSON value a line, every line begins a record
//! and the cut is where it always was, after the last newline.

use super::{Source, REJECT_TEXT_BYTES, UTF8_BOM};
use std::io;
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

/// A piece of an input handed to a parser.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    /// Whole records: every line ends in `\n` except perhaps the input's very last one.
    Lines(Vec<u8>),
    /// One record longer than the limit, of which only the start was kept: `len` bytes over
    /// `lines` lines.
    Overlong {
        prefix: Vec<u8>,
        len: u64,
        lines: u64,
    },
}

/// True for a line's first byte that continues the record of the lines before it: JSON
/// whitespace (a blank line, an indented line of a pretty-printed value) or the closing
/// bracket a pretty-printer puts at the start of a line.
#[inline(always)]
pub fn continues_record(first: u8) -> bool {
    matches!(first, b' ' | b'\t' | b'\r' | b'\n' | b'}' | b']')
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
    /// Where the last record that `buf` holds the first byte of begins (0: none but the
    /// first), and how far `buf` has been searched for it: each byte is looked at once,
    /// however many reads a long record takes to arrive.
    cut: usize,
    searched: usize,
    /// Decoded bytes taken from `reader` so far.
    pub decoded_bytes: u64,
    /// When set, every decoded byte is hashed (for plain inputs, whose decoded bytes are the
    /// file's bytes).
    pub hasher: Option<Xxh3>,
}

impl<R: Source> Chunker<R> {
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
            cut: 0,
            searched: 0,
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
            let tail_start = self.find_cut();
            if let Some(e) = self.failed.take() {
                if tail_start > 0 {
                    self.failed = Some(e);
                    return Ok(Some(self.split_at(tail_start)));
                }
                self.buf.clear();
                self.forget_cut();
                return Err(e);
            }
            if record_len(&self.buf[tail_start..]) > self.max_line_bytes {
                if tail_start > 0 {
                    return Ok(Some(self.split_at(tail_start)));
                }
                return self.skip_overlong().map(Some);
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                self.forget_cut();
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

    /// The start of the last record whose first byte `buf` holds, 0 if none but the first.
    /// For one value a line that is the last newline's next byte; the search goes further
    /// back only over lines that continue a record, and never over bytes searched before.
    fn find_cut(&mut self) -> usize {
        // A newline that was the last byte could not be judged before its next byte came.
        let from = self.searched.saturating_sub(1).max(self.cut);
        let mut end = self.buf.len();
        while let Some(p) = memchr::memrchr(b'\n', &self.buf[from..end]) {
            let p = from + p;
            if self.buf.get(p + 1).is_some_and(|&b| !continues_record(b)) {
                self.cut = p + 1;
                break;
            }
            end = p;
        }
        self.searched = self.buf.len();
        self.cut
    }

    fn forget_cut(&mut self) {
        self.cut = 0;
        self.searched = 0;
    }

    /// Returns `buf[..at]` as a chunk and keeps the rest for the next one.
    fn split_at(&mut self, at: usize) -> Chunk {
        let mut rest = self
            .pool
            .take(self.chunk_bytes.max(self.buf.len() - at) + 64 * 1024);
        rest.extend_from_slice(&self.buf[at..]);
        self.buf.truncate(at);
        // The rest was searched, and holds no record's start but its first byte.
        self.cut = 0;
        self.searched = rest.len();
        Chunk::Lines(std::mem::replace(&mut self.buf, rest))
    }

    /// Appends up to one chunk's worth of bytes, straight into the buffer's spare room (see
    /// [`Source`]): a plain `read` into a resized buffer would zero it first, which was a tenth
    /// of the instructions of a run.
    fn fill(&mut self) -> io::Result<()> {
        let want = self
            .chunk_bytes
            .saturating_sub(self.buf.len())
            .max(64 * 1024);
        self.buf.reserve(want);
        let before = self.buf.len();
        let result = self.reader.append(&mut self.buf, want);
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

    /// `buf` holds only the start of a record that is already too long: keep its first KiB and
    /// read on to the next line that begins a record, counting lines, without storing the rest.
    fn skip_overlong(&mut self) -> io::Result<Chunk> {
        let prefix = self.buf[..self.buf.len().min(REJECT_TEXT_BYTES)].to_vec();
        let mut skipped = Skipped::default();
        let resume = skipped.scan(&self.buf);
        self.forget_cut();
        if let Some(at) = resume {
            self.buf.drain(..at);
            return Ok(skipped.chunk(prefix));
        }
        self.buf.clear();
        const BLOCK: usize = 64 * 1024;
        let mut scratch = Vec::with_capacity(BLOCK);
        loop {
            scratch.clear();
            let result = self.reader.append(&mut scratch, BLOCK);
            let n = scratch.len();
            self.decoded_bytes += n as u64;
            if let Some(h) = &mut self.hasher {
                h.update(&scratch);
            }
            if let Some(at) = skipped.scan(&scratch) {
                // The lines after the record come out before a read error that followed them.
                self.buf.extend_from_slice(&scratch[at..]);
                self.failed = result.err();
                return Ok(skipped.chunk(prefix));
            }
            result?;
            if n < BLOCK {
                self.eof = true;
                return Ok(skipped.chunk(prefix));
            }
        }
    }
}

/// A record's length without the newline (and `\r`) that ends it.
fn record_len(tail: &[u8]) -> usize {
    let tail = tail.strip_suffix(b"\n").unwrap_or(tail);
    tail.strip_suffix(b"\r").unwrap_or(tail).len()
}

/// What an over-long record's skipped bytes held, as they pass block by block.
#[derive(Default)]
struct Skipped {
    /// Bytes, the newlines inside the record included.
    bytes: u64,
    newlines: u64,
    /// The last byte seen was a newline (and `cr` a `\r` before it), whose next byte decides
    /// whether the record ends there.
    newline_last: bool,
    cr: bool,
}

impl Skipped {
    /// Takes a block: where in it the next record begins, if it does.
    fn scan(&mut self, block: &[u8]) -> Option<usize> {
        let mut from = 0;
        if self.newline_last && !block.is_empty() {
            if !continues_record(block[0]) {
                return Some(0);
            }
            self.newline_last = false;
        }
        while let Some(p) = memchr::memchr(b'\n', &block[from..]) {
            let p = from + p;
            self.newlines += 1;
            match block.get(p + 1) {
                Some(&b) if !continues_record(b) => {
                    self.bytes += p as u64 + 1;
                    self.cr = p > 0 && block[p - 1] == b'\r';
                    self.newline_last = true;
                    return Some(p + 1);
                }
                Some(_) => from = p + 1,
                None => {
                    self.newline_last = true;
                    self.cr = p > 0 && block[p - 1] == b'\r';
                    self.bytes += block.len() as u64;
                    return None;
                }
            }
        }
        self.bytes += block.len() as u64;
        None
    }

    /// The record as a chunk: its last newline (the one before the next record, or one at
    /// the end of the input) ends it and is not counted in its length.
    fn chunk(&self, prefix: Vec<u8>) -> Chunk {
        let (len, lines) = if self.newline_last {
            let cr = u64::from(self.cr);
            (self.bytes - 1 - cr, self.newlines)
        } else {
            (self.bytes, self.newlines + 1)
        };
        Chunk::Overlong { prefix, len, lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
        let Some(Chunk::Overlong {
            prefix,
            len,
            lines: 1,
        }) = chs.iter().find(|c| matches!(c, Chunk::Overlong { .. }))
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
                len: 200_000,
                lines: 1
            }]
        );
    }

    #[test]
    fn long_lines_read_in_one_block_reach_the_parser_whole() {
        // Shorter than one read and followed by the start of a record: the chunk carries it
        // and the parser rejects it by length.
        let mut data = vec![b'x'; 5000];
        data.extend_from_slice(b"\nok\n");
        assert!(chunks(&data, 64, 100) == [Chunk::Lines(data.clone())]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept() {
        let mut data = vec![b'y'; 100];
        data.push(b'\n');
        assert_eq!(chunks(&data, 10, 100), [Chunk::Lines(data.clone())]);
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

    /// Pretty-printed values, one after another with and without blank lines between them.
    fn bodies(n: usize) -> Vec<u8> {
        let mut data = Vec::new();
        for i in 0..n {
            let body = format!(
                "{{\n   \"events\": [\n      {{\n         \"id\": \"{i}\"\n      }}\n   ]\n}}"
            );
            data.extend_from_slice(body.as_bytes());
            data.extend_from_slice(match i % 3 {
                0 => &b"\n"[..],
                1 => b"\n\n",
                _ => b"",
            });
        }
        data
    }

    #[test]
    fn chunks_are_cut_only_before_a_line_that_begins_a_record() {
        let data = bodies(200);
        for size in [1, 7, 100, 4096, 1 << 20] {
            let chs = chunks(&data, size, 1 << 20);
            assert_eq!(joined(&chs), data, "chunk size {size}");
            for c in &chs[1..] {
                let Chunk::Lines(v) = c else { panic!() };
                assert!(v.starts_with(b"{\n   \"events\""), "chunk size {size}");
            }
        }
        // Read a byte at a time, as from a pipe: the last newline of a read is judged once its
        // next byte comes.
        let reader = ByteAtATime(&data);
        let mut c = Chunker::new(reader, 50, 1 << 20);
        let mut joined_chunks = Vec::new();
        while let Some(Chunk::Lines(v)) = c.next_chunk().unwrap() {
            assert!(v.starts_with(b"{\n"));
            joined_chunks.extend_from_slice(&v);
        }
        assert_eq!(joined_chunks, data);
    }

    struct ByteAtATime<'a>(&'a [u8]);

    impl Read for ByteAtATime<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = b;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn an_overlong_record_is_skipped_to_the_next_record_with_its_lines() {
        let mut data = b"{\"a\":1}\n".to_vec();
        let mut long = b"{\r\n".to_vec();
        for _ in 0..20_000 {
            long.extend_from_slice(b"   \"key\": 1,\r\n");
        }
        long.extend_from_slice(b"}");
        data.extend_from_slice(&long);
        data.extend_from_slice(b"\r\n{\"b\":2}\n");
        for size in [64, 4096] {
            let chs = chunks(&data, size, 1000);
            assert_eq!(
                joined(&chs),
                b"{\"a\":1}\n<long>\n{\"b\":2}\n",
                "chunk size {size}"
            );
            let Some(Chunk::Overlong { len, lines, .. }) =
                chs.iter().find(|c| matches!(c, Chunk::Overlong { .. }))
            else {
                panic!("no overlong chunk")
            };
            assert_eq!((*len, *lines), (long.len() as u64, 20_002));
        }
        // At the end of the input, with and without a last newline.
        for end in [&b""[..], b"\n"] {
            let mut data = long.clone();
            data.extend_from_slice(end);
            let chs = chunks(&data, 64, 1000);
            let [Chunk::Overlong { len, lines, .. }] = &chs[..] else {
                panic!("{chs:?}")
            };
            assert_eq!((*len, *lines), (long.len() as u64, 20_002));
        }
    }
}
