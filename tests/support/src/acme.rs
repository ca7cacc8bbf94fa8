//! An ACME CA for tests: Debian's `pebble` (the ACME test server) and
//! `pebble-challtestsrv` (the mock DNS server pebble resolves with, whose HTTP API sets TXT
//! records), both on 127.0.0.1.
//!
//! Both bind port 0 and do not say which port they got, so the ports are read from the
//! process's own sockets (`/proc/PID/fd` → `/proc/net/{tcp,udp}`): no port is picked and
//! released, so none can be taken meanwhile. Pebble's `tlsPort` (where it checks
//! tls-alpn-01) must be known before it starts, and it is moat's public port: the test holds
//! that port with [`ReservedPort`] until moat has bound it.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::pki::Pki;
use crate::proc::{repo, Proc, DEADLINE};
use crate::tls::{tls_client, tls_connect_with};

/// The local ports (TCP listening, UDP bound) of the sockets process `pid` holds.
pub fn bound_ports(pid: u32) -> (Vec<u16>, Vec<u16>) {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let link = link.to_string_lossy().into_owned();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let ports = |table: &str, listening_only: bool| -> Vec<u16> {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        let mut v: Vec<u16> = text
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
                let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
                if !inodes.contains(*inode) || (listening_only && *state != "0A") {
                    return None;
                }
                u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    (ports("/proc/net/tcp", true), ports("/proc/net/udp", false))
}

/// Waits until process `pid` holds `tcp` listening and `udp` bound sockets.
fn wait_for_ports(pid: u32, tcp: usize, udp: usize) -> (Vec<u16>, Vec<u16>) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (t, u) = bound_ports(pid);
        if t.len() >= tcp && u.len() >= udp {
            return (t, u);
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} bound {t:?} (tcp) and {u:?} (udp), expected {tcp} and {udp}"
        );
        // Polling the kernel's socket table: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port held (bound with SO_REUSEADDR, not listening) so that the ephemeral
/// range cannot hand it out, while a server that also sets SO_REUSEADDR (moat does) can
/// still bind and listen on it. Released when dropped.
pub struct ReservedPort {
    _socket: socket2::Socket,
    pub port: u16,
}

/// Reserves a loopback port for a server to bind.
pub fn reserve_port() -> ReservedPort {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = s.local_addr().unwrap().as_socket().unwrap().port();
    ReservedPort { _socket: s, port }
}

/// pebble-challtestsrv: DNS on UDP, the management API on HTTP.
pub struct Challtestsrv {
    pub proc: Proc,
    /// Where pebble sends its DNS queries.
    pub dns: SocketAddr,
    /// The management API: `http://127.0.0.1:PORT`.
    pub api: String,
}

impl Challtestsrv {
    /// Answers A queries with 127.0.0.1 (and AAAA not at all: moat listens on IPv4).
    pub fn start() -> Challtestsrv {
        let proc = Proc::spawn(Command::new("pebble-challtestsrv").args([
            "-dns01",
            "127.0.0.1:0",
            "-management",
            "127.0.0.1:0",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-defaultIPv6",
            "",
        ]));
        proc.lines.wait_for("Starting management server", DEADLINE);
        let (tcp, udp) = wait_for_ports(proc.child.id(), 2, 1);
        // Two TCP listeners: DNS over TCP and the API; the API is the one that speaks HTTP.
        let api = tcp
            .iter()
            .find(|p| speaks_http(**p))
            .unwrap_or_else(|| panic!("no HTTP API among {tcp:?}"));
        Challtestsrv {
            dns: SocketAddr::from(([127, 0, 0, 1], udp[0])),
            api: format!("http://127.0.0.1:{api}"),
            proc,
        }
    }

    /// A dns-01 hook for moat that publishes records here: `dir/hook.sh`, running
    /// scripts/challtestsrv-hook against this server.
    pub fn hook(&self, dir: &Path) -> PathBuf {
        let path = dir.join("hook.sh");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nCHALLTESTSRV_URL={} exec {} \"$@\"\n",
                self.api,
                repo().join("scripts/challtestsrv-hook").display()
            ),
        )
        .unwrap();
        make_executable(&path);
        path
    }
}

/// Sets mode 0755.
pub fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn speaks_http(port: u16) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut head = [0u8; 5];
    s.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

/// Pebble, with its own TLS certificate for the ACME API (made by moat's certgen).
pub struct Pebble {
    pub proc: Proc,
    /// `https://localhost:PORT/dir`.
    pub directory: String,
    /// The CA of the API's certificate: `directory_ca` in moat's config.
    pub api_ca: PathBuf,
    management: SocketAddr,
    pki: Pki,
}

impl Pebble {
    /// Pebble resolving names with `dns`, checking tls-alpn-01 on `tls_port`; its
    /// certificates are valid `validity` seconds (pebble's default: 5 years).
    pub fn start(dns: &Challtestsrv, tls_port: u16, validity: Option<u64>) -> Pebble {
        let pki = Pki::new();
        let config = pki.dir.path().join("pebble.json");
        let validity = validity.map_or(String::new(), |v| {
            format!(r#", "certificateValidityPeriod": {v}"#)
        });
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:0", "managementListenAddress": "127.0.0.1:0",
  "certificate": "{cert}", "privateKey": "{key}", "httpPort": {tls_port}, "tlsPort": {tls_port},
  "ocspResponderURL": "", "externalAccountBindingRequired": false{validity}}}}}"#,
                cert = pki.cert.display(),
                key = pki.key.display(),
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .arg("-dnsserver")
                .arg(dns.dns.to_string())
                // No random sleeps before validating, no spurious badNonce, no reused
                // authorizations: every order meets its challenges, at full speed.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_VA_ALWAYS_VALID", "0")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
        );
        proc.lines.wait_for("ACME directory available", DEADLINE);
        let (tcp, _) = wait_for_ports(proc.child.id(), 2, 0);
        let client = tls_client(&pki.ca, None);
        let management = tcp
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .find(|a| https_get(*a, &client, "/roots/0").0 == 200)
            .unwrap_or_else(|| panic!("no management API among {tcp:?}"));
        let acme = tcp
            .iter()
            .find(|p| **p != management.port())
            .unwrap_or_else(|| panic!("no ACME API among {tcp:?}"));
        Pebble {
            proc,
            directory: format!("https://localhost:{acme}/dir"),
            api_ca: pki.ca.clone(),
            management,
            pki,
        }
    }

    /// The root that pebble's certificates chain to (it makes a new one at each start),
    /// written to a file for clients to trust.
    pub fn root(&self) -> PathBuf {
        let client = tls_client(&self.pki.ca, None);
        let (status, body) = https_get(self.management, &client, "/roots/0");
        assert_eq!(status, 200, "{body}");
        let path = self.pki.dir.path().join("pebble-root.pem");
        std::fs::write(&path, body).unwrap();
        path
    }
}

/// A GET over TLS (HTTP/1.0, so the server closes when done): (status, body).
pub fn https_get(
    addr: SocketAddr,
    client: &std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> (u16, String) {
    let Ok(mut s) = tls_connect_with(addr, client, "localhost") else {
        return (0, String::new());
    };
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
