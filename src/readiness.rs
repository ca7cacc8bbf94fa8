//! What moat knows about the upstream's reachability, for `/readyz` and
//! `moat_upstream_ready`: every connect attempt (a client's or the prober's) is recorded.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::clock;

/// The upstream's reachability as last seen.
#[derive(Default)]
pub struct Readiness {
    /// Unix milliseconds of the last connect attempt (probe or client), 0 = none yet.
    last_attempt: AtomicU64,
    last_ok: AtomicBool,
    /// Unix milliseconds of the last successful connect.
    last_success: AtomicU64,
    last_error: Mutex<String>,
    shutting_down: AtomicBool,
    /// The probe interval in milliseconds (0 = no prober: `[metrics]` not configured).
    interval_ms: AtomicU64,
}

/// Why moat is not ready for new clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    ShuttingDown,
    NoConnectYet,
    Unreachable(String),
    Stale { millis: u64 },
}

impl NotReady {
    /// Says why, naming the upstream.
    pub fn explain(&self, upstream: &str) -> String {
        match self {
            NotReady::ShuttingDown => "shutting down".into(),
            NotReady::NoConnectYet => format!("no connect to upstream {upstream} yet"),
            NotReady::Unreachable(e) => format!("upstream {upstream} unreachable: {e}"),
            NotReady::Stale { millis } => {
                format!("no successful connect to upstream {upstream} for {millis} ms")
            }
        }
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explain("the upstream"))
    }
}

impl Readiness {
    /// Records an upstream connect attempt.
    pub fn record(&self, result: Result<(), &std::io::Error>) {
        let now = clock::unix_millis();
        match result {
            Ok(()) => {
                self.last_success.store(now, Ordering::Relaxed);
                self.last_ok.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut s) = self.last_error.lock() {
                    *s = e.to_string();
                }
                self.last_ok.store(false, Ordering::Relaxed);
            }
        }
        self.last_attempt.store(now, Ordering::Relaxed);
    }

    /// The process has begun to shut down: not ready for new clients.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// How often the prober looks: readiness allows three intervals without a success.
    pub fn set_interval(&self, interval: Duration) {
        self.interval_ms
            .store(interval.as_millis() as u64, Ordering::Relaxed);
    }

    /// `Ok` when ready; otherwise why not. Ready means: not shutting down, and the latest
    /// connect attempt succeeded within three probe intervals.
    pub fn check(&self) -> Result<(), NotReady> {
        let window = Duration::from_millis(3 * self.interval_ms.load(Ordering::Relaxed).max(1000));
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(NotReady::ShuttingDown);
        }
        if self.last_attempt.load(Ordering::Relaxed) == 0 {
            return Err(NotReady::NoConnectYet);
        }
        if !self.last_ok.load(Ordering::Relaxed) {
            let e = self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Err(NotReady::Unreachable(e));
        }
        let age = clock::unix_millis().saturating_sub(self.last_success.load(Ordering::Relaxed));
        if age > window.as_millis() as u64 {
            return Err(NotReady::Stale { millis: age });
        }
        Ok(())
    }

    /// Milliseconds since the last attempt.
    pub fn idle_ms(&self) -> u64 {
        clock::unix_millis().saturating_sub(self.last_attempt.load(Ordering::Relaxed))
    }
}
