//! The Redis thread's work: publishes in, topic streams out.
//!
//! - Publishes from every shard queue up while one pipeline of scripts is
//!   in flight, then go as the next pipeline, in arrival order (per shard,
//!   the order its clients sent them). Each is answered with its seq, or
//!   `unavailable` after `--redis-timeout`.
//! - A topic is watched while this node has subscribers to it: subscribe
//!   to its channel first (confirmed), then read its head, so that nothing
//!   published in between falls through; the owner merges the two by seq.
//! - A lost subscription is made again, every watched topic subscribed
//!   again and re-read from where this node was (the owner fills what
//!   was missed, or learns of a new epoch).
//! - Every `--redis-check-interval` the watched topics' positions are read;
//!   one behind for a whole interval is re-read (a subscription that went
//!   deaf, or a message dropped on a full queue to its owner).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, ServerErrorKind, Value};
use tokio::sync::{watch, Notify};
use tokio::task::spawn_local;
use tokio::time::timeout;
use tracing::{info, warn};

use ringcast_core::wire::command::ErrorCode;
use ringcast_core::{Ack, Msg, Placement, ShardId};

use super::health::ClusterStats;
use super::script::{self, Keys};
use crate::config::Config;
use crate::runtime::mesh::{Inbox, Mesh};

const PUBLISH_TIMED_OUT: &str = "publish timed out";

/// Publishes sent in one pipeline, at most.
const MAX_PIPELINE: usize = 1024;

/// What the thread needs of the configuration.
pub struct Settings {
    keys: Keys,
    timeout: Duration,
    check_interval: Duration,
    history_messages: usize,
    stream_ttl: u64,
    meta_ttl: u64,
    mesh_queue: usize,
    shards: usize,
}

impl Settings {
    pub fn new(c: &Config) -> Self {
        let stream_ttl = c.history_ttl.as_secs_f64().ceil() as u64;
        Settings {
            keys: Keys::new(&c.redis_prefix),
            timeout: c.redis_timeout,
            check_interval: c.redis_check_interval,
            history_messages: c.history_messages,
            stream_ttl,
            // The epoch and last seq outlive the messages: a resume after
            // the history expired gets `gap`, not a new epoch, for a day.
            meta_ttl: if stream_ttl == 0 {
                0
            } else {
                stream_ttl.max(86_400)
            },
            mesh_queue: c.mesh_queue,
            shards: c.shards,
        }
    }
}

/// A watched topic: its owner shard, and the last message passed on.
struct Watched {
    owner: ShardId,
    epoch: Option<Arc<str>>,
    last: u64,
    /// What the previous check found in Redis when this node was behind.
    behind: Option<(Option<Arc<str>>, u64)>,
}

struct Publish {
    topic: Arc<str>,
    data: Bytes,
    ack: Ack,
}

struct Backend {
    client: redis::Client,
    s: Settings,
    placement: Placement,
    mesh: Rc<Mesh<Msg>>,
    stats: Arc<ClusterStats>,
    publish_sha: String,
    head_sha: String,
    cmd: RefCell<Option<MultiplexedConnection>>,
    connecting: Cell<bool>,
    connected: Notify,
    cmd_ok: Cell<bool>,
    sub_ok: Cell<bool>,
    /// When Redis last answered a command.
    answered: Cell<Instant>,
    sink: RefCell<Option<PubSubSink>>,
    watched: RefCell<HashMap<Arc<str>, Watched>>,
    queue: RefCell<Vec<Publish>>,
    queued: Notify,
}

pub async fn run(
    client: redis::Client,
    s: Settings,
    placement: Placement,
    inboxes: Arc<[Inbox<Msg>]>,
    stats: Arc<ClusterStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mesh = Rc::new(Mesh::new(s.shards, inboxes, s.mesh_queue));
    let b = Rc::new(Backend {
        client,
        placement,
        mesh: mesh.clone(),
        stats,
        publish_sha: script::sha(script::PUBLISH),
        head_sha: script::sha(script::HEAD),
        cmd: RefCell::new(None),
        connecting: Cell::new(false),
        connected: Notify::new(),
        // Optimistic until the first command says otherwise: the first
        // publishes try rather than fail.
        cmd_ok: Cell::new(true),
        sub_ok: Cell::new(false),
        answered: Cell::new(Instant::now()),
        sink: RefCell::new(None),
        watched: RefCell::new(HashMap::new()),
        queue: RefCell::new(Vec::new()),
        queued: Notify::new(),
        s,
    });
    let tasks = [
        spawn_local({
            let mesh = mesh.clone();
            async move { mesh.run_flusher().await }
        }),
        spawn_local(b.clone().publisher()),
        spawn_local(b.clone().subscriber()),
        spawn_local(b.clone().prober()),
        spawn_local(b.clone().checker()),
        spawn_local({
            let b = b.clone();
            async move {
                let mut batch = Vec::new();
                loop {
                    b.mesh.recv(&mut batch).await;
                    for msg in batch.drain(..) {
                        b.handle(msg);
                    }
                }
            }
        }),
    ];
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
}

impl Backend {
    fn handle(self: &Rc<Self>, msg: Msg) {
        match msg {
            Msg::Publish { topic, data, ack } => {
                let p = Publish { topic, data, ack };
                if self.queue.borrow().len() >= self.s.mesh_queue {
                    // Redis is slower than the publishers: refused like a
                    // full queue between shards, not held without bound.
                    ClusterStats::add(&self.stats.publish_errors, 1);
                    return self.ack(p, Err(ErrorCode::Overloaded));
                }
                self.queue.borrow_mut().push(p);
                self.queued.notify_one();
            }
            Msg::Watch { topic, owner } => {
                self.watched.borrow_mut().insert(
                    topic.clone(),
                    Watched {
                        owner,
                        epoch: None,
                        last: 0,
                        behind: None,
                    },
                );
                self.gauge();
                spawn_local(self.clone().watch(topic));
            }
            Msg::Unwatch { topic } => {
                self.watched.borrow_mut().remove(&topic);
                self.gauge();
                let sink = self.sink.borrow().clone();
                if let Some(mut sink) = sink {
                    let channel = self.s.keys.channel(&topic);
                    let limit = self.s.timeout;
                    spawn_local(async move {
                        let _ = timeout(limit, sink.unsubscribe(channel)).await;
                    });
                }
            }
            Msg::Fetch {
                topic,
                epoch,
                after,
            } => {
                ClusterStats::add(&self.stats.fetches, 1);
                spawn_local(self.clone().fetch(topic, epoch, after));
            }
            other => debug_assert!(false, "not for the backend: {other:?}"),
        }
    }

    fn gauge(&self) {
        let n = self.watched.borrow().len() as i64;
        self.stats.watched.store(n, Ordering::Relaxed);
    }

    fn health(&self) {
        if self.cmd_ok.get() && self.sub_ok.get() {
            if !self.stats.is_up() {
                info!("redis: connected");
            }
            self.stats.set_up();
        }
    }

    /// The command connection failed: publishes fail fast until the
    /// prober gets an answer again.
    fn fail(&self, why: &str) {
        *self.cmd.borrow_mut() = None;
        self.cmd_ok.set(false);
        if self.stats.set_down(why) {
            warn!("redis: {why}; publishes get `unavailable` until it answers");
        }
    }

    /// A command timed out. Redis is counted down only if nothing else
    /// got an answer within the timeout either: under a burst one command
    /// can wait behind a long pipeline while Redis is perfectly alive.
    fn timed_out(&self, why: &str) {
        if self.answered.get().elapsed() >= self.s.timeout {
            self.fail(why);
        }
    }

    fn alive(&self) {
        self.answered.set(Instant::now());
    }

    /// The command connection, made (and the scripts loaded) if there is
    /// none. Never waits longer than about twice `--redis-timeout`.
    async fn command(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.cmd.borrow().clone() {
            return Ok(c);
        }
        if self.connecting.get() {
            // Another task is connecting: its outcome is this one's too.
            self.connected.notified().await;
            return self
                .cmd
                .borrow()
                .clone()
                .ok_or_else(|| "cannot connect".to_string());
        }
        self.connecting.set(true);
        let r = self.connect().await;
        self.connecting.set(false);
        if let Ok(c) = &r {
            *self.cmd.borrow_mut() = Some(c.clone());
        }
        self.connected.notify_waiters();
        r
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.s.timeout))
            .set_response_timeout(Some(self.s.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let mut c = match timeout(self.s.timeout * 2, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(format!("cannot connect: {e}")),
            Err(_) => return Err("cannot connect: timed out".into()),
        };
        self.load_scripts(&mut c).await?;
        Ok(c)
    }

    async fn load_scripts(&self, c: &mut MultiplexedConnection) -> Result<(), String> {
        let mut pipe = redis::pipe();
        for s in [script::PUBLISH, script::HEAD] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(s);
        }
        match timeout(self.s.timeout, pipe.query_async::<Vec<String>>(c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("SCRIPT LOAD: {e}")),
            Err(_) => Err("SCRIPT LOAD: timed out".into()),
        }
    }

    fn ack(&self, p: Publish, result: Result<u64, ErrorCode>) {
        match (p.ack, result) {
            (Ack::To { from, token }, result) => {
                self.mesh.send(from, Msg::PubAck { token, result })
            }
            (Ack::Errors { from, conn }, Err(code)) => self.mesh.send(
                from,
                Msg::PubRefused {
                    conn,
                    topic: p.topic,
                    code,
                },
            ),
            _ => {}
        }
    }

    fn refuse_all(&self, batch: Vec<Publish>) {
        ClusterStats::add(&self.stats.publish_errors, batch.len() as u64);
        for p in batch {
            self.ack(p, Err(ErrorCode::Unavailable));
        }
    }

    /// Sends queued publishes as one pipeline at a time, in order.
    async fn publisher(self: Rc<Self>) {
        loop {
            while self.queue.borrow().is_empty() {
                self.queued.notified().await;
            }
            // At most MAX_PIPELINE at a time, so that one pipeline's
            // answer comes well within --redis-timeout.
            let batch: Vec<Publish> = {
                let mut q = self.queue.borrow_mut();
                let n = q.len().min(MAX_PIPELINE);
                q.drain(..n).collect()
            };
            if !self.cmd_ok.get() {
                self.refuse_all(batch);
                continue;
            }
            let mut con = match self.command().await {
                Ok(c) => c,
                Err(e) => {
                    self.fail(&e);
                    self.refuse_all(batch);
                    continue;
                }
            };
            let mut results = self.run_publishes(&mut con, &batch).await;
            if let Ok(values) = &results {
                if values.iter().any(no_script) {
                    // Redis lost its script cache (SCRIPT FLUSH): none of
                    // them ran. Load and send them again, once.
                    results = match self.load_scripts(&mut con).await {
                        Ok(()) => self.run_publishes(&mut con, &batch).await,
                        Err(e) => Err(e),
                    };
                }
            }
            match results {
                Ok(values) => {
                    self.alive();
                    for (p, v) in batch.into_iter().zip(values) {
                        match script::parse_published(&v) {
                            Some(seq) => {
                                ClusterStats::add(&self.stats.publishes, 1);
                                self.ack(p, Ok(seq));
                            }
                            None => {
                                warn!(topic = %p.topic, "redis: publish script failed: {v:?}");
                                ClusterStats::add(&self.stats.publish_errors, 1);
                                self.ack(p, Err(ErrorCode::Unavailable));
                            }
                        }
                    }
                }
                Err(e) => {
                    if e == PUBLISH_TIMED_OUT {
                        self.timed_out(&e);
                    } else {
                        self.fail(&e);
                    }
                    self.refuse_all(batch);
                }
            }
        }
    }

    async fn run_publishes(
        &self,
        con: &mut MultiplexedConnection,
        batch: &[Publish],
    ) -> Result<Vec<Value>, String> {
        let keys = &self.s.keys;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for p in batch {
            pipe.cmd("EVALSHA")
                .arg(&self.publish_sha)
                .arg(2)
                .arg(keys.stream(&p.topic))
                .arg(keys.meta(&p.topic))
                .arg(&p.data[..])
                .arg(self.s.history_messages)
                .arg(self.s.stream_ttl)
                .arg(self.s.meta_ttl)
                .arg(keys.channel(&p.topic));
        }
        match timeout(self.s.timeout, pipe.query_async::<Vec<Value>>(con)).await {
            Ok(Ok(v)) if v.len() == batch.len() => Ok(v),
            Ok(Ok(v)) => Err(format!("{} answers to {} publishes", v.len(), batch.len())),
            Ok(Err(e)) if e.is_timeout() => Err(PUBLISH_TIMED_OUT.into()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(PUBLISH_TIMED_OUT.into()),
        }
    }

    fn owner(&self, topic: &str) -> ShardId {
        self.watched
            .borrow()
            .get(topic)
            .map_or_else(|| self.placement.owner(topic), |w| w.owner)
    }

    /// Subscribes to a topic's channel, then reads its head for the owner.
    async fn watch(self: Rc<Self>, topic: Arc<str>) {
        let sink = self.sink.borrow().clone();
        let subscribed = match sink {
            Some(mut sink) if self.cmd_ok.get() => {
                let channel = self.s.keys.channel(&topic);
                matches!(
                    timeout(self.s.timeout, sink.subscribe(channel)).await,
                    Ok(Ok(()))
                )
            }
            _ => false,
        };
        if !subscribed {
            let msg = Msg::Head {
                topic: topic.clone(),
                result: Err(ErrorCode::Unavailable),
            };
            return self.mesh.send(self.owner(&topic), msg);
        }
        ClusterStats::add(&self.stats.fetches, 1);
        self.fetch(topic, None, 0).await;
    }

    /// Reads a topic's head and the entries after `after` of stream
    /// `epoch`, and sends them to its owner.
    async fn fetch(self: Rc<Self>, topic: Arc<str>, epoch: Option<Arc<str>>, after: u64) {
        let mut result = self.read_head(&topic, epoch.as_deref(), after).await;
        if let Ok(head) = &mut result {
            // The script reads from the start when the epoch is not the
            // caller's; otherwise the entries follow `after` only.
            let same = epoch.as_ref() == Some(&head.epoch);
            head.after = (same && after > 0).then_some(after);
            if let Some(w) = self.watched.borrow_mut().get_mut(&topic) {
                if w.epoch.as_ref() == Some(&head.epoch) {
                    w.last = w.last.max(head.last_seq);
                } else {
                    w.epoch = Some(head.epoch.clone());
                    w.last = head.last_seq;
                }
                w.behind = None;
            }
        }
        let owner = self.owner(&topic);
        self.mesh.send(owner, Msg::Head { topic, result });
    }

    async fn read_head(
        &self,
        topic: &str,
        epoch: Option<&str>,
        after: u64,
    ) -> Result<ringcast_core::Head, ErrorCode> {
        if !self.cmd_ok.get() {
            return Err(ErrorCode::Unavailable);
        }
        let mut con = self.command().await.map_err(|e| {
            self.fail(&e);
            ErrorCode::Unavailable
        })?;
        let keys = &self.s.keys;
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.head_sha)
            .arg(2)
            .arg(keys.stream(topic))
            .arg(keys.meta(topic))
            .arg(epoch.unwrap_or(""))
            .arg(after)
            // A fill asks for more than is retained: `MAXLEN ~` trims by
            // whole macro nodes (100 entries), so Redis may still hold
            // more than --history-messages, and a live subscriber should
            // get all of those rather than a `skipped`.
            .arg(if after > 0 {
                self.s.history_messages + 128
            } else {
                self.s.history_messages
            })
            .arg(self.s.meta_ttl);
        let mut reply = timeout(self.s.timeout, cmd.query_async::<Value>(&mut con)).await;
        if matches!(&reply, Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(ServerErrorKind::NoScript))
        {
            if let Err(e) = self.load_scripts(&mut con).await {
                self.fail(&e);
                return Err(ErrorCode::Unavailable);
            }
            reply = timeout(self.s.timeout, cmd.query_async::<Value>(&mut con)).await;
        }
        match reply {
            Ok(Ok(v)) => {
                self.alive();
                script::parse_head(&v).ok_or_else(|| {
                    warn!(topic, "redis: head script answered {v:?}");
                    ErrorCode::Unavailable
                })
            }
            Ok(Err(e)) => {
                self.fail(&e.to_string());
                Err(ErrorCode::Unavailable)
            }
            Err(_) => {
                self.timed_out("head read timed out");
                Err(ErrorCode::Unavailable)
            }
        }
    }

    /// Keeps the subscription connection: (re)connects, subscribes to
    /// every watched topic, has them re-read, passes messages on.
    async fn subscriber(self: Rc<Self>) {
        let mut backoff = Duration::from_millis(50);
        let mut first = true;
        loop {
            let connected = timeout(self.s.timeout * 2, self.client.get_async_pubsub()).await;
            let pubsub = match connected {
                Ok(Ok(p)) => p,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => format!("subscription: {e}"),
                        _ => "subscription: connect timed out".to_string(),
                    };
                    self.sub_lost(&why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            let channels: Vec<String> = self
                .watched
                .borrow()
                .keys()
                .map(|t| self.s.keys.channel(t))
                .collect();
            if !channels.is_empty()
                && !matches!(
                    timeout(self.s.timeout, sink.subscribe(channels)).await,
                    Ok(Ok(()))
                )
            {
                self.sub_lost("subscription: SUBSCRIBE failed");
                tokio::time::sleep(backoff).await;
                continue;
            }
            backoff = Duration::from_millis(50);
            *self.sink.borrow_mut() = Some(sink);
            self.sub_ok.set(true);
            if !first {
                ClusterStats::add(&self.stats.reconnects, 1);
                info!("redis: subscription made again; re-reading every watched topic");
            }
            first = false;
            self.health();
            // Whatever was published while this node was not subscribed
            // is in the streams: every watched topic is read again from
            // where this node was.
            self.repair_all();
            while let Some(msg) = stream.next().await {
                self.on_message(&msg);
            }
            *self.sink.borrow_mut() = None;
            self.sub_lost("subscription lost");
        }
    }

    fn sub_lost(&self, why: &str) {
        self.sub_ok.set(false);
        if self.stats.set_down(why) {
            warn!("redis: {why}; reconnecting");
        }
    }

    fn repair_all(self: &Rc<Self>) {
        let todo: Vec<(Arc<str>, Option<Arc<str>>, u64)> = self
            .watched
            .borrow()
            .iter()
            .map(|(t, w)| (t.clone(), w.epoch.clone(), w.last))
            .collect();
        ClusterStats::add(&self.stats.repairs, todo.len() as u64);
        for (topic, epoch, last) in todo {
            spawn_local(self.clone().fetch(topic, epoch, last));
        }
    }

    fn on_message(&self, msg: &redis::Msg) {
        let Some(topic) = self.s.keys.topic(msg.get_channel_name()) else {
            return;
        };
        let Some((seq, epoch, data)) = script::parse_message(msg.get_payload_bytes()) else {
            warn!(topic, "redis: a message not in ringcast's form; ignored");
            return;
        };
        ClusterStats::add(&self.stats.received, 1);
        let mut watched = self.watched.borrow_mut();
        let Some((key, w)) = watched.get_key_value(topic) else {
            return;
        };
        let (key, owner) = (key.clone(), w.owner);
        let msg = Msg::Remote {
            topic: key.clone(),
            epoch: epoch.clone(),
            seq,
            data,
        };
        if self.mesh.try_send(owner, msg).is_err() {
            // The owner will ask for it (the next message shows the gap;
            // the check finds it on an idle topic).
            ClusterStats::add(&self.stats.dropped, 1);
            return;
        }
        let w = watched.get_mut(&key).expect("present");
        if w.epoch.as_ref() == Some(&epoch) {
            w.last = w.last.max(seq);
        } else {
            w.epoch = Some(epoch);
            w.last = seq;
        }
    }

    /// While the command connection is down, asks Redis every 250 ms.
    async fn prober(self: Rc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if self.cmd_ok.get() {
                continue;
            }
            let Ok(mut con) = self.command().await else {
                continue;
            };
            let ping = redis::cmd("PING");
            match timeout(self.s.timeout, ping.query_async::<String>(&mut con)).await {
                Ok(Ok(_)) => {
                    self.cmd_ok.set(true);
                    self.health();
                    // Redis is back: a fill that failed meanwhile is
                    // asked again by the owners' next message; idle
                    // topics are re-read now.
                    if self.sub_ok.get() {
                        self.repair_all();
                    }
                }
                _ => self.fail("no answer to PING"),
            }
        }
    }

    /// Compares every watched topic's position in Redis with the last
    /// message passed on; one behind for a whole interval is re-read.
    async fn checker(self: Rc<Self>) {
        let mut tick = tokio::time::interval(self.s.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.cmd_ok.get() || !self.sub_ok.get() {
                continue;
            }
            let topics: Vec<Arc<str>> = self.watched.borrow().keys().cloned().collect();
            if topics.is_empty() {
                // Nothing to compare: still make sure Redis answers, so
                // that /healthz tells the truth on an idle node.
                let mut con = match self.command().await {
                    Ok(c) => c,
                    Err(e) => {
                        self.fail(&e);
                        continue;
                    }
                };
                let ping = redis::cmd("PING");
                match timeout(self.s.timeout, ping.query_async::<String>(&mut con)).await {
                    Ok(Ok(_)) => self.alive(),
                    Ok(Err(e)) => self.fail(&format!("health check: {e}")),
                    Err(_) => self.timed_out("health check timed out"),
                }
                continue;
            }
            for chunk in topics.chunks(512) {
                let Ok(mut con) = self.command().await else {
                    break;
                };
                let mut pipe = redis::pipe();
                for t in chunk {
                    pipe.cmd("HMGET").arg(self.s.keys.meta(t)).arg("e").arg("s");
                }
                let reply = timeout(
                    self.s.timeout,
                    pipe.query_async::<Vec<(Option<String>, Option<u64>)>>(&mut con),
                )
                .await;
                let positions = match reply {
                    Ok(Ok(p)) => {
                        self.alive();
                        p
                    }
                    Ok(Err(e)) => {
                        self.fail(&format!("position check: {e}"));
                        break;
                    }
                    Err(_) => {
                        // A node that only serves subscribers learns of a
                        // hung Redis here.
                        self.timed_out("position check timed out");
                        break;
                    }
                };
                for (topic, (epoch, last)) in chunk.iter().zip(positions) {
                    self.check(topic, epoch.map(Arc::from), last.unwrap_or(0));
                }
            }
        }
    }

    fn check(self: &Rc<Self>, topic: &Arc<str>, epoch: Option<Arc<str>>, last: u64) {
        let mut watched = self.watched.borrow_mut();
        let Some(w) = watched.get_mut(topic) else {
            return;
        };
        let behind = w.epoch != epoch || w.last < last;
        if !behind {
            w.behind = None;
            return;
        }
        // Still behind what the previous check saw: not a message on its
        // way, a lost one.
        let repair = match &w.behind {
            Some((e, seq)) => *e != w.epoch || w.last < *seq,
            None => false,
        };
        w.behind = Some((epoch, last));
        if repair {
            let (e, after) = (w.epoch.clone(), w.last);
            drop(watched);
            ClusterStats::add(&self.stats.repairs, 1);
            spawn_local(self.clone().fetch(topic.clone(), e, after));
        }
    }
}

fn no_script(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript))
}
