//! The memory of one shard of the id set: a fixed number of 16-byte slots, all empty (zero)
//! at first.
//!
//! Ids are random, so every lookup lands on another page of a table that reaches a few
//! hundred MiB, and with 4 KiB pages nearly every one misses the TLB too: the prefetch of each
//! id's slot then waits for a page walk, which was most of de-duplication's time. A table of
//! 2 MiB or more is therefore allocated on a 2 MiB boundary and, on Linux, advised for
//! transparent huge pages (`MADV_HUGEPAGE`) before it is first written; the kernel then backs
//! it with 2 MiB pages wherever it can, which about halved de-duplication's share of a run
//! (benches/README.md). Where transparent huge pages are off, the advice changes nothing.

use std::alloc::Layout;
use std::ptr::NonNull;

/// The size of a huge page on x86-64 and of the boundaries large tables are put on.
const HUGE_PAGE: usize = 2 << 20;

/// `len` slots, owned like a `Box<[[u64; 2]]>`, whose allocation may be more aligned than a
/// slot (hence not a `Vec`, which frees with the alignment of its element).
pub(super) struct Slots {
    ptr: NonNull<[u64; 2]>,
    len: usize,
}

// SAFETY: `Slots` owns its memory alone, as a `Box<[[u64; 2]]>` does, and hands it out only
// through `&self` and `&mut self`.
unsafe impl Send for Slots {}
// SAFETY: as above; `&Slots` gives only shared access to plain integers.
unsafe impl Sync for Slots {}

impl Slots {
    /// `len` empty slots. They are written rather than allocated zeroed: zeroed memory maps
    /// the shared zero page, and the first write to each page after a lookup had read it then
    /// cost a fault and a flush of every core's address translations (5% of a two-thread run).
    pub(super) fn new(len: usize) -> Slots {
        let Some(layout) = Self::layout(len) else {
            return Slots {
                ptr: NonNull::dangling(),
                len: 0,
            };
        };
        // SAFETY: `layout` has a size of at least 16 bytes.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw.cast::<[u64; 2]>()) else {
            std::alloc::handle_alloc_error(layout)
        };
        if layout.align() == HUGE_PAGE {
            advise_huge_pages(raw, layout.size());
        }
        // SAFETY: `ptr` was just allocated for `len` slots, and `[0, 0]` is a valid slot.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        Slots { ptr, len }
    }

    /// The allocation of `len` slots: on a huge-page boundary from a huge page's size on.
    /// `None` for no slots (nothing is allocated).
    fn layout(len: usize) -> Option<Layout> {
        if len == 0 {
            return None;
        }
        let Ok(layout) = Layout::array::<[u64; 2]>(len) else {
            // More than the address space: what `Vec::with_capacity` does too.
            std::alloc::handle_alloc_error(Layout::new::<[u64; 2]>())
        };
        if layout.size() < HUGE_PAGE {
            return Some(layout);
        }
        match layout.align_to(HUGE_PAGE) {
            Ok(aligned) => Some(aligned),
            Err(_) => std::alloc::handle_alloc_error(layout),
        }
    }
}

impl Default for Slots {
    fn default() -> Slots {
        Slots::new(0)
    }
}

impl std::ops::Deref for Slots {
    type Target = [[u64; 2]];

    fn deref(&self) -> &[[u64; 2]] {
        // SAFETY: `ptr` holds `len` initialised slots (or is dangling with `len` 0), owned by
        // `self` for as long as the borrow.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut [[u64; 2]] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `ptr` was allocated with this very layout (`layout` depends on `len`
            // alone, which never changes) and is freed once, here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
        }
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({})", self.len)
    }
}

/// Asks the kernel to back `len` bytes from `start` with transparent huge pages. Only advice:
/// a kernel without them, or with them off, declines, and nothing else changes.
#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *mut u8, len: usize) {
    // SAFETY: `madvise` reads no memory; `start..start + len` is one allocation of ours,
    // page-aligned (it is on a 2 MiB boundary), and the advice does not change its contents.
    let _ = unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut u8, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_start_empty_and_keep_what_is_written() {
        for len in [0, 1, 4, 1000, HUGE_PAGE / 16, 2 * HUGE_PAGE / 16 + 16] {
            let mut slots = Slots::new(len);
            assert_eq!(slots.len(), len);
            assert!(slots.iter().all(|s| *s == [0, 0]));
            for (i, s) in slots.iter_mut().enumerate() {
                *s = [i as u64, !(i as u64)];
            }
            assert!(slots
                .iter()
                .enumerate()
                .all(|(i, s)| *s == [i as u64, !(i as u64)]));
        }
    }

    #[test]
    fn tables_of_a_huge_page_or_more_sit_on_huge_page_boundaries() {
        let small = Slots::new(HUGE_PAGE / 16 - 1);
        let large = Slots::new(HUGE_PAGE / 16);
        let larger = Slots::new(4 * HUGE_PAGE / 16);
        assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(larger.as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(small.as_ptr() as usize % 8, 0);
    }
}
