//! TLS termination: the rustls server configuration built from `[tls]`.
//!
//! The crypto provider is aws-lc-rs: its AES-GCM, X25519 and P-256 are assembly-optimised
//! and it is rustls' default, so the fast path is also the well-trodden one.

pub mod certs;
pub mod ocsp;
pub mod sni;

use std::sync::{Arc, Mutex};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ProducesTickets, ServerConnection, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::clock;
use crate::config::{ClientCertificates, DomainConfig, MinVersion, TlsConfig};
use crate::error::Invalid;
use crate::events;
use crate::metrics::Scrape;
use sni::{Domain, Origin, SniResolver};

/// Certificates expire quietly: moat warns this many days ahead.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// TLS 1.2 session-id cache entries (TLS 1.3 resumes with stateless tickets).
const SESSION_CACHE: usize = 4096;

/// Resumption state that outlives configuration reloads, so rotating a certificate does
/// not force every reconnecting client through a full handshake.
///
/// A resumed session skips client authentication, so resumption must never grant what a
/// full handshake would now refuse: the ticket key and the session cache are tied to the
/// client-auth policy (`client_certificates` and the exact CA certificates) they were issued
/// under, and replaced whenever that policy changes. Clones share the state.
#[derive(Clone)]
pub struct Resumption(Arc<Mutex<Keys>>);

struct Keys {
    /// The policy the ticketer and cache serve; `None` until the first build.
    policy: Option<ClientAuthPolicy>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

/// What decides whether a client certificate is needed: compared exactly, not hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ClientAuthPolicy {
    mode: ClientCertificates,
    roots: Vec<CertificateDer<'static>>,
}

/// A ticket key and a session cache: together, what lets a client resume.
type SessionKeys = (Arc<dyn ProducesTickets>, Arc<dyn StoresServerSessions>);

fn fresh_keys() -> Result<SessionKeys, rustls::Error> {
    Ok((
        rustls::crypto::aws_lc_rs::Ticketer::new()?,
        ServerSessionMemoryCache::new(SESSION_CACHE),
    ))
}

impl Resumption {
    pub fn new() -> Result<Resumption, rustls::Error> {
        let (ticketer, sessions) = fresh_keys()?;
        Ok(Resumption(Arc::new(Mutex::new(Keys {
            policy: None,
            ticketer,
            sessions,
        }))))
    }

    /// The ticketer and session cache for `policy`: the ones in use while the policy is
    /// unchanged, new ones (so every earlier ticket and session id is void) when it changed.
    fn for_policy(&self, policy: ClientAuthPolicy) -> Result<SessionKeys, rustls::Error> {
        let mut keys = self
            .0
            .lock()
            .map_err(|_| rustls::Error::General("resumption state poisoned".into()))?;
        if keys.policy.as_ref().is_some_and(|p| *p != policy) {
            (keys.ticketer, keys.sessions) = fresh_keys()?;
        }
        keys.policy = Some(policy);
        Ok((keys.ticketer.clone(), keys.sessions.clone()))
    }
}

/// The crypto provider moat uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A complete, validated TLS configuration, swapped in whole on reload.
pub struct TlsState {
    pub server: Arc<ServerConfig>,
    pub resolver: Arc<SniResolver>,
    pub client_certificates: ClientCertificates,
    /// What was worth saying but not refusing: an ACME domain's files not issued yet or
    /// unusable (so served from a stand-in and renewed now), expired or missing a name; an
    /// OCSP response not stapled.
    pub warnings: Vec<Invalid>,
    /// The earliest nextUpdate (Unix seconds) of the OCSP responses stapled: the TLS state
    /// is rebuilt then, so an expired response is never sent.
    pub staples_expire: Option<i64>,
}

impl TlsState {
    /// Loads every domain's files and the client CA and builds the server configuration.
    /// `Ok(None)` when no domain is configured (mode disabled). All problems are reported,
    /// by config key. `previous` is the state served until now: an ACME domain whose files
    /// are unusable keeps its certificate from there.
    pub fn build(
        cfg: &TlsConfig,
        resumption: &Resumption,
        previous: Option<&TlsState>,
    ) -> Result<Option<TlsState>, Vec<Invalid>> {
        if cfg.domains.is_empty() {
            return Ok(None);
        }
        let provider = provider();
        let mut bad = Vec::new();
        let mut warnings = Vec::new();
        let mut domains = Vec::new();
        let now = clock::unix_secs();
        for (i, d) in cfg.domains.iter().enumerate() {
            // An ACME domain's files are moat's to renew: what would refuse another
            // domain's is said as a warning, and the CA is asked again at once.
            let acme = d.acme.is_some();
            let unusable = |problem: Invalid, warnings: &mut Vec<Invalid>| {
                let stand_in = stand_in(i, d, previous, &provider);
                warnings.push(Invalid::new(
                    problem.key,
                    format!(
                        "{}; serving {} until the ACME CA issues a new one",
                        problem.message,
                        match stand_in.as_ref().map(|s| s.origin) {
                            Ok(Origin::Kept) => "the certificate served before",
                            _ => "a self-signed placeholder",
                        }
                    ),
                ));
                stand_in
            };
            let key = match certs::certified_key(d, &provider) {
                Ok(k) => k,
                Err((which, msg)) => {
                    let problem = Invalid::new(format!("tls.domains[{i}].{}", which.key()), msg);
                    if !acme {
                        bad.push(problem);
                    } else {
                        match unusable(problem, &mut warnings) {
                            Ok(s) => domains.push(s),
                            Err(e) => bad.push(e),
                        }
                    }
                    continue;
                }
            };
            let leaf = match key.end_entity_cert() {
                Ok(der) => certs::leaf(der, &d.cert),
                Err(e) => Err(certs::CertError::Other {
                    path: d.cert.clone(),
                    message: e.to_string(),
                }),
            };
            let leaf = match leaf {
                Ok(l) => l,
                Err(msg) => {
                    bad.push(Invalid::new(format!("tls.domains[{i}].cert"), msg));
                    continue;
                }
            };
            // Expiry and names leave the certificate usable: refused for a domain whose
            // files an operator rotates, renewed away for an ACME domain.
            let soft = if acme { &mut warnings } else { &mut bad };
            if leaf.not_after < now {
                soft.push(Invalid::new(
                    format!("tls.domains[{i}].cert"),
                    format!(
                        "{} expired on {}",
                        d.cert.display(),
                        clock::date(leaf.not_after)
                    ),
                ));
            } else if leaf.not_before > now {
                soft.push(Invalid::new(
                    format!("tls.domains[{i}].cert"),
                    format!(
                        "{} is not valid until {}",
                        d.cert.display(),
                        clock::date(leaf.not_before)
                    ),
                ));
            }
            // A name the certificate does not carry fails every client that dials it.
            for (j, h) in d.hostnames.iter().enumerate() {
                if !leaf.names.iter().any(|n| certs::covers(n, h)) {
                    soft.push(Invalid::new(
                        format!("tls.domains[{i}].hostnames[{j}]"),
                        format!(
                            "`{h}` is not among the names in {} ({}): clients that dial it would fail verification",
                            d.cert.display(),
                            if leaf.names.is_empty() { "none".to_string() } else { leaf.names.join(", ") }
                        ),
                    ));
                }
            }
            domains.push(Domain {
                name: d.name.clone(),
                key,
                hostnames: d.hostnames.clone(),
                not_after: Some(leaf.not_after),
                serial: leaf.serial,
                not_before: Some(leaf.not_before),
                issuer: leaf.issuer,
                origin: Origin::Files,
            });
        }
        let mut staples_expire = None;
        if bad.is_empty() {
            for (i, (d, domain)) in cfg.domains.iter().zip(domains.iter_mut()).enumerate() {
                let Some(path) = d
                    .ocsp
                    .as_deref()
                    .filter(|_| domain.origin != Origin::Placeholder)
                else {
                    continue;
                };
                match ocsp::load(path, &domain.key.cert, now) {
                    Ok(staple) => {
                        if let Some(next) = staple.next_update {
                            staples_expire =
                                Some(staples_expire.map_or(next, |e: i64| e.min(next)));
                        }
                        let mut key = CertifiedKey::clone(&domain.key);
                        key.ocsp = Some(staple.der);
                        domain.key = Arc::new(key);
                    }
                    Err(e) => warnings.push(Invalid::new(
                        format!("tls.domains[{i}].ocsp"),
                        format!("{e}; the certificate is served without a stapled OCSP response"),
                    )),
                }
            }
        }
        let verifier = client_verifier(cfg, &provider).map_err(|p| {
            bad.push(p);
        });
        let Some(default) = cfg.default_domain_index() else {
            bad.push(Invalid::new(
                "tls.default_domain",
                "names no configured domain",
            ));
            return Err(bad);
        };
        let (true, Ok((verifier, policy))) = (bad.is_empty(), verifier) else {
            return Err(bad);
        };
        let resolver = Arc::new(SniResolver::new(domains, default));
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| vec![Invalid::new("tls.min_version", e.to_string())])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        // One ticket per connection: a driver's next connection resumes with it and gets a
        // fresh one back; a second ticket is an encryption and a write nobody uses.
        server.send_tls13_tickets = 1;
        (server.ticketer, server.session_storage) = resumption
            .for_policy(policy)
            .map_err(|e| vec![Invalid::new("tls", format!("TLS session keys: {e}"))])?;
        Ok(Some(TlsState {
            server: Arc::new(server),
            resolver,
            client_certificates: cfg.client_certificates,
            warnings,
            staples_expire,
        }))
    }

    /// The served domain named `name`.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.resolver.domains().iter().find(|d| d.name == name)
    }

    /// Logs a warning for each domain whose certificate expires within
    /// [`EXPIRY_WARNING_DAYS`]: said at start, at each reload and twice a day.
    pub fn warn_expiring(&self) {
        for (name, days, not_after) in self.expiring_within(EXPIRY_WARNING_DAYS) {
            events::certificate_expiring(name, days, &clock::date(not_after));
        }
    }

    /// `moat_certificate_expiry_timestamp_seconds`, for a scrape.
    pub fn export(&self, s: &mut Scrape) {
        s.gauge(
            "moat_certificate_expiry_timestamp_seconds",
            "notAfter of each domain's certificate, Unix seconds.",
            Some("domain"),
            self.resolver
                .domains()
                .iter()
                .filter_map(|d| Some((d.name.as_str(), d.not_after?))),
        );
    }

    /// Domains whose certificate expires within `days`: (name, days left, notAfter).
    pub fn expiring_within(&self, days: i64) -> Vec<(&str, i64, i64)> {
        let now = clock::unix_secs();
        self.resolver
            .domains()
            .iter()
            .filter_map(|d| {
                let na = d.not_after?;
                let left = (na - now).div_euclid(86_400);
                (left < days).then_some((d.name.as_str(), left, na))
            })
            .collect()
    }
}

/// How long a placeholder certificate claims to be valid: it is replaced long before.
const PLACEHOLDER_HOURS: i64 = 24;

/// What an ACME domain serves while its files are missing or unusable: the certificate
/// served before, or else a self-signed placeholder for its names.
fn stand_in(
    i: usize,
    d: &DomainConfig,
    previous: Option<&TlsState>,
    provider: &CryptoProvider,
) -> Result<Domain, Invalid> {
    let kept = previous
        .and_then(|p| p.domain(&d.name))
        .filter(|p| p.origin != Origin::Placeholder);
    if let Some(p) = kept {
        // Its OCSP response is stapled again only if the domain's `ocsp` file still fits.
        let key = match &p.key.ocsp {
            Some(_) => Arc::new(CertifiedKey {
                ocsp: None,
                ..CertifiedKey::clone(&p.key)
            }),
            None => p.key.clone(),
        };
        return Ok(Domain {
            name: d.name.clone(),
            key,
            hostnames: d.hostnames.clone(),
            not_after: p.not_after,
            serial: p.serial.clone(),
            not_before: p.not_before,
            issuer: p.issuer.clone(),
            origin: Origin::Kept,
        });
    }
    let fail = |e: &dyn std::fmt::Display| {
        Invalid::new(
            format!("tls.domains[{i}]"),
            format!("cannot make a placeholder certificate: {e}"),
        )
    };
    let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
    let mut params = rcgen::CertificateParams::new(d.hostnames.clone()).map_err(|e| fail(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "moat placeholder: awaiting ACME");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(PLACEHOLDER_HOURS);
    let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| fail(&e))?;
    Ok(Domain {
        name: d.name.clone(),
        key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
        hostnames: d.hostnames.clone(),
        not_after: None,
        serial: String::new(),
        not_before: None,
        issuer: String::new(),
        origin: Origin::Placeholder,
    })
}

/// The client-certificate verifier for `[tls] client_certificates`, and the policy it
/// enforces (which resumption must not outlive).
fn client_verifier(
    cfg: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<dyn ClientCertVerifier>, ClientAuthPolicy), Invalid> {
    let ca = match (cfg.client_certificates, &cfg.client_ca) {
        (ClientCertificates::None, _) => {
            let policy = ClientAuthPolicy {
                mode: ClientCertificates::None,
                roots: Vec::new(),
            };
            return Ok((WebPkiClientVerifier::no_client_auth(), policy));
        }
        (_, Some(ca)) => ca,
        (_, None) => {
            return Err(Invalid::new(
                "tls.client_certificates",
                "needs tls.client_ca: the CA that client certificates must chain to",
            ))
        }
    };
    let chain = certs::load_chain(ca).map_err(|m| Invalid::new("tls.client_ca", m))?;
    let mut roots = RootCertStore::empty();
    for c in &chain {
        roots
            .add(c.clone())
            .map_err(|e| Invalid::new("tls.client_ca", format!("{}: {e}", ca.display())))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if cfg.client_certificates == ClientCertificates::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    let verifier = builder
        .build()
        .map_err(|e| Invalid::new("tls.client_ca", format!("{}: {e}", ca.display())))?;
    let policy = ClientAuthPolicy {
        mode: cfg.client_certificates,
        roots: chain,
    };
    Ok((verifier, policy))
}

/// "TLS 1.3" for logs.
pub fn version_name(conn: &ServerConnection) -> &'static str {
    match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2",
        _ => "TLS",
    }
}

/// "TLS13_AES_128_GCM_SHA256" for logs.
pub fn cipher_name(conn: &ServerConnection) -> &'static str {
    conn.negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
        .unwrap_or("unknown")
}

/// Whether the handshake resumed an earlier session.
pub fn resumed(conn: &ServerConnection) -> bool {
    matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed))
}

/// A failed handshake in words, with a hint for the operator when the cause is a common one.
pub fn explain(e: &std::io::Error) -> String {
    use rustls::{AlertDescription as A, Error as E};
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<E>()) {
        Some(E::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown)) => {
            " (the client rejected moat's certificate: does it trust the CA, and is the name it \
             dialled among the domain's hostnames? Clients that dial an IP address fail here)"
        }
        Some(E::PeerIncompatible(_) | E::AlertReceived(A::ProtocolVersion)) => {
            " (the client's TLS versions or cipher suites do not overlap moat's; see tls.min_version)"
        }
        _ => "",
    };
    format!("{e}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: ClientCertificates, roots: &[&[u8]]) -> ClientAuthPolicy {
        ClientAuthPolicy {
            mode,
            roots: roots
                .iter()
                .map(|r| CertificateDer::from(r.to_vec()))
                .collect(),
        }
    }

    fn same(a: &Arc<dyn ProducesTickets>, b: &Arc<dyn ProducesTickets>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
    }

    #[test]
    fn tickets_survive_reloads_that_keep_the_client_auth_policy() {
        let r = Resumption::new().unwrap();
        let (t1, s1) = r.for_policy(policy(ClientCertificates::None, &[])).unwrap();
        let (t2, s2) = r.for_policy(policy(ClientCertificates::None, &[])).unwrap();
        assert!(same(&t1, &t2));
        assert!(std::ptr::addr_eq(Arc::as_ptr(&s1), Arc::as_ptr(&s2)));
    }

    #[test]
    fn a_tightened_policy_or_another_ca_voids_every_ticket() {
        let r = Resumption::new().unwrap();
        let (none, _) = r.for_policy(policy(ClientCertificates::None, &[])).unwrap();
        let (required, _) = r
            .for_policy(policy(ClientCertificates::Required, &[b"ca-1"]))
            .unwrap();
        assert!(!same(&none, &required), "none -> required");
        let (other_ca, _) = r
            .for_policy(policy(ClientCertificates::Required, &[b"ca-2"]))
            .unwrap();
        assert!(!same(&required, &other_ca), "the CA changed");
        let (again, _) = r
            .for_policy(policy(ClientCertificates::Required, &[b"ca-2"]))
            .unwrap();
        assert!(same(&other_ca, &again));
        // A clone shares the state: the control plane's reloads see the start's keys.
        let (cloned, _) = r
            .clone()
            .for_policy(policy(ClientCertificates::Required, &[b"ca-2"]))
            .unwrap();
        assert!(same(&again, &cloned));
    }

    /// `[tls]` with one ACME domain whose files are in `dir` (not there yet).
    fn acme_tls(dir: &std::path::Path) -> TlsConfig {
        let toml = format!(
            r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "127.0.0.1:1"
[[tls.domains]]
name = "node"
hostnames = ["db1.moat.test"]
cert = "{0}/node.pem"
key = "{0}/node-key.pem"
[tls.domains.acme]
directory = "https://acme.moat.test/dir"
account_key = "{0}/account.pem"
challenge = "tls-alpn-01"
"#,
            dir.display()
        );
        let path = dir.join("moat.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(&path).unwrap().0.tls
    }

    #[test]
    fn an_acme_domain_without_files_serves_a_placeholder_and_later_keeps_what_it_served() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = acme_tls(dir.path());
        let r = Resumption::new().unwrap();
        let first = TlsState::build(&cfg, &r, None).unwrap().unwrap();
        let d = first.domain("node").unwrap();
        assert_eq!(d.origin, Origin::Placeholder);
        assert!(
            first.warnings[0]
                .message
                .contains("self-signed placeholder"),
            "{:?}",
            first.warnings
        );

        // The certificate arrives: served from the files.
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db1.moat.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.path().join("node.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("node-key.pem"), key.serialize_pem()).unwrap();
        let issued = TlsState::build(&cfg, &r, Some(&first)).unwrap().unwrap();
        assert_eq!(issued.domain("node").unwrap().origin, Origin::Files);
        assert!(issued.warnings.is_empty(), "{:?}", issued.warnings);

        // The files go bad: the certificate in service stays, and a renewal is due.
        std::fs::write(dir.path().join("node-key.pem"), "not a key").unwrap();
        let after = TlsState::build(&cfg, &r, Some(&issued)).unwrap().unwrap();
        let kept = after.domain("node").unwrap();
        assert_eq!(kept.origin, Origin::Kept);
        assert!(Arc::ptr_eq(&kept.key, &issued.domain("node").unwrap().key));
        assert!(
            after.warnings[0]
                .message
                .contains("the certificate served before"),
            "{:?}",
            after.warnings
        );
    }

    #[test]
    fn a_domain_without_acme_still_refuses_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = acme_tls(dir.path());
        cfg.domains[0].acme = None;
        let problems = TlsState::build(&cfg, &Resumption::new().unwrap(), None)
            .err()
            .unwrap();
        assert_eq!(problems[0].key, "tls.domains[0].cert");
    }
}
