//! Memory shared by the worker threads of the tile engine, under the bulk-synchronous contract.
//!
//! The contract: within one phase, every region is written by at most one work unit and a region
//! that is written is not read by any other unit; phases are separated by
//! [`super::barrier::SpinBarrier::wait`], which orders all writes of a phase before all reads of
//! the next. The engine's phase plan (see `tiled`) assigns regions so that this holds; these
//! types only make the raw access explicit.
//!
//! Buffers start on a cache line, and large ones lie on transparent huge pages: the backward
//! pass of a wide layer reads its partial `dL/dS` from buffers of tens of megabytes, a few
//! floats per row, and with 4 KiB pages nearly every row cost a walk of the page tables
//! (700-4096-20: about 9 % faster on huge pages).

use memmap2::{Advice, MmapMut};
use std::cell::UnsafeCell;
use std::ptr::NonNull;

/// Bytes of a cache line: where [`Shared::new`] starts its elements.
const CACHE_LINE: usize = 64;

/// Buffers of at least this many bytes are mapped on their own and advised onto huge pages.
const HUGE_BYTES: usize = 2 << 20;

/// Where a [`Shared`]'s elements live.
enum Storage<T> {
    Boxed(#[allow(dead_code)] Vec<UnsafeCell<T>>),
    Mapped(#[allow(dead_code)] MmapMut),
}

/// A slice that threads access by disjoint regions, phase by phase.
pub(crate) struct Shared<T> {
    /// The elements are `len` cells from `first`, inside `storage` (which owns them and is
    /// never touched otherwise).
    first: NonNull<UnsafeCell<T>>,
    len: usize,
    _storage: Storage<T>,
}

// Safety: access follows the phase contract above (disjoint writes within a phase, barriers
// between phases), so no two threads ever race on one element; the storage is owned.
unsafe impl<T: Send> Sync for Shared<T> {}
unsafe impl<T: Send> Send for Shared<T> {}

impl<T: Copy + bytemuck::Zeroable> Shared<T> {
    /// `len` zeros, the first on a cache line if `T`'s size divides one (the allocator aligns
    /// large blocks to 16 bytes only: a row of 32 floats would straddle three lines). Buffers
    /// of [`HUGE_BYTES`] or more are a mapping of their own, zero until written and advised
    /// onto transparent huge pages (a hint the kernel may ignore).
    pub fn new(len: usize) -> Self {
        let size = std::mem::size_of::<T>();
        if size > 0 && len * size >= HUGE_BYTES {
            if let Ok(mut map) = MmapMut::map_anon(len * size) {
                // A hint: without huge pages the buffer works all the same.
                let _ = map.advise(Advice::HugePage);
                // Safety: the mapping is page-aligned, zero-filled, `len * size` bytes long,
                // and zero is a valid `T` (Zeroable).
                let first = NonNull::new(map.as_mut_ptr().cast::<UnsafeCell<T>>())
                    .expect("a mapping is never at address 0");
                return Shared { first, len, _storage: Storage::Mapped(map) };
            }
        }
        let aligns = size > 0 && CACHE_LINE.is_multiple_of(size) && len > 0;
        let pad = if aligns { CACHE_LINE / size - 1 } else { 0 };
        let mut cells: Vec<UnsafeCell<T>> =
            (0..len + pad).map(|_| UnsafeCell::new(T::zeroed())).collect();
        let misalign = cells.as_ptr() as usize % CACHE_LINE;
        let at = if aligns && misalign > 0 { (CACHE_LINE - misalign) / size } else { 0 };
        // A Vec's buffer stays where it is when the Vec moves.
        let first = NonNull::from(&mut cells[at..]).cast::<UnsafeCell<T>>();
        Shared { first, len, _storage: Storage::Boxed(cells) }
    }
}

impl<T> Shared<T> {
    /// Reads `len` elements from `start`.
    ///
    /// # Safety
    /// No other thread writes this region in the current phase.
    pub unsafe fn slice(&self, start: usize, len: usize) -> &[T] {
        let cells = &self.live()[start..start + len];
        // Safety: UnsafeCell<T> has T's layout; the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const T, len) }
    }

    /// Writes `len` elements from `start`.
    ///
    /// # Safety
    /// This unit is the only one touching this region in the current phase.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [T] {
        let cells = &self.live()[start..start + len];
        // Safety: as above, and the caller guarantees exclusivity for the phase.
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), len) }
    }

    /// Exclusive access when no threads run.
    pub fn get_mut(&mut self) -> &mut [T] {
        // Safety: &mut self proves exclusivity.
        let cells = self.live();
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), self.len) }
    }

    /// The elements' cells.
    fn live(&self) -> &[UnsafeCell<T>] {
        // Safety: `len` cells from `first` lie in the storage this value owns.
        unsafe { std::slice::from_raw_parts(self.first.as_ptr(), self.len) }
    }
}

impl<T> Shared<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Asks the CPU to start loading element `i` into the cache (a hint: nothing is read, and
    /// an index beyond the end is ignored), so that a later read finds it there.
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if let Some(cell) = self.live().get(i) {
            // The cell's address only: no reference to its value is made.
            spiketile_core::simd::prefetch(cell);
        }
    }

    /// Takes ownership of `values`.
    pub fn from_vec(values: Vec<T>) -> Self {
        let len = values.len();
        let mut cells: Vec<UnsafeCell<T>> = values.into_iter().map(UnsafeCell::new).collect();
        let first = NonNull::from(&mut cells[..]).cast::<UnsafeCell<T>>();
        Shared { first, len, _storage: Storage::Boxed(cells) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers start on a cache line, hold exactly their elements, and start zeroed.
    #[test]
    fn new_buffers_start_on_a_cache_line() {
        // Boxed, and (from 2 MiB) mapped.
        for len in [1, 5, 16, 1000, 300_000, 600_000, 1_100_000] {
            let mut floats = Shared::<f32>::new(len);
            let halves = Shared::<u16>::new(len);
            assert_eq!((floats.len(), halves.len()), (len, len));
            // Safety: no other thread.
            let (f, h) = unsafe { (floats.slice(0, len), halves.slice(0, len)) };
            assert_eq!(f.as_ptr() as usize % CACHE_LINE, 0);
            assert_eq!(h.as_ptr() as usize % CACHE_LINE, 0);
            assert!(f.iter().all(|&x| x == 0.0) && h.iter().all(|&x| x == 0));
            floats.get_mut()[len - 1] = 2.0;
            assert_eq!(unsafe { floats.slice(len - 1, 1) }, &[2.0]);
        }
        assert_eq!(Shared::<f32>::new(0).len(), 0);
    }
}
