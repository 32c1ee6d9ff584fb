//! The set of event ids seen: 128-bit hashes in open-addressing tables, sharded so that a table
//! grows one shard at a time, on huge pages where the system has them.
//!
//! Its own table rather than a `HashMap` (or `hashbrown`'s): a lookup's slot is fetched a few
//! ids ahead ([`IdSet::prefetch`]) and the tables sit on huge pages ([`super::slots`]), which
//! about halved de-duplication's share of a run and which no map of a crate offers.

use super::slots::Slots;
use rayon::prelude::*;

/// Shards of the id set, by the top bits of the id.
const SHARD_BITS: u32 = 6;

/// A set of 128-bit ids: open addressing with linear probing, 16 bytes a slot, at most three
/// quarters full. The all-zero id is kept aside, since a zero slot means empty.
#[derive(Debug)]
pub struct IdSet {
    shards: Vec<Slots>,
    lens: Vec<usize>,
    has_zero: bool,
    len: usize,
    bytes: usize,
}

/// Slots a shard starts with.
const FIRST_SLOTS: usize = 4;

/// An id did not fit: the set would have grown past its limit.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Default for IdSet {
    fn default() -> IdSet {
        let shards: Vec<Slots> = (0..1 << SHARD_BITS)
            .map(|_| Slots::new(FIRST_SLOTS))
            .collect();
        IdSet {
            bytes: shards.len() * FIRST_SLOTS * 16,
            shards,
            lens: vec![0; 1 << SHARD_BITS],
            has_zero: false,
            len: 0,
        }
    }
}

impl IdSet {
    /// How many ids the set holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of its tables.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn split(id: u128) -> (usize, [u64; 2]) {
        (
            (id >> (128 - SHARD_BITS)) as usize,
            [id as u64, (id >> 64) as u64],
        )
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(slots: &[[u64; 2]], key: [u64; 2]) -> usize {
        let mask = slots.len() - 1;
        // The low word indexes the slot: the top bits already chose the shard.
        let mut i = key[0] as usize & mask;
        loop {
            let s = slots[i];
            if s == key || s == [0, 0] {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Whether the set holds `id`.
    pub fn contains(&self, id: u128) -> bool {
        if id == 0 {
            return self.has_zero;
        }
        let (shard, key) = Self::split(id);
        let slots = &self.shards[shard];
        slots[Self::find(slots, key)] == key
    }

    /// Asks the processor to fetch the slot where `id` would be looked up first: ids are
    /// random, so each lookup misses the cache, and issuing the next few while one waits
    /// keeps the misses in flight together.
    #[inline]
    pub fn prefetch(&self, id: u128) {
        let (shard, key) = Self::split(id);
        let slots = &self.shards[shard];
        crate::cache_line::prefetch(&slots[key[0] as usize & (slots.len() - 1)]);
    }

    /// Adds `id`; true when it was not there. Fails, changing nothing, when the set would have
    /// to grow past `limit` bytes to take it, or is past it already (its first tables are).
    pub fn insert(&mut self, id: u128, limit: usize) -> Result<bool, Full> {
        if self.bytes > limit && !self.contains(id) {
            return Err(Full);
        }
        if id == 0 {
            let new = !std::mem::replace(&mut self.has_zero, true);
            self.len += usize::from(new);
            return Ok(new);
        }
        let (shard, key) = Self::split(id);
        let slots = &self.shards[shard];
        let at = Self::find(slots, key);
        if slots[at] == key {
            return Ok(false);
        }
        if (self.lens[shard] + 1) * 4 > slots.len() * 3 {
            if self.bytes + slots.len() * 16 > limit {
                return Err(Full);
            }
            self.grow(shard);
        }
        let slots = &mut self.shards[shard];
        let at = Self::find(slots, key);
        slots[at] = key;
        self.lens[shard] += 1;
        self.len += 1;
        Ok(true)
    }

    fn grow(&mut self, shard: usize) {
        let slots = self.shards[shard].len() * 2;
        self.move_into(shard, Slots::new(slots));
    }

    /// Moves a shard's ids into `slots`, empty, whose length is a power of two that holds them.
    fn move_into(&mut self, shard: usize, mut slots: Slots) {
        let old = std::mem::take(&mut self.shards[shard]);
        for &key in old.iter().filter(|k| **k != [0, 0]) {
            let at = Self::find(&slots, key);
            slots[at] = key;
        }
        self.bytes = self.bytes + slots.len() * 16 - old.len() * 16;
        self.shards[shard] = slots;
    }

    /// Makes room for `ids` ids in all, within `limit` bytes, so that the tables need not grow
    /// (and rehash every id, twice over, as they double) while they fill. Growing cost two
    /// thirds of de-duplication's time on 4 million ids.
    ///
    /// The new tables are allocated and zeroed on every core of the current rayon pool. Fresh
    /// memory is slow to touch where the kernel must first get it from a hypervisor (up to
    /// half a second for 128 MiB of huge pages on the benchmark's VM), and done by the
    /// consumer alone it would leave the other cores idle that long at the start of a run. While
    /// it waits for the other cores the calling thread may run other tasks of the pool; the
    /// pipeline calls this under the consumer's lock, which its tasks only ever try.
    pub fn reserve(&mut self, ids: usize, limit: usize) {
        let shards = self.shards.len();
        let per_shard = (ids / shards + 1) * 4 / 3 + 1;
        let mut slots = per_shard.next_power_of_two();
        while slots > FIRST_SLOTS && shards * slots * 16 > limit {
            slots /= 2;
        }
        let grown: Vec<usize> = (0..shards)
            .filter(|&s| self.shards[s].len() < slots && self.lens[s] * 4 <= slots * 3)
            .collect();
        let tables: Vec<Slots> = grown.par_iter().map(|_| Slots::new(slots)).collect();
        for (shard, table) in grown.into_iter().zip(tables) {
            self.move_into(shard, table);
        }
    }

    /// Every id, sorted.
    pub fn into_sorted(self) -> Vec<u128> {
        let mut ids: Vec<u128> = self
            .shards
            .iter()
            .flat_map(|s| s.iter().copied())
            .filter(|k| *k != [0, 0])
            .map(|k| u128::from(k[0]) | (u128::from(k[1]) << 64))
            .collect();
        if self.has_zero {
            ids.push(0);
        }
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_set_holds_what_it_took_and_refuses_to_grow_past_its_limit() {
        let mut set = IdSet::default();
        let spread = |i: u128| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        for i in 0..10_000u128 {
            assert_eq!(set.insert(spread(i), usize::MAX), Ok(true));
        }
        assert_eq!(set.insert(spread(5), usize::MAX), Ok(false));
        assert_eq!(set.insert(0, usize::MAX), Ok(true));
        assert_eq!(set.insert(0, usize::MAX), Ok(false));
        assert!(set.contains(spread(9_999)) && set.contains(0) && !set.contains(spread(10_000)));
        assert_eq!(set.len(), 10_001);
        // 16 bytes a slot, at most three quarters full, grown by doubling: under 43 an id.
        assert!(set.bytes() < 10_001 * 43, "{}", set.bytes());
        let limit = set.bytes();
        let mut i = 10_000;
        while set.insert(spread(i), limit).is_ok() {
            i += 1;
        }
        assert_eq!(set.insert(spread(i), limit), Err(Full));
        assert_eq!(set.bytes(), limit);
        assert!(!set.contains(spread(i)));
        let sorted = set.into_sorted();
        assert!(sorted.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(sorted.len() as u128, i + 1);
    }

    #[test]
    fn a_reserved_set_holds_its_ids_without_growing_and_stays_within_its_limit() {
        let spread = |i: u128| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let mut set = IdSet::default();
        set.insert(spread(0), usize::MAX).unwrap();
        set.reserve(30_000, usize::MAX);
        let reserved = set.bytes();
        assert_eq!(
            reserved,
            set.shards.iter().map(|s| s.len() * 16).sum::<usize>()
        );
        for i in 0..30_000 {
            assert_eq!(set.insert(spread(i), usize::MAX), Ok(i != 0));
        }
        assert_eq!(set.bytes(), reserved, "no shard grew");
        assert!(set.contains(spread(0)) && set.contains(spread(29_999)));
        // A reservation never passes the limit.
        let mut small = IdSet::default();
        small.reserve(1_000_000, 100_000);
        assert!(small.bytes() <= 100_000, "{}", small.bytes());
    }

    /// Tables of a huge page or more (on their own boundaries, see `slots`) hold and give
    /// back their ids as small ones do, across a reservation that moves them into such tables.
    #[test]
    fn ids_survive_the_move_into_huge_page_tables() {
        let spread = |i: u128| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        let mut set = IdSet::default();
        for i in 0..50_000 {
            assert_eq!(set.insert(spread(i), usize::MAX), Ok(true));
        }
        // 64 shards of 2^17 slots: 2 MiB each.
        set.reserve(6_000_000, usize::MAX);
        assert!(set.shards.iter().all(|s| s.len() == 1 << 17));
        for i in 0..100_000 {
            assert_eq!(set.insert(spread(i), usize::MAX), Ok(i >= 50_000), "{i}");
        }
        let mut want: Vec<u128> = (0..100_000).map(spread).collect();
        want.sort_unstable();
        assert_eq!(set.into_sorted(), want);
    }
}
