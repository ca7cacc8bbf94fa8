//! Keeping ACME certificates issued: one task per `[tls.domains.acme]`, started, stopped
//! or restarted as reloads change the domains. Each asks the CA when its certificate is
//! due (or missing), writes what comes back, and swaps it in as a reload does; a failure
//! leaves the certificate in service alone and is retried with backoff and jitter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::ops::Control;
use crate::acme::issue;
use crate::acme::schedule::{self, Due};
use crate::clock;
use crate::config::DomainConfig;
use crate::events;

/// Sleeps are cut into pieces this long at most, so that a wall-clock change (or a host
/// suspended for a while) is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

impl Control {
    /// Runs one renewal task per ACME domain, following the domains each reload brings.
    pub async fn renew_certificates(self: Arc<Self>) {
        let mut domains = self.acme_domains.subscribe();
        let mut tasks: HashMap<String, (DomainConfig, JoinHandle<()>)> = HashMap::new();
        loop {
            let wanted: Vec<DomainConfig> = domains.borrow_and_update().clone();
            tasks.retain(|_, (running, task)| {
                let keep = wanted.contains(running);
                if !keep {
                    task.abort();
                }
                keep
            });
            for d in wanted {
                if tasks.contains_key(&d.name) {
                    continue;
                }
                self.shared.metrics.acme_domain(&d.name);
                let task = tokio::spawn(self.clone().renew(d.clone()));
                tasks.insert(d.name.clone(), (d, task));
            }
            let names: Vec<&str> = tasks.keys().map(String::as_str).collect();
            self.shared.acme.retain(&names);
            // A reload may have replaced files: each task looks at what is served again.
            self.renewal_wakeup.notify_waiters();
            if domains.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keeps one domain's certificate issued, until aborted.
    async fn renew(self: Arc<Self>, d: DomainConfig) {
        let Some(a) = d.acme.clone() else {
            return;
        };
        let mut failures = 0u32;
        let mut retry: Option<tokio::time::Instant> = None;
        let mut announced = None;
        loop {
            let now = clock::unix_secs();
            let why = match retry {
                Some(at) if at > tokio::time::Instant::now() => {
                    self.pause(at - tokio::time::Instant::now()).await;
                    continue;
                }
                Some(_) => "retrying after a failure",
                None => {
                    let tls = self.shared.tls();
                    let served = tls.as_deref().and_then(|t| t.domain(&d.name));
                    match schedule::due(served, a.renew_before, now) {
                        Due::Now(why) => why,
                        Due::At(at) => {
                            self.shared
                                .acme
                                .update(&d.name, |s| s.next_renewal = Some(at));
                            if announced != Some(at) {
                                events::acme_scheduled(&d.name, &clock::datetime(at), at - now);
                                announced = Some(at);
                            }
                            self.pause(Duration::from_secs((at - now).max(1) as u64))
                                .await;
                            continue;
                        }
                    }
                }
            };
            self.shared
                .acme
                .update(&d.name, |s| s.next_renewal = Some(now));
            events::acme_requesting(
                &d.name,
                &d.hostnames.join(","),
                a.challenge.as_str(),
                &a.directory,
                why,
            );
            let outcome = match issue::obtain(&d, &a, &self.shared.acme.challenges).await {
                Ok(issued) => match self.swap_tls().await {
                    Ok(()) => Ok(issued),
                    Err(e) => {
                        events::acme_not_served(&d.name, &e);
                        Err(e.to_string())
                    }
                },
                Err(e) => Err(e.to_string()),
            };
            self.shared.metrics.acme_renewal(&d.name, outcome.is_ok());
            match outcome {
                Ok(issued) => {
                    failures = 0;
                    retry = None;
                    self.shared.acme.update(&d.name, |s| s.last_error = None);
                    events::acme_issued(
                        &d.name,
                        &issued.leaf.issuer,
                        &issued.leaf.serial,
                        &clock::datetime(issued.leaf.not_after),
                        issued.took,
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = schedule::backoff(failures, a.retry_min, jitter());
                    retry = Some(tokio::time::Instant::now() + wait);
                    let at = clock::unix_secs() + wait.as_secs() as i64;
                    self.shared.acme.update(&d.name, |s| {
                        s.last_error = Some(e.clone());
                        s.last_error_at = Some(clock::unix_secs());
                        s.next_renewal = Some(at);
                    });
                    events::acme_failed(&d.name, failures, &e, wait);
                }
            }
        }
    }

    /// Waits `d` (at most [`MAX_SLEEP`]), or until a reload wakes every renewal task.
    async fn pause(&self, d: Duration) {
        let woken = self.renewal_wakeup.notified();
        tokio::select! {
            _ = tokio::time::sleep(d.min(MAX_SLEEP)) => {}
            _ = woken => {}
        }
    }
}

/// A number in [0, 1) from the OS RNG, to spread retries.
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    if random.fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
