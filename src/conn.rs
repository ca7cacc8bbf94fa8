//! One client connection's life: sniff the first bytes → apply the SSL mode → terminate
//! TLS → connect upstream → copy bytes → log the end.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use crate::config::ClientCertificates;
use crate::events::{self, TlsSummary};
use crate::firewall::{self, Verdict};
use crate::inspect::InspectTap;
use crate::io::Prefixed;
use crate::policy::{self, Action, RejectReason, Transport};
use crate::proxy;
use crate::proxy_header;
use crate::registry::{Conn, Kind, TlsInfo};
use crate::state::{Settings, Shared};
use crate::tls;
use crate::upstream::{self, Upstream};
use crate::wire::{reply, Header, WireError};

/// First read when sniffing: a whole ClientHello or first MongoDB message usually fits.
const SNIFF_BUF: usize = 4096;

/// Most bytes of a plaintext client's first message read before answering "TLS required".
const REQUIRE_TLS_READ_MAX: usize = 64 * 1024;

/// How long to wait for a refused plaintext client to close after the error reply.
const REQUIRE_TLS_LINGER: Duration = Duration::from_secs(2);

/// What a requireSSL server tells a plaintext client.
pub const TLS_REQUIRED_MESSAGE: &str = "This MongoDB server requires TLS (moat mode requireSSL): \
reconnect with TLS enabled, e.g. mongodb://HOST:PORT/?tls=true (add tlsCAFile=ca.pem if the \
server certificate is signed by a private CA)";

/// Why a connection ended early.
#[derive(Debug)]
enum ConnError {
    HandshakeTimeout,
    Refused(RejectReason),
    NotMongoDb(String),
    NoCertificates,
    Tls(io::Error),
    Upstream(io::Error),
    UntrustedProxyHeader,
    Io(io::Error),
}

/// Keeps the connection counted and listed for its lifetime, and logs its end however it
/// ends (including when the task is dropped at shutdown).
struct OpenGuard<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    id: u64,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
        let open = self.shared.close_connection();
        events::ended(self.peer, self.id, open);
    }
}

/// A socket address with an IPv4-mapped IPv6 address written as IPv4.
pub fn normalize_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(firewall::normalize(a.ip()), a.port())
}

/// Serves one accepted TCP connection to its end. From a `trusted` load balancer, the
/// PROXY header is read first and the firewall judges the client it names.
pub async fn handle(mut tcp: TcpStream, peer: SocketAddr, trusted: bool, shared: Arc<Shared>) {
    let settings = shared.settings_full();
    let deadline = Instant::now() + settings.handshake_timeout;
    let peer = normalize_addr(peer);
    let (peer, first) = if trusted {
        match proxy_header::read(&mut tcp, settings.proxy_protocol, deadline).await {
            Ok((source, rest)) => {
                let client = source.map_or(peer, normalize_addr);
                if shared.firewall().check(client.ip()) == Verdict::Deny {
                    shared.metrics.rejected(RejectReason::Firewall);
                    if shared.refusal_log.allow() {
                        events::refused_firewall(client);
                    }
                    return;
                }
                (client, rest)
            }
            Err(why) => {
                shared.metrics.rejected(RejectReason::ProxyHeader);
                if shared.refusal_log.allow() {
                    events::refused_proxy_header(peer, &why);
                }
                return;
            }
        }
    } else {
        (peer, Vec::new())
    };
    let (id, open) = shared.open_connection();
    let conn = shared.registry.insert(id, peer, Kind::Client);
    let _guard = OpenGuard {
        shared: &shared,
        peer,
        id,
    };
    events::accepted(peer, id, open);
    if let Err(e) = serve(tcp, first, deadline, &conn, &shared, &settings).await {
        if let Some(reason) = e.reason() {
            shared.metrics.rejected(reason);
        }
        log(e, id, peer, &settings);
    }
}

impl ConnError {
    /// The `moat_connections_rejected_total` reason, for errors before forwarding began.
    fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            ConnError::HandshakeTimeout => RejectReason::HandshakeTimeout,
            ConnError::Refused(r) => *r,
            // A plaintext client that is not MongoDB, while TLS is required.
            ConnError::NotMongoDb(_) => RejectReason::TlsRequired,
            ConnError::NoCertificates | ConnError::Tls(_) => RejectReason::TlsError,
            ConnError::Upstream(_) => RejectReason::UpstreamUnavailable,
            ConnError::UntrustedProxyHeader => RejectReason::ProxyHeader,
            ConnError::Io(_) => return None,
        })
    }
}

fn log(e: ConnError, id: u64, peer: SocketAddr, settings: &Settings) {
    match e {
        ConnError::HandshakeTimeout => {
            events::handshake_timeout(id, peer, settings.handshake_timeout)
        }
        ConnError::Refused(RejectReason::TlsRequired) => events::refused_tls_required(id, peer),
        ConnError::Refused(_) => events::refused_tls_disabled(id, peer),
        ConnError::NotMongoDb(why) => events::not_mongodb(id, peer, &why),
        ConnError::NoCertificates => events::tls_failed(
            id,
            peer,
            &"no certificate is configured ([[tls.domains]] is empty)",
        ),
        ConnError::Tls(e) => events::tls_failed(id, peer, &tls::explain(&e)),
        ConnError::Upstream(e) => {
            events::upstream_unavailable(id, &settings.upstream.to_string(), &e)
        }
        ConnError::UntrustedProxyHeader => events::refused_proxy_header(
            peer,
            "PROXY protocol header from a source not in listen.proxy_protocol_from",
        ),
        ConnError::Io(e) => events::connection_error(id, peer, &e),
    }
}

async fn serve(
    mut tcp: TcpStream,
    first: Vec<u8>,
    deadline: Instant,
    conn: &Arc<Conn>,
    shared: &Shared,
    settings: &Settings,
) -> Result<(), ConnError> {
    let id = conn.id;
    // Nagle would delay every small MongoDB reply by up to 40 ms against delayed ACKs.
    tcp.set_nodelay(true).map_err(ConnError::Io)?;
    let (first, transport) = match timeout_at(deadline, sniff(&mut tcp, first)).await {
        Err(_) => return Err(ConnError::HandshakeTimeout),
        Ok(Err(e)) => return Err(ConnError::Io(e)),
        // Closed before saying anything: a port check, not an error.
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(sniffed))) => sniffed,
    };
    conn.set_transport(transport);
    if proxy_header::looks_like_header(&first) {
        return Err(ConnError::UntrustedProxyHeader);
    }
    match policy::decide(shared.mode(), transport) {
        Action::AcceptTls => {
            let tls = shared.tls().ok_or(ConnError::NoCertificates)?;
            let started = std::time::Instant::now();
            let accept = TlsAcceptor::from(tls.server.clone()).accept(Prefixed::new(first, tcp));
            let handshake = timeout_at(deadline, accept)
                .await
                .map_err(|_| ConnError::HandshakeTimeout)
                .and_then(|r| r.map_err(ConnError::Tls));
            let mut stream = match handshake {
                Ok(s) => s,
                Err(e) => {
                    shared
                        .metrics
                        .tls_handshake(false, false, started.elapsed());
                    return Err(e);
                }
            };
            let (_, session) = stream.get_ref();
            shared
                .metrics
                .tls_handshake(true, tls::resumed(session), started.elapsed());
            let sni = session.server_name();
            let domain = &tls.resolver.select(sni).name;
            let client = session
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(tls::certs::subject_rfc2253);
            events::tls_established(
                id,
                &TlsSummary {
                    version: tls::version_name(session),
                    cipher: tls::cipher_name(session),
                    sni,
                    domain,
                    resumed: tls::resumed(session),
                    client: client.as_deref(),
                },
            );
            if client.is_none() && tls.client_certificates != ClientCertificates::None {
                events::no_peer_certificate(id);
            }
            let _ = conn.tls.set(TlsInfo {
                sni: sni.map(str::to_string),
                domain: domain.clone(),
                client_subject: client,
            });
            drop(tls);
            let upstream = connect_upstream(shared, settings).await?;
            shared.metrics.accepted(transport);
            forward(&mut stream, upstream, conn, shared, settings.inspect).await
        }
        Action::ForwardPlaintext => {
            let upstream = connect_upstream(shared, settings).await?;
            shared.metrics.accepted(transport);
            let mut client = Prefixed::new(first, tcp);
            forward(&mut client, upstream, conn, shared, settings.inspect).await
        }
        Action::ReplyTlsRequired => {
            reply_tls_required(tcp, first, deadline).await?;
            Err(ConnError::Refused(RejectReason::TlsRequired))
        }
        Action::Refuse(reason) => Err(ConnError::Refused(reason)),
    }
}

/// Reads until the first bytes (after `buf`, already read) tell TLS from plaintext.
/// `None` if the client closed first.
async fn sniff(tcp: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Option<(Vec<u8>, Transport)>> {
    buf.reserve(SNIFF_BUF);
    loop {
        if let Some(t) = policy::classify(&buf) {
            return Ok(Some((buf, t)));
        }
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn connect_upstream(shared: &Shared, settings: &Settings) -> Result<Upstream, ConnError> {
    let started = std::time::Instant::now();
    let r = upstream::connect(&settings.upstream, settings.connect_timeout).await;
    shared.readiness.record(r.as_ref().map(|_| ()));
    if r.is_ok() {
        shared.metrics.upstream_connected(started.elapsed());
    }
    r.map_err(ConnError::Upstream)
}

async fn forward<C>(
    client: &mut C,
    upstream: Upstream,
    conn: &Arc<Conn>,
    shared: &Shared,
    inspect: bool,
) -> Result<(), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (i, o) = (&conn.bytes_in, &conn.bytes_out);
    let tap: proxy::TapSlot<'_> = if inspect {
        Some(Box::new(InspectTap::new(
            conn.clone(),
            conn.remote,
            &shared.metrics,
        )))
    } else {
        None
    };
    let r = match upstream {
        Upstream::Tcp(mut s) => proxy::run(client, &mut s, i, o, tap).await,
        Upstream::Unix(mut s) => proxy::run(client, &mut s, i, o, tap).await,
    };
    r.map(|_| ()).map_err(|(e, _)| ConnError::Io(e))
}

/// requireSSL and a plaintext client: answer its first message with a MongoDB error
/// (`ok: 0`, code 141 SSLHandshakeFailed) so the driver shows why, then close cleanly.
async fn reply_tls_required(
    mut tcp: TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> Result<(), ConnError> {
    let header = loop {
        match Header::parse(&buf) {
            Ok(h) => break h,
            Err(WireError::Invalid(why)) => return Err(ConnError::NotMongoDb(why)),
            Err(WireError::Incomplete { .. }) => read_more(&mut tcp, &mut buf, deadline).await?,
        }
    };
    // Take in the whole request: closing a socket with unread input sends a reset, which
    // could destroy the reply before the client reads it.
    while buf.len() < header.length.min(REQUIRE_TLS_READ_MAX) {
        read_more(&mut tcp, &mut buf, deadline).await?;
    }
    drop(buf);
    let body = reply::error_document(
        reply::SSL_HANDSHAKE_FAILED,
        "SSLHandshakeFailed",
        TLS_REQUIRED_MESSAGE,
    );
    let out = reply::reply_to(&header, 0, &body);
    let send = async {
        tcp.write_all(&out).await?;
        tcp.shutdown().await
    };
    timeout_at(deadline, send)
        .await
        .map_err(|_| ConnError::HandshakeTimeout)?
        .map_err(ConnError::Io)?;
    // Let the client read the reply and close first; discard whatever else it sends.
    let _ = timeout(REQUIRE_TLS_LINGER, async {
        let mut sink = [0u8; 512];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

async fn read_more(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), ConnError> {
    buf.reserve(SNIFF_BUF);
    match timeout_at(deadline, tcp.read_buf(buf)).await {
        Err(_) => Err(ConnError::HandshakeTimeout),
        Ok(Err(e)) => Err(ConnError::Io(e)),
        Ok(Ok(0)) => Err(ConnError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(Ok(_)) => Ok(()),
    }
}
