//! The admin socket: a unix socket, mode 0600, speaking one JSON object per line each way.
//!
//! Only the user moat runs as (or root) may talk to it: the file mode says so, and each
//! connection's peer credentials are checked as well. Requests are capped in size and
//! must arrive within a deadline; a malformed one gets `{"ok":false,"error":...}`.

pub mod client;
pub mod ops;
pub mod persist;
pub mod protocol;
pub mod renew;
pub mod watch;

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};

use crate::events;
use crate::shutdown::Shutdown;
use ops::Control;
use protocol::{Failure, Reply, Request};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send a request (and may stay idle between requests).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// Creates the socket. A stale socket file left by a crash is replaced; a socket that a
/// live process still serves is not, and neither is a file that is not a socket.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{} is in use by a running process (another moat?)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                ),
            ))
        }
        Err(_) => {}
    }
    // The socket file is created with mode 0600 from the start, not chmod-ed later.
    // SAFETY: umask only swaps the process file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves admin connections until shutdown, then removes the socket file.
pub async fn serve(listener: UnixListener, control: Arc<Control>, shutdown: Shutdown) {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    loop {
        let stream = tokio::select! {
            _ = shutdown.requested() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    events::admin_error(&e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let control = control.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &control).await {
                events::admin_error(&e);
            }
        });
    }
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

fn allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    matches!(stream.peer_cred(), Ok(c) if c.uid() == me || c.uid() == 0)
}

/// Writes one reply line. A client that does not take it within [`REQUEST_DEADLINE`]
/// (it sends requests and never reads) is closed, not waited for.
async fn send(w: &mut OwnedWriteHalf, reply: &Result<Reply, Failure>) -> io::Result<()> {
    let mut line = protocol::encode(reply);
    line.push('\n');
    tokio::time::timeout(REQUEST_DEADLINE, w.write_all(line.as_bytes()))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "a client did not read its reply within 10s; closing",
            )
        })?
}

/// Answers with `why`, then closes; the error makes the caller log it.
async fn refuse(w: &mut OwnedWriteHalf, why: &str) -> io::Result<()> {
    send(w, &Err(Failure::new(why))).await?;
    Err(io::Error::new(io::ErrorKind::InvalidData, why.to_string()))
}

/// `bad request: ...` for a line that is not a request.
fn parse(line: &[u8]) -> Result<Request, Failure> {
    std::str::from_utf8(line)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(s.trim()).map_err(|e| e.to_string()))
        .map_err(|e| Failure::new(format!("bad request: {e}")))
}

async fn handle(stream: UnixStream, control: &Control) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    if !allowed(w.as_ref()) {
        let refusal = Failure::new(
            "permission denied: only moat's own user or root may use the admin socket",
        );
        return send(&mut w, &Err(refusal)).await;
    }
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut r).take(MAX_REQUEST as u64 + 1);
        let read = limited.read_until(b'\n', &mut line);
        let n = match tokio::time::timeout(REQUEST_DEADLINE, read).await {
            Err(_) => return refuse(&mut w, "no complete request line within 10s; closing").await,
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_REQUEST {
            return refuse(&mut w, "request longer than 64 KiB; closing").await;
        }
        let reply = match parse(&line) {
            Ok(request) => control.handle(request).await,
            Err(bad) => Err(bad),
        };
        send(&mut w, &reply).await?;
    }
}
