//! Paths the tests need (the repository, the Python venv, the `moat` binary, temporary
//! directories) and child processes whose output is collected line by line, so a test waits
//! for a line instead of sleeping.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Long enough for a cold CI machine, short enough to fail a hung test.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The repository's root (this crate lives in `tests/support`).
pub fn repo() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("{} is not inside the repository", here.display()))
        .to_path_buf()
}

/// Cargo's output directory for this build profile (`target/debug`). A test binary runs from
/// its `deps/` folder; `env!("CARGO_BIN_EXE_moat")` and `CARGO_TARGET_TMPDIR` exist only
/// while an integration test itself compiles, not this library, hence the derivation.
fn profile_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let deps = exe.parent().filter(|d| d.ends_with("deps"));
        deps.and_then(Path::parent)
            .unwrap_or_else(|| {
                panic!(
                    "{}: not a test binary in cargo's target/<profile>/deps; run the tests with cargo test",
                    exe.display()
                )
            })
            .to_path_buf()
    })
}

/// The `moat` binary cargo built for these tests (it builds a package's binaries before its
/// integration tests): `target/<profile>/moat`.
pub fn moat_bin() -> PathBuf {
    let bin = profile_dir().join("moat");
    assert!(
        bin.exists(),
        "no moat binary at {}: run the integration tests with cargo test, which builds it",
        bin.display()
    );
    bin
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

/// The venv's Python (pymongo 4.x, secantusdb).
pub fn python() -> PathBuf {
    venv().join("bin/python")
}

/// A fresh temporary directory under `target/tmp` (where `CARGO_TARGET_TMPDIR` points).
pub fn tempdir() -> tempfile::TempDir {
    let base = profile_dir().with_file_name("tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::Builder::new()
        .prefix("moat-it-")
        .tempdir_in(base)
        .expect("tempdir")
}

/// Replaces `path` as an editor or a config tool does: a temporary file beside it, then a
/// rename, so that a reader never sees it empty or half-written.
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
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

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.all().iter().filter(|l| l.contains(needle)).count()
    }
}

/// A child process with its stdout and stderr collected into [`Lines`]; killed on drop.
pub struct Proc {
    pub child: Child,
    pub lines: Lines,
}

impl Proc {
    /// Spawns `cmd` with stdin closed.
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

    /// Sends the signal `sig` (a name such as `TERM` or `HUP`).
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
