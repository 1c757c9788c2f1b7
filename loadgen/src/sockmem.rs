//! The kernel's memory for the broker's side of its connections.
//!
//! A connection costs the broker memory that its RSS does not show: the
//! socket's buffers live in the kernel. The kernel reports them per socket
//! through `NETLINK_SOCK_DIAG` (what `ss -tm` prints as `skmem:(r…,rb…,
//! t…,tb…,f…,w…,o…,bl…,d…)`): this module asks it directly, so it needs
//! neither root nor the `ss` binary nor a text format to parse, and works
//! wherever the load generator runs on the broker's host. It dumps the
//! established TCP sockets (IPv4 and IPv6) whose *local* port is a
//! broker's port: the broker's end of each connection, not the load
//! generator's (whose local ports are ephemeral).
//!
//! What counts as held ([`SocketMemory::held_bytes`]): `r + w + f + o`,
//! which is what the kernel's TCP memory accounting charges to the sockets
//! (the pages `/proc/net/sockstat` shows as `TCP: … mem`, the ones
//! `tcp_mem` limits):
//! - `r` (`rmem_alloc`): received bytes not yet read, as the buffers
//!   holding them (their truesize);
//! - `w` (`wmem_queued`): sent bytes not yet acknowledged, and bytes not
//!   yet sent;
//! - `f` (`fwd_alloc`): memory charged to the socket ahead of use (a
//!   reserve the kernel keeps small, under a page, since Linux 6.0);
//! - `o` (`optmem`): socket options and filters.
//!
//! `t` (`wmem_alloc`, the part of `w` handed down to the device, counted
//! again while in flight) is reported apart, not added. `rb` and `tb` are
//! limits, not memory. Not included either, because no per-socket figure
//! exists without root: the socket structures themselves (a TCP socket,
//! its file and inode, an epoll or io_uring entry; about 2 to 4 KiB in the
//! kernel's slab caches), which `/proc/slabinfo` shows to root only. The
//! `conns` report gives the machine's slab growth beside this instead.

use std::time::Duration;

use serde::Serialize;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`, `NLMSG_DONE` (linux/netlink.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST: u16 = 0x1 | 0x300;
/// `TCP_ESTABLISHED` (net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
/// `INET_DIAG_SKMEMINFO` (linux/inet_diag.h): the `u32[SK_MEMINFO_VARS]`
/// attribute (asked for with bit `INET_DIAG_SKMEMINFO - 1` of
/// `idiag_ext`).
const INET_DIAG_SKMEMINFO: u16 = 7;
/// `struct nlmsghdr` and `struct inet_diag_msg` sizes.
const NLMSG_HDR: usize = 16;
const DIAG_MSG: usize = 72;

/// One socket's `skmem` values (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkMem {
    pub rmem_alloc: u32,
    pub rcvbuf: u32,
    pub wmem_alloc: u32,
    pub sndbuf: u32,
    pub fwd_alloc: u32,
    pub wmem_queued: u32,
    pub optmem: u32,
    pub backlog: u32,
    pub drops: u32,
}

impl SkMem {
    /// From the attribute's `u32`s, in `SK_MEMINFO_*` order (an older
    /// kernel sends fewer: the rest stay 0).
    fn from_words(w: &[u32]) -> SkMem {
        let at = |i: usize| w.get(i).copied().unwrap_or(0);
        SkMem {
            rmem_alloc: at(0),
            rcvbuf: at(1),
            wmem_alloc: at(2),
            sndbuf: at(3),
            fwd_alloc: at(4),
            wmem_queued: at(5),
            optmem: at(6),
            backlog: at(7),
            drops: at(8),
        }
    }
}

/// The broker side's kernel memory, summed over its sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SocketMemory {
    /// The local ports looked at (the `--broker` ports).
    pub ports: Vec<u16>,
    /// Established TCP sockets on this host with one of those as local
    /// port: the broker's end of every connection to it.
    pub sockets: usize,
    /// Sums over them, bytes: `r`, `t`, `f`, `w`, `o` and `bl` of
    /// `ss -tm`.
    pub rmem_alloc: u64,
    pub wmem_alloc: u64,
    pub fwd_alloc: u64,
    pub wmem_queued: u64,
    pub optmem: u64,
    pub backlog: u64,
    /// The receive and send buffer limits, averaged (what the sockets may
    /// grow to, not what they hold).
    pub rcvbuf_avg: f64,
    pub sndbuf_avg: f64,
    /// `r + w + f + o`: what the kernel's TCP accounting charges to them.
    pub held_bytes: u64,
    /// `held_bytes / sockets`.
    pub held_per_socket_bytes: f64,
}

impl SocketMemory {
    fn new(ports: &[u16], socks: &[SkMem]) -> SocketMemory {
        let sum = |f: fn(&SkMem) -> u32| socks.iter().map(|s| u64::from(f(s))).sum::<u64>();
        let n = socks.len();
        let avg = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let mut m = SocketMemory {
            ports: ports.to_vec(),
            sockets: n,
            rmem_alloc: sum(|s| s.rmem_alloc),
            wmem_alloc: sum(|s| s.wmem_alloc),
            fwd_alloc: sum(|s| s.fwd_alloc),
            wmem_queued: sum(|s| s.wmem_queued),
            optmem: sum(|s| s.optmem),
            backlog: sum(|s| s.backlog),
            rcvbuf_avg: avg(sum(|s| s.rcvbuf)),
            sndbuf_avg: avg(sum(|s| s.sndbuf)),
            held_bytes: 0,
            held_per_socket_bytes: 0.0,
        };
        m.held_bytes = m.rmem_alloc + m.wmem_queued + m.fwd_alloc + m.optmem;
        m.held_per_socket_bytes = avg(m.held_bytes);
        m
    }
}

/// The established TCP sockets of this host whose local port is one of
/// `ports`, IPv4 and IPv6.
pub fn server_sockets(ports: &[u16]) -> Result<SocketMemory, String> {
    let mut socks = Vec::new();
    for &port in ports {
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let buf = dump(family, port)?;
            socks.extend(parse_dump(&buf, port)?);
        }
    }
    Ok(SocketMemory::new(ports, &socks))
}

/// The request: a netlink header and a `struct inet_diag_req_v2` asking
/// for established TCP sockets of `family` with local port `port` (the
/// kernel filters on it; [`parse_dump`] checks again), with `skmem`.
fn request(family: u8, port: u16) -> Vec<u8> {
    let len = NLMSG_HDR + 56;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&DUMP_REQUEST.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.push(family);
    m.push(libc::IPPROTO_TCP as u8);
    m.push(1 << (INET_DIAG_SKMEMINFO - 1)); // idiag_ext
    m.push(0); // pad
    m.extend_from_slice(&(1u32 << TCP_ESTABLISHED).to_ne_bytes()); // idiag_states
                                                                   // struct inet_diag_sockid: sport, dport (big-endian), src, dst, if,
                                                                   // cookie.
    m.extend_from_slice(&port.to_be_bytes());
    m.resize(len, 0);
    m
}

/// Sends one dump request and reads every reply until `NLMSG_DONE`.
fn dump(family: u8, port: u16) -> Result<Vec<u8>, String> {
    let err = |what: &str| format!("sock_diag: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: plain socket(2); the descriptor is closed by `Fd`.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(err("socket"));
    }
    let fd = Fd(fd);
    let timeout = libc::timeval {
        tv_sec: Duration::from_secs(5).as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: `timeout` is a valid timeval of the size passed.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    // SAFETY: an all-zero sockaddr_nl is valid; family set below (pid 0
    // and no groups: the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let req = request(family, port);
    // SAFETY: `req` and `kernel` are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            fd.0,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(err("send"));
    }
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid and writable for its length.
        let n = unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(err("recv"));
        }
        let chunk = &buf[..n as usize];
        all.extend_from_slice(chunk);
        if n == 0 || ends_dump(chunk) {
            return Ok(all);
        }
    }
}

/// Closes a descriptor when dropped.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

/// The netlink messages in `buf`: (type, payload).
fn messages(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let hdr = buf.get(at..at + NLMSG_HDR)?;
        let len = u32::from_ne_bytes(hdr[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(hdr[4..6].try_into().unwrap());
        let body = buf.get(at + NLMSG_HDR..at + len.max(NLMSG_HDR))?;
        at += len.max(NLMSG_HDR).next_multiple_of(4);
        Some((ty, body))
    })
}

/// Whether `chunk` holds the end of the dump (done, or an error).
fn ends_dump(chunk: &[u8]) -> bool {
    messages(chunk).any(|(ty, _)| ty == NLMSG_DONE || ty == NLMSG_ERROR)
}

/// The `skmem` of every established socket in a dump whose local port is
/// `port`.
fn parse_dump(buf: &[u8], port: u16) -> Result<Vec<SkMem>, String> {
    let mut out = Vec::new();
    for (ty, body) in messages(buf) {
        match ty {
            NLMSG_DONE => break,
            NLMSG_ERROR => {
                let errno = body
                    .get(0..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                if errno != 0 {
                    return Err(format!(
                        "sock_diag: the kernel refused the dump: {}",
                        std::io::Error::from_raw_os_error(-errno)
                    ));
                }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG => {
                let (state, sport) = (body[1], u16::from_be_bytes([body[4], body[5]]));
                if state != TCP_ESTABLISHED || sport != port {
                    continue;
                }
                out.push(skmem_of(&body[DIAG_MSG..]).unwrap_or_default());
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The `INET_DIAG_SKMEMINFO` attribute among `attrs`.
fn skmem_of(mut attrs: &[u8]) -> Option<SkMem> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == INET_DIAG_SKMEMINFO {
            let words: Vec<u32> = attrs[4..len]
                .chunks_exact(4)
                .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
                .collect();
            return Some(SkMem::from_words(&words));
        }
        attrs = attrs.get(len.next_multiple_of(4)..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// A dump message for one socket, as the kernel writes it.
    fn diag(state: u8, sport: u16, skmem: &[u32]) -> Vec<u8> {
        let mut body = vec![0u8; DIAG_MSG];
        body[0] = libc::AF_INET as u8;
        body[1] = state;
        body[4..6].copy_from_slice(&sport.to_be_bytes());
        body[6..8].copy_from_slice(&40000u16.to_be_bytes());
        // Another attribute first, then skmem.
        let other = [8u16.to_ne_bytes(), 5u16.to_ne_bytes()].concat();
        body.extend_from_slice(&other);
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&((4 + 4 * skmem.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&INET_DIAG_SKMEMINFO.to_ne_bytes());
        for w in skmem {
            body.extend_from_slice(&w.to_ne_bytes());
        }
        msg(SOCK_DIAG_BY_FAMILY, &body)
    }

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(len.next_multiple_of(4), 0);
        m
    }

    #[test]
    fn a_dump_is_parsed_and_summed_by_what_is_held() {
        let mut buf = diag(
            TCP_ESTABLISHED,
            8080,
            &[100, 131072, 7, 16384, 900, 2000, 40, 0, 0],
        );
        // Not the broker's end, not established, and an old kernel's
        // eight values.
        buf.extend(diag(TCP_ESTABLISHED, 40000, &[1, 1, 1, 1, 1, 1, 1, 1, 1]));
        buf.extend(diag(8, 8080, &[1, 1, 1, 1, 1, 1, 1, 1, 1]));
        buf.extend(diag(
            TCP_ESTABLISHED,
            8080,
            &[0, 65536, 0, 8192, 0, 0, 0, 0],
        ));
        buf.extend(msg(NLMSG_DONE, &[0; 4]));
        assert!(ends_dump(&buf));
        let socks = parse_dump(&buf, 8080).unwrap();
        assert_eq!(socks.len(), 2);
        assert_eq!(socks[0].wmem_queued, 2000);
        assert_eq!(socks[1].drops, 0);
        let m = SocketMemory::new(&[8080], &socks);
        assert_eq!(m.sockets, 2);
        // r + w + f + o; t is not added.
        assert_eq!(m.held_bytes, 100 + 2000 + 900 + 40);
        assert_eq!(m.wmem_alloc, 7);
        assert_eq!(m.held_per_socket_bytes, 1520.0);
        assert_eq!(m.rcvbuf_avg, 98304.0);
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["held_bytes"], 3040);
        assert_eq!(SocketMemory::new(&[1], &[]).held_per_socket_bytes, 0.0);
    }

    #[test]
    fn a_refused_dump_says_why() {
        let buf = msg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        let e = parse_dump(&buf, 1).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        assert!(!ends_dump(&diag(TCP_ESTABLISHED, 1, &[0; 9])));
    }

    #[test]
    fn the_request_asks_for_established_tcp_with_skmem_on_the_port() {
        let r = request(libc::AF_INET6 as u8, 8080);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(r[16], libc::AF_INET6 as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(r[18], 1 << 6);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 2);
        assert_eq!(&r[24..26], &8080u16.to_be_bytes());
    }

    /// The real kernel: a loopback connection's server end is found, with
    /// the unread bytes it holds, and its client end is not.
    #[test]
    fn the_kernel_reports_a_server_sockets_memory() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(&[7u8; 3000]).unwrap();
        // Wait until the bytes are in the server's receive queue.
        let mut seen = None;
        for _ in 0..100 {
            let m = server_sockets(&[port]).unwrap();
            if m.rmem_alloc > 0 {
                seen = Some(m);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let m = seen.expect("the unread bytes show in rmem_alloc");
        assert_eq!(m.sockets, 1, "{m:?}");
        // Held as buffers: at least the bytes, in their truesize, and
        // within the receive buffer's limit.
        assert!(m.rmem_alloc >= 3000 && m.rmem_alloc < 64 * 1024, "{m:?}");
        assert!(m.rcvbuf_avg >= m.rmem_alloc as f64, "{m:?}");
        assert!(m.sndbuf_avg > 0.0, "{m:?}");
        assert!(m.held_bytes >= m.rmem_alloc, "{m:?}");
        let mut got = vec![0u8; 3000];
        server.read_exact(&mut got).unwrap();
        // Nothing on a port nobody uses.
        assert_eq!(server_sockets(&[1]).unwrap().sockets, 0);
    }
}
