//! tls-alpn-01 (RFC 8737): while a challenge is pending, a handshake that offers ALPN
//! `acme-tls/1` for its name is answered with a self-signed certificate that carries the
//! acmeIdentifier extension, on moat's own public port; every other handshake goes down
//! the normal path unchanged. With nothing pending, the check costs one atomic load.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::LazyConfigAcceptor;

/// The ALPN protocol of the challenge (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// How long the CA gets to finish a challenge handshake on the stand-alone responder.
const RESPONDER_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

/// The tls-alpn-01 answers in force, by name (lowercase).
#[derive(Default)]
pub struct Challenges {
    /// How many answers are in force: the handshake path reads only this while it is 0.
    pending: AtomicUsize,
    answers: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a challenge certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make the tls-alpn-01 certificate for {name}: {message}")]
pub struct AnswerError {
    name: String,
    message: String,
}

/// An answer in force; withdrawn when dropped.
pub struct Answer<'a> {
    challenges: &'a Challenges,
    name: String,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if let Ok(mut a) = self.challenges.answers.write() {
            if a.remove(&self.name).is_some() {
                self.challenges.pending.fetch_sub(1, Ordering::Release);
            }
        }
    }
}

impl Challenges {
    /// Whether no answer is in force: the handshake path's fast check.
    pub fn is_idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Answers handshakes for `name` with the RFC 8737 certificate for `digest` (the
    /// SHA-256 of the key authorization) until the returned guard is dropped.
    pub fn answer(&self, name: &str, digest: &[u8]) -> Result<Answer<'_>, AnswerError> {
        let name = name.to_ascii_lowercase();
        let fail = |e: &dyn std::fmt::Display| AnswerError {
            name: name.clone(),
            message: e.to_string(),
        };
        let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let mut params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(|e| fail(&e))?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let cert = params.self_signed(&key).map_err(|e| fail(&e))?;
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = crate::tls::provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| fail(&e))?;
        let ck = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        let mut answers = self
            .answers
            .write()
            .map_err(|_| fail(&"challenge table poisoned"))?;
        if answers.insert(name.clone(), ck).is_none() {
            self.pending.fetch_add(1, Ordering::Release);
        }
        Ok(Answer {
            challenges: self,
            name,
        })
    }

    /// The server configuration that answers this ClientHello, when it is a CA's challenge
    /// handshake: ALPN `acme-tls/1` offered for a name with an answer in force. `None` for
    /// every other handshake (RFC 8737 §3: the normal certificate is never shown to it, and
    /// the challenge certificate only to it).
    pub fn config_for(&self, hello: &ClientHello<'_>) -> Option<Arc<ServerConfig>> {
        if self.is_idle() {
            return None;
        }
        let offers = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if !offers {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        let key = self.answers.read().ok()?.get(&name)?.clone();
        let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .ok()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(key)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Some(Arc::new(config))
    }
}

/// A resolver that always serves one certificate.
#[derive(Debug)]
struct One(Arc<CertifiedKey>);

impl ResolvesServerCert for One {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Answers tls-alpn-01 handshakes on `listener` (and closes every other connection) until
/// the future is dropped: `moat certs acme` does this on the public port when moat is not
/// running there.
pub async fn respond(listener: TcpListener, challenges: &Challenges) -> io::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let Ok(Ok(start)) = tokio::time::timeout(
            RESPONDER_HANDSHAKE,
            LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp),
        )
        .await
        else {
            continue;
        };
        let hello = start.client_hello();
        let Some(config) = challenges.config_for(&hello) else {
            continue;
        };
        let name = hello.server_name().unwrap_or_default().to_string();
        // The CA only needs the handshake; the connection is closed right after.
        let done = tokio::time::timeout(RESPONDER_HANDSHAKE, start.into_stream(config)).await;
        if let Ok(Ok(_)) = done {
            crate::events::acme_challenge_answered(None, peer, &name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_withdrawn_when_its_guard_drops() {
        let c = Challenges::default();
        assert!(c.is_idle());
        let a = c.answer("DB1.example.net", &[7u8; 32]).unwrap();
        assert!(!c.is_idle());
        assert!(c.answers.read().unwrap().contains_key("db1.example.net"));
        drop(a);
        assert!(c.is_idle());
        assert!(c.answers.read().unwrap().is_empty());
    }
}
