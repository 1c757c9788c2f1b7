//! A real `redis-server` for the cluster-mode end-to-end tests: started on
//! a free loopback port in a temporary directory of its own, killed,
//! stopped, paused and restarted on demand, and a tiny blocking RESP2
//! client to look inside it. Nothing here talks to anything but 127.0.0.1.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::IO_TIMEOUT;

/// How long a start (or restart) may take before it panics with the log.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports [`RedisServer::start_with`] tries when the one it
/// picked was taken before the server could bind it.
const PORT_ATTEMPTS: usize = 5;

/// The `redis-server` binary (`REDIS_SERVER` overrides; else the first on
/// `PATH`, else Debian's `/usr/bin/redis-server`).
pub fn redis_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/usr/bin/redis-server"))
}

/// A reply in RESP2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (a reply, not an I/O failure).
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nabc`; `None` for the nil bulk `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...`; `None` for the nil array `*-1`.
    Array(Option<Vec<RespValue>>),
}

impl RespValue {
    /// The text of a simple string, or of a bulk string that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RespValue::Simple(s) => Some(s),
            RespValue::Bulk(Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// An integer reply, or a string reply that holds one (`GET` of a
    /// counter, `XLEN` is already an integer).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RespValue::Int(i) => Some(*i),
            other => other.as_str().and_then(|s| s.parse().ok()),
        }
    }

    /// The elements of a (non-nil) array.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(Some(items)) => Some(items),
            _ => None,
        }
    }

    /// The bytes of a (non-nil) bulk string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    /// A nil bulk string or nil array (`GET` of a missing key).
    pub fn is_nil(&self) -> bool {
        matches!(self, RespValue::Bulk(None) | RespValue::Array(None))
    }

    /// The message of an error reply.
    pub fn as_error(&self) -> Option<&str> {
        match self {
            RespValue::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// A blocking RESP2 connection with read and write timeouts: commands in,
/// replies out, in order (also usable for pushed `SUBSCRIBE` messages via
/// [`RespConn::read`]).
pub struct RespConn {
    reader: BufReader<TcpStream>,
}

impl RespConn {
    /// Connects to `127.0.0.1:port`; every connect, read and write gives up
    /// after `timeout` (`ErrorKind::WouldBlock` or `TimedOut`).
    pub fn connect(port: u16, timeout: Duration) -> io::Result<RespConn> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RespConn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command (an array of bulk strings) without reading.
    pub fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out)
    }

    /// Reads one reply.
    pub fn read(&mut self) -> io::Result<RespValue> {
        read_value(&mut self.reader)
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&str]) -> io::Result<RespValue> {
        self.send(args)?;
        self.read()
    }
}

fn bad_data(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One CRLF-terminated line, without the CRLF.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("RESP line cut off: {:?}", String::from_utf8_lossy(&line)),
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|e| bad_data(format!("RESP line not UTF-8: {e}")))
}

fn read_value(r: &mut impl BufRead) -> io::Result<RespValue> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
    let len = || -> io::Result<i64> {
        rest.parse()
            .map_err(|_| bad_data(format!("bad RESP length in {line:?}")))
    };
    match kind {
        "+" => Ok(RespValue::Simple(rest.to_string())),
        "-" => Ok(RespValue::Error(rest.to_string())),
        ":" => len().map(RespValue::Int),
        "$" => match len()? {
            n if n < 0 => Ok(RespValue::Bulk(None)),
            n => {
                let mut body = vec![0; n as usize + 2];
                r.read_exact(&mut body)?;
                if !body.ends_with(b"\r\n") {
                    return Err(bad_data("bulk string without its CRLF".into()));
                }
                body.truncate(n as usize);
                Ok(RespValue::Bulk(Some(body)))
            }
        },
        "*" => match len()? {
            n if n < 0 => Ok(RespValue::Array(None)),
            n => (0..n)
                .map(|_| read_value(r))
                .collect::<io::Result<Vec<_>>>()
                .map(|items| RespValue::Array(Some(items))),
        },
        _ => Err(bad_data(format!("not a RESP2 reply: {line:?}"))),
    }
}

/// A fresh directory under the temporary directory, unique to this call.
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "ringcast-redis-{}-{n}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create {}: {e}", dir.display()),
        }
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// Why a start attempt failed.
enum StartError {
    /// The port was taken: try again (another port, or later).
    PortTaken(String),
    Other(String),
}

/// A `redis-server` process of the test's own, on `127.0.0.1:port()`, in
/// a temporary directory (its `--dir`, its log `redis.log`). Dropping it
/// kills the process (paused or not) and removes the directory.
pub struct RedisServer {
    child: Option<Child>,
    pid: i32,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    paused: bool,
}

impl RedisServer {
    /// A server without persistence (`--save '' --appendonly no`).
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    /// A server with `extra` arguments after the defaults, which they
    /// override (e.g. `["--appendonly", "yes", "--appendfsync", "always"]`).
    /// Waits until it answers `PING`; panics with its log if that takes
    /// longer than [`START_TIMEOUT`].
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            pid: 0,
            port: 0,
            dir: fresh_dir(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            paused: false,
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait(Instant::now() + START_TIMEOUT) {
                Ok(()) => return server,
                Err(StartError::PortTaken(why)) => last = why,
                Err(StartError::Other(why)) => panic!("redis-server did not start: {why}"),
            }
        }
        panic!("redis-server found no free port in {PORT_ATTEMPTS} attempts: {last}");
    }

    /// Starts the process again, on the same port with the same directory
    /// and arguments, after [`kill`](Self::kill) or [`stop`](Self::stop)
    /// (with AOF or RDB it loads what it had written). Waits until it
    /// answers `PING` (retrying while the port is still taken), at most
    /// [`START_TIMEOUT`].
    pub fn restart(&mut self) {
        assert!(
            !self.is_running(),
            "restart() of a running redis-server: kill() or stop() it first"
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait(deadline) {
                Ok(()) => return,
                // Still held (by a client's socket, say): wait it out.
                Err(StartError::PortTaken(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(StartError::PortTaken(why) | StartError::Other(why)) => {
                    panic!("redis-server did not restart on port {}: {why}", self.port)
                }
            }
        }
    }

    /// Spawns `redis-server` on `self.port` and waits for its `PONG`.
    fn spawn_and_wait(&mut self, deadline: Instant) -> Result<(), StartError> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path().display()));
        let port = self.port.to_string();
        let dir = self.dir.to_str().expect("UTF-8 temp dir").to_string();
        let mut cmd = Command::new(redis_server_binary());
        cmd.args(["--bind", "127.0.0.1", "--port", &port, "--dir", &dir])
            // Everything (config errors included) goes to redis.log.
            .args(["--logfile", "", "--daemonize", "no", "--loglevel", "notice"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            // A group of its own, so that signals reach any child it forks
            // (an AOF rewrite, a BGSAVE) and nothing else.
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            StartError::Other(format!(
                "could not run {} (apt-get install redis-server): {e}",
                redis_server_binary().display()
            ))
        })?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        self.paused = false;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let why = format!("redis-server exited with {status}\n{}", self.log_tail());
                let taken = why.contains("Address already in use")
                    || why.contains("Failed listening on port");
                return Err(if taken {
                    StartError::PortTaken(why)
                } else {
                    StartError::Other(why)
                });
            }
            // PONG alone could come from whoever else holds the port: the
            // answer must come from our process.
            if self.answering_pid() == Some(self.pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(StartError::Other(format!(
                    "redis-server did not answer PING on port {} within {START_TIMEOUT:?}\n{}",
                    self.port,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `process_id` of whatever answers `PING` with `PONG` on the port.
    fn answering_pid(&self) -> Option<i32> {
        let mut c = RespConn::connect(self.port, Duration::from_millis(500)).ok()?;
        if c.cmd(&["PING"]).ok()?.as_str() != Some("PONG") {
            return None; // e.g. -LOADING while it reads its AOF
        }
        let info = c.cmd(&["INFO", "server"]).ok()?;
        info.as_str()?
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id of the current (or last) process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its `--dir` (the AOF and RDB files, and `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the process was started and has not been killed or stopped
    /// (a paused one is running).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Everything it logged, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last 40 lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- redis.log ({}) ---\n{tail}", self.log_path().display())
    }

    /// Signals the process group (a no-op once the process is reaped, so
    /// that a reused pid is never signalled).
    fn signal(&self, sig: i32) {
        if self.child.is_some() {
            // SAFETY: plain syscall on our own child's process group, whose
            // leader is not reaped yet (so the id is still ours).
            unsafe {
                libc::kill(-self.pid, sig);
            }
        }
    }

    /// SIGKILL (a crash: nothing flushed beyond what `appendfsync` did),
    /// then waits for the process. Paused or not.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `signal`; the leader is not reaped yet.
            unsafe {
                libc::kill(-self.pid, libc::SIGKILL);
            }
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// A clean shutdown: SIGTERM (resuming it first if paused), which
    /// saves only what its arguments ask for (none by default; the AOF is
    /// flushed when it is on), then waits for the process, at most
    /// [`START_TIMEOUT`] (then it is killed and this panics).
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.resume();
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + START_TIMEOUT;
        while let Some(child) = self.child.as_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "redis-server ignored SIGTERM for {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the port still accepts connections (the kernel completes
    /// the handshake) but nothing is answered until [`resume`](Self::resume).
    /// Returns once the process is stopped.
    pub fn pause(&mut self) {
        assert!(self.is_running(), "pause() of a redis-server not running");
        self.signal(libc::SIGSTOP);
        self.paused = true;
        let stat = format!("/proc/{}/stat", self.pid);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state is the field after the parenthesised command name.
            let state = state.rsplit_once(") ").map(|(_, s)| s.chars().next());
            if matches!(state, Some(Some('T' | 't'))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server {} never stopped after SIGSTOP",
                self.pid
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`pause`](Self::pause) (a no-op otherwise).
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }

    /// A new connection with [`IO_TIMEOUT`] (panics with the log if it
    /// cannot connect).
    pub fn connect(&self) -> RespConn {
        RespConn::connect(self.port, IO_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "connect to redis on port {}: {e}\n{}",
                self.port,
                self.log_tail()
            )
        })
    }

    /// One command on a connection of its own, each step bounded by
    /// `timeout`. `Err`: it could not connect, or no reply came in time.
    pub fn try_cmd(&self, args: &[&str], timeout: Duration) -> io::Result<RespValue> {
        RespConn::connect(self.port, timeout)?.cmd(args)
    }

    /// One command on a connection of its own, with [`IO_TIMEOUT`]; panics
    /// with the log if no reply comes (an error reply is returned as
    /// [`RespValue::Error`]).
    pub fn cmd(&self, args: &[&str]) -> RespValue {
        self.try_cmd(args, IO_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "redis {args:?} on port {} failed: {e}\n{}",
                self.port,
                self.log_tail()
            )
        })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; resuming first only keeps the
        // order of events plain for anything else in its group.
        self.resume();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
