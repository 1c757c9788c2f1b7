//! `ringcast-loadgen`: drives a ringcast broker from the client side.
//!
//! It speaks WebSocket through the broker's own protocol library in client
//! role (masked frames, random keys, the server's accept key verified), so
//! it doubles as a second, independent-of-the-runtime user of that library.
//! This first version has one scenario, `echo`: N connections each send M
//! messages to `/echo` and verify every echo byte for byte. Later issues add
//! the pub/sub scenarios and the HTTP baselines.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::{Parser, Subcommand};
use ringcast::frame::OpCode;
use ringcast::handshake::ClientHandshake;
use ringcast::websocket::{Event, Limits, Role, WebSocket};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringcast-loadgen",
    version,
    about = "Load generator for ringcast"
)]
struct Cli {
    /// The broker's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    broker: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop echo round trips against `/echo`, every byte verified.
    Echo {
        /// Concurrent connections (one thread each).
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Messages per connection.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Messages in flight per connection.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
}

type Result<T> = std::result::Result<T, String>;

/// `http://host:port` → `host:port`.
fn authority(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| format!("--broker must be http://HOST:PORT, got {url:?}"))?;
    Ok(rest.trim_end_matches('/').to_string())
}

/// A blocking WebSocket client on the sans-I/O state machine.
struct Client {
    stream: TcpStream,
    ws: WebSocket,
    buf: BytesMut,
}

impl Client {
    fn connect(authority: &str, path: &str) -> Result<Client> {
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("no address for {authority}"))?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("broker unreachable at {addr}: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
        stream.set_nodelay(true).ok();
        let (hs, request) = ClientHandshake::new(authority, path, &[]);
        stream.write_all(&request).map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if let Some((n, _)) = hs
                .parse_response(&buf, 8192)
                .map_err(|e| format!("handshake: {e}"))?
            {
                let _ = buf.split_to(n);
                break;
            }
            read_into(&mut stream, &mut buf)?;
        }
        let ws = WebSocket::new(Role::Client, Limits::default());
        Ok(Client { stream, ws, buf })
    }

    fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        let frame = self.ws.encode_message(opcode, payload);
        self.stream
            .write_all(&frame)
            .map_err(|e| format!("write: {e}"))
    }

    /// The next data message (pings are answered on the way).
    fn recv(&mut self) -> Result<Event> {
        loop {
            let ev = self
                .ws
                .poll(&mut self.buf)
                .map_err(|e| format!("protocol: {e}"))?;
            if let Some(out) = self.ws.take_output() {
                self.stream.write_all(&out).map_err(|e| e.to_string())?;
            }
            match ev {
                Some(e @ (Event::Text(_) | Event::Binary(_) | Event::Close(_))) => return Ok(e),
                Some(_) => continue,
                None => read_into(&mut self.stream, &mut self.buf)?,
            }
        }
    }
}

fn read_into(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<()> {
    let mut chunk = [0u8; 64 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) => Err("broker closed the connection".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("read: {e}")),
    }
}

struct EchoReport {
    messages: usize,
    rtts: Vec<Duration>,
}

fn echo_conn(
    authority: &str,
    messages: usize,
    payload: usize,
    window: usize,
) -> Result<EchoReport> {
    let mut c = Client::connect(authority, "/echo")?;
    let mut sent_at = std::collections::VecDeque::with_capacity(window);
    let mut rtts = Vec::with_capacity(messages);
    let body: Vec<u8> = (0..payload).map(|i| b'a' + (i % 26) as u8).collect();
    let (mut sent, mut received) = (0, 0);
    while received < messages {
        while sent < messages && sent - received < window {
            c.send(OpCode::Binary, &body)?;
            sent_at.push_back(Instant::now());
            sent += 1;
        }
        match c.recv()? {
            Event::Binary(p) if p[..] == body[..] => {
                rtts.push(sent_at.pop_front().expect("in flight").elapsed());
                received += 1;
            }
            Event::Binary(_) => return Err("echo differs from what was sent".into()),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    c.ws.close(ringcast::close::CloseCode::NORMAL, "");
    if let Some(out) = c.ws.take_output() {
        let _ = c.stream.write_all(&out);
    }
    Ok(EchoReport { messages, rtts })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn run(cli: Cli) -> Result<()> {
    let authority = authority(&cli.broker)?;
    match cli.scenario {
        Scenario::Echo {
            conns,
            messages,
            payload,
            window,
        } => {
            let start = Instant::now();
            let handles: Vec<_> = (0..conns)
                .map(|_| {
                    let a = authority.clone();
                    std::thread::spawn(move || echo_conn(&a, messages, payload, window.max(1)))
                })
                .collect();
            let mut rtts = Vec::new();
            let mut total = 0;
            for h in handles {
                let r = h
                    .join()
                    .map_err(|_| "a client thread panicked".to_string())??;
                total += r.messages;
                rtts.extend(r.rtts);
            }
            let secs = start.elapsed().as_secs_f64();
            rtts.sort();
            println!("echo: {conns} conns x {messages} msgs x {payload} B, window {window}");
            println!(
                "  verified   {total} echoes in {secs:.2} s ({:.0} msg/s)",
                total as f64 / secs
            );
            println!(
                "  round trip p50 {:?}  p99 {:?}  max {:?}",
                percentile(&rtts, 0.50),
                percentile(&rtts, 0.99),
                rtts.last().copied().unwrap_or_default()
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringcast-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
