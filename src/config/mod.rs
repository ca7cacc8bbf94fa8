//! The TOML configuration: the schema and its defaults. Validation (what serde cannot
//! check, and the ranges) is in [`validate`], placing errors at file:line:col in
//! [`source`], and loading everything the file names in [`load`].
//!
//! Unknown keys are errors. Every error names the file, line:column and key path.
//! Relative paths (certificates, keys, unix sockets) are resolved against the directory of
//! the config file, so a config works the same from any working directory.

pub mod load;
pub mod source;
mod validate;

pub use source::{load, Source};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use ipnet::IpNet;

use crate::error::Invalid;
use crate::firewall::{DefaultPolicy, Rule, RuleError};
use crate::policy::Mode;
pub use crate::proxy_protocol::ProxyProtocol;

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
    #[serde(default)]
    pub auth_throttle: AuthThrottleConfig,
    #[serde(default)]
    pub watch: WatchConfig,
    /// What validation found worth saying but not refusing (e.g. overlapping rules), by
    /// key path; `moat check` prints them and `run` logs them.
    #[serde(skip)]
    pub warnings: Vec<Invalid>,
}

/// `[auth_throttle]`: a source that keeps failing authentication is refused for a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthThrottleConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failed authentications from one address within `window` that start a ban.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    #[serde(default = "default_throttle_window", deserialize_with = "duration")]
    pub window: Duration,
    /// How long a banned address is refused at accept.
    #[serde(default = "default_ban", deserialize_with = "duration")]
    pub ban: Duration,
    /// Sources (CIDRs) never banned: application subnets whose misconfigured app would
    /// otherwise lock itself out.
    #[serde(default)]
    pub exempt: Vec<String>,
    /// Addresses tracked at most (memory stays bounded under a scan).
    #[serde(default = "default_max_sources")]
    pub max_sources: usize,
    /// `exempt`, parsed once by validation.
    #[serde(skip)]
    exempt_nets: Vec<IpNet>,
}

fn default_max_failures() -> u32 {
    20
}
fn default_throttle_window() -> Duration {
    Duration::from_secs(60)
}
fn default_ban() -> Duration {
    Duration::from_secs(300)
}
fn default_max_sources() -> usize {
    100_000
}

impl Default for AuthThrottleConfig {
    fn default() -> Self {
        AuthThrottleConfig {
            enabled: true,
            max_failures: default_max_failures(),
            window: default_throttle_window(),
            ban: default_ban(),
            exempt: Vec::new(),
            max_sources: default_max_sources(),
            exempt_nets: Vec::new(),
        }
    }
}

impl AuthThrottleConfig {
    /// The throttle's policy, as validation parsed it.
    pub fn policy(&self) -> crate::throttle::Policy {
        crate::throttle::Policy {
            enabled: self.enabled,
            max_failures: self.max_failures,
            window: self.window,
            ban: self.ban,
            exempt: self.exempt_nets.clone(),
            max_sources: self.max_sources,
        }
    }
}

/// `[watch]`: files that change under moat (the config, certificates, keys, password and
/// OCSP files, the client CA, the inventory) are applied as a reload would, without a signal.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Quiet time after the last change before the files are looked at: a rotation that
    /// writes several files (or a symlink swap) is applied once, whole.
    #[serde(default = "default_watch_debounce", deserialize_with = "duration")]
    pub debounce: Duration,
}

fn default_watch_debounce() -> Duration {
    Duration::from_millis(200)
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            enabled: true,
            debounce: default_watch_debounce(),
        }
    }
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
    /// `allow`, parsed once by validation.
    #[serde(skip)]
    allow_nets: Vec<IpNet>,
}

fn default_egress_max_connections() -> usize {
    1024
}

impl EgressConfig {
    /// `allow`, as validation parsed it.
    pub fn allow_nets(&self) -> &[IpNet] {
        &self.allow_nets
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
    /// `rules`, parsed once by validation (which reports the bad ones).
    #[serde(skip)]
    parsed: Vec<Rule>,
}

impl FirewallConfig {
    /// The rules, as validation parsed them.
    pub fn rules(&self) -> &[Rule] {
        &self.parsed
    }
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
    pub fn to_rule(&self) -> Result<Rule, RuleError> {
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
    /// `allow`, parsed once by validation.
    #[serde(skip)]
    allow_nets: Option<Vec<IpNet>>,
}

impl MetricsConfig {
    /// `allow`, as validation parsed it; `None` = any source.
    pub fn allow_nets(&self) -> Option<&[IpNet]> {
        self.allow_nets.as_deref()
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
    /// `proxy_protocol_from`, parsed once by validation.
    #[serde(skip)]
    proxy_nets: Vec<IpNet>,
    /// Idle time before TCP keepalive probes start, on client, upstream and egress sockets
    /// (mongod's `tcpKeepAliveTime`); see [`keepalive_interval`] for the rest.
    #[serde(default = "default_tcp_keepalive", deserialize_with = "duration")]
    pub tcp_keepalive: Duration,
    /// Close a forwarded connection after this long without a byte either way. Off by
    /// default, as in mongod.
    #[serde(default, deserialize_with = "some_duration")]
    pub idle_timeout: Option<Duration>,
}

impl ListenConfig {
    /// The load balancers trusted to send PROXY headers, as validation parsed them.
    pub fn proxy_from(&self) -> &[IpNet] {
        &self.proxy_nets
    }
}

fn default_tcp_keepalive() -> Duration {
    Duration::from_secs(120)
}

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
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// PEM: leaf first, then the chain.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 or SEC1, or encrypted PKCS#8 with...
    pub key: PathBuf,
    /// ...its password in this file (one trailing newline is ignored)...
    pub key_password_file: Option<PathBuf>,
    /// ...or in this systemd credential (`$CREDENTIALS_DIRECTORY/NAME`, e.g. from
    /// `LoadCredentialEncrypted=`).
    pub key_password_credential: Option<String>,
    /// A DER OCSP response for the leaf certificate, stapled while it is good and current.
    pub ocsp: Option<PathBuf>,
    /// Which domain scope the names belong to (`moat certs scope new` writes it); `moat
    /// check` warns when two deployments share a deployment scope.
    pub scope: Option<Scope>,
    /// `[tls.domains.acme]`: moat gets and renews this certificate from an ACME CA.
    pub acme: Option<AcmeConfig>,
}

/// A domain scope: how widely one random subdomain (and its wildcard certificate) is
/// shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Shared by every cluster of an account: one certificate, wider reach if it leaks.
    Account,
    /// One cluster's own: never shared with another deployment.
    Deployment,
}

impl Scope {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Account => "account",
            Scope::Deployment => "deployment",
        }
    }
}

/// How an ACME CA checks that moat controls the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Challenge {
    /// A TXT record `_acme-challenge.NAME`, published by `hook`: wildcards, any port.
    #[serde(rename = "dns-01")]
    Dns01,
    /// A TLS handshake with ALPN `acme-tls/1` on moat's own port (RFC 8737): no wildcards,
    /// and the CA must reach the port as 443.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Challenge {
    /// The name as written in the config (and in RFC 8555).
    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::Dns01 => "dns-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

/// `[tls.domains.acme]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (https).
    pub directory: String,
    /// Contact URLs for the account (`mailto:ops@example.net`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// The account's private key (PEM, PKCS#8 P-256); made, mode 0600, when missing.
    pub account_key: PathBuf,
    pub challenge: Challenge,
    /// For dns-01: the program run as `HOOK set|clear FQDN VALUE`.
    pub hook: Option<PathBuf>,
    /// Renew this long before notAfter (default: 30 days, or a third of the lifetime for
    /// certificates shorter-lived than 90 days).
    #[serde(default, deserialize_with = "some_duration")]
    pub renew_before: Option<Duration>,
    /// The CA certificate (PEM) that the directory's own HTTPS certificate chains to, for a
    /// private or test CA; default: the system's roots.
    pub directory_ca: Option<PathBuf>,
    /// Wait this long after a first failure; doubles per failure up to 6 hours, with jitter.
    #[serde(default = "default_acme_retry", deserialize_with = "duration")]
    pub retry_min: Duration,
}

fn default_acme_retry() -> Duration {
    Duration::from_secs(60)
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
