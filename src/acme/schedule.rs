//! When to ask the CA: the renewal time of a certificate and the wait after failures. Pure
//! functions of timestamps, tested without a clock.

use std::time::Duration;

use crate::tls::certs;
use crate::tls::sni::{Domain, Origin};

/// Renew this long before notAfter by default...
pub const DEFAULT_RENEW_BEFORE: i64 = 30 * 86_400;
/// The longest wait between two attempts after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// When a certificate valid from `not_before` to `not_after` (Unix seconds) is renewed:
/// `renew_before` ahead of notAfter (default 30 days, or a third of the lifetime when that
/// is shorter, as for short-lived certificates), and never before a third of the lifetime
/// has passed, so that a `renew_before` longer than the lifetime cannot renew in a loop.
pub fn renewal_time(not_before: i64, not_after: i64, renew_before: Option<Duration>) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    let third = lifetime / 3;
    let before = match renew_before {
        Some(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        None => DEFAULT_RENEW_BEFORE.min(third),
    };
    not_after
        .saturating_sub(before)
        .max(not_before.saturating_add(third))
}

/// The wait after `failures` failed attempts in a row (at least 1): `min` doubled per
/// failure up to [`MAX_RETRY`], then scaled into [½, 1] by `jitter` (in [0, 1)), so that
/// many nodes that failed together do not retry together.
pub fn backoff(failures: u32, min: Duration, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(32);
    let full = min
        .checked_mul(1u32 << doublings.min(31))
        .unwrap_or(MAX_RETRY)
        .min(MAX_RETRY)
        .max(min);
    full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// Why a domain needs a certificate now, or when it next will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Now, for this reason.
    Now(&'static str),
    /// At this Unix time.
    At(i64),
}

/// When the domain served as `served` needs its next certificate, given the names it is
/// configured for.
pub fn due(served: Option<&Domain>, renew_before: Option<Duration>, now: i64) -> Due {
    let Some(d) = served else {
        return Due::Now("no certificate yet");
    };
    match d.origin {
        Origin::Placeholder => return Due::Now("no certificate yet"),
        Origin::Kept => return Due::Now("its files are missing or unusable"),
        Origin::Files => {}
    }
    let leaf = d
        .key
        .end_entity_cert()
        .ok()
        .and_then(|der| certs::leaf(der, std::path::Path::new("served")).ok());
    let Some(leaf) = leaf else {
        return Due::Now("the served certificate cannot be read");
    };
    let covered = d
        .hostnames
        .iter()
        .all(|h| leaf.names.iter().any(|n| certs::covers(n, h)));
    if !covered {
        return Due::Now("the configured hostnames changed");
    }
    if leaf.not_after <= now {
        return Due::Now("the certificate has expired");
    }
    match renewal_time(leaf.not_before, leaf.not_after, renew_before) {
        at if at <= now => Due::Now("inside its renewal window"),
        at => Due::At(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    #[test]
    fn a_90_day_certificate_renews_30_days_ahead() {
        assert_eq!(renewal_time(0, 90 * DAY, None), 60 * DAY);
    }

    #[test]
    fn a_short_lived_certificate_renews_with_a_third_of_its_life_left() {
        assert_eq!(renewal_time(0, 6 * DAY, None), 4 * DAY);
        assert_eq!(renewal_time(100, 130, None), 120);
    }

    #[test]
    fn a_long_lived_certificate_still_renews_30_days_ahead() {
        assert_eq!(renewal_time(0, 397 * DAY, None), 367 * DAY);
    }

    #[test]
    fn renew_before_longer_than_the_lifetime_cannot_loop() {
        let at = renewal_time(1000, 1030, Some(Duration::from_secs(3600)));
        assert_eq!(at, 1010, "a third of the lifetime passes first");
        assert_eq!(
            renewal_time(0, 90 * DAY, Some(Duration::from_secs(10 * DAY as u64))),
            80 * DAY
        );
    }

    fn served(hostnames: &[&str], names: &[&str], not_before: i64, not_after: i64) -> Domain {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        let cert = p.self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Domain {
            name: "d".into(),
            key: std::sync::Arc::new(rustls::sign::CertifiedKey::new(
                vec![cert.der().clone()],
                signing,
            )),
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            not_after: Some(not_after),
            serial: String::new(),
            not_before: Some(not_before),
            issuer: String::new(),
            origin: Origin::Files,
        }
    }

    #[test]
    fn a_certificate_is_due_at_its_renewal_time_and_at_once_inside_the_window() {
        let t0 = 1_900_000_000;
        let d = served(&["*.x.moat.test"], &["*.x.moat.test"], t0, t0 + 90 * DAY);
        assert_eq!(due(Some(&d), None, t0 + DAY), Due::At(t0 + 60 * DAY));
        assert_eq!(
            due(Some(&d), None, t0 + 60 * DAY),
            Due::Now("inside its renewal window")
        );
        assert_eq!(
            due(Some(&d), None, t0 + 91 * DAY),
            Due::Now("the certificate has expired")
        );
    }

    #[test]
    fn a_missing_name_or_certificate_is_due_now() {
        let t0 = 1_900_000_000;
        let d = served(
            &["db1.moat.test", "db2.moat.test"],
            &["db1.moat.test"],
            t0,
            t0 + 90 * DAY,
        );
        assert_eq!(
            due(Some(&d), None, t0 + DAY),
            Due::Now("the configured hostnames changed")
        );
        assert_eq!(due(None, None, t0), Due::Now("no certificate yet"));
        let mut kept = served(&["db1.moat.test"], &["db1.moat.test"], t0, t0 + 90 * DAY);
        kept.origin = Origin::Kept;
        assert_eq!(
            due(Some(&kept), None, t0 + DAY),
            Due::Now("its files are missing or unusable")
        );
    }

    #[test]
    fn backoff_doubles_up_to_six_hours_and_jitters_within_half() {
        let min = Duration::from_secs(60);
        assert_eq!(backoff(1, min, 0.999_999).as_secs(), 59);
        assert_eq!(backoff(1, min, 0.0), Duration::from_secs(30));
        assert_eq!(backoff(3, min, 0.0), Duration::from_secs(120));
        assert_eq!(backoff(40, min, 0.0), MAX_RETRY / 2);
        assert_eq!(backoff(u32::MAX, min, 1.0), MAX_RETRY);
        let ms = Duration::from_millis(200);
        assert!(backoff(2, ms, 0.5) >= ms && backoff(2, ms, 0.5) <= ms * 2);
    }
}
