//! An input's decoded byte stream cut into chunks of whole lines for the parse tasks, and the
//! pools their buffers are recycled through.

use super::{REJECT_TEXT_BYTES, UTF8_BOM};
use std::io::{self, Read};
use std::sync::Arc;
use xxhash_rust::xxh3::Xxh3;

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
}
