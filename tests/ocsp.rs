//! OCSP stapling from a file, against `openssl ocsp` (the responder, writing the response
//! file as a cron job would) and `openssl s_client -status` (the client that asks for it): a
//! good current response is stapled; an expired one (made under `faketime`) and one for
//! another certificate are not, and each is warned about. A new file is picked up without a
//! signal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use moat::certgen::{issue, IssueOptions};
use moat_test_support::*;

/// Runs `openssl ocsp` as the CA's responder, answering for `cert` into `out`; `faketime`
/// (e.g. "-2d") runs it with the clock moved.
fn ocsp_response(pki: &Pki, cert: &Path, out: &Path, faketime: Option<&str>) {
    let dir = pki.dir.path();
    // openssl's index writes a serial as BN_bn2hex does: no leading zero bytes.
    let serial = file_serial(cert).trim_start_matches("00").to_uppercase();
    let index = dir.join("index.txt");
    std::fs::write(
        &index,
        format!("V\t351231000000Z\t\t{serial}\tunknown\t/CN=localhost\n"),
    )
    .unwrap();
    let ca_key = dir.join("ca-key.pem");
    let mut cmd = match faketime {
        Some(offset) => {
            let mut c = Command::new("faketime");
            c.args(["-f", offset, "openssl"]);
            c
        }
        None => Command::new("openssl"),
    };
    cmd.arg("ocsp")
        .arg("-index")
        .arg(&index)
        .arg("-CA")
        .arg(&pki.ca)
        .arg("-rsigner")
        .arg(&pki.ca)
        .arg("-rkey")
        .arg(&ca_key)
        .arg("-issuer")
        .arg(&pki.ca)
        .arg("-cert")
        .arg(cert)
        .arg("-respout")
        .arg(out)
        .args(["-ndays", "1"]);
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/deps.sh installs openssl and faketime)"));
    assert!(o.status.success(), "{cmd:?}: {o:?}");
}

/// What `openssl s_client -status` says about the staple moat sends for `localhost`.
fn status(moat: &Moat, ca: &Path) -> String {
    let o = Command::new("openssl")
        .args([
            "s_client",
            "-status",
            "-servername",
            "localhost",
            "-connect",
        ])
        .arg(moat.addr.to_string())
        .arg("-CAfile")
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ocsp_config(upstream: &str, pki: &Pki, ocsp: &Path) -> String {
    config(upstream, "preferSSL", pki, "").replace(
        "[[tls.domains]]\n",
        &format!("[[tls.domains]]\nocsp = \"{}\"\n", ocsp.display()),
    )
}

/// Writes `from` over the configured response file, as a cron job would (rename).
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

fn other_certificate(pki: &Pki) -> PathBuf {
    issue(&IssueOptions {
        dir: pki.dir.path().to_path_buf(),
        domain: "other".into(),
        hostnames: vec!["localhost".into()],
        ips: vec![],
        encrypt_key: None,
        force: true,
    })
    .unwrap()
    .cert
}

#[test]
fn a_good_response_is_stapled_and_an_expired_one_or_one_for_another_certificate_is_not() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let staple = dir.path().join("localhost.ocsp.der");
    ocsp_response(&pki, &pki.cert, &staple, None);
    let moat = Moat::start(&ocsp_config(&mongo.addr(), &pki, &staple));
    let out = status(&moat, &pki.ca);
    assert!(out.contains("OCSP Response Status: successful"), "{out}");
    assert!(out.contains("Cert Status: good"), "{out}");
    assert_eq!(moat.lines().count("without a stapled OCSP response"), 0);

    // Expired: made two days ago, valid for one.
    let expired = dir.path().join("expired.der");
    ocsp_response(&pki, &pki.cert, &expired, Some("-2d"));
    replace(&expired, &staple);
    let warning = moat
        .lines()
        .wait_for("without a stapled OCSP response", DEADLINE);
    assert!(warning.contains("tls.domains[0].ocsp"), "{warning}");
    assert!(warning.contains("expired at"), "{warning}");
    assert!(warning.contains(&staple.display().to_string()), "{warning}");
    wait_until("no staple sent", DEADLINE, || {
        status(&moat, &pki.ca).contains("OCSP response: no response sent")
    });

    // A fresh one is stapled again, without a signal.
    ocsp_response(&pki, &pki.cert, &expired, None);
    replace(&expired, &staple);
    wait_until("the fresh response stapled", DEADLINE, || {
        status(&moat, &pki.ca).contains("Cert Status: good")
    });

    // A good response, but for another certificate of the same CA.
    let other = other_certificate(&pki);
    ocsp_response(&pki, &other, &expired, None);
    replace(&expired, &staple);
    let warning = moat
        .lines()
        .wait_for_nth("without a stapled OCSP response", 2, DEADLINE);
    let (want, found) = (file_serial(&pki.cert), file_serial(&other));
    assert!(
        warning.contains(&format!(
            "for another certificate (serial {found}), not the one served (serial {want})"
        )),
        "{warning}"
    );
    wait_until("no staple sent", DEADLINE, || {
        status(&moat, &pki.ca).contains("OCSP response: no response sent")
    });
}

#[test]
fn an_unusable_response_file_does_not_stop_the_certificate_from_serving() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let missing = dir.path().join("missing.der");
    let moat = Moat::start(&ocsp_config(&mongo.addr(), &pki, &missing));
    let warning = moat
        .lines()
        .wait_for("without a stapled OCSP response", DEADLINE);
    assert!(warning.contains("cannot read"), "{warning}");
    let out = status(&moat, &pki.ca);
    assert!(out.contains("OCSP response: no response sent"), "{out}");
    let mut s = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    hello_over(&mut s, 1);

    // `moat check` says the same, and passes.
    let o = Command::new(moat_bin())
        .args(["check", "--config"])
        .arg(moat.config_path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("warning: ") && out.contains("tls.domains[0].ocsp: "),
        "{out}"
    );
}

#[test]
fn a_stapled_response_is_dropped_when_it_expires_while_served() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let staple = dir.path().join("localhost.ocsp.der");
    // Made a day less 8 seconds ago, valid for a day: it expires 8 s from now.
    ocsp_response(&pki, &pki.cert, &staple, Some("-86392"));
    let moat = Moat::start(&ocsp_config(&mongo.addr(), &pki, &staple));
    let out = status(&moat, &pki.ca);
    assert!(out.contains("Cert Status: good"), "{out}");
    let warning = moat
        .lines()
        .wait_for("without a stapled OCSP response", DEADLINE);
    assert!(warning.contains("expired at"), "{warning}");
    // Logged just before the stapleless configuration is installed.
    wait_until("no staple sent", DEADLINE, || {
        status(&moat, &pki.ca).contains("OCSP response: no response sent")
    });
}
