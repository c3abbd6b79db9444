//! The per-region circuit breaker. After `failures` consecutive failed upstream requests the
//! region is open: requests fail at once (the cache may still serve them stale) instead of
//! piling up on a dead backend. When the cool-down ends, one trial request is let through; a
//! success closes the circuit, a failure opens it again for twice as long (up to a cap).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::config::CircuitPolicy;
use crate::metrics::RegionMetrics;

/// One region's breaker.
#[derive(Debug)]
pub(crate) struct Circuit {
    policy: CircuitPolicy,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// Fast path: false while closed, so healthy traffic never takes the lock.
    open: AtomicBool,
    /// While open: when the next trial may go, and the current cool-down.
    state: Mutex<OpenState>,
    metrics: RegionMetrics,
}

#[derive(Debug)]
struct OpenState {
    next_trial: Instant,
    cooldown: Duration,
}

/// The circuit is open: the region is not asked.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CircuitOpen;

impl Circuit {
    /// A closed breaker.
    pub(crate) fn new(policy: CircuitPolicy, metrics: RegionMetrics) -> Circuit {
        Circuit {
            policy,
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            state: Mutex::new(OpenState {
                next_trial: Instant::now(),
                cooldown: policy.open_for,
            }),
            metrics,
        }
    }

    /// Whether a request may go upstream now. While open, only one trial per cool-down passes.
    pub(crate) fn admit(&self) -> Result<(), CircuitOpen> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        if now < state.next_trial {
            return Err(CircuitOpen);
        }
        // This request is the trial; if its outcome never comes, another follows a
        // cool-down later.
        state.next_trial = now + state.cooldown;
        Ok(())
    }

    /// Records a request that reached the backend and got a usable answer.
    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open.swap(false, Ordering::AcqRel) {
            if let Ok(mut state) = self.state.lock() {
                state.cooldown = self.policy.open_for;
            }
            self.metrics.circuit_open.set(0);
            tracing::info!(region = %self.metrics.region, "circuit closed: the backend answers again");
        }
    }

    /// Records a failed request (unreachable, timed out, 5xx after retries).
    pub(crate) fn failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if self.policy.failures == 0 {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        if self.open.load(Ordering::Acquire) {
            // A failed trial: back off further.
            state.cooldown = (state.cooldown * 2).min(self.policy.max_open_for);
            state.next_trial = now + state.cooldown;
        } else if failures >= self.policy.failures {
            state.cooldown = self.policy.open_for;
            state.next_trial = now + state.cooldown;
            self.open.store(true, Ordering::Release);
            self.metrics.circuit_open.set(1);
            tracing::warn!(
                region = %self.metrics.region,
                failures,
                cooldown = ?state.cooldown,
                "circuit open: failing fast (or serving stale) until a trial request succeeds"
            );
        }
    }

    /// Whether requests currently fail fast.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn circuit(failures: u32, open_for_ms: u64) -> Circuit {
        let policy = CircuitPolicy {
            failures,
            open_for: Duration::from_millis(open_for_ms),
            max_open_for: Duration::from_millis(open_for_ms * 4),
        };
        Circuit::new(policy, Metrics::new(None).region(&"eu1".into()))
    }

    #[test]
    fn opens_after_consecutive_failures_and_lets_one_trial_through() {
        let c = circuit(3, 50);
        c.failure();
        c.failure();
        c.success();
        c.failure();
        c.failure();
        assert!(c.admit().is_ok(), "a success in between resets the count");
        c.failure();
        assert!(c.is_open());
        assert!(c.admit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.admit().is_ok(), "the trial");
        assert!(c.admit().is_err(), "only one trial per cool-down");
        c.success();
        assert!(!c.is_open());
        assert!(c.admit().is_ok());
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown() {
        let c = circuit(1, 100);
        c.failure();
        std::thread::sleep(Duration::from_millis(110));
        assert!(c.admit().is_ok());
        c.failure();
        std::thread::sleep(Duration::from_millis(10));
        assert!(c.admit().is_err(), "now 200 ms");
        std::thread::sleep(Duration::from_millis(200));
        assert!(c.admit().is_ok());
    }

    #[test]
    fn zero_failures_never_opens() {
        let c = circuit(0, 10);
        for _ in 0..100 {
            c.failure();
        }
        assert!(c.admit().is_ok());
    }
}
