//! A rustls client (aws-lc-rs, as moat uses) for handshakes the tests drive themselves:
//! SNI choice, client certificates, resumption, the certificate served.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::wire::tcp;

/// A TLS connection from a rustls client.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection from a client that trusts `ca` and sends `sni`.
pub fn tls_connect(addr: SocketAddr, ca: &Path, sni: &str) -> std::io::Result<TlsStream> {
    tls_connect_with(addr, &tls_client(ca, None), sni)
}

/// A rustls client config trusting `ca`, with a client certificate (cert, key PEM files)
/// when given. Keeps resumption state across connections made with it.
pub fn tls_client(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client_cert {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    })
}

/// Connects with `cfg` and completes the handshake.
pub fn tls_connect_with(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// The serial (hex) of the certificate the server presented.
pub fn served_serial(s: &TlsStream) -> String {
    let leaf = &s.conn.peer_certificates().unwrap()[0];
    moat::tls::certs::leaf(leaf, Path::new("served"))
        .unwrap()
        .serial
}
