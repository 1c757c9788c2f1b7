//! One SO_REUSEPORT listener per shard, built with socket2.
//!
//! The kernel spreads incoming connections across the shards' listeners, so
//! no accept lock or hand-off between threads exists. SO_REUSEPORT alone
//! would let a second broker (or anything else with the option) share our
//! port without an error, so we probe first without it: a busy port is a
//! clear refusal.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

fn socket_for(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Fails with `AddrInUse` if any socket, with or without SO_REUSEPORT, is
/// bound to `addr`: our probe does not set the option, so the kernel refuses
/// to share.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = socket_for(addr)?;
    socket.bind(&addr.into())?;
    Ok(())
}

fn bind_one(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = socket_for(addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// Binds `count` listeners to the same address. With port 0 the first
/// listener picks the port and the others join it.
pub fn bind_all(addr: SocketAddr, count: usize, backlog: i32) -> io::Result<Vec<TcpListener>> {
    let mut addr = addr;
    if addr.port() != 0 {
        probe(addr).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is already in use by another process"),
                )
            } else {
                e
            }
        })?;
    }
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let l = bind_one(addr, backlog)?;
        addr = l.local_addr()?;
        listeners.push(l);
    }
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_share_one_port_and_others_are_refused() {
        let ls = bind_all("127.0.0.1:0".parse().unwrap(), 3, 128).unwrap();
        let port = ls[0].local_addr().unwrap().port();
        assert!(ls.iter().all(|l| l.local_addr().unwrap().port() == port));
        let again = bind_all(ls[0].local_addr().unwrap(), 1, 128).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        assert!(again.to_string().contains("already in use"));
        // A plain (non-REUSEPORT) listener elsewhere also blocks us.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind_all(plain.local_addr().unwrap(), 2, 128).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
