//! Mode passthrough: mongod (here secantusdb with its own TLS) terminates TLS, moat forwards
//! TLS connections unterminated, reading only the SNI, and still applies the firewall and
//! counts and logs them. A client certificate reaches mongod, which is what MONGODB-X509
//! and x.509 member authentication need.

use std::path::Path;
use std::process::Command;

use moat_test_support::*;

/// secantusdb speaking TLS itself with `pki`'s localhost certificate; with `client_ca`, it
/// requires client certificates from that CA.
fn tls_mongo(dir: &Path, pki: &Pki, client_ca: Option<&Path>) -> (Proc, u16) {
    let mut cmd = Command::new(venv().join("bin/secantusd-py"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--standalone"])
        .arg("--storage-path")
        .arg(dir.join("data"))
        .arg("--tls-cert-file")
        .arg(&pki.cert)
        .arg("--tls-key-file")
        .arg(&pki.key);
    if let Some(ca) = client_ca {
        cmd.arg("--tls-ca-file")
            .arg(ca)
            .arg("--tls-require-client-cert");
    }
    let proc = Proc::spawn(&mut cmd);
    let line = proc
        .lines
        .wait_for("secantus listening on 127.0.0.1:", DEADLINE);
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (proc, port)
}

/// A client CA and, signed by it, a client certificate and key in one PEM file (what
/// pymongo's tlsCertificateKeyFile takes): (CA file, combined file).
fn client_pki(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "client CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "alice");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (ca_file, combined) = (dir.join("client-ca.pem"), dir.join("alice.pem"));
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&combined, cert.pem() + &key.serialize_pem()).unwrap();
    (ca_file, combined)
}

fn passthrough_moat(upstream_port: u16) -> Moat {
    Moat::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nhandshake_timeout = \"5s\"\n\
         [upstream]\naddress = \"127.0.0.1:{upstream_port}\"\n[tls]\nmode = \"passthrough\"\n\
         {ADMIN}\n[[firewall.rules]]\ncidr = \"127.0.0.1/32\"\ndescription = \"tests\"\n"
    ))
}

#[test]
fn tls_is_forwarded_unterminated_to_a_mongod_that_terminates_it() {
    let pki = Pki::new();
    let dir = tempdir();
    let (_mongo, port) = tls_mongo(dir.path(), &pki, None);
    let moat = passthrough_moat(port);
    // pymongo verifies secantusdb's own certificate, through moat.
    let r = pymongo(
        &uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(r.ok, "{}", r.out);
    moat.lines()
        .wait_for("TLS passthrough sni=localhost", DEADLINE);
    // Counted as a TLS client, and the firewall still applies.
    let conns = moat.ctl_json(&["status"]);
    assert_eq!(conns["mode"], "passthrough", "{conns}");
    let mut refused = tcp_from("127.0.0.3", moat.addr).unwrap();
    assert!(closed_without_reply(&mut refused));
    moat.lines()
        .wait_for("connection refused from 127.0.0.3", DEADLINE);
}

#[test]
fn a_client_certificate_reaches_mongod_through_passthrough() {
    let pki = Pki::new();
    let dir = tempdir();
    // A client CA and a client certificate for alice (clientAuth), made with rcgen.
    let clients = tempdir();
    let (client_ca, combined) = client_pki(clients.path());
    let (_mongo, port) = tls_mongo(dir.path(), &pki, Some(&client_ca));
    let moat = passthrough_moat(port);
    let with = format!(
        "{}&tlsCertificateKeyFile={}",
        tls_opts(&pki),
        combined.display()
    );
    let r = pymongo(&uri("localhost", moat.port(), &with), &["ping"]);
    assert!(r.ok, "mongod saw the client certificate: {}", r.out);
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(!r.ok, "without a certificate mongod refuses: {}", r.out);
}

#[test]
fn leaving_passthrough_with_clients_connected_needs_force() {
    let pki = Pki::new();
    let dir = tempdir();
    let (_mongo, port) = tls_mongo(dir.path(), &pki, None);
    let moat = passthrough_moat(port);
    let cfg = tls_client(&pki.ca, None);
    let mut open = tls_connect_with(moat.addr, &cfg, "localhost").unwrap();
    hello_over(&mut open, 1);
    let (code, _, err) = moat.ctl(&["mode", "set", "disabled"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("passthrough") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(moat.ctl_json(&["mode"])["mode"], "passthrough");
    let (code, _, err) = moat.ctl(&["mode", "set", "disabled", "--force"]);
    assert_eq!(code, 0, "{err}");
    // The connection made in passthrough keeps going.
    hello_over(&mut open, 2);
}
