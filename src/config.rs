//! The TOML configuration: schema, defaults and validation.
//!
//! Unknown keys are errors. Every error names the file, line:column and key path.
//! Relative paths (certificates, keys, unix sockets) are resolved against the directory of
//! the config file, so a config works the same from any working directory.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{ConfigError, ConfigErrors, Invalid};
use crate::firewall::{self, parse_cidr, DefaultPolicy, Rule};
use crate::policy::Mode;
pub use crate::proxy_header::ProxyProtocol;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub egress: Vec<EgressConfig>,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub log: LogConfig,
    /// What validation found worth saying but not refusing (e.g. overlapping rules), by
    /// key path; `moat check` prints them and `run` logs them.
    #[serde(skip)]
    pub warnings: Vec<Invalid>,
}

/// `[[egress]]`: a local listener the node's own mongod dials instead of a replica-set
/// peer; moat forwards to the peer over TLS in preferSSL/requireSSL, plaintext otherwise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `host:port` of the peer's public (moat) port; resolved at each connect.
    pub peer: String,
    /// Name verified in the peer's certificate; defaults to the host of `peer`.
    pub server_name: Option<String>,
    /// CA certificate(s) (PEM) the peer's certificate must chain to.
    pub ca: PathBuf,
    /// Lets a `listen` address off loopback be used at all (with `allow`): such a listener
    /// relays whoever reaches it to the peer.
    #[serde(default)]
    pub allow_remote: bool,
    /// Sources (CIDRs) that may connect; checked at accept, before a byte is read.
    /// Empty: anyone who can reach `listen` (loopback only, unless `allow_remote`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Connections open at once through this listener; beyond, refused at accept.
    #[serde(default = "default_egress_max_connections")]
    pub max_connections: usize,
}

fn default_egress_max_connections() -> usize {
    1024
}

/// What `[[egress]] max_connections` may be.
pub const EGRESS_MAX_CONNECTIONS_RANGE: RangeInclusive<usize> = 1..=1_000_000;

impl EgressConfig {
    /// `allow`, parsed (validated already by [`load`]).
    pub fn allow_nets(&self) -> Vec<ipnet::IpNet> {
        self.allow
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect()
    }

    /// The name the peer's certificate must carry.
    pub fn server_name(&self) -> &str {
        match &self.server_name {
            Some(s) => s,
            None => self
                .peer
                .rsplit_once(':')
                .map_or(self.peer.as_str(), |(h, _)| h),
        }
    }
}

/// `[firewall]`: who may connect. Without the section, nobody may: the default is deny.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    #[serde(default)]
    pub default: DefaultPolicy,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    pub security_groups: Option<SecurityGroupsConfig>,
}

/// `[[firewall.rules]]`: a `cidr`, or a `security_group` with its `account`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub cidr: Option<String>,
    pub security_group: Option<String>,
    pub account: Option<String>,
    #[serde(default)]
    pub description: String,
}

impl RuleConfig {
    pub fn to_rule(&self) -> Result<Rule, String> {
        Rule::parse(
            self.cidr.as_deref(),
            self.security_group.as_deref(),
            self.account.as_deref(),
            &self.description,
        )
    }
}

/// `[firewall.security_groups]`: where the EC2 inventory is and how often to look at it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupsConfig {
    /// `aws ec2 describe-network-interfaces` output.
    pub inventory: PathBuf,
    /// How often the file is checked for changes.
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

impl Config {
    /// The firewall rules, parsed (validated already by [`load`]).
    pub fn rules(&self) -> Vec<Rule> {
        self.firewall
            .rules
            .iter()
            .filter_map(|r| r.to_rule().ok())
            .collect()
    }

    /// `proxy_protocol_from`, parsed (validated already by [`load`]).
    pub fn proxy_from(&self) -> Vec<ipnet::IpNet> {
        self.listen
            .proxy_protocol_from
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect()
    }
}

/// `[metrics]`: the HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `GET /metrics`, `/healthz`, `/readyz`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// How often moat connects to the upstream itself when no client did (for /readyz).
    #[serde(default = "default_readiness_interval", deserialize_with = "duration")]
    pub readiness_interval: Duration,
    /// Sources (CIDRs) that get an HTTP answer; anyone else is closed at accept. Without
    /// it, anyone who can reach `listen`.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
}

impl MetricsConfig {
    /// `allow`, parsed (validated already by [`load`]); `None` = any source.
    pub fn allow_nets(&self) -> Option<Vec<ipnet::IpNet>> {
        self.allow
            .as_ref()
            .map(|a| a.iter().filter_map(|c| parse_cidr(c).ok()).collect())
    }
}

fn default_readiness_interval() -> Duration {
    Duration::from_secs(5)
}

/// `[admin]`: the control socket `moat ctl` talks to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket path, created mode 0600 (its directory 0700 if moat creates it).
    /// Without it there is no admin socket.
    pub socket: Option<PathBuf>,
}

/// `[listen]`: the public port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    #[serde(deserialize_with = "socket_addr")]
    pub address: SocketAddr,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Accept → first bytes → TLS handshake done.
    #[serde(default = "default_handshake_timeout", deserialize_with = "duration")]
    pub handshake_timeout: Duration,
    /// How long SIGTERM waits for open connections before exiting.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "duration")]
    pub shutdown_timeout: Duration,
    /// Read a PROXY header (off | v1 | v2 | any) from senders in `proxy_protocol_from`.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// CIDRs of the load balancers trusted to send PROXY headers.
    #[serde(default)]
    pub proxy_protocol_from: Vec<String>,
    /// Idle time before TCP keepalive probes start, on client, upstream and egress sockets
    /// (mongod's `tcpKeepAliveTime`); see [`keepalive_interval`] for the rest.
    #[serde(default = "default_tcp_keepalive", deserialize_with = "duration")]
    pub tcp_keepalive: Duration,
    /// Close a forwarded connection after this long without a byte either way. Off by
    /// default, as in mongod.
    #[serde(default, deserialize_with = "some_duration")]
    pub idle_timeout: Option<Duration>,
}

fn default_tcp_keepalive() -> Duration {
    Duration::from_secs(120)
}

/// What `listen.tcp_keepalive` may be: Linux's own default (7200 s) at most.
pub const TCP_KEEPALIVE_RANGE: RangeInclusive<Duration> =
    RangeInclusive::new(Duration::from_secs(1), Duration::from_secs(2 * 3600));

/// What `listen.idle_timeout` may be, when set.
pub const IDLE_TIMEOUT_RANGE: RangeInclusive<Duration> =
    RangeInclusive::new(Duration::from_secs(1), Duration::from_secs(30 * 24 * 3600));

/// Keepalive probes sent, after `tcp_keepalive` of silence, before a peer is declared
/// dead.
pub const KEEPALIVE_PROBES: u32 = 5;

/// The interval between keepalive probes for a `tcp_keepalive` time: a tenth of it in
/// whole seconds (the kernel's unit), at least 1 s. A peer that vanished silently is
/// closed after `time + KEEPALIVE_PROBES × interval` of silence, at most 1.5 × `time` from
/// 10 s up: 180 s for the default 120 s, 6 s for 1 s.
pub fn keepalive_interval(time: Duration) -> Duration {
    Duration::from_secs((time.as_secs() / 10).max(1))
}

fn default_max_connections() -> usize {
    20_000
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[upstream]`: the local mongod.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `host:port` or `unix:/path/to.sock`.
    pub address: String,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// `address` resolved, once, by validation.
    #[serde(skip)]
    resolved: Option<UpstreamAddr>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(3)
}

/// Where the upstream is, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamAddr {
    /// `host:port`, resolved once at load; tried in order.
    Tcp {
        name: String,
        addrs: Vec<SocketAddr>,
    },
    /// `unix:/path`.
    Unix(PathBuf),
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Tcp { name, .. } => f.write_str(name),
            UpstreamAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// TLS protocol floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MinVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// mongod's default is `disabled`; so is moat's.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub min_version: MinVersion,
    /// Domain served without SNI or for an unknown name; optional with one domain.
    pub default_domain: Option<String>,
    /// Whether clients present a certificate: none | optional | required.
    #[serde(default)]
    pub client_certificates: ClientCertificates,
    /// CA (PEM) that client certificates must chain to; needed unless `none`.
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
}

/// `[tls] client_certificates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificates {
    /// Not requested.
    #[default]
    None,
    /// Requested and verified when sent; clients without one are let in (and logged).
    Optional,
    /// Clients without a valid certificate fail the handshake.
    Required,
}

fn default_mode() -> Mode {
    Mode::Disabled
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            mode: default_mode(),
            min_version: MinVersion::default(),
            default_domain: None,
            client_certificates: ClientCertificates::None,
            client_ca: None,
            domains: Vec::new(),
        }
    }
}

impl TlsConfig {
    /// Index of the domain served to clients without (or with an unknown) SNI.
    pub fn default_domain_index(&self) -> Option<usize> {
        match &self.default_domain {
            Some(name) => self.domains.iter().position(|d| &d.name == name),
            None if self.domains.len() == 1 => Some(0),
            None => None,
        }
    }
}

/// `[[tls.domains]]`: one certificate and the names it is served for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// PEM: leaf first, then the chain.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1, or encrypted PKCS#8 with...
    pub key: PathBuf,
    /// ...its password in this file (one trailing newline is ignored).
    pub key_password_file: Option<PathBuf>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// mongod 3.x text lines.
    #[default]
    Text,
    /// mongod 4.4+ structured JSON lines.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter (`info`, `debug`, `moat=debug,rustls=info`); MOAT_LOG / RUST_LOG win.
    #[serde(default = "default_level")]
    pub level: String,
    /// Parse the MongoDB handshake to log client metadata and authentication (and fill
    /// driver/app/user in `moat ctl connections`).
    #[serde(default = "yes")]
    pub inspect: bool,
}

fn yes() -> bool {
    true
}

fn default_level() -> String {
    "info".to_string()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_level(),
            inspect: true,
        }
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "`{s}` is not an \"ip:port\" address (e.g. \"0.0.0.0:27017\" or \"[::]:27017\")"
        ))
    })
}

fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration `{s}` ({e}): write it like \"10s\" or \"500ms\""
        ))
    })
}

/// The text a config was read from, kept to place errors at line:column.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    /// Reads a config file.
    pub fn read(path: &Path) -> Result<Source, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                position: None,
                key: String::new(),
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            text,
        })
    }

    /// The directory relative paths in this config are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::new(),
        }
    }

    /// Places problems (named by key path) at their line:column in this file.
    pub fn place(&self, problems: Vec<Invalid>) -> ConfigErrors {
        let doc = toml_edit::Document::parse(self.text.as_str()).ok();
        ConfigErrors(
            problems
                .into_iter()
                .map(|p| {
                    let span = doc.as_ref().and_then(|d| locate(d.as_table(), &p.key));
                    self.error_at(span, p.key, p.message)
                })
                .collect(),
        )
    }

    fn error_at(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            position: span.map(|s| line_col(&self.text, s.start)),
            key,
            message,
        }
    }

    /// Parses and validates (files named in the config are checked later, by their loaders).
    pub fn parse(&self) -> Result<Config, ConfigErrors> {
        let de = toml::de::Deserializer::parse(&self.text).map_err(|e| {
            ConfigErrors(vec![self.error_at(
                e.span(),
                String::new(),
                e.message().to_string(),
            )])
        })?;
        let mut cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = if key == "." { String::new() } else { key };
            ConfigErrors(vec![self.error_at(
                inner.span(),
                key,
                inner.message().to_string(),
            )])
        })?;
        let problems = cfg.validate(&self.base_dir());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(self.place(problems))
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<(Config, Source), ConfigErrors> {
    let source = Source::read(path)?;
    let cfg = source.parse()?;
    Ok((cfg, source))
}

impl Config {
    /// Checks what serde cannot, resolves relative paths against `base`, and lowercases
    /// hostnames. Returns every problem found.
    fn validate(&mut self, base: &Path) -> Vec<Invalid> {
        let mut bad = Vec::new();
        self.validate_ranges(&mut bad);
        match parse_upstream(&self.upstream.address, base) {
            Ok(a) => self.upstream.resolved = Some(a),
            Err(msg) => bad.push(Invalid::new("upstream.address", msg)),
        }
        self.validate_liveness(&mut bad);
        self.validate_tls(base, &mut bad);
        self.validate_egress(base, &mut bad);
        self.validate_firewall(base, &mut bad);
        if let Some(allow) = self.metrics.as_ref().and_then(|m| m.allow.as_ref()) {
            validate_metrics_allow(allow, &mut bad);
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
            for h in d.hostnames.iter_mut() {
                *h = h.to_ascii_lowercase();
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
        if tls.mode.accepts_tls() && tls.domains.is_empty() {
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
        for (i, c) in self.listen.proxy_protocol_from.iter().enumerate() {
            if let Err(m) = parse_cidr(c) {
                bad.push(Invalid::new(format!("listen.proxy_protocol_from[{i}]"), m));
            }
        }
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
        let parsed: Vec<Rule> = rules.iter().map(|(_, r)| r.clone()).collect();
        if let Some(w) = overlap_warning(&parsed, |k| rules[k].0) {
            self.warnings.push(w);
        }
        let has_groups = parsed
            .iter()
            .any(|r| matches!(r.source, firewall::Source::SecurityGroup { .. }));
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
        if !TCP_KEEPALIVE_RANGE.contains(&keepalive) {
            bad.push(Invalid::new(
                "listen.tcp_keepalive",
                format!("must be from 1s to 2h, not {}", show(keepalive)),
            ));
        } else if keepalive.subsec_nanos() != 0 {
            bad.push(Invalid::new(
                "listen.tcp_keepalive",
                format!(
                    "must be whole seconds (the kernel counts keepalive time in seconds), not {}",
                    show(keepalive)
                ),
            ));
        }
        if let Some(idle) = self.listen.idle_timeout {
            if !IDLE_TIMEOUT_RANGE.contains(&idle) {
                bad.push(Invalid::new(
                    "listen.idle_timeout",
                    format!(
                        "must be from 1s to 30days, not {} (leave it out for no idle timeout)",
                        show(idle)
                    ),
                ));
            }
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

    /// The upstream address as validation resolved it.
    pub fn upstream_addr(&self) -> Result<UpstreamAddr, String> {
        self.upstream
            .resolved
            .clone()
            .ok_or_else(|| format!("`{}` was not resolved", self.upstream.address))
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

/// An egress listener relays whoever reaches it to the peer: off loopback, only with
/// `allow_remote` and an `allow` list.
fn check_egress_access(i: usize, e: &EgressConfig, bad: &mut Vec<Invalid>) {
    let key = |k: &str| format!("egress[{i}].{k}");
    for (j, c) in e.allow.iter().enumerate() {
        if let Err(m) = parse_cidr(c) {
            bad.push(Invalid::new(format!("egress[{i}].allow[{j}]"), m));
        }
    }
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
    if !EGRESS_MAX_CONNECTIONS_RANGE.contains(&e.max_connections) {
        bad.push(Invalid::new(
            key("max_connections"),
            format!("must be from 1 to 1000000, not {}", e.max_connections),
        ));
    }
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

fn names(domains: &[DomainConfig]) -> String {
    let v: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// A DNS name, optionally with a single leading `*.` label.
fn check_hostname(h: &str) -> Result<(), String> {
    let rest = h.strip_prefix("*.").unwrap_or(h);
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if rest.is_empty() || h.len() > 253 || !rest.split('.').all(ok_label) {
        return Err(format!(
            "`{h}` is not a DNS name (a leading `*.` is the only wildcard allowed)"
        ));
    }
    if rest.parse::<std::net::IpAddr>().is_ok()
        || rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(format!(
            "`{h}` is an IP address: clients verify hostnames, so list DNS names here"
        ));
    }
    Ok(())
}

/// `unix:/path` or `host:port` (resolved now).
fn parse_upstream(s: &str, base: &Path) -> Result<UpstreamAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err(
                "`unix:` needs a socket path, e.g. \"unix:/tmp/mongodb-27018.sock\"".into(),
            );
        }
        return Ok(UpstreamAddr::Unix(base.join(p)));
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` needs a port: \"host:port\" or \"unix:/path\""))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "`{s}` is not \"host:port\" (port 1-65535) or \"unix:/path\""
        ));
    }
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve `{s}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{s}` resolves to no address"));
    }
    Ok(UpstreamAddr::Tcp {
        name: s.to_string(),
        addrs,
    })
}

/// A place in a parsed document while walking a key path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a toml_edit::Item),
    Table(&'a toml_edit::Table),
    Value(&'a toml_edit::Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(i) => i.span(),
            Node::Table(t) => t.span(),
            Node::Value(v) => v.span(),
        }
    }

    /// The child under `name`, with the span of its key.
    fn child(self, name: &str) -> Option<(Option<Range<usize>>, Node<'a>)> {
        let table = match self {
            Node::Item(toml_edit::Item::Table(t)) | Node::Table(t) => t,
            Node::Item(toml_edit::Item::Value(toml_edit::Value::InlineTable(t)))
            | Node::Value(toml_edit::Value::InlineTable(t)) => {
                let (k, v) = t.get_key_value(name)?;
                return Some((k.span(), Node::Item(v)));
            }
            _ => return None,
        };
        let (k, v) = table.get_key_value(name)?;
        Some((k.span(), Node::Item(v)))
    }

    fn index(self, i: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(toml_edit::Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(toml_edit::Item::Value(toml_edit::Value::Array(a)))
            | Node::Value(toml_edit::Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
}

/// The span of a key path (`a.b[2].c`) in a parsed document: the value's, else the
/// nearest key's found on the way.
fn locate(root: &toml_edit::Table, path: &str) -> Option<Range<usize>> {
    let mut node = Node::Table(root);
    let mut best = None;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = seg.split_at(seg.find('[').unwrap_or(seg.len()));
        let Some((key_span, child)) = node.child(name) else {
            return best;
        };
        best = key_span.or(best);
        node = child;
        for idx in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            match idx.parse().ok().and_then(|i| node.index(i)) {
                Some(n) => {
                    best = n.span().or(best);
                    node = n;
                }
                None => return best,
            }
        }
    }
    node.span().or(best)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn validate_metrics_allow(allow: &[String], bad: &mut Vec<Invalid>) {
    if allow.is_empty() {
        bad.push(Invalid::new(
            "metrics.allow",
            "lists no source, so nobody could reach the endpoint: list CIDRs (e.g. [\"10.0.0.0/16\"]) or remove the key to allow any source",
        ));
    }
    for (i, c) in allow.iter().enumerate() {
        if let Err(m) = parse_cidr(c) {
            bad.push(Invalid::new(format!("metrics.allow[{i}]"), m));
        }
    }
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
