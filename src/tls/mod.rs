//! TLS termination: the rustls server configuration built from `[tls]`.
//!
//! The crypto provider is aws-lc-rs: its AES-GCM, X25519 and P-256 are assembly-optimised
//! and it is rustls' default, so the fast path is also the well-trodden one.

pub mod certs;
pub mod sni;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{
    ProducesTickets, ServerConnection, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientCertificates, MinVersion, TlsConfig};
use crate::error::Invalid;
use sni::{Domain, SniResolver};

/// TLS 1.2 session-id cache entries (TLS 1.3 resumes with stateless tickets).
const SESSION_CACHE: usize = 4096;

/// Resumption state that outlives configuration reloads, so rotating a certificate does
/// not force every reconnecting client through a full handshake.
#[derive(Clone)]
pub struct Resumption {
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions>,
}

impl Resumption {
    pub fn new() -> Result<Resumption, rustls::Error> {
        Ok(Resumption {
            ticketer: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE),
        })
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
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2027-12-27` for a Unix timestamp.
pub fn date(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| ts.to_string())
}

impl TlsState {
    /// Loads every domain's files and the client CA and builds the server configuration.
    /// `Ok(None)` when no domain is configured (mode disabled). All problems are reported,
    /// by config key.
    pub fn build(
        cfg: &TlsConfig,
        resumption: &Resumption,
    ) -> Result<Option<TlsState>, Vec<Invalid>> {
        if cfg.domains.is_empty() {
            return Ok(None);
        }
        let provider = provider();
        let mut bad = Vec::new();
        let mut domains = Vec::new();
        let now = unix_now();
        for (i, d) in cfg.domains.iter().enumerate() {
            let key = match certs::certified_key(d, &provider) {
                Ok(k) => k,
                Err((which, msg)) => {
                    bad.push(Invalid::new(
                        format!("tls.domains[{i}].{}", which.key()),
                        msg,
                    ));
                    continue;
                }
            };
            let leaf = match key.end_entity_cert() {
                Ok(der) => certs::leaf(der, &d.cert),
                Err(e) => Err(e.to_string()),
            };
            let leaf = match leaf {
                Ok(l) => l,
                Err(msg) => {
                    bad.push(Invalid::new(format!("tls.domains[{i}].cert"), msg));
                    continue;
                }
            };
            if leaf.not_after < now {
                bad.push(Invalid::new(
                    format!("tls.domains[{i}].cert"),
                    format!("{} expired on {}", d.cert.display(), date(leaf.not_after)),
                ));
            } else if leaf.not_before > now {
                bad.push(Invalid::new(
                    format!("tls.domains[{i}].cert"),
                    format!(
                        "{} is not valid until {}",
                        d.cert.display(),
                        date(leaf.not_before)
                    ),
                ));
            }
            // A name the certificate does not carry fails every client that dials it.
            for (j, h) in d.hostnames.iter().enumerate() {
                if !leaf.names.iter().any(|n| certs::covers(n, h)) {
                    bad.push(Invalid::new(
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
            });
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
        let (true, Ok(verifier)) = (bad.is_empty(), verifier) else {
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
        server.ticketer = resumption.ticketer.clone();
        server.session_storage = resumption.sessions.clone();
        Ok(Some(TlsState {
            server: Arc::new(server),
            resolver,
            client_certificates: cfg.client_certificates,
        }))
    }

    /// Domains whose certificate expires within `days`: (name, days left, notAfter).
    pub fn expiring_within(&self, days: i64) -> Vec<(&str, i64, i64)> {
        let now = unix_now();
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

/// The client-certificate verifier for `[tls] client_certificates`.
fn client_verifier(
    cfg: &TlsConfig,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Invalid> {
    let ca = match (cfg.client_certificates, &cfg.client_ca) {
        (ClientCertificates::None, _) => return Ok(WebPkiClientVerifier::no_client_auth()),
        (_, Some(ca)) => ca,
        (_, None) => {
            return Err(Invalid::new(
                "tls.client_certificates",
                "needs tls.client_ca: the CA that client certificates must chain to",
            ))
        }
    };
    let mut roots = RootCertStore::empty();
    for c in certs::load_chain(ca).map_err(|m| Invalid::new("tls.client_ca", m))? {
        roots
            .add(c)
            .map_err(|e| Invalid::new("tls.client_ca", format!("{}: {e}", ca.display())))?;
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let builder = if cfg.client_certificates == ClientCertificates::Optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| Invalid::new("tls.client_ca", format!("{}: {e}", ca.display())))
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
