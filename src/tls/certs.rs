//! Loading certificate chains and private keys from PEM files, with errors that name the
//! file and say what is wrong with it.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// The certificates in a PEM file, in file order (leaf first, then its chain).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no `BEGIN CERTIFICATE` block",
            path.display()
        ));
    }
    Ok(chain)
}

/// The private key in a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let data = read(path)?;
    match PrivateKeyDer::from_pem_slice(&data) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => {
            let text = String::from_utf8_lossy(&data);
            if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
                Err(format!(
                    "{} is an encrypted key, which this version of moat cannot decrypt; store it unencrypted (mode 0600)",
                    path.display()
                ))
            } else {
                Err(format!(
                    "{} holds no private key (expected a PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY` block)",
                    path.display()
                ))
            }
        }
        Err(e) => Err(format!("{}: bad PEM: {e}", path.display())),
    }
}

/// Which of a domain's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

impl Which {
    /// The config key of the file.
    pub fn key(self) -> &'static str {
        match self {
            Which::Cert => "cert",
            Which::Key => "key",
        }
    }
}

/// A chain and its key, checked to belong together.
pub fn certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, (Which, String)> {
    let chain = load_chain(cert).map_err(|e| (Which::Cert, e))?;
    let der = load_key(key).map_err(|e| (Which::Key, e))?;
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        (
            Which::Key,
            format!("{}: unusable private key: {e}", key.display()),
        )
    })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err((
                Which::Key,
                format!(
                    "{} does not belong to the first certificate in {} (is the leaf certificate first?)",
                    key.display(),
                    cert.display()
                ),
            ))
        }
        Err(e) => return Err((Which::Cert, format!("{}: {e}", cert.display()))),
    }
    Ok(Arc::new(ck))
}

/// A certificate's notAfter as Unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .map(|(_, c)| c.validity().not_after.timestamp())
}
