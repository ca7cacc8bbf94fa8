//! Real MongoDB clients: pymongo 4.x from the venv (one-shot or a steady loop), Debian's
//! pymongo 3.11, mongosh; and the URIs they are given.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::pki::Pki;
use crate::proc::{python, repo, tempdir, Proc, DEADLINE};

/// Output of one client run: `ok` and what it printed.
#[derive(Debug)]
pub struct PyResult {
    pub ok: bool,
    pub out: String,
}

impl PyResult {
    fn of(out: Output) -> PyResult {
        PyResult {
            ok: out.status.success(),
            out: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

/// Runs tests/py/client.py with `interpreter` against `uri`.
pub fn pymongo_with(interpreter: &Path, uri: &str, ops: &[&str]) -> PyResult {
    PyResult::of(
        Command::new(interpreter)
            .arg(repo().join("tests/py/client.py"))
            .arg(uri)
            .args(ops)
            .output()
            .unwrap(),
    )
}

/// Runs tests/py/client.py with the venv's pymongo 4.x.
pub fn pymongo(uri: &str, ops: &[&str]) -> PyResult {
    pymongo_with(&python(), uri, ops)
}

/// Runs mongosh (installed by scripts/deps.sh into .deps) with a ping against `uri`.
pub fn mongosh_ping(uri: &str) -> PyResult {
    let bin = repo().join(".deps/mongosh/node_modules/.bin/mongosh");
    assert!(
        bin.exists(),
        "mongosh is missing at {}: run scripts/deps.sh",
        bin.display()
    );
    PyResult::of(
        Command::new(bin)
            .args([
                uri,
                "--quiet",
                "--norc",
                "--eval",
                "JSON.stringify(db.runCommand({ping:1}))",
            ])
            .output()
            .unwrap(),
    )
}

/// A MongoDB URI through moat; `opts` are extra query options.
pub fn uri(host: &str, port: u16, opts: &str) -> String {
    format!("mongodb://{host}:{port}/?directConnection=true&serverSelectionTimeoutMS=4000{opts}")
}

/// Like [`uri`], logged in as alice/secret (see [`crate::Mongo::start_auth`]).
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

/// A pymongo client doing insert + find in a loop (tests/py/steady.py).
pub struct Steady {
    proc: Proc,
    stop: PathBuf,
    _dir: tempfile::TempDir,
}

impl Steady {
    /// Starts the loop against `uri`; returns once the client is connected.
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

/// Runs tests/py/resolve_client.py (client.py with every `*.moat.test` name resolving to
/// 127.0.0.1) with the venv's pymongo 4.x: a driver that dials a node's own name, sends it
/// as SNI and verifies the certificate against it.
pub fn pymongo_resolving(uri: &str, ops: &[&str]) -> PyResult {
    PyResult::of(
        Command::new(python())
            .arg(repo().join("tests/py/resolve_client.py"))
            .arg(uri)
            .args(ops)
            .output()
            .unwrap(),
    )
}
