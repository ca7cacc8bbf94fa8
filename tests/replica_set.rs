//! A three-node replica set on loopback, wired as README's "Replica sets" section says:
//! each node's mongod (played here by a pymongo client) dials its peers by name through
//! its own moat's egress listeners, bound on loopback aliases (what `/etc/hosts` maps the
//! peers' names to; the client resolves them with the same table). Node-to-node traffic
//! is TLS in preferSSL and requireSSL, plaintext in allowSSL, as the peer moat's log shows.
//! And moat warns about an upstream that advertises its own private address.

use std::process::Command;

use moat::certgen::{issue, IssueOptions};
use moat_test_support::*;

const NODES: [&str; 3] = [
    "node1.rs.moat.test",
    "node2.rs.moat.test",
    "node3.rs.moat.test",
];

/// The loopback alias `/etc/hosts` would map node `i`'s name to on every host.
fn alias(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

/// Node `i`'s config: its moat in `mode` in front of `upstream`, serving the nodes' names,
/// and an egress listener per peer on the peer's alias, towards `peer_ports` (the peers'
/// public moat ports; a placeholder before they are known).
fn node_config(i: usize, upstream: &str, pki: &Pki, mode: &str, peer_ports: &[u16; 3]) -> String {
    let mut egress = String::new();
    for (j, name) in NODES.iter().enumerate().filter(|(j, _)| *j != i) {
        egress += &format!(
            "[[egress]]\nlisten = \"{}:0\"\npeer = \"127.0.0.1:{}\"\nserver_name = \"{name}\"\nca = \"{}\"\n",
            alias(j),
            peer_ports[j],
            pki.ca.display()
        );
    }
    let dir = pki.dir.path().display();
    format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nhandshake_timeout = \"5s\"\n\
         [upstream]\naddress = \"{upstream}\"\n[tls]\nmode = \"{mode}\"\n\
         [[tls.domains]]\nname = \"replset\"\nhostnames = {names:?}\n\
         cert = \"{dir}/replset.pem\"\nkey = \"{dir}/replset-key.pem\"\n\
         {ADMIN}\n{egress}{ALLOW_LOOPBACK}",
        names = NODES
    )
}

/// Port of node's egress listener bound on `alias`, from its log line.
fn egress_port(node: &Moat, alias: &str) -> u16 {
    let needle = format!("egress listening on {alias}:");
    let line = node.lines().wait_for(&needle, DEADLINE);
    line.split(&needle)
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

#[test]
fn nodes_reach_each_other_over_tls_in_prefer_and_require_ssl_and_in_plaintext_in_allow_ssl() {
    let pki = Pki::new();
    issue(&IssueOptions {
        dir: pki.dir.path().to_path_buf(),
        domain: "replset".into(),
        hostnames: NODES.iter().map(|s| s.to_string()).collect(),
        ips: vec![],
        encrypt_key: None,
        force: true,
    })
    .unwrap();
    let mongods: Vec<Mongo> = (0..3).map(|_| Mongo::start()).collect();
    // Start each moat, then point its egress at the peers' ports and reload: the ports
    // are only known once every moat listens.
    let placeholder = [1, 1, 1];
    let moats: Vec<Moat> = (0..3)
        .map(|i| {
            Moat::start(&node_config(
                i,
                &mongods[i].addr(),
                &pki,
                "preferSSL",
                &placeholder,
            ))
        })
        .collect();
    let ports = [moats[0].port(), moats[1].port(), moats[2].port()];
    for (i, m) in moats.iter().enumerate() {
        let cfg = node_config(i, &mongods[i].addr(), &pki, "preferSSL", &ports);
        std::fs::write(m.config_path(), cfg).unwrap();
        let (code, out, err) = m.ctl(&["reload"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    // Node 1's mongod dials node 2 and node 3 by name: the names resolve to the aliases
    // its moat's egress listeners are bound on.
    let dial = |from: usize, to: usize| {
        let port = egress_port(&moats[from], &alias(to));
        pymongo(&uri(&alias(to), port, ""), &["insert_find"])
    };
    for (mode, tls) in [
        ("preferSSL", true),
        ("requireSSL", true),
        ("allowSSL", false),
    ] {
        for m in &moats {
            assert_eq!(m.ctl(&["mode", "set", mode, "--force"]).0, 0);
        }
        for (from, to) in [(0, 1), (0, 2), (1, 2), (2, 0)] {
            let sni = format!("sni={}", NODES[to]);
            let tls_lines = moats[to].lines().count(&sni);
            let r = dial(from, to);
            assert!(r.ok, "{mode}: node{} → node{}: {}", from + 1, to + 1, r.out);
            let over = if tls { "TLS" } else { "plaintext" };
            moats[from]
                .lines()
                .wait_for(&format!("over {over} (mode {mode})"), DEADLINE);
            if tls {
                // The peer saw a TLS handshake (its log line may still be on its way).
                moats[to]
                    .lines()
                    .wait_for_nth(&sni, tls_lines + 1, DEADLINE);
            } else {
                let after = moats[to].lines().count(&sni);
                assert_eq!(after, tls_lines, "{mode}: node-to-node must be plaintext");
            }
        }
    }
    // The peer moat logs the TLS version of node-to-node connections.
    moats[1].lines().wait_for("TLS 1.3", DEADLINE);
}

#[test]
fn an_upstream_that_advertises_its_own_private_address_is_warned_about() {
    // secantusdb without --standalone advertises a replica set whose only member is its
    // own address: what a mongod configured with 127.0.0.1:27018 in rs.conf() does.
    let dir = tempdir();
    let mut cmd = Command::new(venv().join("bin/secantusd-py"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--storage-path"])
        .arg(dir.path().join("data"));
    let upstream = Proc::spawn(&mut cmd);
    let line = upstream
        .lines
        .wait_for("secantus listening on 127.0.0.1:", DEADLINE);
    let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    let pki = Pki::new();
    let moat = Moat::start(&config(&format!("127.0.0.1:{port}"), "preferSSL", &pki, ""));
    // moat reads the members from the upstream's hello replies as they pass: a driver's
    // first connection is enough (and costs the upstream no extra connection).
    let r = pymongo(&uri("localhost", moat.port(), ""), &["ping"]);
    assert!(r.ok, "{}", r.out);
    let warning = moat
        .lines()
        .wait_for("among its replica set's members", DEADLINE);
    assert!(
        warning.contains(&format!("lists 127.0.0.1:{port}")) && warning.contains("around moat"),
        "{warning}"
    );
    let r = pymongo(&uri("localhost", moat.port(), ""), &["ping"]);
    assert!(r.ok, "{}", r.out);
    assert_eq!(
        moat.lines().count("among its replica set's members"),
        1,
        "said once"
    );
    let out = Command::new(moat_bin())
        .args(["check", "--config"])
        .arg(moat.config_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("warning: the upstream's hello lists"),
        "{text}"
    );

    // A standalone upstream: no warning.
    let mongo = Mongo::start();
    let quiet = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let r = pymongo(&uri("localhost", quiet.port(), ""), &["ping"]);
    assert!(r.ok, "{}", r.out);
    assert_eq!(quiet.lines().count("among its replica set's members"), 0);
}
