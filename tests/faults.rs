//! Faults: the upstream stops, restarts, stops accepting or resets mid-stream; reloads that
//! cannot apply; SIGTERM while clients are mid-operation. moat stays up, tells clients
//! promptly, follows it in /readyz, and leaks neither connections nor descriptors.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use moat_test_support::*;

/// What "a prompt error" means here: well under any driver timeout (pymongo's connect
/// timeout is 20 s, server selection 30 s), with room for a loaded CI machine.
const PROMPT: Duration = Duration::from_secs(3);

fn moat_config(upstream: &str, pki: &Pki, listen_extra: &str, sections: &str) -> String {
    config_with(
        upstream,
        "preferSSL",
        pki,
        listen_extra,
        &format!("{ADMIN}{METRICS_FAST}{sections}"),
    )
}

/// Client connections moat has open: the registry (`ctl status`) and the gauge.
fn open_connections(m: &Moat, metrics: SocketAddr) -> (u64, f64) {
    let status = m.ctl_json(&["status"]);
    let listed = status["connections"]["open"].as_u64().unwrap();
    let gauge = metric(metrics, "moat_connections_open{transport=\"tls\"}")
        + metric(metrics, "moat_connections_open{transport=\"plaintext\"}");
    (listed, gauge)
}

/// moat's descriptors with no client connection open and no upstream probe in flight:
/// the fewest seen over a short while (a readiness probe holds one for a moment).
fn quiet_fd_count(m: &Moat, metrics: SocketAddr) -> usize {
    wait_until("no client connection open", DEADLINE, || {
        open_connections(m, metrics) == (0, 0.0)
    });
    let pid = m.proc.child.id();
    (0..15)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            fd_count(pid)
        })
        .min()
        .unwrap()
}

/// No connection is left open, and the descriptors are back to `baseline` (or fewer).
fn assert_no_leak(m: &Moat, metrics: SocketAddr, baseline: usize) {
    let deadline = Instant::now() + DEADLINE;
    while open_connections(m, metrics) != (0, 0.0) {
        assert!(
            Instant::now() < deadline,
            "connections left open: {}",
            m.ctl_json(&["connections"])
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = m.proc.child.id();
    let mut now = 0;
    let settled = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settled {
        now = fd_count(pid);
        if now <= baseline {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "moat holds {now} descriptors, {baseline} before: {:?}",
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .map(|e| std::fs::read_link(e.unwrap().path()))
            .collect::<Vec<_>>()
    );
}

/// Still the same process, still running.
fn assert_alive(m: &mut Moat) {
    assert!(
        m.proc.child.try_wait().unwrap().is_none(),
        "moat exited:\n{}",
        m.lines().all().join("\n")
    );
}

/// Sends a hello on a fresh connection and expects mongod's HostUnreachable reply, then a
/// clean close (FIN), within `within`.
fn expect_host_unreachable(addr: SocketAddr, within: Duration) {
    let mut s = tcp(addr);
    let t0 = Instant::now();
    s.write_all(&op_msg_hello(77)).unwrap();
    let doc = read_op_msg(&mut s);
    assert_eq!(doc.get_f64("ok").unwrap(), 0.0, "{doc}");
    assert_eq!(doc.get_i32("code").unwrap(), 6, "{doc}");
    assert_eq!(doc.get_str("codeName").unwrap(), "HostUnreachable");
    assert!(
        doc.get_str("errmsg")
            .unwrap()
            .starts_with("moat cannot reach the mongod behind it"),
        "{doc}"
    );
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("a FIN, not a reset");
    assert!(rest.is_empty(), "nothing after the reply");
    assert!(t0.elapsed() < within, "{:?}", t0.elapsed());
}

/// Waits for the connection to be closed by moat (EOF or reset); returns how long it took.
fn closed_within(s: &mut impl Read, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after {timeout:?}")
            }
            Err(_) => return t0.elapsed(),
        }
        assert!(t0.elapsed() < timeout, "still open after {timeout:?}");
    }
}

/// Runs pymongo's `ping` against `uri` (4.x from the venv, or Debian's 3.11 with
/// `legacy`) and returns what it printed; it must fail.
fn failing_ping(uri: &str, legacy: bool) -> String {
    let python = if legacy {
        Path::new("/usr/bin/python3").to_path_buf()
    } else {
        python()
    };
    let r = pymongo_with(&python, uri, &["ping"]);
    assert!(!r.ok, "ping went through: {}", r.out);
    r.out
}

#[test]
fn mongod_stopping_and_restarting_on_its_port_gives_prompt_errors_and_readyz_follows() {
    let mut mongo = StoppableMongo::start();
    let pki = Pki::new();
    let mut m = Moat::start(&moat_config(&mongo.addr(), &pki, "", ""));
    let metrics = moat_metrics_addr(&m);
    let pid = m.proc.child.id();
    let plain = uri("localhost", m.port(), "&serverSelectionTimeoutMS=2000");
    let tls = uri(
        "localhost",
        m.port(),
        &format!("{}&serverSelectionTimeoutMS=2000", tls_opts(&pki)),
    );
    assert_eq!(wait_readyz(metrics, 200), "ready\n");
    for u in [&plain, &tls] {
        let r = pymongo(u, &["insert_find"]);
        assert!(r.ok, "{}", r.out);
    }
    let baseline = quiet_fd_count(&m, metrics);

    for sig in ["TERM", "KILL"] {
        // Connections open through moat when mongod goes: closed promptly, not left hanging.
        let mut open_plain = tcp(m.addr);
        hello_over(&mut open_plain, 1);
        let mut open_tls = tls_connect(m.addr, &pki.ca, "localhost").unwrap();
        hello_over(&mut open_tls, 2);
        mongo.stop(sig);
        let took = closed_within(&mut open_plain, PROMPT);
        closed_within(&mut open_tls, PROMPT);
        eprintln!("SIG{sig}: open connection closed {took:?} after mongod exited");
        // As a driver does on EOF: moat passes the half-close on and waits for the client's.
        drop((open_plain, open_tls));

        let why = wait_readyz(metrics, 503);
        assert!(
            why.starts_with("not ready: upstream") && why.contains("refused"),
            "{why}"
        );
        assert_eq!(
            http_get(metrics, "/healthz").0,
            200,
            "alive while not ready"
        );

        // A client waiting for its first reply gets mongod's HostUnreachable, at once.
        expect_host_unreachable(m.addr, PROMPT);
        m.lines().wait_for(
            "answered the client's first message with HostUnreachable",
            DEADLINE,
        );
        // Drivers show the reason, whichever transport and protocol they speak.
        let (out_plain, out_tls, out_legacy) = std::thread::scope(|s| {
            let a = s.spawn(|| failing_ping(&plain, false));
            let b = s.spawn(|| failing_ping(&tls, false));
            let c = s.spawn(|| failing_ping(&plain, true));
            (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
        });
        for out in [&out_plain, &out_tls, &out_legacy] {
            assert!(
                out.contains("moat cannot reach the mongod behind it"),
                "{out}"
            );
            assert!(out.contains("HostUnreachable"), "{out}");
        }
        assert_alive(&mut m);

        mongo.restart();
        assert_eq!(wait_readyz(metrics, 200), "ready\n");
        for u in [&plain, &tls] {
            let r = pymongo(u, &["insert_find"]);
            assert!(r.ok, "after restart: {}", r.out);
        }
        assert_alive(&mut m);
        assert_eq!(m.proc.child.id(), pid, "the same process");
        assert_no_leak(&m, metrics, baseline);
    }
}

/// A listener with a backlog of one that never accepts, its queue filled: further
/// connects get no answer at all, as from a mongod too busy to accept.
struct Stalled {
    _listener: socket2::Socket,
    _queued: Vec<socket2::Socket>,
    addr: SocketAddr,
}

impl Stalled {
    fn start() -> Stalled {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        listener.listen(1).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        loop {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            match s.connect_timeout(&addr.into(), Duration::from_millis(300)) {
                Ok(()) => queued.push(s),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    break
                }
                Err(e) => panic!("filling the backlog: {e}"),
            }
            assert!(queued.len() < 64, "the backlog never filled");
        }
        Stalled {
            _listener: listener,
            _queued: queued,
            addr,
        }
    }
}

#[test]
fn an_upstream_that_stops_accepting_is_an_error_reply_at_connect_timeout() {
    let stalled = Stalled::start();
    let pki = Pki::new();
    let cfg = moat_config(&stalled.addr.to_string(), &pki, "", "")
        .replace("connect_timeout = \"2s\"", "connect_timeout = \"500ms\"");
    let mut m = Moat::start(&cfg);
    let metrics = moat_metrics_addr(&m);
    wait_until("/readyz to report the timeout", DEADLINE, || {
        let (status, why) = http_get(metrics, "/readyz");
        status == 503 && why.contains("connect timed out after 500ms")
    });
    let baseline = quiet_fd_count(&m, metrics);

    // Twenty clients at once: each answered after the connect timeout, none before it.
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| expect_host_unreachable(m.addr, Duration::from_millis(500) + PROMPT));
        }
    });
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let line = m
        .lines()
        .wait_for("connect timed out after 500ms", DEADLINE);
    assert!(line.contains(&stalled.addr.to_string()), "{line}");
    // pymongo over TLS shows the reason too.
    let out = failing_ping(
        &uri(
            "localhost",
            m.port(),
            &format!("{}&serverSelectionTimeoutMS=2000", tls_opts(&pki)),
        ),
        false,
    );
    assert!(
        out.contains("moat cannot reach the mongod behind it"),
        "{out}"
    );
    let rejected = metric(
        metrics,
        "moat_connections_rejected_total{reason=\"upstream_unavailable\"}",
    );
    assert!(rejected >= 21.0, "{rejected}");
    assert_alive(&mut m);
    assert_no_leak(&m, metrics, baseline);
}

/// A stand-in mongod that answers each connection's first message with `{ok: 1}` and then
/// resets the connection (SO_LINGER 0).
fn resetting_upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut h = [0u8; 16];
                if s.read_exact(&mut h).is_err() {
                    return;
                }
                let len = i32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
                let mut body = vec![0u8; len.saturating_sub(16)];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let request_id = i32::from_le_bytes(h[4..8].try_into().unwrap());
                let mut doc = Vec::new();
                bson::doc! {"ok": 1.0}.to_writer(&mut doc).unwrap();
                let total = 16 + 5 + doc.len();
                let mut reply = Vec::new();
                for v in [total as i32, 1, request_id, 2013] {
                    reply.extend_from_slice(&v.to_le_bytes());
                }
                reply.extend_from_slice(&[0; 5]);
                reply.extend(doc);
                let _ = s.write_all(&reply);
                // Wait for the client's next message, then reset instead of answering.
                let _ = s.read(&mut h);
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
            });
        }
    });
    addr
}

#[test]
fn an_upstream_reset_mid_stream_closes_the_client_promptly() {
    let up = resetting_upstream();
    let pki = Pki::new();
    let mut m = Moat::start(&moat_config(&up.to_string(), &pki, "", ""));
    let metrics = moat_metrics_addr(&m);
    wait_readyz(metrics, 200);
    let baseline = quiet_fd_count(&m, metrics);

    let mut plain = tcp(m.addr);
    assert_eq!(hello_over(&mut plain, 1).get_f64("ok").unwrap(), 1.0);
    plain.write_all(&op_msg_hello(2)).unwrap();
    let took = closed_within(&mut plain, PROMPT);
    eprintln!("plaintext client closed {took:?} after the upstream's reset");

    let mut tls = tls_connect(m.addr, &pki.ca, "localhost").unwrap();
    assert_eq!(hello_over(&mut tls, 1).get_f64("ok").unwrap(), 1.0);
    tls.write_all(&op_msg_hello(2)).unwrap();
    tls.flush().unwrap();
    closed_within(&mut tls, PROMPT);

    let line = m.lines().wait_for("closed with error", DEADLINE);
    assert!(line.to_lowercase().contains("reset"), "{line}");
    assert_alive(&mut m);
    assert_no_leak(&m, metrics, baseline);
}

/// Stops a pymongo loop and asserts it saw no error.
fn assert_steady(s: Steady, what: &str) {
    let (ops, errors, out) = s.finish();
    assert!(ops > 0, "{what}: no operations:\n{out}");
    assert_eq!(errors, 0, "{what}: {errors} failed operations:\n{out}");
}

/// Moves `path` aside with its content replaced, runs `moat ctl reload`, puts it back.
/// Returns the failed reload's message.
fn reload_with(m: &Moat, path: &Path, bad: &[u8]) -> String {
    let good = std::fs::read(path).unwrap();
    std::fs::write(path, bad).unwrap();
    let (code, out, err) = m.ctl(&["reload"]);
    std::fs::write(path, good).unwrap();
    assert_eq!(code, 1, "a bad {} reloaded: {out}", path.display());
    eprintln!("bad {}: {err}", path.display());
    err
}

#[test]
fn each_bad_reload_keeps_the_old_state_names_the_file_and_drops_no_connection() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let dir = tempdir();
    // An encrypted key, so that a wrong password can be tried.
    let password = dir.path().join("deployment.pass");
    std::fs::copy(&pki.ca, dir.path().join("ca.pem")).unwrap();
    std::fs::copy(
        pki.dir.path().join("ca-key.pem"),
        dir.path().join("ca-key.pem"),
    )
    .unwrap();
    let issue = |domain: &str| {
        moat::certgen::issue(&moat::certgen::IssueOptions {
            dir: dir.path().to_path_buf(),
            domain: domain.into(),
            hostnames: vec!["localhost".into()],
            ips: vec![],
            encrypt_key: Some(password.clone()),
            force: true,
        })
        .unwrap()
    };
    let files = issue("deployment");
    let other = issue("other");
    let inventory = dir.path().join("interfaces.json");
    let good_inventory = r#"{"NetworkInterfaces": [{"OwnerId": "123456789012",
        "Groups": [{"GroupId": "sg-0a1b2c3d"}], "PrivateIpAddress": "10.9.9.9"}]}"#;
    std::fs::write(&inventory, good_inventory).unwrap();
    let cfg = format!(
        r#"[listen]
address = "127.0.0.1:0"

[upstream]
address = "{up}"

[tls]
mode = "preferSSL"

[[tls.domains]]
name = "deployment"
hostnames = ["localhost"]
cert = "{cert}"
key = "{key}"
key_password_file = "{password}"

[firewall]
[[firewall.rules]]
cidr = "127.0.0.0/8"
description = "clients on loopback"
[[firewall.rules]]
security_group = "sg-0a1b2c3d"
account = "123456789012"
description = "app servers"
[firewall.security_groups]
inventory = "{inventory}"
refresh = "1h"

# Each bad file is put back right after `ctl reload`: the watcher would then reload too.
[watch]
enabled = false

{ADMIN}{METRICS_FAST}"#,
        up = mongo.addr(),
        cert = files.cert.display(),
        key = files.key.display(),
        password = password.display(),
        inventory = inventory.display(),
    );
    let mut m = Moat::start(&cfg);
    let metrics = moat_metrics_addr(&m);
    let no_retry = "&retryWrites=false&retryReads=false";
    let steady_plain = Steady::start(&uri("localhost", m.port(), no_retry));
    let steady_tls = Steady::start(&uri(
        "localhost",
        m.port(),
        &format!("{}{no_retry}", tls_opts(&pki)),
    ));
    let ids = |m: &Moat| -> Vec<u64> {
        let v = m.ctl_json(&["connections"]);
        let mut ids: Vec<u64> = v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let before = ids(&m);
    assert!(before.len() >= 6, "two clients' pools: {before:?}");
    let serial = file_serial(&files.cert);
    let served = || served_serial(&tls_connect(m.addr, &pki.ca, "localhost").unwrap());
    assert_eq!(served(), serial);
    let rules = m.ctl_json(&["rules", "list"]);
    let sg_addresses = || m.ctl_json(&["status"])["firewall"].clone();
    let firewall = sg_addresses();
    let config = m.config_path();

    // Each bad file: the reload fails naming it, and nothing running changes.
    let text = std::fs::read_to_string(&config).unwrap();
    let err = reload_with(
        &m,
        &config,
        text.replace("mode = \"preferSSL\"", "mode = \"sometimes\"")
            .as_bytes(),
    );
    assert!(err.contains(&config.display().to_string()), "{err}");
    assert!(err.contains("tls.mode"), "{err}");

    let err = reload_with(&m, &files.cert, &std::fs::read(&other.cert).unwrap());
    assert!(err.contains(&files.cert.display().to_string()), "{err}");
    let err = reload_with(&m, &files.cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n");
    assert!(err.contains(&files.cert.display().to_string()), "{err}");

    let err = reload_with(&m, &password, b"not-the-password\n");
    assert!(
        err.contains(&files.key.display().to_string())
            || err.contains(&password.display().to_string()),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password is not shown: {err}"
    );

    assert_eq!(
        metric(metrics, "moat_config_reloads_total{result=\"error\"}"),
        4.0
    );

    // An inventory is refreshed on its own once good again: the reload applies the rest,
    // keeps the last good inventory, and warns naming the file.
    let good = std::fs::read(&inventory).unwrap();
    std::fs::write(&inventory, b"{ corrupt").unwrap();
    let (code, out, err) = m.ctl(&["reload"]);
    std::fs::write(&inventory, good).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "warning: firewall.security_groups.inventory: {}",
            inventory.display()
        )) && out.contains("the last good inventory (1 interfaces) stays in service"),
        "{out}"
    );
    assert_eq!(m.ctl(&["mode"]).1.trim(), "preferSSL");
    assert_eq!(served(), serial, "the old certificate is still served");
    assert_eq!(m.ctl_json(&["rules", "list"]), rules);
    assert_eq!(sg_addresses(), firewall, "the last good inventory stays");
    assert_eq!(
        m.lines().count("SSL mode changed"),
        0,
        "no mode change was applied"
    );

    // With the files good again, a reload applies.
    let (code, out, err) = m.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = ids(&m);
    assert!(
        before.iter().all(|id| after.contains(id)),
        "connections dropped: before {before:?}, after {after:?}"
    );
    assert_steady(steady_plain, "plaintext client");
    assert_steady(steady_tls, "TLS client");
    assert_alive(&mut m);
}

#[test]
fn sigterm_under_load_finishes_open_operations_and_refuses_new_connections() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let mut m = Moat::start(&moat_config(
        &mongo.addr(),
        &pki,
        "shutdown_timeout = \"20s\"",
        "",
    ));
    let metrics = moat_metrics_addr(&m);
    wait_readyz(metrics, 200);
    // A collection the clients hold cursors on: 300 documents, 10 a batch.
    let seed = Command::new(python())
        .arg("-c")
        .arg(
            "import sys; from pymongo import MongoClient; \
             c = MongoClient(sys.argv[1]); c.moat_it.drain_src.drop(); \
             c.moat_it.drain_src.insert_many([{'i': i} for i in range(300)])",
        )
        .arg(uri("localhost", m.port(), ""))
        .output()
        .unwrap();
    assert!(seed.status.success(), "{seed:?}");

    let dir = tempdir();
    let stop = dir.path().join("stop");
    let no_retry = "&retryWrites=false&retryReads=false";
    let mut clients: Vec<Proc> = (0..4)
        .map(|i| {
            let opts = if i % 2 == 0 {
                format!("{}{no_retry}", tls_opts(&pki))
            } else {
                no_retry.to_string()
            };
            Proc::spawn(
                Command::new(python())
                    .arg(repo().join("tests/py/drain.py"))
                    .arg(uri("localhost", m.port(), &opts))
                    .arg("drain_src")
                    .arg(&stop),
            )
        })
        .collect();
    for c in &clients {
        c.lines.wait_for("ready", DEADLINE);
    }

    let t0 = Instant::now();
    m.proc.signal("TERM");
    m.lines()
        .wait_for("got SIGTERM: no longer accepting", DEADLINE);
    // From the first moment: the port is closed, /readyz says why, /metrics still answers.
    let refused = TcpStream::connect_timeout(&m.addr, Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "a new connection was accepted during the drain"
    );
    assert_eq!(
        http_get(metrics, "/readyz"),
        (503, "not ready: shutting down\n".into())
    );
    assert_eq!(http_get(metrics, "/metrics").0, 200);
    assert!(metric(metrics, "moat_connections_open{transport=\"tls\"}") >= 2.0);
    assert_alive(&mut m);

    // The clients finish their cursors and more operations on their open connections.
    std::fs::write(&stop, "").unwrap();
    for c in &mut clients {
        c.wait_exit(DEADLINE);
        let line = c.lines.wait_for("ops=", DEADLINE);
        assert!(
            line.contains("errors=0 docs=300"),
            "{line}\n{}",
            c.lines.all().join("\n")
        );
    }
    let status = m.proc.wait_exit(DEADLINE);
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    eprintln!("drained and exited {:?} after SIGTERM", t0.elapsed());
    m.lines()
        .wait_for("shutdown complete: all connections ended", DEADLINE);
}
