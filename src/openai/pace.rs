//! How many requests to keep in flight at an endpoint: as many as it sustains, found as TCP
//! finds a window (additive increase, multiplicative decrease).
//!
//! A server that answers one request at a time queues the others: with n in flight each waits
//! n answers, and past the client's timeout every queued request fails at once, is retried,
//! and queues again behind the abandoned ones the server is still computing. The pacer keeps
//! that from starting:
//!
//! * every request holds a slot for all its attempts, so retries never add load;
//! * a request that needed a retry (timeout, 429, 5xx) or took more than a third of the
//!   timeout halves the window (at most once per window's worth of answers, so one burst of
//!   failures is one decrease), down to one;
//! * a clean, quick answer grows the window by 1/window (one slot per window of answers), up
//!   to the ceiling.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// The window of requests in flight.
pub struct Pacer {
    state: Mutex<State>,
    freed: Condvar,
    max: usize,
    slow: Duration,
}

struct State {
    window: f64,
    in_flight: usize,
    /// Answers still to come before the window may shrink again.
    hold: usize,
    shrunk: u64,
}

/// A held slot; dropping it frees the slot.
pub struct Slot<'a>(&'a Pacer);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("pacer lock");
        s.in_flight -= 1;
        self.0.freed.notify_all();
    }
}

impl Pacer {
    /// A window starting at `start` requests, never above `max` (both at least one); an
    /// answer slower than `timeout / 3` counts as a sign of queueing.
    pub fn new(start: usize, max: usize, timeout: Duration) -> Self {
        let max = max.max(1);
        Self {
            state: Mutex::new(State {
                window: start.clamp(1, max) as f64,
                in_flight: 0,
                hold: 0,
                shrunk: 0,
            }),
            freed: Condvar::new(),
            max,
            slow: timeout / 3,
        }
    }

    /// Wait for a slot.
    pub fn slot(&self) -> Slot<'_> {
        let mut s = self.state.lock().expect("pacer lock");
        while s.in_flight >= s.window.floor() as usize {
            s = self.freed.wait(s).expect("pacer lock");
        }
        s.in_flight += 1;
        Slot(self)
    }

    /// Record how a request went: its attempts and the time of its last one.
    pub fn answered(&self, attempts: u32, last: Duration) {
        let mut s = self.state.lock().expect("pacer lock");
        s.hold = s.hold.saturating_sub(1);
        if attempts > 1 || last > self.slow {
            if s.hold == 0 {
                s.window = (s.window / 2.0).max(1.0);
                s.hold = s.window.ceil() as usize + s.in_flight;
                s.shrunk += 1;
                tracing::info!(
                    "endpoint slow or failing: {} request(s) in flight at most now",
                    s.window.floor()
                );
            }
        } else {
            s.window = (s.window + 1.0 / s.window).min(self.max as f64);
        }
        self.freed.notify_all();
    }

    /// Requests allowed in flight now.
    pub fn window(&self) -> usize {
        self.state.lock().expect("pacer lock").window.floor() as usize
    }

    /// Times the window was halved.
    pub fn shrunk(&self) -> u64 {
        self.state.lock().expect("pacer lock").shrunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_halves_once_per_burst_and_grows_back_slowly() {
        let p = Pacer::new(8, 8, Duration::from_secs(30));
        assert_eq!(p.window(), 8);
        // A burst of eight retried requests in flight together: one halving, not eight.
        let slots: Vec<Slot<'_>> = (0..8).map(|_| p.slot()).collect();
        for slot in slots {
            p.answered(2, Duration::from_secs(1));
            drop(slot);
        }
        assert_eq!(p.window(), 4);
        assert_eq!(p.shrunk(), 1);
        // The next burst halves again, down to one and no further.
        for _ in 0..40 {
            p.answered(1, Duration::from_secs(20));
        }
        assert_eq!(p.window(), 1);
        // Clean answers grow it by one per window's worth.
        p.answered(1, Duration::from_millis(10));
        assert_eq!(p.window(), 2);
        for _ in 0..3 {
            p.answered(1, Duration::from_millis(10));
        }
        assert_eq!(p.window(), 3);
        for _ in 0..1000 {
            p.answered(1, Duration::from_millis(10));
        }
        assert_eq!(p.window(), 8, "never above the ceiling");
    }

    #[test]
    fn no_more_than_the_window_are_in_flight() {
        let p = Pacer::new(2, 4, Duration::from_secs(30));
        let peak = std::sync::atomic::AtomicUsize::new(0);
        let now = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..12 {
                sc.spawn(|| {
                    let _slot = p.slot();
                    let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    // Slow answers: the window stays at two or shrinks.
                    p.answered(1, Duration::from_secs(29));
                });
            }
        });
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 2);
        assert_eq!(p.window(), 1);
    }
}
