//! moat in front of a real MongoDB-compatible server (secantusdb), driven by real clients:
//! pymongo 4.x, Debian's pymongo 3.11 (legacy OP_QUERY handshake), openssl s_client and raw
//! sockets. Each test starts its own upstream and moat on port 0.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moat_test_support::*;

fn moat_for(mongo: &Mongo, mode: &str, pki: &Pki) -> Moat {
    Moat::start(&config(&mongo.addr(), mode, pki, ""))
}

#[test]
fn tls_by_hostname_with_test_ca_authenticates_inserts_and_finds() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let r = pymongo(
        &alice_uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(r.ok, "{}", r.out);
    moat.lines().wait_for("TLS 1.3 ", DEADLINE);
    moat.lines()
        .wait_for("sni=localhost domain=default", DEADLINE);
}

#[test]
fn unauthenticated_insert_is_refused_by_the_server_not_by_moat() {
    // The upstream really enforces auth: moat forwards the server's own error.
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let r = pymongo(
        &uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(!r.ok);
    assert!(r.out.contains("OperationFailure"), "{}", r.out);
}

#[test]
fn tls_by_ip_fails_hostname_verification() {
    // The certificate names only DNS:localhost, so a client that dials 127.0.0.1 and
    // verifies must fail: the litmus test that TLS really verifies.
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let r = pymongo(&uri("127.0.0.1", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(!r.ok, "{}", r.out);
    assert!(r.out.contains("CERTIFICATE_VERIFY_FAILED"), "{}", r.out);
    assert!(r.out.contains("IP address mismatch"), "{}", r.out);
    moat.lines().wait_for("TLS handshake failed", DEADLINE);
}

#[test]
fn tls_by_ip_passes_when_hostname_check_is_off() {
    // Twin of the litmus test: the only thing wrong above was the hostname.
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let opts = format!("{}&tlsAllowInvalidHostnames=true", tls_opts(&pki));
    let r = pymongo(&uri("127.0.0.1", moat.port(), &opts), &["ping"]);
    assert!(r.ok, "{}", r.out);
}

#[test]
fn tls_with_an_untrusted_ca_fails_verification() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let other = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&other)), &["ping"]);
    assert!(!r.ok);
    assert!(r.out.contains("CERTIFICATE_VERIFY_FAILED"), "{}", r.out);
}

#[test]
fn plaintext_is_forwarded_in_allow_and_prefer_ssl() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    for mode in ["allowSSL", "preferSSL", "disabled"] {
        let moat = moat_for(&mongo, mode, &pki);
        let r = pymongo(&uri("localhost", moat.port(), ""), &["insert_find"]);
        assert!(r.ok, "{mode}: {}", r.out);
    }
}

#[test]
fn tls_is_forwarded_in_allow_prefer_and_require_ssl() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    for mode in ["allowSSL", "preferSSL", "requireSSL"] {
        let moat = moat_for(&mongo, mode, &pki);
        let r = pymongo(
            &uri("localhost", moat.port(), &tls_opts(&pki)),
            &["insert_find"],
        );
        assert!(r.ok, "{mode}: {}", r.out);
    }
}

#[test]
fn require_ssl_plaintext_client_gets_error_reply() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "requireSSL", &pki);
    let r = pymongo(&uri("localhost", moat.port(), ""), &["ping"]);
    assert!(!r.ok);
    // The driver shows moat's reply, not "connection reset".
    assert!(r.out.contains("requires TLS"), "{}", r.out);
    assert!(r.out.contains("SSLHandshakeFailed"), "{}", r.out);
    moat.lines()
        .wait_for("refusing plaintext connection from 127.0.0.1:", DEADLINE);
}

#[test]
fn require_ssl_raw_op_msg_gets_a_well_formed_reply_then_fin() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "requireSSL", &pki);
    let mut s = tcp(moat.addr);
    s.write_all(&op_msg_hello(77)).unwrap();
    let reply = read_message(&mut s);
    assert_eq!(reply.response_to, 77, "responseTo");
    let doc = reply.document();
    assert_eq!(doc.get_f64("ok").unwrap(), 0.0);
    assert_eq!(doc.get_i32("code").unwrap(), 141);
    // Then an orderly close (EOF), not a reset.
    let mut more = [0u8; 1];
    assert_eq!(s.read(&mut more).unwrap(), 0);
}

#[test]
fn require_ssl_legacy_op_query_client_gets_op_reply() {
    // Debian's pymongo 3.11 opens with a legacy OP_QUERY isMaster: moat must answer in
    // OP_REPLY for the driver to read the message.
    let old = Path::new("/usr/bin/python3");
    let probe = Command::new(old).args(["-c", "import pymongo"]).status();
    assert!(
        matches!(probe, Ok(s) if s.success()),
        "Debian's python3-pymongo is missing: apt-get install -y python3-pymongo (scripts/test does)"
    );
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "requireSSL", &pki);
    let r = pymongo_with(old, &uri("localhost", moat.port(), ""), &["ping"]);
    assert!(!r.ok);
    assert!(r.out.contains("requires TLS"), "{}", r.out);
    // And the same old driver gets through over TLS.
    let r = pymongo_with(
        old,
        &uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(r.ok, "{}", r.out);
}

#[test]
fn require_ssl_non_mongodb_plaintext_is_closed_with_a_reason() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "requireSSL", &pki);
    let mut s = tcp(moat.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "no reply to non-MongoDB bytes");
    moat.lines()
        .wait_for("first bytes are not a MongoDB message", DEADLINE);
}

#[test]
fn disabled_refuses_tls() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "disabled", &pki);
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(!r.ok, "{}", r.out);
    moat.lines()
        .wait_for("refusing TLS connection from 127.0.0.1:", DEADLINE);
}

#[test]
fn disabled_mode_needs_no_certificates() {
    let mongo = Mongo::start();
    let moat = Moat::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n{ALLOW_LOOPBACK}",
        mongo.addr()
    ));
    let r = pymongo(&uri("localhost", moat.port(), ""), &["insert_find"]);
    assert!(r.ok, "{}", r.out);
}

#[test]
fn openssl_verifies_by_hostname_and_fails_by_ip() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .arg("s_client")
            .arg("-connect")
            .arg(moat.addr.to_string())
            .arg("-CAfile")
            .arg(&pki.ca)
            .args(["-verify_return_error", "-brief"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = run(&["-servername", "localhost", "-verify_hostname", "localhost"]);
    assert!(ok, "{out}");
    assert!(out.contains("Verification: OK"), "{out}");
    let (ok, out) = run(&["-verify_ip", "127.0.0.1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("IP address mismatch"), "{out}");
}

#[test]
fn unix_socket_upstream() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    let sock = dir.path().join("mongodb.sock");
    let relay = Proc::spawn(
        Command::new(python())
            .arg(repo().join("tests/py/relay.py"))
            .arg(&sock)
            .arg("127.0.0.1")
            .arg(mongo.port.to_string()),
    );
    relay.lines.wait_for("ready", DEADLINE);
    let upstream = format!("unix:{}", sock.display());
    let moat = Moat::start(&config(&upstream, "preferSSL", &pki, ""));
    let r = pymongo(
        &uri("localhost", moat.port(), &tls_opts(&pki)),
        &["insert_find"],
    );
    assert!(r.ok, "{}", r.out);
    let r = pymongo(&uri("localhost", moat.port(), ""), &["insert_find"]);
    assert!(r.ok, "{}", r.out);
}

#[test]
fn upstream_down_answers_the_client_promptly_and_says_why() {
    let pki = Pki::new();
    let dead = closed_port();
    let moat = Moat::start(&config(&dead.addr(), "preferSSL", &pki, ""));
    let mut s = tcp(moat.addr);
    let t0 = Instant::now();
    s.write_all(&op_msg_hello(1)).unwrap();
    let reply = read_op_msg(&mut s);
    assert_eq!(reply.get_str("codeName").unwrap(), "HostUnreachable");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed after the reply");
    // Refused at once, not after connect_timeout (2s) or the driver's own timeout.
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let line = moat.lines().wait_for("cannot reach upstream", DEADLINE);
    assert!(line.contains(&dead.addr()), "{line}");
    assert!(line.contains("refused"), "{line}");
}

#[test]
fn silent_client_is_closed_after_handshake_timeout() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, "").replace(
        "handshake_timeout = \"5s\"",
        "handshake_timeout = \"300ms\"",
    ));
    let mut s = tcp(moat.addr);
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    moat.lines().wait_for(
        "no complete TLS or MongoDB handshake within 300ms",
        DEADLINE,
    );
    // A client stuck half-way through a TLS ClientHello is closed the same way.
    let mut s = tcp(moat.addr);
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    moat.lines()
        .wait_for_nth("no complete TLS or MongoDB handshake", 2, DEADLINE);
}

#[test]
fn max_connections_refuses_the_one_over_the_limit() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "max_connections = 1",
    ));
    let mut first = tcp(moat.addr);
    hello_over(&mut first, 1);
    let mut second = tcp(moat.addr);
    let _ = second.write_all(&op_msg_hello(2));
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).unwrap_or(0),
        0,
        "over the limit: closed"
    );
    moat.lines()
        .wait_for("max_connections (1) reached", DEADLINE);
    // The first keeps working; once it is gone a new one is admitted.
    hello_over(&mut first, 3);
    drop(first);
    moat.lines().wait_for("(0 connections now open)", DEADLINE);
    let mut third = tcp(moat.addr);
    hello_over(&mut third, 4);
}

#[test]
fn half_close_from_the_client_still_delivers_the_reply() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_for(&mongo, "preferSSL", &pki);
    let mut s = tcp(moat.addr);
    s.write_all(&op_msg_hello(9)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let doc = read_op_msg(&mut s);
    assert!(doc.get_bool("isWritablePrimary").is_ok(), "{doc}");
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let mut moat = moat_for(&mongo, "preferSSL", &pki);
    let mut open = tcp(moat.addr);
    hello_over(&mut open, 1);
    moat.proc.signal("TERM");
    moat.lines()
        .wait_for("got SIGTERM: no longer accepting", DEADLINE);
    // New connections are refused by the kernel: the listener is closed.
    assert!(std::net::TcpStream::connect(moat.addr).is_err());
    // The open one keeps working during the drain.
    hello_over(&mut open, 2);
    drop(open);
    let status = moat.proc.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    moat.lines()
        .wait_for("shutdown complete: all connections ended", DEADLINE);
}

#[test]
fn sigterm_gives_up_on_connections_after_shutdown_timeout() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let mut moat = Moat::start(&config(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "shutdown_timeout = \"500ms\"",
    ));
    let mut open = tcp(moat.addr);
    hello_over(&mut open, 1);
    moat.proc.signal("INT");
    let status = moat.proc.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    moat.lines().wait_for(
        "shutdown_timeout reached, closing 1 connection still open",
        DEADLINE,
    );
}

#[test]
fn max_connections_refusals_are_rate_limited_and_name_ipv4_clients_as_ipv4() {
    let up = Recorder::start();
    let pki = Pki::new();
    // [::] accepts IPv4 clients too; the kernel reports them as ::ffff:127.0.0.1.
    let moat = Moat::start(
        &config(
            &up.addr.to_string(),
            "preferSSL",
            &pki,
            "max_connections = 1",
        )
        .replace("address = \"127.0.0.1:0\"", "address = \"[::]:0\""),
    );
    let to: std::net::SocketAddr = format!("127.0.0.1:{}", moat.port()).parse().unwrap();
    let mut first = tcp(to);
    assert!(echo_ok(&mut first));
    for _ in 0..300 {
        let mut s = tcp(to);
        assert!(closed_without_reply(&mut s), "over the limit: closed");
    }
    moat.lines()
        .wait_for("more connections were refused in the last second", DEADLINE);
    let refused: Vec<String> = moat
        .lines()
        .all()
        .into_iter()
        .filter(|l| l.contains("max_connections (1) reached"))
        .collect();
    assert!(
        !refused.is_empty() && refused.len() < 300,
        "{} lines for 300 refusals",
        refused.len()
    );
    for l in &refused {
        assert!(l.contains("connection refused from 127.0.0.1:"), "{l}");
    }
    assert!(echo_ok(&mut first), "the admitted one is unaffected");
}
