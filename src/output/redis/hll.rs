//! Redis's own HyperLogLog, the value GitLab's live counters hold (`PFADD` of each user's
//! numeric id, as a decimal string, to a key per tracked event and ISO week).
//!
//! The format is Redis's public one (`src/hyperloglog.c`): a 16-byte header (`HYLL`, the
//! encoding, 0 for dense, three unused bytes, then an 8-byte cached cardinality whose top bit
//! marks it stale) and 16,384 registers of six bits, packed least significant bit first. A
//! member goes to register `h & 0x3fff` of its MurmurHash64A `h` (seed `0xadc83b19`) with the
//! count 1 + the trailing zeros of `h >> 14` (at most 51). A dense value written with `SET`
//! is what `PFADD` of the same members would leave after Redis converted the key to dense:
//! `PFCOUNT` and `PFMERGE` read it alike.

/// Registers: p = 14.
pub const REGISTERS: usize = 1 << 14;
const P: u32 = 14;
const BITS: usize = 6;
const MAX: u8 = (1 << BITS) - 1;
const HEADER: usize = 16;
/// Bytes of a dense value: the header and 16,384 six-bit registers.
pub const DENSE_BYTES: usize = HEADER + REGISTERS * BITS / 8;
const SEED: u32 = 0xadc8_3b19;

/// MurmurHash64A, as Redis computes it for HyperLogLog members (little-endian blocks).
pub fn murmur64a(key: &[u8], seed: u32) -> u64 {
    const M: u64 = 0xc6a4_a793_5bd1_e995;
    const R: u32 = 47;
    let mut h = u64::from(seed) ^ (key.len() as u64).wrapping_mul(M);
    let mut blocks = key.chunks_exact(8);
    for block in &mut blocks {
        let mut k = u64::from_le_bytes(block.try_into().unwrap_or_default());
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h ^= k;
        h = h.wrapping_mul(M);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate() {
            h ^= u64::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> R;
    h = h.wrapping_mul(M);
    h ^= h >> R;
    h
}

/// The register a member sets and the count it sets it to (Redis's `hllPatLen`).
pub fn register_of(member: &[u8]) -> (usize, u8) {
    let hash = murmur64a(member, SEED);
    let index = (hash & (REGISTERS as u64 - 1)) as usize;
    // The bit past the 50 left makes the count at most 51.
    let rest = (hash >> P) | (1 << (64 - P));
    (index, rest.trailing_zeros() as u8 + 1)
}

/// A HyperLogLog as Redis keeps it: one count per register.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisHll {
    registers: Box<[u8; REGISTERS]>,
}

impl Default for RedisHll {
    fn default() -> RedisHll {
        RedisHll {
            registers: Box::new([0; REGISTERS]),
        }
    }
}

impl std::fmt::Debug for RedisHll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.registers.iter().filter(|&&r| r != 0).count();
        write!(f, "RedisHll({set} registers set)")
    }
}

impl RedisHll {
    /// The value of `PFADD` of these GitLab user ids, each as its decimal string.
    pub fn of_ids(ids: impl IntoIterator<Item = u64>) -> RedisHll {
        let mut hll = RedisHll::default();
        for id in ids {
            hll.add(id.to_string().as_bytes());
        }
        hll
    }

    pub fn add(&mut self, member: &[u8]) {
        let (i, count) = register_of(member);
        if self.registers[i] < count {
            self.registers[i] = count;
        }
    }

    /// The dense value, as `GET` of a dense key returns it, its cached cardinality marked stale
    /// so that Redis counts the registers on the first `PFCOUNT`.
    pub fn to_dense(&self) -> Vec<u8> {
        let mut out = vec![0u8; DENSE_BYTES];
        out[..4].copy_from_slice(b"HYLL");
        // Encoding 0 (dense), three unused bytes, then the cardinality: stale (bit 7 of its
        // last byte).
        out[15] = 0x80;
        let regs = &mut out[HEADER..];
        for (i, &v) in self.registers.iter().enumerate() {
            let bit = i * BITS;
            let (byte, shift) = (bit / 8, bit % 8);
            regs[byte] |= v << shift;
            if shift > 8 - BITS {
                regs[byte + 1] |= v >> (8 - shift);
            }
        }
        out
    }

    /// Reads a dense value back (for tests and checks): `None` unless it is one.
    pub fn from_dense(bytes: &[u8]) -> Option<RedisHll> {
        if bytes.len() != DENSE_BYTES || &bytes[..4] != b"HYLL" || bytes[4] != 0 {
            return None;
        }
        let regs = &bytes[HEADER..];
        let mut hll = RedisHll::default();
        for (i, r) in hll.registers.iter_mut().enumerate() {
            let bit = i * BITS;
            let (byte, shift) = (bit / 8, bit % 8);
            let lo = u16::from(regs[byte]);
            let hi = u16::from(regs.get(byte + 1).copied().unwrap_or(0));
            *r = (((hi << 8 | lo) >> shift) as u8) & MAX;
        }
        Some(hll)
    }

    /// Registers set (not zero).
    pub fn registers_set(&self) -> usize {
        self.registers.iter().filter(|&&r| r != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by Redis's own MurmurHash64A (copied from src/hyperloglog.c, compiled with gcc)
    /// for these keys with the HyperLogLog seed.
    #[test]
    fn murmur64a_gives_redis_values() {
        let reference: [(&str, u64); 8] = [
            ("", 0xd8dfea6585bc9732),
            ("1", 0xd68cfa33ac865d67),
            ("42", 0xf292915491fee590),
            ("1234567", 0x85563db163632857),
            ("12345678", 0x95ebb86389132953),
            ("123456789", 0x217532cb09f2a44d),
            ("9223372036854775807", 0x7481ac612883801a),
            ("hello world, redis", 0x7d022b18327a1148),
        ];
        for (key, want) in reference {
            assert_eq!(murmur64a(key.as_bytes(), SEED), want, "{key:?}");
        }
    }

    #[test]
    fn registers_and_counts_follow_hll_pat_len() {
        // "1" hashes to 0x...5d67: register 0x1d67 (the low 14 bits); bit 14 is set, so no
        // trailing zero in what is left: count 1.
        assert_eq!(register_of(b"1"), (0x1d67, 1));
        // "12345678" hashes to 0x...2953: register 0x2953; bits 14 and 15 clear, 16 set: 3.
        assert_eq!(register_of(b"12345678"), (0x2953, 3));
        for i in 0..10_000u64 {
            let (r, c) = register_of(i.to_string().as_bytes());
            assert!(r < REGISTERS && (1..=51).contains(&c));
        }
    }

    #[test]
    fn dense_packing_round_trips_every_register_and_value() {
        let mut hll = RedisHll::default();
        for (i, r) in hll.registers.iter_mut().enumerate() {
            *r = (i % 64) as u8;
        }
        let bytes = hll.to_dense();
        assert_eq!(bytes.len(), 12_304);
        assert_eq!(&bytes[..16], b"HYLL\0\0\0\0\0\0\0\0\0\0\0\x80");
        assert_eq!(RedisHll::from_dense(&bytes), Some(hll.clone()));
        // Register 0 is the low six bits of the first byte, register 1 starts at its bit 6.
        let mut one = RedisHll::default();
        one.registers[0] = 0b10_1101;
        one.registers[1] = 0b11_0111;
        let d = one.to_dense();
        assert_eq!((d[16], d[17]), (0b1110_1101, 0b0000_1101));
        // The last register ends exactly at the last byte.
        let mut last = RedisHll::default();
        last.registers[REGISTERS - 1] = 63;
        assert_eq!(last.to_dense()[DENSE_BYTES - 1], 0b1111_1100);
        assert!(RedisHll::from_dense(&d[..100]).is_none());
    }

    #[test]
    fn members_keep_the_largest_count() {
        let a = RedisHll::of_ids(0..1000);
        let b = RedisHll::of_ids((0..1000).rev());
        assert_eq!(a, b);
        assert!(a.registers_set() > 900);
    }
}
