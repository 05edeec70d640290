//! Giving freed memory back to the system. glibc's allocator keeps the heap
//! pages it frees for reuse, so after a burst — 20,000 sessions ending, large
//! batches answered, a server's backlog refused — mcpod's RSS would stay at
//! its peak for good. `malloc_trim` returns what is free; a few milliseconds
//! on a heap this size, every few seconds, off the request path.

use std::time::Duration;

/// How often freed memory is given back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Gives freed heap memory back to the system every `interval`, forever.
pub fn spawn_trimmer(interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
