//! A slab that grows by fixed-size chunks: the shard's session table.
//!
//! Why not `slab::Slab`: it is one `Vec`, which doubles as it grows. Every
//! doubling copies the whole table into a new allocation and frees the
//! old one, and the allocator gives freed memory back to the kernel only
//! later, on some later allocation (mimalloc purges after a delay, and
//! an idle shard makes none). Measured with 10,000 idle connections and
//! 248-byte sessions: freed memory still resident came to 0.34 KiB a
//! connection with the slab, 0.14 KiB with chunks (the rest is the
//! broker's own tables; issue 12's per-connection budget,
//! docs/benchmarks.md). Here a full table gets one more chunk; nothing is
//! ever copied or freed, and at most one chunk stands unused.
//!
//! Keys behave as the slab's: dense from 0, and the most recently freed
//! key is the next one given out.

/// Entries a chunk holds.
const CHUNK: usize = 256;

enum Entry<T> {
    /// Free; the next free key (the capacity when there is none).
    Vacant(usize),
    Occupied(T),
}

pub(crate) struct ChunkSlab<T> {
    chunks: Vec<Box<[Entry<T>]>>,
    /// The first free key (the capacity when there is none).
    next_free: usize,
    len: usize,
}

impl<T> Default for ChunkSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ChunkSlab<T> {
    pub const fn new() -> Self {
        ChunkSlab {
            chunks: Vec::new(),
            next_free: 0,
            len: 0,
        }
    }

    fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Stores `value`; returns its key.
    pub fn insert(&mut self, value: T) -> usize {
        let key = self.next_free;
        if key == self.capacity() {
            let base = self.capacity();
            self.chunks
                .push((1..=CHUNK).map(|i| Entry::Vacant(base + i)).collect());
        }
        let entry = &mut self.chunks[key / CHUNK][key % CHUNK];
        match std::mem::replace(entry, Entry::Occupied(value)) {
            Entry::Vacant(next) => self.next_free = next,
            Entry::Occupied(_) => unreachable!("the free list names a free key"),
        }
        self.len += 1;
        key
    }

    pub fn get(&self, key: usize) -> Option<&T> {
        match self.chunks.get(key / CHUNK)?.get(key % CHUNK)? {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant(_) => None,
        }
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        match self.chunks.get_mut(key / CHUNK)?.get_mut(key % CHUNK)? {
            Entry::Occupied(v) => Some(v),
            Entry::Vacant(_) => None,
        }
    }

    /// Removes and returns the value at `key`.
    ///
    /// # Panics
    /// If `key` holds nothing (as `slab::Slab::remove`).
    pub fn remove(&mut self, key: usize) -> T {
        let entry = self
            .chunks
            .get_mut(key / CHUNK)
            .and_then(|c| c.get_mut(key % CHUNK))
            .filter(|e| matches!(e, Entry::Occupied(_)))
            .expect("invalid key");
        match std::mem::replace(entry, Entry::Vacant(self.next_free)) {
            Entry::Occupied(v) => {
                self.next_free = key;
                self.len -= 1;
                v
            }
            Entry::Vacant(_) => unreachable!("checked above"),
        }
    }

    /// The values with their keys, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .enumerate()
            .filter_map(|(k, e)| match e {
                Entry::Occupied(v) => Some((k, v)),
                Entry::Vacant(_) => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dense_and_the_last_freed_is_reused_first() {
        let mut t = ChunkSlab::new();
        let keys: Vec<usize> = (0..600).map(|i| t.insert(i)).collect();
        assert_eq!(keys, (0..600).collect::<Vec<_>>());
        assert_eq!(t.len(), 600);
        assert_eq!(t.remove(10), 10);
        assert_eq!(t.remove(300), 300);
        assert_eq!(t.get(10), None);
        assert_eq!(t.get(300), None);
        assert_eq!(t.get(9999), None);
        assert_eq!(t.insert(1000), 300, "the most recently freed first");
        assert_eq!(t.insert(1001), 10);
        assert_eq!(t.insert(1002), 600, "then the next never used");
        *t.get_mut(600).unwrap() += 1;
        assert_eq!(t.get(600), Some(&1003));
        assert_eq!(t.len(), 601);
        let seen: Vec<(usize, i32)> = t.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(seen.len(), 601);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(seen[10], (10, 1001));
    }

    #[test]
    #[should_panic(expected = "invalid key")]
    fn removing_a_free_key_panics() {
        let mut t = ChunkSlab::new();
        let k = t.insert(1);
        t.remove(k);
        t.remove(k);
    }

    /// Growing never moves what is stored (no copy, nothing freed).
    #[test]
    fn values_stay_where_they_were_put() {
        let mut t = ChunkSlab::new();
        let k = t.insert([0u64; 4]);
        let at = t.get(k).unwrap() as *const _;
        for _ in 0..10 * CHUNK {
            t.insert([1; 4]);
        }
        assert_eq!(t.get(k).unwrap() as *const _, at);
    }
}
