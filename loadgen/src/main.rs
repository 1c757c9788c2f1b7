//! `ringcast-loadgen`: drives a ringcast broker from the client side.
//!
//! It speaks the four transports the broker serves: WebSocket through the
//! broker's own protocol library in client role (masked frames, random
//! keys, the server's accept key verified), so it doubles as a second,
//! independent-of-the-runtime user of that library; and the HTTP baselines
//! (long-polling, short polling, Server-Sent Events). The client core is
//! tokio (the load generator need not be io_uring).
//!
//! Scenarios (`src/scenario/`):
//! - `fanout`: S subscribers over T topics, P publishers at a fixed total
//!   rate, open loop; delivery accounting from `seq` and latency from the
//!   scheduled send time.
//! - `conns`: N idle subscribed connections; handshake rate and the
//!   broker's memory per connection (RSS, and the kernel's for the
//!   broker's sockets).
//! - `compare`: `fanout` over each transport in turn, one table.
//! - `echo`: closed-loop round trips on `/echo`, every byte verified.
//!
//! Layout: `transport/` (how to reach the broker, and the byte counts),
//! `proto.rs` (the wire contract's JSON), `stats.rs` (histograms, seq
//! accounting), `sys.rs` (/proc, rusage, rlimit), `procs.rs` (the watched
//! processes: brokers, Redis), `sockmem.rs` (the kernel's memory for the
//! broker's sockets), `report/` (JSON, CSV and the human tables),
//! `plot.rs` (the SVG).
//!
//! It drives one broker or a cluster of them (`--broker` given several
//! times: subscribers round robin over the nodes, publishers on other
//! nodes), wherever they run.

mod plot;
mod procs;
mod proto;
mod report;
mod scenario;
mod sockmem;
mod stats;
mod sys;
mod transport;

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ringcast_core::units::parse_duration;
use serde::Serialize;

use report::compare::RunReport;
use scenario::Common;
use transport::{Endpoint, PublishVia, Transport};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "ringcast-loadgen",
    version,
    about = "Load generator for ringcast: one broker or a cluster, on this machine or across \
             a network"
)]
struct Cli {
    /// A broker's base URL (`http://HOST:PORT`, any host name or address;
    /// WebSocket on `/ws`). Give it once per node of a cluster: subscriber
    /// i connects to broker i mod N.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8080",
        global = true,
        value_name = "URL"
    )]
    broker: Vec<String>,
    /// Where publishers connect (repeatable; publisher p uses the p mod M
    /// -th). Default: publisher p uses --broker (p+1) mod N, a node other
    /// than subscriber p's when there are two or more.
    #[arg(long, global = true, value_name = "URL")]
    publish_broker: Vec<String>,
    /// Transport the subscribers use (`compare` runs each in turn).
    #[arg(long, value_enum, default_value_t = Transport::Ws, global = true)]
    transport: Transport,
    /// How publishers publish: `publish` commands on a WebSocket, or
    /// `POST /publish/{topic}` pipelined on keep-alive HTTP.
    #[arg(long, value_enum, default_value_t = PublishVia::Ws, global = true)]
    publish_via: PublishVia,
    /// Long-polling: how long the broker may hold each request (at most
    /// the broker's --max-poll-timeout).
    #[arg(long, value_parser = parse_duration, default_value = "25s", global = true)]
    poll_hold: Duration,
    /// Short polling: one request per subscriber per this interval.
    #[arg(long, value_parser = parse_duration, default_value = "100ms", global = true)]
    poll_interval: Duration,
    /// Print one JSON document on stdout instead of the table (`fanout`
    /// and `compare`: one entry per transport under `transports`).
    #[arg(long, global = true, conflicts_with = "csv")]
    json: bool,
    /// `fanout` and `compare`: print CSV (a header, one row per transport)
    /// instead of the table.
    #[arg(long, global = true)]
    csv: bool,
    /// `fanout` and `compare`: also write an SVG with latency percentile
    /// curves and bytes and CPU per delivered message, per transport.
    #[arg(long, global = true, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// A broker's process id (repeatable, one per node on this host):
    /// report its CPU (from /proc/PID/stat) and resident memory
    /// (/proc/PID/status) over the measured window.
    #[arg(long, global = true, value_name = "PID")]
    broker_pid: Vec<u32>,
    /// Another process to report the CPU of, e.g. `redis=1234`
    /// (repeatable); with the brokers it makes the cluster's CPU per
    /// delivery.
    #[arg(long, global = true, value_name = "NAME=PID", value_parser = procs::parse_named_pid)]
    pid: Vec<(String, u32)>,
    /// Local source addresses, comma-separated, used round robin (e.g.
    /// 127.0.0.2,127.0.0.3): each gives another ephemeral port range. Each
    /// must be an address of this machine; a loopback one reaches only
    /// loopback brokers.
    #[arg(long, value_delimiter = ',', global = true)]
    source_ips: Vec<IpAddr>,
    /// A credential (a JWT, or for HTTP publishes an API key) every
    /// connection presents: `?token=T` on the WebSocket upgrade, SSE and
    /// poll URLs, `Authorization: Bearer T` on `POST /publish`. For a
    /// broker run with `--auth jwt`.
    #[arg(long, global = true, value_name = "T")]
    token: Option<String>,
    /// Per connection: TCP connect plus WebSocket handshake.
    #[arg(long, value_parser = parse_duration, default_value = "10s", global = true)]
    connect_timeout: Duration,
    /// Connecting and subscribing every client, in total.
    #[arg(long, value_parser = parse_duration, default_value = "120s", global = true)]
    setup_timeout: Duration,
    /// Threads the load generator's connections are spread over, round
    /// robin, each a single-threaded runtime: `fanout`/`compare`
    /// subscribers on N threads and publishers on min(N, --publishers)
    /// threads of their own; `conns` connections on N threads, `echo`
    /// connections on min(N, --conns). Each thread's CPU is reported, and
    /// one near a full core makes the load generator the limit (the report
    /// says so); more threads let it use more cores. 1 to 64.
    #[arg(long, default_value_t = 1, global = true, value_name = "N")]
    threads: usize,
    /// Every WebSocket upgrade request (subscribers, publishers, `conns`,
    /// `echo`) carries N bytes of the headers a browser adds (a Chrome
    /// User-Agent, Accept-Encoding, Accept-Language, Cache-Control, Pragma
    /// and a Cookie filled to make exactly N), e.g. 1700 to measure the
    /// broker's memory per connection with browser-sized handshakes.
    /// 0 (default): only what RFC 6455 requires; else 318 (the headers
    /// with a one-character cookie value) to 65536.
    #[arg(long, default_value_t = 0, global = true, value_name = "N")]
    upgrade_header_bytes: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Pub/sub fan-out: subscribers over topics, open-loop publishers;
    /// delivery, loss and latency.
    Fanout(scenario::fanout::FanoutArgs),
    /// The same fan-out over each transport in turn (WebSocket,
    /// long-polling, short polling, SSE); one table.
    Compare(scenario::compare::CompareArgs),
    /// Many idle subscribed connections: handshake rate, broker memory
    /// per connection (RSS, and the kernel's for its sockets).
    Conns(scenario::conns::ConnsArgs),
    /// Closed-loop echo round trips against `/echo`, every byte verified.
    Echo(scenario::echo::EchoArgs),
}

fn emit<R: Serialize + std::fmt::Display>(json: bool, r: &R) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("reports serialise")
        );
    } else {
        println!("{r}");
    }
}

/// At most this many `--threads`.
const MAX_THREADS: usize = 64;

/// At most this many `--broker` (and, apart, `--publish-broker`) URLs.
const MAX_BROKERS: usize = 256;

/// Parses and resolves every URL of `flag`.
fn endpoints(flag: &str, urls: &[String]) -> Result<Vec<Endpoint>, String> {
    if urls.len() > MAX_BROKERS {
        return Err(format!(
            "at most {MAX_BROKERS} {flag} URLs, got {}",
            urls.len()
        ));
    }
    urls.iter().map(|u| Endpoint::parse(flag, u)).collect()
}

/// Every source address must be one of this machine's, and every broker
/// reachable from it (same address family; a loopback source reaches only
/// loopback addresses).
fn check_sources(sources: &[IpAddr], brokers: &[&Endpoint]) -> Result<(), String> {
    for &ip in sources {
        if let Err(e) = std::net::TcpListener::bind((ip, 0)) {
            return Err(format!(
                "--source-ips {ip}: cannot bind it ({e}); is it an address of this machine?"
            ));
        }
        if let Some(ep) = brokers
            .iter()
            .find(|ep| ep.reachable_from(Some(ip)).next().is_none())
        {
            return Err(format!(
                "--source-ips {ip} cannot reach {} ({}): {}",
                ep.url,
                ep.addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if ep.addrs.iter().all(|a| a.is_ipv4() != ip.is_ipv4()) {
                    "another address family"
                } else {
                    "a loopback source reaches loopback addresses only"
                }
            ));
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<bool, String> {
    // Zero would make a poller ask again at once, in a busy loop.
    for (flag, d) in [
        ("--poll-hold", cli.poll_hold),
        ("--poll-interval", cli.poll_interval),
    ] {
        if d < Duration::from_millis(1) || d > Duration::from_secs(3600) {
            return Err(format!("{flag} must be in [1ms, 1h], got {d:?}"));
        }
    }
    if !(1..=MAX_THREADS).contains(&cli.threads) {
        return Err(format!(
            "--threads must be in 1..={MAX_THREADS}, got {}",
            cli.threads
        ));
    }
    transport::browser::validate(cli.upgrade_header_bytes)?;
    if cli.token.as_deref() == Some("") {
        return Err("--token is empty".into());
    }
    let brokers = endpoints("--broker", &cli.broker)?;
    let publish_brokers = endpoints("--publish-broker", &cli.publish_broker)?;
    check_sources(
        &cli.source_ips,
        &brokers.iter().chain(&publish_brokers).collect::<Vec<_>>(),
    )?;
    let procs = procs::watched(&cli.broker_pid, &cli.pid)?;
    // A process that is not there fails the run now, not after setup.
    procs::sample(&procs)?;
    let common = Common {
        brokers,
        publish_brokers,
        transport: cli.transport,
        publish_via: cli.publish_via,
        poll_hold: cli.poll_hold,
        poll_interval: cli.poll_interval,
        source_ips: cli.source_ips,
        procs,
        connect_timeout: cli.connect_timeout,
        setup_timeout: cli.setup_timeout,
        json: cli.json,
        token: cli.token.map(Into::into),
        threads: cli.threads,
        upgrade_header_bytes: cli.upgrade_header_bytes,
    };
    if (cli.csv || cli.plot.is_some())
        && !matches!(cli.scenario, Scenario::Fanout(_) | Scenario::Compare(_))
    {
        return Err("--csv and --plot apply to `fanout` and `compare` only".into());
    }
    sys::raise_nofile();
    let out = Output {
        json: cli.json,
        csv: cli.csv,
        plot: cli.plot,
    };
    match cli.scenario {
        Scenario::Fanout(a) => {
            let r = scenario::fanout::run(&common, &a)?;
            let r = RunReport {
                scenario: "fanout",
                transports: vec![r],
                failed: Vec::new(),
            };
            out.emit(&r)?;
            Ok(r.perfect() || !a.require_perfect)
        }
        Scenario::Compare(a) => {
            let (transports, failed) = scenario::compare::run(&common, &a)?;
            let r = RunReport {
                scenario: "compare",
                transports,
                failed,
            };
            out.emit(&r)?;
            if let Some(f) = r.failed.first() {
                return Err(format!(
                    "{} of {} transports failed; first: {}: {}",
                    r.failed.len(),
                    a.transports.len(),
                    f.transport.name(),
                    f.error
                ));
            }
            Ok(r.perfect() || !a.fanout.require_perfect)
        }
        Scenario::Conns(a) => {
            let r = scenario::conns::run(&common, &a)?;
            emit(common.json, &r);
            Ok(true)
        }
        Scenario::Echo(a) => {
            let r = scenario::echo::run(&common, &a)?;
            emit(common.json, &r);
            Ok(true)
        }
    }
}

/// Where a fan-out report goes.
struct Output {
    json: bool,
    csv: bool,
    plot: Option<std::path::PathBuf>,
}

impl Output {
    fn emit(&self, r: &RunReport) -> Result<(), String> {
        if let Some(path) = &self.plot {
            plot::write_svg(path, r)?;
            eprintln!("ringcast-loadgen: plot written to {}", path.display());
        }
        if self.csv {
            print!("{}", r.csv());
        } else {
            emit(self.json, r);
        }
        Ok(())
    }
}

/// Exit status: 0 success; 1 the run failed (broker unreachable, closed a
/// connection mid-run, refused a command, bad flags); 3 (`fanout
/// --require-perfect`) the run completed but not every message was
/// delivered exactly once in order.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("ringcast-loadgen: error: {e}");
            // Worker threads may still hold connections; do not wait for them.
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn threads_is_global_and_still_parses_after_the_scenario() {
        for args in [
            &["ringcast-loadgen", "fanout", "--threads", "2"][..],
            &["ringcast-loadgen", "--threads", "2", "fanout"],
            &["ringcast-loadgen", "compare", "--threads", "2"],
            &["ringcast-loadgen", "conns", "--threads", "2"],
            &["ringcast-loadgen", "echo", "--threads", "2"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.threads, 2, "{args:?}");
        }
        let cli = Cli::try_parse_from(["ringcast-loadgen", "echo"]).unwrap();
        assert_eq!(cli.threads, 1);
    }
}
