//! Certificates: SNI selection across domains, encrypted keys, client certificates, hot
//! rotation, resumption, protocol floors, expiry and chain checks. Test PKIs are made with
//! rcgen (moat's own `certs init` / `certs issue`, or directly) in each test.

use std::path::{Path, PathBuf};
use std::process::Command;

use moat::certgen::{issue, IssueOptions};
use moat_test_support::*;

/// Domains of a hosted deployment: the account's wildcard and the deployment's own name.
struct Domains {
    pki: Pki,
    account: PathBuf,
    deployment: PathBuf,
}

fn issue_domain(pki: &Pki, name: &str, hostnames: &[&str], encrypt: Option<&Path>) -> PathBuf {
    let f = issue(&IssueOptions {
        dir: pki.dir.path().to_path_buf(),
        domain: name.into(),
        hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
        ips: vec![],
        encrypt_key: encrypt.map(Path::to_path_buf),
        force: true,
    })
    .unwrap();
    f.cert
}

fn domains() -> Domains {
    let pki = Pki::new();
    let account = issue_domain(&pki, "account", &["*.acct123.moat.test"], None);
    let deployment = issue_domain(&pki, "deployment", &["d456.moat.test"], None);
    Domains {
        pki,
        account,
        deployment,
    }
}

/// A config serving both domains to loopback clients.
fn domains_config(d: &Domains, upstream: &str, tls_extra: &str, sections: &str) -> String {
    let dir = d.pki.dir.path().display();
    format!(
        r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "{upstream}"
[tls]
mode = "preferSSL"
default_domain = "deployment"
{tls_extra}
[[tls.domains]]
name = "account"
hostnames = ["*.acct123.moat.test"]
cert = "{dir}/account.pem"
key = "{dir}/account-key.pem"
[[tls.domains]]
name = "deployment"
hostnames = ["d456.moat.test"]
cert = "{dir}/deployment.pem"
key = "{dir}/deployment-key.pem"
{sections}
"#
    ) + ALLOW_LOOPBACK
}

fn openssl(addr: std::net::SocketAddr, ca: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .args(["-verify_return_error", "-brief"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn sni_selects_each_domain_and_its_certificate_verifies_for_its_names_only() {
    let mongo = Mongo::start();
    let d = domains();
    let moat = Moat::start(&domains_config(&d, &mongo.addr(), "", ""));
    let ca = &d.pki.ca;

    let s = tls_connect(moat.addr, ca, "x.acct123.moat.test").unwrap();
    assert_eq!(
        served_serial(&s),
        file_serial(&d.account),
        "wildcard → account"
    );
    let mut s = tls_connect(moat.addr, ca, "d456.moat.test").unwrap();
    assert_eq!(
        served_serial(&s),
        file_serial(&d.deployment),
        "exact → deployment"
    );
    hello_over(&mut s, 1);
    moat.lines()
        .wait_for("sni=x.acct123.moat.test domain=account", DEADLINE);
    moat.lines()
        .wait_for("sni=d456.moat.test domain=deployment", DEADLINE);

    // Twin: the deployment's certificate does not verify for the account's names.
    let (ok, out) = openssl(
        moat.addr,
        ca,
        &[
            "-servername",
            "d456.moat.test",
            "-verify_hostname",
            "x.acct123.moat.test",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("hostname mismatch"), "{out}");
    let (ok, out) = openssl(
        moat.addr,
        ca,
        &[
            "-servername",
            "x.acct123.moat.test",
            "-verify_hostname",
            "x.acct123.moat.test",
        ],
    );
    assert!(ok, "{out}");
}

#[test]
fn no_sni_and_unknown_names_get_the_default_domain() {
    let mongo = Mongo::start();
    let d = domains();
    let moat = Moat::start(&domains_config(&d, &mongo.addr(), "", ""));
    let (ok, out) = openssl(
        moat.addr,
        &d.pki.ca,
        &["-noservername", "-verify_hostname", "d456.moat.test"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("CN = d456.moat.test"), "{out}");
    // An unknown name gets the default certificate...
    let (ok, out) = openssl(
        moat.addr,
        &d.pki.ca,
        &[
            "-servername",
            "unknown.moat.test",
            "-verify_hostname",
            "d456.moat.test",
        ],
    );
    assert!(ok, "{out}");
    moat.lines()
        .wait_for("sni=unknown.moat.test domain=deployment", DEADLINE);
    // ...which a client that verifies the name it dialled rejects.
    assert!(tls_connect(moat.addr, &d.pki.ca, "unknown.moat.test").is_err());
}

#[test]
fn encrypted_key_serves_and_a_wrong_password_fails_check_without_showing_it() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let pass = pki.dir.path().join("deployment.pass");
    issue_domain(&pki, "deployment", &["localhost"], Some(&pass));
    let cfg = |passfile: &Path| {
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n[tls]\nmode = \"requireSSL\"\n\
             [[tls.domains]]\nname = \"deployment\"\nhostnames = [\"localhost\"]\ncert = \"{d}/deployment.pem\"\n\
             key = \"{d}/deployment-key.pem\"\nkey_password_file = \"{}\"\n",
            mongo.addr(),
            passfile.display(),
            d = pki.dir.path().display()
        )
    };
    let moat = Moat::start(&format!("{}{ALLOW_LOOPBACK}", cfg(&pass)));
    let r = pymongo(
        &uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(r.ok, "{}", r.out);
    let password = std::fs::read_to_string(&pass).unwrap().trim().to_string();
    assert!(!moat.lines().all().iter().any(|l| l.contains(&password)));

    let wrong = pki.dir.path().join("wrong.pass");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let path = pki.dir.path().join("wrong.toml");
    std::fs::write(&path, cfg(&wrong)).unwrap();
    let (code, text) = moat_check(&path);
    assert_eq!(code, Some(1));
    assert!(
        text.contains("tls.domains[0].key: cannot decrypt"),
        "{text}"
    );
    assert!(text.contains("wrong password?"), "{text}");
    assert!(
        !text.contains("not-the-password") && !text.contains(&password),
        "{text}"
    );
}

#[test]
fn a_key_password_from_a_systemd_credential_serves_and_without_one_the_error_says_why() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let pass = pki.dir.path().join("deployment.pass");
    issue_domain(&pki, "deployment", &["localhost"], Some(&pass));
    // What systemd puts in $CREDENTIALS_DIRECTORY for LoadCredentialEncrypted=moat-key:...
    let creds = pki.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::copy(&pass, creds.join("moat-key")).unwrap();
    let dir = tempdir();
    let path = dir.path().join("moat.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n[tls]\nmode = \"requireSSL\"\n\
             [[tls.domains]]\nname = \"deployment\"\nhostnames = [\"localhost\"]\ncert = \"{d}/deployment.pem\"\n\
             key = \"{d}/deployment-key.pem\"\nkey_password_credential = \"moat-key\"\n{ALLOW_LOOPBACK}",
            mongo.addr(),
            d = pki.dir.path().display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        Command::new(moat_bin())
            .env("CREDENTIALS_DIRECTORY", &creds)
            .args(["run", "--config"])
            .arg(&path),
    );
    let line = proc.lines.wait_for("waiting for connections on ", DEADLINE);
    let addr = line
        .split("waiting for connections on ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut s = tls_connect(addr, &pki.ca, "localhost").unwrap();
    hello_over(&mut s, 1);

    // Outside the unit (no $CREDENTIALS_DIRECTORY), and with the credential missing.
    let check = |creds: Option<&Path>| {
        let mut c = Command::new(moat_bin());
        c.args(["check", "--config"]).arg(&path);
        match creds {
            Some(d) => c.env("CREDENTIALS_DIRECTORY", d),
            None => c.env_remove("CREDENTIALS_DIRECTORY"),
        };
        let o = c.output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = check(None);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(":12:27: tls.domains[0].key_password_credential: key_password_credential = \"moat-key\" is read from $CREDENTIALS_DIRECTORY, which is not set"),
        "{err}"
    );
    let (code, err) = check(Some(&pki.dir.path().join("elsewhere")));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("credential moat-key: cannot read") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(check(Some(&creds)).0, Some(0));
}

/// A client CA and a client certificate for `CN=alice,O=moat test` (clientAuth).
struct ClientPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// cert + key in one file, as pymongo's tlsCertificateKeyFile wants.
    combined: PathBuf,
}

fn client_pki(dir: &Path) -> ClientPki {
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
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "moat test");
    p.distinguished_name.push(DnType::CommonName, "alice");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let f = ClientPki {
        ca: dir.join("client-ca.pem"),
        cert: dir.join("alice.pem"),
        key: dir.join("alice-key.pem"),
        combined: dir.join("alice-combined.pem"),
    };
    std::fs::write(&f.ca, ca_cert.pem()).unwrap();
    std::fs::write(&f.cert, cert.pem()).unwrap();
    std::fs::write(&f.key, key.serialize_pem()).unwrap();
    std::fs::write(&f.combined, cert.pem() + &key.serialize_pem()).unwrap();
    f
}

fn client_cert_moat(mongo: &Mongo, pki: &Pki, cp: &ClientPki, mode: &str) -> Moat {
    Moat::start(&config(&mongo.addr(), "preferSSL", pki, "").replace(
        "[tls]\n",
        &format!(
            "[tls]\nclient_certificates = \"{mode}\"\nclient_ca = \"{}\"\n",
            cp.ca.display()
        ),
    ))
}

#[test]
fn required_client_certificate_refuses_clients_without_one_and_accepts_with() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let cp = client_pki(pki.dir.path());
    let moat = client_cert_moat(&mongo, &pki, &cp, "required");

    // Without: the handshake is refused (TLS 1.3 reports it on the first read).
    let without = tls_client(&pki.ca, None);
    let refused = tls_connect_with(moat.addr, &without, "localhost").and_then(|mut s| {
        use std::io::{Read, Write};
        s.write_all(&op_msg_hello(1))?;
        let mut b = [0u8; 16];
        s.read_exact(&mut b)
    });
    assert!(refused.is_err(), "no client certificate must be refused");
    moat.lines().wait_for("TLS handshake failed", DEADLINE);

    // With: accepted, and the subject is logged the way mongod names X.509 users.
    let with = tls_client(&pki.ca, Some((&cp.cert, &cp.key)));
    let mut s = tls_connect_with(moat.addr, &with, "localhost").unwrap();
    hello_over(&mut s, 2);
    moat.lines()
        .wait_for("client=\"CN=alice,O=moat test\"", DEADLINE);

    // A real driver with a client certificate.
    let opts = format!(
        "{}&tlsCertificateKeyFile={}",
        tls_opts(&pki),
        cp.combined.display()
    );
    let r = pymongo(&uri("localhost", moat.port(), &opts), &["insert_find"]);
    assert!(r.ok, "{}", r.out);
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(!r.ok, "pymongo without a certificate: {}", r.out);
}

#[test]
fn optional_client_certificate_admits_both_and_warns_about_the_missing_one() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let cp = client_pki(pki.dir.path());
    let moat = client_cert_moat(&mongo, &pki, &cp, "optional");
    let mut s = tls_connect_with(moat.addr, &tls_client(&pki.ca, None), "localhost").unwrap();
    hello_over(&mut s, 1);
    moat.lines().wait_for(
        "W NETWORK  [conn1] no SSL certificate provided by peer",
        DEADLINE,
    );
    let with = tls_client(&pki.ca, Some((&cp.cert, &cp.key)));
    let mut s = tls_connect_with(moat.addr, &with, "localhost").unwrap();
    hello_over(&mut s, 2);
    moat.lines()
        .wait_for("client=\"CN=alice,O=moat test\"", DEADLINE);
    assert_eq!(moat.lines().count("no SSL certificate provided by peer"), 1);
}

#[test]
fn no_client_certificate_warning_when_none_are_requested() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let mut s = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    hello_over(&mut s, 1);
    drop(s);
    moat.lines().wait_for("end connection", DEADLINE);
    assert_eq!(moat.lines().count("no SSL certificate provided by peer"), 0);
}

#[test]
fn rotation_under_a_live_client_switches_new_handshakes_and_drops_nothing() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let before = file_serial(&pki.cert);
    let steady = Steady::start(&uri("localhost", moat.port(), &tls_opts(&pki)));
    let mut open = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(served_serial(&open), before);

    // Replace the files (a new key and certificate), then reload.
    issue_domain(&pki, "default", &["localhost"], None);
    let after = file_serial(&pki.cert);
    assert_ne!(before, after);
    let (code, out, err) = moat.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");

    let s = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(
        served_serial(&s),
        after,
        "new handshakes see the new certificate"
    );
    hello_over(&mut open, 7); // the connection made before the rotation still works
    let (ops, errors, out) = steady.finish();
    assert!(ops > 0 && errors == 0, "{out}");
    let status = moat.ctl_json(&["status"]);
    assert!(
        status["domains"][0]["not_after"].as_i64().unwrap() > 0,
        "{status}"
    );
}

#[test]
fn a_broken_file_on_reload_keeps_the_old_certificate_in_service() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let before = file_serial(&pki.cert);
    std::fs::write(
        &pki.key,
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let (code, _, err) = moat.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("tls.domains[0].key"), "{err}");
    assert!(
        err.contains(&pki.key.display().to_string()),
        "names the file: {err}"
    );
    let s = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(served_serial(&s), before);
}

#[test]
fn sessions_resume_and_survive_a_certificate_rotation() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let client = tls_client(&pki.ca, None);
    let resumed = |cfg: &std::sync::Arc<rustls::ClientConfig>| {
        let mut s = tls_connect_with(moat.addr, cfg, "localhost").unwrap();
        hello_over(&mut s, 1); // reads the session tickets sent after the handshake
        s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    };
    assert!(!resumed(&client), "first handshake is full");
    assert!(resumed(&client), "second one resumes");
    moat.lines().wait_for(" resumed", DEADLINE);
    assert_eq!(moat.ctl(&["reload"]).0, 0);
    assert!(resumed(&client), "tickets outlive a reload");
}

#[test]
fn old_protocols_are_refused_and_min_version_is_honoured() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    // SECLEVEL=0 lets openssl offer TLS 1.1 at all: the refusal must come from moat.
    let (ok, out) = openssl(
        moat.addr,
        &pki.ca,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    assert!(!ok, "{out}");
    moat.lines().wait_for("TLS handshake failed", DEADLINE);
    let (ok, out) = openssl(
        moat.addr,
        &pki.ca,
        &["-tls1_2", "-verify_hostname", "localhost"],
    );
    assert!(ok, "TLS 1.2 is accepted by default: {out}");

    let moat13 = Moat::start(
        &config(&mongo.addr(), "preferSSL", &pki, "")
            .replace("[tls]\n", "[tls]\nmin_version = \"1.3\"\n"),
    );
    let (ok, out) = openssl(moat13.addr, &pki.ca, &["-tls1_2"]);
    assert!(!ok, "min_version 1.3 refuses 1.2: {out}");
    let (ok, out) = openssl(
        moat13.addr,
        &pki.ca,
        &["-tls1_3", "-verify_hostname", "localhost"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
}

/// Writes a CA → intermediate → leaf PKI; returns (root CA pem, leaf pem, intermediate pem, key pem).
fn three_level_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let root_key = KeyPair::generate().unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name.push(DnType::CommonName, "root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root_cert = root.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root, &root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int = CertificateParams::new(Vec::<String>::new()).unwrap();
    int.distinguished_name
        .push(DnType::CommonName, "intermediate");
    int.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let int_cert = int.signed_by(&int_key, &root_issuer).unwrap();
    let int_issuer = Issuer::new(int, &int_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &int_issuer)
        .unwrap();
    let p = |n: &str| dir.join(n);
    std::fs::write(p("root.pem"), root_cert.pem()).unwrap();
    std::fs::write(p("leaf.pem"), leaf.pem()).unwrap();
    std::fs::write(p("int.pem"), int_cert.pem()).unwrap();
    std::fs::write(p("leaf-key.pem"), key.serialize_pem()).unwrap();
    (
        p("root.pem"),
        p("leaf.pem"),
        p("int.pem"),
        p("leaf-key.pem"),
    )
}

#[test]
fn a_chain_in_the_wrong_order_fails_check_and_the_right_order_serves_the_chain() {
    let mongo = Mongo::start();
    let dir = tempdir();
    let (root, leaf, int, key) = three_level_pki(dir.path());
    let chain = |first: &Path, second: &Path| {
        let p = dir.path().join("chain.pem");
        let text =
            std::fs::read_to_string(first).unwrap() + &std::fs::read_to_string(second).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    };
    let cfg = |cert: &Path| {
        let path = dir.path().join("moat.toml");
        std::fs::write(
            &path,
            format!(
                "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n[tls]\nmode = \"preferSSL\"\n\
                 [[tls.domains]]\nname = \"d\"\nhostnames = [\"localhost\"]\ncert = \"{}\"\nkey = \"{}\"\n",
                mongo.addr(),
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        path
    };
    let wrong = cfg(&chain(&int, &leaf));
    let (code, err) = moat_check(&wrong);
    assert_eq!(code, Some(1));
    assert!(err.contains("put the leaf first"), "{err}");

    let right = std::fs::read_to_string(cfg(&chain(&leaf, &int))).unwrap();
    let moat = Moat::start(&format!("{right}{ALLOW_LOOPBACK}"));
    // The client trusts only the root: the intermediate must come from moat.
    let s = tls_connect(moat.addr, &root, "localhost").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap().len(), 2);
}

#[test]
fn hostnames_the_certificate_does_not_carry_fail_check() {
    let pki = Pki::new();
    let dir = tempdir();
    let path = dir.path().join("moat.toml");
    std::fs::write(
        &path,
        config_without_loopback("127.0.0.1:27018", "preferSSL", &pki, "", "").replace(
            "hostnames = [\"localhost\"]",
            "hostnames = [\"localhost\", \"db9.moat.test\"]",
        ),
    )
    .unwrap();
    let (code, err) = moat_check(&path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tls.domains[0].hostnames[1]: `db9.moat.test` is not among the names in"),
        "{err}"
    );
}

#[test]
fn a_certificate_close_to_expiry_is_warned_about_and_an_expired_one_refused() {
    use rcgen::{CertificateParams, KeyPair};
    let mongo = Mongo::start();
    let dir = tempdir();
    let write = |days: i64| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now + time::Duration::days(days);
        let cert = p.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    };
    let cfg = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n[tls]\nmode = \"preferSSL\"\n\
         [[tls.domains]]\nname = \"soon\"\nhostnames = [\"localhost\"]\ncert = \"{d}/c.pem\"\nkey = \"{d}/k.pem\"\n",
        mongo.addr(),
        d = dir.path().display()
    );
    write(5);
    let moat = Moat::start(&format!("{cfg}{ALLOW_LOOPBACK}"));
    let line = moat
        .lines()
        .wait_for("the certificate of domain soon expires on", DEADLINE);
    assert!(
        line.contains(" W NETWORK") && line.contains("days left"),
        "{line}"
    );

    write(-1);
    let path = dir.path().join("expired.toml");
    std::fs::write(&path, &cfg).unwrap();
    let (code, err) = moat_check(&path);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("tls.domains[0].cert") && err.contains("expired on"),
        "{err}"
    );
}

#[test]
fn certs_cli_issues_from_the_dev_ca_and_makes_a_csr_openssl_accepts() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    let moat = |args: &[&str]| {
        let o = Command::new(moat_bin()).args(args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    moat(&["certs", "init", "--dir", d]);
    let pass = dir.path().join("d456.pass");
    let out = moat(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--domain",
        "d456",
        "--hostnames",
        "d456.moat.test,*.d456.moat.test",
        "--encrypt-key",
        pass.to_str().unwrap(),
    ]);
    assert!(out.contains("password is in"), "{out}");
    let ok = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .output()
            .unwrap()
            .status
            .success()
    };
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    assert!(ok(&["verify", "-CAfile", &f("ca.pem"), &f("d456.pem")]));
    assert!(ok(&[
        "pkey",
        "-in",
        &f("d456-key.pem"),
        "-passin",
        &format!("file:{}", f("d456.pass")),
        "-noout"
    ]));
    assert!(!ok(&[
        "pkey",
        "-in",
        &f("d456-key.pem"),
        "-passin",
        "pass:wrong",
        "-noout"
    ]));

    moat(&[
        "certs",
        "csr",
        "--out",
        &f("node.csr"),
        "--key",
        &f("node-key.pem"),
        "--hostnames",
        "db1.moat.test",
    ]);
    assert!(ok(&["req", "-in", &f("node.csr"), "-verify", "-noout"]));
    let text = Command::new("openssl")
        .args(["req", "-in", &f("node.csr"), "-noout", "-text"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("DNS:db1.moat.test"));
}

/// Runs `openssl s_client` until it has saved the session the server offers (TLS 1.3 sends
/// its tickets after the handshake, so stdin stays open until the file is written).
fn openssl_save_session(addr: std::net::SocketAddr, ca: &Path, sess: &Path, extra: &[&str]) {
    use std::process::Stdio;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(["-servername", "localhost", "-CAfile"])
        .arg(ca)
        .arg("-sess_out")
        .arg(sess)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::fs::metadata(sess).map_or(true, |m| m.len() == 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl saved no session"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(child.stdin.take());
    child.wait().unwrap();
}

/// Connects with the session saved in `sess`; s_client's output (it says `Reused,` or `New,`).
fn openssl_resume(addr: std::net::SocketAddr, sess: &Path, version: &str) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-sess_in"])
        .arg(sess)
        .arg(version)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_session_from_before_client_certificates_became_required_does_not_resume() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let cp = client_pki(pki.dir.path());
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let versions = ["-tls1_3", "-tls1_2"];
    let session = |v: &str| pki.dir.path().join(format!("session{v}.pem"));
    for v in versions {
        openssl_save_session(moat.addr, &pki.ca, &session(v), &[v]);
        let out = openssl_resume(moat.addr, &session(v), v);
        assert!(
            out.contains("Reused,"),
            "{v}: resumes while the policy is unchanged: {out}"
        );
    }

    // Tighten: client certificates become required.
    let text = std::fs::read_to_string(moat.config_path())
        .unwrap()
        .replace(
            "[tls]\n",
            &format!(
                "[tls]\nclient_certificates = \"required\"\nclient_ca = \"{}\"\n",
                cp.ca.display()
            ),
        );
    std::fs::write(moat.config_path(), text).unwrap();
    assert_eq!(moat.ctl(&["reload"]).0, 0);

    for (i, v) in versions.into_iter().enumerate() {
        let out = openssl_resume(moat.addr, &session(v), v);
        assert!(
            !out.contains("Reused,"),
            "{v}: a session from before the change must not resume: {out}"
        );
        moat.lines()
            .wait_for_nth("TLS handshake failed", i + 1, DEADLINE);
    }
    // A client with a certificate still gets in.
    let with = tls_client(&pki.ca, Some((&cp.cert, &cp.key)));
    let mut s = tls_connect_with(moat.addr, &with, "localhost").unwrap();
    hello_over(&mut s, 1);
}
