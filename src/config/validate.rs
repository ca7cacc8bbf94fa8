//! Validation of a parsed config: what serde cannot check (names, addresses, references
//! between sections) and the range of every duration and count. Every problem is
//! collected, named by its key path; warnings are kept apart.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::error::Invalid;
use ipnet::IpNet;

use crate::firewall::{self, parse_cidr, Rule};

impl Config {
    /// Checks what serde cannot, resolves relative paths against `base`, and lowercases
    /// hostnames. Returns every problem found.
    pub(super) fn validate(&mut self, base: &Path) -> Vec<Invalid> {
        let mut bad = Vec::new();
        self.validate_ranges(&mut bad);
        match parse_upstream(&self.upstream.address, base) {
            Ok(a) => self.upstream.resolved = Some(a),
            Err(msg) => bad.push(Invalid::new("upstream.address", msg)),
        }
        self.validate_liveness(&mut bad);
        let exempt = cidrs(&mut bad, "auth_throttle.exempt", &self.auth_throttle.exempt);
        self.auth_throttle.exempt_nets = exempt;
        self.validate_tls(base, &mut bad);
        self.validate_egress(base, &mut bad);
        self.validate_firewall(base, &mut bad);
        if let Some(m) = &mut self.metrics {
            if let Some(allow) = &m.allow {
                m.allow_nets = Some(validate_metrics_allow(allow, &mut bad));
            }
        }
        if let Some(sock) = &mut self.admin.socket {
            *sock = base.join(&*sock);
            // sun_path holds 108 bytes including the terminating NUL.
            if sock.as_os_str().len() > 107 {
                bad.push(Invalid::new(
                    "admin.socket",
                    format!(
                        "`{}` is longer than a unix socket path may be (107 bytes)",
                        sock.display()
                    ),
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            bad.push(Invalid::new(
                "log.level",
                format!(
                    "invalid level `{}`: {e} (try \"info\" or \"debug\")",
                    self.log.level
                ),
            ));
        }
        bad
    }

    /// Every duration and count has a range (README, "Limits"): a value outside it would
    /// panic, spin or overflow at run time, so it is refused here, at file:line:col.
    fn validate_ranges(&self, bad: &mut Vec<Invalid>) {
        let l = &self.listen;
        count(
            bad,
            "listen.max_connections",
            l.max_connections,
            MAX_CONNECTIONS,
        );
        duration_in(
            bad,
            "listen.handshake_timeout",
            l.handshake_timeout,
            HANDSHAKE_TIMEOUT,
        );
        duration_in(
            bad,
            "listen.shutdown_timeout",
            l.shutdown_timeout,
            SHUTDOWN_TIMEOUT,
        );
        let connect = self.upstream.connect_timeout;
        duration_in(bad, "upstream.connect_timeout", connect, CONNECT_TIMEOUT);
        if let Some(m) = &self.metrics {
            let interval = m.readiness_interval;
            duration_in(
                bad,
                "metrics.readiness_interval",
                interval,
                READINESS_INTERVAL,
            );
        }
        if let Some(sg) = &self.firewall.security_groups {
            let refresh = sg.refresh;
            duration_in(
                bad,
                "firewall.security_groups.refresh",
                refresh,
                INVENTORY_REFRESH,
            );
        }
        let t = &self.auth_throttle;
        let failures = t.max_failures as usize;
        count(
            bad,
            "auth_throttle.max_failures",
            failures,
            THROTTLE_FAILURES,
        );
        duration_in(bad, "auth_throttle.window", t.window, THROTTLE_WINDOW);
        duration_in(bad, "auth_throttle.ban", t.ban, THROTTLE_BAN);
        count(
            bad,
            "auth_throttle.max_sources",
            t.max_sources,
            THROTTLE_SOURCES,
        );
        let debounce = self.watch.debounce;
        duration_in(bad, "watch.debounce", debounce, WATCH_DEBOUNCE);
    }

    fn validate_tls(&mut self, base: &Path, bad: &mut Vec<Invalid>) {
        let tls = &mut self.tls;
        let mut seen_names: Vec<&str> = Vec::new();
        let mut seen_hosts: Vec<(String, usize)> = Vec::new();
        if let Some(ca) = &mut tls.client_ca {
            *ca = base.join(&*ca);
        }
        if tls.client_certificates != ClientCertificates::None && tls.client_ca.is_none() {
            bad.push(Invalid::new(
                "tls.client_certificates",
                "needs tls.client_ca: the CA that client certificates must chain to",
            ));
        }
        for d in tls.domains.iter_mut() {
            d.cert = base.join(&d.cert);
            d.key = base.join(&d.key);
            if let Some(p) = &mut d.key_password_file {
                *p = base.join(&*p);
            }
            if let Some(p) = &mut d.ocsp {
                *p = base.join(&*p);
            }
            for h in d.hostnames.iter_mut() {
                *h = h.to_ascii_lowercase();
            }
            if let Some(a) = &mut d.acme {
                a.account_key = base.join(&a.account_key);
                if let Some(h) = &mut a.hook {
                    *h = base.join(&*h);
                }
                if let Some(ca) = &mut a.directory_ca {
                    *ca = base.join(&*ca);
                }
            }
        }
        for (i, d) in tls.domains.iter().enumerate() {
            if let Some(a) = &d.acme {
                validate_acme(i, d, a, tls.mode, bad, &mut self.warnings);
            }
        }
        for (i, d) in tls.domains.iter().enumerate() {
            let key = |k: &str| format!("tls.domains[{i}].{k}");
            if d.name.trim().is_empty() {
                bad.push(Invalid::new(key("name"), "must not be empty"));
            } else if seen_names.contains(&d.name.as_str()) {
                bad.push(Invalid::new(
                    key("name"),
                    format!("domain `{}` is defined twice", d.name),
                ));
            }
            seen_names.push(&d.name);
            validate_password_source(i, d, bad);
            for (j, h) in d.hostnames.iter().enumerate() {
                if let Err(msg) = check_hostname(h) {
                    bad.push(Invalid::new(
                        format!("tls.domains[{i}].hostnames[{j}]"),
                        msg,
                    ));
                } else if let Some((_, other)) = seen_hosts.iter().find(|(s, _)| s == h) {
                    bad.push(Invalid::new(
                        format!("tls.domains[{i}].hostnames[{j}]"),
                        format!(
                            "`{h}` is already served by domain `{}`",
                            tls.domains[*other].name
                        ),
                    ));
                } else {
                    seen_hosts.push((h.clone(), i));
                }
            }
        }
        match (&tls.default_domain, tls.default_domain_index()) {
            (Some(name), None) => bad.push(Invalid::new(
                "tls.default_domain",
                format!(
                    "no [[tls.domains]] is named `{name}` (names: {})",
                    names(&tls.domains)
                ),
            )),
            (None, None) if tls.domains.len() > 1 => bad.push(Invalid::new(
                "tls.domains",
                format!(
                    "with several domains, set tls.default_domain to the one served without SNI (names: {})",
                    names(&tls.domains)
                ),
            )),
            _ => {}
        }
        if tls.mode.terminates_tls() && tls.domains.is_empty() {
            bad.push(Invalid::new(
                "tls.mode",
                format!(
                    "mode {} accepts TLS clients but no [[tls.domains]] certificate is configured; add one (moat certs init) or set mode = \"disabled\"",
                    tls.mode
                ),
            ));
        }
    }

    fn validate_firewall(&mut self, base: &Path, bad: &mut Vec<Invalid>) {
        self.listen.proxy_nets = cidrs(
            bad,
            "listen.proxy_protocol_from",
            &self.listen.proxy_protocol_from,
        );
        if self.listen.proxy_protocol != ProxyProtocol::Off
            && self.listen.proxy_protocol_from.is_empty()
        {
            bad.push(Invalid::new(
                "listen.proxy_protocol_from",
                "list the load balancers (CIDRs) trusted to send PROXY headers; from anyone else a header is refused",
            ));
        }
        let fw = &mut self.firewall;
        let mut rules = Vec::with_capacity(fw.rules.len());
        for (i, r) in fw.rules.iter().enumerate() {
            match r.to_rule() {
                Err(m) => bad.push(Invalid::new(format!("firewall.rules[{i}]"), m)),
                Ok(rule) => rules.push((i, rule)),
            }
        }
        let (index, parsed): (Vec<usize>, Vec<Rule>) = rules.into_iter().unzip();
        if let Some(w) = overlap_warning(&parsed, |k| index[k]) {
            self.warnings.push(w);
        }
        let has_groups = parsed
            .iter()
            .any(|r| matches!(r.source, firewall::Source::SecurityGroup { .. }));
        fw.parsed = parsed;
        match &mut fw.security_groups {
            Some(sg) => sg.inventory = base.join(&sg.inventory),
            None if has_groups => bad.push(Invalid::new(
                "firewall",
                "security_group rules need [firewall.security_groups] inventory = \"...\" (the output of `aws ec2 describe-network-interfaces`)",
            )),
            None => {}
        }
    }

    fn validate_liveness(&self, bad: &mut Vec<Invalid>) {
        let keepalive = self.listen.tcp_keepalive;
        duration_in(bad, "listen.tcp_keepalive", keepalive, TCP_KEEPALIVE);
        if keepalive.subsec_nanos() != 0 {
            bad.push(Invalid::new(
                "listen.tcp_keepalive",
                format!(
                    "must be whole seconds (the kernel counts keepalive time in seconds), not {}",
                    show(keepalive)
                ),
            ));
        }
        if let Some(idle) = self.listen.idle_timeout {
            duration_in(bad, "listen.idle_timeout", idle, IDLE_TIMEOUT);
        }
    }

    fn validate_egress(&mut self, base: &Path, bad: &mut Vec<Invalid>) {
        let mut listens = Vec::new();
        for (i, e) in self.egress.iter_mut().enumerate() {
            e.ca = base.join(&e.ca);
            // Port 0 (tests) picks a free port each time: never a clash.
            let fixed = e.listen.port() != 0;
            if fixed && listens.contains(&e.listen) {
                bad.push(Invalid::new(
                    format!("egress[{i}].listen"),
                    format!("{} is used by two [[egress]] entries", e.listen),
                ));
            }
            if fixed && e.listen == self.listen.address {
                bad.push(Invalid::new(
                    format!("egress[{i}].listen"),
                    format!("{} is the public listen.address", e.listen),
                ));
            }
            listens.push(e.listen);
            match e.peer.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
                _ => bad.push(Invalid::new(
                    format!("egress[{i}].peer"),
                    format!("`{}` is not \"host:port\"", e.peer),
                )),
            }
            if rustls::pki_types::ServerName::try_from(e.server_name().to_string()).is_err() {
                bad.push(Invalid::new(
                    format!("egress[{i}].server_name"),
                    format!("`{}` is not a DNS name or IP address", e.server_name()),
                ));
            }
            check_egress_access(i, e, bad);
        }
    }

    /// The upstream address as validation resolved it (`None` only before validation).
    pub fn upstream_addr(&self) -> Option<UpstreamAddr> {
        self.upstream.resolved.clone()
    }
}

/// `listen.max_connections`: each connection holds two descriptors.
pub const MAX_CONNECTIONS: (usize, usize) = (1, 1_000_000);
/// `listen.handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: (Duration, Duration) = (ms(100), secs(3600));
/// `listen.shutdown_timeout`: 0 closes at once.
pub const SHUTDOWN_TIMEOUT: (Duration, Duration) = (secs(0), secs(3600));
/// `upstream.connect_timeout`.
pub const CONNECT_TIMEOUT: (Duration, Duration) = (ms(10), secs(600));
/// `metrics.readiness_interval`.
pub const READINESS_INTERVAL: (Duration, Duration) = (ms(100), secs(3600));
/// `firewall.security_groups.refresh`.
pub const INVENTORY_REFRESH: (Duration, Duration) = (ms(100), secs(86_400));
/// `listen.tcp_keepalive`: Linux's own default (7200 s) at most.
pub const TCP_KEEPALIVE: (Duration, Duration) = (secs(1), secs(7200));
/// `listen.idle_timeout`, when set.
pub const IDLE_TIMEOUT: (Duration, Duration) = (secs(1), secs(30 * 86_400));
/// `auth_throttle.max_failures`.
pub const THROTTLE_FAILURES: (usize, usize) = (1, 10_000);
/// `auth_throttle.window`.
pub const THROTTLE_WINDOW: (Duration, Duration) = (secs(1), secs(86_400));
/// `auth_throttle.ban`.
pub const THROTTLE_BAN: (Duration, Duration) = (secs(1), secs(30 * 86_400));
/// `auth_throttle.max_sources`: about 100 bytes each.
pub const THROTTLE_SOURCES: (usize, usize) = (16, 10_000_000);
/// `egress[].max_connections`.
pub const EGRESS_MAX_CONNECTIONS: (usize, usize) = (1, 1_000_000);
/// `watch.debounce`: below 10 ms a rotation's files are seen half-written; above a minute
/// a rotation waits too long.
pub const WATCH_DEBOUNCE: (Duration, Duration) = (ms(10), secs(60));

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn duration_in(bad: &mut Vec<Invalid>, key: &str, d: Duration, (min, max): (Duration, Duration)) {
    if d < min || d > max {
        bad.push(Invalid::new(
            key,
            format!(
                "{} is out of range: use {} to {}",
                humantime::format_duration(d),
                humantime::format_duration(min),
                humantime::format_duration(max)
            ),
        ));
    }
}

fn count(bad: &mut Vec<Invalid>, key: &str, n: usize, (min, max): (usize, usize)) {
    if n < min || n > max {
        bad.push(Invalid::new(
            key,
            format!("{n} is out of range: use {min} to {max}"),
        ));
    }
}

/// `tls.domains[].acme.renew_before`.
pub const ACME_RENEW_BEFORE: (Duration, Duration) = (secs(1), secs(365 * 86_400));
/// `tls.domains[].acme.retry_min`.
pub const ACME_RETRY_MIN: (Duration, Duration) = (ms(100), secs(3600));

/// `[tls.domains.acme]`: what the CA needs to be asked, and what the challenge needs.
fn validate_acme(
    i: usize,
    d: &DomainConfig,
    a: &AcmeConfig,
    mode: crate::policy::Mode,
    bad: &mut Vec<Invalid>,
    warnings: &mut Vec<Invalid>,
) {
    let key = |k: &str| format!("tls.domains[{i}].acme.{k}");
    if d.hostnames.is_empty() {
        bad.push(Invalid::new(
            format!("tls.domains[{i}].hostnames"),
            "an ACME domain needs hostnames: they are the names the certificate is requested for",
        ));
    }
    if !a.directory.starts_with("https://") {
        bad.push(Invalid::new(
            key("directory"),
            format!(
                "`{}` is not an https:// URL (ACME directories are served over HTTPS, RFC 8555)",
                a.directory
            ),
        ));
    }
    for (j, c) in a.contact.iter().enumerate() {
        if !c.contains(':') || c.chars().any(char::is_whitespace) {
            bad.push(Invalid::new(
                format!("tls.domains[{i}].acme.contact[{j}]"),
                format!("`{c}` is not a contact URL (write \"mailto:ops@example.net\")"),
            ));
        }
    }
    match (a.challenge, &a.hook) {
        (Challenge::Dns01, None) => bad.push(Invalid::new(
            key("challenge"),
            "dns-01 needs hook = \"/path/to/hook\": the program run as `HOOK set|clear FQDN VALUE` to publish the TXT record",
        )),
        (Challenge::Dns01, Some(hook)) => {
            use std::os::unix::fs::PermissionsExt;
            let problem = match std::fs::metadata(hook) {
                Err(e) => Some(format!("cannot run {}: {e}", hook.display())),
                Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                    Some(format!("{} is not an executable file", hook.display()))
                }
                Ok(_) => None,
            };
            if let Some(p) = problem {
                warnings.push(Invalid::new(
                    key("hook"),
                    format!("{p}: every dns-01 request will fail until it is"),
                ));
            }
        }
        (Challenge::TlsAlpn01, Some(_)) => bad.push(Invalid::new(
            key("hook"),
            "is for dns-01 only: with tls-alpn-01 moat answers the challenge itself on its public port",
        )),
        _ => {}
    }
    if a.challenge == Challenge::TlsAlpn01 {
        for (j, h) in d.hostnames.iter().enumerate() {
            if h.starts_with("*.") {
                bad.push(Invalid::new(
                    format!("tls.domains[{i}].hostnames[{j}]"),
                    format!("`{h}` is a wildcard: a CA issues wildcards by dns-01 only (RFC 8737), set challenge = \"dns-01\" and a hook"),
                ));
            }
        }
        if !mode.terminates_tls() {
            warnings.push(Invalid::new(
                key("challenge"),
                format!("tls-alpn-01 is answered only in modes where moat terminates TLS (allowSSL, preferSSL, requireSSL); in {mode} the CA's check fails until the mode changes: use dns-01"),
            ));
        }
    }
    if let Some(r) = a.renew_before {
        duration_in(bad, &key("renew_before"), r, ACME_RENEW_BEFORE);
    }
    duration_in(bad, &key("retry_min"), a.retry_min, ACME_RETRY_MIN);
}

/// A key's password comes from one place: a file, or a systemd credential named by a plain
/// file name (systemd puts it in `$CREDENTIALS_DIRECTORY`).
fn validate_password_source(i: usize, d: &DomainConfig, bad: &mut Vec<Invalid>) {
    let key = format!("tls.domains[{i}].key_password_credential");
    let Some(name) = &d.key_password_credential else {
        return;
    };
    if d.key_password_file.is_some() {
        bad.push(Invalid::new(
            key,
            "key_password_file is set too: the password comes from one place, keep one of them",
        ));
    } else if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains(['/', '\0'])
    {
        bad.push(Invalid::new(
            key,
            format!("`{name}` is not a credential name: write the NAME of `LoadCredential=NAME:...` or `LoadCredentialEncrypted=NAME:...` (a file name, no `/`)"),
        ));
    }
}

/// An egress listener relays whoever reaches it to the peer: off loopback, only with
/// `allow_remote` and an `allow` list.
fn check_egress_access(i: usize, e: &mut EgressConfig, bad: &mut Vec<Invalid>) {
    let key = |k: &str| format!("egress[{i}].{k}");
    e.allow_nets = cidrs(bad, &key("allow"), &e.allow);
    let loopback = firewall::normalize(e.listen.ip()).is_loopback();
    if !loopback && !e.allow_remote {
        bad.push(Invalid::new(
            key("listen"),
            format!(
                "{} is not a loopback address: whoever reaches it is relayed to {}; listen on 127.0.0.1, or set allow_remote = true and allow = [CIDRs] to name who may use it",
                e.listen, e.peer
            ),
        ));
    }
    if e.allow_remote && e.allow.is_empty() {
        bad.push(Invalid::new(
            key("allow_remote"),
            "needs allow = [CIDRs]: the sources that may use this listener",
        ));
    }
    count(
        bad,
        &key("max_connections"),
        e.max_connections,
        EGRESS_MAX_CONNECTIONS,
    );
}

/// Overlaps named in a warning before the rest are only counted.
const OVERLAPS_NAMED: usize = 3;

/// One warning for every rule already covered by another (`index` maps a position in
/// `rules` to its index in the file), placed at the first of them.
fn overlap_warning(rules: &[Rule], index: impl Fn(usize) -> usize) -> Option<Invalid> {
    let found = firewall::overlaps(rules);
    let first = found.first()?;
    let named: Vec<String> = found
        .iter()
        .take(OVERLAPS_NAMED)
        .map(|o| {
            format!(
                "firewall.rules[{}] ({}) is covered by firewall.rules[{}] ({})",
                index(o.rule),
                rules[o.rule].source,
                index(o.covered_by),
                rules[o.covered_by].source
            )
        })
        .collect();
    let more = found.len().saturating_sub(OVERLAPS_NAMED);
    let more = if more > 0 {
        format!("; and {more} more")
    } else {
        String::new()
    };
    Some(Invalid::new(
        format!("firewall.rules[{}]", index(first.rule)),
        format!(
            "{} rule{} already covered by other rules (harmless: merged when compiled): {}{more}",
            found.len(),
            if found.len() == 1 { " is" } else { "s are" },
            named.join("; ")
        ),
    ))
}

/// A duration as the config writes it (`1m 30s`, `500ms`).
fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// The domains' names for an error message: the first few, and how many more, so that a
/// config with a thousand domains still gets a one-line error.
fn names(domains: &[DomainConfig]) -> String {
    const SHOWN: usize = 8;
    let v: Vec<&str> = domains
        .iter()
        .take(SHOWN)
        .map(|d| d.name.as_str())
        .collect();
    match domains.len() {
        0 => "none".to_string(),
        n if n > SHOWN => format!("{} and {} more", v.join(", "), n - SHOWN),
        _ => v.join(", "),
    }
}

/// Why a configured value is not what its key needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is not a DNS name (a leading `*.` is the only wildcard allowed)")]
    NotDnsName(String),
    #[error("`{0}` is an IP address: clients verify hostnames, so list DNS names here")]
    IpAsHostname(String),
    #[error("`unix:` needs a socket path, e.g. \"unix:/tmp/mongodb-27018.sock\"")]
    EmptyUnixPath,
    #[error("`{0}` needs a port: \"host:port\" or \"unix:/path\"")]
    NoPort(String),
    #[error("`{0}` is not \"host:port\" (port 1-65535) or \"unix:/path\"")]
    NotHostPort(String),
    #[error("cannot resolve `{0}`: {1}")]
    Resolve(String, String),
    #[error("`{0}` resolves to no address")]
    NoAddress(String),
}

/// A DNS name, optionally with a single leading `*.` label.
fn check_hostname(h: &str) -> Result<(), ValueError> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if rest.is_empty() || h.len() > 253 || !rest.split('.').all(ok_label) {
        return Err(ValueError::NotDnsName(h.to_string()));
    }
    if rest.parse::<std::net::IpAddr>().is_ok()
        || rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(ValueError::IpAsHostname(h.to_string()));
    }
    Ok(())
}

/// `unix:/path` or `host:port` (resolved now).
fn parse_upstream(s: &str, base: &Path) -> Result<UpstreamAddr, ValueError> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(ValueError::EmptyUnixPath);
        }
        return Ok(UpstreamAddr::Unix(base.join(p)));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| ValueError::NoPort(s.to_string()))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(ValueError::NotHostPort(s.to_string()));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| ValueError::Resolve(s.to_string(), e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(ValueError::NoAddress(s.to_string()));
    }
    Ok(UpstreamAddr::Tcp {
        name: s.to_string(),
        addrs,
    })
}

fn validate_metrics_allow(allow: &[String], bad: &mut Vec<Invalid>) -> Vec<IpNet> {
    if allow.is_empty() {
        bad.push(Invalid::new(
            "metrics.allow",
            "lists no source, so nobody could reach the endpoint: list CIDRs (e.g. [\"10.0.0.0/16\"]) or remove the key to allow any source",
        ));
    }
    cidrs(bad, "metrics.allow", allow)
}

/// Parses a list of CIDRs once; each bad one is reported as `key[i]`.
fn cidrs(bad: &mut Vec<Invalid>, key: &str, list: &[String]) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        match parse_cidr(c) {
            Ok(n) => nets.push(n),
            Err(e) => bad.push(Invalid::new(format!("{key}[{i}]"), e)),
        }
    }
    nets
}

impl Config {
    /// Files that others could read or change under moat: a private key (or its password
    /// file) readable by group or other, and an admin socket directory that users other
    /// than its owner can write, so they could put their own socket where `moat ctl`
    /// looks for moat's. Not errors (`moat check` prints them as warnings): a file mode
    /// is easily fixed and not always wrong (a key shared with a group on purpose).
    pub fn permission_warnings(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        for (i, d) in self.tls.domains.iter().enumerate() {
            let secrets = [
                ("key", Some(&d.key)),
                ("key_password_file", d.key_password_file.as_ref()),
            ];
            for (key, path) in secrets {
                let Some((path, mode)) = path.and_then(|p| Some((p, file_mode(p)?))) else {
                    continue;
                };
                if let Some(who) = others(mode, 0o044) {
                    out.push(Invalid::new(
                        format!("tls.domains[{i}].{key}"),
                        format!(
                            "{} is readable by {who} (mode {mode:04o}): make it private to moat's user (chmod 600)",
                            path.display()
                        ),
                    ));
                }
            }
        }
        let dir = self.admin.socket.as_deref().and_then(Path::parent);
        if let Some((dir, mode)) = dir.and_then(|d| Some((d, file_mode(d)?))) {
            if let Some(who) = others(mode, 0o022) {
                out.push(Invalid::new(
                    "admin.socket",
                    format!(
                        "{} can be written by {who} (mode {mode:04o}): they could put their own socket where moat ctl looks for moat's; use a directory only moat's user can write (e.g. /run/moat, 0700)",
                        dir.display()
                    ),
                ));
            }
        }
        out
    }
}

/// A file's permission bits; `None` when it cannot be read (`moat check` reports that).
fn file_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Who besides the owner has the access in `bits` (group and other bits of one kind).
fn others(mode: u32, bits: u32) -> Option<&'static str> {
    match (mode & bits & 0o070 != 0, mode & bits & 0o007 != 0) {
        (true, true) => Some("its group and all users"),
        (true, false) => Some("its group"),
        (false, true) => Some("all users"),
        (false, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains(n: usize) -> Vec<DomainConfig> {
        (0..n)
            .map(|i| {
                toml::from_str(&format!(
                    "name = \"d{i}\"\nhostnames = [\"d{i}.example.net\"]\ncert = \"c.pem\"\nkey = \"k.pem\""
                ))
                .expect("a domain")
            })
            .collect()
    }

    #[test]
    fn an_error_names_a_few_domains_and_counts_the_rest() {
        assert_eq!(names(&domains(0)), "none");
        assert_eq!(names(&domains(2)), "d0, d1");
        assert_eq!(
            names(&domains(1000)),
            "d0, d1, d2, d3, d4, d5, d6, d7 and 992 more"
        );
    }
}
