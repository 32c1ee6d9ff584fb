//! Keys that stand for text: a user's identity, an event id and a repository path are hashed
//! once, where they are parsed, and compared, counted and kept by their hash from then on.
//! The hashes of identities are part of the outputs (every sketch holds them), so they are
//! pinned: the same name gives the same hash in every run, release and machine.

use datasketches::hash::value::raw_bytes;
use datasketches::hll::Coupon;
use serde::{Deserialize, Serialize};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// The stable 64-bit hash of a user identity (already lower-cased).
pub fn identity_hash(identity: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(identity.as_bytes())
}

/// Where a user identity (already lower-cased, never empty) lands in an `hll_sketch`, the
/// Apache DataSketches HLL sketch.
///
/// `raw_bytes::from_str` hashes the string's bytes as Java's `update(String)` does; a plain
/// `&str` would go through Rust's `Hash for str`, which appends a `0xFF` byte, and such
/// sketches would count every user twice against everyone else's.
pub fn identity_coupon(identity: &str) -> Coupon {
    Coupon::from_value(raw_bytes::from_str(identity))
}

/// Hands a hash table or a sketch the value it is given: the value is already a good 64-bit
/// hash. Written here because the crate for it, `nohash-hasher`, takes keys of 64 bits at
/// most, and ids and repositories are keyed by 128.
#[derive(Default)]
pub struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `u64::hash`; fold anything else so it is still stable.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write_u128(&mut self, value: u128) {
        // Used for 128-bit id and repository keys, themselves xxh3 hashes.
        self.0 = (value as u64) ^ ((value >> 64) as u64);
    }
}

/// The builder a sketch stores; it has no state, so it serializes to nothing.
#[derive(Clone, Copy, Default, Debug, Serialize, Deserialize)]
pub struct PassThroughBuildHasher;

impl BuildHasher for PassThroughBuildHasher {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

/// The hash that stands for a repository path inside the run (xxh3-128 of its bytes).
pub fn repository_key(path: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(path.as_bytes())
}

/// The hash that stands for an event id (xxh3-128 of its bytes): equal ids are deliveries of
/// one event (SPEC §3). Inlined: the parser hashes every event's id, and a call lost the
/// hashing's specialisation to the id's length (73M more instructions on 1M events).
#[inline]
pub fn event_key(id: impl AsRef<[u8]>) -> u128 {
    xxhash_rust::xxh3::xxh3_128(id.as_ref())
}

/// Hash maps and sets keyed by these hashes, which need no hashing again.
pub type KeyHasher = BuildHasherDefault<PassThroughHasher>;
