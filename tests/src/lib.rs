//! Harness for the end-to-end tests: starts the real `ringcast` binary on
//! an ephemeral loopback port and offers blocking, timeout-bounded socket
//! helpers that speak raw RFC 6455 (built on the crate's own client-role
//! codec, so tests can also send what no well-behaved client would).
//! [`redis`] starts a real `redis-server` of the test's own for the
//! cluster-mode tests.

pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringcast_proto::frame::{encode_frame, FrameHeader, OpCode};
use ringcast_proto::handshake::ClientHandshake;
use ringcast_proto::HttpError;

/// Every blocking read in the harness gives up after this long.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the release `ringcast` binary, built once per test process
/// (`RINGCAST_BIN` overrides). Release, because the tests push 16 MiB
/// messages and the binary under test should be the one users run.
pub fn broker_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| release_binary("ringcast", "ringcast", "RINGCAST_BIN"))
        .clone()
}

/// Path of the release `ringcast-loadgen` binary (`RINGCAST_LOADGEN_BIN`
/// overrides; else the one beside `RINGCAST_BIN`, else built here).
pub fn loadgen_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(broker) = std::env::var("RINGCAST_BIN") {
            let beside = PathBuf::from(broker).with_file_name("ringcast-loadgen");
            if std::env::var_os("RINGCAST_LOADGEN_BIN").is_none() && beside.exists() {
                return beside;
            }
        }
        release_binary(
            "ringcast-loadgen",
            "ringcast-loadgen",
            "RINGCAST_LOADGEN_BIN",
        )
    })
    .clone()
}

/// `$env` if set, else `cargo build --release -p package --bin bin`.
fn release_binary(package: &str, bin: &str, env: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=json",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build of {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

/// A running broker process, killed on drop.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    /// Everything the broker printed on stdout up to "listening on".
    pub banner: String,
    /// What it printed on stderr so far (read by a thread, so that a
    /// chatty broker never blocks on a full pipe).
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// Starts `ringcast --listen 127.0.0.1:0 ARGS...` and waits until it
    /// prints its address.
    pub fn start(args: &[&str]) -> Broker {
        Self::try_start(args).unwrap_or_else(|e| panic!("broker did not start: {e}"))
    }

    /// Like [`Broker::start`] but returns what went wrong (for tests of
    /// start-up failures).
    pub fn try_start(args: &[&str]) -> Result<Broker, String> {
        let mut cmd = Command::new(broker_binary());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                banner.push_str(&line);
                banner.push('\n');
                if let Some(addr) = line.strip_prefix("ringcast listening on ") {
                    let _ = tx.send(Ok((addr.trim().to_string(), banner.clone())));
                }
            }
            let _ = tx.send(Err(banner));
        });
        let mut broker = Broker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            banner: String::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        };
        match rx.recv_timeout(IO_TIMEOUT) {
            Ok(Ok((addr, banner))) => {
                broker.addr = addr
                    .parse()
                    .map_err(|e| format!("bad address {addr}: {e}"))?;
                broker.banner = banner;
                Ok(broker)
            }
            other => {
                let _ = broker.child.kill();
                let _ = broker.child.wait();
                Err(format!("{other:?}; stderr: {}", broker.stderr()))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the broker printed on stderr (complete only after the
    /// process exited: then this waits for the last of it).
    pub fn stderr(&mut self) -> String {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            if let Some(reader) = self.stderr_reader.take() {
                let _ = reader.join();
            }
        }
        self.stderr_so_far()
    }

    /// What the broker printed on stderr until now (its log), while it runs.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP connection with the harness's timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends a raw HTTP request, half-closes (so a kept-alive connection ends
/// after the response) and reads everything until the server closes.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = tcp(addr);
    s.write_all(request).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a response head (to its blank line) from `s`, byte by byte, so
/// that nothing after it is consumed; returned as it came (bytes that are
/// not HTTP show). Fails if the stream ends or the read times out first.
pub fn read_head_bytes(s: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "no complete response head ({other:?}): {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    head
}

/// A raw WebSocket client: the handshake done, frames in and out by hand.
pub struct RawWs {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawWs {
    /// Opens a WebSocket to `path`, verifying the server's accept key.
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        Self::handshake(tcp(addr), path)
    }

    /// Opens a WebSocket to `path` over an already connected `stream`
    /// (e.g. one from [`tcp_with_rcvbuf`]).
    pub fn handshake(stream: TcpStream, path: &str) -> RawWs {
        Self::try_handshake(stream, path, "").unwrap_or_else(|r| {
            panic!(
                "upgrade refused: {} {:?} {}",
                r.status,
                r.headers,
                r.body_text()
            )
        })
    }

    /// Opens a WebSocket to `path` with `extra` header lines (each ending
    /// in `\r\n`: an `Origin`, a forwarding header) in the upgrade request.
    /// `Err`: the server answered the upgrade with this HTTP response.
    pub fn try_connect_with(
        addr: SocketAddr,
        path: &str,
        extra: &str,
    ) -> Result<RawWs, HttpResponse> {
        Self::try_handshake(tcp(addr), path, extra)
    }

    fn try_handshake(
        mut stream: TcpStream,
        path: &str,
        extra: &str,
    ) -> Result<RawWs, HttpResponse> {
        let addr = stream.peer_addr().expect("connected stream");
        let (hs, request) = ClientHandshake::new(&addr.to_string(), path, &[]);
        // The request ends with its blank line: the extra headers go before.
        let mut request = request[..request.len() - 2].to_vec();
        request.extend_from_slice(extra.as_bytes());
        request.extend_from_slice(b"\r\n");
        stream.write_all(&request).unwrap();
        let mut buf = BytesMut::new();
        loop {
            match hs.parse_response(&buf, 8192) {
                Ok(Some((n, _))) => {
                    let _ = buf.split_to(n);
                    return Ok(RawWs { stream, buf });
                }
                Ok(None) => {}
                Err(HttpError::UpgradeRefused(_)) => {
                    let mut http = HttpConn {
                        stream,
                        buf: buf.to_vec(),
                    };
                    return Err(http.read_response().expect("a refusal"));
                }
                Err(e) => panic!("bad upgrade response ({e}): {buf:?}"),
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).expect("read handshake response");
            assert!(n > 0, "server closed during the handshake: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a JSON command and returns the next text message (its reply,
    /// when nothing else is on the way).
    pub fn command(&mut self, command: &serde_json::Value) -> serde_json::Value {
        self.send_text(&command.to_string());
        self.next_json()
    }

    /// Writes raw bytes (possibly a deliberately broken frame).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        self.send_raw(&client_frame(fin, opcode, payload));
    }

    /// Sends one text frame (on `/ws`: one JSON command).
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, OpCode::Text, text.as_bytes());
    }

    /// `subscribe` on `/ws` (with `since` if given); the `subscribed` reply
    /// must be the next message. Returns that reply (it has the `epoch`).
    pub fn subscribe(&mut self, topic: &str, since: Option<u64>) -> serde_json::Value {
        let since = since.map_or(String::new(), |s| format!(r#","since":{s}"#));
        self.send_text(&format!(
            r#"{{"op":"subscribe","topic":"{topic}"{since},"id":"s:{topic}"}}"#
        ));
        let r = self.next_json();
        assert!(
            r["op"] == "subscribed" && r["topic"] == topic && r["id"] == format!("s:{topic}"),
            "expected subscribed to {topic}, got {r}"
        );
        r
    }

    /// `publish` with an id on `/ws`; the `published` reply must be the
    /// next message. Returns its seq.
    pub fn publish(&mut self, topic: &str, data: &str) -> u64 {
        self.send_text(&format!(
            r#"{{"op":"publish","topic":"{topic}","data":{data},"id":"p:{topic}"}}"#
        ));
        let r = self.next_json();
        assert!(
            r["op"] == "published" && r["topic"] == topic && r["id"] == format!("p:{topic}"),
            "expected published on {topic}, got {r}"
        );
        r["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {r}"))
    }

    /// The next text message, parsed as JSON (control frames skipped).
    pub fn next_json(&mut self) -> serde_json::Value {
        loop {
            match self.read_frame() {
                Some((_, OpCode::Text, p)) => return serde_json::from_slice(&p).unwrap(),
                Some((_, OpCode::Close, p)) => panic!(
                    "close {:?} {:?} while waiting for a text message",
                    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]])),
                    String::from_utf8_lossy(p.get(2..).unwrap_or(&[]))
                ),
                Some(_) => continue,
                None => panic!("connection closed while waiting for a text message"),
            }
        }
    }

    /// Reads the next frame: (fin, opcode, payload). `None` if the server
    /// closed the TCP connection first.
    pub fn read_frame(&mut self) -> Option<(bool, OpCode, Vec<u8>)> {
        self.try_read_frame()
            .unwrap_or_else(|e| panic!("read failed: {e}"))
    }

    /// [`RawWs::read_frame`], but a failed read (such as the stream's read
    /// timeout running out) is returned instead of failing the test.
    pub fn try_read_frame(&mut self) -> std::io::Result<Option<(bool, OpCode, Vec<u8>)>> {
        loop {
            if let Some((h, n)) =
                FrameHeader::decode(&self.buf).expect("server sent a valid header")
            {
                assert!(h.mask.is_none(), "server frames must not be masked");
                let total = n + h.payload_len as usize;
                if self.buf.len() >= total {
                    let frame = self.buf.split_to(total);
                    return Ok(Some((h.fin, h.opcode, frame[n..].to_vec())));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads frames until a close frame; returns its code (None: no code)
    /// and reason. Panics if the TCP connection ends without one.
    pub fn expect_close(&mut self) -> (Option<u16>, String) {
        loop {
            match self.read_frame() {
                Some((_, OpCode::Close, p)) => {
                    let code = (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]));
                    let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
                    return (code, reason);
                }
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// After the close handshake: the server must end the TCP connection
    /// and send nothing more (RFC 6455 5.5.1: no data after a close).
    pub fn expect_eof(&mut self) {
        assert!(self.buf.is_empty(), "bytes after the close: {:?}", self.buf);
        let mut b = [0u8; 1024];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{n} bytes after the close: {:?}", &b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

/// One masked client frame.
pub fn client_frame(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(&mut out, fin, opcode, Some(rand_key()), payload);
    out.to_vec()
}

fn rand_key() -> [u8; 4] {
    let t = Instant::now().elapsed().as_nanos() as u32 ^ std::process::id();
    let x = t.wrapping_mul(0x9e37_79b9) | 1;
    x.to_be_bytes()
}

/// A TCP connection like [`tcp`] whose receive buffer is set to `rcvbuf`
/// bytes *before* connecting, so the window it advertises stays small: a
/// client that stops reading makes the server's queue grow quickly.
pub fn tcp_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("tcp_with_rcvbuf: IPv4 only, got {addr}")
    };
    // SAFETY: plain socket syscalls on a descriptor we own; it is handed to
    // `TcpStream` (which closes it) right after a successful connect and
    // closed by hand on every failure path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let size = rcvbuf as libc::c_int;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("setsockopt(SO_RCVBUF): {e}");
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            panic!("connect: {e}");
        }
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }
}

/// The resident set size of process `pid`, in bytes (`VmRSS` in
/// `/proc/PID/status`).
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/PID/status");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS value");
    kib * 1024
}

/// One HTTP response read by [`HttpConn`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names and values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (panics with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body_text()))
    }
}

/// A blocking HTTP/1.1 client connection that can send several requests
/// (keep-alive) and reads responses framed by `Content-Length`.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: tcp(addr),
            buf: Vec::new(),
        }
    }

    /// Writes raw request bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// `GET path`, keeping the connection alive; returns the response.
    pub fn get(&mut self, path: &str) -> HttpResponse {
        self.send_raw(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response().expect("a response")
    }

    /// `method path` with `extra` header lines (each ending in `\r\n`)
    /// and, for a `POST`, `body`; returns the response. `None`: the
    /// server closed the connection without answering.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        extra: &str,
        body: &[u8],
    ) -> Option<HttpResponse> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}");
        if method == "POST" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        self.send_raw(&req);
        self.read_response()
    }

    /// [`HttpConn::try_request`] that must be answered.
    pub fn request(&mut self, method: &str, path: &str, extra: &str, body: &[u8]) -> HttpResponse {
        self.try_request(method, path, extra, body)
            .unwrap_or_else(|| panic!("connection closed before the response to {method} {path}"))
    }

    /// Sends `POST path` with `Content-Length` without reading the
    /// response (to have many requests in flight at once).
    pub fn send_post(&mut self, path: &str, body: &[u8]) {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.send_raw(&req);
    }

    /// `POST path` with `Content-Length`, keeping the connection alive;
    /// returns the response.
    pub fn post(&mut self, path: &str, body: &[u8]) -> HttpResponse {
        self.send_post(path, body);
        self.read_response()
            .unwrap_or_else(|| panic!("connection closed before the response to POST {path}"))
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("HTTP read failed: {e}"),
        }
    }

    /// Reads one response. `None`: the server closed the connection before
    /// sending a byte of it.
    pub fn read_response(&mut self) -> Option<HttpResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header {l:?}"));
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("numeric Content-Length"))
            .unwrap_or_else(|| panic!("response without Content-Length: {head:?}"));
        while self.buf.len() < head_end + len {
            assert!(self.fill(), "connection closed inside a response body");
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Some(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// The server must end the connection (after any response already read).
    pub fn expect_eof(&mut self) {
        assert!(
            !self.fill(),
            "expected the server to close, got more bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// Sums every sample of metric `name` (across shards; a sample without
/// labels, like the cluster's, counts too) whose labels contain `label`
/// ("" for all), from `GET /metrics`.
pub fn metric_sum(addr: SocketAddr, name: &str, label: &str) -> i64 {
    let r = HttpConn::connect(addr).get("/metrics");
    assert_eq!(r.status, 200, "{}", r.body_text());
    metric_sum_in(&r.body_text(), name, label)
}

/// [`metric_sum`] over an already scraped text.
pub fn metric_sum_in(text: &str, name: &str, label: &str) -> i64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| (*k == name || k.starts_with(&format!("{name}{{"))) && k.contains(label))
        .map(|(_, v)| v.parse::<i64>().unwrap())
        .sum()
}

/// Waits until `f` holds, failing after [`IO_TIMEOUT`]: for state the
/// broker reaches asynchronously (a liveness bound, not a timing check).
pub fn wait_until(what: &str, f: impl Fn() -> bool) {
    let end = std::time::Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(std::time::Instant::now() < end, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A Server-Sent Events response read as it streams.
pub struct SseStream {
    pub stream: TcpStream,
    /// Everything received: the response head, then the events (bytes that
    /// are not UTF-8 as U+FFFD; see `raw`).
    pub text: String,
    /// The same, byte for byte.
    pub raw: Vec<u8>,
}

impl SseStream {
    /// Sends `GET path` with `extra` header lines (each ending in `\r\n`).
    pub fn open(addr: SocketAddr, path: &str, extra: &str) -> SseStream {
        let mut stream = tcp(addr);
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{extra}\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        SseStream {
            stream,
            text: String::new(),
            raw: Vec::new(),
        }
    }

    /// Reads until `done` holds for what arrived (failing if the stream
    /// ends first).
    pub fn read_until(&mut self, mut done: impl FnMut(&str) -> bool) {
        while !done(&self.text) {
            assert!(self.read_some(), "stream ended: {:?}", self.text);
        }
    }

    /// Reads until the server ends the stream.
    pub fn read_to_end(&mut self) {
        while self.read_some() {}
    }

    /// One read; false at the end of the stream.
    fn read_some(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.raw.extend_from_slice(&chunk[..n]);
                self.text = String::from_utf8_lossy(&self.raw).into_owned();
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("SSE read failed: {e}; so far {:?}", self.text),
        }
    }

    /// The response head (status line and headers).
    pub fn head(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(h, _)| h)
    }

    /// The events after the head: (event name, id, data JSON).
    pub fn events(&self) -> Vec<(String, Option<u64>, serde_json::Value)> {
        let body = self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.split("\n\n")
            .filter(|e| e.contains("data: "))
            .map(|e| {
                let mut name = "message".to_string();
                let (mut id, mut data) = (None, serde_json::Value::Null);
                for line in e.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.to_string();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).unwrap();
                    }
                }
                (name, id, data)
            })
            .collect()
    }
}

/// Runs `cmd` to completion, killing it after `limit`. On timeout the error
/// holds whatever it printed so far.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {cmd:?}: {e}"))?;
    // Drain both pipes on threads so a chatty child never blocks on them.
    let mut out_pipe = child.stdout.take().expect("piped");
    let mut err_pipe = child.stderr.take().expect("piped");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{cmd:?} did not finish within {limit:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

/// Writes `contents` to a file of its own in the temporary directory
/// (named after this process and `name`) and returns its path.
pub fn temp_file(name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringcast-e2e-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
