//! Fuzzes the wire parser and the handshake inspector exactly as a live connection drives
//! them: the input is a sequence of chunks, each `[flag+len][bytes]`, where the flag's top
//! bit picks the direction (client → server or back) and the low 7 bits × 8 + 1 the
//! chunk length. The inspector must never panic, whatever the bytes. Run it with
//! `-max_len=65536` (a whole inspected message): libFuzzer's default 4096 cannot reach
//! deep nesting. See fuzz/README.md.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moat::inspect::InspectTap;
use moat::proxy::{Direction, Tap};
use moat::registry::{Kind, Registry};

fuzz_target!(|data: &[u8]| {
    let _ = moat::wire::message::parse(data);
    let registry = Registry::default();
    let peer = "127.0.0.1:1".parse().unwrap();
    let conn = registry.insert(1, peer, Kind::Client);
    // One registry for the run: building Prometheus metrics per input would dominate.
    static METRICS: OnceLock<moat::metrics::Metrics> = OnceLock::new();
    let metrics = METRICS.get_or_init(moat::metrics::Metrics::new);
    let mut tap = InspectTap::new(conn, peer, metrics, None);
    let mut rest = data;
    while let Some((&b, tail)) = rest.split_first() {
        let n = ((b & 0x7f) as usize * 8 + 1).min(tail.len());
        let dir = if b & 0x80 == 0 {
            Direction::ClientToUpstream
        } else {
            Direction::UpstreamToClient
        };
        if !tap.observe(dir, &tail[..n]) {
            break;
        }
        rest = &tail[n..];
    }
});
