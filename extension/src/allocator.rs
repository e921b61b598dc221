//! A zero-on-free global allocator: every heap block is wiped before it goes back to the system
//! allocator, and `realloc` always moves (wiping the old block) instead of letting the system
//! allocator abandon a copy.
//!
//! Zeroizing types wipe the values we own; this wipes the copies we do not: the AWS SDK's
//! response buffers and parsed strings, hyper's read and write buffers, `serde_json`'s
//! intermediate strings. Memory still in use (a connection's live buffer) is not covered.

use std::alloc::{GlobalAlloc, Layout, System};

/// Wraps an allocator (the system one by default) and wipes every block it frees.
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroOnFree<A = System>(pub A);

/// Wipes `len` bytes at `ptr` with volatile writes the optimiser may not remove.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees `ptr..ptr+len` is a live, writable allocation.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    zeroize::Zeroize::zeroize(bytes);
}

// SAFETY: every method forwards to the inner allocator with the same layout contract; the only
// additions are writes inside blocks the caller still owns (before they are freed).
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroOnFree<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of `layout.size()` bytes until the dealloc below.
        unsafe {
            wipe(ptr, layout.size());
            self.0.dealloc(ptr, layout);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `new_size` is non-zero and, rounded to `align`, does not overflow (the
        // caller's contract for `realloc`), so the layout is valid.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh block; on failure the old block stays valid, as `realloc` requires.
        let moved = unsafe { self.0.alloc(new_layout) };
        if moved.is_null() {
            return moved;
        }
        // SAFETY: both blocks are live and distinct; the old one is wiped, then freed.
        unsafe {
            std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            wipe(ptr, layout.size());
            self.0.dealloc(ptr, layout);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records, at each free, whether the block was all zeros.
    struct Recording {
        frees: Mutex<Vec<bool>>,
    }

    // SAFETY: forwards to the system allocator; inspects blocks before freeing them.
    unsafe impl GlobalAlloc for Recording {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the block is live until System.dealloc.
            let zeroed = unsafe { std::slice::from_raw_parts(ptr, layout.size()) }.iter().all(|b| *b == 0);
            if let Ok(mut frees) = self.frees.lock() {
                frees.push(zeroed);
            }
            // SAFETY: forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[test]
    fn freed_and_outgrown_blocks_reach_the_inner_allocator_wiped() {
        let allocator = ZeroOnFree(Recording { frees: Mutex::new(Vec::new()) });
        let layout = Layout::from_size_align(64, 8).expect("layout");
        // SAFETY: a block allocated, filled, grown and freed with matching layouts.
        unsafe {
            let ptr = allocator.alloc(layout);
            assert!(!ptr.is_null());
            std::ptr::write_bytes(ptr, 0xA5, 64);
            let grown = allocator.realloc(ptr, layout, 256);
            assert!(!grown.is_null());
            assert_eq!(std::slice::from_raw_parts(grown, 64), &[0xA5; 64][..], "contents moved");
            allocator.dealloc(grown, Layout::from_size_align(256, 8).expect("layout"));
        }
        let frees = allocator.0.frees.lock().expect("lock").clone();
        assert_eq!(frees, [true, true], "the outgrown block and the final one were wiped first");
    }
}
