//! The shutdown signal: SIGTERM or SIGINT starts a graceful drain; a second one exits now.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// Fires the shutdown.
pub struct Trigger(watch::Sender<Option<&'static str>>);

/// Waits for the shutdown; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<Option<&'static str>>);

/// A connected trigger and receiver.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(None);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Starts the shutdown, naming its cause (e.g. "SIGTERM").
    pub fn fire(&self, cause: &'static str) {
        self.0.send_if_modified(|v| {
            let first = v.is_none();
            if first {
                *v = Some(cause);
            }
            first
        });
    }
}

impl Shutdown {
    /// Resolves with the cause once the shutdown has started (at once if it already has).
    pub async fn requested(&self) -> &'static str {
        let mut rx = self.0.clone();
        let cause = rx.wait_for(Option::is_some).await.map(|v| *v);
        match cause {
            Ok(v) => v.unwrap_or("shutdown"),
            // The trigger is gone without firing: nothing will ever stop us this way.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The signals moat handles, installed before it says it listens: a signal sent the moment
/// the listening line appears must not meet the default action (which, for SIGHUP, would
/// terminate the process).
pub struct Signals {
    term: Signal,
    int: Signal,
    /// SIGHUP: a reload (see `Control::reload_on`).
    pub hup: Signal,
}

impl Signals {
    /// The SIGTERM/SIGINT watch and SIGHUP, apart.
    pub fn split(self) -> ((Signal, Signal), Signal) {
        ((self.term, self.int), self.hup)
    }

    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Fires `trigger` on the first SIGTERM or SIGINT; exits the process at once on a second.
pub async fn watch_signals(mut term: Signal, mut int: Signal, trigger: Trigger) {
    let mut fired = false;
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if fired {
            eprintln!("moat: second {name}: exiting without waiting for connections");
            std::process::exit(1);
        }
        fired = true;
        trigger.fire(name);
    }
}
