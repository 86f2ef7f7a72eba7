//! The memory of an engine's tiles: one anonymous mapping, zero until written, each tile's
//! arena a cache-line-aligned stretch of it; on transparent huge pages when the tiles' memory
//! is small enough to afford them.
//!
//! A tile-sample-step touches a dozen places far apart (the tile's history and membranes, its
//! gradient rows, the layer buffers), so with 4 KiB pages most of them cost a walk of the page
//! tables. 2 MiB pages cover W's whole arena with 20 entries of the TLB. Measured (session 11,
//! with the large engine buffers on huge pages too): 700-4096-20 8 % faster, W about 1 %
//! (within the noise of its runs).
//! The price is memory: a huge page is resident as a whole once anything in it is written, so
//! the regions of a tile that the host engine never writes (see [`super::TiledEngine`]'s
//! `memory`) become resident too, up to the whole arena. Hence [`HUGE_PAGES_MAX_BYTES`].

use anyhow::{Context, Result};
use memmap2::{Advice, MmapMut};
use std::ptr::NonNull;

use super::layer::CACHE_LINE;

/// Tile memory up to this many bytes goes on huge pages: W's arenas (38.5 MiB) and a
/// 700-4096-20 model's (671 MiB), but not a 700-4096-4096-20 model's (10.6 GiB, of which the
/// engine writes 0.8).
pub(super) const HUGE_PAGES_MAX_BYTES: usize = 1 << 30;

/// One mapping holding every tile's arena.
pub(super) struct Arenas {
    /// The memory the homes point into, unmapped when the engine is dropped: never read
    /// through this field.
    #[allow(dead_code)]
    map: MmapMut,
    huge: bool,
}

/// One tile's stretch of an [`Arenas`]: where its words start and how many.
#[derive(Clone, Copy)]
pub(super) struct ArenaPtr {
    pub(super) words: NonNull<u32>,
    pub(super) len: usize,
}

impl Arenas {
    /// Maps zeroed memory for arenas of `words[i]` 32-bit words each, every one on a cache
    /// line, and returns where each starts. Asks for huge pages if they total at most
    /// [`HUGE_PAGES_MAX_BYTES`] (a hint: the kernel may have them off).
    pub(super) fn new(words: &[usize]) -> Result<(Self, Vec<ArenaPtr>)> {
        let line = CACHE_LINE / 4;
        let padded = |w: usize| w.div_ceil(line) * line;
        let total: usize = words.iter().map(|&w| padded(w)).sum();
        let bytes = (total * 4).max(1);
        let mut map = MmapMut::map_anon(bytes)
            .with_context(|| format!("mapping {bytes} bytes of tile memory"))?;
        let huge = bytes <= HUGE_PAGES_MAX_BYTES && map.advise(Advice::HugePage).is_ok();
        let base = map.as_mut_ptr().cast::<u32>();
        let mut at = 0;
        let ptrs = words
            .iter()
            .map(|&len| {
                // Safety: `at + len <= total`, inside the mapping (page-aligned, so every
                // padded offset is on a cache line).
                let words = unsafe { NonNull::new_unchecked(base.add(at)) };
                at += padded(len);
                ArenaPtr { words, len }
            })
            .collect();
        Ok((Arenas { map, huge }, ptrs))
    }

    /// Whether the kernel was asked for huge pages.
    pub(super) fn huge(&self) -> bool {
        self.huge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arenas are disjoint, in order, on cache lines, zeroed, and inside the mapping.
    #[test]
    fn arenas_are_disjoint_aligned_and_zero() {
        let words = [5, 16, 0, 33, 1];
        let (arenas, ptrs) = Arenas::new(&words).unwrap();
        let mut end = arenas.map.as_ptr() as usize;
        for (p, &w) in ptrs.iter().zip(&words) {
            let start = p.words.as_ptr() as usize;
            assert_eq!(start % CACHE_LINE, 0);
            assert!(start >= end);
            assert_eq!(p.len, w);
            end = start + 4 * w;
            // Safety: the stretch lies in the mapping, which `arenas` keeps.
            let s = unsafe { std::slice::from_raw_parts(p.words.as_ptr(), p.len) };
            assert!(s.iter().all(|&x| x == 0));
        }
        assert!(end <= arenas.map.as_ptr() as usize + arenas.map.len());
    }
}
