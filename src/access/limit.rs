//! Rate limits: token buckets per subject (router-wide), per server and per
//! subject on a server. Memory stays bounded: a bucket that has refilled
//! completely is the same as a new one, so such buckets are dropped whenever
//! the table grows, and past [`MAX_BUCKETS`] the least recently used goes too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::spec::Rate;

/// Most buckets kept at once (each is a few dozen bytes plus its key).
pub const MAX_BUCKETS: usize = 100_000;
/// Table size below which no sweep happens (but for [`SWEEP_EVERY`]).
const FIRST_SWEEP: usize = 1024;
/// Longest time between two sweeps, so a table that stopped growing shrinks.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Which bucket: what it limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// One subject, across all servers (`--subject-requests-per-minute`).
    Subject(String),
    /// One server, all callers together.
    Server(String),
    /// One subject on one server (`spec.access.rateLimit.perSubject`).
    SubjectOnServer(String, String),
}

impl Key {
    /// For the refusal: which limit was hit.
    pub fn describe(&self) -> String {
        match self {
            Key::Subject(subject) => format!("the limit of requests for '{subject}'"),
            Key::Server(server) => format!("the limit of requests to server '{server}'"),
            Key::SubjectOnServer(server, subject) => {
                format!("the limit of requests for '{subject}' to server '{server}'")
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    rate: Rate,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        // A changed spec applies at once, within the new size.
        self.rate = rate;
        self.tokens = (self.tokens + elapsed * rate.per_second()).min(rate.capacity());
        self.last = now;
    }

    fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate.per_second() >= self.rate.capacity()
    }

    /// How long until one token is there.
    fn wait(&self) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / self.rate.per_second())
    }
}

#[derive(Default)]
pub struct Limiter {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<Key, Bucket>,
    sweep_at: usize,
    swept: Option<Instant>,
}

/// Over a limit: which, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub key: Key,
    pub retry_after: Duration,
}

impl Limiter {
    /// Takes one token from each bucket, or from none when one is empty
    /// (then: the one that makes the caller wait longest).
    pub fn take(&self, limits: &[(Key, Rate)], now: Instant) -> Result<(), Limited> {
        if limits.is_empty() {
            return Ok(());
        }
        let mut state = self.state.lock().unwrap();
        let mut limited: Option<Limited> = None;
        for (key, rate) in limits {
            if !state.buckets.contains_key(key) {
                state.make_room(now);
            }
            let bucket = state.buckets.entry(key.clone()).or_insert(Bucket {
                tokens: rate.capacity(),
                last: now,
                rate: *rate,
            });
            bucket.refill(*rate, now);
            if bucket.tokens < 1.0 {
                let wait = bucket.wait();
                if limited.as_ref().is_none_or(|l| l.retry_after < wait) {
                    limited = Some(Limited {
                        key: key.clone(),
                        retry_after: wait,
                    });
                }
            }
        }
        if let Some(limited) = limited {
            return Err(limited);
        }
        for (key, _) in limits {
            if let Some(bucket) = state.buckets.get_mut(key) {
                bucket.tokens -= 1.0;
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State {
    /// Before a new bucket: drops full buckets when the table has grown, and the
    /// least recently used one at the cap.
    fn make_room(&mut self, now: Instant) {
        let due = self
            .swept
            .is_none_or(|swept| now.saturating_duration_since(swept) >= SWEEP_EVERY);
        if due || self.buckets.len() >= self.sweep_at.max(FIRST_SWEEP) {
            self.buckets.retain(|_, bucket| !bucket.full(now));
            self.sweep_at = self.buckets.len() * 2;
            self.swept = Some(now);
        }
        if self.buckets.len() >= MAX_BUCKETS {
            let oldest = self
                .buckets
                .iter()
                .min_by_key(|(_, bucket)| bucket.last)
                .map(|(key, _)| key.clone());
            if let Some(key) = oldest {
                self.buckets.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate::new(per_minute, Some(burst)).unwrap()
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_refills_at_its_rate() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let limits = [(Key::Subject("alice".into()), rate(60, 3))];
        for _ in 0..3 {
            assert!(limiter.take(&limits, start).is_ok());
        }
        let limited = limiter.take(&limits, start).unwrap_err();
        assert_eq!(limited.key, Key::Subject("alice".into()));
        assert_eq!(
            limited.retry_after,
            Duration::from_secs(1),
            "one per second"
        );
        assert!(limiter
            .take(&limits, start + Duration::from_millis(500))
            .is_err());
        assert!(limiter
            .take(&limits, start + Duration::from_secs(1))
            .is_ok());
        let bob = [(Key::Subject("bob".into()), rate(60, 3))];
        assert!(limiter.take(&bob, start).is_ok(), "buckets are per key");
    }

    #[test]
    fn an_empty_bucket_takes_nothing_from_the_others() {
        let limiter = Limiter::default();
        let now = Instant::now();
        let server = (Key::Server("s".into()), rate(60, 10));
        let alice = (
            Key::SubjectOnServer("s".into(), "alice".into()),
            rate(60, 1),
        );
        assert!(limiter.take(&[server.clone(), alice.clone()], now).is_ok());
        for _ in 0..5 {
            assert!(limiter.take(&[server.clone(), alice.clone()], now).is_err());
        }
        // The server bucket lost one token only: nine more for someone else.
        let bob = (
            Key::SubjectOnServer("s".into(), "bob".into()),
            rate(60, 100),
        );
        let passed = (0..20)
            .filter(|_| limiter.take(&[server.clone(), bob.clone()], now).is_ok())
            .count();
        assert_eq!(passed, 9);
    }

    #[test]
    fn idle_buckets_are_dropped_and_the_table_stays_bounded() {
        let limiter = Limiter::default();
        let start = Instant::now();
        for n in 0..FIRST_SWEEP * 3 {
            let limits = [(Key::Subject(format!("s{n}")), rate(600, 5))];
            limiter.take(&limits, start).unwrap();
        }
        assert_eq!(limiter.len(), FIRST_SWEEP * 3, "none refilled yet");
        // A minute later every bucket is full again: the next new one sweeps them.
        let later = start + SWEEP_EVERY;
        limiter
            .take(&[(Key::Subject("new".into()), rate(600, 5))], later)
            .unwrap();
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn default_burst_is_ten_seconds_worth() {
        assert_eq!(Rate::new(600, None).unwrap().capacity(), 100.0);
        assert_eq!(Rate::new(1, None).unwrap().capacity(), 1.0);
        assert_eq!(Rate::new(0, Some(5)), None);
    }
}
