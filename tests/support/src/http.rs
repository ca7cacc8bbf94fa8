//! moat's metrics and health endpoint, from a test: its address, a GET, one sample, and a
//! wait for `/readyz`.

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::proc::{wait_until, DEADLINE};
use crate::servers::Moat;
use crate::wire::tcp;

/// `[metrics]` on 127.0.0.1:random with the upstream probed every 100 ms.
pub const METRICS_FAST: &str =
    "[metrics]\nlisten = \"127.0.0.1:0\"\nreadiness_interval = \"100ms\"\n";

/// The metrics address from moat's "metrics and health on http://ADDR/" line.
pub fn moat_metrics_addr(m: &Moat) -> SocketAddr {
    let line = m
        .lines()
        .wait_for("metrics and health on http://", DEADLINE);
    line.split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tcp(addr);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: moat\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One sample of the Prometheus text at `addr/metrics`, by its printed `name{labels}`
/// (0 when absent).
pub fn metric(addr: SocketAddr, series: &str) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Polls `/readyz` until its status is `want`; returns the body.
pub fn wait_readyz(addr: SocketAddr, want: u16) -> String {
    let mut body = String::new();
    wait_until(&format!("/readyz {want}"), DEADLINE, || {
        let (status, b) = http_get(addr, "/readyz");
        body = b;
        status == want
    });
    body
}
