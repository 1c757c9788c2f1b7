//! What the engine counts. Plain numbers: the runtime copies them into
//! whatever it exports (the broker's `/metrics`) after driving the engine.

/// One shard's pub/sub counters (`total`) and gauges (current values).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages this shard assigned a seq to (as a topic's owner).
    pub published: u64,
    /// Messages queued to subscribers on this shard (replays included).
    pub delivered: u64,
    /// Live subscriptions on this shard (gauge).
    pub subscriptions: i64,
    /// Topics this shard owns (gauge).
    pub topics: i64,
    /// Bytes of history this shard retains (gauge).
    pub retained_bytes: i64,
    /// Subscribers dropped by the slow-consumer policy.
    pub slow_disconnects: u64,
    /// Messages held back by the conflate policy.
    pub slow_conflations: u64,
    /// Publishes and subscribes refused because a queue between shards was
    /// full (answered `overloaded`).
    pub overloaded: u64,
    /// Deliveries to another shard dropped because its queue was full (its
    /// subscribers get a `skipped` notice).
    pub deliveries_dropped: u64,
    /// Topics whose history was dropped to keep the shard's byte budget.
    pub history_evicted: u64,
    /// Topics whose history expired (`--history-ttl`).
    pub history_expired: u64,
    /// Commands refused by the authorization hook.
    pub denied: u64,
    /// Credentials refused (a bad or expired token, none when one was
    /// due).
    pub auth_failures: u64,
    /// Commands and publishes refused by a rate limit.
    pub rate_limited: u64,
    /// Cluster: messages received twice from the backend and dropped.
    pub cluster_duplicates: u64,
    /// Cluster: fills asked of the backend (a seq was missing).
    pub cluster_fills: u64,
    /// Cluster: topic streams found under a new epoch (the backend lost
    /// their state); their subscribers got `reset`.
    pub cluster_resets: u64,
}
