//! Messages between shards, batched.
//!
//! A cross-thread wake-up costs tens of microseconds, so a shard never
//! sends one message at a time: [`Mesh::send`] appends to a per-destination
//! batch and schedules one flush, which first yields once so that every
//! task already runnable on this shard (other sockets whose reads completed
//! in the same io_uring batch) adds its messages too. The flush moves each
//! batch into the destination's inbox under its mutex and wakes the
//! destination only if the inbox was empty: one wake-up carries many
//! messages. Per sender, order is preserved end to end (a `Vec` appended
//! under one lock), which the pub/sub protocol relies on.
//!
//! Each inbox is bounded (`--mesh-queue` messages): [`Mesh::try_send`]
//! refuses past the bound, counting what is in the inbox and what this
//! sender has batched for it, so a shard that falls behind pushes back on
//! the clients that feed it instead of growing without limit. Answers and
//! releases use [`Mesh::send`], which always queues: they are bounded by
//! the requests that caused them.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::uring::Waker;

/// A shard's incoming queue, shared with every other shard.
pub struct Inbox<M> {
    queue: Mutex<Vec<M>>,
    /// Messages in `queue`, readable without the lock.
    len: AtomicUsize,
    /// Wakes a receiver on a tokio runtime (the Redis thread).
    ready: Notify,
    /// Wakes a receiver on a completion loop (a shard): its eventfd.
    waker: OnceLock<Waker>,
}

impl<M> Default for Inbox<M> {
    fn default() -> Self {
        Inbox {
            queue: Mutex::new(Vec::new()),
            len: AtomicUsize::new(0),
            ready: Notify::new(),
            waker: OnceLock::new(),
        }
    }
}

impl<M> Inbox<M> {
    /// The receiver is a completion loop: a batch landing in an empty
    /// inbox wakes it through `waker` (one `write(2)` per batch).
    pub fn set_waker(&self, waker: Waker) {
        let _ = self.waker.set(waker);
    }

    fn wake(&self) {
        self.ready.notify_one();
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }
}

/// One shard's end of the mesh.
pub struct Mesh<M> {
    id: usize,
    inboxes: Arc<[Inbox<M>]>,
    outgoing: RefCell<Vec<Vec<M>>>,
    /// Messages an inbox may hold (plus what one sender has batched).
    cap: usize,
    flush_scheduled: Cell<bool>,
    flush: Notify,
}

impl<M: Send> Mesh<M> {
    /// Creates the inboxes for `shards` shards.
    pub fn inboxes(shards: usize) -> Arc<[Inbox<M>]> {
        (0..shards).map(|_| Inbox::default()).collect()
    }

    pub fn new(id: usize, inboxes: Arc<[Inbox<M>]>, cap: usize) -> Self {
        let n = inboxes.len();
        Mesh {
            id,
            inboxes,
            outgoing: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            cap,
            flush_scheduled: Cell::new(false),
            flush: Notify::new(),
        }
    }

    /// [`Mesh::send`], unless `dst`'s inbox and this shard's batch for it
    /// hold `cap` messages already: then `msg` comes back.
    pub fn try_send(&self, dst: usize, msg: M) -> Result<(), M> {
        let queued = self.inboxes[dst].len.load(Ordering::Relaxed);
        if queued + self.outgoing.borrow()[dst].len() >= self.cap {
            return Err(msg);
        }
        self.send(dst, msg);
        Ok(())
    }

    /// Queues `msg` for shard `dst` (never this shard; local work is done
    /// in place by the caller).
    pub fn send(&self, dst: usize, msg: M) {
        debug_assert_ne!(dst, self.id);
        self.outgoing.borrow_mut()[dst].push(msg);
        if !self.flush_scheduled.replace(true) {
            self.flush.notify_one();
        }
    }

    /// The flusher task: one per shard, runs forever.
    pub async fn run_flusher(&self) {
        loop {
            self.flush.notified().await;
            // Let everything already runnable add to the batches first.
            tokio::task::yield_now().await;
            self.flush_now();
        }
    }

    /// Moves every batch into its inbox, waking each receiver whose inbox
    /// was empty. A completion loop calls this once per turn, after the
    /// turn's completions have all added to the batches.
    pub fn flush_now(&self) {
        self.flush_scheduled.set(false);
        let mut outgoing = self.outgoing.borrow_mut();
        for (dst, batch) in outgoing.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let inbox = &self.inboxes[dst];
            let was_empty = {
                let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
                let was_empty = q.is_empty();
                inbox.len.fetch_add(batch.len(), Ordering::Relaxed);
                q.append(batch);
                was_empty
            };
            if was_empty {
                inbox.wake();
            }
        }
    }

    /// Swaps what waits for this shard into `into` without waiting; false
    /// if nothing did (checked without the lock).
    pub fn try_recv(&self, into: &mut Vec<M>) -> bool {
        let inbox = &self.inboxes[self.id];
        if inbox.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(into, &mut *q);
        inbox.len.fetch_sub(into.len(), Ordering::Relaxed);
        !into.is_empty()
    }

    /// Waits for messages to this shard and swaps them into `into` (which
    /// should be empty; its allocation is recycled).
    pub async fn recv(&self, into: &mut Vec<M>) {
        let inbox = &self.inboxes[self.id];
        loop {
            {
                let mut q = inbox.queue.lock().unwrap_or_else(|p| p.into_inner());
                if !q.is_empty() {
                    std::mem::swap(into, &mut *q);
                    inbox.len.fetch_sub(into.len(), Ordering::Relaxed);
                    return;
                }
            }
            inbox.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cross_threads_in_order() {
        let inboxes = Mesh::<u32>::inboxes(2);
        let receiver = {
            let inboxes = inboxes.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let mesh = Mesh::new(1, inboxes, usize::MAX);
                    let mut got = Vec::new();
                    let mut batches = 0;
                    while got.len() < 1000 {
                        let mut batch = Vec::new();
                        mesh.recv(&mut batch).await;
                        batches += 1;
                        got.extend(batch);
                    }
                    (got, batches)
                })
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let mesh = std::rc::Rc::new(Mesh::new(0, inboxes, usize::MAX));
            let flusher = {
                let mesh = mesh.clone();
                tokio::task::spawn_local(async move { mesh.run_flusher().await })
            };
            for round in 0..10u32 {
                for i in 0..100 {
                    mesh.send(1, round * 100 + i);
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            flusher.abort();
        });
        let (got, batches) = receiver.join().unwrap();
        assert_eq!(
            got,
            (0..1000).collect::<Vec<_>>(),
            "every message, in order"
        );
        assert!(
            batches <= 10,
            "100 sends in one turn travel as one batch (got {batches} batches)"
        );
    }

    #[test]
    fn try_send_refuses_past_the_bound_and_send_does_not() {
        let inboxes = Mesh::<u32>::inboxes(2);
        let mesh = Mesh::new(0, inboxes.clone(), 3);
        for i in 0..3 {
            assert_eq!(mesh.try_send(1, i), Ok(()));
        }
        assert_eq!(mesh.try_send(1, 9), Err(9), "three batched: full");
        mesh.send(1, 3);
        mesh.flush_now();
        assert_eq!(inboxes[1].len.load(Ordering::Relaxed), 4);
        assert_eq!(mesh.try_send(1, 9), Err(9), "four in the inbox: full");
        let receiver = Mesh::new(1, inboxes, 3);
        let mut got = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(receiver.recv(&mut got));
        assert_eq!(got, [0, 1, 2, 3]);
        assert_eq!(mesh.try_send(1, 4), Ok(()), "drained: room again");
    }
}
