//! The accept loop: connection permits, one task per connection, graceful drain.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::conn;
use crate::events;
use crate::firewall::normalize_addr;
use crate::policy::RejectReason;
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// First pause after an accept error such as EMFILE; it doubles while errors go on.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between accept attempts: how late moat notices that descriptors are free.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Accept errors are reported at most this often, with the count since the last report.
const ACCEPT_REPORT_EVERY: Duration = Duration::from_secs(1);

/// How far the open connections must fall from their peak (sampled each second) before
/// freed memory is handed back to the OS (see [`return_freed_memory`]).
const TRIM_AFTER_CLOSED: usize = 1024;

/// Accepts until `shutdown` fires, then waits for every task on `tracker` (client and
/// egress connections) up to the configured `shutdown_timeout`. Returns the number of
/// connections still open when it gave up.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) -> usize {
    let max = shared.settings().max_connections;
    let permits = Arc::new(Semaphore::new(max));
    let mut errors = AcceptErrors::default();
    let trim = tokio::spawn(return_freed_memory(shared.clone()));
    let signal = loop {
        let accepted = tokio::select! {
            biased;
            signal = shutdown.requested() => break signal,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                errors.succeeded();
                x
            }
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                // Sleeping here, not in a select with shutdown: the pause is short.
                tokio::time::sleep(errors.failed(&e)).await;
                continue;
            }
        };
        // The firewall decides before anything is read. A trusted load balancer's
        // connections are judged on the client its PROXY header names, in the task.
        let trusted = shared.settings().trusts_proxy(peer.ip());
        if !trusted && shared.admit(peer).is_err() {
            drop(tcp);
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.rejected(RejectReason::Limit);
            if shared.refusal_log.allow() {
                events::refused_limit(normalize_addr(peer), max);
            }
            drop(tcp);
            continue;
        };
        let shared = shared.clone();
        tracker.spawn(conn::handle(tcp, peer, trusted, shared, permit));
    };
    // Closed before the line that says so: from then on the kernel refuses new clients.
    drop(listener);
    trim.abort();
    shared.readiness.shutting_down();
    let timeout = shared.settings().shutdown_timeout;
    events::shutdown_started(signal, shared.open_connections(), timeout);
    tracker.close();
    let drained = tokio::time::timeout(timeout, tracker.wait()).await;
    let remaining = if drained.is_ok() { 0 } else { tracker.len() };
    events::shutdown_done(remaining);
    remaining
}

/// Errors that concern one connection that died in the backlog, not the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

/// A run of failed accepts (out of descriptors: EMFILE, ENFILE; out of memory: ENOBUFS,
/// ENOMEM). The connections wait in the listen backlog meanwhile, so each retry is only a
/// syscall: retries back off, and the log gets one line a second with a count instead of
/// one line a retry.
#[derive(Debug)]
pub struct AcceptErrors {
    backoff: Duration,
    /// Failures since the last report.
    unreported: u64,
    last_report: Option<Instant>,
    /// The current run: failures and when it began.
    run: u64,
    since: Option<Instant>,
}

impl Default for AcceptErrors {
    fn default() -> Self {
        AcceptErrors {
            backoff: ACCEPT_BACKOFF_MIN,
            unreported: 0,
            last_report: None,
            run: 0,
            since: None,
        }
    }
}

impl AcceptErrors {
    /// Notes a failed accept, reports it if a second has passed since the last report,
    /// and returns how long to wait before the next attempt.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        let now = Instant::now();
        self.unreported += 1;
        self.run += 1;
        let since = *self.since.get_or_insert(now);
        if self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= ACCEPT_REPORT_EVERY)
        {
            events::accept_failing(e, self.unreported, self.run, now.duration_since(since));
            self.unreported = 0;
            self.last_report = Some(now);
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        wait
    }

    /// Notes a successful accept; after a run of failures, says that accepting works again.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            events::accept_recovered(self.run, since.elapsed());
            *self = AcceptErrors::default();
        }
    }
}

/// After a burst of connections has closed (a slowloris, a reconnect storm), hands the
/// freed heap back to the OS. glibc keeps freed pages mapped unless the top of a heap is
/// free, so without this the process would stay at its peak size after thousands of
/// connections have come and gone.
async fn return_freed_memory(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut peak = 0;
    loop {
        every.tick().await;
        let open = shared.open_connections();
        peak = peak.max(open);
        if peak - open >= TRIM_AFTER_CLOSED {
            trim_heap();
            peak = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_back_off_to_the_cap_and_start_over_after_a_success() {
        let mut e = AcceptErrors::default();
        let waits: Vec<u64> = (0..8)
            .map(|_| e.failed(&emfile()).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 500, 500]);
        e.succeeded();
        assert_eq!(e.failed(&emfile()), ACCEPT_BACKOFF_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_are_reported_at_most_once_a_second_with_the_count() {
        let mut e = AcceptErrors::default();
        e.failed(&emfile());
        assert_eq!(e.unreported, 0, "the first one is reported at once");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_millis(150)).await;
            e.failed(&emfile());
        }
        assert_eq!(e.unreported, 5, "held back within the second");
        tokio::time::advance(Duration::from_millis(300)).await;
        e.failed(&emfile());
        assert_eq!(e.unreported, 0, "six reported together after a second");
        assert_eq!(e.run, 7);
    }
}
