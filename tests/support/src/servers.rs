//! The servers a test runs: moat itself ([`Moat`], started on a config from [`config`] or
//! written by hand), a secantusdb upstream ([`Mongo`]), an echoing stand-in upstream
//! ([`Recorder`]) and an address that refuses connections ([`closed_port`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::pki::Pki;
use crate::proc::{moat_bin, python, repo, tempdir, venv, Lines, Proc, DEADLINE};

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

    /// `127.0.0.1:PORT`.
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

/// Firewall rules that admit loopback clients. moat refuses every source no rule allows, so
/// [`config`] and [`config_with`] end with these; a hand-written config says so itself.
pub const ALLOW_LOOPBACK: &str = "\n[[firewall.rules]]\ncidr = \"127.0.0.0/8\"\ndescription = \"tests on loopback\"\n\n[[firewall.rules]]\ncidr = \"::1/128\"\ndescription = \"tests on loopback (IPv6)\"\n";

/// `[admin] socket = "admin.sock"` (next to the config file).
pub const ADMIN: &str = "[admin]\nsocket = \"admin.sock\"\n";

/// A config for tests: listen on 127.0.0.1:0, forward to `upstream`, admit loopback.
pub fn config(upstream: &str, mode: &str, pki: &Pki, extra_listen: &str) -> String {
    config_with(upstream, mode, pki, extra_listen, "")
}

/// [`config`] plus `sections` (e.g. `[admin]`, `[[egress]]`), then [`ALLOW_LOOPBACK`].
pub fn config_with(
    upstream: &str,
    mode: &str,
    pki: &Pki,
    extra_listen: &str,
    sections: &str,
) -> String {
    config_without_loopback(upstream, mode, pki, extra_listen, sections) + ALLOW_LOOPBACK
}

/// [`config_with`] without [`ALLOW_LOOPBACK`]: the firewall is whatever `sections` say (no
/// rule at all refuses every client).
pub fn config_without_loopback(
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

impl Moat {
    /// Runs moat on `config`, exactly as written (see [`ALLOW_LOOPBACK`]).
    pub fn start(config: &str) -> Moat {
        let dir = tempdir();
        std::fs::write(dir.path().join("moat.toml"), config).unwrap();
        Self::start_in(dir)
    }

    /// Runs moat on `dir/moat.toml`, already written.
    pub fn start_in(dir: tempfile::TempDir) -> Moat {
        let path = dir.path().join("moat.toml");
        let proc =
            Proc::spawn(Command::new(moat_bin()).args(["run", "--config", path.to_str().unwrap()]));
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

    /// The port moat listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// What moat printed.
    pub fn lines(&self) -> &Lines {
        &self.proc.lines
    }

    /// The config file moat runs on (and `moat ctl` persists into).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("moat.toml")
    }

    /// The admin socket, when the config has [`ADMIN`].
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Runs `moat ctl --socket ... ARGS`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(moat_bin())
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

/// Runs `moat check --config PATH`: (exit code, stderr).
pub fn moat_check(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(moat_bin())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stand-in upstream that echoes and counts the connections that reach it.
pub struct Recorder {
    pub addr: SocketAddr,
    count: Arc<AtomicUsize>,
}

impl Recorder {
    /// Listens on 127.0.0.1:random, serving each connection on its own thread.
    pub fn start() -> Recorder {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
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
        self.count.load(Ordering::SeqCst)
    }
}

/// A loopback address that refuses connections: a socket bound to it that never listens,
/// held as long as this lives so nothing else can take the port meanwhile. Bound without
/// `SO_REUSEADDR` (which `TcpListener::bind` sets), so no other socket can share it.
pub struct ClosedPort {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

/// A loopback port nothing listens on, for as long as the result lives.
pub fn closed_port() -> ClosedPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    ClosedPort {
        _socket: socket,
        addr,
    }
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
