//! A table indexed by a number someone else hands out (the loop's slot,
//! the engine's session index), growing by fixed-size chunks.
//!
//! Why not a `Vec`: it doubles as it grows, copying itself into a new
//! allocation and freeing the old one, and the allocator returns freed
//! memory to the kernel only on some later allocation (an idle shard makes
//! none), so an idle shard kept every old copy resident. Here a table too
//! small for an index gets more chunks: nothing is copied or freed, and at
//! most one chunk stands unused (see `core/src/table.rs`, which does the
//! same for the engine's sessions).

/// Entries a chunk holds.
const CHUNK: usize = 256;

pub(crate) struct Table<T> {
    chunks: Vec<Box<[T]>>,
}

impl<T: Default> Table<T> {
    pub(crate) const fn new() -> Self {
        Table { chunks: Vec::new() }
    }

    /// Indices `0..capacity()` are addressable.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK).map(|c| &c[i % CHUNK])
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK).map(|c| &mut c[i % CHUNK])
    }

    /// Entry `i`, growing the table (with default entries) to hold it.
    pub(crate) fn entry(&mut self, i: usize) -> &mut T {
        while self.capacity() <= i {
            self.chunks.push((0..CHUNK).map(|_| T::default()).collect());
        }
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_chunks_and_keeps_entries_in_place() {
        let mut t: Table<Option<u32>> = Table::new();
        assert_eq!(t.capacity(), 0);
        assert!(t.get(0).is_none());
        *t.entry(3) = Some(3);
        assert_eq!(t.capacity(), CHUNK);
        let before = t.get(3).unwrap() as *const Option<u32>;
        *t.entry(CHUNK * 2 + 1) = Some(7);
        assert_eq!(t.capacity(), 3 * CHUNK);
        assert_eq!(t.get(3).unwrap() as *const Option<u32>, before, "not moved");
        assert_eq!(t.get(3), Some(&Some(3)));
        assert_eq!(t.get(CHUNK * 2 + 1), Some(&Some(7)));
        assert_eq!(t.get(CHUNK), Some(&None));
        assert!(t.get(3 * CHUNK).is_none());
        assert_eq!(t.iter().flatten().count(), 2);
        *t.get_mut(3).unwrap() = None;
        assert_eq!(t.iter().flatten().count(), 1);
    }
}
