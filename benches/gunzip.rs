//! The benchmark's baseline for gzip input: zlib-rs decompression alone, one core, no parsing.
//!
//! `gunzip FILE...`: decompresses every file with the same decoder regtally uses
//! (flate2's `MultiGzDecoder`, zlib-rs backend) into a sink and prints decompressed MB/s.

use std::io::Read;
use std::time::Instant;

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let started = Instant::now();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for f in &files {
        let file = std::io::BufReader::with_capacity(
            256 * 1024,
            std::fs::File::open(f).expect("input opens"),
        );
        let mut dec = flate2::bufread::MultiGzDecoder::new(file);
        loop {
            let n = dec.read(&mut buf).expect("input decompresses");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{} {:.3}", total, secs);
}
