//! A gzip input inflated straight into the chunk buffers.
//!
//! flate2's `MultiGzDecoder` is a `Read`, and std zeroes a buffer's spare room before handing
//! it to a `read` that is not a file's: that zeroing of every decoded byte was a tenth of the
//! samples of a run over gzip files. Here zlib (zlib-rs) inflates each member, header and
//! trailer checks included, into the buffer's spare room itself.

use super::Source;
use flate2::{Decompress, FlushDecompress, Status};
use std::io::{self, BufRead};

/// zlib's largest window: every gzip writer's.
const WINDOW_BITS: u8 = 15;

/// The members of a gzip stream, one after another: log rotation appends members to a file,
/// and a plain decoder would stop after the first.
pub struct Gzip<R> {
    input: R,
    inflate: Decompress,
    /// The last member ended: what follows is another member or the end of the input.
    member_ended: bool,
}

impl<R: BufRead> Gzip<R> {
    pub fn new(input: R) -> Gzip<R> {
        Gzip {
            input,
            inflate: Decompress::new_gzip(WINDOW_BITS),
            member_ended: false,
        }
    }
}

impl<R: BufRead> Source for Gzip<R> {
    fn append(&mut self, buf: &mut Vec<u8>, want: usize) -> io::Result<()> {
        buf.reserve(want);
        let end = buf.len() + want;
        while buf.len() < end {
            let input = self.input.fill_buf()?;
            if self.member_ended {
                if input.is_empty() {
                    return Ok(());
                }
                // Keeps the gzip wrapper it was made with; anything but a member's header
                // after a member is an error, as it was for `MultiGzDecoder`.
                self.inflate.reset(true);
                self.member_ended = false;
            }
            let (in_before, out_before) = (self.inflate.total_in(), buf.len());
            let status = self
                .inflate
                .decompress_vec(input, buf, FlushDecompress::None)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (self.inflate.total_in() - in_before) as usize;
            self.input.consume(consumed);
            match status {
                Status::StreamEnd => self.member_ended = true,
                // With room to write, no progress means the input ended inside a member.
                _ if consumed == 0 && buf.len() == out_before => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the gzip stream ends inside a member",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(text).unwrap();
        enc.finish().unwrap()
    }

    /// Everything `Gzip` appends, `want` bytes at a time, from a reader of `block`-byte reads.
    fn inflate_all(bytes: &[u8], want: usize, block: usize) -> io::Result<Vec<u8>> {
        let mut gz = Gzip::new(io::BufReader::with_capacity(block, bytes));
        crate::read::append_all(&mut gz, want)
    }

    fn multi_gz(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn members_inflate_as_multi_gz_decoder_reads_them() {
        let big: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("{{\"n\":{}}}\n", i.wrapping_mul(2_654_435_761)).into_bytes())
            .collect();
        let mut bytes = gzip(&big);
        bytes.extend(gzip(b""));
        bytes.extend(gzip(b"two\n"));
        let want = multi_gz(&bytes).unwrap();
        assert_eq!(want.len(), big.len() + 4);
        for (step, block) in [(1, 7), (1000, 1), (64 << 10, 256 << 10), (1 << 30, 13)] {
            assert_eq!(
                inflate_all(&bytes, step, block).unwrap(),
                want,
                "{step} {block}"
            );
        }
    }

    #[test]
    fn a_cut_member_or_bytes_after_one_are_errors() {
        let bytes = gzip(&b"line\n".repeat(5000));
        for cut in [1, 2, 10, bytes.len() / 2, bytes.len() - 1] {
            let err = inflate_all(&bytes[..cut], 4096, 64).unwrap_err();
            assert!(multi_gz(&bytes[..cut]).is_err(), "{cut}");
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{cut}");
        }
        let mut trailing = bytes.clone();
        trailing.extend(b"not gzip");
        assert!(inflate_all(&trailing, 4096, 64).is_err());
        assert!(multi_gz(&trailing).is_err());
        let mut bad_length = bytes.clone();
        let at = bad_length.len() - 1;
        bad_length[at] ^= 1;
        assert!(inflate_all(&bad_length, 4096, 64).is_err());
    }
}
