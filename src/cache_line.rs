//! Asking the processor for a cache line before it is needed: de-duplication's id set and the
//! ledger's set of the repositories whose paths it logged look up random addresses of tables
//! far larger than the cache, and a lookup issued a few records ahead overlaps its miss with
//! the work between.

/// Fetches the cache line of `value` ahead of its use. A prefetch is only a hint: it reads
/// nothing and cannot fault, and `value` is a live reference besides.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn prefetch<T>(value: &T) {
    #[target_feature(enable = "sse")]
    fn fetch(p: *const i8) {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    // SAFETY: SSE is part of the x86-64 baseline, so every x86-64 CPU runs it.
    unsafe { fetch((value as *const T).cast()) }
}

#[cfg(not(target_arch = "x86_64"))]
pub fn prefetch<T>(_: &T) {}
