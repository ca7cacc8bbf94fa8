//! Dead and idle peers: TCP keepalive on every socket moat owns, a client that vanishes
//! without FIN or RST (from a network namespace whose link is cut), and `idle_timeout`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use moat_test_support::*;

/// One row of /proc/net/tcp{,6}: a socket in this network namespace.
#[derive(Debug)]
struct TcpRow {
    local_port: u16,
    remote_port: u16,
    established: bool,
    /// 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe.
    timer: u8,
    /// Until the timer fires, in USER_HZ (1/100 s) ticks.
    when: u64,
}

fn tcp_rows() -> Vec<TcpRow> {
    let port = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
            .unwrap()
    };
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (timer, when) = f[5].split_once(':').unwrap();
            rows.push(TcpRow {
                local_port: port(f[1]),
                remote_port: port(f[2]),
                established: f[3] == "01",
                timer: timer.parse().unwrap(),
                when: u64::from_str_radix(when, 16).unwrap(),
            });
        }
    }
    rows
}

/// Polls until `ok` holds for the established sockets `which` selects (at least one);
/// a pending retransmit or delayed ACK can hide the keepalive timer for a moment.
fn wait_sockets(what: &str, which: impl Fn(&TcpRow) -> bool, ok: impl Fn(&TcpRow) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let rows: Vec<TcpRow> = tcp_rows()
            .into_iter()
            .filter(|r| r.established && which(r))
            .collect();
        if !rows.is_empty() && rows.iter().all(&ok) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {rows:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a keepalive timer (not another timer) is armed within (60 s, 120 s]: the
/// default `tcp_keepalive`, counting down from when the socket was set up.
fn default_keepalive(r: &TcpRow) -> bool {
    r.timer == 2 && r.when > 60 * 100 && r.when <= 120 * 100
}

#[test]
fn keepalive_is_on_for_client_upstream_and_egress_sockets() {
    let mongo = Mongo::start();
    let peer = Recorder::start();
    let pki = Pki::new();
    // allowSSL: egress to the (echoing) peer is plaintext.
    let egress = format!(
        "[[egress]]\nlisten = \"127.0.0.1:0\"\npeer = \"{}\"\nca = \"{}\"\n",
        peer.addr,
        pki.ca.display()
    );
    let m = Moat::start(&config_with(&mongo.addr(), "allowSSL", &pki, "", &egress));
    let mut client = tcp(m.addr);
    hello_over(&mut client, 1);
    let line = m
        .lines()
        .wait_for("egress listening on 127.0.0.1:", DEADLINE);
    let egress_port: u16 = line
        .split("egress listening on 127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let mut mongod_side = tcp(SocketAddr::from(([127, 0, 0, 1], egress_port)));
    assert!(echo_ok(&mut mongod_side));

    let moat_port = m.port();
    let mongo_port = mongo.port;
    let peer_port = peer.addr.port();
    wait_sockets(
        "moat's accepted client socket has keepalive (120 s)",
        |r| r.local_port == moat_port,
        default_keepalive,
    );
    wait_sockets(
        "moat's upstream socket has keepalive",
        |r| r.remote_port == mongo_port,
        default_keepalive,
    );
    wait_sockets(
        "moat's accepted egress socket has keepalive",
        |r| r.local_port == egress_port,
        default_keepalive,
    );
    wait_sockets(
        "moat's socket to the egress peer has keepalive",
        |r| r.remote_port == peer_port,
        default_keepalive,
    );
    // The twin: the test's own sockets never asked for it.
    wait_sockets(
        "the test client's socket has no keepalive timer",
        |r| r.remote_port == moat_port,
        |r| r.timer != 2,
    );
}

/// Runs a command; `Err` with what it printed when it fails.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace joined to this one by a veth pair on a private /30: moat's side
/// `10.231.N.1`, the client's `10.231.N.2`. Removed on drop.
struct Netns {
    name: String,
    root_if: String,
    ns_if: String,
    subnet: u8,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let pid = std::process::id();
        let ns = Netns {
            name: format!("moat-ka-{pid}"),
            root_if: format!("mka{pid}r"),
            ns_if: format!("mka{pid}c"),
            subnet: (pid % 250) as u8 + 1,
        };
        let (name, root_if, ns_if) = (&ns.name, &ns.root_if, &ns.ns_if);
        run(&["ip", "netns", "add", name])?;
        run(&[
            "ip", "link", "add", root_if, "type", "veth", "peer", "name", ns_if,
        ])?;
        run(&["ip", "link", "set", ns_if, "netns", name])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.moat_ip()),
            "dev",
            root_if,
        ])?;
        run(&["ip", "link", "set", root_if, "up"])?;
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.client_ip()),
            "dev",
            ns_if,
        ])?;
        ns.exec(&["ip", "link", "set", ns_if, "up"])?;
        Ok(ns)
    }

    fn moat_ip(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    fn client_ip(&self) -> String {
        format!("10.231.{}.2", self.subnet)
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        run(&all)
    }

    /// Cuts the client's link: its kernel sends nothing more, not even a RST.
    fn vanish(&self) {
        self.exec(&["ip", "link", "set", &self.ns_if, "down"])
            .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        // The pair goes with the namespace, but not always at once.
        let _ = run(&["ip", "link", "del", &self.root_if]);
    }
}

/// Connects from inside `ns`, does a hello round trip, prints `ready`, then holds the
/// connection open until killed.
const CLIENT: &str = r#"
import signal, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.sendall(bytes.fromhex(sys.argv[3]))
assert len(s.recv(16)) > 0
print("ready", flush=True)
signal.pause()
"#;

#[test]
fn a_client_that_vanishes_without_fin_or_rst_is_closed_and_so_is_its_upstream() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipped: needs root and network namespaces ({why})");
            return;
        }
    };
    let mongo = Mongo::start();
    let pki = Pki::new();
    let firewall = format!(
        "[[firewall.rules]]\ncidr = \"10.231.{}.0/30\"\ndescription = \"the test's veth pair\"\n",
        ns.subnet
    );
    let m = Moat::start(
        &config_without_loopback(
            &mongo.addr(),
            "preferSSL",
            &pki,
            "tcp_keepalive = \"1s\"",
            &firewall,
        )
        .replace(
            "address = \"127.0.0.1:0\"",
            &format!("address = \"{}:0\"", ns.moat_ip()),
        ),
    );
    let hello: String = op_msg_hello(1).iter().map(|b| format!("{b:02x}")).collect();
    let client = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(python())
            .args(["-c", CLIENT, &ns.moat_ip(), &m.port().to_string(), &hello]),
    );
    client.lines.wait_for("ready", DEADLINE);
    m.lines().wait_for(
        &format!("connection accepted from {}:", ns.client_ip()),
        DEADLINE,
    );
    let mongo_port = mongo.port;
    let upstream_open = || {
        tcp_rows()
            .iter()
            .filter(|r| r.established && r.remote_port == mongo_port)
            .count()
    };
    assert_eq!(upstream_open(), 1, "moat holds one upstream connection");

    ns.vanish();
    let cut = Instant::now();
    // 1 s of silence, then 5 probes 1 s apart: about 6 s.
    m.lines()
        .wait_for(&format!("end connection {}:", ns.client_ip()), DEADLINE);
    eprintln!("closed {:?} after the link was cut", cut.elapsed());
    let error = format!("connection {}:", ns.client_ip());
    let why = m
        .lines()
        .all()
        .into_iter()
        .find(|l| l.contains(&error) && l.contains("closed with error"))
        .unwrap_or_default();
    assert!(
        why.contains("timed out"),
        "the kernel gave up on it: {why:?}"
    );
    let deadline = Instant::now() + DEADLINE;
    while upstream_open() > 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection stays open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // moat itself is fine and serves the next client.
    let mut s = tcp_from(&ns.moat_ip(), m.addr).unwrap();
    hello_over(&mut s, 2);
}

#[test]
fn idle_timeout_closes_an_idle_connection_and_keeps_an_active_one() {
    let mongo = Mongo::start();
    let pki = Pki::new();
    let m = Moat::start(&config(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "idle_timeout = \"2s\"",
    ));
    let mut idle = tcp(m.addr);
    hello_over(&mut idle, 1);
    let idle_port = idle.local_addr().unwrap().port();
    let mut active = tcp(m.addr);
    let mut id = 2;
    // The active client's pace (a request every 200 ms) is what the test is about: it is
    // well inside the 2 s limit. The loop ends on the idle one's log line.
    let closing = format!("closing connection from 127.0.0.1:{idle_port}: no bytes either way");
    while m.lines().count(&closing) == 0 {
        hello_over(&mut active, id);
        id += 1;
        assert!(id < 1000, "the idle connection was never closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let line = m.lines().wait_for(&closing, DEADLINE);
    assert!(line.ends_with("for 2s (listen.idle_timeout)"), "{line}");
    m.lines()
        .wait_for(&format!("end connection 127.0.0.1:{idle_port}"), DEADLINE);
    assert!(
        closed_without_reply(&mut idle),
        "the idle client sees the close"
    );
    hello_over(&mut active, id);
    assert_eq!(
        m.lines().count("no bytes either way"),
        1,
        "only the idle one was closed"
    );
}
