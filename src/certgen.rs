//! `moat certs`: a development PKI made with rcgen (ECDSA P-256).
//!
//! Dev certificates carry DNS names only unless IP addresses are asked for, so a client
//! that connects by IP fails hostname verification: the check that tells a user their TLS
//! really verifies.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

/// CA validity.
const CA_DAYS: i64 = 3650;
/// Leaf validity: under the 398 days browsers and scanners accept.
const LEAF_DAYS: i64 = 397;
/// testssl.sh reports a certificate without a CRL or OCSP URI as a finding; dev certs name
/// a CRL under a reserved name that never resolves.
const DEV_CRL: &str = "http://crl.moat.invalid/ca.crl";

/// Why a PKI operation failed.
#[derive(Debug, Error)]
pub enum CertgenError {
    #[error("{0} already exists (use --force to overwrite)")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("`{0}` is not a DNS name; IP addresses go in --ip")]
    NotDns(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("no dev CA in {0}: run `moat certs init --dir {0}` first")]
    NoCa(String),
    #[error(transparent)]
    Key(#[from] crate::tls::certs::CertError),
    #[error("no randomness available for a key password")]
    NoRandomness,
    #[error("cannot encrypt the key: {0}")]
    Encrypt(String),
}

/// What `moat certs init` makes.
#[derive(Debug, Clone, clap::Args)]
pub struct InitOptions {
    /// Directory to write ca.pem, ca-key.pem, DOMAIN.pem and DOMAIN-key.pem into.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Domain name used for the file names (matches [[tls.domains]] name).
    #[arg(long, default_value = "default")]
    pub domain: String,
    /// DNS names the certificate is valid for (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "localhost")]
    pub hostnames: Vec<String>,
    /// IP addresses to add as SANs. Without them, connecting by IP fails hostname
    /// verification, as it should.
    #[arg(long = "ip", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Files written by [`init`].
#[derive(Debug, Clone)]
pub struct InitFiles {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl InitOptions {
    /// The paths `init` writes.
    pub fn files(&self) -> InitFiles {
        InitFiles {
            ca: self.dir.join("ca.pem"),
            ca_key: self.dir.join("ca-key.pem"),
            cert: self.dir.join(format!("{}.pem", self.domain)),
            key: self.dir.join(format!("{}-key.pem", self.domain)),
        }
    }
}

/// Makes a dev CA and one domain's certificate and key signed by it.
pub fn init(opts: &InitOptions) -> Result<InitFiles, CertgenError> {
    let files = opts.files();
    check_dns(&opts.hostnames)?;
    refuse_overwrite(
        &[&files.ca, &files.ca_key, &files.cert, &files.key],
        opts.force,
    )?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| CertgenError::Io {
        path: opts.dir.clone(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "moat dev CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "moat development");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let key = KeyPair::generate()?;
    let cert =
        server_params(&opts.hostnames, &opts.ips, &opts.domain, now)?.signed_by(&key, &issuer)?;

    write_file(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&files.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// A server certificate's parameters: the names as SANs (CN = the first), serverAuth, the
/// dev CRL, valid from an hour ago for LEAF_DAYS.
fn server_params(
    hostnames: &[String],
    ips: &[IpAddr],
    fallback_cn: &str,
    now: OffsetDateTime,
) -> Result<CertificateParams, CertgenError> {
    check_dns(hostnames)?;
    let mut leaf = CertificateParams::new(hostnames.to_vec())?;
    leaf.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = hostnames.first().map_or(fallback_cn, String::as_str);
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![DEV_CRL.to_string()],
    }];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::hours(1);
    leaf.not_after = now + Duration::days(LEAF_DAYS);
    Ok(leaf)
}

fn check_dns(hostnames: &[String]) -> Result<(), CertgenError> {
    match hostnames.iter().find(|h| h.parse::<IpAddr>().is_ok()) {
        Some(ip) => Err(CertgenError::NotDns(ip.clone())),
        None => Ok(()),
    }
}

/// What `moat certs issue` makes.
#[derive(Debug, Clone, clap::Args)]
pub struct IssueOptions {
    /// Directory holding ca.pem and ca-key.pem; DOMAIN.pem and DOMAIN-key.pem go here.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Domain name (matches [[tls.domains]] name; names the files).
    #[arg(long)]
    pub domain: String,
    /// DNS names, comma-separated; `*.example.net` for a wildcard.
    #[arg(long, value_delimiter = ',', required = true)]
    pub hostnames: Vec<String>,
    /// IP addresses to add as SANs.
    #[arg(long = "ip", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    /// Encrypt the key with the password in PASSFILE (a random one is written there,
    /// mode 0600, if the file does not exist). Use it as key_password_file.
    #[arg(long, value_name = "PASSFILE")]
    pub encrypt_key: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Files written by [`issue`].
#[derive(Debug, Clone)]
pub struct IssueFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Set when a new password file was created.
    pub new_password_file: Option<PathBuf>,
}

/// Issues a domain certificate signed by the dev CA in `opts.dir`.
pub fn issue(opts: &IssueOptions) -> Result<IssueFiles, CertgenError> {
    let cert_path = opts.dir.join(format!("{}.pem", opts.domain));
    let key_path = opts.dir.join(format!("{}-key.pem", opts.domain));
    refuse_overwrite(&[&cert_path, &key_path], opts.force)?;
    let (ca_pem, ca_key) = load_ca(&opts.dir)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key)?;
    let key = KeyPair::generate()?;
    let now = OffsetDateTime::now_utc();
    let cert =
        server_params(&opts.hostnames, &opts.ips, &opts.domain, now)?.signed_by(&key, &issuer)?;
    let (key_pem, new_password_file) = key_pem(&key, opts.encrypt_key.as_deref())?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    write_file(&key_path, key_pem.as_bytes(), 0o600)?;
    Ok(IssueFiles {
        cert: cert_path,
        key: key_path,
        new_password_file,
    })
}

/// What `moat certs csr` makes.
#[derive(Debug, Clone, clap::Args)]
pub struct CsrOptions {
    /// Where to write the CSR (PEM).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the new private key (PEM, mode 0600).
    #[arg(long)]
    pub key: PathBuf,
    /// DNS names to request, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub hostnames: Vec<String>,
    /// IP addresses to request as SANs.
    #[arg(long = "ip", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    /// Encrypt the key with the password in PASSFILE (made if missing).
    #[arg(long, value_name = "PASSFILE")]
    pub encrypt_key: Option<PathBuf>,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Makes a fresh key pair for this node and a CSR for its names, to send to a real CA.
/// Returns the password file it created, if any.
pub fn csr(opts: &CsrOptions) -> Result<Option<PathBuf>, CertgenError> {
    refuse_overwrite(&[&opts.out, &opts.key], opts.force)?;
    check_dns(&opts.hostnames)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(opts.hostnames.clone())?;
    params
        .subject_alt_names
        .extend(opts.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    if let Some(cn) = opts.hostnames.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    let request = params.serialize_request(&key)?;
    let (key_pem, created) = key_pem(&key, opts.encrypt_key.as_deref())?;
    write_file(&opts.key, key_pem.as_bytes(), 0o600)?;
    write_file(&opts.out, request.pem()?.as_bytes(), 0o644)?;
    Ok(created)
}

fn refuse_overwrite(paths: &[&PathBuf], force: bool) -> Result<(), CertgenError> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) if !force => Err(CertgenError::Exists((*p).clone())),
        _ => Ok(()),
    }
}

fn load_ca(dir: &Path) -> Result<(String, KeyPair), CertgenError> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(|_| CertgenError::NoCa(dir.display().to_string()))
    };
    let ca = read("ca.pem")?;
    let key = KeyPair::from_pem(&read("ca-key.pem")?)?;
    Ok((ca, key))
}

/// PBKDF2 rounds for keys moat encrypts: about 50 ms to open on this class of machine.
const PBKDF2_ROUNDS: u32 = 100_000;

/// The key as PEM: PKCS#8, or encrypted PKCS#8 (see [`encrypt_key`]) with the password
/// from `passfile`, made if missing.
fn key_pem(
    key: &KeyPair,
    passfile: Option<&Path>,
) -> Result<(Zeroizing<String>, Option<PathBuf>), CertgenError> {
    let Some(passfile) = passfile else {
        return Ok((Zeroizing::new(key.serialize_pem()), None));
    };
    let created = if passfile.exists() {
        None
    } else {
        let password = random_password()?;
        write_file(
            passfile,
            format!("{}\n", password.as_str()).as_bytes(),
            0o600,
        )?;
        Some(passfile.to_path_buf())
    };
    let password = crate::tls::certs::read_password(passfile).map_err(CertgenError::Key)?;
    Ok((encrypt_key(key, &password)?, created))
}

/// A fresh key password: 24 random bytes from the OS RNG, as 48 hex digits.
pub fn random_password() -> Result<Zeroizing<String>, CertgenError> {
    let mut raw = Zeroizing::new([0u8; 24]);
    random(&mut raw[..])?;
    Ok(Zeroizing::new(
        raw.iter().map(|b| format!("{b:02x}")).collect(),
    ))
}

fn random(buf: &mut [u8]) -> Result<(), CertgenError> {
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(buf)
        .map_err(|_| CertgenError::NoRandomness)
}

/// The key as encrypted PKCS#8 PEM (PBES2: PBKDF2-SHA256, AES-256-CBC, which `openssl pkey
/// -passin file:` reads) under `password`.
pub fn encrypt_key(
    key: &KeyPair,
    password: &crate::tls::certs::Secret,
) -> Result<Zeroizing<String>, CertgenError> {
    let (mut salt, mut iv) = ([0u8; 16], [0u8; 16]);
    random(&mut salt)?;
    random(&mut iv)?;
    let enc_err = |e: &dyn std::fmt::Display| CertgenError::Encrypt(e.to_string());
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, &iv)
            .map_err(|e| enc_err(&e))?;
    let der = key.serialize_der();
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(|e| enc_err(&e))?;
    let doc = info
        .encrypt_with_params(params, password.as_bytes())
        .map_err(|e| enc_err(&e))?;
    doc.to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(|e| enc_err(&e))
}

/// Writes a file with the given mode (keys are 0600 from the first byte, never chmod-ed
/// after being readable).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CertgenError> {
    let io_err = |source| CertgenError::Io {
        path: path.to_path_buf(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err)?;
    f.write_all(data).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts(dir: &Path) -> InitOptions {
        InitOptions {
            dir: dir.to_path_buf(),
            domain: "default".into(),
            hostnames: vec!["localhost".into(), "db.moat.test".into()],
            ips: vec![],
            force: false,
        }
    }

    #[test]
    fn init_writes_a_ca_and_a_leaf_that_load() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(&opts(dir.path())).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let domain = crate::config::DomainConfig {
            name: "default".into(),
            hostnames: vec!["localhost".into()],
            cert: files.cert,
            key: files.key,
            key_password_file: None,
            key_password_credential: None,
            ocsp: None,
            scope: None,
            acme: None,
        };
        crate::tls::certs::certified_key(&domain, &crate::tls::provider()).unwrap();
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        init(&opts(dir.path())).unwrap();
        assert!(matches!(
            init(&opts(dir.path())),
            Err(CertgenError::Exists(_))
        ));
        let mut o = opts(dir.path());
        o.force = true;
        init(&o).unwrap();
    }

    #[test]
    fn ip_in_hostnames_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.hostnames.push("127.0.0.1".into());
        assert!(matches!(init(&o), Err(CertgenError::NotDns(_))));
    }
}

#[cfg(test)]
mod issue_tests {
    use super::*;

    #[test]
    fn issued_encrypted_key_loads_with_its_password_only() {
        let dir = tempfile::tempdir().unwrap();
        init(&InitOptions {
            dir: dir.path().to_path_buf(),
            domain: "default".into(),
            hostnames: vec!["localhost".into()],
            ips: vec![],
            force: false,
        })
        .unwrap();
        let pass = dir.path().join("d.pass");
        let files = issue(&IssueOptions {
            dir: dir.path().to_path_buf(),
            domain: "d".into(),
            hostnames: vec!["d.moat.test".into()],
            ips: vec![],
            encrypt_key: Some(pass.clone()),
            force: false,
        })
        .unwrap();
        assert_eq!(files.new_password_file.as_deref(), Some(pass.as_path()));
        let pw = crate::tls::certs::read_password(&pass).unwrap();
        crate::tls::certs::load_key(&files.key, Some(&pw)).unwrap();
        let wrong = crate::tls::certs::Secret::new(b"wrong".to_vec());
        let e = crate::tls::certs::load_key(&files.key, Some(&wrong)).unwrap_err();
        assert!(e.to_string().contains("wrong password?"), "{e}");
        assert!(crate::tls::certs::load_key(&files.key, None)
            .unwrap_err()
            .to_string()
            .contains("set key_password_file"));
    }
}
