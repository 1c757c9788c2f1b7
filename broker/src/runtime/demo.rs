//! `--demo`: the feeder task that clocks [`crate::demo::feed`] and
//! publishes its updates.
//!
//! It runs on shard 0 and publishes on the broker's internal path (the
//! engine's publish, as `POST /publish` does), not through a loopback
//! client: the demo costs no socket and exercises the real fan-out,
//! history and seq assignment.

use std::rc::Rc;

use bytes::Bytes;

use super::shard::Shard;
use crate::demo::feed::{Feed, STEP};

/// Publishes the simulation's updates every [`STEP`] until shutdown.
pub async fn run_feeder(shard: Rc<Shard>) {
    let mut feed = Feed::new(rand::random());
    // A timer, not socket I/O: dropping it (abort at shutdown) is safe.
    let mut tick = tokio::time::interval(STEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shard.is_closing() {
            break;
        }
        for update in feed.step() {
            // Fire and forget: no acknowledgement crosses shards. A refusal
            // (a tiny --max-topics, an overloaded owner) just means the
            // page shows nothing new this step.
            let _ = shard.publish(update.topic, Bytes::from(update.data), false);
        }
    }
}
