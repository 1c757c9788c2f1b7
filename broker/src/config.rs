//! Broker configuration: every limit and timeout, with the defaults the
//! binary runs with when given no flags.
//!
//! Sizes accept `4096`, `64KiB`, `16MiB`; durations accept `250ms`, `10s`,
//! `2m` (a bare number is seconds).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use ringcast_core::topic::HistoryLimits;
use std::path::PathBuf;

pub use crate::auth::AuthMode;
use ringcast_proto::http::HeadLimits;
use ringcast_proto::websocket::Limits;

pub use ringcast_core::units::{parse_duration, parse_size};

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The slow-consumer policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumer {
    Disconnect,
    Conflate,
}

/// Which runtime drives the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// ringcast's own completion loop on the `io-uring` crate (the only
    /// one since `tokio-uring` was removed; the flag stays so that scripts
    /// that name it keep working).
    Uring,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Uring => "uring",
        }
    }
}

/// `ringcast` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringcast",
    version,
    about = "Sharded io_uring WebSocket push broker"
)]
pub struct Config {
    /// Address to listen on (one SO_REUSEPORT listener per shard). Port 0
    /// picks a free port; the chosen address is printed at start-up.
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Number of shards (threads, each with its own io_uring). Default: one
    /// per available core.
    #[arg(long, env = "RINGCAST_SHARDS", default_value_t = default_shards())]
    pub shards: usize,

    /// The shards' runtime: `uring`, ringcast's own completion loop (the
    /// only one; `tokio-uring` was removed).
    #[arg(long, env = "RINGCAST_RUNTIME", value_enum, default_value_t = Runtime::Uring)]
    pub runtime: Runtime,

    /// Pin shard N to core N (mod the number of cores).
    #[arg(long, env = "RINGCAST_PIN_CORES")]
    pub pin_cores: bool,

    /// Connections per shard; past it new connections get `503`.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub max_connections: usize,

    /// Time a client has to complete its HTTP request head (slowloris guard).
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,

    /// Send a ping after this long without hearing from a WebSocket client.
    #[arg(long, env = "RINGCAST_PING_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub ping_interval: Duration,

    /// Drop a WebSocket client that sent nothing (not even a pong) for this long.
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "75s")]
    pub idle_timeout: Duration,

    /// After our close frame (or an HTTP error), how long to wait for the
    /// peer's close before dropping the TCP connection.
    #[arg(long, env = "RINGCAST_CLOSE_TIMEOUT", value_parser = parse_duration, default_value = "2s")]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, how long to wait for clients to finish closing.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "5s")]
    pub shutdown_grace: Duration,

    /// Largest accepted frame payload; above it, close 1009.
    #[arg(long, env = "RINGCAST_MAX_FRAME_SIZE", value_parser = parse_size, default_value = "16MiB")]
    pub max_frame_size: usize,

    /// Largest accepted message (all fragments); above it, close 1009.
    #[arg(long, env = "RINGCAST_MAX_MESSAGE_SIZE", value_parser = parse_size, default_value = "16MiB")]
    pub max_message_size: usize,

    /// Largest HTTP request head; above it, `431`.
    #[arg(long, env = "RINGCAST_MAX_HEAD_SIZE", value_parser = parse_size, default_value = "8KiB")]
    pub max_head_size: usize,

    /// Most header lines in an HTTP request; above it, `431`.
    #[arg(long, env = "RINGCAST_MAX_HEADERS", default_value_t = 32)]
    pub max_headers: usize,

    /// Bytes queued for one connection's socket before its producer waits
    /// (echo) or the slow-consumer policy applies (pub/sub).
    #[arg(long, env = "RINGCAST_OUTBOX_SIZE", value_parser = parse_size, default_value = "1MiB")]
    pub outbox_size: usize,

    /// Size of each buffer of a shard's receive buffer ring: the most one
    /// read delivers. Idle connections hold none.
    #[arg(long, env = "RINGCAST_READ_BUFFER", value_parser = parse_size, default_value = "4KiB")]
    pub read_buffer: usize,

    /// Buffers in each shard's receive buffer ring (a power of two, at
    /// most 32768): reads in flight at once across the shard's
    /// connections. The ring's memory (this × --read-buffer) is touched as
    /// soon as that many reads have arrived in one turn and stays
    /// resident; a turn that needs more re-arms the rest after it (no
    /// data lost, a little latency).
    #[arg(long, env = "RINGCAST_RECV_BUFFERS", default_value_t = 256)]
    pub recv_buffers: u16,

    /// Retained messages per topic, for `since` resume and polling.
    #[arg(long, env = "RINGCAST_HISTORY_MESSAGES", default_value_t = 100)]
    pub history_messages: usize,

    /// Retained bytes per topic (encoded frames).
    #[arg(long, env = "RINGCAST_HISTORY_BYTES", value_parser = parse_size, default_value = "256KiB")]
    pub history_bytes: usize,

    /// Retained messages older than this are dropped (a resume from
    /// before them gets a `gap`); `0` keeps them while the other bounds
    /// allow.
    #[arg(long, env = "RINGCAST_HISTORY_TTL", value_parser = parse_duration, default_value = "1h")]
    pub history_ttl: Duration,

    /// Retained bytes per shard across all its topics; past it the topic
    /// published to longest ago loses its history first.
    #[arg(long, env = "RINGCAST_HISTORY_BUDGET", value_parser = parse_size, default_value = "256MiB")]
    pub history_budget: usize,

    /// Topics a shard owns at most (each keeps its seq and history);
    /// publishing to a new topic past it is refused with `limit`.
    #[arg(long, env = "RINGCAST_MAX_TOPICS", default_value_t = 100_000)]
    pub max_topics: usize,

    /// Subscriptions one connection may hold.
    #[arg(long, env = "RINGCAST_MAX_SUBSCRIPTIONS", default_value_t = 1_000)]
    pub max_subscriptions: usize,

    /// Publishes with an `id` one WebSocket may have waiting for their
    /// `published` reply; past it, its next command waits.
    #[arg(long, env = "RINGCAST_MAX_PENDING_PUBLISHES", default_value_t = 256)]
    pub max_pending_publishes: usize,

    /// How deeply a published `data` may nest arrays and objects (`[[1]]`
    /// is 2); deeper is refused (`bad_json`, HTTP 400), so that no
    /// subscriber's JSON parser is the one to overflow.
    #[arg(long, env = "RINGCAST_MAX_JSON_DEPTH", default_value_t = 64)]
    pub max_json_depth: usize,

    /// Messages queued for one shard from the others; past it publishes and
    /// subscribes routed to that shard are refused with `overloaded` (HTTP
    /// 503 with Retry-After).
    #[arg(long, env = "RINGCAST_MESH_QUEUE", default_value_t = 65_536)]
    pub mesh_queue: usize,

    /// Join a cluster: every node started with the same Redis (and the
    /// same `--redis-prefix`) shares topics, seqs, history and resume.
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`, or `rediss://` for TLS.
    /// Without it this node is alone (history in memory).
    #[arg(long, env = "RINGCAST_REDIS", value_name = "URL")]
    pub redis: Option<String>,

    /// The prefix of every Redis key and channel, so that several clusters
    /// can share one Redis.
    #[arg(long, env = "RINGCAST_REDIS_PREFIX", default_value = "ringcast")]
    pub redis_prefix: String,

    /// How long a Redis command may take; past it a publish gets
    /// `unavailable` (HTTP 503) and the node counts Redis as down until it
    /// answers again.
    #[arg(long, env = "RINGCAST_REDIS_TIMEOUT", value_parser = parse_duration, default_value = "1s")]
    pub redis_timeout: Duration,

    /// How often the position of every topic this node watches is checked
    /// against Redis: repairs what a subscription that went deaf missed.
    #[arg(long, env = "RINGCAST_REDIS_CHECK_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub redis_check_interval: Duration,

    /// Time a WebSocket message may take to arrive once its first byte
    /// did; past it, close 1008 (a trickled message must not pin its
    /// buffer for ever).
    #[arg(long, env = "RINGCAST_MESSAGE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub message_timeout: Duration,

    /// What happens to a subscriber whose outbox is full: `disconnect`
    /// (close 1008 "slow consumer"; it resumes with `since`) or `conflate`
    /// (per topic only the newest pending message is kept, and the client
    /// gets a `skipped` notice for the rest).
    #[arg(long, env = "RINGCAST_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumer::Disconnect)]
    pub slow_consumer: SlowConsumer,

    /// Long-poll requests a shard holds at once; past it, `503`.
    #[arg(long, env = "RINGCAST_MAX_POLLS", default_value_t = 10_000)]
    pub max_polls: usize,

    /// Longest `timeout_ms` a long-poll may ask for (default when absent:
    /// 30 s or this, whichever is shorter).
    #[arg(long, env = "RINGCAST_MAX_POLL_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub max_poll_timeout: Duration,

    /// Allowed `Origin` values, comma-separated. Empty: any origin.
    #[arg(long, env = "RINGCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Subprotocols the server accepts, in preference order, comma-separated.
    #[arg(long, env = "RINGCAST_SUBPROTOCOLS", value_delimiter = ',')]
    pub subprotocols: Vec<String>,

    /// Access control: `none` (anyone may subscribe and publish) or `jwt`
    /// (clients present a token; see docs/security.md). Default: `none`
    /// when listening on loopback; on any other address the broker will
    /// not start open unless `--auth none` is given.
    #[arg(long, env = "RINGCAST_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// `--auth jwt` with HS256: a file holding the shared secret (at least
    /// 32 bytes; a trailing newline is stripped).
    #[arg(long, env = "RINGCAST_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// `--auth jwt` with RS256, ES256 or EdDSA: a PEM public key file; the
    /// key's type pins the algorithm.
    #[arg(long, env = "RINGCAST_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Required `iss` of tokens (not checked when unset).
    #[arg(long, env = "RINGCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of tokens (not checked when unset).
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    #[arg(long, env = "RINGCAST_JWT_LEEWAY", value_parser = parse_duration, default_value = "5s")]
    pub jwt_leeway: Duration,

    /// How long before a connection's token expires the broker sends it
    /// `{"op":"expiring",...}` (time to `refresh`).
    #[arg(long, env = "RINGCAST_TOKEN_EXPIRY_NOTICE", value_parser = parse_duration, default_value = "30s")]
    pub token_expiry_notice: Duration,

    /// Topic patterns clients without a token may subscribe to under
    /// `--auth jwt`, comma-separated (`demo.>,public.*`).
    #[arg(long, env = "RINGCAST_ANONYMOUS_SUBSCRIBE", value_delimiter = ',')]
    pub anonymous_subscribe: Vec<String>,

    /// API keys for `POST /publish`: one per line, `NAME KEY [PATTERNS]`;
    /// reloaded on SIGHUP.
    #[arg(long, env = "RINGCAST_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Commands per second one WebSocket may send (0: no limit); past it
    /// `rate_limited`, and close 4429 if it goes on.
    #[arg(long, env = "RINGCAST_MAX_COMMAND_RATE", default_value_t = 0)]
    pub max_command_rate: u32,

    /// Commands a WebSocket may send at once before the rate applies.
    #[arg(long, env = "RINGCAST_COMMAND_BURST", default_value_t = 100)]
    pub command_burst: u32,

    /// Publishes per second per token `sub` or API key, per shard (0: no
    /// limit); past it `rate_limited` (HTTP 429 with Retry-After).
    #[arg(long, env = "RINGCAST_MAX_PUBLISH_RATE", default_value_t = 0)]
    pub max_publish_rate: u32,

    /// Publishes a `sub` or key may make at once before the rate applies.
    #[arg(long, env = "RINGCAST_PUBLISH_BURST", default_value_t = 100)]
    pub publish_burst: u32,

    /// Open connections per client IP, across all shards (0: no limit);
    /// past it `503` with Retry-After.
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// New connections per second per client IP, across all shards (0: no
    /// limit); past it `503` with Retry-After.
    #[arg(long, env = "RINGCAST_MAX_CONNECTION_RATE_PER_IP", default_value_t = 0)]
    pub max_connection_rate_per_ip: u32,

    /// Proxies (addresses or CIDR blocks, comma-separated) whose
    /// `X-Forwarded-For` / `Forwarded` header names the client IP; from
    /// anyone else those headers are ignored.
    #[arg(long, env = "RINGCAST_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Run the built-in demo feeder: simulated stock ticks on `demo.ticker`
    /// and train seat counts on `demo.seats`, for the live page at `/`.
    #[arg(long, env = "RINGCAST_DEMO")]
    pub demo: bool,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info`, `ringcast=debug`.
    #[arg(long, env = "RINGCAST_LOG", default_value = "info")]
    pub log: String,

    /// A TOML file with any of the options above (`listen = "0.0.0.0:80"`,
    /// `max-frame-size = "1MiB"`, `pin-cores = true`, ...). Precedence:
    /// command-line flag, then `RINGCAST_*` variable, then this file, then
    /// the default.
    #[arg(long, env = "RINGCAST_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// Print the effective configuration (as a config file) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// From the command line or the environment (including `--help`,
    /// which clap reports this way).
    Args(clap::Error),
    /// From the config file, naming the file and the key.
    File(String),
}

/// Options that make no sense in a config file.
const NOT_IN_FILE: [&str; 4] = ["config", "print-config", "help", "version"];

/// The flag's environment variable (`max-frame-size` → `RINGCAST_MAX_FRAME_SIZE`).
fn env_name(key: &str) -> String {
    format!("RINGCAST_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// Where `--config` points, from the arguments or `RINGCAST_CONFIG`.
fn config_path(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
    }
    std::env::var("RINGCAST_CONFIG").ok()
}

/// Turns a TOML file into `--key=value` arguments for the keys that neither
/// the command line nor the environment set.
fn file_args(path: &str, args: &[String]) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("config file {path}: {e}"))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("config file {path}: {e}"))?;
    let command = <Config as clap::CommandFactory>::command();
    let mut out = Vec::new();
    for (raw_key, value) in table {
        let key = raw_key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| format!("config file {path}: unknown key `{raw_key}`"))?;
        let flag = format!("--{key}");
        let on_command_line = args
            .iter()
            .any(|a| a == &flag || a.starts_with(&format!("{flag}=")));
        if on_command_line || std::env::var_os(env_name(&key)).is_some() {
            continue;
        }
        let is_switch = matches!(arg.get_action(), clap::ArgAction::SetTrue);
        let bad = |what: &str| format!("config file {path}: key `{raw_key}`: expected {what}");
        match value {
            toml::Value::Boolean(b) if is_switch => {
                if b {
                    out.push(flag);
                }
            }
            _ if is_switch => return Err(bad("true or false")),
            toml::Value::String(v) => out.push(format!("{flag}={v}")),
            toml::Value::Integer(v) => out.push(format!("{flag}={v}")),
            toml::Value::Array(items) => {
                let items: Result<Vec<String>, String> = items
                    .into_iter()
                    .map(|i| match i {
                        toml::Value::String(s) => Ok(s),
                        _ => Err(bad("an array of strings")),
                    })
                    .collect();
                let items = items?;
                if !items.is_empty() {
                    out.push(format!("{flag}={}", items.join(",")));
                }
            }
            _ => return Err(bad("a string or an integer")),
        }
    }
    Ok(out)
}

impl Config {
    /// Loads the configuration from the process's arguments, environment
    /// and `--config` file.
    pub fn load() -> Result<Config, LoadError> {
        Self::load_from(std::env::args().collect())
    }

    /// [`Config::load`] with explicit arguments (`args[0]` is the program).
    pub fn load_from(args: Vec<String>) -> Result<Config, LoadError> {
        let mut full = args.clone();
        let mut from_file = Vec::new();
        let path = config_path(&args);
        if let Some(path) = &path {
            from_file = file_args(path, &args).map_err(LoadError::File)?;
            // Inserted right after the program name: flags given on the
            // command line are not in `from_file`, so nothing overrides them.
            full.splice(1..1, from_file.iter().cloned());
        }
        let parsed = Config::try_parse_from(full).map(|mut c| {
            // `--allowed-origins=` (or an empty variable) means "none".
            c.allowed_origins.retain(|s| !s.is_empty());
            c.subprotocols.retain(|s| !s.is_empty());
            c.anonymous_subscribe.retain(|s| !s.is_empty());
            c.trusted_proxies.retain(|s| !s.is_empty());
            c
        });
        parsed.map_err(|e| {
            // Name the file when the bad value came from it.
            let failing = e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|v| v.to_string());
            match (&path, failing) {
                (Some(path), Some(arg)) => {
                    let long = arg.split_whitespace().next().unwrap_or("").to_string();
                    if from_file
                        .iter()
                        .any(|a| a == &long || a.starts_with(&format!("{long}=")))
                    {
                        let key = long.trim_start_matches("--");
                        let msg = e.to_string();
                        let msg = msg.trim_start_matches("error: ").trim();
                        return LoadError::File(format!("config file {path}: key `{key}`: {msg}"));
                    }
                    LoadError::Args(e)
                }
                _ => LoadError::Args(e),
            }
        })
    }

    /// The effective configuration as a config file `--config` accepts.
    pub fn to_toml(&self) -> String {
        let d = |d: Duration| {
            if d.subsec_millis() == 0 && !d.is_zero() {
                format!("\"{}s\"", d.as_secs())
            } else {
                format!("\"{}ms\"", d.as_millis())
            }
        };
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let slow = match self.slow_consumer {
            SlowConsumer::Disconnect => "disconnect",
            SlowConsumer::Conflate => "conflate",
        };
        [
            format!("listen = \"{}\"", self.listen),
            format!("shards = {}", self.shards),
            format!("runtime = \"{}\"", self.runtime.as_str()),
            format!("pin-cores = {}", self.pin_cores),
            format!("max-connections = {}", self.max_connections),
            format!("handshake-timeout = {}", d(self.handshake_timeout)),
            format!("ping-interval = {}", d(self.ping_interval)),
            format!("idle-timeout = {}", d(self.idle_timeout)),
            format!("close-timeout = {}", d(self.close_timeout)),
            format!("shutdown-grace = {}", d(self.shutdown_grace)),
            format!("max-frame-size = {}", self.max_frame_size),
            format!("max-message-size = {}", self.max_message_size),
            format!("max-head-size = {}", self.max_head_size),
            format!("max-headers = {}", self.max_headers),
            format!("outbox-size = {}", self.outbox_size),
            format!("read-buffer = {}", self.read_buffer),
            format!("recv-buffers = {}", self.recv_buffers),
            format!("history-messages = {}", self.history_messages),
            format!("history-bytes = {}", self.history_bytes),
            format!("history-ttl = {}", d(self.history_ttl)),
            format!("history-budget = {}", self.history_budget),
            format!("max-topics = {}", self.max_topics),
            format!("max-subscriptions = {}", self.max_subscriptions),
            format!("max-pending-publishes = {}", self.max_pending_publishes),
            format!("max-json-depth = {}", self.max_json_depth),
            format!("mesh-queue = {}", self.mesh_queue),
            opt_str("redis", &self.redis.as_deref().map(redact_url)),
            format!("redis-prefix = {:?}", self.redis_prefix),
            format!("redis-timeout = {}", d(self.redis_timeout)),
            format!("redis-check-interval = {}", d(self.redis_check_interval)),
            format!("message-timeout = {}", d(self.message_timeout)),
            format!("slow-consumer = \"{slow}\""),
            format!("max-polls = {}", self.max_polls),
            format!("max-poll-timeout = {}", d(self.max_poll_timeout)),
            format!("allowed-origins = {}", list(&self.allowed_origins)),
            format!("subprotocols = {}", list(&self.subprotocols)),
            match self.auth {
                Some(AuthMode::None) => "auth = \"none\"".to_string(),
                Some(AuthMode::Jwt) => "auth = \"jwt\"".to_string(),
                None => format!(
                    "# auth = \"{}\" (the default here)",
                    self.auth_mode().as_str()
                ),
            },
            opt_path("jwt-secret-file", &self.jwt_secret_file),
            opt_path("jwt-public-key-file", &self.jwt_public_key_file),
            opt_str("jwt-issuer", &self.jwt_issuer),
            opt_str("jwt-audience", &self.jwt_audience),
            format!("jwt-leeway = {}", d(self.jwt_leeway)),
            format!("token-expiry-notice = {}", d(self.token_expiry_notice)),
            format!("anonymous-subscribe = {}", list(&self.anonymous_subscribe)),
            opt_path("api-keys-file", &self.api_keys_file),
            format!("max-command-rate = {}", self.max_command_rate),
            format!("command-burst = {}", self.command_burst),
            format!("max-publish-rate = {}", self.max_publish_rate),
            format!("publish-burst = {}", self.publish_burst),
            format!("max-connections-per-ip = {}", self.max_connections_per_ip),
            format!(
                "max-connection-rate-per-ip = {}",
                self.max_connection_rate_per_ip
            ),
            format!("trusted-proxies = {}", list(&self.trusted_proxies)),
            format!("demo = {}", self.demo),
            format!("log = {:?}", self.log),
        ]
        .join("\n")
            + "\n"
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["ringcast"])
    }
}

impl Config {
    /// Rejects combinations that cannot work, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("--shards", self.shards),
            ("--max-connections", self.max_connections),
            ("--max-frame-size", self.max_frame_size),
            ("--max-message-size", self.max_message_size),
            ("--max-headers", self.max_headers),
            ("--outbox-size", self.outbox_size),
            ("--max-topics", self.max_topics),
            ("--max-subscriptions", self.max_subscriptions),
            ("--max-pending-publishes", self.max_pending_publishes),
            ("--mesh-queue", self.mesh_queue),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        if self.redis_prefix.is_empty()
            || self
                .redis_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'{' || b == b'}')
        {
            return Err(
                "--redis-prefix must be non-empty, without spaces or braces (braces are the key's hash tag)"
                    .into(),
            );
        }
        if self.redis_timeout.is_zero() || self.redis_check_interval.is_zero() {
            return Err("--redis-timeout and --redis-check-interval must be greater than 0".into());
        }
        if let Some(url) = &self.redis {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(format!(
                    "--redis {url:?}: expected redis://HOST:PORT or rediss://HOST:PORT"
                ));
            }
        }
        if self.shards > 1024 {
            return Err("--shards must be at most 1024".into());
        }
        if self.max_head_size < 128 {
            return Err("--max-head-size must be at least 128 bytes".into());
        }
        if self.read_buffer < 512 {
            return Err("--read-buffer must be at least 512 bytes".into());
        }
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return Err("--recv-buffers must be a power of two up to 32768".into());
        }
        if self.max_frame_size > self.max_message_size {
            return Err("--max-frame-size must not exceed --max-message-size".into());
        }
        for (flag, d) in [
            ("--handshake-timeout", self.handshake_timeout),
            ("--ping-interval", self.ping_interval),
            ("--idle-timeout", self.idle_timeout),
            ("--close-timeout", self.close_timeout),
            ("--message-timeout", self.message_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        if self.idle_timeout <= self.ping_interval {
            return Err("--idle-timeout must be longer than --ping-interval".into());
        }
        if self.auth.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "{} is not a loopback address, and without access control anyone who \
                 reaches it may subscribe and publish to every topic: give --auth jwt \
                 (see docs/security.md), or --auth none to run open on purpose",
                self.listen
            ));
        }
        let key_files = [&self.jwt_secret_file, &self.jwt_public_key_file];
        match (
            self.auth_mode(),
            key_files.iter().filter(|f| f.is_some()).count(),
        ) {
            (AuthMode::Jwt, 0) => {
                return Err("--auth jwt needs --jwt-secret-file or --jwt-public-key-file".into())
            }
            (AuthMode::Jwt, 2) => {
                return Err(
                    "give one of --jwt-secret-file and --jwt-public-key-file, not both".into(),
                )
            }
            (AuthMode::None, n) if n > 0 || !self.anonymous_subscribe.is_empty() => {
                return Err(
                    "--jwt-*-file and --anonymous-subscribe only apply with --auth jwt".into(),
                )
            }
            _ => {}
        }
        ringcast_core::pattern::parse_list(self.anonymous_subscribe.iter().map(String::as_str))
            .map_err(|e| format!("--anonymous-subscribe: {e}"))?;
        crate::runtime::client_ip::parse_proxies(&self.trusted_proxies)
            .map_err(|e| format!("--trusted-proxies: {e}"))?;
        Ok(())
    }

    /// `--auth`, or its default for the listen address.
    pub fn auth_mode(&self) -> AuthMode {
        self.auth.unwrap_or(AuthMode::None)
    }

    /// Builds the access policy: reads the key files (a clear error names
    /// the file and what is wrong with it).
    pub fn policy(&self) -> Result<crate::auth::Policy, String> {
        use crate::auth::jwt::{JwtVerifier, KeySource};
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("--{flag} {}: {e}", path.display()))
        };
        let source = match (&self.jwt_secret_file, &self.jwt_public_key_file) {
            (Some(p), _) => {
                let mut secret = read("jwt-secret-file", p)?;
                while secret.last().is_some_and(|b| b.is_ascii_whitespace()) {
                    secret.pop();
                }
                Some(("jwt-secret-file", p, KeySource::Secret(secret)))
            }
            (None, Some(p)) => Some((
                "jwt-public-key-file",
                p,
                KeySource::PublicPem(read("jwt-public-key-file", p)?),
            )),
            (None, None) => None,
        };
        let jwt = match source {
            Some((flag, path, source)) if self.auth_mode() == AuthMode::Jwt => Some(
                JwtVerifier::new(
                    source,
                    self.jwt_issuer.as_deref(),
                    self.jwt_audience.as_deref(),
                    self.jwt_leeway,
                )
                .map_err(|e| format!("--{flag} {}: {e}", path.display()))?,
            ),
            _ => None,
        };
        let anonymous = ringcast_core::pattern::parse_list(
            self.anonymous_subscribe.iter().map(String::as_str),
        )?;
        crate::auth::Policy::new(
            self.auth_mode(),
            jwt,
            ringcast_core::auth::Access::Topics(anonymous.into()),
            self.api_keys_file.clone(),
        )
    }

    pub fn ws_limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame_size,
            max_message: self.max_message_size,
        }
    }

    pub fn history_limits(&self) -> HistoryLimits {
        HistoryLimits {
            max_messages: self.history_messages,
            max_bytes: self.history_bytes,
        }
    }

    /// The engine's limits.
    pub fn limits(&self) -> ringcast_core::Limits {
        ringcast_core::Limits {
            max_topics: self.max_topics,
            max_subscriptions: self.max_subscriptions,
            history: self.history_limits(),
            history_ttl: (!self.history_ttl.is_zero()).then_some(self.history_ttl),
            history_budget: self.history_budget,
            outbox_size: self.outbox_size,
            slow_consumer: match self.slow_consumer {
                SlowConsumer::Disconnect => ringcast_core::SlowConsumer::Disconnect,
                SlowConsumer::Conflate => ringcast_core::SlowConsumer::Conflate,
            },
            max_pending_publishes: self.max_pending_publishes,
            token_expiry_notice: self.token_expiry_notice,
            command_rate: rate(self.max_command_rate, self.command_burst),
            publish_rate: rate(self.max_publish_rate, self.publish_burst),
            rate_strikes: 20,
            max_json_depth: self.max_json_depth,
        }
    }

    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            max_head: self.max_head_size,
            max_headers: self.max_headers,
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "(any)".to_string()
            } else {
                v.join(",")
            }
        };
        writeln!(f, "  listen             {}", self.listen)?;
        writeln!(
            f,
            "  shards             {}{}",
            self.shards,
            if self.pin_cores { " (pinned)" } else { "" }
        )?;
        writeln!(f, "  runtime            {}", self.runtime.as_str())?;
        writeln!(f, "  max-connections    {} per shard", self.max_connections)?;
        writeln!(f, "  handshake-timeout  {:?}", self.handshake_timeout)?;
        writeln!(f, "  ping-interval      {:?}", self.ping_interval)?;
        writeln!(f, "  idle-timeout       {:?}", self.idle_timeout)?;
        writeln!(f, "  close-timeout      {:?}", self.close_timeout)?;
        writeln!(f, "  shutdown-grace     {:?}", self.shutdown_grace)?;
        writeln!(f, "  max-frame-size     {} bytes", self.max_frame_size)?;
        writeln!(f, "  max-message-size   {} bytes", self.max_message_size)?;
        writeln!(f, "  max-head-size      {} bytes", self.max_head_size)?;
        writeln!(f, "  max-headers        {}", self.max_headers)?;
        writeln!(f, "  outbox-size        {} bytes", self.outbox_size)?;
        writeln!(
            f,
            "  read-buffer        {} bytes x {} per shard",
            self.read_buffer, self.recv_buffers
        )?;
        writeln!(
            f,
            "  history-messages   {} per topic",
            self.history_messages
        )?;
        writeln!(
            f,
            "  history-bytes      {} bytes per topic",
            self.history_bytes
        )?;
        writeln!(
            f,
            "  history-ttl        {}",
            if self.history_ttl.is_zero() {
                "none".to_string()
            } else {
                format!("{:?}", self.history_ttl)
            }
        )?;
        writeln!(
            f,
            "  history-budget     {} bytes per shard",
            self.history_budget
        )?;
        writeln!(f, "  max-topics         {} per shard", self.max_topics)?;
        writeln!(
            f,
            "  max-subscriptions  {} per connection",
            self.max_subscriptions
        )?;
        writeln!(
            f,
            "  max-pending-publishes {} per connection",
            self.max_pending_publishes
        )?;
        writeln!(f, "  max-json-depth     {}", self.max_json_depth)?;
        writeln!(
            f,
            "  mesh-queue         {} messages per shard",
            self.mesh_queue
        )?;
        match &self.redis {
            Some(url) => writeln!(
                f,
                "  redis              {} (prefix {:?}, timeout {:?}, check every {:?})",
                redact_url(url),
                self.redis_prefix,
                self.redis_timeout,
                self.redis_check_interval
            )?,
            None => writeln!(f, "  redis              none (a single node)")?,
        }
        writeln!(f, "  message-timeout    {:?}", self.message_timeout)?;
        writeln!(f, "  slow-consumer      {:?}", self.slow_consumer)?;
        writeln!(f, "  max-polls          {} per shard", self.max_polls)?;
        writeln!(f, "  max-poll-timeout   {:?}", self.max_poll_timeout)?;
        writeln!(f, "  allowed-origins    {}", list(&self.allowed_origins))?;
        let protocols = if self.subprotocols.is_empty() {
            "(none)".to_string()
        } else {
            self.subprotocols.join(",")
        };
        writeln!(f, "  subprotocols       {protocols}")?;
        let auth = match (
            self.auth_mode(),
            &self.jwt_secret_file,
            &self.jwt_public_key_file,
        ) {
            (AuthMode::None, _, _) => "none (open access)".to_string(),
            (AuthMode::Jwt, Some(p), _) => format!("jwt, HS256 secret {}", p.display()),
            (AuthMode::Jwt, _, Some(p)) => format!("jwt, public key {}", p.display()),
            (AuthMode::Jwt, None, None) => "jwt (no key!)".to_string(),
        };
        writeln!(f, "  auth               {auth}")?;
        if self.auth_mode() == AuthMode::Jwt {
            writeln!(
                f,
                "  anonymous-subscribe {}",
                if self.anonymous_subscribe.is_empty() {
                    "(nothing)".to_string()
                } else {
                    self.anonymous_subscribe.join(",")
                }
            )?;
        }
        if let Some(p) = &self.api_keys_file {
            writeln!(f, "  api-keys-file      {}", p.display())?;
        }
        let demo = if self.demo {
            "on (feeding demo.ticker, demo.seats)"
        } else {
            "off"
        };
        write!(f, "  demo               {demo}")
    }
}

fn rate(per_second: u32, burst: u32) -> ringcast_core::limits::Rate {
    ringcast_core::limits::Rate {
        per_second: f64::from(per_second),
        burst: f64::from(burst.max(1)),
    }
}

fn opt_path(key: &str, v: &Option<PathBuf>) -> String {
    match v {
        Some(p) => format!("{key} = {:?}", p.display().to_string()),
        None => format!("# {key} = (unset)"),
    }
}

/// A URL without the password in it (`redis://:***@host`): the effective
/// configuration is printed and logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

fn opt_str(key: &str, v: &Option<String>) -> String {
    match v {
        Some(s) => format!("{key} = {s:?}"),
        None => format!("# {key} = (unset)"),
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_print() {
        assert_eq!(redact_url("redis://:pw@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(redact_url("rediss://u:p@w@h"), "rediss://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("999999999999999999h").is_err());
    }

    #[test]
    fn defaults_are_valid_and_documented_flags_parse() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        let c = Config::try_parse_from(["ringcast", "--listen", "127.0.0.1:0", "--shards", "4"])
            .unwrap();
        assert_eq!(c.shards, 4);
    }

    fn write(name: &str, text: &str) -> String {
        let path = std::env::temp_dir().join(format!(
            "ringcast-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }

    fn args(v: &[&str]) -> Vec<String> {
        std::iter::once("ringcast")
            .chain(v.iter().copied())
            .map(String::from)
            .collect()
    }

    #[test]
    fn config_file_sets_options_and_flags_win() {
        let path = write(
            "ok",
            "listen = \"127.0.0.1:9999\"\nshards = 3\npin_cores = true\nmax-frame-size = \"1MiB\"\n\
             max-message-size = 2097152\nidle-timeout = \"2m\"\nallowed-origins = [\"https://a\", \"https://b\"]\n\
             slow-consumer = \"conflate\"\ndemo = true\n",
        );
        let c = Config::load_from(args(&["--config", &path, "--shards", "5"])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.shards, 5, "the flag wins over the file");
        assert!(c.pin_cores);
        assert_eq!((c.max_frame_size, c.max_message_size), (1 << 20, 2 << 20));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.allowed_origins, ["https://a", "https://b"]);
        assert_eq!(c.slow_consumer, SlowConsumer::Conflate);
        assert!(c.demo);
        // --print-config output loads back to the same configuration.
        let again = write("again", &c.to_toml());
        let d = Config::load_from(args(&["--config", &again])).unwrap();
        assert_eq!(d.to_toml(), c.to_toml());
    }

    #[test]
    fn config_file_errors_name_the_file_and_key() {
        let cases = [
            ("unknown", "max_frames = 3\n", "unknown key `max_frames`"),
            (
                "badvalue",
                "max-frame-size = \"lots\"\n",
                "key `max-frame-size`",
            ),
            (
                "badtype",
                "pin-cores = \"yes\"\n",
                "key `pin-cores`: expected true or false",
            ),
            (
                "float",
                "shards = 1.5\n",
                "key `shards`: expected a string or an integer",
            ),
            ("syntax", "listen = \n", "TOML"),
        ];
        for (name, text, want) in cases {
            let path = write(name, text);
            match Config::load_from(args(&["--config", &path])) {
                Err(LoadError::File(msg)) => {
                    assert!(msg.contains(&path), "{msg}");
                    assert!(
                        msg.contains(want) || (want == "TOML" && msg.contains("line")),
                        "{name}: {msg}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        match Config::load_from(args(&["--config", "/nonexistent/ringcast.toml"])) {
            Err(LoadError::File(msg)) => {
                assert!(msg.contains("/nonexistent/ringcast.toml"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_values_name_the_flag() {
        let c = Config::try_parse_from(["ringcast", "--shards", "0"]).unwrap();
        assert!(c.validate().unwrap_err().contains("--shards"));
        let c =
            Config::try_parse_from(["ringcast", "--idle-timeout", "5s", "--ping-interval", "10s"])
                .unwrap();
        assert!(c.validate().unwrap_err().contains("--idle-timeout"));
        assert!(Config::try_parse_from(["ringcast", "--max-frame-size", "lots"]).is_err());
    }
}
