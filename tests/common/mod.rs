//! Test harness: real processes on loopback, bound to port 0.
//!
//! - [`Mongo`]: a secantusdb server (MongoDB wire protocol, SCRAM auth) from `.venv`.
//! - [`Moat`]: the moat binary with a generated config; its log lines are collected so tests
//!   wait on a line instead of sleeping.
//! - [`Pki`]: a dev CA and a `localhost` certificate made with rcgen (`moat::certgen`).
//! - [`pymongo`]: runs `tests/py/client.py` with the venv's pymongo 4.x.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Long enough for a cold CI machine, short enough to fail a hung test.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python venv with secantusdb and pymongo (made by scripts/test).
pub fn venv() -> PathBuf {
    let v = std::env::var_os("MOAT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv"));
    assert!(
        v.join("bin/python").exists(),
        "no Python venv at {}: run scripts/test (it creates .venv with tests/py/requirements.txt)",
        v.display()
    );
    v
}

pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// A fresh temporary directory under target/tmp.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("moat-it-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}

/// What a child process printed so far, and how many of its output streams are open.
#[derive(Default)]
struct Printed {
    lines: Vec<String>,
    open: usize,
}

/// Lines a child process printed, shared with the threads that read them.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Printed>, Condvar)>);

impl Lines {
    fn collect<R: Read + Send + 'static>(&self, r: R) {
        let me = self.clone();
        me.0 .0.lock().unwrap().open += 1;
        std::thread::spawn(move || {
            let (m, c) = &*me.0;
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                m.lock().unwrap().lines.push(line);
                c.notify_all();
            }
            m.lock().unwrap().open -= 1;
            c.notify_all();
        });
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_nth(needle, 1, timeout)
    }

    /// Waits until `n` lines contain `needle`; returns the n-th.
    pub fn wait_for_nth(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let (m, c) = &*self.0;
        let deadline = Instant::now() + timeout;
        let mut p = m.lock().unwrap();
        loop {
            if let Some(l) = p.lines.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return l.clone();
            }
            let now = Instant::now();
            let why = if p.open == 0 {
                "the process closed its output"
            } else if now >= deadline {
                "timed out"
            } else {
                p = c.wait_timeout(p, deadline - now).unwrap().0;
                continue;
            };
            let got = p.lines.join("\n");
            drop(p); // not poisoned for the reader threads
            panic!("{why} waiting for {n}× {needle:?}; got:\n{got}");
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|l| l.contains(needle)).count()
    }
}

/// Kills the child on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Lines,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let lines = Lines::default();
        lines.collect(child.stdout.take().unwrap());
        lines.collect(child.stderr.take().unwrap());
        Proc { child, lines }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for the process to exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A secantusdb server on 127.0.0.1:random.
pub struct Mongo {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mongo {
    /// Without authentication, throw-away storage.
    pub fn start() -> Mongo {
        let dir = tempdir();
        let data = dir.path().join("data");
        Self::launch(dir, &data, false)
    }

    /// With `--auth` and the user alice/secret (SCRAM-SHA-1 and -256, root).
    pub fn start_auth() -> Mongo {
        let dir = tempdir();
        let data = dir.path().join("data");
        copy_dir(auth_template(), &data);
        Self::launch(dir, &data, true)
    }

    /// Runs secantusd-py in `cwd` (kept alive as long as the server) on `data`.
    fn launch(cwd: tempfile::TempDir, data: &Path, auth: bool) -> Mongo {
        let mut cmd = Command::new(venv().join("bin/secantusd-py"));
        cmd.current_dir(cwd.path())
            .args(["--host", "127.0.0.1", "--port", "0", "--standalone"])
            .arg("--storage-path")
            .arg(data);
        if auth {
            cmd.arg("--auth");
        }
        let proc = Proc::spawn(&mut cmd);
        let line = proc
            .lines
            .wait_for("secantus listening on 127.0.0.1:", DEADLINE);
        let port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Mongo {
            proc,
            port,
            _dir: cwd,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A stopped secantusdb data directory that holds the user alice, made once per test binary.
fn auth_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let base = tempdir().keep();
        let data = base.join("data");
        let cwd = tempfile::TempDir::new_in(&base).unwrap();
        let mut m = Mongo::launch(cwd, &data, false);
        let out = Command::new(python())
            .arg(repo().join("tests/py/create_user.py"))
            .arg(m.port.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "createUser: {out:?}");
        m.proc.signal("TERM");
        m.proc.wait_exit(DEADLINE);
        data
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A dev CA plus a certificate for `localhost` (DNS SAN only), made by moat's own certgen.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempdir();
        let files = moat::certgen::init(&moat::certgen::InitOptions {
            dir: dir.path().to_path_buf(),
            domain: "default".into(),
            hostnames: vec!["localhost".into()],
            ips: vec![],
            force: false,
        })
        .unwrap();
        Pki {
            dir,
            ca: files.ca,
            cert: files.cert,
            key: files.key,
        }
    }
}

/// A config for tests: listen on 127.0.0.1:0, forward to `upstream`.
pub fn config(upstream: &str, mode: &str, pki: &Pki, extra_listen: &str) -> String {
    config_with(upstream, mode, pki, extra_listen, "")
}

/// [`config`] plus `sections` appended (e.g. `[admin]`, `[[egress]]`).
pub fn config_with(
    upstream: &str,
    mode: &str,
    pki: &Pki,
    extra_listen: &str,
    sections: &str,
) -> String {
    format!(
        r#"[listen]
address = "127.0.0.1:0"
handshake_timeout = "5s"
{extra_listen}

[upstream]
address = "{upstream}"
connect_timeout = "2s"

[tls]
mode = "{mode}"

[[tls.domains]]
name = "default"
hostnames = ["localhost"]
cert = "{cert}"
key = "{key}"

{sections}
"#,
        cert = pki.cert.display(),
        key = pki.key.display()
    )
}

/// A running moat.
pub struct Moat {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Appended to test configs that have no `[firewall]`: moat denies every source by default.
pub const ALLOW_LOOPBACK: &str = "\n[[firewall.rules]]\ncidr = \"127.0.0.0/8\"\ndescription = \"tests on loopback\"\n\n[[firewall.rules]]\ncidr = \"::1/128\"\ndescription = \"tests on loopback (IPv6)\"\n";

impl Moat {
    /// Runs moat on `config`; one without a `[firewall]` gets [`ALLOW_LOOPBACK`].
    pub fn start(config: &str) -> Moat {
        let dir = tempdir();
        std::fs::write(dir.path().join("moat.toml"), config).unwrap();
        Self::start_in(dir)
    }

    /// Runs moat on `dir/moat.toml` (already written; given [`ALLOW_LOOPBACK`] if it has
    /// no `[firewall]`).
    pub fn start_in(dir: tempfile::TempDir) -> Moat {
        let path = dir.path().join("moat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        if !text.contains("firewall") {
            std::fs::write(&path, text + ALLOW_LOOPBACK).unwrap();
        }
        let proc = Proc::spawn(Command::new(env!("CARGO_BIN_EXE_moat")).args([
            "run",
            "--config",
            path.to_str().unwrap(),
        ]));
        // Text: "waiting for connections on ADDR ..."; JSON: "Waiting for connections", attr.address.
        let line = proc.lines.wait_for("aiting for connections", DEADLINE);
        let addr = if line.starts_with('{') {
            serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["attr"]["address"].as_str().and_then(|a| a.parse().ok()))
        } else {
            line.split("waiting for connections on ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|s| s.parse().ok())
        }
        .unwrap_or_else(|| panic!("no address in {line:?}"));
        Moat { proc, addr, dir }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn lines(&self) -> &Lines {
        &self.proc.lines
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("moat.toml")
    }

    /// The admin socket, when the config has `[admin] socket = "admin.sock"`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Runs `moat ctl --socket ... ARGS`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_moat"))
            .arg("ctl")
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `moat ctl --json ARGS`, parsed.
    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let (_, out, err) = self.ctl(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
    }
}

/// `[admin] socket = "admin.sock"` (next to the config file).
pub const ADMIN: &str = "[admin]\nsocket = \"admin.sock\"\n";

/// Output of one pymongo run: `ok` and what it printed.
#[derive(Debug)]
pub struct PyResult {
    pub ok: bool,
    pub out: String,
}

/// Runs tests/py/client.py with `interpreter` against `uri`.
pub fn pymongo_with(interpreter: &Path, uri: &str, ops: &[&str]) -> PyResult {
    let out = Command::new(interpreter)
        .arg(repo().join("tests/py/client.py"))
        .arg(uri)
        .args(ops)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    PyResult {
        ok: out.status.success(),
        out: text,
    }
}

/// Runs tests/py/client.py with the venv's pymongo 4.x.
pub fn pymongo(uri: &str, ops: &[&str]) -> PyResult {
    pymongo_with(&python(), uri, ops)
}

/// A MongoDB URI through moat; `opts` are extra query options.
pub fn uri(host: &str, port: u16, opts: &str) -> String {
    format!("mongodb://{host}:{port}/?directConnection=true&serverSelectionTimeoutMS=4000{opts}")
}

/// Like [`uri`], logged in as alice/secret (see [`Mongo::start_auth`]).
pub fn alice_uri(host: &str, port: u16, opts: &str) -> String {
    uri(
        &format!("alice:secret@{host}"),
        port,
        &format!("&authSource=admin{opts}"),
    )
}

/// `&tls=true&tlsCAFile=...`.
pub fn tls_opts(pki: &Pki) -> String {
    format!("&tls=true&tlsCAFile={}", pki.ca.display())
}

/// An OP_MSG `{hello: 1, $db: "admin"}` with request id `id`.
pub fn op_msg_hello(id: i32) -> Vec<u8> {
    let doc = bson::doc! { "hello": 1, "$db": "admin" };
    let mut body = Vec::new();
    doc.to_writer(&mut body).unwrap();
    let len = 16 + 4 + 1 + body.len();
    let mut m = Vec::with_capacity(len);
    for v in [len as i32, id, 0, 2013] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(&body);
    m
}

/// Reads one whole MongoDB message; returns its body document (OP_MSG kind 0 only).
pub fn read_op_msg(s: &mut TcpStream) -> bson::Document {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let len = i32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 16];
    s.read_exact(&mut rest).unwrap();
    assert_eq!(i32::from_le_bytes(h[12..16].try_into().unwrap()), 2013);
    bson::Document::from_reader(&rest[5..]).unwrap()
}

/// Plain TCP connection with read/write timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A hello round trip over a raw plaintext connection.
pub fn hello_round_trip(s: &mut TcpStream, id: i32) -> bson::Document {
    hello_over(s, id)
}

/// An address nothing listens on.
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

/// A TLS connection from a rustls client that trusts `ca` and sends `sni`.
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn tls_connect(addr: SocketAddr, ca: &Path, sni: &str) -> std::io::Result<TlsStream> {
    tls_connect_with(addr, &tls_client(ca, None), sni)
}

/// A rustls client config trusting `ca`, with a client certificate (cert, key PEM files)
/// when given. Keeps resumption state across connections made with it.
pub fn tls_client(ca: &Path, client_cert: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match client_cert {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    })
}

/// Connects with `cfg` and completes the handshake.
pub fn tls_connect_with(
    addr: SocketAddr,
    cfg: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> std::io::Result<TlsStream> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp(addr));
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A hello round trip over any stream.
pub fn hello_over<S: Read + Write>(s: &mut S, id: i32) -> bson::Document {
    s.write_all(&op_msg_hello(id)).unwrap();
    s.flush().unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let len = i32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len - 16];
    s.read_exact(&mut rest).unwrap();
    bson::Document::from_reader(&rest[5..]).unwrap()
}

/// The serial (hex) of the certificate the server presented.
pub fn served_serial(s: &TlsStream) -> String {
    let leaf = &s.conn.peer_certificates().unwrap()[0];
    moat::tls::certs::leaf(leaf, Path::new("served"))
        .unwrap()
        .serial
}

/// The serial (hex) of the first certificate in a PEM file.
pub fn file_serial(pem: &Path) -> String {
    let chain = moat::tls::certs::load_chain(pem).unwrap();
    moat::tls::certs::leaf(&chain[0], pem).unwrap().serial
}

/// A pymongo client doing insert + find in a loop (tests/py/steady.py).
pub struct Steady {
    proc: Proc,
    stop: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Steady {
    pub fn start(uri: &str) -> Steady {
        let dir = tempdir();
        let stop = dir.path().join("stop");
        let proc = Proc::spawn(
            Command::new(python())
                .arg(repo().join("tests/py/steady.py"))
                .arg(uri)
                .arg(&stop),
        );
        proc.lines.wait_for("ready", DEADLINE);
        Steady {
            proc,
            stop,
            _dir: dir,
        }
    }

    /// Stops the loop; returns (ops, errors, output).
    pub fn finish(mut self) -> (u64, u64, String) {
        std::fs::write(&self.stop, "").unwrap();
        self.proc.wait_exit(DEADLINE);
        let line = self.proc.lines.wait_for("ops=", DEADLINE);
        let num = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        (
            num("ops="),
            num("errors="),
            self.proc.lines.all().join("\n"),
        )
    }
}

/// A TCP connection to `addr` from the local address `source` (e.g. "127.0.0.2", "::1").
pub fn tcp_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let src: std::net::IpAddr = source.parse().unwrap();
    let domain = if src.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&addr.into(), DEADLINE)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE))?;
    Ok(s)
}

/// Whether the connection was closed without a byte of reply.
pub fn closed_without_reply(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// A stand-in upstream that echoes and counts the connections that reach it.
pub struct Recorder {
    pub addr: SocketAddr,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut s);
                });
            }
        });
        Recorder { addr, count }
    }

    /// Connections that reached the upstream so far.
    pub fn seen(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Sends `ping` and expects it echoed back (through moat to a [`Recorder`]).
pub fn echo_ok(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    s.read_exact(&mut b).is_ok() && &b == b"ping"
}

/// Runs mongosh (installed by scripts/deps.sh into .deps) with a ping against `uri`.
pub fn mongosh_ping(uri: &str) -> PyResult {
    let bin = repo().join(".deps/mongosh/node_modules/.bin/mongosh");
    assert!(
        bin.exists(),
        "mongosh is missing at {}: run scripts/deps.sh",
        bin.display()
    );
    let out = Command::new(bin)
        .args([
            uri,
            "--quiet",
            "--norc",
            "--eval",
            "JSON.stringify(db.runCommand({ping:1}))",
        ])
        .output()
        .unwrap();
    PyResult {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs `moat check --config PATH`: (exit code, stderr).
pub fn moat_check(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A secantusdb that can be stopped and started again on the same port and data directory,
/// for upstream-failure tests.
pub struct StoppableMongo {
    proc: Option<Proc>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl StoppableMongo {
    /// Without authentication, on 127.0.0.1:random, data kept in a temporary directory.
    pub fn start() -> StoppableMongo {
        let dir = tempdir();
        let mut m = StoppableMongo {
            proc: None,
            port: 0,
            dir,
        };
        m.restart();
        m
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(venv().join("bin/secantusd-py"));
        cmd.current_dir(self.dir.path())
            .args(["--host", "127.0.0.1", "--standalone", "--port"])
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path().join("data"));
        cmd
    }

    /// Starts it (again) on the same port and data.
    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "already running");
        let proc = Proc::spawn(&mut self.command());
        let line = proc
            .lines
            .wait_for("secantus listening on 127.0.0.1:", DEADLINE);
        self.port = line
            .rsplit(':')
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        self.proc = Some(proc);
    }

    /// Sends `sig` ("TERM", "KILL") and waits for the process to exit.
    pub fn stop(&mut self, sig: &str) {
        let mut p = self.proc.take().expect("not running");
        p.signal(sig);
        p.wait_exit(DEADLINE);
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Open descriptors of process `pid` (entries of /proc/PID/fd).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
