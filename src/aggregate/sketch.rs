//! Distinct-user sketches, two per cell.
//!
//! [`UserSketch`]: HyperLogLog++ over a stable 64-bit hash of each user's identity, the source
//! of `unique_users`, the Service Ping and `report` (SPEC §8). Sketches from different runs,
//! machines and releases must merge, so the hash is pinned (xxh3-64, seed 0, of the identity's
//! UTF-8 bytes) and the crate is fed that value through a pass-through hasher instead of
//! hashing again with a per-process random key.
//!
//! [`WarehouseSketch`]: the `hll_sketch` column, an Apache DataSketches HLL_8 sketch fed each
//! identity as DataSketches' Java `HllSketch.update(String)` hashes it, so that Spark, Druid,
//! Hive and Python merge it with their own.

use crate::keys::PassThroughBuildHasher;
use datasketches::hll::{Coupon, HllSketch, HllType, HllUnion};
use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

/// The name of the identity hash, written into the Parquet metadata.
pub const HASH_NAME: &str = "xxh3-64-seed0(utf8(lowercase(actor.name)))";

/// Version of the serialized sketch layout that this release writes, the first byte of every
/// `sketch` value. Every earlier version is still read.
///
/// Version 2: one byte `2`, one byte of precision, then the `hyperloglogplus` 0.4
/// `HyperLogLogPlus` serialized with postcard 1 (whose wire format is fixed), after `count()`
/// has folded its temporary set into the sparse list. Against version 1 it is a third to a
/// half of the size before compression and about two thirds after, and cheaper to write (up
/// to five times for sparse sketches).
///
/// Version 1: the same, serialized with serde_json.
pub const SKETCH_FORMAT_VERSION: u8 = 2;

/// Human description of [`SKETCH_FORMAT_VERSION`], written into the Parquet metadata.
pub const SKETCH_FORMAT: &str = "2: byte 0x02, byte precision, then postcard 1 of hyperloglogplus 0.4 HyperLogLogPlus<u64> fed xxh3-64 values (version 1, still read: byte 0x01, byte precision, then serde_json of the same)";

/// A confidence interval of distinct users (SPEC §8): `unique_users_lower` and
/// `unique_users_upper`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub lower: i64,
    pub upper: i64,
}

/// How the bounds are computed, written into the Parquet metadata.
pub const BOUNDS_METHOD: &str = "95% confidence interval: c ± 1.959964 σ, rounded, widened to hold the estimate n; dense sketch: c = n, σ = 1.04 n / √m (HyperLogLog) over its m = 2^precision registers, or σ = √(m (e^t − t − 1)), t = n / m (linear counting) where n is at most the crate's linear-counting threshold; sparse sketch: k = 2^24 (1 − e^(−n / 2^24)) codes (the crate's linear counting inverted), c = M ln(M / (M − k)), σ = √(M (e^t − t − 1)), t = c / M, M = 2^25";

/// The two-sided 95% quantile of the normal distribution: the bounds are the estimate plus and
/// minus this many standard errors.
pub const Z_95: f64 = 1.959_963_984_540_054;

/// The relative standard error of HyperLogLog's estimate over `m` registers is `1.04 / √m`
/// (Flajolet, Fusy, Gandouet and Meunier 2007, §4; Heule, Nunkesser and Hall 2013 keep it for
/// HyperLogLog++'s bias-corrected estimate).
const HLL_ERROR: f64 = 1.04;

/// The standard error of linear counting's estimate of `n` distinct values over `m` registers:
/// `√(m (e^t − t − 1))` with `t = n / m` (Whang, Vander-Zanden and Taylor 1990, §4). It is a
/// small fraction of a user for a few thousand users over the sparse sketch's 2^24 registers,
/// and below `1.04 / √m` wherever HyperLogLog++ chooses linear counting.
fn linear_counting_error(n: f64, m: f64) -> f64 {
    let t = n / m;
    (m * (t.exp() - t - 1.0)).max(0.0).sqrt()
}

/// The hash prefixes a sparse sketch tells apart: its codes are the hashes' top 25 bits.
const SPARSE_CELLS: f64 = (1u64 << PRIME_PRECISION) as f64;

/// The estimate below which `hyperloglogplus` 0.4.1 (as HyperLogLog++'s paper) takes linear
/// counting over a dense sketch's registers instead of the bias-corrected raw estimate.
fn linear_counting_threshold(precision: u8) -> f64 {
    const THRESHOLDS: [f64; 15] = [
        10.0, 10.0, 40.0, 80.0, 220.0, 400.0, 900.0, 1800.0, 3100.0, 6500.0, 11500.0, 20000.0,
        50000.0, 120000.0, 350000.0,
    ];
    THRESHOLDS[usize::from(precision.clamp(4, 18) - 4)]
}

/// Lowest and highest precision the `hyperloglogplus` crate accepts.
pub const PRECISION_RANGE: std::ops::RangeInclusive<u8> = 4..=18;

/// The family, type and hash of the `hll_sketch` column, written into the Parquet metadata.
pub const HLL_SKETCH_FAMILY: &str = "HLL";
pub const HLL_SKETCH_TYPE: &str = "HLL_8";
pub const HLL_SKETCH_HASH: &str = "MurmurHash3_x64_128 seed 9001 of the UTF-8 bytes of lowercase(actor.name), as DataSketches HllSketch.update(String)";

/// Why serialized sketch bytes could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum SketchError {
    #[error("sketch is empty")]
    Empty,
    #[error(
        "sketch format version {0} is not known to this release (it reads 1 to {SKETCH_FORMAT_VERSION})"
    )]
    Version(u8),
    #[error("sketch bytes are corrupt: {0}")]
    Corrupt(String),
    #[error("sketch precision byte {0} does not match its contents")]
    BadPrecision(u8),
    #[error("sketches of precision {0} and {1} cannot be merged")]
    Precision(u8, u8),
}

/// A HyperLogLog++ sketch of user identity hashes.
#[derive(Clone, Debug)]
pub struct UserSketch {
    precision: u8,
    hll: HyperLogLogPlus<u64, PassThroughBuildHasher>,
    /// The crate's estimate, kept from its last `count()` until the next insert or merge:
    /// `count()` of a sparse sketch rewrites its whole sparse list even when nothing was
    /// added since, which every cell paid twice (its estimate, then its bytes).
    counted: Option<f64>,
    /// Whether the crate holds registers rather than a sparse list, where known without
    /// looking at its state (which [`UserSketch::bounds`] would otherwise serialize and read
    /// back, for every row): a sketch built from codes, read from bytes, or dense and added to.
    dense: Option<bool>,
}

impl UserSketch {
    /// An empty sketch. `precision` must lie in [`PRECISION_RANGE`] (the CLI checks it).
    pub fn new(precision: u8) -> UserSketch {
        let hll = HyperLogLogPlus::new(precision, PassThroughBuildHasher)
            .expect("precision is validated by the CLI to lie in 4..=18");
        UserSketch {
            precision,
            hll,
            counted: None,
            dense: Some(false),
        }
    }

    /// Adds one identity hash.
    pub fn insert(&mut self, identity_hash: u64) {
        self.counted = None;
        // A sparse sketch may turn dense; a dense one stays so.
        self.dense = self.dense.filter(|&d| d);
        self.hll.insert(&identity_hash);
    }

    /// Adds every identity of `other`.
    pub fn merge(&mut self, other: &UserSketch) -> Result<(), SketchError> {
        if self.precision != other.precision {
            return Err(SketchError::Precision(self.precision, other.precision));
        }
        self.counted = None;
        self.dense = match (self.dense, other.dense) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            _ => None,
        };
        self.hll
            .merge(&other.hll)
            .map_err(|_| SketchError::Precision(self.precision, other.precision))
    }

    /// The estimate of distinct identities, rounded to the nearest integer.
    pub fn estimate(&mut self) -> i64 {
        self.count().round() as i64
    }

    /// The 95% confidence interval of the estimate ([`Bounds`]): the estimate plus and minus
    /// [`Z_95`] standard errors of the estimator the crate used, rounded to the nearest
    /// integer (so where the error is a fraction of a user, as in a sparse sketch of a few
    /// thousand, the bounds are the estimate).
    pub fn bounds(&mut self) -> Bounds {
        let estimate = self.count();
        let dense = match self.dense {
            Some(dense) => dense,
            None => {
                let dense = self.layout().registers.is_some();
                *self.dense.insert(dense)
            }
        };
        let (center, sigma) = if dense {
            // The crate takes linear counting over the registers below its threshold (where
            // some register is still zero): its error there, HyperLogLog's above.
            let m = f64::from(1u32 << self.precision);
            if estimate <= linear_counting_threshold(self.precision) {
                (estimate, linear_counting_error(estimate, m))
            } else {
                (estimate, HLL_ERROR * estimate / m.sqrt())
            }
        } else {
            // A sparse sketch holds one code per 25-bit hash prefix (about 2^25 of them), but
            // the crate's linear counting takes 2^24 registers, which overstates the users by
            // about n²/2^26 (6 at 20,000): the interval is centred where linear counting over
            // 2^25 puts the codes (their number, from the crate's estimate), and stretched to
            // hold the estimate.
            let registers = f64::from(1u32 << (PRIME_PRECISION - 1));
            let codes = (registers * -(-estimate / registers).exp_m1()).round();
            let n = SPARSE_CELLS * (SPARSE_CELLS / (SPARSE_CELLS - codes)).ln();
            (n, linear_counting_error(n, SPARSE_CELLS))
        };
        let half = Z_95 * sigma;
        Bounds {
            lower: (center - half).min(estimate).max(0.0).round() as i64,
            upper: (center + half).max(estimate).round() as i64,
        }
    }

    /// The crate's state, field by field.
    fn layout(&mut self) -> Layout {
        self.count();
        let bytes = postcard::to_allocvec(&self.hll).expect("serializing to memory cannot fail");
        postcard::from_bytes(&bytes).expect("the crate's state has the pinned layout")
    }

    /// The crate's `count()`, once per change.
    fn count(&mut self) -> f64 {
        match self.counted {
            Some(n) => n,
            None => *self.counted.insert(self.hll.count()),
        }
    }

    /// The versioned bytes of the `sketch` column.
    ///
    /// `count()` comes first: it folds the crate's temporary hash set into its sorted sparse
    /// list, without which the bytes would follow the set's random iteration order.
    pub fn to_bytes(&mut self) -> Vec<u8> {
        self.count();
        let out = vec![SKETCH_FORMAT_VERSION, self.precision];
        postcard::to_extend(&self.hll, out).expect("serializing to memory cannot fail")
    }

    /// The bytes format 1 had (serde_json), as older files hold them.
    #[cfg(test)]
    pub fn to_bytes_v1_for_tests(&mut self) -> Vec<u8> {
        self.hll.count();
        let mut out = vec![1, self.precision];
        serde_json::to_writer(&mut out, &self.hll).expect("serializing to memory cannot fail");
        out
    }

    /// Reads bytes written by [`UserSketch::to_bytes`], in this format or an earlier one.
    ///
    /// The bytes come from files anyone can edit: every field of the crate's state is checked
    /// ([`check_layout`]) before the crate sees it, since the crate trusts its own state and
    /// indexes or subtracts with it.
    pub fn from_bytes(bytes: &[u8]) -> Result<UserSketch, SketchError> {
        let (&version, rest) = bytes.split_first().ok_or(SketchError::Empty)?;
        let (&precision, body) = rest.split_first().ok_or(SketchError::Empty)?;
        if !(1..=SKETCH_FORMAT_VERSION).contains(&version) {
            return Err(SketchError::Version(version));
        }
        if !PRECISION_RANGE.contains(&precision) {
            return Err(SketchError::BadPrecision(precision));
        }
        let layout: Layout = match version {
            1 => serde_json::from_slice(body).map_err(|e| SketchError::Corrupt(e.to_string()))?,
            2 => match postcard::take_from_bytes(body) {
                Ok((layout, [])) => layout,
                Ok(_) => return Err(SketchError::Corrupt("trailing bytes".into())),
                Err(e) => return Err(SketchError::Corrupt(e.to_string())),
            },
            _ => return Err(SketchError::Version(version)),
        };
        check_layout(&layout, precision).map_err(|why| SketchError::Corrupt(why.into()))?;
        let hll: HyperLogLogPlus<u64, PassThroughBuildHasher> = match version {
            1 => serde_json::from_slice(body).map_err(|e| SketchError::Corrupt(e.to_string()))?,
            2 => match postcard::take_from_bytes(body) {
                Ok((hll, [])) => hll,
                Ok(_) => return Err(SketchError::Corrupt("trailing bytes".into())),
                Err(e) => return Err(SketchError::Corrupt(e.to_string())),
            },
            _ => return Err(SketchError::Version(version)),
        };
        // The stored precision must be the one the crate's own state was built with.
        if !PRECISION_RANGE.contains(&precision)
            || UserSketch::new(precision).hll.merge(&hll).is_err()
        {
            return Err(SketchError::BadPrecision(precision));
        }
        Ok(UserSketch {
            precision,
            hll,
            counted: None,
            dense: Some(layout.registers.is_some()),
        })
    }

    /// The precision this sketch was built with.
    pub fn precision(&self) -> u8 {
        self.precision
    }

    /// The sketch of the identities whose [`sparse_code`]s these are, sorted and without
    /// repeats: the state the crate reaches by inserting the identities one by one and
    /// counting (`of_codes_equals_inserting_one_by_one`), built in one pass. The crate sorts
    /// its whole sparse list again every hundred or so inserts, through a SipHash set; a
    /// year of daily cells spent most of the end of a run there.
    ///
    /// Like the crate, the sketch is dense when its sparse list would take more bytes than
    /// the registers: the list only grows with more codes, so the crate ends dense exactly
    /// when the whole list is too long, whatever the order and the moment it switched.
    pub fn of_codes(precision: u8, codes: &[u32]) -> UserSketch {
        debug_assert!(codes.windows(2).all(|w| w[0] < w[1]));
        let m = 1usize << precision;
        let counts = (m, 1 << (PRIME_PRECISION - 1), 4 * m / 5);
        // One pass: the list is written until it passes the limit (the rule of
        // [`UserSketch::codes_are_dense`]), which a dense sketch's list does early.
        let mut buf = Vec::with_capacity(codes.len() * 3);
        let mut last = 0u32;
        for &code in codes {
            let mut delta = code - last;
            while delta >= 0x80 {
                buf.push((delta & 0x7f) as u8 | 0x80);
                delta >>= 7;
            }
            buf.push(delta as u8);
            last = code;
            if buf.len() > counts.2 {
                break;
            }
        }
        if buf.len() > counts.2 {
            return UserSketch::dense_of_codes(precision, &[codes]);
        }
        // The crate's sparse estimate: linear counting over 2^24 sparse registers.
        let registers = counts.1 as f64;
        let zeros = (counts.1 - codes.len()) as f64;
        let sparse = SparseLayout {
            count: codes.len(),
            last,
            buf,
        };
        UserSketch::of_layout(
            precision,
            sparse,
            None,
            Some(registers * (registers / zeros).ln()),
        )
    }

    /// The dense sketch of the identities whose [`sparse_code`]s these lists hold, in any
    /// order and with repeats: each register holds the largest rank of the codes that fall
    /// in it, which is what a dense sketch holds however it got dense, and what merging a
    /// sparse sketch into a dense one sets.
    pub fn dense_of_codes(precision: u8, lists: &[&[u32]]) -> UserSketch {
        let m = 1usize << precision;
        let mut registers = RegistersLayout {
            buf: vec![0; m.div_ceil(5)],
            count: m,
            zeros: m,
        };
        for &code in lists.iter().copied().flatten() {
            let (index, rank) = decode_code(precision, code);
            let (word, shift) = (index / 5, (index % 5) * 6);
            let current = (registers.buf[word] >> shift) & 0x3f;
            if rank > current {
                registers.zeros -= usize::from(current == 0);
                registers.buf[word] = (registers.buf[word] & !(0x3f << shift)) | rank << shift;
            }
        }
        let empty = SparseLayout {
            count: 0,
            last: 0,
            buf: Vec::new(),
        };
        UserSketch::of_layout(precision, empty, Some(registers), None)
    }

    /// The crate's sketch of this state, which it serializes so and reads back; `counted` is
    /// a sparse sketch's estimate.
    fn of_layout(
        precision: u8,
        sparse: SparseLayout,
        registers: Option<RegistersLayout>,
        counted: Option<f64>,
    ) -> UserSketch {
        let m = 1usize << precision;
        let counts = (m, 1 << (PRIME_PRECISION - 1), 4 * m / 5);
        let dense = registers.is_some();
        let layout = Layout {
            builder: PassThroughBuildHasher,
            precision,
            counts,
            tmpset: Vec::new(),
            sparse,
            registers,
            phantom: std::marker::PhantomData,
        };
        let bytes = postcard::to_allocvec(&layout).expect("serializing to memory cannot fail");
        let hll = postcard::from_bytes(&bytes)
            .expect("the crate reads the layout it writes (golden_bytes_of_the_pinned_layout)");
        UserSketch {
            precision,
            hll,
            counted,
            dense: Some(dense),
        }
    }
}

impl UserSketch {
    /// Whether the sketch of these codes (sorted, without repeats) is dense: its sparse list,
    /// deltas in varints, would take more than four fifths of a byte per register. More codes
    /// only lengthen the list, so every superset's sketch is dense too.
    pub fn codes_are_dense(precision: u8, codes: &[u32]) -> bool {
        let limit = 4 * (1usize << precision) / 5;
        let mut bytes = 0usize;
        let mut last = 0u32;
        for &code in codes {
            let bits = 32 - (code - last).leading_zeros().min(31);
            bytes += bits.div_ceil(7) as usize;
            last = code;
            if bytes > limit {
                return true;
            }
        }
        false
    }
}

/// The code the crate keeps in its sparse list for an identity hash at `precision`
/// (`HyperLogLogPlus::encode_hash`): the hash's top 25 bits, shifted left by one; or, when
/// the bits between the precision and 25 are all zero, those 25 bits shifted left by seven
/// with the rank of the bits below them and a low bit of 1.
pub fn sparse_code(precision: u8, hash: u64) -> u32 {
    let p = u32::from(precision);
    let index = hash >> (64 - PRIME_PRECISION);
    let below_precision = index & ((1 << (PRIME_PRECISION - p)) - 1);
    if below_precision == 0 {
        let rest = (hash << PRIME_PRECISION) | (1 << (PRIME_PRECISION - 1));
        let rank = 1 + rest.leading_zeros();
        ((index as u32) << 7) | (rank << 1) | 1
    } else {
        (index << 1) as u32
    }
}

/// The register and its value a sparse code stands for at `precision`
/// (`HyperLogLogPlus::decode_hash`).
fn decode_code(precision: u8, code: u32) -> (usize, u32) {
    let p = u32::from(precision);
    if code & 1 == 1 {
        let rank = ((code >> 1) & 0x3f) + (PRIME_PRECISION - p);
        ((code >> (32 - p)) as usize, rank)
    } else {
        let index = (code << (32 - PRIME_PRECISION - 1)) >> (32 - p);
        let rank = (code << (32 - PRIME_PRECISION + p - 1)).leading_zeros() + 1;
        (index as usize, rank)
    }
}

/// The serialized state of `hyperloglogplus` 0.4.1's `HyperLogLogPlus`, field for field (its
/// fields are private): what [`UserSketch::from_bytes`] checks before handing bytes to the
/// crate. Postcard and JSON read it exactly as they read the crate's own struct, and
/// [`UserSketch::of_codes`] writes it for the crate to read.
#[derive(Deserialize, Serialize)]
struct Layout {
    #[allow(dead_code)]
    builder: PassThroughBuildHasher,
    precision: u8,
    counts: (usize, usize, usize),
    tmpset: Vec<u32>,
    sparse: SparseLayout,
    registers: Option<RegistersLayout>,
    #[allow(dead_code)]
    phantom: std::marker::PhantomData<u64>,
}

#[derive(Deserialize, Serialize)]
struct SparseLayout {
    count: usize,
    last: u32,
    buf: Vec<u8>,
}

#[derive(Deserialize, Serialize)]
struct RegistersLayout {
    buf: Vec<u32>,
    count: usize,
    zeros: usize,
}

/// The crate's sparse precision.
const PRIME_PRECISION: u32 = 25;

/// Checks a sketch's state as the crate would have built it for `precision`: the register
/// counts it derives from the precision, an empty temporary set (`to_bytes` folds it), a
/// sparse list of valid codes in strictly increasing order whose count and last value match,
/// or dense registers of the right number, each no larger than a hash can make it, with the
/// count of zero registers right.
fn check_layout(l: &Layout, precision: u8) -> Result<(), &'static str> {
    let p = u32::from(precision);
    let m = 1usize << p;
    if l.precision != precision {
        return Err("the precision byte does not match the sketch");
    }
    if l.counts != (m, 1 << (PRIME_PRECISION - 1), 4 * m / 5) {
        return Err("register counts do not match the precision");
    }
    if !l.tmpset.is_empty() {
        return Err("temporary set is not empty");
    }
    let (mut count, mut last, mut at) = (0usize, None::<u32>, 0usize);
    let buf = &l.sparse.buf;
    while at < buf.len() {
        let (mut value, mut shift) = (0u64, 0u32);
        loop {
            let Some(&b) = buf.get(at) else {
                return Err("sparse list ends inside a number");
            };
            at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return Err("sparse list holds a number of more than 32 bits");
            }
        }
        let code = last
            .unwrap_or(0)
            .checked_add(u32::try_from(value).map_err(|_| "sparse code past 32 bits")?)
            .ok_or("sparse code past 32 bits")?;
        if last.is_some() && value == 0 {
            return Err("sparse list is not in strictly increasing order");
        }
        let valid = if code & 1 == 1 {
            // Index in bits 7.., rank in bits 1..7: at most 64 - 25 + 1.
            let rank = (code >> 1) & 0x3f;
            (1..=64 - PRIME_PRECISION + 1).contains(&rank)
        } else {
            // Index in bits 1..26, with some bit below the precision's set.
            let index = code >> 1;
            index >> PRIME_PRECISION == 0 && index & ((1 << (PRIME_PRECISION - p)) - 1) != 0
        };
        if !valid {
            return Err("sparse list holds a code no hash encodes to");
        }
        count += 1;
        last = Some(code);
    }
    if count != l.sparse.count || last.unwrap_or(0) != l.sparse.last {
        return Err("sparse count or last value does not match the list");
    }
    if let Some(r) = &l.registers {
        if count != 0 {
            return Err("sketch is both sparse and dense");
        }
        if r.count != m || r.buf.len() != m.div_ceil(5) {
            return Err("dense sketch has the wrong number of registers");
        }
        let max_rank = 64 - p + 1;
        let mut zeros = 0;
        for (w, word) in r.buf.iter().enumerate() {
            if word >> 30 != 0 {
                return Err("dense register word has bits past its registers");
            }
            for i in 0..5 {
                let v = (word >> (6 * i)) & 0x3f;
                if w * 5 + i >= m {
                    if v != 0 {
                        return Err("dense sketch holds a register past its count");
                    }
                } else if v > max_rank {
                    return Err("dense register larger than a hash can make it");
                } else if v == 0 {
                    zeros += 1;
                }
            }
        }
        if zeros != r.zeros {
            return Err("dense sketch's count of zero registers does not match");
        }
    }
    Ok(())
}

/// The `hll_sketch` column's sketch: Apache DataSketches HLL, type HLL_8, `lg_k` equal to the
/// precision, fed [`crate::keys::identity_coupon`]s.
#[derive(Clone, PartialEq)]
pub struct WarehouseSketch {
    hll: HllSketch,
}

impl std::fmt::Debug for WarehouseSketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WarehouseSketch(lg_k {}, estimate {})",
            self.hll.lg_config_k(),
            self.hll.estimate()
        )
    }
}

impl WarehouseSketch {
    /// An empty sketch. `lg_k` must lie in [`PRECISION_RANGE`] (the CLI checks it).
    pub fn new(lg_k: u8) -> WarehouseSketch {
        let hll = HllSketch::new(lg_k, HllType::Hll8)
            .expect("precision is validated by the CLI to lie in 4..=18");
        WarehouseSketch { hll }
    }

    /// The sketch of these users, in any order: [`WarehouseSketch::to_bytes`] writes what the
    /// order changes in a form that does not depend on it.
    pub fn of_users(lg_k: u8, coupons: &[Coupon]) -> WarehouseSketch {
        let mut sketch = WarehouseSketch::new(lg_k);
        // Until the crate's sketch is dense its mode depends on how many distinct coupons it
        // has seen: enough coupons, sorted and so known distinct, make it dense at once;
        // otherwise the crate's own inserts go up to where it would be.
        let at_once = coupons.len() >= dense_from(lg_k) && coupons.windows(2).all(|w| w[0] < w[1]);
        let first = if at_once {
            0
        } else {
            coupons.len().min(dense_from(lg_k))
        };
        let (first, rest) = coupons.split_at(first);
        for &c in first {
            sketch.hll.update_with_coupon(c);
        }
        sketch.raise_registers(&[rest], at_once);
        sketch
    }

    /// Adds one user.
    pub fn insert(&mut self, coupon: Coupon) {
        self.hll.update_with_coupon(coupon);
    }

    /// Adds the users of these lists, in any order.
    ///
    /// Many users are added to a dense sketch's registers directly: the crate's insert
    /// updates its HIP estimator for every raised register, which was over a quarter of
    /// building every cell's sketches, and [`WarehouseSketch::to_bytes`] writes that estimator
    /// from the registers anyway. The sketch is then out of order, as a union's is: it estimates
    /// from its registers, and its bytes are those of the same users inserted one by one.
    pub fn insert_all(&mut self, lists: &[&[Coupon]]) {
        self.raise_registers(lists, false);
    }

    /// [`WarehouseSketch::insert_all`]; `dense` says that these coupons alone make the
    /// sketch dense (enough of them, distinct), so that an empty sketch turns dense at once.
    fn raise_registers(&mut self, lists: &[&[Coupon]], dense: bool) {
        const PREAMBLE: usize = 40;
        let coupons = || lists.iter().copied().flatten().copied();
        let registers = 1usize << self.lg_k();
        let mut bytes = if dense {
            let mut empty = vec![0; PREAMBLE + registers];
            let preamble = [
                HLL_PREINTS,
                1,
                HLL_FAMILY,
                self.lg_k(),
                0,
                0,
                0,
                HLL_8_DENSE,
            ];
            empty[..8].copy_from_slice(&preamble);
            empty
        } else if lists.iter().map(|l| l.len()).sum::<usize>() >= registers / 8 {
            // Below this the serialization round trip costs more than the inserts it saves.
            self.hll.serialize()
        } else {
            Vec::new()
        };
        if bytes.len() != PREAMBLE + registers || bytes[7] != HLL_8_DENSE {
            coupons().for_each(|c| self.hll.update_with_coupon(c));
            return;
        }
        let values = &mut bytes[PREAMBLE..];
        for c in coupons() {
            let bits = coupon_bits(c);
            let slot = bits as usize & (registers - 1);
            values[slot] = values[slot].max((bits >> 26) as u8);
        }
        canonical_dense(&mut bytes);
        let read = HllSketch::deserialize(&bytes);
        debug_assert!(
            read.is_ok(),
            "the crate reads the dense HLL_8 sketches it writes"
        );
        match read {
            Ok(hll) => self.hll = hll,
            // Were it ever not to, the users still go in, one by one.
            Err(_) => coupons().for_each(|c| self.hll.update_with_coupon(c)),
        }
    }

    /// Whether the sketch is dense (in HLL mode): then its bytes depend only on its registers,
    /// and more users keep it dense.
    pub fn is_dense(&self) -> bool {
        self.hll
            .serialize()
            .get(7)
            .is_some_and(|mode| mode & 0x3 == 2)
    }

    /// Adds every user of `other` (a DataSketches union, as warehouses merge).
    pub fn merge(&mut self, other: &WarehouseSketch) -> Result<(), SketchError> {
        let (mine, theirs) = (self.lg_k(), other.lg_k());
        if mine != theirs {
            return Err(SketchError::Precision(mine, theirs));
        }
        let mut union = HllUnion::new(mine).map_err(|e| SketchError::Corrupt(e.to_string()))?;
        union.update(&self.hll);
        union.update(&other.hll);
        self.hll = union.to_sketch(HllType::Hll8);
        Ok(())
    }

    /// The sketch's estimate of distinct users.
    pub fn estimate(&self) -> f64 {
        self.hll.estimate()
    }

    /// The `lg_k` (the precision) of the sketch.
    pub fn lg_k(&self) -> u8 {
        self.hll.lg_config_k()
    }

    /// The sketch in DataSketches' own serialized form (compact), as every implementation reads it.
    ///
    /// What depends on the order users came in (threads, spilling, a state's nights) is
    /// written in a form that does not, so that the same users give the same bytes:
    /// - a compact list or set holds its coupons in the order of the crate's table: they are
    ///   written sorted (readers insert them one by one whatever the order);
    /// - a dense sketch's HIP estimator accumulates in update order: it is marked out of order
    ///   (the flag a union sets, with which every reader estimates from the registers alone),
    ///   its HIP sum written as 0, and the register sums `kxq0`/`kxq1` computed again in
    ///   register order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.hll.serialize();
        let (Some(&flags), Some(&mode)) = (bytes.get(5), bytes.get(7)) else {
            return bytes;
        };
        let start = match mode & 0x3 {
            0 => 8,
            1 => 12,
            _ => {
                canonical_dense(&mut bytes);
                return bytes;
            }
        };
        if flags & 8 != 0 && bytes.len() >= start && (bytes.len() - start).is_multiple_of(4) {
            let mut coupons: Vec<u32> = bytes[start..]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            coupons.sort_unstable();
            for (slot, c) in bytes[start..].chunks_exact_mut(4).zip(coupons) {
                slot.copy_from_slice(&c.to_le_bytes());
            }
        }
        bytes
    }

    /// Reads a sketch in DataSketches' serialized form: an HLL_8 sketch of `lg_k` 4 to 18.
    ///
    /// The crate checks the layout but not the values of dense registers, and shifts by them
    /// when it merges: those are checked here first ([`check_dense_hll8`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<WarehouseSketch, SketchError> {
        check_dense_hll8(bytes).map_err(|why| SketchError::Corrupt(why.into()))?;
        let hll = HllSketch::deserialize(bytes).map_err(|e| SketchError::Corrupt(e.to_string()))?;
        if hll.target_type() != HllType::Hll8 {
            return Err(SketchError::Corrupt(format!(
                "hll_sketch is of type {:?}, not HLL_8",
                hll.target_type()
            )));
        }
        if !PRECISION_RANGE.contains(&hll.lg_config_k()) {
            return Err(SketchError::BadPrecision(hll.lg_config_k()));
        }
        Ok(WarehouseSketch { hll })
    }
}

/// DataSketches' HLL preamble: its length in 4-byte words in HLL mode, the family's id, and
/// the mode byte of a dense (HLL mode) HLL_8 sketch.
const HLL_PREINTS: u8 = 10;
const HLL_FAMILY: u8 = 7;
const HLL_8_DENSE: u8 = 2 | 2 << 2;

/// How many distinct coupons the crate's HLL_8 sketch of `lg_k` holds when it turns dense:
/// a list of 8 goes straight to registers below `lg_k` 8; above, the list becomes a hash set,
/// which doubles at three quarters full until, at `2^(lg_k - 3)` slots, it turns into
/// registers instead. [`WarehouseSketch::of_users`] builds this many sorted users or more
/// straight into registers, so its bytes depend on this number:
/// `dense_from_is_where_the_crate_turns_dense` checks it for every `lg_k` the CLI takes.
fn dense_from(lg_k: u8) -> usize {
    if lg_k < 8 {
        8
    } else {
        3 * (1usize << (lg_k - 3)) / 4 + 1
    }
}

/// A coupon's 32 bits (register value above, slot below), which the crate keeps private:
/// its derived `Hash` writes them as one `u32` (`coupon_bits_are_those_the_crate_writes`).
fn coupon_bits(c: Coupon) -> u32 {
    #[derive(Default)]
    struct Bits(u32);
    impl std::hash::Hasher for Bits {
        fn finish(&self) -> u64 {
            u64::from(self.0)
        }
        fn write(&mut self, _: &[u8]) {}
        fn write_u32(&mut self, bits: u32) {
            self.0 = bits;
        }
    }
    let mut bits = Bits::default();
    std::hash::Hash::hash(&c, &mut bits);
    bits.0
}

/// Rewrites a dense HLL_8 sketch's estimator fields and its count of zero registers from its
/// registers alone (see [`WarehouseSketch::to_bytes`]).
///
/// The register sums are taken from a count of each register value, not register by register:
/// a division per register is a sixteenth of the instructions of writing a year's table. The
/// sums are the same to the bit, in any order: every term is a power of two from 2^-63 up,
/// and at most 2^21 of them (`lg_k` 21) keep every partial sum of either within 53
/// significant bits (2^21 times 2^-32 at most, in steps of 2^-63; 2^21 at most, in steps of
/// 2^-31), so no addition rounds.
fn canonical_dense(b: &mut [u8]) {
    const PREAMBLE: usize = 40;
    const OUT_OF_ORDER: u8 = 16;
    if b.len() < PREAMBLE || (b[7] >> 2) & 0x3 != 2 {
        return;
    }
    // Four counts, one per register of each group of four: neighbouring registers often hold
    // the same value, and one count's increments would then wait on each other.
    let mut counts = [[0u32; 64]; 4];
    let mut fours = b[PREAMBLE..].chunks_exact(4);
    for r in &mut fours {
        for (count, &v) in counts.iter_mut().zip(r) {
            count[usize::from(v & 63)] += 1;
        }
    }
    for &v in fours.remainder() {
        counts[0][usize::from(v & 63)] += 1;
    }
    let mut all = [0u32; 64];
    for (v, n) in all.iter_mut().enumerate() {
        *n = counts.iter().map(|c| c[v]).sum();
    }
    let (kxq0, kxq1) = register_sums(&all);
    b[5] |= OUT_OF_ORDER;
    b[8..16].copy_from_slice(&0f64.to_le_bytes());
    b[16..24].copy_from_slice(&kxq0.to_le_bytes());
    b[24..32].copy_from_slice(&kxq1.to_le_bytes());
    b[32..36].copy_from_slice(&all[0].to_le_bytes());
}

/// DataSketches' `kxq0` and `kxq1` of registers counted by value (`counts[v]` registers hold
/// `v`): the sums of 2^-v over the registers below 32, and over those from 32 up.
fn register_sums(counts: &[u32; 64]) -> (f64, f64) {
    let sum = |values: std::ops::Range<usize>| {
        values
            .map(|v| f64::from(counts[v]) / (1u64 << v) as f64)
            .sum::<f64>()
    };
    (sum(0..32), sum(32..64))
}

/// Checks a dense (HLL mode) HLL_8 sketch's registers: exactly `2^lg_k` of them after the
/// 40-byte preamble, none above 63 (a register holds six bits of leading zeros), as many
/// zeros as the preamble says, and finite, non-negative estimator values. Other modes and
/// types are left to the crate.
fn check_dense_hll8(b: &[u8]) -> Result<(), &'static str> {
    const PREAMBLE: usize = 40;
    let (Some(&lg_k), Some(&mode)) = (b.get(3), b.get(7)) else {
        return Ok(());
    };
    // Current mode HLL (low two bits 2), target type HLL_8 (next two bits 2).
    if mode & 0x3 != 2 || (mode >> 2) & 0x3 != 2 || !(4..=21).contains(&lg_k) {
        return Ok(());
    }
    let k = 1usize << lg_k;
    if b.len() != PREAMBLE + k {
        return Err("dense hll_sketch does not hold 2^lg_k registers");
    }
    let f64_at = |at: usize| f64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
    if [8, 16, 24]
        .iter()
        .any(|&at| !f64_at(at).is_finite() || f64_at(at) < 0.0)
    {
        return Err("dense hll_sketch's estimator values are not numbers");
    }
    let registers = &b[PREAMBLE..];
    if registers.iter().any(|&r| r > 63) {
        return Err("dense hll_sketch has a register above 63");
    }
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if u32::from_le_bytes([b[32], b[33], b[34], b[35]]) as usize != zeros {
        return Err("dense hll_sketch's count of zero registers does not match");
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    use hex::encode as hex;

    /// The bytes of the pinned `hyperloglogplus` (=0.4.1) as postcard writes them: the
    /// `sketch` column and every state hold this layout, so a change of the crate that moved a
    /// byte must fail here, not in a warehouse.
    #[test]
    fn golden_bytes_of_the_pinned_layout() {
        let mut sparse = UserSketch::new(4);
        sparse.insert(identity_hash("root"));
        sparse.insert(identity_hash("jaime"));
        assert_eq!(
            hex(sparse.to_bytes()),
            "02040410808080080c0002fabeb10f08dee7a5019cd78b0e00"
        );
        let mut dense = UserSketch::new(4);
        (0..200).for_each(|i| dense.insert(identity_hash(&format!("u{i}"))));
        // Dense: 16 six-bit registers in 4 words, then the count and the zero registers.
        assert_eq!(
            hex(dense.to_bytes()),
            "02040410808080080c000000000104c6a1a119c883b120c382c128061000"
        );
        let mut back = UserSketch::from_bytes(&dense.to_bytes()).unwrap();
        assert_eq!(back.estimate(), dense.estimate());
    }

    /// The same users give the same `hll_sketch` bytes, in any order, built at once, read back
    /// from bytes (as a state's are) or merged from parts (as nights are), list, set or dense.
    #[test]
    fn warehouse_sketch_bytes_depend_on_the_users_only() {
        for n in [3, 7, 100, 600, 5000] {
            let all: Vec<Coupon> = (0..n).map(|i| identity_coupon(&format!("u{i}"))).collect();
            let whole = WarehouseSketch::of_users(12, &all);
            let reversed: Vec<Coupon> = all.iter().rev().copied().collect();
            assert!(
                WarehouseSketch::of_users(12, &reversed).to_bytes() == whole.to_bytes(),
                "{n} users in reverse"
            );
            let back = WarehouseSketch::from_bytes(&whole.to_bytes()).unwrap();
            assert!(back.to_bytes() == whole.to_bytes(), "{n} users read back");
            let (first, second) = all.split_at(n / 3);
            let mut merged = WarehouseSketch::of_users(12, second);
            merged.merge(&WarehouseSketch::of_users(12, first)).unwrap();
            assert!(merged.to_bytes() == whole.to_bytes(), "{n} users merged");
            // Read back, the canonical bytes estimate what the sketch estimated (to HLL's
            // error: a dense sketch then estimates from its registers alone).
            let e = WarehouseSketch::from_bytes(&whole.to_bytes())
                .unwrap()
                .estimate();
            assert!((e - n as f64).abs() <= 0.05 * n as f64, "{n} users: {e}");
        }
    }

    /// Distinct coupons of made-up users, in the order made.
    fn distinct_coupons(n: usize) -> Vec<Coupon> {
        let mut seen = std::collections::HashSet::new();
        (0..)
            .map(|i| identity_coupon(&format!("user-{i}")))
            .filter(|&c| seen.insert(c))
            .take(n)
            .collect()
    }

    /// The one-by-one sketch of these coupons, as the crate builds it.
    fn inserted(lg_k: u8, coupons: &[Coupon]) -> WarehouseSketch {
        let mut sketch = WarehouseSketch::new(lg_k);
        coupons
            .iter()
            .for_each(|&c| sketch.hll.update_with_coupon(c));
        sketch
    }

    #[test]
    fn coupon_bits_are_those_the_crate_writes() {
        for c in distinct_coupons(50) {
            let bytes = inserted(12, &[c]).hll.serialize();
            // A list of one coupon: the preamble's 8 bytes, then the coupon.
            assert_eq!(bytes.len(), 12);
            assert_eq!(
                u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
                coupon_bits(c)
            );
        }
    }

    #[test]
    fn dense_from_is_where_the_crate_turns_dense() {
        for lg_k in 4..=18 {
            let n = dense_from(lg_k);
            let coupons = distinct_coupons(n);
            let mut sketch = inserted(lg_k, &coupons[..n - 1]);
            assert!(!sketch.is_dense(), "lg_k {lg_k}: dense before {n} coupons");
            sketch.insert(coupons[n - 1]);
            assert!(sketch.is_dense(), "lg_k {lg_k}: not dense at {n} coupons");
        }
    }

    /// Built at once, a sketch has the bytes of its users inserted one by one, in any order
    /// and with repeats or sorted and distinct, whether it stays a list or set, turns dense
    /// among the first coupons, at once (sorted) or only later (repeats), and when more users
    /// are added to a dense sketch at once.
    #[test]
    fn users_added_at_once_give_the_bytes_of_one_by_one() {
        let mut rng = crate::test_support::seeded(0xc011_0175);
        for lg_k in [4u8, 7, 8, 11, 14] {
            let k = 1usize << lg_k;
            let sizes = [0, 1, 7, 8, 9, k / 8, dense_from(lg_k) - 1, dense_from(lg_k)];
            for n in sizes
                .into_iter()
                .chain([dense_from(lg_k) + 1, 2 * k, 9 * k])
            {
                let mut coupons = distinct_coupons(n);
                // Shuffled, then a third of them again, some in a row: the first coupons hold
                // repeats, and the crate turns dense past `dense_from`.
                for i in (1..coupons.len()).rev() {
                    coupons.swap(i, (rng() % (i as u64 + 1)) as usize);
                }
                let again: Vec<Coupon> = coupons.iter().step_by(3).copied().collect();
                coupons.splice(0..0, again);
                let one_by_one = inserted(lg_k, &coupons);
                let at_once = WarehouseSketch::of_users(lg_k, &coupons);
                assert!(
                    at_once.to_bytes() == one_by_one.to_bytes(),
                    "lg_k {lg_k}, {n} users"
                );
                assert_eq!(at_once.is_dense(), one_by_one.is_dense());
                // Sorted, one of each: dense at once from `dense_from` on.
                let mut sorted = coupons.clone();
                sorted.sort_unstable();
                sorted.dedup();
                let of_sorted = WarehouseSketch::of_users(lg_k, &sorted);
                assert!(
                    of_sorted.to_bytes() == one_by_one.to_bytes(),
                    "lg_k {lg_k}, {n} users sorted"
                );
                assert_eq!(of_sorted.is_dense(), one_by_one.is_dense());
                // Built so, a dense sketch counts its zero registers right in memory too.
                for sketch in [&at_once, &of_sorted] {
                    assert_eq!(check_dense_hll8(&sketch.hll.serialize()), Ok(()));
                }
                let (first, second) = coupons.split_at(coupons.len() / 2);
                let mut added = WarehouseSketch::of_users(lg_k, first);
                let (one, others) = second.split_at(second.len().min(1));
                added.insert_all(&[one, others]);
                assert!(
                    added.to_bytes() == one_by_one.to_bytes(),
                    "lg_k {lg_k}, {n} added"
                );
            }
        }
    }

    /// The register sums from counts are those of the register-order loop they replaced, to
    /// the bit, for registers of every value, mostly low (as real sketches' are) or spread.
    #[test]
    fn register_sums_from_counts_equal_the_register_order_sums() {
        let mut rng = crate::test_support::seeded(0x5eed_05a5);
        for lg_k in [4u32, 12, 18, 21] {
            for spread in [2u64, 8, 64] {
                let registers: Vec<u8> = (0..1usize << lg_k)
                    .map(|_| {
                        let r = rng();
                        // Mostly small values, now and then any of 0..=63.
                        let bound = if r.is_multiple_of(97) { 64 } else { spread };
                        ((r >> 8) % bound) as u8
                    })
                    .collect();
                let (mut kxq0, mut kxq1) = (0.0f64, 0.0f64);
                let mut counts = [0u32; 64];
                for &r in &registers {
                    let inverse = 1.0 / (1u64 << r) as f64;
                    if r < 32 {
                        kxq0 += inverse;
                    } else {
                        kxq1 += inverse;
                    }
                    counts[usize::from(r)] += 1;
                }
                let (c0, c1) = register_sums(&counts);
                assert_eq!(c0.to_bits(), kxq0.to_bits(), "lg_k {lg_k}, spread {spread}");
                assert_eq!(c1.to_bits(), kxq1.to_bits(), "lg_k {lg_k}, spread {spread}");
            }
        }
        // Every register at 63, and every one at 32 and at 0: the extremes of both sums.
        for (value, n) in [(63u8, 1usize << 21), (32, 1 << 21), (0, 1 << 21), (31, 3)] {
            let mut counts = [0u32; 64];
            counts[usize::from(value)] = n as u32;
            let sequential = (0..n).fold(0.0f64, |s, _| s + 1.0 / (1u64 << value) as f64);
            let (c0, c1) = register_sums(&counts);
            let got = if value < 32 { c0 } else { c1 };
            assert_eq!(
                got.to_bits(),
                sequential.to_bits(),
                "{n} registers at {value}"
            );
        }
    }

    /// `hll_sketch` bytes equal those Apache DataSketches' own Python package writes for the
    /// same names (`hll_sketch(lg_k, HLL_8)`, `update(name)`, `serialize_compact()`):
    /// the hash is Java's `update(String)`, not Rust's `Hash for str`.
    #[test]
    fn warehouse_sketch_bytes_equal_datasketches_python() {
        let of = |lg_k: u8, names: &[&str]| {
            let coupons: Vec<Coupon> = names.iter().map(|n| identity_coupon(n)).collect();
            hex(WarehouseSketch::of_users(lg_k, &coupons).to_bytes())
        };
        assert_eq!(of(4, &["root"]), "02010704030801082311cf11");
        // Python kept its insertion order, regtally sorts: the same header and coupons.
        let coupons = |hex: &str| {
            let mut c: Vec<String> = (16..hex.len())
                .step_by(8)
                .map(|i| hex[i..i + 8].to_owned())
                .collect();
            c.sort();
            (hex[..16].to_owned(), c)
        };
        assert_eq!(
            coupons(&of(12, &["élodie", "root", "jaime"])),
            coupons("0201070c030803082311cf11ed19310a953fe90b")
        );
        let rust_hash = {
            let mut h = WarehouseSketch::new(4);
            h.hll.update("root");
            hex(h.to_bytes())
        };
        assert_ne!(rust_hash, of(4, &["root"]));
    }

    use super::*;
    use crate::keys::{identity_coupon, identity_hash};

    #[test]
    fn identity_hash_is_pinned() {
        // xxh3-64 with seed 0, as the reference implementation (and Python's `xxhash`
        // package, `xxh3_64_intdigest`) computes it. Changing these breaks every stored sketch.
        assert_eq!(identity_hash(""), 0x2D06_8005_38D3_94C2);
        assert_eq!(identity_hash("root"), 0x0A5C_F7B9_9AE7_6577);
        assert_eq!(identity_hash("jaime"), 0x7B17_DEC4_4F0E_52A0);
    }

    #[test]
    fn small_sets_count_exactly_while_sparse() {
        let mut s = UserSketch::new(14);
        for i in 0..500u64 {
            s.insert(identity_hash(&format!("user{i}")));
            s.insert(identity_hash(&format!("user{i}")));
        }
        assert_eq!(s.estimate(), 500);
    }

    #[test]
    fn merge_is_union() {
        let mut a = UserSketch::new(14);
        let mut b = UserSketch::new(14);
        for i in 0..300u64 {
            a.insert(identity_hash(&format!("a{i}")));
            b.insert(identity_hash(&format!("a{}", i + 100)));
        }
        a.merge(&b).unwrap();
        assert_eq!(a.estimate(), 400);
        assert!(a.merge(&UserSketch::new(12)).is_err());
    }

    #[test]
    fn large_sets_within_error() {
        let mut s = UserSketch::new(14);
        for i in 0..200_000u64 {
            s.insert(identity_hash(&format!("user{i}")));
        }
        let e = s.estimate() as f64;
        // 1.04 / sqrt(2^14) is 0.8%; allow four standard errors.
        assert!((e - 200_000.0).abs() / 200_000.0 < 0.033, "estimate {e}");
    }

    #[test]
    fn bytes_are_independent_of_insert_order_sparse_or_dense() {
        for (n, precision) in [(50, 14), (3000, 14), (20_000, 14), (2000, 10)] {
            let names: Vec<u64> = (0..n).map(|i| identity_hash(&format!("u{i}"))).collect();
            let mut fwd = UserSketch::new(precision);
            let mut shuffled = UserSketch::new(precision);
            names.iter().for_each(|h| fwd.insert(*h));
            // A fixed permutation that interleaves both ends.
            for i in 0..names.len() {
                let j = if i % 2 == 0 {
                    i / 2
                } else {
                    names.len() - 1 - i / 2
                };
                shuffled.insert(names[j]);
            }
            assert!(
                fwd.to_bytes() == shuffled.to_bytes(),
                "n {n} precision {precision}"
            );
        }
    }

    /// The sorted, distinct sparse codes of these identity hashes.
    fn codes_of(precision: u8, hashes: &[u64]) -> Vec<u32> {
        let mut codes: Vec<u32> = hashes.iter().map(|&h| sparse_code(precision, h)).collect();
        codes.sort_unstable();
        codes.dedup();
        codes
    }

    /// Built in one pass, a sketch has the crate's bytes and estimate, sparse or dense, on
    /// either side of the switch, at every precision, and stays the crate's own sketch
    /// afterwards (it merges and takes inserts as one built by inserting).
    #[test]
    fn of_codes_equals_inserting_one_by_one() {
        let mut drawn = 0u64;
        let mut next = || {
            drawn += 1;
            identity_hash(&format!("user {drawn}"))
        };
        let sizes = [0, 1, 2, 3, 5, 131, 132, 133, 1000, 2500];
        for precision in [4, 5, 8, 10, 14, 16, 18] {
            // Around the switch to dense: up to a little past the registers' size in codes.
            let m = 1usize << precision;
            let near_switch = (0..24).map(|i| m / 8 + i * m / 32);
            for n in sizes.into_iter().chain(near_switch) {
                let hashes: Vec<u64> = (0..n).map(|_| next()).collect();
                let mut inserted = UserSketch::new(precision);
                hashes.iter().for_each(|&h| inserted.insert(h));
                let mut built = UserSketch::of_codes(precision, &codes_of(precision, &hashes));
                assert_eq!(
                    built.count().to_bits(),
                    inserted.count().to_bits(),
                    "estimate, n {n} precision {precision}"
                );
                assert!(
                    built.to_bytes() == inserted.to_bytes(),
                    "bytes, n {n} precision {precision}"
                );
                let more: Vec<u64> = (0..50).map(|_| next()).collect();
                let other = UserSketch::of_codes(precision, &codes_of(precision, &more));
                built.merge(&other).unwrap();
                inserted.merge(&other).unwrap();
                let one = next();
                built.insert(one);
                inserted.insert(one);
                assert!(
                    built.to_bytes() == inserted.to_bytes(),
                    "after a merge, n {n} precision {precision}"
                );
            }
        }
        // Hashes whose bits between the precision and 25 are zero take the other encoding.
        let low: Vec<u64> = (0..400u64).map(|i| (i << 50) | (i * 7919)).collect();
        let mut inserted = UserSketch::new(14);
        low.iter().for_each(|&h| inserted.insert(h));
        assert!(UserSketch::of_codes(14, &codes_of(14, &low)).to_bytes() == inserted.to_bytes());
    }

    #[test]
    fn format_1_bytes_still_read() {
        for n in [0, 40, 3000, 20_000] {
            let mut s = UserSketch::new(14);
            (0..n).for_each(|i| s.insert(identity_hash(&format!("u{i}"))));
            let v1 = s.to_bytes_v1_for_tests();
            assert_eq!(v1[0], 1);
            let mut back = UserSketch::from_bytes(&v1).unwrap();
            assert_eq!(back.estimate(), s.estimate());
            assert!(back.to_bytes() == s.to_bytes(), "n {n}");
        }
        let mut s = UserSketch::new(14);
        s.insert(identity_hash("root"));
        let mut v2 = s.to_bytes();
        v2.push(0);
        assert!(matches!(
            UserSketch::from_bytes(&v2),
            Err(SketchError::Corrupt(_))
        ));
    }

    #[test]
    fn bytes_round_trip_and_are_independent_of_insert_order() {
        let names: Vec<u64> = (0..2000).map(|i| identity_hash(&format!("u{i}"))).collect();
        let mut fwd = UserSketch::new(10);
        let mut rev = UserSketch::new(10);
        names.iter().for_each(|h| fwd.insert(*h));
        names.iter().rev().for_each(|h| rev.insert(*h));
        let bytes = fwd.to_bytes();
        assert_eq!(bytes, rev.to_bytes());
        assert_eq!(bytes[0], SKETCH_FORMAT_VERSION);
        let mut back = UserSketch::from_bytes(&bytes).unwrap();
        assert_eq!(back.precision(), 10);
        assert_eq!(back.estimate(), fwd.estimate());
        assert!(matches!(
            UserSketch::from_bytes(&[9, b'{']),
            Err(SketchError::Version(9))
        ));
        assert!(UserSketch::from_bytes(&[1, 10, b'{']).is_err());
        let mut wrong_precision = bytes.clone();
        wrong_precision[1] = 12;
        assert!(UserSketch::from_bytes(&wrong_precision).is_err());
    }

    /// SPEC §8's interval, measured: on random sets of 10 to 1,000,000 users at several
    /// precisions, the 95% interval holds the true count in at least 93% of cases (and in
    /// most cases at every size and precision), and is never wider than twice what the
    /// theoretical error `1.04/√m` gives at that size.
    #[test]
    fn the_95_percent_interval_covers_the_true_count() {
        let sizes = [10u64, 100, 1_000, 5_000, 20_000, 100_000, 1_000_000];
        let mut rng = fastrand::Rng::with_seed(95);
        let (mut cases, mut covered) = (0u32, 0u32);
        let mut worst = (1.0f64, 0u8, 0u64);
        for precision in [8u8, 12, 14, 16] {
            let m = f64::from(1u32 << precision);
            for size in sizes {
                // Fewer sets of a million: each is a million inserts.
                let trials = if size >= 1_000_000 { 12 } else { 60 };
                let mut hits = 0;
                for _ in 0..trials {
                    let mut sketch = UserSketch::new(precision);
                    for _ in 0..size {
                        sketch.insert(rng.u64(..));
                    }
                    let Bounds { lower, upper } = sketch.bounds();
                    let estimate = sketch.estimate();
                    assert!(lower <= estimate && estimate <= upper);
                    let theoretical = 2.0 * Z_95 * HLL_ERROR * size as f64 / m.sqrt();
                    assert!(
                        (upper - lower) as f64 <= 2.0 * theoretical + 1.0,
                        "precision {precision}, {size} users: [{lower}, {upper}]"
                    );
                    hits += u32::from((lower..=upper).contains(&(size as i64)));
                }
                cases += trials;
                covered += hits;
                let share = f64::from(hits) / f64::from(trials);
                if share < worst.0 {
                    worst = (share, precision, size);
                }
            }
        }
        let share = f64::from(covered) / f64::from(cases);
        eprintln!("held in {covered} of {cases} cases ({share:.3}); worst: {worst:?}");
        assert!(
            share >= 0.93,
            "the interval held the true count in {share:.3} of {cases} cases"
        );
        assert!(worst.0 >= 0.8, "worst: {worst:?}");
    }

    /// Whether a sketch is dense is tracked through inserts, merges, codes and bytes, so that
    /// bounds need not read the crate's state back: the tracked answer is the state's.
    #[test]
    fn bounds_from_the_tracked_shape_are_those_of_the_state() {
        let mut rng = fastrand::Rng::with_seed(7);
        let hashes: Vec<u64> = (0..30_000).map(|_| rng.u64(..)).collect();
        for precision in [8u8, 12, 14] {
            for n in [0usize, 10, 900, 3_000, 12_000, 30_000] {
                let mut inserted = UserSketch::new(precision);
                hashes[..n].iter().for_each(|&h| inserted.insert(h));
                let mut codes: Vec<u32> = hashes[..n]
                    .iter()
                    .map(|&h| sparse_code(precision, h))
                    .collect();
                codes.sort_unstable();
                codes.dedup();
                let of_codes = UserSketch::of_codes(precision, &codes);
                let mut merged = UserSketch::new(precision);
                let mut half = UserSketch::new(precision);
                hashes[n / 2..n].iter().for_each(|&h| half.insert(h));
                merged.merge(&of_codes).unwrap();
                merged.merge(&half).unwrap();
                let read = UserSketch::from_bytes(&of_codes.clone().to_bytes()).unwrap();
                for mut s in [inserted, of_codes, merged, read] {
                    let dense = s.layout().registers.is_some();
                    assert!(s.dense.is_none_or(|d| d == dense), "{precision} {n}");
                    let mut unknown = s.clone();
                    unknown.dense = None;
                    assert_eq!(s.bounds(), unknown.bounds(), "{precision} {n}");
                }
            }
        }
    }

    #[test]
    fn bounds_of_a_small_sparse_sketch_are_its_estimate() {
        let mut s = UserSketch::new(14);
        for i in 0..500u64 {
            s.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        let e = s.estimate();
        assert_eq!(s.bounds(), Bounds { lower: e, upper: e });
        assert_eq!(UserSketch::new(14).bounds(), Bounds { lower: 0, upper: 0 });
    }
}
