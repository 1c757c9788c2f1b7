//! The one task per connection that writes its socket.
//!
//! It drains the connection's outbox (kept by the engine) with `writev` (at
//! most [`MAX_IOVECS`] buffers per call), resubmits after partial writes,
//! and is never cancelled: an in-flight `writev` always runs to completion
//! (tokio-uring does not cancel kernel operations when a future is
//! dropped). `Bytes` is an owned io_uring buffer (tokio-uring's `bytes`
//! feature), so a frame shared by many outboxes is written from the same
//! memory to every socket.

use std::net::Shutdown;

use bytes::Bytes;
use tokio_uring::net::TcpStream;

use ringcast_core::outbox::{Outbox, State};

use super::conn::Conn;
use super::shard::Shard;

/// Buffers handed to one `writev`; well under IOV_MAX.
const MAX_IOVECS: usize = 64;

/// The writer task: drains the outbox into the socket until finished or
/// closed.
pub async fn run_writer(shard: &Shard, conn: &Conn) {
    let mut iov: Vec<Bytes> = Vec::new();
    loop {
        let state = shard.engine_io(|e| e.take_batch(conn.id, &mut iov, MAX_IOVECS));
        if iov.is_empty() {
            match state {
                State::Closed => return,
                State::Finishing => {
                    let _ = conn.stream.shutdown(Shutdown::Write);
                    return;
                }
                State::Open => {
                    conn.work.notified().await;
                    continue;
                }
            }
        }
        let batch: usize = iov.iter().map(Bytes::len).sum();
        if !write_all_vectored(&conn.stream, &mut iov).await {
            shard.outbox(conn, Outbox::close);
            let _ = conn.stream.shutdown(Shutdown::Both);
            return;
        }
        shard.engine_io(|e| e.written(conn.id, batch));
        conn.space.notify_one();
        shard.metrics().bytes_out.add(batch as u64);
    }
}

/// Writes every buffer in `iov`, resubmitting after partial writes; leaves
/// `iov` empty (its allocation is kept for the next batch). False on error.
async fn write_all_vectored(stream: &TcpStream, iov: &mut Vec<Bytes>) -> bool {
    let mut bufs = std::mem::take(iov);
    while !bufs.is_empty() {
        let (res, mut returned) = stream.writev(bufs).await;
        let mut written = match res {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        // Drop the fully written buffers, trim the partially written one.
        let full = returned
            .iter()
            .take_while(|b| {
                if written >= b.len() {
                    written -= b.len();
                    true
                } else {
                    false
                }
            })
            .count();
        returned.drain(..full);
        if written > 0 {
            let first = &mut returned[0];
            *first = first.slice(written..);
        }
        bufs = returned;
    }
    *iov = bufs;
    true
}
