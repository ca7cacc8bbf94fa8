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
}

/// What `moat certs init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    /// Domain name: files are `<domain>.pem` and `<domain>-key.pem`.
    pub domain: String,
    pub hostnames: Vec<String>,
    pub ips: Vec<IpAddr>,
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
    for h in &opts.hostnames {
        if h.parse::<IpAddr>().is_ok() {
            return Err(CertgenError::NotDns(h.clone()));
        }
    }
    if !opts.force {
        for p in [&files.ca, &files.ca_key, &files.cert, &files.key] {
            if p.exists() {
                return Err(CertgenError::Exists(p.clone()));
            }
        }
    }
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
    let mut leaf = CertificateParams::new(opts.hostnames.clone())?;
    leaf.subject_alt_names
        .extend(opts.ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let cn = opts
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| opts.domain.clone());
    leaf.distinguished_name.push(DnType::CommonName, cn);
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![DEV_CRL.to_string()],
    }];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - Duration::hours(1);
    leaf.not_after = now + Duration::days(LEAF_DAYS);
    let cert = leaf.signed_by(&key, &issuer)?;

    write_file(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&files.ca_key, ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
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
        let provider = crate::tls::provider();
        crate::tls::certs::certified_key(&files.cert, &files.key, &provider).unwrap();
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
