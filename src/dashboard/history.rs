//! The dashboard's live figures: per server, the requests of the last hour in
//! one-minute buckets (count, errors, a latency histogram), from which the page
//! gets requests per second, error rate, p50/p95 latency and its charts.
//!
//! Memory is bounded: 60 buckets of fixed size per server name, and only names
//! the router serves are recorded (a removed server's figures go with
//! [`retain`]). Recording is one short lock on a small map per finished request.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Minutes of history kept.
pub const MINUTES: usize = 60;

/// Latency buckets: bucket `i` holds durations up to `FIRST_BOUND_MS *
/// GROWTH^i`; 60 of them reach past two minutes, each 25% wider than the one
/// before, so a percentile read from them is within 25% of the true figure.
const LATENCY_BUCKETS: usize = 60;
const FIRST_BOUND_MS: f64 = 0.25;
const GROWTH: f64 = 1.25;

/// One server's requests finishing within one minute.
#[derive(Debug, Clone)]
struct Minute {
    /// Unix time of the minute's start, in minutes.
    index: u64,
    requests: u32,
    errors: u32,
    latency: [u32; LATENCY_BUCKETS],
}

impl Minute {
    fn empty(index: u64) -> Minute {
        Minute {
            index,
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BUCKETS],
        }
    }
}

/// A ring of the last [`MINUTES`] minutes of one server.
#[derive(Debug, Clone)]
struct Series {
    minutes: Vec<Minute>,
}

impl Series {
    fn new() -> Series {
        Series {
            minutes: (0..MINUTES).map(|_| Minute::empty(0)).collect(),
        }
    }

    /// The slot of minute `index`, emptied first if it held an older minute.
    fn slot(&mut self, index: u64) -> &mut Minute {
        let slot = &mut self.minutes[(index % MINUTES as u64) as usize];
        if slot.index != index {
            *slot = Minute::empty(index);
        }
        slot
    }

    fn record(&mut self, now_secs: u64, elapsed: Duration, failed: bool) {
        let minute = self.slot(now_secs / 60);
        minute.requests = minute.requests.saturating_add(1);
        minute.errors = minute.errors.saturating_add(u32::from(failed));
        let bucket = &mut minute.latency[bucket_of(elapsed)];
        *bucket = bucket.saturating_add(1);
    }

    /// Minute `index`, if the ring still holds it.
    fn get(&self, index: u64) -> Option<&Minute> {
        let slot = &self.minutes[(index % MINUTES as u64) as usize];
        (slot.index == index).then_some(slot)
    }
}

/// The histogram bucket of a duration.
fn bucket_of(elapsed: Duration) -> usize {
    let ms = elapsed.as_secs_f64() * 1000.0;
    if ms <= FIRST_BOUND_MS {
        return 0;
    }
    let index = (ms / FIRST_BOUND_MS).ln() / GROWTH.ln();
    (index.ceil() as usize).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of bucket `i`, in milliseconds.
fn bound_ms(i: usize) -> f64 {
    FIRST_BOUND_MS * GROWTH.powi(i as i32)
}

/// The `q` quantile (0..1) of a histogram: the upper bound of the bucket it falls in.
fn quantile(latency: &[u32; LATENCY_BUCKETS], q: f64) -> Option<f64> {
    let total: u64 = latency.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &n) in latency.iter().enumerate() {
        seen += u64::from(n);
        if seen >= rank {
            return Some(round(bound_ms(i)));
        }
    }
    Some(round(bound_ms(LATENCY_BUCKETS - 1)))
}

fn round(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// What the page shows of one server right now: the last minute, sliding.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Live {
    pub requests_per_second: f64,
    /// Failed requests over all requests (0..1); `None` without requests.
    pub error_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub requests_last_hour: u64,
}

/// One minute of a chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Unix time of the minute's start, in seconds.
    pub minute: u64,
    pub requests: u32,
    pub errors: u32,
    pub p95_ms: Option<f64>,
}

impl Series {
    /// The live figures at `now_secs`: the current minute and the part of
    /// the previous one that is still within the last 60 seconds (a sliding
    /// window; its latency percentiles cover both minutes whole).
    fn live(&self, now_secs: u64) -> Live {
        let current = now_secs / 60;
        let weight_previous = 1.0 - (now_secs % 60) as f64 / 60.0;
        let mut latency = [0u32; LATENCY_BUCKETS];
        let (mut requests, mut errors) = (0.0, 0.0);
        for (index, weight) in [(current, 1.0), (current.wrapping_sub(1), weight_previous)] {
            if let Some(minute) = self.get(index) {
                requests += f64::from(minute.requests) * weight;
                errors += f64::from(minute.errors) * weight;
                for (sum, n) in latency.iter_mut().zip(minute.latency) {
                    *sum = sum.saturating_add(n);
                }
            }
        }
        let requests_last_hour = self
            .points(now_secs)
            .iter()
            .map(|p| u64::from(p.requests))
            .sum();
        Live {
            requests_per_second: round(requests / 60.0),
            error_rate: (requests > 0.0).then(|| (errors / requests * 10_000.0).round() / 10_000.0),
            p50_ms: quantile(&latency, 0.50),
            p95_ms: quantile(&latency, 0.95),
            requests_last_hour,
        }
    }

    /// The last [`MINUTES`] minutes up to `now_secs`, oldest first, empty
    /// minutes included (a chart's x axis has no gaps).
    fn points(&self, now_secs: u64) -> Vec<Point> {
        let current = now_secs / 60;
        (0..MINUTES as u64)
            .rev()
            .filter_map(|back| current.checked_sub(back))
            .map(|index| match self.get(index) {
                Some(minute) => Point {
                    minute: index * 60,
                    requests: minute.requests,
                    errors: minute.errors,
                    p95_ms: quantile(&minute.latency, 0.95),
                },
                None => Point {
                    minute: index * 60,
                    requests: 0,
                    errors: 0,
                    p95_ms: None,
                },
            })
            .collect()
    }
}

/// Every server's series, by server name.
#[derive(Debug, Default)]
pub struct History {
    servers: Mutex<HashMap<String, Series>>,
}

impl History {
    /// A request to `server` finished after `elapsed`; `failed`: it got an
    /// error (from mcpod or, as a JSON-RPC error, from the server).
    pub fn record(&self, server: &str, elapsed: Duration, failed: bool) {
        self.record_at(now_secs(), server, elapsed, failed);
    }

    fn record_at(&self, now_secs: u64, server: &str, elapsed: Duration, failed: bool) {
        let mut servers = self.servers.lock().unwrap();
        // Looked up before inserting: the name is copied once per server, not per request.
        let series = match servers.get_mut(server) {
            Some(series) => series,
            None => servers
                .entry(server.to_string())
                .or_insert_with(Series::new),
        };
        series.record(now_secs, elapsed, failed);
    }

    /// `server`'s live figures and last hour.
    pub fn of(&self, server: &str) -> (Live, Vec<Point>) {
        self.of_at(now_secs(), server)
    }

    fn of_at(&self, now_secs: u64, server: &str) -> (Live, Vec<Point>) {
        let servers = self.servers.lock().unwrap();
        match servers.get(server) {
            Some(series) => (series.live(now_secs), series.points(now_secs)),
            None => (Live::default(), Series::new().points(now_secs)),
        }
    }

    /// Forgets servers not in `names` (removed ones).
    pub fn retain(&self, names: &[&str]) {
        self.servers
            .lock()
            .unwrap()
            .retain(|name, _| names.contains(&name.as_str()));
    }
}

/// The router's history, fed by every request ([`record`]).
pub static HISTORY: LazyLock<History> = LazyLock::new(History::default);

/// Records one finished request of `server` (see [`History::record`]).
pub fn record(server: &str, elapsed: Duration, failed: bool) {
    HISTORY.record(server, elapsed, failed);
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000 / 60 * 60; // a minute's start

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_fall_within_a_bucket_of_the_truth() {
        let history = History::default();
        // 90 fast requests, 10 slow ones: p50 is fast, p95 slow.
        for _ in 0..90 {
            history.record_at(T0 + 5, "a", ms(10), false);
        }
        for _ in 0..10 {
            history.record_at(T0 + 5, "a", ms(400), true);
        }
        let (live, _) = history.of_at(T0 + 30, "a");
        let p50 = live.p50_ms.unwrap();
        let p95 = live.p95_ms.unwrap();
        assert!((10.0..=12.5).contains(&p50), "p50 {p50}");
        assert!((400.0..=500.0).contains(&p95), "p95 {p95}");
        assert_eq!(live.error_rate, Some(0.1));
        assert_eq!(live.requests_last_hour, 100);
        // 100 requests in the current minute: 100/60 per second.
        assert_eq!(live.requests_per_second, 1.67);
    }

    #[test]
    fn the_window_slides_and_old_minutes_are_forgotten() {
        let history = History::default();
        for _ in 0..60 {
            history.record_at(T0 + 1, "a", ms(5), false);
        }
        // Half a minute later in the next minute, half the previous one counts.
        let (live, _) = history.of_at(T0 + 90, "a");
        assert_eq!(live.requests_per_second, 0.5);
        // Two minutes on, nothing is live, but the hour still holds it.
        let (live, points) = history.of_at(T0 + 150, "a");
        assert_eq!(live.requests_per_second, 0.0);
        assert_eq!(live.error_rate, None);
        assert_eq!(live.requests_last_hour, 60);
        assert_eq!(points.len(), MINUTES);
        assert_eq!(points.last().unwrap().minute, T0 + 120);
        let point = points.iter().find(|p| p.minute == T0).unwrap();
        assert_eq!(point.requests, 60);
        // An hour later the minute's slot is reused: the old count is gone.
        history.record_at(T0 + 3600 + 1, "a", ms(5), false);
        let (live, points) = history.of_at(T0 + 3600 + 2, "a");
        assert_eq!(live.requests_last_hour, 1);
        assert!(points.iter().all(|p| p.minute > T0));
    }

    #[test]
    fn memory_is_bounded_by_servers_not_requests() {
        let history = History::default();
        for second in 0..(3 * 3600) {
            history.record_at(T0 + second, "a", ms(second % 1000), second % 7 == 0);
        }
        let servers = history.servers.lock().unwrap();
        assert_eq!(servers["a"].minutes.len(), MINUTES);
        drop(servers);
        history.record_at(T0, "b", ms(1), false);
        history.retain(&["b"]);
        assert_eq!(history.of_at(T0, "a").0, Live::default());
        assert_eq!(history.of_at(T0, "b").0.requests_last_hour, 1);
    }

    #[test]
    fn extreme_durations_land_in_the_end_buckets() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_secs(100_000)), LATENCY_BUCKETS - 1);
        assert!(bound_ms(LATENCY_BUCKETS - 1) > 120_000.0);
        for ms in [1u64, 7, 100, 2500] {
            let i = bucket_of(Duration::from_millis(ms));
            assert!(bound_ms(i) >= ms as f64 && (i == 0 || bound_ms(i - 1) < ms as f64));
        }
    }
}
