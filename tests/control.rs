//! The control plane: live SSL-mode changes through `moat ctl`, persistence into the config
//! file, reload (SIGHUP and ctl), egress listeners following the mode, and the admin
//! socket's own safety. Real secantusdb upstreams and pymongo clients.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;

use moat_test_support::*;

fn moat_with_admin(mongo: &Mongo, mode: &str, pki: &Pki) -> Moat {
    Moat::start(&config_with(&mongo.addr(), mode, pki, "", ADMIN))
}

/// Which transports a mode admits, as pymongo sees them: (plaintext ok, TLS ok).
fn admitted(moat: &Moat, pki: &Pki) -> (bool, bool) {
    let plain = pymongo(&uri("localhost", moat.port(), ""), &["ping"]);
    let tls = pymongo(&uri("localhost", moat.port(), &tls_opts(pki)), &["ping"]);
    (plain.ok, tls.ok)
}

#[test]
fn full_tls_rollout_cycle_without_restart_and_without_errors() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "disabled", &pki);
    // Long-lived clients, one per transport, doing ops across every change.
    let plain = Steady::start(&uri("localhost", moat.port(), ""));
    let cycle = [
        ("allowSSL", (true, true)),
        ("preferSSL", (true, true)),
        ("requireSSL", (false, true)),
        ("preferSSL", (true, true)),
        ("disabled", (true, false)),
    ];
    assert_eq!(admitted(&moat, &pki), (true, false), "disabled");
    let mut tls = None;
    for (mode, expect) in cycle {
        // requireSSL with the steady plaintext client connected needs --force.
        let (code, out, err) = moat.ctl(&["mode", "set", mode, "--force"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(&format!("→ {mode}")), "{out}");
        assert_eq!(admitted(&moat, &pki), expect, "{mode}");
        if mode == "allowSSL" {
            tls = Some(Steady::start(&uri(
                "localhost",
                moat.port(),
                &tls_opts(&pki),
            )));
        }
    }
    let (ops, errors, out) = plain.finish();
    assert!(ops > 0 && errors == 0, "plaintext client: {out}");
    let (ops, errors, out) = tls.unwrap().finish();
    assert!(ops > 0 && errors == 0, "TLS client: {out}");
    // Log lines are written asynchronously: wait for the fifth, then check there is no sixth.
    moat.lines().wait_for_nth("SSL mode changed", 5, DEADLINE);
    assert_eq!(moat.lines().count("SSL mode changed"), 5);
}

#[test]
fn require_ssl_is_refused_while_plaintext_clients_are_open_unless_forced() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    let mut open = tcp(moat.addr);
    hello_over(&mut open, 1);
    let local = open.local_addr().unwrap().to_string();

    let (code, out, err) = moat.ctl(&["mode", "set", "requireSSL"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("1 plaintext connection is open"), "{err}");
    assert!(
        err.contains(&local),
        "the refusal lists the connection: {err}"
    );
    let reply = moat.ctl_json(&["mode", "set", "requireSSL"]);
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["plaintext_connections"][0]["remote"], local.as_str());
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "preferSSL", "unchanged");

    let (code, out, err) = moat.ctl(&["mode", "set", "requireSSL", "--force"]);
    assert_eq!(code, 0, "{out}{err}");
    // The open plaintext connection keeps working; new plaintext ones are refused.
    hello_over(&mut open, 2);
    let r = pymongo(&uri("localhost", moat.port(), ""), &["ping"]);
    assert!(!r.ok && r.out.contains("requires TLS"), "{}", r.out);
}

#[test]
fn mode_set_persists_across_restart_and_keeps_comments() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let cfg = config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN)
        .replace("[tls]\n", "# TLS roll-out: step 3 of 4\n[tls]\n");
    let moat = Moat::start(&cfg);
    let (code, out, err) = moat.ctl(&["mode", "set", "requireSSL"]);
    assert_eq!(code, 0, "{out}{err}");
    let saved = std::fs::read_to_string(moat.config_path()).unwrap();
    assert!(saved.contains("mode = \"requireSSL\""), "{saved}");
    assert!(
        saved.contains("# TLS roll-out: step 3 of 4"),
        "comment kept: {saved}"
    );
    assert_eq!(
        saved,
        cfg.replace("mode = \"preferSSL\"", "mode = \"requireSSL\""),
        "only tls.mode changed"
    );

    // Restart on the same file: the mode survives.
    let Moat { mut proc, dir, .. } = moat;
    proc.signal("TERM");
    assert!(proc.wait_exit(DEADLINE).success());
    let moat = Moat::start_in(dir);
    assert_eq!(moat.ctl(&["mode", "get"]).1.trim(), "requireSSL");
}

#[test]
fn no_persist_changes_memory_only() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    let before = std::fs::read_to_string(moat.config_path()).unwrap();
    let (code, out, _) = moat.ctl(&["mode", "set", "allowSSL", "--no-persist"]);
    assert_eq!(code, 0);
    assert!(out.contains("not saved"), "{out}");
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "allowSSL");
    assert_eq!(std::fs::read_to_string(moat.config_path()).unwrap(), before);
}

#[test]
fn tls_modes_need_a_certificate() {
    let mongo = Mongo::start();
    let moat = Moat::start(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"{}\"\n{ADMIN}{ALLOW_LOOPBACK}",
        mongo.addr()
    ));
    let (code, _, err) = moat.ctl(&["mode", "set", "allowSSL"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no [[tls.domains]] certificate is loaded"),
        "{err}"
    );
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "disabled");
}

#[test]
fn reload_applies_the_file_and_keeps_the_old_state_when_the_file_is_bad() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    let path = moat.config_path();
    let good = std::fs::read_to_string(&path).unwrap();

    // SIGHUP applies a new mode from the file.
    std::fs::write(&path, good.replace("preferSSL", "requireSSL")).unwrap();
    moat.proc.signal("HUP");
    moat.lines().wait_for(
        "SSL mode changed from preferSSL to requireSSL (reload)",
        DEADLINE,
    );
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "requireSSL");

    // A broken file is reported with its position; nothing changes.
    std::fs::write(
        &path,
        good.replace("mode = \"preferSSL\"", "mode = \"sometimes\""),
    )
    .unwrap();
    let (code, _, err) = moat.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reload failed, running configuration kept"),
        "{err}"
    );
    assert!(
        err.contains("tls.mode: unknown variant `sometimes`"),
        "{err}"
    );
    assert!(err.contains(&format!("{}:", path.display())), "{err}");
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "requireSSL");
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(r.ok, "still serving: {}", r.out);

    // Keys read only at start are named, not silently ignored.
    std::fs::write(&path, good.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap();
    let reply = moat.ctl_json(&["reload"]);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["needs_restart"][0], "listen.address", "{reply}");
    let (_, out, _) = moat.ctl(&["reload"]);
    assert!(
        out.contains("changed but only applied at restart: listen.address"),
        "{out}"
    );
}

#[test]
fn reload_keeps_the_old_certificate_when_the_new_one_is_broken() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "requireSSL", &pki);
    std::fs::write(&pki.cert, "not a certificate\n").unwrap();
    let (code, _, err) = moat.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("tls.domains[0].cert"), "{err}");
    assert!(err.contains("holds no `BEGIN CERTIFICATE` block"), "{err}");
    let r = pymongo(&uri("localhost", moat.port(), &tls_opts(&pki)), &["ping"]);
    assert!(r.ok, "old certificate still served: {}", r.out);
}

#[test]
fn connections_lists_transport_sni_and_bytes_and_filters_plaintext() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    let mut plain = tcp(moat.addr);
    hello_over(&mut plain, 1);
    let mut tls = tls_connect(moat.addr, &pki.ca, "localhost").unwrap();
    hello_over(&mut tls, 2);

    let all = moat.ctl_json(&["connections"]);
    let list = all["connections"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{all}");
    let t = list.iter().find(|c| c["transport"] == "tls").unwrap();
    assert_eq!(t["sni"], "localhost");
    assert_eq!(t["domain"], "default");
    assert!(t["bytes_in"].as_u64().unwrap() > 0 && t["bytes_out"].as_u64().unwrap() > 0);
    let p = list.iter().find(|c| c["transport"] == "plaintext").unwrap();
    assert_eq!(
        p["remote"],
        plain.local_addr().unwrap().to_string().as_str()
    );

    let only = moat.ctl_json(&["connections", "--plaintext"]);
    assert_eq!(only["connections"].as_array().unwrap().len(), 1);
    let (_, table, _) = moat.ctl(&["connections"]);
    assert!(table.starts_with("ID  REMOTE"), "{table}");
    assert!(table.contains("localhost/default"), "{table}");
    assert!(table.contains("2 connection(s)"), "{table}");
    let (_, status, _) = moat.ctl(&["status"]);
    assert!(status.contains("2 open (tls 1, plaintext 1)"), "{status}");
    assert!(
        status.contains("default") && status.contains("days)"),
        "{status}"
    );
}

/// The port of the first egress listener, from its log line.
fn egress_port(node: &Moat) -> u16 {
    let line = node
        .lines()
        .wait_for("egress listening on 127.0.0.1:", DEADLINE);
    line.split("egress listening on 127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// A node (its own secantusdb + moat in preferSSL) whose mongod reaches `peer` through an
/// egress listener that trusts `ca`.
fn egress_node(peer: &Moat, ca: &std::path::Path, pki: &Pki) -> (Mongo, Moat) {
    let local = Mongo::start();
    let egress = format!(
        "{ADMIN}\n[[egress]]\nlisten = \"127.0.0.1:0\"\npeer = \"localhost:{}\"\nca = \"{}\"\n",
        peer.port(),
        ca.display()
    );
    let node = Moat::start(&config_with(&local.addr(), "preferSSL", pki, "", &egress));
    (local, node)
}

#[test]
fn egress_speaks_tls_in_prefer_ssl_and_plaintext_in_allow_ssl() {
    // Peer: a moat in requireSSL in front of its own secantusdb. Plaintext egress is
    // refused there with "requires TLS"; TLS egress gets through.
    let mongo = Mongo::start();
    let pki = Pki::new();
    let peer = Moat::start(&config(&mongo.addr(), "requireSSL", &pki, ""));
    let (_local, node) = egress_node(&peer, &pki.ca, &pki);
    let egress_port = egress_port(&node);
    // mongod dials the egress listener in plaintext, as it would a peer.
    let through = || pymongo(&uri("127.0.0.1", egress_port, ""), &["insert_find"]);

    let r = through();
    assert!(r.ok, "preferSSL egress uses TLS: {}", r.out);
    node.lines().wait_for("over TLS (mode preferSSL)", DEADLINE);

    assert_eq!(node.ctl(&["mode", "set", "allowSSL"]).0, 0);
    let r = through();
    assert!(
        !r.ok && r.out.contains("requires TLS"),
        "allowSSL egress is plaintext: {}",
        r.out
    );
    node.lines()
        .wait_for("over plaintext (mode allowSSL)", DEADLINE);

    assert_eq!(node.ctl(&["mode", "set", "requireSSL"]).0, 0);
    let r = through();
    assert!(r.ok, "requireSSL egress uses TLS: {}", r.out);
}

#[test]
fn egress_verifies_the_peer_certificate() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let other = Pki::new();
    let peer = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let (_local, node) = egress_node(&peer, &other.ca, &pki);
    let r = pymongo(&uri("127.0.0.1", egress_port(&node), ""), &["ping"]);
    assert!(!r.ok, "{}", r.out);
    node.lines()
        .wait_for("TLS handshake with localhost:", DEADLINE);
}

#[test]
fn admin_socket_is_owner_only_and_answers_bad_input_with_an_error() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    let meta = std::fs::metadata(moat.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut s = UnixStream::connect(moat.socket()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ask = |req: &[u8]| {
        s.write_all(req).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let v = ask(b"{not json\n");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().starts_with("bad request"),
        "{v}"
    );
    let v = ask(b"{\"cmd\":\"mode.explode\"}\n");
    assert!(
        v["error"].as_str().unwrap().contains("unknown variant"),
        "{v}"
    );
    let v = ask(b"{\"cmd\":\"mode.set\",\"mode\":\"maybeSSL\"}\n");
    assert!(v["error"].as_str().unwrap().contains("unknown mode"), "{v}");
    // The same connection still serves good requests.
    let v = ask(b"{\"cmd\":\"mode.get\"}\n");
    assert_eq!(v, serde_json::json!({"ok": true, "mode": "preferSSL"}));
    // An oversized request is refused and the connection closed.
    let mut big = vec![b'x'; 70 * 1024];
    big.push(b'\n');
    let v = ask(&big);
    assert!(
        v["error"].as_str().unwrap().contains("longer than 64 KiB"),
        "{v}"
    );
    // moat keeps serving.
    assert_eq!(moat.ctl(&["mode"]).1.trim(), "preferSSL");
}

#[test]
fn a_live_admin_socket_is_not_taken_over_but_a_stale_one_is_replaced() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let first = moat_with_admin(&mongo, "preferSSL", &pki);
    // A second moat configured with the same socket refuses to start.
    let cfg = std::fs::read_to_string(first.config_path())
        .unwrap()
        .replace(
            "socket = \"admin.sock\"",
            &format!("socket = \"{}\"", first.socket().display()),
        );
    let dir = tempdir();
    std::fs::write(dir.path().join("moat.toml"), &cfg).unwrap();
    let out = Command::new(moat_bin())
        .args(["run", "--config"])
        .arg(dir.path().join("moat.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.socket") && err.contains("in use by a running process"),
        "{err}"
    );
    assert_eq!(first.ctl(&["mode"]).0, 0, "the first one keeps its socket");

    // A socket file left by a crash (nobody listening) is replaced.
    let dir = tempdir();
    let stale = dir.path().join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    std::fs::write(
        dir.path().join("moat.toml"),
        config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN),
    )
    .unwrap();
    let second = Moat::start_in(dir);
    assert_eq!(second.ctl(&["mode"]).1.trim(), "preferSSL");
}

#[test]
fn egress_admits_only_its_allow_list_and_caps_its_connections() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let peer = Recorder::start();
    // allowSSL: plaintext egress, to an echoing peer.
    let egress = format!(
        "[[egress]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\nca = \"{}\"\n\
         allow = [\"127.0.0.2/32\"]\nmax_connections = 1\n",
        peer.addr,
        pki.ca.display()
    );
    let node = Moat::start(&config_with(&mongo.addr(), "allowSSL", &pki, "", &egress));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], egress_port(&node)));

    // Refused at accept, before a byte is read: nothing reaches the peer.
    let mut outsider = tcp_from("127.0.0.3", addr).unwrap();
    let _ = outsider.write_all(b"ping");
    assert!(closed_without_reply(&mut outsider));
    let line = node
        .lines()
        .wait_for("egress connection refused from 127.0.0.3:", DEADLINE);
    assert!(line.contains("not in this listener's allow list"), "{line}");
    assert_eq!(peer.seen(), 0);

    let mut allowed = tcp_from("127.0.0.2", addr).unwrap();
    assert!(echo_ok(&mut allowed), "an allowed source is relayed");
    let mut over = tcp_from("127.0.0.2", addr).unwrap();
    let _ = over.write_all(b"ping");
    assert!(closed_without_reply(&mut over), "one over the cap");
    node.lines()
        .wait_for("egress connection refused from 127.0.0.2:", DEADLINE);
    node.lines()
        .wait_for("max_connections (1) reached", DEADLINE);
    assert!(echo_ok(&mut allowed));
    assert_eq!(peer.seen(), 1);
    // Once it ends, its slot is free again.
    drop(allowed);
    node.lines()
        .wait_for("end egress connection 127.0.0.2:", DEADLINE);
    let mut next = tcp_from("127.0.0.2", addr).unwrap();
    assert!(echo_ok(&mut next));
}

#[test]
fn another_user_is_refused_by_its_peer_credentials_even_through_an_open_file_mode() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running a client as another user (nobody) needs root");
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: setpriv (util-linux) is not installed");
        return;
    }
    let mongo = Mongo::start();
    let pki = Pki::new();
    let moat = moat_with_admin(&mongo, "preferSSL", &pki);
    // Open the file mode on purpose: only the SO_PEERCRED check stands in the way now.
    std::fs::set_permissions(moat.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(moat.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(moat_bin())
            .arg("ctl")
            .arg("--socket")
            .arg(moat.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let reachable = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(moat_bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !reachable {
        eprintln!("skipped: user nobody cannot execute the moat binary under this checkout's path");
        return;
    }
    let (code, err) = as_nobody(&["mode", "set", "disabled"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("permission denied: only moat's own user or root"),
        "{err}"
    );
    assert_eq!(
        moat.ctl_json(&["mode"])["mode"],
        "preferSSL",
        "nothing changed"
    );
    // The owner (root here) is still served.
    assert_eq!(moat.ctl(&["mode", "set", "allowSSL"]).0, 0);
}
