//! Certificates from an ACME CA (RFC 8555), per `[tls.domains.acme]`: issuance
//! ([`issue`]), the tls-alpn-01 answers moat gives on its own port ([`alpn`]), when to
//! renew ([`schedule`]), and what each domain's renewal last did ([`State`]), for `moat
//! ctl status` and the metrics. The task that renews lives in the control plane
//! (`admin::renew`), which swaps the new certificate in as a reload does.

pub mod alpn;
pub mod issue;
pub mod schedule;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metrics::Scrape;

/// What a domain's renewal last did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainStatus {
    /// When the next attempt is due, Unix seconds.
    pub next_renewal: Option<i64>,
    /// The last failure, when the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
    /// When the last failure happened, Unix seconds (kept after a success).
    pub last_error_at: Option<i64>,
}

/// The ACME side of moat's shared state: the tls-alpn-01 answers in force and each ACME
/// domain's status, by the operator's domain name.
#[derive(Debug, Default)]
pub struct State {
    pub challenges: alpn::Challenges,
    status: Mutex<HashMap<String, DomainStatus>>,
}

impl State {
    /// Changes the status of `domain` (created when new).
    pub fn update(&self, domain: &str, f: impl FnOnce(&mut DomainStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(s.entry(domain.to_string()).or_default());
        }
    }

    /// Forgets the domains no longer configured for ACME.
    pub fn retain(&self, domains: &[&str]) {
        if let Ok(mut s) = self.status.lock() {
            s.retain(|name, _| domains.contains(&name.as_str()));
        }
    }

    /// The status of `domain`, if it is an ACME domain.
    pub fn status(&self, domain: &str) -> Option<DomainStatus> {
        self.status.lock().ok()?.get(domain).cloned()
    }

    /// `moat_acme_last_error_timestamp_seconds` and `moat_acme_next_renewal_timestamp_seconds`.
    pub fn export(&self, s: &mut Scrape) {
        let Ok(status) = self.status.lock() else {
            return;
        };
        let mut names: Vec<&String> = status.keys().collect();
        names.sort();
        s.gauge(
            "moat_acme_next_renewal_timestamp_seconds",
            "When each ACME domain's certificate is next requested (a retry after a failure), Unix seconds.",
            Some("domain"),
            names
                .iter()
                .filter_map(|n| Some((n.as_str(), status[*n].next_renewal?))),
        );
        s.gauge(
            "moat_acme_last_error_timestamp_seconds",
            "When each ACME domain's last failed request happened, Unix seconds (0: never).",
            Some("domain"),
            names
                .iter()
                .map(|n| (n.as_str(), status[*n].last_error_at.unwrap_or(0))),
        );
    }
}
