//! The accept loop: connection permits, one task per connection, graceful drain.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::conn;
use crate::events;
use crate::firewall::normalize_addr;
use crate::policy::RejectReason;
use crate::shared::Shared;
use crate::shutdown::Shutdown;

/// Pause after an accept error such as EMFILE, so a full fd table is not a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

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
    let signal = loop {
        let accepted = tokio::select! {
            biased;
            signal = shutdown.requested() => break signal,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                events::accept_error(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
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
        tracker.spawn(async move {
            conn::handle(tcp, peer, trusted, shared).await;
            drop(permit);
        });
    };
    // Closed before the line that says so: from then on the kernel refuses new clients.
    drop(listener);
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
