//! The memory budget (`--memory-limit`) and the shares of it the stages that buffer may hold.

/// How much memory the buffering stages of a run may hold (`--memory-limit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: u64,
}

impl MemoryBudget {
    /// The default limit, 1 GiB: a night of a busy registry fits without spilling, and a run
    /// sits beside other services on a small machine.
    pub const DEFAULT: u64 = 1 << 30;

    pub fn new(limit: u64) -> MemoryBudget {
        MemoryBudget { limit }
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What de-duplication may hold: its id set, or, once spilled, the events it defers.
    /// Two fifths of the limit; the ledger has as much, and the last fifth is left for what
    /// no stage reserves (merge buffers, the allocator's slack).
    pub fn dedup_bytes(&self) -> usize {
        self.share(2, 5)
    }

    /// What the repository ledger may hold of the events it replays: two fifths of the limit.
    pub fn ledger_bytes(&self) -> usize {
        self.share(2, 5)
    }

    /// What the ledger earlier runs left (a state's, or the seed) may hold in memory while the
    /// run reads: a tenth of the limit, a quarter of the ledger's share (past it, its parts go
    /// to temporary files until their turn to replay).
    pub fn prior_ledger_bytes(&self) -> usize {
        self.share(1, 10)
    }

    /// The read buffer given to each run when `runs` runs are merged: a tenth of the limit
    /// shared among them, between 4 KiB and 1 MiB.
    pub fn merge_buffer(&self, runs: usize) -> usize {
        (self.share(1, 10) / runs.max(1)).clamp(4 << 10, 1 << 20)
    }

    fn share(&self, num: u64, den: u64) -> usize {
        usize::try_from(self.limit / den * num).unwrap_or(usize::MAX)
    }
}

impl Default for MemoryBudget {
    fn default() -> MemoryBudget {
        MemoryBudget::new(MemoryBudget::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_shares() {
        let b = MemoryBudget::new(1000);
        assert_eq!((b.dedup_bytes(), b.ledger_bytes()), (400, 400));
        assert_eq!(b.merge_buffer(3), 4 << 10);
        assert_eq!(MemoryBudget::default().merge_buffer(1), 1 << 20);
    }
}
