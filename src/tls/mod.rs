//! TLS termination: the rustls server configuration built from `[tls]`.
//!
//! The crypto provider is aws-lc-rs: its AES-GCM, X25519 and P-256 are assembly-optimised
//! and it is rustls' default, so the fast path is also the well-trodden one.

pub mod certs;
pub mod sni;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{
    ProducesTickets, ServerConnection, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::ServerConfig;

use crate::config::{MinVersion, TlsConfig};
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
}

impl TlsState {
    /// Loads every domain's files and builds the server configuration. `Ok(None)` when no
    /// domain is configured (mode disabled). All problems are reported, by config key.
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
        for (i, d) in cfg.domains.iter().enumerate() {
            match certs::certified_key(&d.cert, &d.key, &provider) {
                Ok(key) => domains.push(Domain {
                    name: d.name.clone(),
                    not_after: key.end_entity_cert().ok().and_then(|c| certs::not_after(c)),
                    key,
                    hostnames: d.hostnames.clone(),
                }),
                Err((which, msg)) => bad.push(Invalid::new(
                    format!("tls.domains[{i}].{}", which.key()),
                    msg,
                )),
            }
        }
        let Some(default) = cfg.default_domain_index() else {
            bad.push(Invalid::new(
                "tls.default_domain",
                "names no configured domain",
            ));
            return Err(bad);
        };
        if !bad.is_empty() {
            return Err(bad);
        }
        let resolver = Arc::new(SniResolver::new(domains, default));
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| vec![Invalid::new("tls.min_version", e.to_string())])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        server.ticketer = resumption.ticketer.clone();
        server.session_storage = resumption.sessions.clone();
        Ok(Some(TlsState {
            server: Arc::new(server),
            resolver,
        }))
    }
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
