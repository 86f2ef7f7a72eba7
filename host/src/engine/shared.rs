//! Memory shared by the worker threads of the tile engine, under the bulk-synchronous contract.
//!
//! The contract: within one phase, every region is written by at most one work unit and a region
//! that is written is not read by any other unit; phases are separated by
//! [`super::barrier::SpinBarrier::wait`], which orders all writes of a phase before all reads of
//! the next. The engine's phase plan (see `tiled`) assigns regions so that this holds; these
//! types only make the raw access explicit.

use std::cell::UnsafeCell;

/// Bytes of a cache line: where [`Shared::new`] starts its elements.
const CACHE_LINE: usize = 64;

/// A slice that threads access by disjoint regions, phase by phase.
pub(crate) struct Shared<T> {
    /// The elements are `cells[at..at + len]`.
    cells: Box<[UnsafeCell<T>]>,
    at: usize,
    len: usize,
}

// Safety: access follows the phase contract above (disjoint writes within a phase, barriers
// between phases), so no two threads ever race on one element.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Copy + Default> Shared<T> {
    /// `len` default values, the first on a cache line if `T`'s size divides one (the allocator
    /// aligns large blocks to 16 bytes only: a row of 32 floats would straddle three lines).
    pub fn new(len: usize) -> Self {
        let size = std::mem::size_of::<T>();
        let aligns = size > 0 && CACHE_LINE % size == 0;
        let pad = if aligns && len > 0 { CACHE_LINE / size - 1 } else { 0 };
        let cells: Box<[UnsafeCell<T>]> =
            (0..len + pad).map(|_| UnsafeCell::new(T::default())).collect();
        let misalign = cells.as_ptr() as usize % CACHE_LINE;
        let at = if aligns && misalign > 0 { (CACHE_LINE - misalign) / size } else { 0 };
        Shared { cells, at, len }
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
        let cells = &self.cells[self.at..self.at + self.len];
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), self.len) }
    }

    /// The elements' cells.
    fn live(&self) -> &[UnsafeCell<T>] {
        &self.cells[self.at..self.at + self.len]
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
        Shared { cells: values.into_iter().map(UnsafeCell::new).collect(), at: 0, len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers start on a cache line, hold exactly their elements, and start zeroed.
    #[test]
    fn new_buffers_start_on_a_cache_line() {
        for len in [1, 5, 16, 1000, 300_000] {
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
