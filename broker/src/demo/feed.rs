//! The demo feed, sans-I/O: a random walk of stock prices and the seat
//! counts of a few trains, advanced one [`STEP`] at a time.
//!
//! [`Feed::step`] returns the messages to publish and nothing else happens:
//! no clock, no socket, no runtime. The runtime's feeder calls it on a
//! timer; the tests call it in a loop with a fixed seed, so every property
//! below is checked deterministically.
//!
//! One topic per board (not one per symbol) on purpose: SSE and
//! long-polling need one HTTP connection per topic, and a browser opens at
//! most six to one host. Two topics leave room for the page's own requests
//! and for a second tab.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Stock ticks: `{"symbol","name","price","open","change","change_pct"}`.
pub const TICKER_TOPIC: &str = "demo.ticker";
/// Seat counts: `{"train","route","departs","seats","capacity"}`.
pub const SEATS_TOPIC: &str = "demo.seats";

/// Simulated time per [`Feed::step`].
pub const STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// Chance per step that a symbol ticks: about 2 ticks per second each.
const TICK_CHANCE: f64 = 0.2;
/// Largest move of one tick, relative to the price (0.3 %).
const MAX_MOVE: f64 = 0.003;
/// Chance per step that a train with seats left gets a booking (~1/s).
const BOOKING_CHANCE: f64 = 0.1;
/// Chance per step of a cancellation returning a few seats.
const CANCEL_CHANCE: f64 = 0.01;
/// Steps a sold-out train stays sold out before a coach is added (3 s).
const SOLD_OUT_STEPS: u32 = 30;

/// One message to publish: the topic and the `data` JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub topic: &'static str,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Stock {
    symbol: &'static str,
    name: &'static str,
    /// Prices in cents: the walk never accumulates float error.
    open: i64,
    price: i64,
}

#[derive(Debug, Clone)]
struct Train {
    train: &'static str,
    route: &'static str,
    departs: &'static str,
    capacity: u32,
    seats: u32,
    /// Steps spent sold out so far.
    sold_out_for: u32,
}

/// The simulation's state.
#[derive(Debug, Clone)]
pub struct Feed {
    rng: StdRng,
    stocks: Vec<Stock>,
    trains: Vec<Train>,
    /// The first step publishes every row, so a page opened at once fills.
    started: bool,
}

impl Feed {
    /// A feed whose randomness comes from `seed` (the same seed, the same
    /// messages).
    pub fn new(seed: u64) -> Feed {
        let mut rng = StdRng::seed_from_u64(seed);
        let stocks = [
            ("AAPL", "Apple", 18_731),
            ("MSFT", "Microsoft", 41_522),
            ("NVDA", "Nvidia", 12_104),
            ("SAP", "SAP", 19_870),
            ("ASML", "ASML", 68_950),
        ]
        .into_iter()
        .map(|(symbol, name, open)| Stock {
            symbol,
            name,
            open,
            price: open,
        })
        .collect();
        let trains = [
            ("ICE 123", "Berlin Hbf - Muenchen Hbf", "14:05", 120),
            ("TGV 9574", "Paris Est - Frankfurt Hbf", "14:22", 96),
            ("RJX 765", "Wien Hbf - Zuerich HB", "14:40", 80),
            ("EC 8", "Hamburg Hbf - Koebenhavn H", "15:10", 64),
        ]
        .into_iter()
        .map(|(train, route, departs, capacity)| Train {
            train,
            route,
            departs,
            capacity,
            seats: rng.gen_range(capacity / 4..=capacity),
            sold_out_for: 0,
        })
        .collect();
        Feed {
            rng,
            stocks,
            trains,
            started: false,
        }
    }

    /// Advances the simulation by one [`STEP`] and returns what changed.
    pub fn step(&mut self) -> Vec<Update> {
        let all = !std::mem::replace(&mut self.started, true);
        let mut out = Vec::new();
        for i in 0..self.stocks.len() {
            if all || self.rng.gen_bool(TICK_CHANCE) {
                if !all {
                    let s = &mut self.stocks[i];
                    let rel = self.rng.gen_range(-MAX_MOVE..=MAX_MOVE);
                    let mut delta = (s.price as f64 * rel).round() as i64;
                    if delta == 0 {
                        // A tick moves the price: at least one cent.
                        delta = if rel < 0.0 { -1 } else { 1 };
                    }
                    s.price = (s.price + delta).max(100);
                }
                out.push(stock_update(&self.stocks[i]));
            }
        }
        for i in 0..self.trains.len() {
            let changed = all || self.move_seats(i);
            if changed {
                out.push(train_update(&self.trains[i]));
            }
        }
        out
    }

    /// Bookings, cancellations and restocking of one train; true if its
    /// seat count changed.
    fn move_seats(&mut self, i: usize) -> bool {
        let rng = &mut self.rng;
        let t = &mut self.trains[i];
        if t.seats == 0 {
            t.sold_out_for += 1;
            if t.sold_out_for < SOLD_OUT_STEPS {
                return false;
            }
            // An extra coach: a quarter to a half of the capacity again.
            t.sold_out_for = 0;
            t.seats = rng.gen_range(t.capacity / 4..=t.capacity / 2);
            return true;
        }
        if rng.gen_bool(BOOKING_CHANCE) {
            t.seats -= rng.gen_range(1..=t.seats.min(4));
            return true;
        }
        if t.seats < t.capacity && rng.gen_bool(CANCEL_CHANCE) {
            t.seats = (t.seats + rng.gen_range(1..=3)).min(t.capacity);
            return true;
        }
        false
    }
}

fn stock_update(s: &Stock) -> Update {
    let change = s.price - s.open;
    // Basis points, rounded half away from zero, in integers.
    let bp = (change * 10_000 * 2 + change.signum() * s.open) / (2 * s.open);
    let data = json!({
        "symbol": s.symbol,
        "name": s.name,
        "price": s.price as f64 / 100.0,
        "open": s.open as f64 / 100.0,
        "change": change as f64 / 100.0,
        "change_pct": bp as f64 / 100.0,
    });
    Update {
        topic: TICKER_TOPIC,
        data: serde_json::to_vec(&data).expect("JSON to memory"),
    }
}

fn train_update(t: &Train) -> Update {
    let data = json!({
        "train": t.train,
        "route": t.route,
        "departs": t.departs,
        "seats": t.seats,
        "capacity": t.capacity,
    });
    Update {
        topic: SEATS_TOPIC,
        data: serde_json::to_vec(&data).expect("JSON to memory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    fn parse(u: &Update) -> Value {
        assert!(
            ringcast_core::wire::command::validate_data(&u.data),
            "broker accepts it"
        );
        serde_json::from_slice(&u.data).unwrap()
    }

    #[test]
    fn first_step_is_a_snapshot_of_every_row() {
        let first = Feed::new(1).step();
        let symbols: HashSet<_> = first
            .iter()
            .filter(|u| u.topic == TICKER_TOPIC)
            .map(|u| parse(u)["symbol"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(symbols.len(), 5);
        let trains = first.iter().filter(|u| u.topic == SEATS_TOPIC).count();
        assert_eq!(trains, 4);
        for u in first.iter().filter(|u| u.topic == TICKER_TOPIC) {
            let v = parse(u);
            assert_eq!(v["price"], v["open"], "no move before the first tick");
            assert_eq!(v["change"], 0.0);
        }
    }

    #[test]
    fn same_seed_same_feed() {
        let (mut a, mut b) = (Feed::new(7), Feed::new(7));
        for _ in 0..200 {
            assert_eq!(a.step(), b.step());
        }
        let mut c = Feed::new(8);
        let differs = (0..200).any(|_| a.step() != c.step());
        assert!(differs, "another seed walks elsewhere");
    }

    #[test]
    fn prices_walk_a_few_ticks_per_second_with_consistent_change() {
        let mut feed = Feed::new(42);
        let steps = 3000; // five simulated minutes
        let mut ticks: HashMap<String, u32> = HashMap::new();
        let mut last: HashMap<String, f64> = HashMap::new();
        for _ in 0..steps {
            for u in feed.step().iter().filter(|u| u.topic == TICKER_TOPIC) {
                let v = parse(u);
                let sym = v["symbol"].as_str().unwrap().to_string();
                let (price, open) = (v["price"].as_f64().unwrap(), v["open"].as_f64().unwrap());
                let change = v["change"].as_f64().unwrap();
                assert!(price >= 1.0, "{v}");
                assert!((price - open - change).abs() < 1e-6, "{v}");
                let pct = v["change_pct"].as_f64().unwrap();
                assert!((pct - change / open * 100.0).abs() <= 0.0051, "{v}");
                // Two decimals at most: cents.
                assert!(
                    ((price * 100.0).round() - price * 100.0).abs() < 1e-6,
                    "{v}"
                );
                if let Some(prev) = last.insert(sym.clone(), price) {
                    assert!(price != prev, "a tick moves the price: {v}");
                    assert!((price - prev).abs() <= prev * MAX_MOVE + 0.011, "{v}");
                }
                *ticks.entry(sym).or_default() += 1;
            }
        }
        let seconds = steps as f64 * STEP.as_secs_f64();
        for (sym, n) in ticks {
            let rate = n as f64 / seconds;
            assert!((1.0..=4.0).contains(&rate), "{sym}: {rate} ticks/s");
        }
    }

    #[test]
    fn seats_go_down_sell_out_and_are_restocked() {
        let mut feed = Feed::new(3);
        let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
        for _ in 0..6000 {
            for u in feed.step().iter().filter(|u| u.topic == SEATS_TOPIC) {
                let v = parse(u);
                let (seats, cap) = (
                    v["seats"].as_u64().unwrap(),
                    v["capacity"].as_u64().unwrap(),
                );
                assert!(seats <= cap, "{v}");
                for key in ["train", "route", "departs"] {
                    assert!(v[key].is_string(), "{key} in {v}");
                }
                seen.entry(v["train"].as_str().unwrap().into())
                    .or_default()
                    .push(seats);
            }
        }
        assert_eq!(seen.len(), 4);
        for (train, counts) in seen {
            let downs = counts.windows(2).filter(|w| w[1] < w[0]).count();
            let ups = counts.windows(2).filter(|w| w[1] > w[0]).count();
            assert!(
                downs > ups,
                "{train}: mostly bookings ({downs} down, {ups} up)"
            );
            let sold_out = counts.windows(2).any(|w| w[0] == 0 && w[1] > 0);
            assert!(
                sold_out,
                "{train}: sold out and restocked within 10 minutes"
            );
        }
    }
}
