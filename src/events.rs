//! The catalogue of moat's log events: every line moat writes is made here, so its wording
//! (mongod's, where mongod logs the same thing) and its JSON id live in one place.
//!
//! mongod's ids are used where mongod logs the same event; moat's own ids are in the
//! 9_800_000 range and listed in README.md.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::firewall::Firewall;
use crate::policy::{Mode, Transport};

/// moat's own log ids (mongod's are used literally at their call sites).
pub mod ids {
    pub const LISTENING: u64 = 23016; // mongod: "Waiting for connections"
    pub const ACCEPTED: u64 = 22943; // mongod: "Connection accepted"
    pub const ENDED: u64 = 22944; // mongod: "Connection ended"
    pub const TLS_ESTABLISHED: u64 = 9_800_001;
    pub const NO_PEER_CERT: u64 = 9_800_002;
    pub const TLS_REQUIRED: u64 = 9_800_003;
    pub const TLS_DISABLED: u64 = 9_800_004;
    pub const HANDSHAKE_TIMEOUT: u64 = 9_800_005;
    pub const TLS_FAILED: u64 = 9_800_006;
    pub const UPSTREAM_UNAVAILABLE: u64 = 9_800_007;
    pub const LIMIT: u64 = 9_800_008;
    pub const NOT_MONGODB: u64 = 9_800_009;
    pub const CONN_ERROR: u64 = 9_800_010;
    pub const ACCEPT_ERROR: u64 = 9_800_011;
    pub const SHUTDOWN_STARTED: u64 = 9_800_012;
    pub const SHUTDOWN_DONE: u64 = 9_800_013;
    pub const STARTUP: u64 = 9_800_014;
    pub const EGRESS_ACCEPTED: u64 = 9_800_015;
    pub const EGRESS_FAILED: u64 = 9_800_016;
    pub const EGRESS_ENDED: u64 = 9_800_017;
    pub const MODE_CHANGED: u64 = 9_800_018;
    pub const RELOADED: u64 = 9_800_019;
    pub const RELOAD_FAILED: u64 = 9_800_020;
    pub const ADMIN: u64 = 9_800_021;
    pub const EGRESS_LISTENING: u64 = 9_800_022;
    pub const CERT_EXPIRING: u64 = 9_800_023;
    pub const REFUSED_FIREWALL: u64 = 9_800_024;
    pub const REFUSED_PROXY_HEADER: u64 = 9_800_025;
    pub const REFUSALS_SUPPRESSED: u64 = 9_800_026;
    pub const RULES_CHANGED: u64 = 9_800_027;
    pub const INVENTORY_LOADED: u64 = 9_800_028;
    pub const INVENTORY_FAILED: u64 = 9_800_029;
    pub const FIREWALL_SUMMARY: u64 = 9_800_030;
    pub const CLIENT_METADATA: u64 = 51800; // mongod: "client metadata"
    pub const AUTH_SUCCEEDED: u64 = 20250; // mongod: "Authentication succeeded"
    pub const AUTH_FAILED: u64 = 20249; // mongod: "Authentication failed"
    pub const INSPECTION_STOPPED: u64 = 9_800_031;
    pub const METRICS_LISTENING: u64 = 9_800_032;
    pub const CONFIG_WARNING: u64 = 9_800_033;
    pub const REFUSED: u64 = 9_800_034;
    pub const AUTH_BAN: u64 = 9_800_035;
    pub const BANS_CLEARED: u64 = 9_800_036;
    pub const TLS_PASSTHROUGH: u64 = 9_800_037;
    pub const SELF_ADVERTISED: u64 = 9_800_038;
    pub const LOG_LINES_DROPPED: u64 = 9_800_050;
    pub const METRICS_NOT_ALLOWED: u64 = 9_800_070;
    pub const METRICS_LIMIT: u64 = 9_800_071;
    pub const METRICS_WRITE_TIMEOUT: u64 = 9_800_072;
    pub const IDLE_CLOSED: u64 = 9_800_060;
    pub const TLS_REQUIRED_CUT: u64 = 9_800_061;
    pub const EGRESS_REFUSED_SOURCE: u64 = 9_800_062;
    pub const EGRESS_REFUSED_LIMIT: u64 = 9_800_063;
    pub const CLIENT_METADATA_TOO_LARGE: u64 = 9_800_040;
    pub const ACCEPT_FAILING: u64 = 9_800_140;
    pub const ACCEPT_RECOVERED: u64 = 9_800_141;
    pub const ACME_REQUESTING: u64 = 9_800_080;
    pub const ACME_ISSUED: u64 = 9_800_081;
    pub const ACME_FAILED: u64 = 9_800_082;
    pub const ACME_SCHEDULED: u64 = 9_800_083;
    pub const ACME_CHALLENGE_ANSWERED: u64 = 9_800_084;
    pub const ACME_ACCOUNT_KEY_CREATED: u64 = 9_800_085;
    pub const ACME_HOOK_CLEAR_FAILED: u64 = 9_800_086;
    pub const ACME_NOT_SERVED: u64 = 9_800_087;
    pub const WATCH_STARTED: u64 = 9_800_090;
    pub const WATCH_CHANGED: u64 = 9_800_091;
    pub const WATCH_UNAVAILABLE: u64 = 9_800_092;
    pub const WATCH_OFF: u64 = 9_800_093;
}

/// `[conn12]`: the log context of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnCtx(pub u64);

impl fmt::Display for ConnCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn{}", self.0)
    }
}

/// `3 connections` / `1 connection`, as mongod writes it.
struct Count(usize);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.0 == 1 { "" } else { "s" };
        write!(f, "{} connection{s}", self.0)
    }
}

pub fn startup(version: &str, config: &str) {
    tracing::info!(
        c = "CONTROL",
        id = ids::STARTUP,
        ctx = "main",
        msg = "moat starting",
        version,
        config,
        "moat {version} starting with config {config}"
    );
}

pub fn listening(addr: SocketAddr, mode: Mode, upstream: &str) {
    tracing::info!(
        c = "NETWORK", id = ids::LISTENING, ctx = "listener", msg = "Waiting for connections",
        address = %addr, mode = mode.as_str(), upstream,
        "waiting for connections on {addr} (mode {mode}, upstream {upstream})"
    );
}

pub fn accepted(peer: SocketAddr, conn: u64, open: usize) {
    tracing::info!(
        c = "NETWORK", id = ids::ACCEPTED, ctx = "listener", msg = "Connection accepted",
        remote = %peer, connectionId = conn, connectionCount = open as u64,
        "connection accepted from {peer} #{conn} ({} now open)", Count(open)
    );
}

pub fn ended(peer: SocketAddr, conn: u64, open: usize) {
    tracing::info!(
        c = "NETWORK", id = ids::ENDED, ctx = %ConnCtx(conn), msg = "Connection ended",
        remote = %peer, connectionId = conn, connectionCount = open as u64,
        "end connection {peer} ({} now open)", Count(open)
    );
}

/// The negotiated TLS parameters of a connection.
pub struct TlsSummary<'a> {
    pub version: &'a str,
    pub cipher: &'a str,
    pub sni: Option<&'a str>,
    pub domain: &'a str,
    pub resumed: bool,
    /// The client certificate's subject, when one was presented and verified.
    pub client: Option<&'a str>,
}

pub fn tls_established(conn: u64, t: &TlsSummary<'_>) {
    let sni = t.sni.unwrap_or("none");
    let resumed = if t.resumed { " resumed" } else { "" };
    let client = ClientSubject(t.client);
    tracing::info!(
        c = "NETWORK", id = ids::TLS_ESTABLISHED, ctx = %ConnCtx(conn), msg = "TLS established",
        version = t.version, cipher = t.cipher, sni, domain = t.domain, resumed = t.resumed,
        peerSubject = t.client.unwrap_or(""),
        "{} {} sni={sni} domain={}{resumed}{client}", t.version, t.cipher, t.domain
    );
}

/// Mode passthrough: a TLS connection forwarded unterminated to mongod.
pub fn tls_passthrough(conn: u64, sni: Option<&str>) {
    let sni = sni.unwrap_or("none");
    tracing::info!(
        c = "NETWORK", id = ids::TLS_PASSTHROUGH, ctx = %ConnCtx(conn), msg = "TLS passed through",
        sni,
        "TLS passthrough sni={sni}: forwarded unterminated, mongod terminates it"
    );
}

/// ` client="CN=alice,O=x"` when a client certificate was verified, else nothing.
struct ClientSubject<'a>(Option<&'a str>);

impl fmt::Display for ClientSubject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, " client={s:?}"),
            None => Ok(()),
        }
    }
}

pub fn certificate_expiring(domain: &str, days: i64, not_after: &str) {
    tracing::warn!(
        c = "NETWORK", id = ids::CERT_EXPIRING, ctx = "main", msg = "Certificate expiring soon",
        domain, daysLeft = days, notAfter = not_after,
        "the certificate of domain {domain} expires on {not_after} ({days} days left): rotate it (replace the files, then moat ctl reload)"
    );
}

pub fn no_peer_certificate(conn: u64) {
    tracing::warn!(
        c = "NETWORK", id = ids::NO_PEER_CERT, ctx = %ConnCtx(conn),
        msg = "No SSL certificate provided by peer",
        "no SSL certificate provided by peer"
    );
}

pub fn refused_tls_required(conn: u64, peer: SocketAddr) {
    tracing::info!(
        c = "NETWORK", id = ids::TLS_REQUIRED, ctx = %ConnCtx(conn),
        msg = "Refused plaintext connection: TLS is required",
        remote = %peer, reason = "tls_required",
        "refusing plaintext connection from {peer}: mode requireSSL (sent a MongoDB error reply saying TLS is required)"
    );
}

pub fn refused_tls_disabled(conn: u64, peer: SocketAddr) {
    tracing::info!(
        c = "NETWORK", id = ids::TLS_DISABLED, ctx = %ConnCtx(conn),
        msg = "Refused TLS connection: TLS is disabled",
        remote = %peer, reason = "tls_disabled",
        "refusing TLS connection from {peer}: mode disabled accepts plaintext only"
    );
}

/// A refusal by a reason the SSL mode does not decide (kept for completeness: today none
/// reaches a connection this way).
pub fn refused(conn: u64, peer: SocketAddr, reason: &str) {
    tracing::info!(
        c = "NETWORK", id = ids::REFUSED, ctx = %ConnCtx(conn), msg = "Connection refused",
        remote = %peer, reason,
        "refusing connection from {peer}: {reason}"
    );
}

pub fn handshake_timeout(conn: u64, peer: SocketAddr, timeout: Duration) {
    tracing::info!(
        c = "NETWORK", id = ids::HANDSHAKE_TIMEOUT, ctx = %ConnCtx(conn),
        msg = "Handshake timed out",
        remote = %peer, reason = "handshake_timeout", timeoutMillis = timeout.as_millis() as u64,
        "closing connection from {peer}: no complete TLS or MongoDB handshake within {}",
        humantime::format_duration(timeout)
    );
}

pub fn tls_failed(conn: u64, peer: SocketAddr, error: &dyn fmt::Display) {
    tracing::info!(
        c = "NETWORK", id = ids::TLS_FAILED, ctx = %ConnCtx(conn), msg = "TLS handshake failed",
        remote = %peer, reason = "tls_error", error = %error,
        "TLS handshake failed with {peer}: {error}"
    );
}

/// `answered`: the client's first message got a HostUnreachable error reply before the close.
pub fn upstream_unavailable(conn: u64, upstream: &str, error: &dyn fmt::Display, answered: bool) {
    let then = if answered {
        "answered the client's first message with HostUnreachable and closed the connection"
    } else {
        "closing the client connection"
    };
    tracing::error!(
        c = "NETWORK", id = ids::UPSTREAM_UNAVAILABLE, ctx = %ConnCtx(conn),
        msg = "Upstream unavailable",
        upstream, reason = "upstream_unavailable", error = %error, answered,
        "cannot reach upstream {upstream}: {error}; {then}"
    );
}

pub fn refused_limit(peer: SocketAddr, max: usize) {
    tracing::warn!(
        c = "NETWORK", id = ids::LIMIT, ctx = "listener", msg = "Connection refused: limit reached",
        remote = %peer, reason = "limit", maxConnections = max as u64,
        "connection refused from {peer}: max_connections ({max}) reached"
    );
}

pub fn not_mongodb(conn: u64, peer: SocketAddr, why: &dyn fmt::Display) {
    tracing::info!(
        c = "NETWORK", id = ids::NOT_MONGODB, ctx = %ConnCtx(conn),
        msg = "Closing connection: not a MongoDB message",
        remote = %peer, error = %why,
        "closing connection from {peer}: first bytes are not a MongoDB message ({why})"
    );
}

pub fn connection_error(conn: u64, peer: SocketAddr, error: &dyn fmt::Display) {
    tracing::info!(
        c = "NETWORK", id = ids::CONN_ERROR, ctx = %ConnCtx(conn), msg = "Connection error",
        remote = %peer, error = %error,
        "connection {peer} closed with error: {error}"
    );
}

pub fn accept_error(error: &dyn fmt::Display) {
    tracing::error!(
        c = "NETWORK", id = ids::ACCEPT_ERROR, ctx = "listener", msg = "Error accepting connection",
        error = %error,
        "error accepting a connection: {error}"
    );
}

pub fn shutdown_started(signal: &str, open: usize, timeout: Duration) {
    tracing::info!(
        c = "CONTROL",
        id = ids::SHUTDOWN_STARTED,
        ctx = "main",
        msg = "Shutting down",
        signal,
        connectionCount = open as u64,
        timeoutMillis = timeout.as_millis() as u64,
        "got {signal}: no longer accepting; waiting up to {} for {} to end",
        humantime::format_duration(timeout),
        Count(open)
    );
}

pub fn shutdown_done(remaining: usize) {
    if remaining == 0 {
        tracing::info!(
            c = "CONTROL",
            id = ids::SHUTDOWN_DONE,
            ctx = "main",
            msg = "Shutdown complete",
            connectionCount = 0u64,
            "shutdown complete: all connections ended"
        );
    } else {
        tracing::warn!(
            c = "CONTROL",
            id = ids::SHUTDOWN_DONE,
            ctx = "main",
            msg = "Shutdown complete",
            connectionCount = remaining as u64,
            "shutdown complete: shutdown_timeout reached, closing {} still open",
            Count(remaining)
        );
    }
}

pub fn egress_accepted(conn: u64, from: SocketAddr, peer: &str, transport: Transport, mode: Mode) {
    tracing::info!(
        c = "NETWORK", id = ids::EGRESS_ACCEPTED, ctx = %ConnCtx(conn), msg = "Egress connection",
        remote = %from, peer, transport = transport.as_str(), mode = mode.as_str(),
        "egress connection from {from} to {peer} over {} (mode {mode})",
        if transport == Transport::Tls { "TLS" } else { "plaintext" }
    );
}

pub fn egress_failed(conn: u64, peer: &str, error: &dyn fmt::Display) {
    tracing::warn!(
        c = "NETWORK", id = ids::EGRESS_FAILED, ctx = %ConnCtx(conn), msg = "Egress connection failed",
        peer, error = %error,
        "egress to {peer}: {error}"
    );
}

pub fn egress_ended(conn: u64, from: SocketAddr) {
    tracing::info!(
        c = "NETWORK", id = ids::EGRESS_ENDED, ctx = %ConnCtx(conn), msg = "Egress connection ended",
        remote = %from,
        "end egress connection {from}"
    );
}

pub fn mode_changed(from: Mode, to: Mode, how: &str) {
    tracing::info!(
        c = "CONTROL",
        id = ids::MODE_CHANGED,
        ctx = "admin",
        msg = "SSL mode changed",
        from = from.as_str(),
        to = to.as_str(),
        how,
        "SSL mode changed from {from} to {to} ({how}); applies to new connections"
    );
}

pub fn reloaded(changed: &str, needs_restart: &str) {
    if needs_restart.is_empty() {
        tracing::info!(
            c = "CONTROL",
            id = ids::RELOADED,
            ctx = "admin",
            msg = "Configuration reloaded",
            changed,
            "configuration reloaded: {changed}"
        );
    } else {
        tracing::warn!(
            c = "CONTROL", id = ids::RELOADED, ctx = "admin", msg = "Configuration reloaded",
            changed, needsRestart = needs_restart,
            "configuration reloaded: {changed}; changed but only applied at restart: {needs_restart}"
        );
    }
}

pub fn reload_failed(error: &dyn fmt::Display) {
    tracing::error!(
        c = "CONTROL", id = ids::RELOAD_FAILED, ctx = "admin", msg = "Configuration reload failed",
        error = %error,
        "configuration reload failed, keeping the running configuration: {error}"
    );
}

pub fn admin_error(error: &dyn fmt::Display) {
    tracing::warn!(
        c = "CONTROL", id = ids::ADMIN, ctx = "admin", msg = "Admin socket error",
        error = %error,
        "admin socket: {error}"
    );
}

pub fn egress_listening(addr: SocketAddr, peer: &str) {
    tracing::info!(
        c = "NETWORK", id = ids::EGRESS_LISTENING, ctx = "egress", msg = "Egress listening",
        address = %addr, peer,
        "egress listening on {addr} for {peer}"
    );
}

/// At most `per_second` lines a second; the rest are counted for a summary line.
pub struct LogLimiter {
    per_second: u32,
    second: AtomicU64,
    count: AtomicU32,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(per_second: u32) -> LogLimiter {
        LogLimiter {
            per_second,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written now.
    pub fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seen = self.second.load(Ordering::Relaxed);
        if seen != now
            && self
                .second
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Lines suppressed since the last call.
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

pub fn refused_firewall(peer: SocketAddr) {
    tracing::info!(
        c = "ACCESS", id = ids::REFUSED_FIREWALL, ctx = "listener",
        msg = "Connection refused by the firewall",
        remote = %peer, reason = "firewall",
        "connection refused from {peer}: no firewall rule allows this source"
    );
}

pub fn refused_proxy_header(peer: SocketAddr, why: &dyn fmt::Display) {
    tracing::info!(
        c = "NETWORK", id = ids::REFUSED_PROXY_HEADER, ctx = "listener",
        msg = "Connection refused: PROXY header",
        remote = %peer, reason = "proxy_header", error = %why,
        "connection refused from {peer}: {why}"
    );
}

pub fn refusals_suppressed(n: u64, per_second: u32) {
    tracing::warn!(
        c = "ACCESS", id = ids::REFUSALS_SUPPRESSED, ctx = "listener",
        msg = "Refusals not logged", count = n,
        "{n} more connections were refused in the last second (lines beyond {per_second} a second are only counted)"
    );
}

pub fn rules_changed(what: &str, rules: usize) {
    tracing::info!(
        c = "ACCESS",
        id = ids::RULES_CHANGED,
        ctx = "admin",
        msg = "Firewall rules changed",
        change = what,
        rules = rules as u64,
        "firewall rules changed: {what}; {rules} rules now"
    );
}

pub fn inventory_loaded(path: &str, interfaces: usize, sg_addresses: usize) {
    tracing::info!(
        c = "ACCESS", id = ids::INVENTORY_LOADED, ctx = "firewall",
        msg = "Security-group inventory loaded",
        path, interfaces = interfaces as u64, addresses = sg_addresses as u64,
        "security-group inventory {path}: {interfaces} interfaces; security-group rules allow {sg_addresses} addresses"
    );
}

pub fn inventory_failed(path: &str, error: &dyn fmt::Display, last_good: usize) {
    tracing::error!(
        c = "ACCESS", id = ids::INVENTORY_FAILED, ctx = "firewall",
        msg = "Security-group inventory unusable",
        path, error = %error, lastGoodInterfaces = last_good as u64,
        "security-group inventory unusable, keeping the last good one ({last_good} interfaces): {error}"
    );
}

pub fn firewall_summary(firewall: &Firewall) {
    let (cidr, groups, addresses) = firewall.counts();
    let default = firewall.default_policy().as_str();
    if default == "deny" && cidr + groups == 0 {
        tracing::warn!(
            c = "ACCESS", id = ids::FIREWALL_SUMMARY, ctx = "main", msg = "Firewall allows no source",
            default,
            "firewall: default deny and no rules, so every connection will be refused; add [[firewall.rules]] or `moat ctl rules add`"
        );
    } else {
        tracing::info!(
            c = "ACCESS", id = ids::FIREWALL_SUMMARY, ctx = "main", msg = "Firewall",
            default, cidrRules = cidr as u64, securityGroupRules = groups as u64,
            "firewall: default {default}, {cidr} CIDR rules, {groups} security-group rules ({addresses} addresses)"
        );
    }
}

pub fn client_metadata(conn: u64, peer: SocketAddr, text: &str, json: &str) {
    tracing::info!(
        c = "NETWORK", id = ids::CLIENT_METADATA, ctx = %ConnCtx(conn), msg = "client metadata",
        remote = %peer, client = %ConnCtx(conn), doc = json,
        "received client metadata from {peer} {}: {text}", ConnCtx(conn)
    );
}

/// Client metadata moat would not render: over mongod's size limit or too deeply nested.
pub fn client_metadata_too_large(
    conn: u64,
    peer: SocketAddr,
    bytes: usize,
    max_bytes: usize,
    too_deep: bool,
    max_depth: usize,
) {
    let why = if too_deep {
        format!("nested deeper than {max_depth} levels")
    } else {
        format!("more than the {max_bytes} bytes mongod accepts")
    };
    tracing::warn!(
        c = "NETWORK", id = ids::CLIENT_METADATA_TOO_LARGE, ctx = %ConnCtx(conn),
        msg = "client metadata too large", remote = %peer, client = %ConnCtx(conn),
        bytes = bytes as u64, maxBytes = max_bytes as u64, maxDepth = max_depth as u64, tooDeep = too_deep,
        "client metadata too large from {peer} {}: {bytes} bytes, {why}; not logged, and the handshake of this connection is no longer inspected",
        ConnCtx(conn)
    );
}

pub fn auth_succeeded(
    conn: u64,
    peer: SocketAddr,
    mechanism: &str,
    user: &str,
    db: &str,
    speculative: bool,
) {
    tracing::info!(
        c = "ACCESS", id = ids::AUTH_SUCCEEDED, ctx = %ConnCtx(conn), msg = "Authentication succeeded",
        mechanism, speculative, principalName = user, authenticationDatabase = db, remote = %peer,
        "Successfully authenticated as principal {user} on {db} from client {peer}"
    );
}

/// The failure line; `SASL ` precedes SASL mechanisms as in mongod's log.
#[allow(clippy::too_many_arguments)]
pub fn auth_failed(
    conn: u64,
    peer: SocketAddr,
    mechanism: &str,
    user: &str,
    db: &str,
    speculative: bool,
    code_name: &str,
    errmsg: &str,
) {
    let sasl = if mechanism == "MONGODB-X509" {
        ""
    } else {
        "SASL "
    };
    tracing::info!(
        c = "ACCESS", id = ids::AUTH_FAILED, ctx = %ConnCtx(conn), msg = "Authentication failed",
        mechanism, speculative, principalName = user, authenticationDatabase = db, remote = %peer,
        error = %format_args!("{code_name}: {errmsg}"),
        "{sasl}{mechanism} authentication failed for {user} on {db} from client {peer} ; {code_name}: {errmsg}"
    );
}

pub fn inspection_stopped(conn: u64, why: &str) {
    tracing::debug!(
        c = "NETWORK", id = ids::INSPECTION_STOPPED, ctx = %ConnCtx(conn),
        msg = "Handshake inspection stopped", reason = why,
        "handshake inspection stopped ({why}); bytes keep flowing unparsed"
    );
}

pub fn metrics_listening(addr: SocketAddr) {
    tracing::info!(
        c = "NETWORK", id = ids::METRICS_LISTENING, ctx = "main", msg = "Metrics listening",
        address = %addr,
        "metrics and health on http://{addr}/metrics, /healthz, /readyz"
    );
}

/// Something in the config worth fixing that does not stop moat (e.g. overlapping rules).
pub fn config_warning(what: &dyn fmt::Display) {
    tracing::warn!(
        c = "CONTROL", id = ids::CONFIG_WARNING, ctx = "main", msg = "Configuration warning",
        warning = %what,
        "configuration warning: {what}"
    );
}

/// Written by the log writer once stdout has caught up after lines were dropped.
pub fn log_lines_dropped(n: u64) {
    tracing::warn!(
        c = "CONTROL",
        id = ids::LOG_LINES_DROPPED,
        ctx = "log",
        msg = "Log lines dropped",
        count = n,
        "{n} log lines dropped (stdout was not keeping up)"
    );
}

pub fn metrics_refused_not_allowed(peer: SocketAddr) {
    tracing::info!(
        c = "ACCESS", id = ids::METRICS_NOT_ALLOWED, ctx = "metrics",
        msg = "Metrics connection refused: source not allowed",
        remote = %peer, reason = "not_allowed",
        "metrics connection refused from {peer}: not in [metrics] allow"
    );
}

pub fn metrics_refused_limit(peer: SocketAddr, max: usize) {
    tracing::warn!(
        c = "NETWORK", id = ids::METRICS_LIMIT, ctx = "metrics",
        msg = "Metrics connection refused: limit reached",
        remote = %peer, reason = "limit", maxConnections = max as u64,
        "metrics connection refused from {peer}: {max} metrics connections already open"
    );
}

pub fn metrics_write_timeout(peer: SocketAddr, timeout: Duration) {
    tracing::info!(
        c = "NETWORK", id = ids::METRICS_WRITE_TIMEOUT, ctx = "metrics",
        msg = "Closing metrics connection: response not read",
        remote = %peer, reason = "write_timeout", timeoutMillis = timeout.as_millis() as u64,
        "closing metrics connection from {peer}: it did not take its response within {}",
        humantime::format_duration(timeout)
    );
}

pub fn idle_closed(conn: u64, peer: SocketAddr, after: Duration) {
    tracing::info!(
        c = "NETWORK", id = ids::IDLE_CLOSED, ctx = %ConnCtx(conn), msg = "Closing idle connection",
        remote = %peer, reason = "idle_timeout", idleMillis = after.as_millis() as u64,
        "closing connection from {peer}: no bytes either way for {} (listen.idle_timeout)",
        humantime::format_duration(after)
    );
}

pub fn refused_tls_required_cut(conn: u64, peer: SocketAddr, error: &dyn fmt::Display) {
    tracing::info!(
        c = "NETWORK", id = ids::TLS_REQUIRED_CUT, ctx = %ConnCtx(conn),
        msg = "Refused plaintext connection: TLS is required",
        remote = %peer, reason = "tls_required", error = %error,
        "refusing plaintext connection from {peer}: mode requireSSL; it went away before the error reply was sent ({error})"
    );
}

pub fn egress_refused_source(listen: SocketAddr, from: SocketAddr) {
    tracing::info!(
        c = "ACCESS", id = ids::EGRESS_REFUSED_SOURCE, ctx = "egress",
        msg = "Egress connection refused by allow",
        address = %listen, remote = %from, reason = "firewall",
        "egress connection refused from {from} on {listen}: not in this listener's allow list"
    );
}

pub fn egress_refused_limit(listen: SocketAddr, from: SocketAddr, max: usize) {
    tracing::warn!(
        c = "NETWORK", id = ids::EGRESS_REFUSED_LIMIT, ctx = "egress",
        msg = "Egress connection refused: limit reached",
        address = %listen, remote = %from, reason = "limit", maxConnections = max as u64,
        "egress connection refused from {from} on {listen}: max_connections ({max}) reached"
    );
}

/// A source starts a ban for failed authentications; its refusals from now on are only
/// counted (`moat_connections_rejected_total{reason="auth_throttled"}`).
pub fn auth_throttle_ban(source: std::net::IpAddr, failures: u32, window: Duration, ban: Duration) {
    tracing::warn!(
        c = "ACCESS", id = ids::AUTH_BAN, ctx = "throttle", msg = "Source banned: failed authentications",
        remote = %source, failures, windowMillis = window.as_millis() as u64,
        banMillis = ban.as_millis() as u64,
        "refusing new connections from {source} for {}: {failures} failed authentications within {} (auth_throttle; moat ctl bans clear {source} lifts it)",
        humantime::format_duration(ban),
        humantime::format_duration(window)
    );
}

/// An operator lifted bans.
pub fn bans_cleared(which: &str, lifted: usize) {
    tracing::info!(
        c = "ACCESS",
        id = ids::BANS_CLEARED,
        ctx = "admin",
        msg = "Bans lifted",
        which,
        lifted = lifted as u64,
        "auth_throttle bans lifted ({which}): {lifted}"
    );
}

/// The upstream's replica-set config names the upstream address itself: drivers that
/// discover the set from `hello` would connect there, around moat.
pub fn upstream_self_advertised(upstream: &str, hosts: &[String]) {
    let hosts = hosts.join(", ");
    tracing::warn!(
        c = "NETWORK", id = ids::SELF_ADVERTISED, ctx = "main",
        msg = "Upstream advertises its own private address",
        upstream, hosts = %hosts,
        "{}", self_advertised_advice(upstream, &hosts)
    );
}

/// The advice, shared by the log line and `moat check`.
pub fn self_advertised_advice(upstream: &str, hosts: &str) -> String {
    format!(
        "the upstream's hello lists {hosts} (moat's upstream {upstream}) among its replica set's members: drivers that discover the set connect there, around moat. In rs.conf(), name each member by the hostname clients dial, on moat's port (see README, \"Replica sets\")"
    )
}
/// Accepting fails (out of descriptors, most often): at most once a second, with the
/// count since the last line.
pub fn accept_failing(error: &dyn fmt::Display, count: u64, run: u64, since: Duration) {
    tracing::error!(
        c = "NETWORK", id = ids::ACCEPT_FAILING, ctx = "listener",
        msg = "Error accepting connections",
        error = %error, count, failedSinceFirst = run, durationMillis = since.as_millis() as u64,
        "error accepting connections: {error} ({count} times since the last line, {run} in {}); new connections wait in the backlog, retrying with back-off",
        humantime::format_duration(Duration::from_millis(since.as_millis() as u64))
    );
}

pub fn accept_recovered(failed: u64, after: Duration) {
    tracing::info!(
        c = "NETWORK",
        id = ids::ACCEPT_RECOVERED,
        ctx = "listener",
        msg = "Accepting connections again",
        failedAttempts = failed,
        durationMillis = after.as_millis() as u64,
        "accepting connections again after {failed} failed attempts over {}",
        humantime::format_duration(Duration::from_millis(after.as_millis() as u64))
    );
}

/// A certificate is requested from an ACME CA.
pub fn acme_requesting(domain: &str, names: &str, challenge: &str, directory: &str, why: &str) {
    tracing::info!(
        c = "NETWORK", id = ids::ACME_REQUESTING, ctx = "acme", msg = "Requesting certificate",
        domain, names, challenge, directory, reason = why,
        "requesting a certificate for domain {domain} ({names}) by {challenge} from {directory}: {why}"
    );
}

/// A certificate was issued, written and swapped in for new handshakes.
pub fn acme_issued(domain: &str, issuer: &str, serial: &str, not_after: &str, took: Duration) {
    tracing::info!(
        c = "NETWORK", id = ids::ACME_ISSUED, ctx = "acme", msg = "Certificate issued",
        domain, issuer, serial, notAfter = not_after, tookMillis = took.as_millis() as u64,
        "certificate for domain {domain} issued by {issuer} (serial {serial}, valid until {not_after}) in {} ms; new handshakes get it",
        took.as_millis()
    );
}

/// An attempt failed; the certificate in service stays.
pub fn acme_failed(domain: &str, failures: u32, error: &dyn fmt::Display, retry_in: Duration) {
    tracing::warn!(
        c = "NETWORK", id = ids::ACME_FAILED, ctx = "acme", msg = "Certificate request failed",
        domain, failures, error = %error, retryMillis = retry_in.as_millis() as u64,
        "certificate request for domain {domain} failed ({failures} in a row): {error}; the certificate in service stays; retrying in {}",
        humantime::format_duration(Duration::from_secs(retry_in.as_secs().max(1)))
    );
}

/// When a domain's certificate is next renewed.
pub fn acme_scheduled(domain: &str, at: &str, in_secs: i64) {
    tracing::info!(
        c = "NETWORK",
        id = ids::ACME_SCHEDULED,
        ctx = "acme",
        msg = "Renewal scheduled",
        domain,
        at,
        inSeconds = in_secs,
        "certificate for domain {domain} is renewed at {at} (in {})",
        humantime::format_duration(Duration::from_secs(in_secs.max(0) as u64))
    );
}

/// The CA's tls-alpn-01 handshake was answered on the public port (by a connection, or by
/// `moat certs acme`'s own responder: `conn` is then `None`).
pub fn acme_challenge_answered(conn: Option<u64>, peer: SocketAddr, name: &str) {
    let ctx = conn.map_or_else(|| "acme".to_string(), |c| ConnCtx(c).to_string());
    tracing::info!(
        c = "NETWORK", id = ids::ACME_CHALLENGE_ANSWERED, ctx = %ctx,
        msg = "ACME challenge answered", remote = %peer, name,
        "answered the tls-alpn-01 challenge for {name} to {peer}"
    );
}

/// A new ACME account key was made.
pub fn acme_account_key_created(path: &str) {
    tracing::info!(
        c = "NETWORK",
        id = ids::ACME_ACCOUNT_KEY_CREATED,
        ctx = "acme",
        msg = "ACME account key created",
        path,
        "made a new ACME account key in {path} (0600)"
    );
}

/// The dns-01 hook could not remove a TXT record it had published.
pub fn acme_hook_clear_failed(domain: &str, fqdn: &str, error: &dyn fmt::Display) {
    tracing::warn!(
        c = "NETWORK", id = ids::ACME_HOOK_CLEAR_FAILED, ctx = "acme",
        msg = "ACME hook could not clear a record", domain, fqdn, error = %error,
        "could not remove the dns-01 record {fqdn} for domain {domain}: {error}"
    );
}

/// A certificate was issued and written, but the TLS configuration could not be rebuilt.
pub fn acme_not_served(domain: &str, error: &dyn fmt::Display) {
    tracing::error!(
        c = "NETWORK", id = ids::ACME_NOT_SERVED, ctx = "acme",
        msg = "Issued certificate not served", domain, error = %error,
        "the certificate issued for domain {domain} is written but not served ({error}); the certificate in service stays"
    );
}

/// Files are watched for changes (at start, and when a reload changes which).
pub fn watch_started(files: usize, dirs: usize, debounce: Duration) {
    tracing::info!(
        c = "CONTROL", id = ids::WATCH_STARTED, ctx = "watch", msg = "Watching files",
        files = files as u64, directories = dirs as u64,
        debounceMillis = debounce.as_millis() as u64,
        "watching {files} files in {dirs} directories: a change is applied {} after it settles, as a reload would",
        humantime::format_duration(debounce)
    );
}

/// Watched files changed on disk: `action` is what moat does about it.
pub fn watch_changed(files: &str, action: &str) {
    tracing::info!(
        c = "CONTROL",
        id = ids::WATCH_CHANGED,
        ctx = "watch",
        msg = "Watched files changed",
        files,
        action,
        "changed on disk: {files}; {action}"
    );
}

/// Files (or one directory of them, `what`) cannot be watched: they are looked at every
/// `recheck` instead.
pub fn watch_unavailable(what: &str, error: &dyn fmt::Display, recheck: Duration) {
    let every = humantime::format_duration(recheck);
    if what.is_empty() {
        tracing::warn!(
            c = "CONTROL", id = ids::WATCH_UNAVAILABLE, ctx = "watch", msg = "Cannot watch files",
            error = %error,
            "cannot watch files for changes ({error}): they are looked at every {every} instead; SIGHUP or moat ctl reload apply a change at once"
        );
    } else {
        tracing::warn!(
            c = "CONTROL", id = ids::WATCH_UNAVAILABLE, ctx = "watch", msg = "Cannot watch directory",
            directory = what, error = %error,
            "cannot watch {what} for changes ({error}): its files are looked at every {every} instead"
        );
    }
}

/// `[watch] enabled = false`.
pub fn watch_off() {
    tracing::info!(
        c = "CONTROL",
        id = ids::WATCH_OFF,
        ctx = "watch",
        msg = "File watching off",
        "file watching is off ([watch] enabled = false): changed files are applied at SIGHUP or moat ctl reload"
    );
}
