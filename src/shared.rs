//! State shared by every connection. What changes at runtime (mode, TLS configuration) is
//! read with one atomic load per connection and replaced whole, never locked.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use crate::config::{Config, ProxyProtocol, UpstreamAddr};
use crate::events;
use crate::events::LogLimiter;
use crate::firewall::{normalize, normalize_addr, Firewall, Verdict};
use crate::metrics::{Metrics, Scrape};
use crate::policy::{Mode, RejectReason};
use crate::readiness::Readiness;
use crate::registry::Registry;
use crate::throttle::{self, Throttle};
use crate::tls::TlsState;

/// Refusals logged per second before lines are only counted (and summarised).
pub const REFUSALS_LOGGED_PER_SECOND: u32 = 20;

/// Settings read per connection; a reload replaces them whole. (`max_connections` is read
/// once, at start.)
#[derive(Debug, Clone)]
pub struct Settings {
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub upstream: UpstreamAddr,
    pub proxy_protocol: ProxyProtocol,
    pub proxy_from: Vec<ipnet::IpNet>,
    /// Inspect the MongoDB handshake (`[log] inspect`).
    pub inspect: bool,
    /// TCP keepalive idle time on client, upstream and egress sockets.
    pub tcp_keepalive: Duration,
    /// Close forwarded client connections idle this long (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// `[auth_throttle]`.
    pub throttle: throttle::Policy,
}

impl Settings {
    pub fn from_config(cfg: &Config, upstream: UpstreamAddr) -> Settings {
        Settings {
            handshake_timeout: cfg.listen.handshake_timeout,
            connect_timeout: cfg.upstream.connect_timeout,
            max_connections: cfg.listen.max_connections,
            shutdown_timeout: cfg.listen.shutdown_timeout,
            upstream,
            proxy_protocol: cfg.listen.proxy_protocol,
            proxy_from: cfg.listen.proxy_from().to_vec(),
            inspect: cfg.log.inspect,
            tcp_keepalive: cfg.listen.tcp_keepalive,
            idle_timeout: cfg.listen.idle_timeout,
            throttle: cfg.auth_throttle.policy(),
        }
    }

    /// Whether `peer` is a load balancer whose PROXY header moat reads.
    pub fn trusts_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.proxy_protocol != ProxyProtocol::Off && {
            let ip = normalize(peer);
            self.proxy_from.iter().any(|n| n.contains(&ip))
        }
    }
}

/// Everything a connection task needs, behind one `Arc`.
pub struct Shared {
    settings: ArcSwap<Settings>,
    pub registry: Registry,
    pub started: std::time::SystemTime,
    mode: AtomicU8,
    tls: ArcSwapOption<TlsState>,
    firewall: ArcSwap<Firewall>,
    /// Refusal lines (firewall, PROXY header, limits) are rate-limited: a flood must not fill the disk.
    pub refusal_log: LogLimiter,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Sources that failed authentication too often.
    pub throttle: Throttle,
    /// The upstream was found advertising its own address (said once).
    pub self_advertised_warned: std::sync::atomic::AtomicBool,
    /// ACME: tls-alpn-01 answers in force, each domain's renewal status.
    pub acme: crate::acme::State,
    next_id: AtomicU64,
    open: AtomicUsize,
}

impl Shared {
    pub fn new(
        settings: Settings,
        mode: Mode,
        tls: Option<TlsState>,
        firewall: Firewall,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            settings: ArcSwap::from_pointee(settings),
            registry: Registry::default(),
            started: std::time::SystemTime::now(),
            mode: AtomicU8::new(mode.to_u8()),
            tls: ArcSwapOption::new(tls.map(Arc::new)),
            firewall: ArcSwap::from_pointee(firewall),
            refusal_log: LogLimiter::new(REFUSALS_LOGGED_PER_SECOND),
            metrics: Metrics::new(),
            readiness: Readiness::default(),
            throttle: Throttle::default(),
            self_advertised_warned: std::sync::atomic::AtomicBool::new(false),
            acme: crate::acme::State::default(),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
        })
    }

    /// The live settings.
    pub fn settings(&self) -> Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// The live settings, to keep across awaits.
    pub fn settings_full(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Replaces the settings for connections from now on.
    pub fn set_settings(&self, s: Settings) {
        self.settings.store(Arc::new(s));
    }

    /// A fresh connection id (client and egress connections share the sequence).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The live SSL mode.
    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Switches the mode for connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode.to_u8(), Ordering::Release);
    }

    /// The live TLS configuration, if any domain is configured.
    pub fn tls(&self) -> Option<Arc<TlsState>> {
        self.tls.load_full()
    }

    /// Replaces the TLS configuration for handshakes from now on.
    pub fn set_tls(&self, tls: Option<TlsState>) {
        self.tls.store(tls.map(Arc::new));
    }

    /// The live firewall.
    pub fn firewall(&self) -> Guard<Arc<Firewall>> {
        self.firewall.load()
    }

    /// Replaces the firewall for connections from now on.
    pub fn set_firewall(&self, f: Firewall) {
        self.firewall.store(Arc::new(f));
    }

    /// Registers a new connection: its id and the number now open.
    pub fn open_connection(&self) -> (u64, usize) {
        let id = self.next_id();
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        (id, open)
    }

    /// Unregisters a connection; returns the number still open.
    pub fn close_connection(&self) -> usize {
        self.open.fetch_sub(1, Ordering::Relaxed) - 1
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Whether `peer` may connect: the firewall lets it in and it is not banned for failed
    /// authentications. A refusal is counted; a firewall refusal is logged (rate-limited),
    /// a ban only once, when it starts. The one admission check, at accept and again for
    /// the client a PROXY header names.
    pub fn admit(&self, peer: SocketAddr) -> Result<(), RejectReason> {
        if self.firewall().check(peer.ip()) == Verdict::Deny {
            self.metrics.rejected(RejectReason::Firewall);
            if self.refusal_log.allow() {
                events::refused_firewall(normalize_addr(peer));
            }
            return Err(RejectReason::Firewall);
        }
        if self
            .throttle
            .is_banned(peer.ip(), std::time::Instant::now())
        {
            self.metrics.rejected(RejectReason::AuthThrottled);
            return Err(RejectReason::AuthThrottled);
        }
        Ok(())
    }

    /// The metrics read off the state now, for a scrape.
    pub fn scrape(&self) -> Scrape {
        let mut s = Scrape::default();
        self.registry.traffic().export(&mut s);
        if let Some(tls) = self.tls() {
            tls.export(&mut s);
        }
        self.acme.export(&mut s);
        self.firewall().export(&mut s);
        crate::telemetry::export(&mut s);
        let current = self.mode();
        s.gauge(
            "moat_tls_mode",
            "The SSL mode in effect (1) and the others (0).",
            Some("mode"),
            Mode::ALL.map(|m| (m.as_str(), i64::from(m == current))),
        );
        s.gauge(
            "moat_upstream_ready",
            "1 when the upstream answered a connect recently (what /readyz says), else 0.",
            None,
            [("", i64::from(self.readiness.check().is_ok()))],
        );
        s.gauge(
            "moat_build_info",
            "Always 1; the version is the label.",
            Some("version"),
            [(env!("CARGO_PKG_VERSION"), 1)],
        );
        s
    }

    /// Warns about certificates close to expiry now and every 12 hours.
    pub async fn watch_expiry(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(12 * 3600));
        loop {
            every.tick().await;
            if let Some(tls) = self.tls() {
                tls.warn_expiring();
            }
        }
    }

    /// Once a second, says how many refusal lines the rate limit held back.
    pub async fn summarise_refusals(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let n = self.refusal_log.take_suppressed();
            if n > 0 {
                events::refusals_suppressed(n, REFUSALS_LOGGED_PER_SECOND);
            }
        }
    }
}
