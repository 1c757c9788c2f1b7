//! The TCP stream every transport moves its bytes through: connect (with an
//! optional source address), a read buffer that is only allocated
//! while bytes arrive, a write queue, and the byte counts the reports
//! quote per message.
//!
//! Every method is cancel-safe: all progress lives in the struct (the
//! write queue only shrinks by what was written, the read buffer only grows
//! by what was read), so a scenario may drop a `recv` future in a
//! `select!` and call it again without losing or repeating a byte.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

use super::{ConnectOpts, Endpoint, Result, Wire};

pub struct Stream {
    tcp: TcpStream,
    /// Received, not yet consumed by the transport above.
    pub rbuf: BytesMut,
    wbuf: BytesMut,
    read_chunk: usize,
    pub wire: Wire,
}

/// Turns a connect error into advice.
fn connect_error(addr: SocketAddr, source: Option<SocketAddr>, e: io::Error) -> String {
    let hint = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => " (is the broker running?)",
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (out of file descriptors: raise `ulimit -n`, the hard limit is the ceiling)"
        }
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => {
            " (out of local ports: add source addresses with --source-ips 127.0.0.2,127.0.0.3,…)"
        }
        _ => "",
    };
    match source {
        Some(src) => format!("broker unreachable at {addr} from {src}: {e}{hint}"),
        None => format!("broker unreachable at {addr}: {e}{hint}"),
    }
}

impl Stream {
    /// TCP connect (no timeout: the transport bounds connect + handshake
    /// together), to each of the broker's addresses in turn until one
    /// answers (a host name may resolve to IPv6 and IPv4).
    pub async fn connect(ep: &Endpoint, opts: &ConnectOpts) -> Result<Stream> {
        let mut last = None;
        for addr in ep.reachable_from(opts.source) {
            match Self::connect_to(addr, opts).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            format!(
                "broker unreachable: no address of {} can be reached from {:?}",
                ep.authority, opts.source
            )
        }))
    }

    async fn connect_to(addr: SocketAddr, opts: &ConnectOpts) -> Result<Stream> {
        let local = opts.source.map(|ip| SocketAddr::new(ip, 0));
        let err = |e| connect_error(addr, local, e);
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        if let Some(local) = local {
            // Choose the port at connect() time, from the full 4-tuple, so
            // one source address serves every destination's port range.
            let one: libc::c_int = 1;
            // SAFETY: a valid socket and a c_int option value.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            sock.bind(local).map_err(err)?;
        }
        let tcp = sock.connect(addr).await.map_err(err)?;
        tcp.set_nodelay(true).ok();
        Ok(Stream {
            tcp,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            read_chunk: opts.read_chunk.max(512),
            wire: Wire::default(),
        })
    }

    /// Appends to the write queue; nothing is sent until [`Stream::flush`].
    pub fn queue(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// The write queue itself, for encoders that write into it.
    pub fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes the whole queue.
    pub async fn flush(&mut self) -> Result<()> {
        while !self.wbuf.is_empty() {
            let n = self
                .tcp
                .write(&self.wbuf)
                .await
                .map_err(|e| format!("write: {e}"))?;
            if n == 0 {
                return Err("write: the broker stopped reading".into());
            }
            self.wire.up += n as u64;
            self.wbuf.advance(n);
        }
        Ok(())
    }

    /// Reads once if the socket has bytes: `Ok(false)` if it had none,
    /// `Err` at EOF.
    ///
    /// A read that does not fill the buffer has drained the socket, so the
    /// readiness is cleared right away (by reporting `WouldBlock` to
    /// tokio's `try_io`, which only clears the readiness it saw before the
    /// read, so an edge that arrives meanwhile is kept). This saves the
    /// extra `recv` → `EAGAIN` per wake-up that `try_read_buf` would make:
    /// with a thousand subscribers that is one syscall per delivery.
    pub fn try_fill(&mut self) -> Result<bool> {
        if self.rbuf.capacity() - self.rbuf.len() < 512 {
            self.rbuf.reserve(self.read_chunk);
        }
        let before = self.rbuf.len();
        let fd = self.tcp.as_raw_fd();
        let rbuf = &mut self.rbuf;
        let r = self.tcp.try_io(Interest::READABLE, || {
            let spare = rbuf.spare_capacity_mut();
            let want = spare.len();
            // SAFETY: `spare` is writable memory of `want` bytes owned by
            // `rbuf`; `recv` initialises the first `n` of them.
            let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), want, 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            // SAFETY: the first `n` spare bytes were just written.
            unsafe { rbuf.set_len(rbuf.len() + n) };
            if n > 0 && n < want {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let got = (self.rbuf.len() - before) as u64;
        self.wire.down += got;
        match r {
            Ok(0) => Err("broker closed the connection (EOF)".into()),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(got > 0),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    /// Reads at least one byte, waiting for it.
    pub async fn fill(&mut self) -> Result<()> {
        loop {
            if self.try_fill()? {
                return Ok(());
            }
            self.tcp
                .readable()
                .await
                .map_err(|e| format!("read: {e}"))?;
        }
    }

    /// Half-closes our side (best effort).
    pub async fn shutdown(&mut self) {
        let _ = self.tcp.shutdown().await;
    }
}
