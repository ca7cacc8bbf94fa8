//! Brute-force throttling: a source address that keeps failing authentication is shut out
//! for a while. moat sees every authentication outcome in the handshake it inspects, so it
//! can do what mongod does not.
//!
//! The table is bounded: at most `max_sources` addresses are tracked; beyond that the
//! least recently seen eighth is forgotten in one sweep, so a scan from a /8 costs memory
//! in proportion to the cap, never to the scan. The accept path takes the lock only while
//! some address is banned.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::firewall::normalize;

/// `[auth_throttle]`, as the throttle applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    /// Failed authentications from one address within `window` that start a ban.
    pub max_failures: u32,
    pub window: Duration,
    pub ban: Duration,
    /// Sources never banned (application subnets).
    pub exempt: Vec<IpNet>,
    /// Addresses tracked at most.
    pub max_sources: usize,
}

/// One address's recent failures.
#[derive(Debug, Clone)]
struct Entry {
    /// Failures counted since `since`.
    failures: u32,
    since: Instant,
    banned_until: Option<Instant>,
    last_seen: Instant,
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub source: IpAddr,
    pub remaining: Duration,
    /// Failures that started it.
    pub failures: u32,
}

/// What one failure did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Counted; no ban (yet), or the source is exempt or throttling is off.
    Counted,
    /// This failure started a ban of the source.
    Banned { failures: u32 },
}

/// The failure table.
pub struct Throttle {
    sources: Mutex<HashMap<IpAddr, Entry>>,
    /// Bans in force (an upper bound: expired ones are dropped lazily).
    banned: AtomicUsize,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            sources: Mutex::new(HashMap::new()),
            banned: AtomicUsize::new(0),
        }
    }
}

impl Throttle {
    /// Records a failed authentication from `ip` at `now`.
    pub fn failure(&self, policy: &Policy, ip: IpAddr, now: Instant) -> Verdict {
        let ip = normalize(ip);
        if !policy.enabled || policy.exempt.iter().any(|n| n.contains(&ip)) {
            return Verdict::Counted;
        }
        let Ok(mut sources) = self.sources.lock() else {
            return Verdict::Counted;
        };
        if !sources.contains_key(&ip) && sources.len() >= policy.max_sources {
            self.forget_oldest(&mut sources, policy.max_sources);
        }
        let e = sources.entry(ip).or_insert(Entry {
            failures: 0,
            since: now,
            banned_until: None,
            last_seen: now,
        });
        e.last_seen = now;
        if e.banned_until.is_some_and(|until| until > now) {
            return Verdict::Counted;
        }
        if now.duration_since(e.since) > policy.window {
            e.failures = 0;
            e.since = now;
        }
        e.failures += 1;
        if e.failures < policy.max_failures {
            return Verdict::Counted;
        }
        let failures = e.failures;
        if e.banned_until.replace(now + policy.ban).is_none() {
            self.banned.fetch_add(1, Ordering::Relaxed);
        }
        e.failures = 0;
        e.since = now;
        Verdict::Banned { failures }
    }

    /// Whether `ip` is banned at `now`. Lock-free while nobody is banned.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.banned.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let ip = normalize(ip);
        let Ok(mut sources) = self.sources.lock() else {
            return false;
        };
        match sources.get_mut(&ip) {
            Some(e) => match e.banned_until {
                Some(until) if until > now => true,
                Some(_) => {
                    e.banned_until = None;
                    self.banned.fetch_sub(1, Ordering::Relaxed);
                    false
                }
                None => false,
            },
            None => false,
        }
    }

    /// The bans in force, longest remaining first.
    pub fn bans(&self, now: Instant) -> Vec<Ban> {
        let Ok(sources) = self.sources.lock() else {
            return Vec::new();
        };
        let mut v: Vec<Ban> = sources
            .iter()
            .filter_map(|(ip, e)| {
                let until = e.banned_until.filter(|u| *u > now)?;
                Some(Ban {
                    source: *ip,
                    remaining: until - now,
                    failures: e.failures.max(1),
                })
            })
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.remaining));
        v
    }

    /// Lifts the ban of `ip` (and forgets its failures), or every ban. Returns how many
    /// bans were lifted.
    pub fn clear(&self, ip: Option<IpAddr>, now: Instant) -> usize {
        let Ok(mut sources) = self.sources.lock() else {
            return 0;
        };
        let mut lifted = 0;
        let mut lift = |e: &mut Entry| {
            if let Some(until) = e.banned_until.take() {
                self.banned.fetch_sub(1, Ordering::Relaxed);
                if until > now {
                    lifted += 1;
                }
            }
            e.failures = 0;
            e.since = now;
        };
        match ip {
            Some(ip) => {
                if let Some(e) = sources.get_mut(&normalize(ip)) {
                    lift(e);
                }
            }
            None => sources.values_mut().for_each(lift),
        }
        lifted
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.lock().map_or(0, |s| s.len())
    }

    /// Drops the least recently seen eighth of the table (bans included: the cap wins).
    fn forget_oldest(&self, sources: &mut HashMap<IpAddr, Entry>, cap: usize) {
        let drop_n = (cap / 8).max(1).min(sources.len());
        let mut ages: Vec<(Instant, IpAddr)> =
            sources.iter().map(|(ip, e)| (e.last_seen, *ip)).collect();
        ages.select_nth_unstable(drop_n - 1);
        for (_, ip) in &ages[..drop_n] {
            if let Some(e) = sources.remove(ip) {
                if e.banned_until.is_some() {
                    self.banned.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            enabled: true,
            max_failures: 3,
            window: Duration::from_secs(60),
            ban: Duration::from_secs(300),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            max_sources: 16,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_nth_failure_within_the_window_bans_for_the_ban_time() {
        let (t, p, t0) = (Throttle::default(), policy(), Instant::now());
        let a = ip("203.0.113.5");
        assert_eq!(t.failure(&p, a, t0), Verdict::Counted);
        assert_eq!(t.failure(&p, a, t0), Verdict::Counted);
        assert!(!t.is_banned(a, t0));
        assert_eq!(t.failure(&p, a, t0), Verdict::Banned { failures: 3 });
        assert!(t.is_banned(a, t0 + Duration::from_secs(299)));
        assert!(!t.is_banned(ip("203.0.113.6"), t0), "only that source");
        assert!(
            !t.is_banned(a, t0 + Duration::from_secs(301)),
            "the ban ends"
        );
        assert_eq!(t.bans(t0 + Duration::from_secs(301)), vec![]);
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_ban() {
        let (t, p, t0) = (Throttle::default(), policy(), Instant::now());
        let a = ip("203.0.113.5");
        for i in 0..10 {
            let now = t0 + Duration::from_secs(61 * i);
            assert_eq!(t.failure(&p, a, now), Verdict::Counted, "failure {i}");
        }
    }

    #[test]
    fn exempt_sources_and_a_disabled_throttle_never_ban() {
        let (t, mut p, t0) = (Throttle::default(), policy(), Instant::now());
        for _ in 0..10 {
            assert_eq!(t.failure(&p, ip("10.1.2.3"), t0), Verdict::Counted);
        }
        p.enabled = false;
        for _ in 0..10 {
            assert_eq!(t.failure(&p, ip("203.0.113.5"), t0), Verdict::Counted);
        }
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn an_ipv4_mapped_source_is_the_ipv4_source() {
        let (t, p, t0) = (Throttle::default(), policy(), Instant::now());
        for _ in 0..3 {
            t.failure(&p, ip("::ffff:203.0.113.5"), t0);
        }
        assert!(t.is_banned(ip("203.0.113.5"), t0));
    }

    #[test]
    fn clearing_lifts_one_ban_or_all() {
        let (t, p, t0) = (Throttle::default(), policy(), Instant::now());
        for a in ["203.0.113.5", "203.0.113.6"] {
            for _ in 0..3 {
                t.failure(&p, ip(a), t0);
            }
        }
        assert_eq!(t.bans(t0).len(), 2);
        assert_eq!(t.clear(Some(ip("203.0.113.5")), t0), 1);
        assert!(!t.is_banned(ip("203.0.113.5"), t0));
        assert!(t.is_banned(ip("203.0.113.6"), t0));
        assert_eq!(t.clear(None, t0), 1);
        assert!(t.bans(t0).is_empty());
        assert!(!t.is_banned(ip("203.0.113.6"), t0));
    }

    #[test]
    fn a_scan_from_many_sources_never_grows_the_table_past_its_cap() {
        let (t, p, t0) = (Throttle::default(), policy(), Instant::now());
        for i in 0..10_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0xcb00_0000 + i));
            t.failure(&p, a, t0 + Duration::from_millis(u64::from(i)));
            assert!(t.tracked() <= p.max_sources);
        }
    }
}
