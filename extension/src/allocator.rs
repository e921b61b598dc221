//! A zero-on-free global allocator: every heap block is wiped before it goes back to the system
//! allocator, and `realloc` always moves (wiping the old block) instead of letting the system
//! allocator abandon a copy.
//!
//! Zeroizing types wipe the values we own; this wipes the copies we do not: the AWS SDK's
//! response buffers and parsed strings, hyper's read and write buffers, `serde_json`'s
//! intermediate strings. Memory still in use (a connection's live buffer) is not covered.
//!
//! A block of two pages or more is wiped in the pages the process touched only, once
//! [`skip_untouched_pages`] has found that an untouched page can hold nothing but zeros.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Wraps an allocator (the system one by default) and wipes every block it frees.
#[derive(Debug, Default, Clone, Copy)]
pub struct ZeroOnFree<A = System>(pub A);

/// Wipes `len` bytes at `ptr` with volatile writes the optimiser may not remove.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    let page = PAGE.load(Ordering::Relaxed);
    // SAFETY: the caller's guarantee, and `page` is only set where untouched pages are zeros.
    if page != 0 && len >= SPARSE_FROM_PAGES * page && unsafe { wipe_touched(ptr, len, page) } {
        return;
    }
    // SAFETY: the caller's guarantee.
    unsafe { wipe_in_place(ptr, len) }
}

/// Blocks of this many pages or more are wiped page by page, only where a page was ever
/// touched ([`wipe_touched`]); smaller blocks are written over whole, without a system call.
pub const SPARSE_FROM_PAGES: usize = 2;

/// The page size once [`skip_untouched_pages`] has found that a page the process never
/// touched reads as zeros; 0 until then (every block is written over whole).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// Lets large freed blocks skip the pages the process never touched. The caller says whether
/// that is safe: every page is locked in memory (`mlockall`) or there is no swap (Lambda has
/// none), so a page that is not resident was never written and holds nothing but zeros.
/// Elsewhere a written page could be in swap, not resident, and every block is still written
/// over whole.
///
/// Writing zeros over every byte of every freed block made each page of it resident, the parts
/// the program never used included: a connection's 8 KiB read and write buffers, of which a GET
/// uses a few hundred bytes, became three resident pages each, and the allocator keeps freed
/// blocks for reuse, so the extension's memory grew by about 24 KiB for every connection it
/// ever had open at once.
pub fn skip_untouched_pages(untouched_pages_are_zeros: bool) {
    #[cfg(target_os = "linux")]
    if untouched_pages_are_zeros {
        // SAFETY: sysconf takes a constant and touches no memory of ours.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if let Ok(page) = usize::try_from(page)
            && page.is_power_of_two()
        {
            PAGE.store(page, Ordering::Relaxed);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = untouched_pages_are_zeros;
}

/// Wipes the parts of `ptr..ptr+len` that lie in pages the kernel reports resident
/// (`mincore`), and leaves the others, which read as zeros, untouched. Returns false, having
/// possibly wiped part of the block, if the kernel would not tell: the caller then wipes it all.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes, in private anonymous memory (what `malloc`
/// hands out), and `page` the page size; a non-resident page of it must read as zeros (no swap,
/// or memory locked).
#[cfg(target_os = "linux")]
unsafe fn wipe_touched(ptr: *mut u8, len: usize, page: usize) -> bool {
    const CHUNK: usize = 64;
    let start = ptr as usize;
    let end = start + len;
    let mut base = start & !(page - 1);
    let mut resident = [0u8; CHUNK];
    while base < end {
        let pages = (end - base).div_ceil(page).min(CHUNK);
        // SAFETY: `base` is page-aligned and the pages asked about are mapped (they hold the
        // block); the kernel writes one byte per page into `resident`, which has `CHUNK` bytes.
        if unsafe { libc::mincore(base as *mut libc::c_void, pages * page, resident.as_mut_ptr()) } != 0 {
            return false;
        }
        for (index, flags) in resident[..pages].iter().enumerate() {
            if flags & 1 == 0 {
                continue;
            }
            let from = (base + index * page).max(start);
            let to = (base + (index + 1) * page).min(end);
            // SAFETY: `from..to` is the block's part of this page.
            unsafe { wipe_in_place(from as *mut u8, to - from) };
        }
        base += pages * page;
    }
    true
}

#[cfg(not(target_os = "linux"))]
unsafe fn wipe_touched(_ptr: *mut u8, _len: usize, _page: usize) -> bool {
    false
}

/// Writes zeros over `len` bytes at `ptr` with volatile writes.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe_in_place(ptr: *mut u8, len: usize) {
    // SAFETY: the caller guarantees `ptr..ptr+len` is a live, writable allocation.
    let bytes = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    zeroize::Zeroize::zeroize(bytes);
}

/// Gives every block of [`MAPPED_FROM`] bytes or more pages of its own (`mmap`) and hands them
/// back to the kernel when it is freed (`munmap`); smaller blocks go to `A`.
///
/// The libc's `malloc` keeps freed blocks of up to 32 KiB in slabs for reuse and never returns
/// them: a burst of connections (hyper's two 8 KiB buffers each) left its pages resident for
/// good, about 0.7 MiB after 64 connections at once. Mapped, they leave with the connection.
/// The cost is two system calls per block, paid when a connection opens and closes (or a
/// buffer grows), never per request on a kept-alive connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct MapLarge<A = System>(pub A);

/// Blocks of this many bytes or more are mapped by [`MapLarge`]: two pages, where the libc's
/// slabs begin to hold whole pages per block.
pub const MAPPED_FROM: usize = 8 * 1024;

/// The smallest page size of the platforms we run on: a mapping is aligned to at least this.
const MIN_PAGE: usize = 4 * 1024;

/// Whether [`MapLarge`] maps a block of `layout` itself. The same answer at allocation and at
/// free, since it depends on the layout only.
fn mapped(layout: Layout) -> bool {
    cfg!(unix) && layout.size() >= MAPPED_FROM && layout.align() <= MIN_PAGE
}

// SAFETY: a mapped block is a fresh private anonymous mapping of at least `layout.size()` bytes,
// aligned to a page (≥ `layout.align()`), unmapped with the same length when freed; the
// decision depends on the layout only, so a block is always freed the way it was allocated.
// Everything else is forwarded to the inner allocator with the same contract.
unsafe impl<A: GlobalAlloc> GlobalAlloc for MapLarge<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            return map(layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(layout) {
            // A fresh anonymous mapping reads as zeros.
            return map(layout.size());
        }
        // SAFETY: forwarded as is.
        unsafe { self.0.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(layout) {
            // SAFETY: `ptr` is the start of a mapping of `layout.size()` bytes made by `map`.
            unsafe { unmap(ptr, layout.size()) };
            return;
        }
        // SAFETY: forwarded as is.
        unsafe { self.0.dealloc(ptr, layout) }
    }
}

/// A private anonymous mapping of `len` bytes (rounded up to pages by the kernel), or null.
#[cfg(unix)]
fn map(len: usize) -> *mut u8 {
    // SAFETY: a new mapping at an address the kernel picks; touches no memory of ours.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED { std::ptr::null_mut() } else { ptr.cast() }
}

#[cfg(not(unix))]
fn map(_len: usize) -> *mut u8 {
    std::ptr::null_mut()
}

/// Unmaps the `len` bytes [`map`] mapped at `ptr`.
///
/// # Safety
/// `ptr` must come from `map(len)` and not be used afterwards.
#[cfg(unix)]
unsafe fn unmap(ptr: *mut u8, len: usize) {
    // SAFETY: the caller's guarantee; a failure (impossible for a whole mapping) leaks it.
    unsafe { libc::munmap(ptr.cast(), len) };
}

#[cfg(not(unix))]
unsafe fn unmap(_ptr: *mut u8, _len: usize) {}

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

    /// Records, at each free, whether the block was all zeros, then forwards to `A`.
    struct Recording<A = System> {
        frees: Mutex<Vec<bool>>,
        inner: A,
    }

    impl<A> Recording<A> {
        fn new(inner: A) -> Self {
            Self { frees: Mutex::new(Vec::new()), inner }
        }

        fn frees(&self) -> Vec<bool> {
            self.frees.lock().expect("lock").clone()
        }
    }

    // SAFETY: forwards to the inner allocator; inspects blocks before freeing them.
    unsafe impl<A: GlobalAlloc> GlobalAlloc for Recording<A> {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded.
            unsafe { self.inner.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the block is live until the inner dealloc.
            let zeroed = unsafe { std::slice::from_raw_parts(ptr, layout.size()) }.iter().all(|b| *b == 0);
            if let Ok(mut frees) = self.frees.lock() {
                frees.push(zeroed);
            }
            // SAFETY: forwarded.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    #[test]
    fn freed_and_outgrown_blocks_reach_the_inner_allocator_wiped() {
        let allocator = ZeroOnFree(Recording::new(System));
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
        assert_eq!(allocator.0.frees(), [true, true], "the outgrown block and the final one were wiped first");
    }

    /// Whether each page of the `len` bytes at `base` (page-aligned) is resident, or `None`
    /// where they are not all mapped (`mincore` fails with `ENOMEM`).
    #[cfg(target_os = "linux")]
    fn resident_pages(base: *mut u8, len: usize, page: usize) -> Option<Vec<bool>> {
        let mut flags = vec![0u8; len.div_ceil(page)];
        // SAFETY: mincore only reads the page tables and writes one byte per page into `flags`.
        let mapped = unsafe { libc::mincore(base.cast(), len, flags.as_mut_ptr()) } == 0;
        mapped.then(|| flags.iter().map(|f| f & 1 == 1).collect())
    }

    /// Whether `len` bytes at `ptr` are mapped at all.
    #[cfg(target_os = "linux")]
    fn is_mapped(ptr: *mut u8, len: usize, page: usize) -> bool {
        resident_pages(ptr, len, page).is_some()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_block_has_pages_of_its_own_and_gives_them_back_when_freed() {
        // SAFETY: sysconf takes a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
        let allocator = MapLarge(Recording::new(System));
        let large = Layout::from_size_align(MAPPED_FROM, 16).expect("layout");
        let small = Layout::from_size_align(MAPPED_FROM - 1, 16).expect("layout");
        // SAFETY: blocks allocated, written and freed with matching layouts.
        unsafe {
            let block = allocator.alloc(large);
            assert!(!block.is_null());
            assert_eq!(block as usize % page, 0, "a mapping starts a page");
            std::ptr::write_bytes(block, 0xA5, MAPPED_FROM);
            assert!(is_mapped(block, MAPPED_FROM, page));
            allocator.dealloc(block, large);
            assert!(!is_mapped(block, MAPPED_FROM, page), "the pages went back to the kernel");

            let zeroed = allocator.alloc_zeroed(large);
            assert!(std::slice::from_raw_parts(zeroed, MAPPED_FROM).iter().all(|b| *b == 0));
            allocator.dealloc(zeroed, large);

            let below = allocator.alloc(small);
            assert!(!below.is_null());
            std::ptr::write_bytes(below, 0, MAPPED_FROM - 1);
            allocator.dealloc(below, small);
        }
        assert_eq!(allocator.0.frees(), [true], "only the block below the threshold reached the libc");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_block_is_wiped_before_its_pages_go_back() {
        let allocator = ZeroOnFree(Recording::new(MapLarge(System)));
        let layout = Layout::from_size_align(3 * MAPPED_FROM, 8).expect("layout");
        // SAFETY: a block allocated, filled, grown and freed with matching layouts.
        unsafe {
            let block = allocator.alloc(layout);
            assert!(!block.is_null());
            std::ptr::write_bytes(block.add(100), 0xA5, 300);
            let grown = allocator.realloc(block, layout, 4 * MAPPED_FROM);
            assert!(!grown.is_null());
            assert_eq!(std::slice::from_raw_parts(grown.add(100), 300), &[0xA5; 300][..], "contents moved");
            allocator.dealloc(grown, Layout::from_size_align(4 * MAPPED_FROM, 8).expect("layout"));
        }
        assert_eq!(allocator.0.frees(), [true, true], "both blocks wiped before they were unmapped");
    }

    /// Whether each of `pages` pages at `base` (a mapping) is resident.
    #[cfg(target_os = "linux")]
    fn residency(base: *mut u8, pages: usize, page: usize) -> Vec<bool> {
        resident_pages(base, pages * page, page).expect("a mapping")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_block_is_wiped_where_it_was_written_and_its_untouched_pages_stay_untouched() {
        // SAFETY: sysconf takes a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
        let pages = 4;
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base.cast::<u8>();
        // A block that starts and ends inside a page, like a heap block; the program wrote a
        // secret into its second page only.
        let (offset, len) = (48, pages * page - 96);
        // SAFETY: all inside the mapping.
        unsafe {
            std::ptr::write_bytes(base.add(page + 100), 0xA5, 300);
            std::ptr::write_bytes(base.add(2 * page - 8), 0x5A, 16);
        }
        assert_eq!(residency(base, pages, page), [false, true, true, false]);
        // SAFETY: the block is inside the mapping and no page was swapped (just written).
        assert!(unsafe { wipe_touched(base.add(offset), len, page) });
        assert_eq!(residency(base, pages, page), [false, true, true, false], "untouched pages were not written");
        // SAFETY: reading the mapping (this faults the untouched pages in, as zeros).
        let all = unsafe { std::slice::from_raw_parts(base, pages * page) };
        assert!(all.iter().all(|b| *b == 0), "every written byte of the block is zero");
        // SAFETY: the mapping made above.
        assert_eq!(unsafe { libc::munmap(base.cast(), pages * page) }, 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_written_byte_outside_the_block_is_left_alone() {
        // SAFETY: sysconf takes a constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size");
        let mut buffer = vec![0xC3u8; 3 * page];
        let (start, len) = (10, 2 * page);
        // SAFETY: inside the vector, which is resident (just written).
        assert!(unsafe { wipe_touched(buffer.as_mut_ptr().add(start), len, page) });
        assert!(buffer[..start].iter().all(|b| *b == 0xC3), "bytes before the block kept");
        assert!(buffer[start..start + len].iter().all(|b| *b == 0), "the block wiped");
        assert!(buffer[start + len..].iter().all(|b| *b == 0xC3), "bytes after the block kept");
    }
}
