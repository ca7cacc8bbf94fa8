//! Loading and checking certificates and private keys from PEM files. Every error names
//! the file and says what is wrong with it and how to fix it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use crate::config::DomainConfig;

/// What is wrong with a certificate, key or password file; every message names the file.
#[derive(Debug, Error)]
pub enum CertError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: bad PEM: {message}", path.display())]
    Pem { path: PathBuf, message: String },
    #[error("{} holds no `BEGIN CERTIFICATE` block", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is empty: it should hold the key's password", path.display())]
    EmptyPassword { path: PathBuf },
    #[error("key_password_credential = \"{name}\" is read from $CREDENTIALS_DIRECTORY, which is not set: systemd sets it for a unit with LoadCredential={name}:... or LoadCredentialEncrypted={name}:...; elsewhere use key_password_file")]
    NoCredentialsDirectory { name: String },
    #[error("credential {name}: cannot read {}: {source} (does the unit have LoadCredentialEncrypted={name}:...?)", path.display())]
    Credential {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is an encrypted key: set key_password_file to the file holding its password", path.display())]
    EncryptedWithoutPassword { path: PathBuf },
    #[error("{} is not encrypted, but a key password is set: encrypt the key (moat certs issue --encrypt-key, or openssl pkcs8 -topk8 -v2 aes-256-cbc) or remove key_password_file (or key_password_credential)", path.display())]
    PasswordWithoutEncryption { path: PathBuf },
    #[error("{} holds no private key (expected a PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY` block)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: expected a `BEGIN {ENCRYPTED_LABEL}` block", path.display())]
    NotEncryptedBlock { path: PathBuf },
    #[error("{}: not an encrypted PKCS#8 key: {message}", path.display())]
    NotPkcs8 { path: PathBuf, message: String },
    #[error("cannot decrypt {} with the password from key_password_file or key_password_credential ({message}): wrong password?", path.display())]
    Decrypt { path: PathBuf, message: String },
    #[error("{}: unusable private key: {message}", path.display())]
    UnusableKey { path: PathBuf, message: String },
    #[error("{} does not belong to the first certificate in {} (is the leaf certificate first?)", key.display(), cert.display())]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{}: unparseable certificate: {message}", path.display())]
    Unparseable { path: PathBuf, message: String },
    #[error("{}: certificate #{index} ({child}) is not issued by the one after it ({parent}): put the leaf first, then each issuer in turn", path.display())]
    ChainOrder {
        path: PathBuf,
        index: usize,
        child: String,
        parent: String,
    },
    #[error("{}: {message}", path.display())]
    Other { path: PathBuf, message: String },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, e: impl fmt::Display) -> CertError {
    CertError::Pem {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The certificates in a PEM file, in file order (leaf first, then its chain).
pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let data = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// A key password. Never printed: its `Debug` is `***`, and it is wiped on drop.
pub struct Secret(Zeroizing<Vec<u8>>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Reads a password file; one trailing newline (`\n` or `\r\n`) is not part of the
/// password, as with `openssl -passin file:`.
pub fn read_password(path: &Path) -> Result<Secret, CertError> {
    password_from(Zeroizing::new(read(path)?), path)
}

/// The environment variable systemd points at a unit's decrypted credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// Reads the systemd credential `name` from `dir` (`$CREDENTIALS_DIRECTORY`), as a
/// password file is read.
pub fn read_credential(dir: Option<&Path>, name: &str) -> Result<Secret, CertError> {
    let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) else {
        return Err(CertError::NoCredentialsDirectory {
            name: name.to_string(),
        });
    };
    let path = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|source| CertError::Credential {
        name: name.to_string(),
        path: path.clone(),
        source,
    })?;
    password_from(Zeroizing::new(bytes), &path)
}

/// The key's password for a domain: from `key_password_file` or `key_password_credential`
/// (validation allows one of them), and which key names it.
pub fn domain_password(d: &DomainConfig) -> Result<Option<Secret>, (Which, CertError)> {
    if let Some(p) = &d.key_password_file {
        return read_password(p)
            .map(Some)
            .map_err(|e| (Which::KeyPasswordFile, e));
    }
    if let Some(name) = &d.key_password_credential {
        let dir = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
        return read_credential(dir.as_deref(), name)
            .map(Some)
            .map_err(|e| (Which::KeyPasswordCredential, e));
    }
    Ok(None)
}

fn password_from(mut bytes: Zeroizing<Vec<u8>>, path: &Path) -> Result<Secret, CertError> {
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(CertError::EmptyPassword {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret(bytes))
}

const ENCRYPTED_LABEL: &str = "ENCRYPTED PRIVATE KEY";

/// The private key in a PEM file: PKCS#8, PKCS#1 (RSA), SEC1 (EC), or encrypted PKCS#8
/// (PBES2) when `password` is given.
pub fn load_key(
    path: &Path,
    password: Option<&Secret>,
) -> Result<PrivateKeyDer<'static>, CertError> {
    let data = Zeroizing::new(read(path)?);
    let text = String::from_utf8_lossy(&data);
    let encrypted = text.contains(&format!("BEGIN {ENCRYPTED_LABEL}"));
    let path_buf = || path.to_path_buf();
    match (encrypted, password) {
        (true, None) => Err(CertError::EncryptedWithoutPassword { path: path_buf() }),
        (false, Some(_)) => Err(CertError::PasswordWithoutEncryption { path: path_buf() }),
        (true, Some(pw)) => decrypt(path, &text, pw),
        (false, None) => match PrivateKeyDer::from_pem_slice(&data) {
            Ok(k) => Ok(k),
            Err(pem::Error::NoItemsFound) => Err(CertError::NoKey { path: path_buf() }),
            Err(e) => Err(pem_error(path, e)),
        },
    }
}

fn decrypt(
    path: &Path,
    text: &str,
    password: &Secret,
) -> Result<PrivateKeyDer<'static>, CertError> {
    use pkcs8::der::Decode;
    let begin = text
        .find(&format!("-----BEGIN {ENCRYPTED_LABEL}-----"))
        .unwrap_or(0);
    let (label, der) =
        pkcs8::der::pem::decode_vec(&text.as_bytes()[begin..]).map_err(|e| pem_error(path, e))?;
    if label != ENCRYPTED_LABEL {
        return Err(CertError::NotEncryptedBlock {
            path: path.to_path_buf(),
        });
    }
    let info = pkcs8::EncryptedPrivateKeyInfo::from_der(&der).map_err(|e| CertError::NotPkcs8 {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let doc = info
        .decrypt(password.as_bytes())
        .map_err(|e| CertError::Decrypt {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        doc.as_bytes().to_vec(),
    )))
}

/// Which of a domain's files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
    KeyPasswordFile,
    KeyPasswordCredential,
}

impl Which {
    /// The config key of the file.
    pub fn key(self) -> &'static str {
        match self {
            Which::Cert => "cert",
            Which::Key => "key",
            Which::KeyPasswordFile => "key_password_file",
            Which::KeyPasswordCredential => "key_password_credential",
        }
    }
}

/// A domain's chain and key, checked to belong together and to be in order.
pub fn certified_key(
    d: &DomainConfig,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, (Which, CertError)> {
    let chain = load_chain(&d.cert).map_err(|e| (Which::Cert, e))?;
    check_chain_order(&chain, &d.cert).map_err(|e| (Which::Cert, e))?;
    let password = domain_password(d)?;
    let der = load_key(&d.key, password.as_ref()).map_err(|e| (Which::Key, e))?;
    drop(password);
    pair(chain, der, provider, &d.cert, &d.key)
}

/// A chain (in order) and a private key, checked to belong together; `cert` and `key` name
/// where they come from (or will be written) in errors.
pub fn pair(
    chain: Vec<CertificateDer<'static>>,
    der: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, (Which, CertError)> {
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        let message = e.to_string();
        let path = key.to_path_buf();
        (Which::Key, CertError::UnusableKey { path, message })
    })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            let (key, cert) = (key.to_path_buf(), cert.to_path_buf());
            return Err((Which::Key, CertError::KeyMismatch { key, cert }));
        }
        Err(e) => {
            let (path, message) = (cert.to_path_buf(), e.to_string());
            return Err((Which::Cert, CertError::Other { path, message }));
        }
    }
    Ok(Arc::new(ck))
}

fn parse<'a>(der: &'a CertificateDer<'_>, path: &Path) -> Result<X509Certificate<'a>, CertError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::Unparseable {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Each certificate must be issued by the one after it: leaf first, root (if any) last.
pub fn check_chain_order(chain: &[CertificateDer<'_>], path: &Path) -> Result<(), CertError> {
    for (i, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (parse(&pair[0], path)?, parse(&pair[1], path)?);
        if child.issuer() != parent.subject() {
            return Err(CertError::ChainOrder {
                path: path.to_path_buf(),
                index: i + 1,
                child: child.subject().to_string(),
                parent: parent.subject().to_string(),
            });
        }
    }
    Ok(())
}

/// What moat checks about a leaf certificate.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// DNS names (`*.` wildcards kept) and IP addresses from the SAN extension.
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The issuer's common name (its whole name when it has none).
    pub issuer: String,
}

/// Reads a leaf certificate's names, validity and serial.
pub fn leaf(der: &CertificateDer<'_>, path: &Path) -> Result<Leaf, CertError> {
    let c = parse(der, path)?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::IpAddr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Leaf {
        names,
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        serial: c.raw_serial_as_string().replace(':', ""),
        issuer: issuer_name(&c),
    })
}

/// The issuer's common name, or its whole name when it has none.
fn issuer_name(c: &X509Certificate<'_>) -> String {
    let cn = c
        .issuer()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok().map(str::to_string));
    cn.unwrap_or_else(|| c.issuer().to_string())
}

/// Whether a certificate name (`*.a.b` or `x.a.b`) covers a configured hostname (which may
/// itself be a `*.` wildcard: then only the same wildcard covers it).
pub fn covers(cert_name: &str, hostname: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(hostname) {
        return true;
    }
    match (cert_name.strip_prefix("*."), hostname.split_once('.')) {
        (Some(parent), Some((label, rest))) => {
            label != "*" && !label.is_empty() && rest.eq_ignore_ascii_case(parent)
        }
        _ => false,
    }
}

/// The subject of a certificate as mongod writes X.509 user names (RFC 2253: most
/// specific first, `CN=alice,OU=apps,O=Example`).
pub fn subject_rfc2253(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let registry = x509_parser::objects::oid_registry();
    let mut parts = Vec::new();
    for rdn in c.subject().iter_rdn().collect::<Vec<_>>().into_iter().rev() {
        let attrs: Vec<String> = rdn
            .iter()
            .map(|a| {
                let name = x509_parser::objects::oid2abbrev(a.attr_type(), registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| a.attr_type().to_id_string());
                let value = a
                    .as_str()
                    .map(escape_dn)
                    .unwrap_or_else(|_| "#".to_string());
                format!("{name}={value}")
            })
            .collect();
        parts.push(attrs.join("+"));
    }
    Some(parts.join(","))
}

fn escape_dn(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, ch) in v.chars().enumerate() {
        let special = matches!(ch, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (ch == '#' || ch == ' '))
            || (i + 1 == v.chars().count() && ch == ' ');
        if special {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_covers_one_label_only() {
        assert!(covers("*.d123.example.net", "db1.d123.example.net"));
        assert!(covers("*.d123.example.net", "*.d123.example.net"));
        assert!(!covers("*.d123.example.net", "a.b.d123.example.net"));
        assert!(!covers("*.d123.example.net", "d123.example.net"));
        assert!(covers("DB1.example.net", "db1.example.net"));
        assert!(!covers("db1.example.net", "*.example.net"));
    }

    #[test]
    fn password_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        assert_eq!(read_password(&p).unwrap().as_bytes(), b"s3cret");
        std::fs::write(&p, "s3cret\r\n").unwrap();
        assert_eq!(read_password(&p).unwrap().as_bytes(), b"s3cret");
        std::fs::write(&p, "s3cret\n\n").unwrap();
        assert_eq!(read_password(&p).unwrap().as_bytes(), b"s3cret\n");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_password(&p).is_err());
    }

    #[test]
    fn a_systemd_credential_is_read_as_a_password_file_and_its_absence_explained() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("moat-key"), "s3cret\n").unwrap();
        let pw = read_credential(Some(dir.path()), "moat-key").unwrap();
        assert_eq!(pw.as_bytes(), b"s3cret");
        let e = read_credential(None, "moat-key").unwrap_err().to_string();
        assert!(
            e.contains("$CREDENTIALS_DIRECTORY, which is not set")
                && e.contains("LoadCredentialEncrypted=moat-key:"),
            "{e}"
        );
        let e = read_credential(Some(dir.path()), "other")
            .unwrap_err()
            .to_string();
        let path = dir.path().join("other");
        assert!(
            e.starts_with(&format!("credential other: cannot read {}", path.display())),
            "{e}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "***");
    }

    #[test]
    fn subject_is_written_most_specific_first() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "US");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(
            subject_rfc2253(cert.der()).unwrap(),
            "CN=alice,O=Example\\, Inc,C=US"
        );
    }
}
