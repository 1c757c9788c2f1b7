//! `--demo`: the feeder task that clocks [`crate::demo::feed`] and
//! publishes its updates.
//!
//! It runs on shard 0 and publishes on the broker's internal path (the
//! same `Msg::Publish` to the topic's owner that `POST /publish` uses), not
//! through a loopback client: the demo costs no socket and exercises the
//! real fan-out, history and seq assignment.

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
            // Fire and forget: the ack's receiver is dropped, which the
            // owner's `PubAck` tolerates. A refusal (only possible with a
            // tiny --max-topics) just means the page shows nothing new.
            drop(
                shard
                    .pubsub
                    .publish_http(update.topic, Bytes::from(update.data)),
            );
        }
    }
}
