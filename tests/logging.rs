//! Handshake inspection end to end: real drivers (pymongo 4.20, Debian's pymongo 3.11,
//! mongosh 2.12) through moat into secantusdb with auth; mongod-style lines in text and
//! JSON; what `moat ctl` learns; transparency for bytes it cannot parse.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use moat_test_support::*;

fn moat_json(mongo: &Mongo, pki: &Pki) -> Moat {
    Moat::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        pki,
        "",
        &format!("{ADMIN}\n[log]\nformat = \"json\"\n"),
    ))
}

/// pymongo over TLS as bob/hunter2, a user that does not exist.
fn wrong_password(moat: &Moat, pki: &Pki) -> PyResult {
    let opts = format!("&authSource=admin{}", tls_opts(pki));
    pymongo(&uri("bob:hunter2@localhost", moat.port(), &opts), &["ping"])
}

#[test]
fn pymongo_session_is_logged_like_mongod_and_never_shows_the_password() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let ok = pymongo(
        &alice_uri(
            "localhost",
            moat.port(),
            &format!("{}&appName=billing", tls_opts(&pki)),
        ),
        &["insert_find"],
    );
    assert!(ok.ok, "{}", ok.out);
    let meta = moat
        .lines()
        .wait_for("received client metadata from 127.0.0.1:", DEADLINE);
    assert!(meta.contains(" I NETWORK  [conn"), "{meta}");
    assert!(
        meta.contains(
            ": { driver: { name: \"PyMongo|c\", version: \"4.20.0|\" }, os: { type: \"Linux\""
        ),
        "{meta}"
    );
    assert!(
        meta.contains("application: { name: \"billing\" }"),
        "{meta}"
    );
    let success = moat.lines().wait_for(
        "Successfully authenticated as principal alice on admin from client 127.0.0.1:",
        DEADLINE,
    );
    assert!(success.contains(" I ACCESS   [conn"), "{success}");

    let bad = wrong_password(&moat, &pki);
    assert!(!bad.ok);
    let failed = moat
        .lines()
        .wait_for("authentication failed for bob", DEADLINE);
    assert!(
        failed.contains(
            "SASL SCRAM-SHA-256 authentication failed for bob on admin from client 127.0.0.1:"
        ) && failed.ends_with(" ; AuthenticationFailed: authentication failed"),
        "{failed}"
    );
    for l in moat.lines().all() {
        assert!(
            !l.contains("secret") && !l.contains("hunter2"),
            "a password leaked: {l}"
        );
    }
}

#[test]
fn json_lines_carry_mongods_ids_for_the_same_events() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = moat_json(&mongo, &pki);
    let ok = pymongo(
        &alice_uri("localhost", moat.port(), &tls_opts(&pki)),
        &["ping"],
    );
    assert!(ok.ok, "{}", ok.out);
    let bad = wrong_password(&moat, &pki);
    assert!(!bad.ok);
    moat.lines().wait_for("\"id\":20249", DEADLINE);
    moat.lines().wait_for("\"id\":22944", DEADLINE);
    let events: Vec<serde_json::Value> = moat
        .lines()
        .all()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let by_id = |id: u64| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no id {id}"))
    };
    assert_eq!(by_id(22943)["msg"], "Connection accepted");
    let meta = by_id(51800);
    assert_eq!(meta["msg"], "client metadata");
    assert_eq!(
        meta["attr"]["doc"]["driver"]["name"], "PyMongo|c",
        "doc is an object: {meta}"
    );
    let ok = by_id(20250);
    assert_eq!(ok["attr"]["principalName"], "alice");
    assert_eq!(ok["attr"]["authenticationDatabase"], "admin");
    assert_eq!(ok["attr"]["mechanism"], "SCRAM-SHA-256");
    let failed = by_id(20249);
    assert_eq!(failed["attr"]["principalName"], "bob");
    assert_eq!(
        failed["attr"]["error"],
        "AuthenticationFailed: authentication failed"
    );
    assert_eq!(by_id(22944)["msg"], "Connection ended");
    for e in &events {
        let t = e["t"]["$date"].as_str().unwrap();
        assert!(t.ends_with("+00:00") && t.len() == 29, "{t}");
        assert!(!e.to_string().contains("hunter2"));
    }
}

#[test]
fn legacy_op_query_driver_and_mongosh_are_inspected_too() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let old = pymongo_with(
        Path::new("/usr/bin/python3"),
        &alice_uri("localhost", moat.port(), "&appName=oldapp"),
        &["ping"],
    );
    assert!(old.ok, "{}", old.out);
    moat.lines().wait_for(
        "driver: { name: \"PyMongo\", version: \"3.11.0\" }",
        DEADLINE,
    );
    moat.lines().wait_for(
        "Successfully authenticated as principal alice on admin",
        DEADLINE,
    );

    let sh = mongosh_ping(&format!(
        "mongodb://alice:secret@localhost:{}/admin?directConnection=true{}",
        moat.port(),
        tls_opts(&pki)
    ));
    assert!(sh.ok && sh.out.contains("\"ok\":1"), "{}", sh.out);
    moat.lines()
        .wait_for("driver: { name: \"nodejs|mongosh\"", DEADLINE);
    moat.lines().wait_for_nth(
        "Successfully authenticated as principal alice on admin",
        2,
        DEADLINE,
    );
}

#[test]
fn ctl_shows_driver_app_and_user_and_the_require_ssl_refusal_names_them() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let steady = Steady::start(&alice_uri("localhost", moat.port(), "&appName=reports"));
    let list = moat.ctl_json(&["connections", "--plaintext"]);
    let conns = list["connections"].as_array().unwrap();
    let authed = conns
        .iter()
        .find(|c| c["user"] == "alice@admin")
        .unwrap_or_else(|| panic!("no authenticated connection in {list}"));
    assert_eq!(authed["driver"], "PyMongo|c 4.20.0|");
    assert_eq!(authed["app"], "reports");
    let (code, _, err) = moat.ctl(&["mode", "set", "requireSSL"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reports") && err.contains("alice@admin") && err.contains("PyMongo|c 4.20.0|"),
        "{err}"
    );
    let (_, errors, out) = steady.finish();
    assert_eq!(errors, 0, "{out}");
}

#[test]
fn bytes_inspection_cannot_parse_are_forwarded_untouched() {
    let up = Recorder::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(&up.addr.to_string(), "preferSSL", &pki, ""));
    // A valid OP_MSG header whose body is garbage.
    let mut msg = Vec::new();
    for v in [48i32, 1, 0, 2013] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    let mut s = tcp(moat.addr);
    s.write_all(&msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg, "the upstream got exactly the client's bytes");
    // Not a MongoDB message at all, after the first bytes.
    s.write_all(b"\xff\xff\xff\xffnot mongodb at all").unwrap();
    let mut back = [0u8; 22];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\xff\xff\xff\xffnot mongodb at all");
    drop(s);
    // moat keeps serving.
    let mut s = tcp(moat.addr);
    assert!(echo_ok(&mut s));
}

#[test]
fn inspection_can_be_turned_off() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "",
        "[log]\ninspect = false\n",
    ));
    let ok = pymongo(&alice_uri("localhost", moat.port(), ""), &["ping"]);
    assert!(ok.ok, "{}", ok.out);
    moat.lines().wait_for("end connection", DEADLINE);
    assert_eq!(moat.lines().count("client metadata"), 0);
    assert_eq!(moat.lines().count("authenticated"), 0);
}

/// `s` percent-encoded for the user part of a MongoDB URI.
fn uri_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A user name that carries a forged success line, an ESC sequence (clear screen) and a C1
/// CSI (U+009B).
const FORGED_USER: &str = "x\n2026-01-01T00:00:00.000+0000 I ACCESS   [conn9] Successfully authenticated as principal root on admin from client 10.0.0.1:5000\u{1b}[2J\u{9b}1m";

#[test]
fn a_user_name_cannot_forge_log_lines_or_reach_the_terminal_raw() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let text = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let json = moat_json(&mongo, &pki);
    for m in [&text, &json] {
        let creds = format!("{}:pw@localhost", uri_escape(FORGED_USER));
        let r = pymongo(&uri(&creds, m.port(), "&authSource=admin"), &["ping"]);
        assert!(!r.ok, "{}", r.out);
    }

    let failed = text
        .lines()
        .wait_for("authentication failed for x", DEADLINE);
    text.lines().wait_for("end connection", DEADLINE);
    assert!(
        failed.contains(
            "authentication failed for x\\n2026-01-01T00:00:00.000+0000 I ACCESS   [conn9] \
             Successfully authenticated as principal root on admin from client 10.0.0.1:5000\
             \\x1b[2J\\u{9b}1m on admin from client 127.0.0.1:"
        ),
        "{failed}"
    );
    for l in text.lines().all() {
        assert!(!l.starts_with("2026-01-01T"), "a forged line: {l}");
        assert!(
            !l.chars().any(char::is_control),
            "a raw control character: {l:?}"
        );
    }

    json.lines().wait_for("\"id\":20249", DEADLINE);
    json.lines().wait_for("\"id\":22944", DEADLINE);
    for l in json.lines().all() {
        assert!(
            !l.chars().any(char::is_control),
            "a raw control character: {l:?}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        if v["id"] == 20249 {
            assert_eq!(v["attr"]["principalName"], FORGED_USER, "{l}");
        }
    }
}

#[test]
fn plain_over_tls_sends_the_password_and_it_never_reaches_the_log() {
    const PASSWORD: &str = "plain-pw-7Qx2";
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(
        &mongo.addr(),
        "requireSSL",
        &pki,
        "",
        "[log]\nlevel = \"debug\"\n",
    ));
    // secantusdb refuses PLAIN; the saslStart with `\0carol\0PASSWORD` still goes through
    // moat's inspector.
    let r = pymongo(
        &uri(
            &format!("carol:{PASSWORD}@localhost"),
            moat.port(),
            &format!(
                "&authMechanism=PLAIN&authSource=$external{}",
                tls_opts(&pki)
            ),
        ),
        &["ping"],
    );
    assert!(!r.ok, "{}", r.out);
    // The inspector read the PLAIN payload: the user name comes from nowhere else.
    let failed = moat
        .lines()
        .wait_for("SASL PLAIN authentication failed for carol", DEADLINE);
    moat.lines().wait_for("end connection", DEADLINE);
    assert!(moat.lines().count(" D1 ") > 0, "debug lines are written");
    for l in moat.lines().all() {
        assert!(!l.contains(PASSWORD), "the password leaked: {l}");
    }
    assert!(
        failed.contains(" I ACCESS   [conn")
            && failed.contains(" for carol on $external from client 127.0.0.1:"),
        "{failed}"
    );
}

/// moat with its stdout going to a pipe the test reads only when it chooses.
struct Unread {
    child: Child,
    /// Unread until the test takes it.
    stdout: Option<BufReader<ChildStdout>>,
    addr: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Unread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Unread {
    /// Reads stdout up to the metrics line (both addresses are known then), then stops.
    fn start(config: &str) -> Unread {
        let dir = tempdir();
        let path = dir.path().join("moat.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(moat_bin())
            .args(["run", "--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let after = |l: &str, p: &str| -> Option<SocketAddr> {
            l.split(p).nth(1)?.split([' ', '/']).next()?.parse().ok()
        };
        let (mut addr, mut metrics) = (None, None);
        let mut line = String::new();
        while metrics.is_none() {
            line.clear();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "moat exited");
            addr = addr.or_else(|| after(&line, "waiting for connections on "));
            metrics = after(&line, "metrics and health on http://");
        }
        Unread {
            child,
            stdout: Some(stdout),
            addr: addr.expect("the listening line comes first"),
            metrics: metrics.unwrap(),
            _dir: dir,
        }
    }
}

/// `GET /metrics`: the value of `name`, if exported.
fn metric(addr: SocketAddr, name: &str) -> std::io::Result<Option<f64>> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()))
}

/// A connection that is reset as soon as it is made: moat logs it accepted, reset and
/// ended, and nothing reaches the upstream.
fn connect_and_reset(addr: SocketAddr) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    // RST instead of FIN: no TIME_WAIT, so tens of thousands fit in the port range.
    s.set_linger(Some(Duration::ZERO))?;
    Ok(())
}

#[test]
fn a_stdout_nobody_reads_never_stalls_connections() {
    // The old writer queued 65,536 lines before it blocked every logging task, the new one
    // 4 MiB: this many connections (about 3 lines each) fill either one several times.
    const MAX_CONNECTIONS: usize = 40_000;
    let mongo = Mongo::start();
    let pki = Pki::new();
    let mut moat = Unread::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    ));
    const DROPPED: &str = "moat_log_lines_dropped_total";
    let stalled = |made: usize, e: std::io::Error| -> ! {
        panic!("moat stopped answering after {made} connections ({e}): logging stalled it")
    };
    let mut made = 0;
    while made < MAX_CONNECTIONS {
        connect_and_reset(moat.addr).unwrap_or_else(|e| stalled(made, e));
        made += 1;
        if made % 1000 == 0
            && metric(moat.metrics, DROPPED).unwrap_or_else(|e| stalled(made, e)) > Some(0.0)
        {
            break;
        }
    }

    // Connections are served promptly while stdout is still stuck.
    let mut s = tcp(moat.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(hello_over(&mut s, 1).get_f64("ok").unwrap(), 1.0);
    let started = Instant::now();
    let r = pymongo(&uri("localhost", moat.addr.port(), ""), &["ping"]);
    assert!(r.ok, "{}", r.out);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let dropped = metric(moat.metrics, DROPPED).unwrap().unwrap();
    assert!(dropped > 0.0, "{made} connections and no line dropped");

    // Once stdout is read again, one line says how many were dropped.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut stdout = moat.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
            if line.contains("log lines dropped") {
                let _ = tx.send(line.clone());
            }
            line.clear();
        }
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .expect("a line about the dropped lines");
    let n: u64 = line
        .split(" W CONTROL  [log] ")
        .nth(1)
        .and_then(|l| l.strip_suffix(" log lines dropped (stdout was not keeping up)\n"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line:?}"));
    // The writer was stuck since the pipe filled, so this first report holds every drop so far.
    let total = metric(moat.metrics, DROPPED).unwrap().unwrap();
    assert!(
        dropped <= n as f64 && n as f64 <= total,
        "{dropped} <= {n} <= {total}"
    );
}
