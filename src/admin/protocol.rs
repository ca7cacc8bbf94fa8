//! The admin protocol (SPEC "Admin socket protocol"): one JSON object per line each way.
//! These types are the protocol: the server reads [`Request`] and writes a [`Reply`] or a
//! [`Failure`]; `moat ctl` writes the same [`Request`] and reads the same replies back. A
//! renamed field fails to compile on both sides at once.
//!
//! A reply line is the reply's own fields plus `"ok": true`, or a [`Failure`]'s fields plus
//! `"ok": false`.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::firewall::{Rule, Source};
use crate::policy::Mode;

/// One request: `{"cmd": "...", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "status")]
    Status {},
    #[serde(rename = "mode.get")]
    ModeGet {},
    #[serde(rename = "mode.set")]
    ModeSet {
        #[serde(deserialize_with = "mode_by_name")]
        mode: Mode,
        #[serde(default)]
        force: bool,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "connections")]
    Connections {
        #[serde(default)]
        plaintext: bool,
    },
    #[serde(rename = "reload")]
    Reload {},
    #[serde(rename = "rules.list")]
    RulesList {},
    #[serde(rename = "rules.add")]
    RulesAdd {
        cidr: Option<String>,
        security_group: Option<String>,
        account: Option<String>,
        #[serde(default)]
        description: String,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.remove")]
    RulesRemove {
        id: String,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.copy")]
    RulesCopy {
        /// Another deployment's moat config, or a `rules.export` file; relative paths are
        /// taken from moat's config directory.
        from: PathBuf,
        #[serde(default)]
        replace: bool,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.export")]
    RulesExport {},
    #[serde(rename = "bans.list")]
    BansList {},
    #[serde(rename = "bans.clear")]
    BansClear {
        /// One source, or every ban when absent.
        #[serde(default)]
        source: Option<IpAddr>,
    },
}

fn yes() -> bool {
    true
}

/// A mode by its name, any case (`requiressl` too), with the CLI's error message.
fn mode_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub error: String,
    /// For a refused `mode.set requireSSL`: the plaintext clients still connected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plaintext_connections: Vec<ConnView>,
}

impl Failure {
    pub fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            plaintext_connections: Vec::new(),
        }
    }
}

/// What a request gets back when it succeeds; one variant per request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    Status(Status),
    Mode(ModeReply),
    ModeSet(ModeSet),
    Connections(Connections),
    Reload(Reloaded),
    RulesList(RulesList),
    RuleAdded(RuleAdded),
    RuleRemoved(RuleRemoved),
    RulesCopied(RulesCopied),
    RulesExport(RulesExport),
    Bans(Bans),
    BansCleared(BansCleared),
}

/// `bans.list`: sources refused for failed authentications.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bans {
    pub bans: Vec<BanView>,
}

/// One ban in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    pub source: String,
    pub remaining_secs: u64,
    /// Failed authentications that started it.
    pub failures: u32,
}

/// `bans.clear`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BansCleared {
    pub cleared: usize,
}

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub mode: String,
    pub uptime_secs: u64,
    pub config: String,
    pub upstream: String,
    pub connections: ConnectionCounts,
    pub domains: Vec<DomainView>,
    pub firewall: FirewallView,
    pub egress: Vec<EgressView>,
}

/// Open connections by kind and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    pub open: usize,
    pub tls: usize,
    pub plaintext: usize,
    pub egress: usize,
}

/// A `[[tls.domains]]` as loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainView {
    pub name: String,
    pub hostnames: Vec<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// Who issued the certificate served; none while an ACME domain awaits its first.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Whether moat gets this certificate from an ACME CA.
    #[serde(default)]
    pub acme: bool,
    /// ACME: when the next request is due, Unix seconds.
    #[serde(default)]
    pub next_renewal: Option<i64>,
    /// ACME: why the last request failed, while it has not succeeded since.
    #[serde(default)]
    pub last_error: Option<String>,
    /// ACME: when a request last failed, Unix seconds.
    #[serde(default)]
    pub last_error_at: Option<i64>,
}

/// The firewall in numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallView {
    pub default: String,
    pub cidr_rules: usize,
    pub security_group_rules: usize,
    pub security_group_addresses: usize,
}

/// An `[[egress]]` listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressView {
    pub listen: String,
    pub peer: String,
}

/// `mode.get`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeReply {
    pub mode: String,
}

/// `mode.set`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeSet {
    pub mode: String,
    pub previous: String,
    pub persisted: bool,
    pub applied_in_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connections {
    pub connections: Vec<ConnView>,
}

/// One connection (stable keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnView {
    pub id: u64,
    pub remote: String,
    /// `client` or `egress`.
    pub kind: String,
    /// `tls`, `plaintext`, or none yet.
    pub transport: Option<String>,
    pub sni: Option<String>,
    pub domain: Option<String>,
    pub age_secs: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub driver: Option<String>,
    pub app: Option<String>,
    pub user: Option<String>,
}

/// `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloaded {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
    pub mode: String,
    /// What was kept as it was instead (an unusable inventory), naming the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `rules.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesList {
    pub default: String,
    pub rules: Vec<RuleView>,
}

/// A rule: `{id, kind, value, description}` (+ account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    pub id: String,
    /// `cidr` or `security_group`.
    pub kind: String,
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub description: String,
}

impl From<&Rule> for RuleView {
    fn from(r: &Rule) -> RuleView {
        let (value, account) = match &r.source {
            Source::Cidr(n) => (n.to_string(), None),
            Source::SecurityGroup { group, account } => (group.clone(), Some(account.clone())),
        };
        RuleView {
            id: r.id.clone(),
            kind: r.source.kind().to_string(),
            value,
            account,
            description: r.description.clone(),
        }
    }
}

/// `rules.add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleAdded {
    pub rule: RuleView,
    pub persisted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `rules.remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRemoved {
    pub removed: RuleView,
    pub persisted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `rules.copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesCopied {
    pub added: usize,
    pub skipped: usize,
    pub removed: usize,
    pub persisted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `rules.export`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesExport {
    pub toml: String,
}

/// A reply line that is not what the protocol says.
#[derive(Debug, Error)]
#[error("bad reply ({0})")]
pub struct BadReply(#[from] serde_json::Error);

/// The line (without its newline) that answers a request.
pub fn encode(reply: &Result<Reply, Failure>) -> String {
    let (ok, body) = match reply {
        Ok(r) => (true, serde_json::to_value(r)),
        Err(f) => (false, serde_json::to_value(f)),
    };
    let mut line = Map::new();
    line.insert("ok".into(), Value::Bool(ok));
    if let Ok(Value::Object(fields)) = body {
        line.extend(fields);
    }
    Value::Object(line).to_string()
}

impl Request {
    /// Reads the reply line to this request.
    pub fn decode(&self, line: &str) -> Result<Result<Reply, Failure>, BadReply> {
        let v: Value = serde_json::from_str(line)?;
        if v.get("ok").and_then(Value::as_bool) != Some(true) {
            return Ok(Err(serde_json::from_value(v)?));
        }
        fn get<T: DeserializeOwned>(v: Value) -> Result<T, BadReply> {
            Ok(serde_json::from_value(v)?)
        }
        Ok(Ok(match self {
            Request::Status {} => Reply::Status(get(v)?),
            Request::ModeGet {} => Reply::Mode(get(v)?),
            Request::ModeSet { .. } => Reply::ModeSet(get(v)?),
            Request::Connections { .. } => Reply::Connections(get(v)?),
            Request::Reload {} => Reply::Reload(get(v)?),
            Request::RulesList {} => Reply::RulesList(get(v)?),
            Request::RulesAdd { .. } => Reply::RuleAdded(get(v)?),
            Request::RulesRemove { .. } => Reply::RuleRemoved(get(v)?),
            Request::RulesCopy { .. } => Reply::RulesCopied(get(v)?),
            Request::RulesExport {} => Reply::RulesExport(get(v)?),
            Request::BansList {} => Reply::Bans(get(v)?),
            Request::BansClear { .. } => Reply::BansCleared(get(v)?),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_view() -> RuleView {
        RuleView {
            id: "r0123456789ab".into(),
            kind: "security_group".into(),
            value: "sg-0a1b2c3d".into(),
            account: Some("123456789012".into()),
            description: "app servers".into(),
        }
    }

    fn conn_view() -> ConnView {
        ConnView {
            id: 12,
            remote: "10.0.0.5:51234".into(),
            kind: "client".into(),
            transport: Some("plaintext".into()),
            sni: None,
            domain: None,
            age_secs: 1.5,
            bytes_in: 10,
            bytes_out: 20,
            driver: Some("PyMongo 4.20.0".into()),
            app: None,
            user: Some("alice@admin".into()),
        }
    }

    /// Every request, and a reply of the right kind for it.
    fn every_exchange() -> Vec<(Request, Reply)> {
        vec![
            (
                Request::Status {},
                Reply::Status(Status {
                    version: "0.1.0".into(),
                    mode: "preferSSL".into(),
                    uptime_secs: 7,
                    config: "/etc/moat.toml".into(),
                    upstream: "127.0.0.1:27018".into(),
                    connections: ConnectionCounts {
                        open: 3,
                        tls: 2,
                        plaintext: 1,
                        egress: 0,
                    },
                    domains: vec![
                        DomainView {
                            name: "deployment".into(),
                            hostnames: vec!["db1.example.net".into()],
                            not_after: Some(1_900_000_000),
                            issuer: Some("moat dev CA".into()),
                            acme: false,
                            next_renewal: None,
                            last_error: None,
                            last_error_at: None,
                        },
                        DomainView {
                            name: "scope".into(),
                            hostnames: vec!["*.k3x9q2.example.net".into()],
                            not_after: Some(1_800_000_000),
                            issuer: Some("Pebble Intermediate CA 7a24c3".into()),
                            acme: true,
                            next_renewal: Some(1_790_000_000),
                            last_error: Some("hook `dns-hook set ...`: exit status: 1".into()),
                            last_error_at: Some(1_789_000_000),
                        },
                    ],
                    firewall: FirewallView {
                        default: "deny".into(),
                        cidr_rules: 1,
                        security_group_rules: 1,
                        security_group_addresses: 4,
                    },
                    egress: vec![EgressView {
                        listen: "127.0.0.1:27101".into(),
                        peer: "db2.example.net:27017".into(),
                    }],
                }),
            ),
            (
                Request::ModeGet {},
                Reply::Mode(ModeReply {
                    mode: "allowSSL".into(),
                }),
            ),
            (
                Request::ModeSet {
                    mode: Mode::RequireSsl,
                    force: true,
                    persist: false,
                },
                Reply::ModeSet(ModeSet {
                    mode: "requireSSL".into(),
                    previous: "preferSSL".into(),
                    persisted: false,
                    applied_in_us: 3,
                    warning: Some("not durable".into()),
                }),
            ),
            (
                Request::Connections { plaintext: true },
                Reply::Connections(Connections {
                    connections: vec![conn_view()],
                }),
            ),
            (
                Request::Reload {},
                Reply::Reload(Reloaded {
                    applied: vec!["mode preferSSL".into()],
                    needs_restart: vec!["listen.address".into()],
                    mode: "preferSSL".into(),
                    warnings: vec!["firewall.security_groups.inventory: x".into()],
                }),
            ),
            (
                Request::RulesList {},
                Reply::RulesList(RulesList {
                    default: "deny".into(),
                    rules: vec![rule_view()],
                }),
            ),
            (
                Request::RulesAdd {
                    cidr: Some("203.0.113.0/24".into()),
                    security_group: None,
                    account: None,
                    description: "office VPN".into(),
                    persist: true,
                },
                Reply::RuleAdded(RuleAdded {
                    rule: rule_view(),
                    persisted: true,
                    warning: None,
                }),
            ),
            (
                Request::RulesRemove {
                    id: "r0123456789ab".into(),
                    persist: true,
                },
                Reply::RuleRemoved(RuleRemoved {
                    removed: rule_view(),
                    persisted: true,
                    warning: None,
                }),
            ),
            (
                Request::RulesCopy {
                    from: "/etc/other.toml".into(),
                    replace: true,
                    persist: false,
                },
                Reply::RulesCopied(RulesCopied {
                    added: 1,
                    skipped: 2,
                    removed: 3,
                    persisted: false,
                    warning: None,
                }),
            ),
            (
                Request::RulesExport {},
                Reply::RulesExport(RulesExport {
                    toml: "[[firewall.rules]]\n".into(),
                }),
            ),
            (
                Request::BansList {},
                Reply::Bans(Bans {
                    bans: vec![BanView {
                        source: "203.0.113.5".into(),
                        remaining_secs: 290,
                        failures: 20,
                    }],
                }),
            ),
            (
                Request::BansClear {
                    source: Some("203.0.113.5".parse().unwrap()),
                },
                Reply::BansCleared(BansCleared { cleared: 1 }),
            ),
        ]
    }

    #[test]
    fn every_request_and_reply_round_trips_through_its_line() {
        for (request, reply) in every_exchange() {
            let line = serde_json::to_string(&request).unwrap();
            let back: Request = serde_json::from_str(&line).unwrap();
            assert_eq!(back, request, "{line}");

            let line = encode(&Ok(reply.clone()));
            assert!(line.starts_with(r#"{"ok":true,"#), "{line}");
            assert_eq!(request.decode(&line).unwrap(), Ok(reply), "{line}");
        }
    }

    #[test]
    fn a_failure_round_trips_with_the_plaintext_clients_it_names() {
        let failure = Failure {
            error: "1 plaintext connection is open".into(),
            plaintext_connections: vec![conn_view()],
        };
        let line = encode(&Err(failure.clone()));
        assert!(line.starts_with(r#"{"ok":false,"error":"#), "{line}");
        let request = Request::ModeSet {
            mode: Mode::RequireSsl,
            force: false,
            persist: true,
        };
        assert_eq!(request.decode(&line).unwrap(), Err(failure));
    }

    #[test]
    fn a_domain_from_a_moat_without_acme_still_decodes() {
        let line = r#"{"name":"d","hostnames":["db1.example.net"],"not_after":1900000000}"#;
        let d: DomainView = serde_json::from_str(line).unwrap();
        assert_eq!((d.acme, d.issuer, d.next_renewal), (false, None, None));
    }

    #[test]
    fn the_wire_form_is_spec_s() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"mode.set","mode":"requiressl","force":false}"#)
                .unwrap();
        assert_eq!(
            r,
            Request::ModeSet {
                mode: Mode::RequireSsl,
                force: false,
                persist: true
            }
        );
        let e = serde_json::from_str::<Request>(r#"{"cmd":"mode.set","mode":"maybeSSL"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown mode `maybeSSL`"), "{e}");
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"status","x":1}"#).is_err());
    }
}
