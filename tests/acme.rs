//! Certificates from an ACME CA, against real parts: Debian's pebble (the ACME test CA) and
//! pebble-challtestsrv (the DNS server pebble resolves with). Issuance by dns-01 through a
//! hook for a scope's wildcard, by tls-alpn-01 on moat's own port, renewal inside the
//! window, and failures that leave the certificate in service alone. Each test prints the
//! time from moat's start to its first certificate served (`--nocapture` shows it).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use moat_test_support::*;

/// `moat ...` with `args`: (success, stdout + stderr).
fn moat(args: &[&str]) -> (bool, String) {
    let out = Command::new(moat_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The `[tls.domains.acme]` table for pebble.
fn acme_table(pebble: &Pebble, challenge: &str, extra: &str) -> String {
    format!(
        "[tls.domains.acme]\ndirectory = \"{}\"\ndirectory_ca = \"{}\"\naccount_key = \"account.pem\"\nchallenge = \"{challenge}\"\nretry_min = \"200ms\"\n{extra}\n",
        pebble.directory,
        pebble.api_ca.display()
    )
}

/// `listen.address` on a reserved port, for pebble to check tls-alpn-01 on.
fn alpn_config(upstream: &str, port: u16, domain: &str, sections: &str) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:{port}"
handshake_timeout = "5s"
[upstream]
address = "{upstream}"
[tls]
mode = "preferSSL"
{domain}
{sections}
{ADMIN}"#
    ) + ALLOW_LOOPBACK
}

fn wait_issued(m: &Moat, domain: &str, n: usize) -> String {
    m.lines().wait_for_nth(
        &format!("certificate for domain {domain} issued by"),
        n,
        DEADLINE,
    )
}

fn serial_in(line: &str) -> String {
    line.split("(serial ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no serial in {line}"))
        .to_string()
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_scope_wildcard_is_issued_by_dns01_and_pymongo_verifies_a_node_name_under_it() {
    let mongo = Mongo::start();
    let dns = Challtestsrv::start();
    let unused = closed_port();
    let port = unused.addr().rsplit(':').next().unwrap().parse().unwrap();
    let pebble = Pebble::start(&dns, port, None);
    let pki = Pki::new();
    let dir = tempdir();
    let config = dir.path().join("moat.toml");
    std::fs::write(
        &config,
        config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN),
    )
    .unwrap();
    let hook = dns.hook(dir.path());
    let (ok, out) = moat(&[
        "certs",
        "scope",
        "new",
        "--scope",
        "deployment",
        "--base",
        "moat.test",
        "--acme-directory",
        &pebble.directory,
        "--dns-hook",
        hook.to_str().unwrap(),
        "--acme-directory-ca",
        pebble.api_ca.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    let node1 = out
        .split_whitespace()
        .find(|w| w.starts_with("node1."))
        .unwrap_or_else(|| panic!("no node hostname in {out}"))
        .to_string();
    let label = node1.split('.').nth(1).unwrap();
    assert!(
        label.len() >= 8
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );
    let name = format!("deployment-{label}");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("hostnames = [\"*.{label}.moat.test\"]"))
            && text.contains("default_domain = \"default\""),
        "{text}"
    );

    let started = Instant::now();
    let m = Moat::start_in(dir);
    wait_issued(&m, &name, 1);
    let took = started.elapsed();
    eprintln!(
        "time from start to first certificate served (dns-01): {} ms",
        took.as_millis()
    );
    // The hook's record is gone again.
    dns.proc
        .lines
        .wait_for("Removed DNS-01 TXT challenge", DEADLINE);

    let root = pebble.root();
    let tls = format!("&tls=true&tlsCAFile={}", root.display());
    let r = pymongo_resolving(&uri(&node1, m.port(), &tls), &["ping", "insert_find"]);
    assert!(r.ok, "{}", r.out);
    // The same driver refuses a name outside the scope: the check is real.
    let outside = uri("node1.other.moat.test", m.port(), &tls);
    let r = pymongo_resolving(&outside, &["ping"]);
    assert!(!r.ok, "{}", r.out);
}

#[test]
fn tls_alpn01_is_answered_on_moats_own_port_and_the_new_key_is_encrypted() {
    let mongo = Mongo::start();
    let dns = Challtestsrv::start();
    let reserved = reserve_port();
    let pebble = Pebble::start(&dns, reserved.port, None);
    let domain = format!(
        "[[tls.domains]]\nname = \"node\"\nhostnames = [\"db1.moat.test\"]\ncert = \"node.pem\"\nkey = \"node-key.pem\"\nkey_password_file = \"node.pass\"\n{}",
        acme_table(&pebble, "tls-alpn-01", "contact = [\"mailto:ops@moat.test\"]")
    );
    let started = Instant::now();
    let m = Moat::start(&alpn_config(&mongo.addr(), reserved.port, &domain, ""));
    drop(reserved);
    let issued = wait_issued(&m, "node", 1);
    let took = started.elapsed();
    eprintln!(
        "time from start to first certificate served (tls-alpn-01): {} ms",
        took.as_millis()
    );
    m.lines().wait_for(
        "answered the tls-alpn-01 challenge for db1.moat.test",
        DEADLINE,
    );

    let dir = m.dir.path();
    let served = tls_connect(m.addr, &pebble.root(), "db1.moat.test").unwrap();
    assert_eq!(served_serial(&served), serial_in(&issued));
    assert_eq!(served_serial(&served), file_serial(&dir.join("node.pem")));
    // The key never left the node: made here, encrypted under a fresh password kept 0600.
    let key = std::fs::read_to_string(dir.join("node-key.pem")).unwrap();
    assert!(
        key.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{key}"
    );
    assert_eq!(mode_of(&dir.join("node-key.pem")), 0o600);
    assert_eq!(mode_of(&dir.join("node.pass")), 0o600);
    assert_eq!(mode_of(&dir.join("account.pem")), 0o600);

    // The renewal is scheduled once the issuance is done (and logged after it).
    m.lines()
        .wait_for("certificate for domain node is renewed at", DEADLINE);
    let status = m.ctl_json(&["status"]);
    let d = &status["domains"][0];
    assert_eq!(d["acme"], true, "{status}");
    assert!(
        d["issuer"]
            .as_str()
            .unwrap()
            .starts_with("Pebble Intermediate CA"),
        "{status}"
    );
    assert!(d["next_renewal"].as_i64().unwrap() > d["not_after"].as_i64().unwrap() - 31 * 86_400);
    assert!(d["last_error"].is_null(), "{status}");
    let (code, table, _) = m.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("ISSUER") && table.contains("NEXT RENEWAL") && table.contains("(ACME)"),
        "{table}"
    );
}

#[test]
fn a_certificate_inside_its_window_is_renewed_and_an_open_connection_keeps_working() {
    let mongo = Mongo::start();
    let dns = Challtestsrv::start();
    let reserved = reserve_port();
    // 12-second certificates, renewed 10 s ahead: never before a third of the lifetime,
    // so about 4 s after each issuance.
    let pebble = Pebble::start(&dns, reserved.port, Some(12));
    let domain = format!(
        "[[tls.domains]]\nname = \"node\"\nhostnames = [\"db1.moat.test\"]\ncert = \"node.pem\"\nkey = \"node-key.pem\"\n{}",
        acme_table(&pebble, "tls-alpn-01", "renew_before = \"10s\"")
    );
    let m = Moat::start(&alpn_config(&mongo.addr(), reserved.port, &domain, ""));
    drop(reserved);
    wait_issued(&m, "node", 1);
    let root = pebble.root();
    let mut old = tls_connect(m.addr, &root, "db1.moat.test").unwrap();
    let first = served_serial(&old);
    assert_eq!(hello_over(&mut old, 1).get_f64("ok").unwrap(), 1.0);
    // The issuance this connection got (the first, unless this machine is slow), then the
    // renewal after it.
    // (A renewal's line is written a moment after its certificate is served: wait for it.)
    let n = (1..)
        .find(|&k| serial_in(&wait_issued(&m, "node", k)) == first)
        .unwrap();
    let second = serial_in(&wait_issued(&m, "node", n + 1));
    assert_ne!(first, second);
    let new = tls_connect(m.addr, &root, "db1.moat.test").unwrap();
    assert_eq!(
        served_serial(&new),
        second,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        hello_over(&mut old, 2).get_f64("ok").unwrap(),
        1.0,
        "the connection opened before the renewal keeps working"
    );
}

/// A certificate for `hostnames` from the dev CA of `pki`, valid from two hours ago for
/// three hours: inside its renewal window (the last third of its life) from the start.
fn short_lived(pki: &Pki, name: &str, hostnames: &[&str]) -> (PathBuf, PathBuf) {
    let ca_pem = std::fs::read_to_string(&pki.ca).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(pki.dir.path().join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(hostnames.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(2);
    p.not_after = now + time::Duration::hours(1);
    let cert = p.signed_by(&key, &issuer).unwrap();
    let (c, k) = (
        pki.dir.path().join(format!("{name}.pem")),
        pki.dir.path().join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = tcp(addr);
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: moat\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[test]
fn when_the_hook_fails_or_the_ca_is_down_retries_are_logged_and_counted_and_the_old_certificate_serves(
) {
    let dns = Challtestsrv::start();
    let unused = closed_port();
    let port: u16 = unused.addr().rsplit(':').next().unwrap().parse().unwrap();
    let pebble = Pebble::start(&dns, port, None);
    let pki = Pki::new();
    let (hook_cert, hook_key) = short_lived(&pki, "hook", &["hook.moat.test"]);
    let (down_cert, down_key) = short_lived(&pki, "down", &["down.moat.test"]);
    let dir = tempdir();
    let hook = dir.path().join("failing-hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"the DNS provider refused $2\" >&2\nexit 3\n",
    )
    .unwrap();
    make_executable(&hook);
    let config = format!(
        r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "{upstream}"
[tls]
mode = "preferSSL"
default_domain = "hookfails"
[[tls.domains]]
name = "hookfails"
hostnames = ["hook.moat.test"]
cert = "{hook_cert}"
key = "{hook_key}"
{hook_acme}hook = "{hook}"
[[tls.domains]]
name = "cadown"
hostnames = ["down.moat.test"]
cert = "{down_cert}"
key = "{down_key}"
[tls.domains.acme]
directory = "https://localhost:{port}/dir"
account_key = "account.pem"
challenge = "dns-01"
hook = "{hook}"
retry_min = "200ms"
[metrics]
listen = "127.0.0.1:0"
{ADMIN}"#,
        upstream = closed_port().addr(),
        hook_cert = hook_cert.display(),
        hook_key = hook_key.display(),
        down_cert = down_cert.display(),
        down_key = down_key.display(),
        hook_acme = acme_table(&pebble, "dns-01", ""),
        hook = hook.display(),
    ) + ALLOW_LOOPBACK;
    std::fs::write(dir.path().join("moat.toml"), config).unwrap();
    let m = Moat::start_in(dir);
    let hook_failed = m.lines().wait_for(
        "certificate request for domain hookfails failed (2 in a row)",
        DEADLINE,
    );
    assert!(
        hook_failed.contains("the DNS provider refused _acme-challenge.hook.moat.test.")
            && hook_failed.contains("the certificate in service stays"),
        "{hook_failed}"
    );
    let down_failed = m.lines().wait_for(
        "certificate request for domain cadown failed (2 in a row)",
        DEADLINE,
    );
    assert!(down_failed.contains("retrying in"), "{down_failed}");

    // The certificates in service stay.
    for (name, cert) in [
        ("hook.moat.test", &hook_cert),
        ("down.moat.test", &down_cert),
    ] {
        let s = tls_connect(m.addr, &pki.ca, name).unwrap();
        assert_eq!(served_serial(&s), file_serial(cert), "{name}");
    }
    let line = m
        .lines()
        .wait_for("metrics and health on http://", DEADLINE);
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap();
    let metrics = scrape(addr);
    for d in ["hookfails", "cadown"] {
        let errors = sample(
            &metrics,
            &format!("moat_acme_renewals_total{{domain=\"{d}\",result=\"error\"}}"),
        );
        assert!(errors >= 2.0, "{d}: {errors}");
        assert_eq!(
            sample(
                &metrics,
                &format!("moat_acme_renewals_total{{domain=\"{d}\",result=\"ok\"}}")
            ),
            0.0
        );
        let last = sample(
            &metrics,
            &format!("moat_acme_last_error_timestamp_seconds{{domain=\"{d}\"}}"),
        );
        assert!(last > 1.7e9, "{d}: {last}");
        sample(
            &metrics,
            &format!("moat_acme_next_renewal_timestamp_seconds{{domain=\"{d}\"}}"),
        );
    }
    let (code, table, _) = m.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        table.contains("hookfails: last error") && table.contains("the DNS provider refused"),
        "{table}"
    );
}

#[test]
fn check_warns_when_two_deployments_beside_each_other_share_a_deployment_scope() {
    let dir = tempdir();
    let write = |file: &str, scope: &str, hostname: &str| {
        let p = dir.path().join(file);
        std::fs::write(
            &p,
            format!(
                r#"[listen]
address = "127.0.0.1:27017"
[upstream]
address = "127.0.0.1:27018"
[[tls.domains]]
name = "scope"
scope = "{scope}"
hostnames = ["{hostname}"]
cert = "scope.pem"
key = "scope-key.pem"
[tls.domains.acme]
directory = "https://acme.moat.test/dir"
account_key = "account.pem"
challenge = "dns-01"
hook = "hook.sh"
"#
            ),
        )
        .unwrap();
        p
    };
    let a = write("a.toml", "deployment", "*.k3x9q2ab7d.moat.test");
    write("b.toml", "deployment", "node2.k3x9q2ab7d.moat.test");
    let (ok, out) = moat(&["check", "--config", a.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "warning: tls.domains[0]: the deployment scope k3x9q2ab7d.moat.test is also served by"
        ) && out.contains("b.toml"),
        "{out}"
    );
    // An account scope is meant to be shared.
    let c = write("c.toml", "account", "*.acct7.moat.test");
    write("d.toml", "account", "*.acct7.moat.test");
    let (ok, out) = moat(&["check", "--config", c.to_str().unwrap()]);
    assert!(ok && !out.contains("deployment scope"), "{out}");
}

#[test]
fn certs_acme_issues_by_hand_and_answers_tls_alpn01_itself_while_moat_is_not_running() {
    let dns = Challtestsrv::start();
    let reserved = reserve_port();
    let pebble = Pebble::start(&dns, reserved.port, None);
    let dir = tempdir();
    let config = dir.path().join("moat.toml");
    let domain = format!(
        "[[tls.domains]]\nname = \"node\"\nhostnames = [\"db1.moat.test\"]\ncert = \"node.pem\"\nkey = \"node-key.pem\"\n{}",
        acme_table(&pebble, "tls-alpn-01", "")
    );
    std::fs::write(
        &config,
        alpn_config("127.0.0.1:1", reserved.port, &domain, ""),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let (ok, out) = moat(&["certs", "acme", "--domain", "nope", "--config", cfg]);
    assert!(
        !ok && out.contains("no [[tls.domains]] is named `nope` (names: node)"),
        "{out}"
    );
    // The reservation lets `certs acme` bind the port (both set SO_REUSEADDR) and nobody else.
    let (ok, out) = moat(&["certs", "acme", "--domain", "node", "--config", cfg]);
    drop(reserved);
    assert!(ok, "{out}");
    assert!(
        out.contains("answered the tls-alpn-01 challenge for db1.moat.test")
            && out.contains("wrote ")
            && out.contains("issued by Pebble Intermediate CA"),
        "{out}"
    );
    let (ok, out) = moat(&["check", "--config", cfg]);
    assert!(ok && !out.contains("placeholder"), "{out}");
    let chain = moat::tls::certs::load_chain(&dir.path().join("node.pem")).unwrap();
    let leaf = moat::tls::certs::leaf(&chain[0], Path::new("node.pem")).unwrap();
    assert_eq!(leaf.names, vec!["db1.moat.test".to_string()]);
}
