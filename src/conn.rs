//! One client connection's life: sniff the first bytes → apply the SSL mode → terminate
//! TLS → connect upstream → copy bytes → log the end.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsAcceptor;

use crate::config::{self, ClientCertificates};
use crate::events::{self, TlsSummary};
use crate::firewall::{self, Verdict};
use crate::inspect::InspectTap;
use crate::policy::{self, Action, RejectReason, Transport};
use crate::prefixed::Prefixed;
use crate::proxy::{self, CopyError};
use crate::proxy_protocol;
use crate::registry::{Conn, Kind, TlsInfo};
use crate::shared::{Settings, Shared};
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
    /// requireSSL: the plaintext client went away before its error reply was sent.
    TlsRequiredCut(io::Error),
    /// Forwarding ended after `listen.idle_timeout` without a byte.
    Idle(Duration),
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

/// Turns on TCP keepalive: probes start after `time` without a byte from the peer, every
/// [`config::keepalive_interval`], and after [`config::KEEPALIVE_PROBES`] unanswered ones
/// the kernel fails the socket, so a peer that vanished without FIN or RST is noticed.
pub fn enable_keepalive(socket: &impl AsFd, time: Duration) -> io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(time)
        .with_interval(config::keepalive_interval(time))
        .with_retries(config::KEEPALIVE_PROBES);
    SockRef::from(socket).set_tcp_keepalive(&params)
}

/// Serves one accepted TCP connection to its end. From a `trusted` load balancer, the
/// PROXY header is read first and the firewall judges the client it names.
pub async fn handle(mut tcp: TcpStream, peer: SocketAddr, trusted: bool, shared: Arc<Shared>) {
    let settings = shared.settings_full();
    let deadline = Instant::now() + settings.handshake_timeout;
    let peer = normalize_addr(peer);
    // Before anything else, so that a client gone silent even mid-handshake is noticed.
    // A socket that cannot take the option is already dead: let the reads below say how.
    let _ = enable_keepalive(&tcp, settings.tcp_keepalive);
    let (peer, first) = if trusted {
        // A load balancer's TCP health check connects and leaves without a byte: not a
        // bad PROXY header, just a client that never spoke.
        if let Ok(true) = timeout_at(deadline, left_without_a_byte(&tcp)).await {
            shared.metrics.closed_before_speaking();
            return;
        }
        match proxy_protocol::read(&mut tcp, settings.proxy_protocol, deadline).await {
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
        if let ConnError::Idle(_) = e {
            shared.metrics.idle_closed();
        }
        log(e, id, peer, &settings);
    }
}

/// Whether a fresh connection ended (FIN or RST) before its first byte. Waits for that
/// byte without consuming it; other errors are left to the reads that follow.
async fn left_without_a_byte(tcp: &TcpStream) -> bool {
    let mut one = [0u8; 1];
    match tcp.peek(&mut one).await {
        Ok(n) => n == 0,
        Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
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
            ConnError::TlsRequiredCut(_) => RejectReason::TlsRequired,
            ConnError::Idle(_) | ConnError::Io(_) => return None,
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
        ConnError::TlsRequiredCut(e) => events::refused_tls_required_cut(id, peer, &e),
        ConnError::Idle(after) => events::idle_closed(id, peer, after),
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
        Ok(Ok(None)) => {
            shared.metrics.closed_before_speaking();
            return Ok(());
        }
        Ok(Ok(Some(sniffed))) => sniffed,
    };
    conn.set_transport(transport);
    if proxy_protocol::looks_like_header(&first) {
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
            forward(&mut stream, upstream, conn, shared, settings).await
        }
        Action::ForwardPlaintext => {
            let upstream = connect_upstream(shared, settings).await?;
            shared.metrics.accepted(transport);
            let mut client = Prefixed::new(first, tcp);
            forward(&mut client, upstream, conn, shared, settings).await
        }
        Action::ReplyTlsRequired => {
            reply_tls_required(tcp, first, deadline).await?;
            Err(ConnError::Refused(RejectReason::TlsRequired))
        }
        Action::Refuse(reason) => Err(ConnError::Refused(reason)),
    }
}

/// Reads until the first bytes (after `buf`, already read) tell TLS from plaintext.
/// `None` if the client closed (FIN or RST) without sending a byte.
async fn sniff(tcp: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Option<(Vec<u8>, Transport)>> {
    buf.reserve(SNIFF_BUF);
    loop {
        if let Some(t) = policy::classify(&buf) {
            return Ok(Some((buf, t)));
        }
        let silent = buf.is_empty();
        match tcp.read_buf(&mut buf).await {
            Ok(0) if silent => return Ok(None),
            Err(e) if silent && e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed after {} bytes, too few to tell TLS from MongoDB",
                        buf.len()
                    ),
                ))
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
}

async fn connect_upstream(shared: &Shared, settings: &Settings) -> Result<Upstream, ConnError> {
    let started = std::time::Instant::now();
    let r = upstream::connect(&settings.upstream, settings.connect_timeout).await;
    shared.readiness.record(r.as_ref().map(|_| ()));
    let upstream = r.map_err(ConnError::Upstream)?;
    shared.metrics.upstream_connected(started.elapsed());
    if let Upstream::Tcp(s) = &upstream {
        // mongod on another host (or its host gone) must not pin the client forever.
        enable_keepalive(s, settings.tcp_keepalive).map_err(ConnError::Upstream)?;
    }
    Ok(upstream)
}

async fn forward<C>(
    client: &mut C,
    upstream: Upstream,
    conn: &Arc<Conn>,
    shared: &Shared,
    settings: &Settings,
) -> Result<(), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let (i, o) = (&conn.bytes_in, &conn.bytes_out);
    let idle = settings.idle_timeout;
    let tap: proxy::TapSlot<'_> = if settings.inspect {
        Some(Box::new(InspectTap::new(
            conn.clone(),
            conn.remote,
            &shared.metrics,
        )))
    } else {
        None
    };
    let r = match upstream {
        Upstream::Tcp(mut s) => proxy::run(client, &mut s, i, o, tap, idle).await,
        Upstream::Unix(mut s) => proxy::run(client, &mut s, i, o, tap, idle).await,
    };
    r.map(|_| ()).map_err(|(e, _)| match e {
        CopyError::Io(e) => ConnError::Io(e),
        CopyError::Idle(after) => ConnError::Idle(after),
    })
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
        .map_err(ConnError::TlsRequiredCut)?;
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
        Ok(Err(e)) => Err(ConnError::TlsRequiredCut(e)),
        Ok(Ok(0)) => Err(ConnError::TlsRequiredCut(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed after {} of its first message's bytes", buf.len()),
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keepalive_probes_start_after_the_time_and_follow_the_documented_schedule() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        assert!(!SockRef::from(&c).keepalive().unwrap(), "off by default");
        // (time, interval): a tenth of the time, at least 1 s; always 5 probes.
        for (time, interval) in [(120, 12), (1, 1), (15, 1), (25, 2), (7200, 720)] {
            enable_keepalive(&c, Duration::from_secs(time)).unwrap();
            let s = SockRef::from(&c);
            assert!(s.keepalive().unwrap());
            assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(time));
            assert_eq!(
                s.tcp_keepalive_interval().unwrap(),
                Duration::from_secs(interval)
            );
            assert_eq!(s.tcp_keepalive_retries().unwrap(), 5);
        }
    }
}
