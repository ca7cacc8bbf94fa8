//! Prometheus metrics (SPEC's table). Label values come only from closed sets: reject
//! reasons, transports, modes, mechanisms, and the operator's own domain names.
//!
//! Counting is cheap where it happens: counters are resolved to their label children once,
//! at start, so a count is one atomic add. Bytes and open connections are kept by the
//! registry as lock-free totals (see `registry::Traffic`); mode, certificate expiry and
//! rule counts are read off moat's state. A scrape takes no lock the data path uses, and
//! its cost does not grow with the connections open.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::policy::{RejectReason, Transport};

/// Latency buckets for a local proxy: tens of microseconds to seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Why the HTTP endpoint closed a connection itself (`moat_metrics_connections_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpDrop {
    /// The source is not in `[metrics] allow`.
    NotAllowed,
    /// Every connection slot was taken.
    Limit,
    /// A response was not taken by the client within the write deadline.
    WriteTimeout,
}

impl HttpDrop {
    const ALL: [HttpDrop; 3] = [
        HttpDrop::NotAllowed,
        HttpDrop::Limit,
        HttpDrop::WriteTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpDrop::NotAllowed => "not_allowed",
            HttpDrop::Limit => "limit",
            HttpDrop::WriteTimeout => "write_timeout",
        }
    }
}

/// `moat_auth_total` mechanisms.
pub const MECHANISMS: [&str; 5] = [
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "MONGODB-X509",
    "PLAIN",
    "other",
];

/// The counters and histograms moat updates as things happen.
pub struct Metrics {
    registry: Registry,
    accepted: [IntCounter; 2],
    rejected: [IntCounter; RejectReason::ALL.len()],
    tls_handshake_seconds: Histogram,
    /// [result ok/error][resumed false/true]
    tls_handshakes: [[IntCounter; 2]; 2],
    upstream_connect_seconds: Histogram,
    /// [mechanism][result success/failure]
    auth: [[IntCounter; 2]; 5],
    reloads: [IntCounter; 2],
    inspections_stopped: IntCounter,
    auth_bans: IntCounter,
    http_dropped: [IntCounter; 3],
    closed_before_speaking: IntCounter,
    idle_closed: IntCounter,
    /// By the operator's domain name (a closed set) and result.
    acme_renewals: IntCounterVec,
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Tls => 0,
        Transport::Plaintext => 1,
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric; label children are created now, so each appears (at 0)
    /// from the first scrape.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(v.clone()))
                .expect("unique metric name");
            v
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )
            .expect("static metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let accepted = counter_vec(
            "moat_connections_accepted_total",
            "Client connections admitted and forwarded to the upstream, by transport.",
            &["transport"],
        );
        let rejected = counter_vec(
            "moat_connections_rejected_total",
            "Client connections refused or closed before forwarding, by reason.",
            &["reason"],
        );
        let handshakes = counter_vec(
            "moat_tls_handshakes_total",
            "TLS handshakes with clients, by result and whether a session was resumed.",
            &["result", "resumed"],
        );
        let auth = counter_vec(
            "moat_auth_total",
            "Authentications seen in client handshakes, by mechanism and result.",
            &["mechanism", "result"],
        );
        let reloads = counter_vec(
            "moat_config_reloads_total",
            "Configuration reloads (SIGHUP or moat ctl reload), by result.",
            &["result"],
        );
        let inspections_stopped = IntCounter::new(
            "moat_inspections_stopped_total",
            "Handshake inspections that met a message they could not parse (bytes still flowed).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(inspections_stopped.clone()))
            .expect("unique metric name");
        let http_dropped = counter_vec(
            "moat_metrics_connections_dropped_total",
            "Connections to the metrics and health endpoint that moat closed itself, by reason.",
            &["reason"],
        );
        let acme_renewals = counter_vec(
            "moat_acme_renewals_total",
            "Certificate requests to an ACME CA (first issuance and renewals), by domain and result.",
            &["domain", "result"],
        );
        Metrics {
            acme_renewals,
            http_dropped: HttpDrop::ALL.map(|r| http_dropped.with_label_values(&[r.as_str()])),
            accepted: [
                accepted.with_label_values(&["tls"]),
                accepted.with_label_values(&["plaintext"]),
            ],
            rejected: RejectReason::ALL.map(|r| rejected.with_label_values(&[r.as_str()])),
            tls_handshake_seconds: histogram(
                "moat_tls_handshake_duration_seconds",
                "Time from a client's first byte to a completed TLS handshake.",
            ),
            tls_handshakes: [
                [
                    handshakes.with_label_values(&["ok", "false"]),
                    handshakes.with_label_values(&["ok", "true"]),
                ],
                [
                    handshakes.with_label_values(&["error", "false"]),
                    handshakes.with_label_values(&["error", "true"]),
                ],
            ],
            upstream_connect_seconds: histogram(
                "moat_upstream_connect_duration_seconds",
                "Time to connect to the upstream mongod.",
            ),
            auth: MECHANISMS.map(|m| {
                [
                    auth.with_label_values(&[m, "success"]),
                    auth.with_label_values(&[m, "failure"]),
                ]
            }),
            reloads: [
                reloads.with_label_values(&["ok"]),
                reloads.with_label_values(&["error"]),
            ],
            inspections_stopped,
            auth_bans: counter(
                "moat_auth_throttle_bans_total",
                "Sources banned by auth_throttle for failing authentication too often.",
            ),
            closed_before_speaking: counter(
                "moat_connections_closed_before_speaking_total",
                "Connections that closed without sending a byte (port checks, load balancer health checks).",
            ),
            idle_closed: counter(
                "moat_connections_idle_closed_total",
                "Forwarded connections closed by listen.idle_timeout.",
            ),
            registry,
        }
    }

    pub fn accepted(&self, t: Transport) {
        self.accepted[transport_index(t)].inc();
    }

    pub fn rejected(&self, r: RejectReason) {
        self.rejected[r as usize].inc();
    }

    pub fn tls_handshake(&self, ok: bool, resumed: bool, took: Duration) {
        self.tls_handshakes[usize::from(!ok)][usize::from(resumed)].inc();
        if ok {
            self.tls_handshake_seconds.observe(took.as_secs_f64());
        }
    }

    pub fn upstream_connected(&self, took: Duration) {
        self.upstream_connect_seconds.observe(took.as_secs_f64());
    }

    /// `mechanism` is one of [`MECHANISMS`] (anything else counts as `other`).
    pub fn auth(&self, mechanism: &str, success: bool) {
        let m = MECHANISMS.iter().position(|x| *x == mechanism).unwrap_or(4);
        self.auth[m][usize::from(!success)].inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// A source was banned for failed authentications.
    pub fn auth_ban(&self) {
        self.auth_bans.inc();
    }

    pub fn inspection_stopped(&self) {
        self.inspections_stopped.inc();
    }

    /// The HTTP endpoint closed a connection itself.
    pub fn http_dropped(&self, why: HttpDrop) {
        self.http_dropped[why as usize].inc();
    }

    pub fn closed_before_speaking(&self) {
        self.closed_before_speaking.inc();
    }

    pub fn idle_closed(&self) {
        self.idle_closed.inc();
    }

    /// Shows an ACME domain's renewal counters (at 0) from now on.
    pub fn acme_domain(&self, domain: &str) {
        for result in ["ok", "error"] {
            self.acme_renewals.with_label_values(&[domain, result]);
        }
    }

    /// An ACME request for `domain` (a configured domain name) ended.
    pub fn acme_renewal(&self, domain: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.acme_renewals
            .with_label_values(&[domain, result])
            .inc();
    }

    /// The text exposition of every metric, with the ones read off moat's state now.
    pub fn render(&self, scrape: Scrape) -> String {
        let mut families = self.registry.gather();
        families.extend(scrape.0);
        // A family without samples (no certificate yet) would stop the encoder.
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metrics read off moat's state when Prometheus scrapes: each module adds the ones
/// it owns (the registry its byte and connection totals, TLS its certificates, the
/// firewall its rules), so this file reads no one's state.
#[derive(Default)]
pub struct Scrape(Vec<prometheus::proto::MetricFamily>);

impl Scrape {
    /// A gauge with one label (`label`) and one sample per value of it, or no label.
    pub fn gauge<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        samples: impl IntoIterator<Item = (&'a str, i64)>,
    ) {
        use prometheus::core::Collector;
        let labels: Vec<&str> = label.into_iter().collect();
        let Ok(g) = IntGaugeVec::new(Opts::new(name, help), &labels) else {
            return;
        };
        for (value, n) in samples {
            let values: Vec<&str> = label.map(|_| value).into_iter().collect();
            g.with_label_values(&values).set(n);
        }
        self.0.extend(g.collect());
    }

    /// A counter read off a running total, labelled like [`Scrape::gauge`].
    pub fn counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        samples: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        use prometheus::core::Collector;
        let labels: Vec<&str> = label.into_iter().collect();
        let Ok(c) = IntCounterVec::new(Opts::new(name, help), &labels) else {
            return;
        };
        for (value, n) in samples {
            let values: Vec<&str> = label.map(|_| value).into_iter().collect();
            c.with_label_values(&values).inc_by(n);
        }
        self.0.extend(c.collect());
    }
}
