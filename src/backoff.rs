//! Exponential backoff, one implementation for every retry mcpod schedules:
//! a server's start after failed starts, the operator's reconcile after failed
//! reconciles. Pure: the caller counts failures and waits.

use std::time::Duration;

/// The longest wait, however many failures: a fixed problem is noticed within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long to wait after `failures` consecutive failures: 1 s after the first,
/// doubling with each further one (2 s, 4 s, 8 s …), never more than
/// [`MAX_BACKOFF`]. No failure yet waits like one.
pub fn backoff(failures: u32) -> Duration {
    // 2^16 s is far past the cap already; the shift must not overflow.
    let seconds = 1u64 << failures.saturating_sub(1).min(16);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), MAX_BACKOFF);
        assert_eq!(backoff(30), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn backoff_never_shrinks_as_failures_grow() {
        let waits: Vec<Duration> = (0..70).map(backoff).collect();
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    }
}
