//! The live demo: the page served at `GET /` and the simulation behind
//! `--demo`'s feeder.
//!
//! Both are here, outside the runtime, because neither does I/O: the page
//! is a constant compiled into the binary (no build step, no CDN, nothing
//! to deploy beside the broker), and [`feed`] is a pure simulation that
//! returns what to publish. The runtime's `demo` task only clocks it and
//! publishes the result on the broker's internal path.

pub mod feed;

/// The self-contained demo page (HTML, CSS and JS in one file).
pub const PAGE: &str = include_str!("page.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_self_contained_and_names_the_demo_topics() {
        assert!(PAGE.starts_with("<!doctype html>"));
        // Nothing is fetched from elsewhere: no external scripts, styles,
        // fonts or images.
        for needle in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(!PAGE.contains(needle), "page contains {needle:?}");
        }
        assert!(PAGE.contains(feed::TICKER_TOPIC));
        assert!(PAGE.contains(feed::SEATS_TOPIC));
    }
}
