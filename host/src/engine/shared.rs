//! Memory shared by the worker threads of the tile engine, under the bulk-synchronous contract.
//!
//! The contract: within one phase, every region is written by at most one work unit and a region
//! that is written is not read by any other unit; phases are separated by
//! [`super::barrier::SpinBarrier::wait`], which orders all writes of a phase before all reads of
//! the next. The engine's phase plan (see `tiled`) assigns regions so that this holds; these
//! types only make the raw access explicit.

use std::cell::UnsafeCell;

/// A slice that threads access by disjoint regions, phase by phase.
pub(crate) struct Shared<T> {
    cells: Box<[UnsafeCell<T>]>,
}

// Safety: access follows the phase contract above (disjoint writes within a phase, barriers
// between phases), so no two threads ever race on one element.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Copy + Default> Shared<T> {
    /// `len` default values.
    pub fn new(len: usize) -> Self {
        Shared { cells: (0..len).map(|_| UnsafeCell::new(T::default())).collect() }
    }
}

impl<T> Shared<T> {
    /// Reads `len` elements from `start`.
    ///
    /// # Safety
    /// No other thread writes this region in the current phase.
    pub unsafe fn slice(&self, start: usize, len: usize) -> &[T] {
        let cells = &self.cells[start..start + len];
        // Safety: UnsafeCell<T> has T's layout; the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(cells.as_ptr() as *const T, len) }
    }

    /// Writes `len` elements from `start`.
    ///
    /// # Safety
    /// This unit is the only one touching this region in the current phase.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [T] {
        let cells = &self.cells[start..start + len];
        // Safety: as above, and the caller guarantees exclusivity for the phase.
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), len) }
    }

    /// Exclusive access when no threads run.
    pub fn get_mut(&mut self) -> &mut [T] {
        // Safety: &mut self proves exclusivity.
        let len = self.cells.len();
        unsafe { std::slice::from_raw_parts_mut(UnsafeCell::raw_get(self.cells.as_ptr()), len) }
    }
}

impl<T> Shared<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    /// Asks the CPU to start loading element `i` into the cache (a hint: nothing is read, and
    /// an index beyond the end is ignored), so that a later read finds it there.
    #[inline]
    pub fn prefetch(&self, i: usize) {
        if let Some(cell) = self.cells.get(i) {
            // The cell's address only: no reference to its value is made.
            spiketile_core::simd::prefetch(cell);
        }
    }

    /// Takes ownership of `values`.
    pub fn from_vec(values: Vec<T>) -> Self {
        Shared { cells: values.into_iter().map(UnsafeCell::new).collect() }
    }
}
