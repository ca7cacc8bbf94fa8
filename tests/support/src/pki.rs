//! Certificates for tests, made by moat's own certgen (rcgen): never committed keys.

use std::path::{Path, PathBuf};

use crate::proc::tempdir;

/// A dev CA plus a certificate for `localhost` (DNS SAN only), made by moat's own certgen.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA and `default` domain in a fresh directory.
    #[allow(clippy::new_without_default)] // each call makes new keys: not a default value
    pub fn new() -> Pki {
        let dir = tempdir();
        let files = moat::certgen::init(&moat::certgen::InitOptions {
            dir: dir.path().to_path_buf(),
            domain: "default".into(),
            hostnames: vec!["localhost".into()],
            ips: vec![],
            force: false,
        })
        .unwrap();
        Pki {
            dir,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
        }
    }
}

/// The serial (hex) of the first certificate in a PEM file.
pub fn file_serial(pem: &Path) -> String {
    let chain = moat::tls::certs::load_chain(pem).unwrap();
    moat::tls::certs::leaf(&chain[0], pem).unwrap().serial
}
