//! The shard's provided-buffer ring (`IORING_REGISTER_PBUF_RING`, 5.19).
//!
//! A multishot recv names a buffer *group*, not a buffer: the kernel takes
//! the next buffer from this ring only when bytes arrive and says which one
//! in the completion (`IORING_CQE_F_BUFFER`, the buffer id in the upper 16
//! bits of the flags). So an idle connection pins no receive memory; one
//! ring of `entries` buffers serves the whole shard.
//!
//! Ownership: a buffer is the kernel's from the moment it is in the ring
//! until a completion names it; then it is ours ([`BufRing::take`]) until
//! [`BufRing::recycle`] writes it back into the ring, which is a 16-byte
//! store and a release store of the tail, no syscall. The loop recycles a
//! buffer as soon as the handler has looked at its bytes.
//!
//! The memory is one anonymous mapping: the ring of 16-byte entries (page
//! aligned, as the kernel requires), then the buffers. Pages are only
//! backed when first written, so buffers the kernel never needed cost no
//! RSS.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::Submitter;

/// The kernel's `struct io_uring_buf`. Written field by field through raw
/// pointers: the `tail` of the ring lives in entry 0's last two bytes, which
/// the kernel reads concurrently, so no `&mut` to an entry is ever formed.
#[repr(C)]
struct Entry {
    addr: u64,
    len: u32,
    bid: u16,
    /// The ring's tail in entry 0; unused in the others.
    tail: u16,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 16);

/// One registered buffer group: `entries` buffers of `buf_size` bytes.
pub struct BufRing {
    map: *mut u8,
    map_len: usize,
    ring: *mut Entry,
    bufs: *mut u8,
    entries: u16,
    buf_size: u32,
    bgid: u16,
    /// Our copy of the tail; the kernel's head is private to it.
    tail: u16,
    /// Buffers a completion handed us that are not back in the ring.
    out: u32,
    /// One bit per buffer id: set while the buffer is ours.
    held: Vec<u64>,
}

impl BufRing {
    /// Maps the memory, registers it as buffer group `bgid` and hands every
    /// buffer to the kernel.
    ///
    /// `entries` must be a power of two from 1 to 32768 and `buf_size`
    /// non-zero.
    ///
    /// # Safety
    ///
    /// The kernel writes into the buffers for as long as the group is
    /// registered. Before this value is dropped, the group must be
    /// unregistered (`Submitter::unregister_buf_ring`) or the ring closed,
    /// with no operation still able to pick a buffer (cancel them first).
    pub unsafe fn register(
        submitter: &Submitter<'_>,
        bgid: u16,
        entries: u16,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        if !entries.is_power_of_two() || entries > 32768 || buf_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a buffer ring needs a power of two from 1 to 32768 buffers \
                     of at least one byte (got {entries} of {buf_size})"
                ),
            ));
        }
        let page = page_size();
        let ring_len = (entries as usize * std::mem::size_of::<Entry>()).next_multiple_of(page);
        let bufs_len = entries as usize * buf_size as usize;
        let map_len = ring_len + bufs_len;
        // SAFETY: an anonymous private mapping; checked for failure below.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = map.cast::<u8>();
        let mut this = BufRing {
            map,
            map_len,
            ring: map.cast::<Entry>(),
            // SAFETY: within the mapping.
            bufs: unsafe { map.add(ring_len) },
            entries,
            buf_size,
            bgid,
            tail: 0,
            out: 0,
            held: vec![0; (entries as usize).div_ceil(64)],
        };
        // SAFETY: the ring memory is valid and page aligned; the caller
        // keeps it alive for as long as the group is registered.
        unsafe {
            submitter.register_buf_ring_with_flags(this.ring as u64, entries, bgid, 0)?;
        }
        for bid in 0..entries {
            this.put(bid);
        }
        this.publish();
        Ok(this)
    }

    /// The buffer group id to name in a recv.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The size of every buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// How many buffers the group has.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Buffers a completion handed to us that are not back in the ring.
    pub fn out(&self) -> u32 {
        self.out
    }

    /// Buffers in the ring or in the kernel's hands: all but [`out`](Self::out).
    /// Some may already hold bytes whose completion is not reaped yet, so
    /// this is an upper bound on what the kernel can still pick.
    pub fn available(&self) -> u32 {
        u32::from(self.entries) - self.out
    }

    /// Takes buffer `bid`, which a completion says holds `len` bytes, and
    /// returns those bytes. The buffer stays ours until [`recycle`](Self::recycle).
    ///
    /// # Panics
    ///
    /// If `bid` is out of range, already ours, or `len` exceeds the buffer:
    /// a completion the kernel cannot have produced.
    pub fn take(&mut self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.entries && len <= self.buf_size as usize,
            "buffer {bid} with {len} bytes is not in group {} ({} x {} B)",
            self.bgid,
            self.entries,
            self.buf_size
        );
        let (word, bit) = (bid as usize / 64, 1u64 << (bid % 64));
        assert!(self.held[word] & bit == 0, "buffer {bid} taken twice");
        self.held[word] |= bit;
        self.out += 1;
        // SAFETY: in range (checked above); the kernel does not touch a
        // buffer between the completion naming it and its recycling.
        unsafe { std::slice::from_raw_parts(self.buf_ptr(bid), len) }
    }

    /// Gives buffer `bid` back to the kernel: no syscall, the kernel sees
    /// it at its next pick.
    ///
    /// # Panics
    ///
    /// If the buffer is not ours (never taken, or recycled twice).
    pub fn recycle(&mut self, bid: u16) {
        let (word, bit) = (bid as usize / 64, 1u64 << (bid % 64));
        assert!(
            bid < self.entries && self.held[word] & bit != 0,
            "buffer {bid} recycled but not held"
        );
        self.held[word] &= !bit;
        self.out -= 1;
        self.put(bid);
        self.publish();
    }

    fn buf_ptr(&self, bid: u16) -> *mut u8 {
        // SAFETY: callers pass bid < entries, so this stays in the mapping.
        unsafe { self.bufs.add(bid as usize * self.buf_size as usize) }
    }

    /// Writes `bid` into the slot after the tail (not yet visible).
    fn put(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.entries - 1));
        // SAFETY: slot < entries. The kernel never reads a slot at or past
        // the published tail, so these writes race with nothing; the tail
        // field of entry 0 is not written here.
        unsafe {
            let e = self.ring.add(slot);
            ptr::addr_of_mut!((*e).addr).write(self.buf_ptr(bid) as u64);
            ptr::addr_of_mut!((*e).len).write(self.buf_size);
            ptr::addr_of_mut!((*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every `put` so far visible to the kernel.
    fn publish(&self) {
        // SAFETY: entry 0's tail field is a naturally aligned u16 that only
        // we write and the kernel reads; the release store orders the entry
        // writes before it.
        unsafe {
            let tail = ptr::addr_of_mut!((*self.ring).tail).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours; `register`'s contract says the
        // kernel no longer uses it.
        unsafe {
            libc::munmap(self.map.cast(), self.map_len);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::IoUring;

    #[test]
    fn take_and_recycle_count_buffers_out() {
        let ring = IoUring::new(4).unwrap();
        let mut bufs = unsafe { BufRing::register(&ring.submitter(), 7, 4, 128) }.unwrap();
        assert_eq!((bufs.bgid(), bufs.entries(), bufs.buf_size()), (7, 4, 128));
        assert_eq!((bufs.out(), bufs.available()), (0, 4));
        assert_eq!(bufs.take(2, 5).len(), 5);
        assert_eq!(bufs.take(3, 128).len(), 128);
        assert_eq!((bufs.out(), bufs.available()), (2, 2));
        bufs.recycle(2);
        bufs.recycle(3);
        assert_eq!((bufs.out(), bufs.available()), (0, 4));
        // Every put advanced the tail: 4 at registration, 2 recycled.
        assert_eq!(bufs.tail, 6);
        ring.submitter().unregister_buf_ring(7).unwrap();
    }

    #[test]
    #[should_panic(expected = "recycled but not held")]
    fn recycling_a_buffer_twice_panics() {
        let ring = IoUring::new(4).unwrap();
        let mut bufs = unsafe { BufRing::register(&ring.submitter(), 1, 2, 64) }.unwrap();
        bufs.take(0, 1);
        bufs.recycle(0);
        ring.submitter().unregister_buf_ring(1).unwrap();
        bufs.recycle(0);
    }

    #[test]
    fn bad_sizes_are_refused() {
        let ring = IoUring::new(4).unwrap();
        for (n, s) in [(3, 64), (0, 64), (4, 0)] {
            let err = unsafe { BufRing::register(&ring.submitter(), 1, n, s) }
                .err()
                .unwrap();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
