//! Hostile and broken input (issue 14): slowloris, malformed wire messages, TLS abuse,
//! PROXY headers, admin-socket abuse and running out of descriptors. In every case moat
//! stays up, counts and logs what happened, leaves no connection stuck, and a normal client
//! still works afterwards. (Deeply nested BSON is in tests/hostile_wire.rs.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{mpsc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use moat_test_support::*;

/// A test that measures latency, CPU or memory runs alone, so that it measures moat and
/// not the other tests of this file; the others may run together.
static MEASURING: RwLock<()> = RwLock::new(());

fn measured() -> RwLockWriteGuard<'static, ()> {
    MEASURING.write().unwrap_or_else(|e| e.into_inner())
}

fn unmeasured() -> RwLockReadGuard<'static, ()> {
    MEASURING.read().unwrap_or_else(|e| e.into_inner())
}

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
/// Inspection stops are logged at debug level.
const DEBUG_LOG: &str = "[log]\nlevel = \"debug\"\n";

/// The data path's latency bound while moat is under attack (issue 14).
const P99_LIMIT_MS: f64 = 50.0;
/// Operations a p99 is taken over, at least: a burst of work in moat (thousands of
/// connections timing out in the same millisecond) shows in a few of them, and the p99
/// says whether it is more than one in a hundred.
const P99_WINDOW: usize = 1000;

/// The p99 bound for a client through moat, given `control_p99`: that of the same client
/// talking to the upstream directly, at the same time. [`P99_LIMIT_MS`] on a machine quiet
/// enough to show it; on one so loaded (other jobs) that even the direct path takes half
/// of that, moat's path may take twice the direct one.
fn p99_limit(control_p99: f64) -> f64 {
    P99_LIMIT_MS.max(2.0 * control_p99)
}

fn with_handshake_timeout(config: String, t: &str) -> String {
    config.replace(
        "handshake_timeout = \"5s\"",
        &format!("handshake_timeout = \"{t}\""),
    )
}

/// moat in preferSSL in front of `upstream` (as `config_with`): PKI, moat, metrics address.
fn moat_with_metrics(
    upstream: &str,
    listen_extra: &str,
    sections: &str,
) -> (Pki, Moat, SocketAddr) {
    let pki = Pki::new();
    let m = Moat::start(&config_with(
        upstream,
        "preferSSL",
        &pki,
        listen_extra,
        sections,
    ));
    let metrics = moat_metrics_addr(&m);
    (pki, m, metrics)
}

// ---- observing moat from outside -------------------------------------------------------

/// The value of the sample `key` (`name{labels}` as printed) in one scrape, 0 when absent.
fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn rejected(addr: SocketAddr, reason: &str) -> f64 {
    metric(
        addr,
        &format!("moat_connections_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// `moat_connections_open`, both transports.
fn open_connections(addr: SocketAddr) -> f64 {
    let (_, text) = http_get(addr, "/metrics");
    sample(&text, "moat_connections_open{transport=\"tls\"}")
        + sample(&text, "moat_connections_open{transport=\"plaintext\"}")
}

/// Polls `ok` until it holds, for state that announces itself nowhere (a gauge, RSS).
fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After a case: moat is still running and no connection is left open.
fn assert_up_and_drained(m: &mut Moat, metrics: SocketAddr) {
    assert!(
        m.proc.child.try_wait().unwrap().is_none(),
        "moat exited:\n{}",
        m.lines().all().join("\n")
    );
    wait_until("moat_connections_open to return to 0", DEADLINE, || {
        open_connections(metrics) == 0.0
    });
    let out = m.lines().all().join("\n");
    assert!(!out.contains("panicked"), "moat panicked:\n{out}");
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f[11] + f[12]
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Lifts this test process's soft open-files limit to its hard limit.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain struct in, plain struct out.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Sets another process's open-files limit, soft and hard (as `prlimit --nofile=N:N`).
fn limit_nofile(pid: u32, n: u64) {
    let lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: the kernel reads `lim`; no old value is asked for.
    let r = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// moat's `[connN]` for the connection from local port `port`.
fn conn_id(m: &Moat, port: u16) -> u64 {
    let line = m.lines().wait_for(
        &format!("connection accepted from 127.0.0.1:{port} #"),
        DEADLINE,
    );
    line.rsplit('#')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no connection id in {line}"))
}

/// Reads until the peer closes (EOF or reset) and returns what came; panics if the
/// connection is still open after [`DEADLINE`].
fn read_until_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the connection is still open after {DEADLINE:?}")
            }
            Err(_) => return got, // reset
        }
    }
}

/// The first flight of a real TLS client (rustls) for `localhost`.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
    let mut c = rustls::ClientConnection::new(tls_client(&pki.ca, None), name).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

// ---- a pymongo client that times each operation ----------------------------------------

struct Latency {
    proc: Proc,
    stop: PathBuf,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
struct LatencyReport {
    ops: u64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    over_50ms: u64,
    out: String,
}

impl Latency {
    /// Starts tests/py/latency.py; returns once it has warmed up. With `max_ops` it stops
    /// by itself after that many timed operations.
    fn start(uri: &str, max_ops: Option<usize>) -> Latency {
        let dir = tempdir();
        let stop = dir.path().join("stop");
        let mut cmd = Command::new(python());
        cmd.arg(repo().join("tests/py/latency.py"))
            .arg(uri)
            .arg(&stop);
        if let Some(n) = max_ops {
            cmd.arg(n.to_string());
        }
        let proc = Proc::spawn(&mut cmd);
        proc.lines.wait_for("ready", DEADLINE);
        Latency {
            proc,
            stop,
            _dir: dir,
        }
    }

    /// Stops it once it has timed at least `ops` operations, so that a p99 rests on
    /// enough of them.
    fn finish_after(self, ops: usize) -> LatencyReport {
        std::fs::write(&self.stop, ops.to_string()).unwrap();
        self.wait()
    }

    /// Waits for it to stop by itself.
    fn wait(mut self) -> LatencyReport {
        self.proc.wait_exit(DEADLINE * 4);
        let line = self.proc.lines.wait_for("ops=", DEADLINE);
        let num = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        };
        LatencyReport {
            ops: num("ops=") as u64,
            errors: num("errors=") as u64,
            p50_ms: num("p50_ms="),
            p99_ms: num("p99_ms="),
            max_ms: num("max_ms="),
            over_50ms: num("over_50ms=") as u64,
            out: self.proc.lines.all().join("\n"),
        }
    }
}

// ---- slowloris -------------------------------------------------------------------------

/// Connections that never finish sniffing or the TLS handshake.
const SLOW: usize = 5000;
/// Clients that send a ClientHello one byte a second.
const TRICKLERS: usize = 5;

/// Sends `hello` one byte a second until moat closes the connection; returns how long
/// that took and how many bytes went out.
fn trickle(addr: SocketAddr, hello: &[u8]) -> (Duration, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    s.set_nodelay(true).unwrap();
    // The read timeout is the pace: one byte, then a second of listening for the close.
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    for (sent, b) in hello.iter().enumerate() {
        if s.write_all(&[*b]).is_err() {
            return (started.elapsed(), sent);
        }
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => return (started.elapsed(), sent + 1),
            Ok(_) => panic!("moat answered a partial ClientHello"),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (started.elapsed(), sent + 1),
        }
    }
    panic!("the whole ClientHello went out a byte a second and moat never closed");
}

#[test]
fn slowloris_is_closed_at_handshake_timeout_while_a_client_keeps_working() {
    let _one = measured();
    raise_nofile();
    let mongo = Mongo::start();
    let pki = Pki::new();
    let mut m = Moat::start(&with_handshake_timeout(
        config_with(&mongo.addr(), "preferSSL", &pki, "", METRICS),
        "3s",
    ));
    let metrics = moat_metrics_addr(&m);
    let pid = m.proc.child.id();
    let client = Latency::start(&uri("localhost", m.port(), ""), None);
    let control = Latency::start(&uri("localhost", mongo.port, ""), None);
    let baseline = rss_kb(pid);
    let hello = client_hello(&pki);

    let tricklers: Vec<_> = (0..TRICKLERS)
        .map(|_| {
            let (addr, hello) = (m.addr, hello.clone());
            std::thread::spawn(move || trickle(addr, &hello))
        })
        .collect();
    let started = Instant::now();
    let mut held = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut s = TcpStream::connect(m.addr).unwrap();
        let first: &[u8] = match i % 4 {
            0 => &[],                       // silent
            1 => &[0x16],                   // too little to tell TLS from MongoDB
            2 => &[0x16, 0x03],             // still too little
            _ => &hello[..hello.len() - 1], // a ClientHello short of its last byte
        };
        s.write_all(first).unwrap();
        held.push(s);
    }
    let opened = started.elapsed();
    let mut peak = rss_kb(pid);

    let all = (SLOW + TRICKLERS) as f64;
    wait_until("every slow connection to time out", DEADLINE, || {
        peak = peak.max(rss_kb(pid));
        rejected(metrics, "handshake_timeout") >= all
    });
    for s in &mut held {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        assert!(closed_without_reply(s), "a slow connection was not closed");
    }
    drop(held);
    for t in tricklers {
        let (after, bytes) = t.join().unwrap();
        // The deadline runs from accept, which follows the connect.
        assert!(
            after >= Duration::from_secs(3) && after < Duration::from_secs(3) + DEADLINE,
            "a trickling client was closed after {after:?} ({bytes} bytes), not at the 3s handshake_timeout"
        );
    }

    let waited = Instant::now();
    let after = loop {
        let now = rss_kb(pid);
        if now as f64 <= baseline as f64 * 1.10 {
            break now;
        }
        assert!(
            waited.elapsed() < DEADLINE,
            "RSS stays at {now} kB, over 10 % above its baseline of {baseline} kB (peak {peak} kB)"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let r = client.finish_after(P99_WINDOW);
    let quiet = control.finish_after(P99_WINDOW);
    assert_eq!(r.errors, 0, "the client saw errors:\n{}", r.out);
    assert!(r.ops > 0, "{}", r.out);
    let limit = p99_limit(quiet.p99_ms);
    assert!(
        r.p99_ms < limit,
        "client p99 {:.1} ms during the slowloris (limit {limit:.1} ms; direct to the upstream {:.1} ms): {r:?}",
        r.p99_ms,
        quiet.p99_ms
    );

    // Counted and logged, one by one.
    assert_eq!(rejected(metrics, "handshake_timeout"), all);
    m.lines().wait_for_nth(
        "no complete TLS or MongoDB handshake within 3s",
        SLOW + TRICKLERS,
        DEADLINE,
    );
    assert!(pymongo(&uri("localhost", m.port(), ""), &["insert_find"]).ok);
    assert_up_and_drained(&mut m, metrics);
    eprintln!(
        "slowloris: {SLOW} connections opened in {opened:.2?} (+{TRICKLERS} trickling); \
         RSS baseline {baseline} kB, peak {peak} kB, after {after} kB; \
         client ops={} p50={:.2} ms p99={:.2} ms max={:.2} ms, {} over 50 ms \
         (meanwhile direct to the upstream: p50={:.2} ms p99={:.2} ms)",
        r.ops, r.p50_ms, r.p99_ms, r.max_ms, r.over_50ms, quiet.p50_ms, quiet.p99_ms
    );
}

// ---- wire bytes ------------------------------------------------------------------------

/// What inspection must do with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Stop, logged, and counted in `moat_inspections_stopped_total`.
    Unparsed,
    /// Stop, logged (an oversized or compressed message is not a parse failure).
    Stopped,
    /// The inspector may read on (it skips fields of the wrong type).
    ReadsOn,
}

fn header(len: i32, id: i32, op: i32) -> Vec<u8> {
    // responseTo = requestId: an echoing upstream then sends the message back as its own
    // reply, so the inspector reads every case in both directions.
    [len, id, id, op]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A message with a truthful length.
fn message(id: i32, op: i32, body: &[u8]) -> Vec<u8> {
    let mut m = header(16 + body.len() as i32, id, op);
    m.extend_from_slice(body);
    m
}

fn op_msg(id: i32, flags: u32, sections: &[u8]) -> Vec<u8> {
    let mut body = flags.to_le_bytes().to_vec();
    body.extend_from_slice(sections);
    message(id, 2013, &body)
}

fn doc(d: bson::Document) -> Vec<u8> {
    let mut v = Vec::new();
    d.to_writer(&mut v).unwrap();
    v
}

/// A kind-0 section holding `d`.
fn body(d: &[u8]) -> Vec<u8> {
    [&[0u8][..], d].concat()
}

fn command(id: i32, d: bson::Document) -> Vec<u8> {
    op_msg(id, 0, &body(&doc(d)))
}

/// A BSON document from raw element bytes, with a truthful size.
fn raw_doc(elements: &[u8]) -> Vec<u8> {
    let mut d = ((elements.len() + 5) as i32).to_le_bytes().to_vec();
    d.extend_from_slice(elements);
    d.push(0);
    d
}

fn le(v: i32) -> [u8; 4] {
    v.to_le_bytes()
}

fn wire_cases() -> Vec<(&'static str, Vec<u8>, Expect)> {
    use bson::{doc, spec::BinarySubtype, Binary};
    use Expect::*;
    let hello = doc(doc! {"hello": 1, "$db": "admin"});
    let bin = |b: &[u8]| Binary {
        subtype: BinarySubtype::Generic,
        bytes: b.to_vec(),
    };
    let mut cases: Vec<(&'static str, Vec<u8>, Expect)> = vec![
        // The header.
        (
            "length 8, below the header's 16",
            header(8, 1, 2013),
            Unparsed,
        ),
        ("length 0", header(0, 2, 2013), Unparsed),
        ("negative length", header(-1, 3, 2013), Unparsed),
        (
            "length 48,000,001, over mongod's limit",
            [header(48_000_001, 4, 2013), le(0).to_vec(), body(&hello)].concat(),
            Unparsed,
        ),
        (
            "length 70,000, over the inspection limit",
            [header(70_000, 5, 2013), le(0).to_vec(), body(&hello)].concat(),
            Stopped,
        ),
        (
            "a length that claims more than is sent",
            [header(1000, 6, 2013), le(0).to_vec(), body(&hello)].concat(),
            ReadsOn,
        ),
        (
            "a length that cuts the message short",
            [header(22, 7, 2013), le(0).to_vec(), body(&hello)].concat(),
            Unparsed,
        ),
        (
            "an unknown opcode",
            message(8, 9999, &body(&hello)),
            Unparsed,
        ),
        // OP_MSG.
        (
            "OP_MSG with an unknown required flag bit",
            op_msg(9, 0x4, &body(&hello)),
            Unparsed,
        ),
        (
            "OP_MSG with checksumPresent and no room for it",
            op_msg(10, 0x1, &[0, 5]),
            Unparsed,
        ),
        (
            "OP_MSG with flags and no section",
            op_msg(11, 0, &[]),
            Unparsed,
        ),
        (
            "OP_MSG whose kind-0 document runs past the message",
            op_msg(12, 0, &[&[0u8][..], &le(1000), &hello[4..]].concat()),
            Unparsed,
        ),
        (
            "OP_MSG with a kind-1 sequence of size -5",
            op_msg(13, 0, &[body(&hello), vec![1], le(-5).to_vec()].concat()),
            Unparsed,
        ),
        (
            "OP_MSG with a kind-1 sequence past the message",
            op_msg(
                14,
                0,
                &[
                    body(&hello),
                    vec![1],
                    le(1000).to_vec(),
                    b"documents\0".to_vec(),
                ]
                .concat(),
            ),
            Unparsed,
        ),
        (
            "OP_MSG with section kind 7",
            op_msg(15, 0, &[body(&hello), vec![7, 1, 2, 3]].concat()),
            Unparsed,
        ),
        (
            "OP_MSG with two kind-0 sections",
            op_msg(16, 0, &[body(&hello), body(&hello)].concat()),
            Unparsed,
        ),
        (
            "OP_MSG cut inside its section",
            op_msg(17, 0, &body(&hello[..hello.len() - 3])),
            Unparsed,
        ),
        // OP_QUERY, OP_COMPRESSED, OP_REPLY from a client.
        (
            "OP_QUERY whose collection name has no end",
            message(18, 2004, &[le(0).to_vec(), b"admin.$cmd".to_vec()].concat()),
            Unparsed,
        ),
        (
            "OP_QUERY cut after the collection name",
            message(
                19,
                2004,
                &[le(0).to_vec(), b"admin.$cmd\0".to_vec(), le(0).to_vec()].concat(),
            ),
            Unparsed,
        ),
        (
            "OP_COMPRESSED claiming 2 GiB with an unknown compressor",
            message(
                20,
                2012,
                &[
                    le(2013).to_vec(),
                    le(i32::MAX).to_vec(),
                    vec![99],
                    vec![0xab; 32],
                ]
                .concat(),
            ),
            Stopped,
        ),
        (
            "OP_REPLY claiming a billion documents",
            message(
                21,
                1,
                &[
                    le(0).to_vec(),
                    0i64.to_le_bytes().to_vec(),
                    le(0).to_vec(),
                    le(1_000_000_000).to_vec(),
                ]
                .concat(),
            ),
            Unparsed,
        ),
        // BSON sizes and types.
        (
            "a BSON document of size 4",
            op_msg(22, 0, &body(&le(4))),
            Unparsed,
        ),
        (
            "a BSON document of negative size",
            op_msg(
                23,
                0,
                &body(&[le(-20).to_vec(), hello[4..].to_vec()].concat()),
            ),
            Unparsed,
        ),
        (
            "a BSON document without its closing NUL",
            op_msg(24, 0, &body(&[&hello[..hello.len() - 1], &[7]].concat())),
            Unparsed,
        ),
        (
            "a BSON element of unknown type 0x99 first",
            op_msg(
                25,
                0,
                &body(&raw_doc(&[&[0x99][..], b"hello\0", &le(1)].concat())),
            ),
            Stopped,
        ),
        (
            "a BSON string whose length runs past the document",
            op_msg(
                26,
                0,
                &body(&raw_doc(
                    &[
                        &[0x10][..],
                        b"hello\0",
                        &le(1),
                        &[0x02],
                        b"$db\0",
                        &le(1000),
                        b"admin\0",
                    ]
                    .concat(),
                )),
            ),
            ReadsOn,
        ),
        (
            "a BSON string that is not UTF-8",
            op_msg(
                27,
                0,
                &body(&raw_doc(
                    &[
                        &[0x10][..],
                        b"hello\0",
                        &le(1),
                        &[0x02],
                        b"$db\0",
                        &le(3),
                        &[0xff, 0xfe, 0],
                    ]
                    .concat(),
                )),
            ),
            ReadsOn,
        ),
        (
            "a command whose name is empty",
            command(28, doc! {"": 1, "$db": "admin"}),
            Stopped,
        ),
    ];
    // Every field the inspector reads, with the wrong type. Echoed back, each is also a
    // reply with the wrong types.
    let typed: Vec<(&'static str, bson::Document)> = vec![
        (
            "client as a string",
            doc! {"hello": 1, "client": "x", "$db": "admin"},
        ),
        (
            "client's driver, application and os of the wrong types",
            doc! {"hello": 1, "client": {"driver": 5, "application": [1, 2], "os": "x"}, "$db": "admin"},
        ),
        (
            "driver and application names of the wrong types",
            doc! {"ismaster": 1, "client": {"driver": {"name": 5, "version": {"x": 1}}, "application": {"name": {"x": 1}}}, "$db": "admin"},
        ),
        (
            "saslSupportedMechs as a number",
            doc! {"hello": 1, "saslSupportedMechs": 5, "$db": "admin"},
        ),
        (
            "saslSupportedMechs without a dot",
            doc! {"hello": 1, "saslSupportedMechs": "nodot", "$db": "admin"},
        ),
        (
            "speculativeAuthenticate as a string",
            doc! {"hello": 1, "speculativeAuthenticate": "x", "$db": "admin"},
        ),
        (
            "speculativeAuthenticate's mechanism, payload and db of the wrong types",
            doc! {"hello": 1, "speculativeAuthenticate": {"saslStart": 1, "mechanism": 5, "payload": "x", "db": 7}, "$db": "admin"},
        ),
        (
            "a speculative X.509 step whose reply names a user of the wrong type",
            doc! {"hello": 1, "speculativeAuthenticate": {"authenticate": 1, "mechanism": "MONGODB-X509", "user": 5}, "$db": "$external"},
        ),
        (
            "a speculative step whose reply says done as a string",
            doc! {"hello": 1, "speculativeAuthenticate": {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(b"n,,n=a,r=b"), "done": "yes"}, "$db": "admin"},
        ),
        (
            "saslStart with mechanism and payload of the wrong types",
            doc! {"saslStart": 1, "mechanism": [1], "payload": 12, "$db": "admin"},
        ),
        (
            "saslStart PLAIN with a payload without NULs",
            doc! {"saslStart": 1, "mechanism": "PLAIN", "payload": bin(b"junk"), "$db": "$external"},
        ),
        (
            "saslStart SCRAM with a payload that is not UTF-8",
            doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-1", "payload": bin(&[0xff, 0xfe, 0x2c, 0x2c]), "$db": "admin"},
        ),
        (
            "saslStart SCRAM with a bare GS2 header",
            doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(b"n,,"), "$db": "admin"},
        ),
        (
            "saslContinue first, with fields of the wrong types",
            doc! {"saslContinue": 1, "conversationId": "x", "payload": 5, "$db": "admin"},
        ),
        (
            "authenticate with user and mechanism of the wrong types",
            doc! {"authenticate": 1, "user": 5, "mechanism": true, "$db": "$external"},
        ),
        ("$db as a number", doc! {"hello": 1, "$db": 5}),
        (
            "a SASL reply with ok, codeName and errmsg of the wrong types",
            doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(b"n,,n=eve,r=x"), "ok": "yes", "codeName": 5, "errmsg": [1], "$db": "admin"},
        ),
        (
            "a SASL reply with done and user of the wrong types",
            doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256", "payload": bin(b"n,,n=eve,r=x"), "ok": 1, "done": "yes", "user": 5, "$db": "admin"},
        ),
        (
            "an authenticate reply with a user of the wrong type",
            doc! {"authenticate": 1, "mechanism": "MONGODB-X509", "ok": 1, "user": [1], "$db": "$external"},
        ),
    ];
    for (i, (name, d)) in typed.into_iter().enumerate() {
        cases.push((name, command(100 + i as i32, d), ReadsOn));
    }
    // The legacy handshake with the wrong types.
    let mut q = le(0).to_vec();
    q.extend_from_slice(b"admin.$cmd\0");
    q.extend_from_slice(&le(0));
    q.extend_from_slice(&le(-1));
    q.extend_from_slice(&doc(
        doc! {"isMaster": 1, "client": {"driver": [1], "application": 5}},
    ));
    cases.push((
        "OP_QUERY isMaster with client fields of the wrong types",
        message(200, 2004, &q),
        ReadsOn,
    ));
    cases
}

#[test]
fn malformed_wire_messages_go_to_the_upstream_and_stop_inspection() {
    let _shared = unmeasured();
    let up = Recorder::start();
    let (_pki, mut m, metrics) =
        moat_with_metrics(&up.addr.to_string(), "", &format!("{METRICS}{DEBUG_LOG}"));
    let cases = wire_cases();
    for (name, bytes, expect) in &cases {
        let mut s = tcp(m.addr);
        let id = conn_id(&m, s.local_addr().unwrap().port());
        s.write_all(bytes).unwrap();
        // The upstream (an echo) got exactly these bytes.
        let mut back = vec![0u8; bytes.len()];
        s.read_exact(&mut back)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(back == *bytes, "{name}: the bytes changed on the way");
        // And the connection is not stuck: bytes keep flowing both ways.
        assert!(echo_ok(&mut s), "{name}: stuck after the case");
        drop(s);
        let stop = format!("[conn{id}] handshake inspection stopped");
        if *expect != Expect::ReadsOn {
            m.lines().wait_for(&stop, DEADLINE);
        }
        m.lines()
            .wait_for(&format!("[conn{id}] end connection"), DEADLINE);
    }
    let unparsed = cases.iter().filter(|c| c.2 == Expect::Unparsed).count() as f64;
    assert_eq!(
        metric(metrics, "moat_inspections_stopped_total"),
        unparsed,
        "each unparseable case is counted once"
    );
    assert!(echo_ok(&mut tcp(m.addr)));
    assert_up_and_drained(&mut m, metrics);
}

#[test]
fn malformed_wire_messages_are_judged_by_a_real_upstream_and_leave_nothing_stuck() {
    let _shared = unmeasured();
    let mongo = Mongo::start();
    let (_pki, mut m, metrics) = moat_with_metrics(&mongo.addr(), "", METRICS);
    for (name, bytes, _) in wire_cases() {
        let mut s = tcp(m.addr);
        // The upstream may close before taking everything: that is its decision.
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(Shutdown::Write);
        read_until_closed(&mut s, name);
    }
    assert!(pymongo(&uri("localhost", m.port(), ""), &["insert_find"]).ok);
    assert_up_and_drained(&mut m, metrics);
}

// ---- TLS -------------------------------------------------------------------------------

/// Deterministic noise.
fn noise(seed: u32, n: usize) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

#[test]
fn garbage_after_a_tls_record_header_is_refused_counted_and_logged() {
    let _shared = unmeasured();
    let up = Recorder::start();
    let (pki, mut m, metrics) = moat_with_metrics(&up.addr.to_string(), "", METRICS);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("noise", [&[0x16, 0x03, 0x01][..], &noise(1, 300)].concat()),
        (
            "other noise",
            [&[0x16, 0x03, 0x01][..], &noise(7, 2000)].concat(),
        ),
        (
            "a record of zeros",
            [&[0x16, 0x03, 0x01, 0x00, 0x40][..], &[0u8; 64]].concat(),
        ),
        (
            "a ServerHello from the client",
            vec![
                0x16, 0x03, 0x01, 0x00, 0x08, 0x02, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00,
            ],
        ),
        ("an empty record", vec![0x16, 0x03, 0x01, 0x00, 0x00]),
        (
            "a record longer than TLS allows",
            [&[0x16, 0x03, 0x01, 0x48, 0x01][..], &noise(3, 0x4801)].concat(),
        ),
    ];
    for (name, bytes) in &cases {
        let mut s = tcp(m.addr);
        let port = s.local_addr().unwrap().port();
        let _ = s.write_all(bytes);
        read_until_closed(&mut s, name);
        m.lines().wait_for(
            &format!("TLS handshake failed with 127.0.0.1:{port}"),
            DEADLINE,
        );
    }
    assert_eq!(rejected(metrics, "tls_error"), cases.len() as f64);
    assert!(tls_connect(m.addr, &pki.ca, "localhost").is_ok());
    assert_up_and_drained(&mut m, metrics);
}

#[test]
fn a_client_hello_in_one_byte_segments_completes_the_handshake() {
    let _shared = unmeasured();
    let mongo = Mongo::start();
    let (pki, mut m, metrics) = moat_with_metrics(&mongo.addr(), "", METRICS);
    let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(tls_client(&pki.ca, None), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    let sock = tcp(m.addr);
    // Without Nagle, each write leaves as its own segment.
    sock.set_nodelay(true).unwrap();
    for b in &hello {
        (&sock).write_all(&[*b]).unwrap();
    }
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).unwrap();
    }
    let reply = hello_over(&mut s, 1);
    assert_eq!(reply.get_f64("ok").ok(), Some(1.0), "{reply}");
    m.lines().wait_for("TLS 1.3", DEADLINE);
    drop(s);
    assert_up_and_drained(&mut m, metrics);
}

/// An upstream that sends "tick" every 100 ms to each connection, so that whatever moat
/// queues for the client (an alert) goes out with the next record.
fn ticker() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                while s.write_all(b"tick").is_ok() {
                    std::thread::sleep(Duration::from_millis(100)); // the pace of the ticks
                }
            });
        }
    });
    addr
}

/// Waits for a line containing `needle` from `rx`; returns everything seen so far.
fn wait_line(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !seen.iter().any(|l| l.contains(needle)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no {needle:?} from s_client; it printed:\n{}",
                seen.join("\n")
            ),
        }
    }
}

#[test]
fn client_initiated_renegotiation_is_refused() {
    let _shared = unmeasured();
    let (pki, mut m, metrics) = moat_with_metrics(&ticker().to_string(), "", METRICS);
    // openssl s_client's `R` asks for a TLS 1.2 renegotiation; -msg shows the alerts.
    let mut s_client = Command::new("openssl")
        .args([
            "s_client",
            "-msg",
            "-connect",
            &m.addr.to_string(),
            "-tls1_2",
        ])
        .args(["-servername", "localhost", "-CAfile"])
        .arg(&pki.ca)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = s_client.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    wait_line(&rx, &mut seen, "tick");
    let line = m.lines().wait_for("TLS 1.2", DEADLINE);
    let id: u64 = line
        .split("[conn")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    let mut stdin = s_client.stdin.take().unwrap();
    stdin.write_all(b"R\n").unwrap();
    stdin.flush().unwrap();
    // rustls declines with a warning alert; there is no second handshake (OpenSSL then
    // gives up on the session with a fatal alert of its own).
    wait_line(&rx, &mut seen, "warning no_renegotiation");
    let client_hellos = seen.iter().filter(|l| l.ends_with("ClientHello")).count();
    let server_hellos = seen.iter().filter(|l| l.ends_with("ServerHello")).count();
    assert_eq!(
        (client_hellos, server_hellos),
        (2, 1),
        "{}",
        seen.join("\n")
    );
    assert_eq!(m.lines().count("TLS 1.2"), 1);
    let _ = s_client.kill();
    s_client.wait().unwrap();
    m.lines()
        .wait_for(&format!("[conn{id}] end connection"), DEADLINE);
    assert!(tls_connect(m.addr, &pki.ca, "localhost").is_ok());
    assert_up_and_drained(&mut m, metrics);
}

#[test]
fn an_oversized_record_after_the_handshake_ends_only_its_connection() {
    let _shared = unmeasured();
    let up = Recorder::start();
    let (pki, mut m, metrics) = moat_with_metrics(&up.addr.to_string(), "", METRICS);
    // A record far longer than TLS allows, after a completed handshake.
    let mut s = tls_connect(m.addr, &pki.ca, "localhost").unwrap();
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).unwrap();
    let mut raw = s.sock.try_clone().unwrap();
    let local = raw.local_addr().unwrap();
    let _ = raw.write_all(&[&[0x17, 0x03, 0x03, 0x48, 0x01][..], &noise(5, 0x4801)].concat());
    read_until_closed(&mut raw, "oversized record");
    m.lines()
        .wait_for(&format!("connection {} closed with error", local), DEADLINE);

    // Others are unaffected.
    let mut s = tls_connect(m.addr, &pki.ca, "localhost").unwrap();
    s.write_all(b"ping").unwrap();
    s.flush().unwrap();
    s.read_exact(&mut b).unwrap();
    drop(s);
    assert_up_and_drained(&mut m, metrics);
}

/// An upstream that sends `total` bytes to every connection as fast as it is taken, and
/// reports how many went out before the connection closed.
struct Firehose {
    addr: SocketAddr,
    sent: mpsc::Receiver<usize>,
}

impl Firehose {
    fn start(total: usize) -> Firehose {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let chunk = vec![0x5a_u8; 64 * 1024];
                    let mut sent = 0;
                    while sent < total {
                        match s.write(&chunk) {
                            Ok(n) => sent += n,
                            Err(_) => break,
                        }
                    }
                    let _ = tx.send(sent);
                });
            }
        });
        Firehose { addr, sent: rx }
    }
}

#[test]
fn a_client_that_stops_reading_costs_bounded_memory_and_is_closed_when_idle() {
    let _one = measured();
    const TOTAL: usize = 100 << 20;
    let up = Firehose::start(TOTAL);
    let (pki, mut m, metrics) =
        moat_with_metrics(&up.addr.to_string(), "idle_timeout = \"3s\"", METRICS);
    let pid = m.proc.child.id();
    let before = rss_kb(pid);
    // Completes the handshake, then never reads.
    let s = tls_connect(m.addr, &pki.ca, "localhost").unwrap();
    let mut peak = before;
    wait_until(
        "the stalled connection to be closed as idle",
        DEADLINE,
        || {
            peak = peak.max(rss_kb(pid));
            m.lines().count("no bytes either way for 3s") > 0
        },
    );
    let delivered = metric(
        metrics,
        "moat_bytes_total{direction=\"upstream_to_client\"}",
    );
    // The readiness probe's connections get the firehose too: this client's is the one
    // that got at least what moat passed on.
    let sent = loop {
        let sent = up.sent.recv_timeout(DEADLINE).unwrap();
        if sent as f64 >= delivered {
            break sent;
        }
    };
    assert!(
        sent < TOTAL,
        "the upstream got all {sent} bytes out: nothing held it back"
    );
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "moat grew by {growth} kB for one stalled connection"
    );
    assert_eq!(metric(metrics, "moat_connections_idle_closed_total"), 1.0);
    drop(s);
    assert_up_and_drained(&mut m, metrics);
    eprintln!(
        "stalled reader: upstream sent {:.1} MB of {} MB before the close, moat passed on {:.1} MB; \
         RSS {before} kB -> peak {peak} kB (+{growth} kB)",
        sent as f64 / 1e6,
        TOTAL >> 20,
        delivered / 1e6
    );
}

// ---- PROXY headers ---------------------------------------------------------------------

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    [&[kind][..], &(value.len() as u16).to_be_bytes(), value].concat()
}

/// A PROXY v2 header (`command` 0x21 PROXY or 0x20 LOCAL) for TCP over IPv4, with `tlvs`.
fn proxy_v2(command: u8, src: [u8; 4], port: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[command, 0x11]);
    h.extend_from_slice(&((12 + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&27017u16.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// Writes `pieces` as separate segments.
fn send_split(s: &TcpStream, pieces: &[&[u8]]) {
    s.set_nodelay(true).unwrap();
    for p in pieces {
        let mut w = s;
        w.write_all(p).unwrap();
    }
}

#[test]
fn proxy_headers_split_oversized_with_tlvs_or_from_untrusted_peers() {
    let _shared = unmeasured();
    let up = Recorder::start();
    let (_pki, mut m, metrics) = moat_with_metrics(
        &up.addr.to_string(),
        "proxy_protocol = \"any\"\nproxy_protocol_from = [\"127.0.0.1/32\"]",
        METRICS,
    );

    // Accepted: split across segments, byte by byte, with TLVs, LOCAL.
    let v1 = b"PROXY TCP4 127.0.0.9 127.0.0.1 40001 27017\r\n";
    let mut s = tcp(m.addr);
    send_split(&s, &[&v1[..5], &v1[5..20], &v1[20..]]);
    assert!(echo_ok(&mut s));
    m.lines()
        .wait_for("connection accepted from 127.0.0.9:40001", DEADLINE);

    let v2 = proxy_v2(0x21, [127, 0, 0, 10], 40002, &[]);
    drop(s);
    let mut s = tcp(m.addr);
    let bytes: Vec<&[u8]> = v2.chunks(1).collect();
    send_split(&s, &bytes);
    assert!(echo_ok(&mut s));
    m.lines()
        .wait_for("connection accepted from 127.0.0.10:40002", DEADLINE);

    let ssl = [
        &[0x07u8][..], // client: SSL, cert in connection, cert in session
        &0u32.to_be_bytes(),
        &tlv(0x21, b"TLSv1.3"),
        &tlv(0x22, b"client.example"),
        &tlv(0x23, b"TLS_AES_128_GCM_SHA256"),
    ]
    .concat();
    let tlvs = [
        tlv(0x01, b"mongodb"),
        tlv(0x02, b"db1.example.net"),
        tlv(0x05, &[0xab; 32]),
        tlv(0x20, &ssl),
        tlv(0x30, b"netns"),
        tlv(0x04, &[0; 300]),
    ]
    .concat();
    drop(s);
    let mut s = tcp(m.addr);
    send_split(&s, &[&proxy_v2(0x21, [127, 0, 0, 11], 40003, &tlvs)]);
    assert!(echo_ok(&mut s));
    m.lines()
        .wait_for("connection accepted from 127.0.0.11:40003", DEADLINE);

    drop(s);
    let mut s = tcp(m.addr);
    let port = s.local_addr().unwrap().port();
    send_split(&s, &[&proxy_v2(0x20, [0; 4], 0, &tlvs)]);
    assert!(echo_ok(&mut s));
    m.lines().wait_for(
        &format!("connection accepted from 127.0.0.1:{port}"),
        DEADLINE,
    );

    // moat reads no TLV, so one that runs past the header's end does not matter.
    let mut bad_tlv = proxy_v2(0x21, [127, 0, 0, 13], 40005, &tlv(0x01, b"mongodb"));
    let n = bad_tlv.len();
    bad_tlv[n - 9..n - 7].copy_from_slice(&100u16.to_be_bytes());
    drop(s);
    let mut s = tcp(m.addr);
    send_split(&s, &[&bad_tlv]);
    assert!(echo_ok(&mut s));
    m.lines()
        .wait_for("connection accepted from 127.0.0.13:40005", DEADLINE);

    // Refused, counted and logged.
    let refused: Vec<(&str, TcpStream, Vec<u8>, &str)> = vec![
        (
            "an oversized v1 header",
            tcp(m.addr),
            [b"PROXY TCP4 ".to_vec(), vec![b'9'; 300], b"\r\n".to_vec()].concat(),
            "malformed PROXY v1 header",
        ),
        (
            "an oversized v2 header",
            tcp(m.addr),
            {
                let mut h = proxy_v2(0x21, [127, 0, 0, 12], 40004, &[]);
                h[14..16].copy_from_slice(&8000u16.to_be_bytes());
                h.resize(16 + 8000, 0);
                h
            },
            "PROXY header longer than 4096 bytes",
        ),
        (
            "a v1 header from an untrusted peer",
            tcp_from("127.0.0.3", m.addr).unwrap(),
            v1.to_vec(),
            "not in listen.proxy_protocol_from",
        ),
        (
            "a v2 header from an untrusted peer",
            tcp_from("127.0.0.4", m.addr).unwrap(),
            proxy_v2(0x21, [127, 0, 0, 14], 40006, &tlvs),
            "not in listen.proxy_protocol_from",
        ),
    ];
    let n = refused.len();
    for (name, mut s, bytes, why) in refused {
        let peer = s.local_addr().unwrap();
        let _ = s.write_all(&bytes);
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        assert!(closed_without_reply(&mut s), "{name}: not refused");
        m.lines()
            .wait_for(&format!("connection refused from {peer}: "), DEADLINE);
        let line = m
            .lines()
            .all()
            .into_iter()
            .find(|l| l.contains(&format!("connection refused from {peer}: ")))
            .unwrap();
        assert!(line.contains(why), "{name}: {line}");
    }
    assert_eq!(rejected(metrics, "proxy_header"), n as f64);

    drop(s);
    let mut s = tcp(m.addr);
    send_split(&s, &[v1]);
    assert!(echo_ok(&mut s));
    drop(s);
    assert_up_and_drained(&mut m, metrics);
}

// ---- admin socket ----------------------------------------------------------------------

fn admin(m: &Moat) -> UnixStream {
    let s = UnixStream::connect(m.socket()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

fn reply(s: &UnixStream) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Whether the peer has closed `s`, waiting up to `timeout`, without reading from it.
fn peer_closed(s: &UnixStream, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as libc::c_int) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// How long the admin socket waits for a request line (src/admin/mod.rs).
const ADMIN_DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn admin_socket_abuse_neither_blocks_ctl_nor_slows_the_data_path() {
    let _one = measured();
    let mongo = Mongo::start();
    let (_pki, mut m, metrics) = moat_with_metrics(&mongo.addr(), "", &format!("{ADMIN}{METRICS}"));
    let u = uri("localhost", m.port(), "");
    let baseline = Latency::start(&u, Some(P99_WINDOW)).wait();
    let during = Latency::start(&u, None);
    let control = Latency::start(&uri("localhost", mongo.port, ""), None);

    // A client that sends half a request and goes quiet, and one that says nothing.
    let slow = admin(&m);
    (&slow).write_all(b"{\"cmd\":\"sta").unwrap();
    let slow_since = Instant::now();
    let _silent = admin(&m);

    // A client that sends requests and never reads the replies.
    let flood = UnixStream::connect(m.socket()).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in 0..100_000 {
        if (&flood).write_all(b"{\"cmd\":\"status\"}\n").is_err() {
            break; // moat stopped reading: it is stuck writing replies nobody reads
        }
    }

    // Meanwhile everyone else gets answers at once.
    let started = Instant::now();
    let (code, out, err) = m.ctl(&["status"]);
    assert_eq!(code, 0, "{out}{err}");
    let ctl_took = started.elapsed();
    assert!(ctl_took < ADMIN_DEADLINE, "ctl took {ctl_took:?}");

    // A huge line.
    let huge = admin(&m);
    let _ = (&huge).write_all(&vec![b'x'; 1 << 20]);
    let r = reply(&huge);
    assert!(
        r["error"].as_str().unwrap().contains("longer than 64 KiB"),
        "{r}"
    );

    // Bad JSON, then good requests on the same connection.
    let bad = admin(&m);
    for junk in [
        &b"{nope\n"[..],
        b"[1,2,3]\n",
        b"{\"cmd\":\"no.such\"}\n",
        b"\xff\xfe\x00\n",
    ] {
        (&bad).write_all(junk).unwrap();
        let r = reply(&bad);
        assert_eq!(r["ok"], false, "{junk:?}: {r}");
    }
    (&bad).write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    assert_eq!(reply(&bad)["ok"], true);

    // 1,000 clients at once.
    let many: Vec<UnixStream> = (0..1000).map(|_| admin(&m)).collect();
    for s in &many {
        let mut w = s;
        w.write_all(b"{\"cmd\":\"mode.get\"}\n").unwrap();
    }
    for s in &many {
        assert_eq!(reply(s)["ok"], true);
    }
    drop(many);

    // The slow client is cut off at its deadline, with a reason.
    let r = reply(&slow);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("no complete request line"),
        "{r}"
    );
    let slow_closed = slow_since.elapsed();
    // The one that does not read its replies is closed too.
    assert!(
        peer_closed(&flood, ADMIN_DEADLINE + DEADLINE),
        "a client that never reads its replies is never closed"
    );
    let r = during.finish_after(P99_WINDOW);
    let direct = control.finish_after(P99_WINDOW);
    assert_eq!(r.errors, 0, "{}", r.out);
    let limit = p99_limit(direct.p99_ms);
    assert!(
        r.p99_ms < limit,
        "data path p99 {:.1} ms during the admin abuse (limit {limit:.1} ms; before it {:.1} ms, \
         direct to the upstream meanwhile {:.1} ms)",
        r.p99_ms,
        baseline.p99_ms,
        direct.p99_ms
    );
    m.lines().wait_for("admin socket: ", DEADLINE);
    let (code, _, _) = m.ctl(&["status"]);
    assert_eq!(code, 0);
    assert_up_and_drained(&mut m, metrics);
    eprintln!(
        "admin abuse: data path p99 {:.2} ms over {} ops, max {:.2} ms (before the abuse {:.2} ms; \
         direct to the upstream meanwhile {:.2} ms); ctl status answered in {ctl_took:.2?} while \
         clients held the socket; the half-request client was closed after {slow_closed:.1?}",
        r.p99_ms, r.ops, r.max_ms, baseline.p99_ms, direct.p99_ms
    );
}

// ---- file descriptors ------------------------------------------------------------------

#[test]
fn out_of_descriptors_moat_backs_off_logs_once_a_second_and_recovers() {
    let _one = measured();
    raise_nofile();
    let up = Recorder::start();
    let pki = Pki::new();
    // Slow connections stay open for the whole test: moat runs out and stays out.
    let mut m = Moat::start(&with_handshake_timeout(
        config_with(&up.addr.to_string(), "preferSSL", &pki, "", METRICS),
        "120s",
    ));
    let metrics = moat_metrics_addr(&m);
    let pid = m.proc.child.id();
    // As `ulimit -n 256`: moat raised its soft limit to the hard one at start, so both.
    limit_nofile(pid, 256);

    let held: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(m.addr).unwrap())
        .collect();
    let first = m
        .lines()
        .wait_for("error accepting connections: ", DEADLINE);
    assert!(first.contains("Too many open files"), "{first}");

    // While it is out of descriptors: little CPU, one line a second.
    let window = Duration::from_secs(5);
    let lines_before = m.lines().count("error accepting connections: ");
    let (t0, c0) = (Instant::now(), cpu_ticks(pid));
    std::thread::sleep(window); // the measurement window, not a synchronisation
    let (elapsed, used) = (t0.elapsed(), cpu_ticks(pid) - c0);
    let cpu = used as f64 / clock_ticks_per_second() / elapsed.as_secs_f64() * 100.0;
    let lines = m.lines().count("error accepting connections: ") - lines_before;
    assert!(
        cpu < 10.0,
        "moat used {cpu:.1} % CPU while out of descriptors"
    );
    assert!(
        (2..=7).contains(&lines),
        "{lines} accept-error lines in {elapsed:?}: expected about one a second"
    );
    let last = m
        .lines()
        .all()
        .into_iter()
        .rev()
        .find(|l| l.contains("error accepting connections: "))
        .unwrap();
    assert!(
        last.contains("times since the last line"),
        "no count: {last}"
    );

    // Descriptors come free: moat accepts again, and new clients work.
    drop(held);
    m.lines()
        .wait_for("accepting connections again after", DEADLINE);
    let mut s = tcp(m.addr);
    assert!(echo_ok(&mut s));
    drop(s);
    assert_up_and_drained(&mut m, metrics);
    eprintln!(
        "out of descriptors: CPU {cpu:.2} % over {elapsed:.1?} ({used} ticks), \
         {lines} accept-error lines; last: {last}"
    );
}
