//! Connecting to the local mongod over TCP or a unix socket.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::UpstreamAddr;
use crate::events;
use crate::wire::header::HEADER_LEN;
use crate::wire::{message, Header, OpCode};

/// An open upstream connection: a byte stream, whichever the transport.
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Calls `$method` on whichever stream this is.
macro_rules! either {
    ($self:ident, $s:ident => $call:expr) => {
        match $self.get_mut() {
            Upstream::Tcp($s) => $call,
            Upstream::Unix($s) => $call,
        }
    };
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Connects within `timeout`, trying each resolved address in turn. The error says which
/// address failed and how.
pub async fn connect(addr: &UpstreamAddr, timeout: Duration) -> io::Result<Upstream> {
    let attempt = async {
        match addr {
            UpstreamAddr::Unix(path) => UnixStream::connect(path).await.map(Upstream::Unix),
            UpstreamAddr::Tcp { addrs, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    match TcpStream::connect(a).await {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Upstream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect timed out after {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}

/// The largest hello reply the topology probe reads.
const MAX_HELLO_REPLY: usize = 1 << 20;

/// Why the topology probe learnt nothing (it is advice: moat serves either way).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the upstream's hello reply is not a MongoDB reply: {0}")]
    Reply(String),
}

/// What the upstream's `hello` says about its replica set: `hosts` and `me`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    pub hosts: Vec<String>,
    pub me: Option<String>,
}

impl Advertised {
    /// The advertised members that are the upstream address itself: drivers that discover
    /// the set from `hello` would connect there, around moat. With `resolve`, names are
    /// looked up too (a blocking lookup: `moat check` only); without, only the upstream's
    /// own name and IP literals match (the data path).
    pub fn naming(&self, addr: &UpstreamAddr, resolve: bool) -> Vec<String> {
        let UpstreamAddr::Tcp { name, addrs } = addr else {
            return Vec::new();
        };
        let is_upstream = |h: &str| {
            if h.eq_ignore_ascii_case(name) {
                return true;
            }
            if let Ok(a) = h.parse::<std::net::SocketAddr>() {
                return addrs.contains(&a);
            }
            resolve
                && h.to_socket_addrs()
                    .map(|mut resolved| resolved.any(|a| addrs.contains(&a)))
                    .unwrap_or(false)
        };
        let mut found: Vec<String> = self
            .hosts
            .iter()
            .chain(self.me.iter())
            .filter(|h| is_upstream(h))
            .cloned()
            .collect();
        found.sort();
        found.dedup();
        found
    }
}

/// Asks the upstream for its `hello` (blocking: a start-up and `moat check` probe, never
/// on the data path) and returns the replica-set members it advertises.
pub fn advertised(addr: &UpstreamAddr, timeout: Duration) -> Result<Advertised, ProbeError> {
    use std::io::{Read, Write};
    let mut stream: Box<dyn ReadWrite> = match addr {
        UpstreamAddr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Box::new(s)
        }
        UpstreamAddr::Tcp { addrs, .. } => {
            let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
            let mut connected = None;
            for a in addrs {
                match std::net::TcpStream::connect_timeout(a, timeout) {
                    Ok(s) => {
                        connected = Some(s);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let s = connected.ok_or(last)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Box::new(s)
        }
    };
    stream.write_all(&hello_request())?;
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head)?;
    let header = Header::parse(&head).map_err(|e| ProbeError::Reply(e.to_string()))?;
    if header.length > MAX_HELLO_REPLY {
        return Err(ProbeError::Reply(format!("{} bytes", header.length)));
    }
    let mut message = head.to_vec();
    message.resize(header.length, 0);
    stream.read_exact(&mut message[HEADER_LEN..])?;
    let parsed = message::parse(&message).map_err(|e| ProbeError::Reply(e.to_string()))?;
    let doc = parsed
        .reply()
        .ok_or_else(|| ProbeError::Reply("no reply document".into()))?;
    let hosts = doc
        .get_array("hosts")
        .map(|a| {
            a.into_iter()
                .filter_map(|v| v.ok()?.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let me = doc.get_str("me").ok().map(str::to_string);
    Ok(Advertised { hosts, me })
}

/// A stream the blocking probe can use, TCP or unix.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// `{hello: 1, $db: "admin"}` as an OP_MSG.
fn hello_request() -> Vec<u8> {
    let mut body = Vec::new();
    // A fixed document: serialising it cannot fail.
    let _ = bson::doc! { "hello": 1, "$db": "admin" }.to_writer(&mut body);
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + body.len());
    Header {
        length: HEADER_LEN + 5 + body.len(),
        request_id: 1,
        response_to: 0,
        op_code: OpCode::Msg,
    }
    .write(&mut out);
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    out.extend_from_slice(&body);
    out
}

/// Warns, once per process, when a hello reply the inspector saw names the upstream
/// address itself among the replica set's members.
pub fn warn_once_if_self_advertised(
    members: Vec<String>,
    addr: &UpstreamAddr,
    warned: &AtomicBool,
) {
    if warned.load(Ordering::Relaxed) {
        return;
    }
    let advertised = Advertised {
        hosts: members,
        me: None,
    };
    let named = advertised.naming(addr, false);
    if !named.is_empty() && !warned.swap(true, Ordering::Relaxed) {
        events::upstream_self_advertised(&addr.to_string(), &named);
    }
}
