//! One client connection's life: sniff the first bytes → apply the SSL mode → terminate
//! TLS → connect upstream → copy bytes → log the end.
//!
//! [`serve`] works on any byte stream and gets its upstream from a [`Dial`], so the
//! decisions on the way (sniffing, the mode's four rows, the handshake deadline) are unit
//! tested on in-memory streams; [`handle`] adds what only a TCP socket has.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use crate::config::{self, ClientCertificates};
use crate::events::{self, TlsSummary};
use crate::firewall::normalize_addr;
use crate::inspect::{InspectTap, Watch};
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

/// What a client waiting for its first reply is told when moat cannot connect to mongod.
/// The address and the OS error stay in moat's log: an unauthenticated client learns only
/// that the node is down.
pub const UPSTREAM_UNREACHABLE_MESSAGE: &str = "moat cannot reach the mongod behind it \
(upstream unavailable, see moat's log): this connection is closed, retry later";

/// What a requireSSL server tells a plaintext client.
pub const TLS_REQUIRED_MESSAGE: &str = "This MongoDB server requires TLS (moat mode requireSSL): \
reconnect with TLS enabled, e.g. mongodb://HOST:PORT/?tls=true (add tlsCAFile=ca.pem if the \
server certificate is signed by a private CA)";

/// Why a connection ended early.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error("no complete TLS or MongoDB handshake in time")]
    HandshakeTimeout,
    #[error("refused ({})", .0.as_str())]
    Refused(RejectReason),
    #[error("first bytes are not a MongoDB message ({0})")]
    NotMongoDb(String),
    #[error("no certificate is configured ([[tls.domains]] is empty)")]
    NoCertificates,
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    /// `answered`: the client's first message got a HostUnreachable reply before the close.
    #[error("cannot reach the upstream: {error}")]
    Upstream { error: io::Error, answered: bool },
    #[error("PROXY protocol header from a source not in listen.proxy_protocol_from")]
    UntrustedProxyHeader,
    /// requireSSL: the plaintext client went away before its error reply was sent.
    #[error("gone before the TLS-required reply was sent: {0}")]
    TlsRequiredCut(io::Error),
    /// Forwarding ended after `listen.idle_timeout` without a byte.
    #[error("idle for {0:?}")]
    Idle(Duration),
    #[error("{0}")]
    Io(io::Error),
}

impl ConnError {
    /// The upstream could not be reached (the client not answered yet).
    pub fn unreachable(error: io::Error) -> ConnError {
        ConnError::Upstream {
            error,
            answered: false,
        }
    }

    /// The `moat_connections_rejected_total` reason, for errors before forwarding began.
    fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            ConnError::HandshakeTimeout => RejectReason::HandshakeTimeout,
            ConnError::Refused(r) => *r,
            // A plaintext client that is not MongoDB, while TLS is required.
            ConnError::NotMongoDb(_) => RejectReason::TlsRequired,
            ConnError::NoCertificates | ConnError::Tls(_) => RejectReason::TlsError,
            ConnError::Upstream { .. } => RejectReason::UpstreamUnavailable,
            ConnError::UntrustedProxyHeader => RejectReason::ProxyHeader,
            ConnError::TlsRequiredCut(_) => RejectReason::TlsRequired,
            ConnError::Idle(_) | ConnError::Io(_) => return None,
        })
    }

    /// Counts and logs how the connection ended.
    fn report(self, id: u64, peer: SocketAddr, shared: &Shared, settings: &Settings) {
        if let Some(reason) = self.reason() {
            shared.metrics.rejected(reason);
        }
        match self {
            ConnError::HandshakeTimeout => {
                events::handshake_timeout(id, peer, settings.handshake_timeout)
            }
            ConnError::Refused(reason) => match reason {
                RejectReason::TlsRequired => events::refused_tls_required(id, peer),
                RejectReason::TlsDisabled => events::refused_tls_disabled(id, peer),
                // Not decided by the mode: these are refused (and logged) before a
                // connection exists. Named one by one so a new reason needs a line here.
                RejectReason::Firewall
                | RejectReason::Limit
                | RejectReason::HandshakeTimeout
                | RejectReason::TlsError
                | RejectReason::ProxyHeader
                | RejectReason::UpstreamUnavailable
                | RejectReason::AuthThrottled => events::refused(id, peer, reason.as_str()),
            },
            ConnError::NotMongoDb(why) => events::not_mongodb(id, peer, &why),
            ConnError::NoCertificates => events::tls_failed(
                id,
                peer,
                &"no certificate is configured ([[tls.domains]] is empty)",
            ),
            ConnError::Tls(e) => events::tls_failed(id, peer, &tls::explain(&e)),
            ConnError::Upstream { error, answered } => {
                events::upstream_unavailable(id, &settings.upstream.to_string(), &error, answered)
            }
            ConnError::UntrustedProxyHeader => events::refused_proxy_header(
                peer,
                &"PROXY protocol header from a source not in listen.proxy_protocol_from",
            ),
            ConnError::TlsRequiredCut(e) => events::refused_tls_required_cut(id, peer, &e),
            ConnError::Idle(after) => {
                shared.metrics.idle_closed();
                events::idle_closed(id, peer, after)
            }
            ConnError::Io(e) => events::connection_error(id, peer, &e),
        }
    }
}

/// Keeps the connection counted, listed and holding its `max_connections` slot for its
/// lifetime, and logs its end however it ends (including when the task is dropped at
/// shutdown).
struct OpenGuard<'a> {
    shared: &'a Shared,
    peer: SocketAddr,
    id: u64,
    slot: Option<OwnedSemaphorePermit>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.shared.registry.remove(self.id);
        let open = self.shared.close_connection();
        // Freed before the line that says so: a client that reads "0 connections now
        // open" and connects again gets the slot.
        drop(self.slot.take());
        events::ended(self.peer, self.id, open);
    }
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

/// Serves one accepted TCP connection to its end, holding `slot` (its place under
/// `max_connections`) until then. From a `trusted` load balancer, the PROXY header is read
/// first and the firewall judges the client it names.
pub async fn handle(
    mut tcp: TcpStream,
    peer: SocketAddr,
    trusted: bool,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) {
    let settings = shared.settings_full();
    let deadline = Instant::now() + settings.handshake_timeout;
    let peer = normalize_addr(peer);
    // Before anything else, so that a client gone silent even mid-handshake is noticed.
    // A socket that cannot take the option is already dead: let the reads below say how.
    let _ = enable_keepalive(&tcp, settings.tcp_keepalive);
    // Nagle would delay every small MongoDB reply by up to 40 ms against delayed ACKs.
    let _ = tcp.set_nodelay(true);
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
                if shared.admit(client).is_err() {
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
        slot: Some(slot),
    };
    events::accepted(peer, id, open);
    let dial = UpstreamDial {
        shared: &shared,
        settings: &settings,
    };
    if let Err(e) = serve(tcp, first, deadline, &conn, &shared, &settings, &dial).await {
        e.report(id, peer, &shared, &settings);
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

/// Where a connection's upstream comes from: mongod in production, an in-memory stream in
/// tests.
pub trait Dial {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send;
    fn dial(&self) -> impl Future<Output = Result<Self::Stream, ConnError>> + Send;
}

/// The configured upstream; each attempt feeds readiness and the connect histogram.
struct UpstreamDial<'a> {
    shared: &'a Shared,
    settings: &'a Settings,
}

impl Dial for UpstreamDial<'_> {
    type Stream = Upstream;

    async fn dial(&self) -> Result<Upstream, ConnError> {
        let (shared, settings) = (self.shared, self.settings);
        let started = std::time::Instant::now();
        let r = upstream::connect(&settings.upstream, settings.connect_timeout).await;
        shared.readiness.record(r.as_ref().map(|_| ()));
        let upstream = r.map_err(ConnError::unreachable)?;
        shared.metrics.upstream_connected(started.elapsed());
        if let Upstream::Tcp(s) = &upstream {
            // mongod on another host (or its host gone) must not pin the client forever.
            enable_keepalive(s, settings.tcp_keepalive).map_err(ConnError::unreachable)?;
        }
        Ok(upstream)
    }
}

/// The connection from its first byte: the four rows of the mode table.
pub async fn serve<S, D>(
    mut client: S,
    first: Vec<u8>,
    deadline: Instant,
    conn: &Arc<Conn>,
    shared: &Shared,
    settings: &Settings,
    dial: &D,
) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    D: Dial,
{
    let (first, transport) = match timeout_at(deadline, sniff(&mut client, first)).await {
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
    let client = Prefixed::new(first, client);
    let inspect = settings.inspect;
    match policy::decide(shared.mode(), transport) {
        Action::AcceptTls => {
            // Boxed: the handshake's state lives on the heap only while it runs, so the
            // connection's task is sized for the copy, not for the handshake.
            let accepted = Box::pin(accept_tls(client, deadline, conn, shared)).await?;
            let Some(mut stream) = accepted else {
                // An ACME CA's tls-alpn-01 check, answered: nothing to forward.
                return Ok(());
            };
            let upstream = match dial.dial().await {
                Ok(u) => u,
                Err(e) => return Err(Box::pin(answer_unreachable(&mut stream, deadline, e)).await),
            };
            shared.metrics.accepted(transport);
            forward(&mut stream, upstream, conn, shared, settings, inspect).await
        }
        Action::PassThroughTls => {
            let mut client = Box::pin(read_client_hello(client, deadline, conn)).await?;
            let upstream = dial.dial().await?;
            shared.metrics.accepted(transport);
            // Encrypted end to end: nothing to inspect.
            forward(&mut client, upstream, conn, shared, settings, false).await
        }
        Action::ForwardPlaintext => {
            let mut client = client;
            let upstream = match dial.dial().await {
                Ok(u) => u,
                Err(e) => return Err(Box::pin(answer_unreachable(&mut client, deadline, e)).await),
            };
            shared.metrics.accepted(transport);
            forward(&mut client, upstream, conn, shared, settings, inspect).await
        }
        Action::ReplyTlsRequired => {
            Box::pin(reply_tls_required(client, deadline)).await?;
            Err(ConnError::Refused(RejectReason::TlsRequired))
        }
        Action::Refuse(reason) => Err(ConnError::Refused(reason)),
    }
}

/// A TLS handshake that ended: a client's, or an ACME CA's tls-alpn-01 check (answered).
// Returned once per connection and moved straight out: boxing the stream would cost every
// client an allocation to save a few hundred bytes of stack in a rare case.
#[allow(clippy::large_enum_variant)]
enum Handshake<S> {
    Client(tokio_rustls::server::TlsStream<S>),
    Challenge(String),
}

/// The handshake. While an ACME tls-alpn-01 challenge is pending, the ClientHello is read
/// first and a CA's check (ALPN `acme-tls/1` for a pending name) gets the challenge
/// certificate; every other client, and every client while nothing is pending (one atomic
/// load), takes the normal path.
async fn handshake<S>(
    client: S,
    shared: &Shared,
    server: &Arc<rustls::ServerConfig>,
) -> io::Result<Handshake<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenges = &shared.acme.challenges;
    if challenges.is_idle() {
        return TlsAcceptor::from(server.clone())
            .accept(client)
            .await
            .map(Handshake::Client);
    }
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client).await?;
    let hello = start.client_hello();
    match challenges.config_for(&hello) {
        Some(config) => {
            let name = hello.server_name().unwrap_or_default().to_string();
            let mut s = start.into_stream(config).await?;
            let _ = s.shutdown().await;
            Ok(Handshake::Challenge(name))
        }
        None => start
            .into_stream(server.clone())
            .await
            .map(Handshake::Client),
    }
}

/// The TLS handshake, within the connection's deadline; logs and records what was agreed.
/// `None` when it was an ACME CA's challenge check, answered.
async fn accept_tls<S>(
    client: S,
    deadline: Instant,
    conn: &Conn,
    shared: &Shared,
) -> Result<Option<tokio_rustls::server::TlsStream<S>>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let tls = shared.tls().ok_or(ConnError::NoCertificates)?;
    let started = std::time::Instant::now();
    let handshake = timeout_at(deadline, handshake(client, shared, &tls.server))
        .await
        .map_err(|_| ConnError::HandshakeTimeout)
        .and_then(|r| r.map_err(ConnError::Tls));
    let stream = match handshake {
        Ok(Handshake::Client(s)) => s,
        Ok(Handshake::Challenge(name)) => {
            events::acme_challenge_answered(Some(conn.id), conn.remote, &name);
            return Ok(None);
        }
        Err(e) => {
            shared
                .metrics
                .tls_handshake(false, false, started.elapsed());
            return Err(e);
        }
    };
    let (_, session) = stream.get_ref();
    let resumed = tls::resumed(session);
    shared
        .metrics
        .tls_handshake(true, resumed, started.elapsed());
    let sni = session.server_name();
    let domain = &tls.resolver.select(sni).name;
    let client = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(tls::certs::subject_rfc2253);
    events::tls_established(
        conn.id,
        &TlsSummary {
            version: tls::version_name(session),
            cipher: tls::cipher_name(session),
            sni,
            domain,
            resumed,
            client: client.as_deref(),
        },
    );
    if client.is_none() && tls.client_certificates != ClientCertificates::None {
        events::no_peer_certificate(conn.id);
    }
    let _ = conn.tls.set(TlsInfo {
        sni: sni.map(str::to_string),
        domain: domain.clone(),
        client_subject: client,
    });
    Ok(Some(stream))
}

/// Most bytes read looking for a whole ClientHello (rustls refuses bigger ones anyway).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Mode passthrough: reads the client's ClientHello for its SNI without terminating TLS,
/// as nginx's `ssl_preread` does, and gives back a stream that replays every byte read.
async fn read_client_hello<S>(
    mut client: Prefixed<S>,
    deadline: Instant,
    conn: &Conn,
) -> Result<Prefixed<Prefixed<S>>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen = Vec::with_capacity(SNIFF_BUF);
    let mut acceptor = rustls::server::Acceptor::default();
    let bad = |why: String| ConnError::Tls(io::Error::new(io::ErrorKind::InvalidData, why));
    let sni = loop {
        let before = seen.len();
        if before >= MAX_CLIENT_HELLO {
            return Err(bad(format!(
                "no complete ClientHello in {MAX_CLIENT_HELLO} bytes"
            )));
        }
        seen.reserve(SNIFF_BUF);
        match timeout_at(deadline, client.read_buf(&mut seen)).await {
            Err(_) => return Err(ConnError::HandshakeTimeout),
            Ok(Err(e)) => return Err(ConnError::Io(e)),
            Ok(Ok(0)) => return Err(bad("closed during the ClientHello".into())),
            Ok(Ok(_)) => {}
        }
        let mut fresh = &seen[before..];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| bad(e.to_string()))?;
        }
        match acceptor.accept() {
            Ok(None) => continue,
            Ok(Some(accepted)) => break accepted.client_hello().server_name().map(str::to_string),
            Err((e, _)) => return Err(bad(format!("not a TLS ClientHello: {e}"))),
        }
    };
    events::tls_passthrough(conn.id, sni.as_deref());
    let _ = conn.tls.set(TlsInfo {
        sni,
        domain: "passthrough".into(),
        client_subject: None,
    });
    Ok(Prefixed::new(seen, client))
}

/// Reads until the first bytes (after `buf`, already read) tell TLS from plaintext.
/// `None` if the client closed (FIN or RST) without sending a byte.
async fn sniff<S: AsyncRead + Unpin>(
    client: &mut S,
    mut buf: Vec<u8>,
) -> io::Result<Option<(Vec<u8>, Transport)>> {
    buf.reserve(SNIFF_BUF);
    loop {
        if let Some(t) = policy::classify(&buf) {
            return Ok(Some((buf, t)));
        }
        let silent = buf.is_empty();
        match client.read_buf(&mut buf).await {
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

async fn forward<C, U>(
    client: &mut C,
    mut upstream: U,
    conn: &Arc<Conn>,
    shared: &Shared,
    settings: &Settings,
    inspect: bool,
) -> Result<(), ConnError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (i, o) = (&conn.bytes_in, &conn.bytes_out);
    let tap: proxy::TapSlot<'_> = if inspect {
        let watch = Watch {
            throttle: &shared.throttle,
            policy: &settings.throttle,
            upstream: &settings.upstream,
            self_advertised_warned: &shared.self_advertised_warned,
        };
        Some(Box::new(InspectTap::new(
            conn.clone(),
            conn.remote,
            &shared.metrics,
            Some(watch),
        )))
    } else {
        None
    };
    proxy::run(client, &mut upstream, i, o, tap, settings.idle_timeout)
        .await
        .map(|_| ())
        .map_err(|(e, _)| match e {
            CopyError::Io(e) => ConnError::Io(e),
            CopyError::Idle(after) => ConnError::Idle(after),
        })
}

/// requireSSL and a plaintext client: answer its first message with a MongoDB error
/// (`ok: 0`, code 141 SSLHandshakeFailed) so the driver shows why, then close cleanly.
/// `client` replays the bytes sniffed so far.
async fn reply_tls_required<S>(mut client: Prefixed<S>, deadline: Instant) -> Result<(), ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = reply::error_document(
        reply::SSL_HANDSHAKE_FAILED,
        "SSLHandshakeFailed",
        TLS_REQUIRED_MESSAGE,
    );
    answer_first_message(&mut client, deadline, &body)
        .await
        .map_err(|e| match e {
            Unanswered::Timeout => ConnError::HandshakeTimeout,
            Unanswered::NotMongoDb(why) => ConnError::NotMongoDb(why),
            Unanswered::Cut(e) => ConnError::TlsRequiredCut(e),
        })
}

/// The upstream could not be reached before the client was sent a byte: a driver waiting
/// for the reply to its handshake gets mongod's HostUnreachable (code 6) with the reason,
/// instead of a bare close it would report as a network error. Other dial errors, and a
/// client that does not send a MongoDB message within the handshake deadline, get a close.
async fn answer_unreachable<S>(client: &mut S, deadline: Instant, e: ConnError) -> ConnError
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ConnError::Upstream { error, .. } = e else {
        return e;
    };
    let body = reply::error_document(
        reply::HOST_UNREACHABLE,
        "HostUnreachable",
        UPSTREAM_UNREACHABLE_MESSAGE,
    );
    let answered = answer_first_message(client, deadline, &body).await.is_ok();
    ConnError::Upstream { error, answered }
}

/// Why a client's first message went unanswered.
enum Unanswered {
    Timeout,
    NotMongoDb(String),
    Cut(io::Error),
}

/// Reads the client's first MongoDB message (within `deadline`), answers it with `body`
/// framed as the reply to it, closes the write side (FIN; close_notify first over TLS) and
/// lets the client read the reply and leave.
async fn answer_first_message<S>(
    client: &mut S,
    deadline: Instant,
    body: &bson::Document,
) -> Result<(), Unanswered>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let header = loop {
        read_more(client, &mut buf, deadline).await?;
        match Header::parse(&buf) {
            Ok(h) => break h,
            Err(WireError::Invalid(why)) => return Err(Unanswered::NotMongoDb(why)),
            Err(WireError::Incomplete { .. }) => {}
        }
    };
    // Take in the whole request: closing a socket with unread input sends a reset, which
    // could destroy the reply before the client reads it.
    while buf.len() < header.length.min(REQUIRE_TLS_READ_MAX) {
        read_more(client, &mut buf, deadline).await?;
    }
    drop(buf);
    let out = reply::reply_to(&header, 0, body);
    let send = async {
        client.write_all(&out).await?;
        client.shutdown().await
    };
    timeout_at(deadline, send)
        .await
        .map_err(|_| Unanswered::Timeout)?
        .map_err(Unanswered::Cut)?;
    // Let the client read the reply and close first; discard whatever else it sends.
    let _ = timeout(REQUIRE_TLS_LINGER, async {
        let mut sink = [0u8; 512];
        while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

async fn read_more<S: AsyncRead + Unpin>(
    client: &mut S,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<(), Unanswered> {
    buf.reserve(SNIFF_BUF);
    match timeout_at(deadline, client.read_buf(buf)).await {
        Err(_) => Err(Unanswered::Timeout),
        Ok(Err(e)) => Err(Unanswered::Cut(e)),
        Ok(Ok(0)) => Err(Unanswered::Cut(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed after {} of its first message's bytes", buf.len()),
        ))),
        Ok(Ok(_)) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::io::{duplex, DuplexStream};

    use super::*;
    use crate::config::{ProxyProtocol, UpstreamAddr};
    use crate::firewall::inventory::Inventory;
    use crate::firewall::{DefaultPolicy, Firewall};
    use crate::policy::Mode;
    use crate::wire::OpCode;

    /// A ClientHello as openssl s_client sent it (tests/fixtures/tls/README.md).
    const CLIENT_HELLO: &[u8] =
        include_bytes!("../tests/fixtures/tls/clienthello-openssl-3.0-sni-db.moat.test.bin");

    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

    fn shared(mode: Mode) -> Arc<Shared> {
        let settings = Settings {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            connect_timeout: Duration::from_secs(1),
            max_connections: 10,
            shutdown_timeout: Duration::from_secs(1),
            upstream: UpstreamAddr::Unix("/nonexistent/upstream.sock".into()),
            proxy_protocol: ProxyProtocol::Off,
            proxy_from: Vec::new(),
            inspect: false,
            tcp_keepalive: Duration::from_secs(120),
            idle_timeout: None,
            throttle: crate::config::AuthThrottleConfig::default().policy(),
        };
        let firewall = Firewall::build(DefaultPolicy::Allow, Vec::new(), &Inventory::default());
        Shared::new(settings, mode, None, firewall)
    }

    /// Hands out one end of an in-memory pipe as the upstream, once.
    struct Pipe(Mutex<Option<DuplexStream>>);

    impl Dial for Pipe {
        type Stream = DuplexStream;
        async fn dial(&self) -> Result<DuplexStream, ConnError> {
            let end = self.0.lock().ok().and_then(|mut p| p.take());
            end.ok_or_else(|| ConnError::unreachable(io::ErrorKind::NotConnected.into()))
        }
    }

    /// An upstream that refuses every connect.
    struct Down;

    impl Dial for Down {
        type Stream = DuplexStream;
        async fn dial(&self) -> Result<DuplexStream, ConnError> {
            Err(ConnError::unreachable(
                io::ErrorKind::ConnectionRefused.into(),
            ))
        }
    }

    /// An upstream pipe: what moat dials, and the far end the test plays mongod on.
    fn upstream() -> (Pipe, DuplexStream) {
        let (near, far) = duplex(1 << 16);
        (Pipe(Mutex::new(Some(near))), far)
    }

    /// Serves one in-memory client connection in `mode`; the test holds the client's end.
    async fn serve_one(
        mode: Mode,
        dial: &impl Dial,
        client: DuplexStream,
    ) -> (Result<(), ConnError>, Arc<Conn>) {
        let shared = shared(mode);
        let conn = shared
            .registry
            .insert(1, "127.0.0.1:5000".parse().unwrap(), Kind::Client);
        let settings = shared.settings_full();
        let deadline = Instant::now() + settings.handshake_timeout;
        let r = serve(
            client,
            Vec::new(),
            deadline,
            &conn,
            &shared,
            &settings,
            dial,
        )
        .await;
        (r, conn)
    }

    /// An OP_MSG of exactly `len` bytes: `{hello: 1, $db: "admin", pad: "xxx..."}`.
    fn op_msg(len: usize) -> Vec<u8> {
        let pad = "x".repeat(len - 62);
        let mut body = Vec::new();
        bson::doc! {"hello": 1, "$db": "admin", "pad": pad}
            .to_writer(&mut body)
            .unwrap();
        let total = 16 + 5 + body.len();
        let mut m = Vec::new();
        for v in [total as i32, 7, 0, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[0; 5]);
        m.extend(body);
        assert_eq!(m.len(), len, "adjust the padding");
        m
    }

    #[tokio::test]
    async fn a_790_byte_mongodb_message_is_plaintext_and_forwarded_unchanged() {
        let msg = op_msg(790);
        assert_eq!(
            &msg[..4],
            &[0x16, 0x03, 0x00, 0x00],
            "looks like a TLS record"
        );
        let (dial, mut mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        let sent = msg.clone();
        let peer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            let mut got = vec![0u8; sent.len()];
            mongod.read_exact(&mut got).await.unwrap();
            assert_eq!(got, sent);
            drop(client);
        });
        let (r, conn) = serve_one(Mode::PreferSsl, &dial, server_side).await;
        peer.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(conn.transport(), Some(Transport::Plaintext));
    }

    #[tokio::test]
    async fn require_ssl_answers_the_first_message_with_an_error_then_closes_with_fin() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        let reader = tokio::spawn(async move {
            client.write_all(&op_msg(100)).await.unwrap();
            let mut reply = Vec::new();
            // EOF after the reply: moat closed with a FIN, not a reset.
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let (r, _) = serve_one(Mode::RequireSsl, &dial, server_side).await;
        assert!(
            matches!(r, Err(ConnError::Refused(RejectReason::TlsRequired))),
            "{r:?}"
        );
        let reply = reader.await.unwrap();
        let h = Header::parse(&reply).unwrap();
        assert_eq!(
            (h.op_code, h.response_to, h.length),
            (OpCode::Msg, 7, reply.len())
        );
        let doc = bson::Document::from_reader(&reply[21..]).unwrap();
        assert_eq!(doc.get_i32("code").unwrap(), 141);
        assert_eq!(doc.get_str("errmsg").unwrap(), TLS_REQUIRED_MESSAGE);
        assert!(dial.0.lock().unwrap().is_some(), "mongod was never dialled");
    }

    #[tokio::test]
    async fn an_unreachable_upstream_answers_the_first_message_with_host_unreachable_then_fin() {
        let (mut client, server_side) = duplex(1 << 16);
        let reader = tokio::spawn(async move {
            client.write_all(&op_msg(100)).await.unwrap();
            let mut reply = Vec::new();
            // EOF after the reply: moat closed with a FIN, not a reset.
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });
        let (r, _) = serve_one(Mode::PreferSsl, &Down, server_side).await;
        let e = r.unwrap_err();
        assert!(
            matches!(&e, ConnError::Upstream { answered: true, .. }),
            "{e:?}"
        );
        assert_eq!(e.reason(), Some(RejectReason::UpstreamUnavailable));
        let reply = reader.await.unwrap();
        let h = Header::parse(&reply).unwrap();
        assert_eq!(
            (h.op_code, h.response_to, h.length),
            (OpCode::Msg, 7, reply.len())
        );
        let doc = bson::Document::from_reader(&reply[21..]).unwrap();
        assert_eq!(doc.get_f64("ok").unwrap(), 0.0);
        assert_eq!(doc.get_i32("code").unwrap(), 6);
        assert_eq!(doc.get_str("codeName").unwrap(), "HostUnreachable");
        assert_eq!(doc.get_str("errmsg").unwrap(), UPSTREAM_UNREACHABLE_MESSAGE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_upstream_and_a_silent_client_is_a_close_at_the_deadline() {
        let (mut client, server_side) = duplex(1 << 16);
        // Half a header: the client is TLS-less MongoDB, but never finishes its message.
        client.write_all(&op_msg(100)[..8]).await.unwrap();
        let started = Instant::now();
        let (r, _) = serve_one(Mode::PreferSsl, &Down, server_side).await;
        let e = r.unwrap_err();
        assert!(
            matches!(
                &e,
                ConnError::Upstream {
                    answered: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no reply: {rest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_mid_sniff_is_closed_at_the_handshake_deadline() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        // Two bytes that could begin a TLS record: undecided until the third.
        client.write_all(&[0x16, 0x03]).await.unwrap();
        let started = Instant::now();
        let (r, conn) = serve_one(Mode::PreferSsl, &dial, server_side).await;
        assert!(matches!(r, Err(ConnError::HandshakeTimeout)), "{r:?}");
        assert_eq!(started.elapsed(), HANDSHAKE_TIMEOUT);
        assert_eq!(conn.transport(), None);
        drop(client);
    }

    #[tokio::test]
    async fn a_proxy_header_from_a_peer_not_trusted_to_send_one_is_refused() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        client
            .write_all(b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 27017\r\n")
            .await
            .unwrap();
        let (r, _) = serve_one(Mode::PreferSsl, &dial, server_side).await;
        assert!(matches!(r, Err(ConnError::UntrustedProxyHeader)), "{r:?}");
        assert_eq!(r.unwrap_err().reason(), Some(RejectReason::ProxyHeader));
        assert!(dial.0.lock().unwrap().is_some(), "mongod was never dialled");
    }

    #[tokio::test]
    async fn a_tls_client_is_refused_in_disabled_and_mongod_never_dialled() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        client.write_all(CLIENT_HELLO).await.unwrap();
        let (r, conn) = serve_one(Mode::Disabled, &dial, server_side).await;
        assert!(
            matches!(r, Err(ConnError::Refused(RejectReason::TlsDisabled))),
            "{r:?}"
        );
        assert_eq!(conn.transport(), Some(Transport::Tls));
        assert!(dial.0.lock().unwrap().is_some(), "mongod was never dialled");
    }

    #[tokio::test]
    async fn passthrough_reads_the_sni_and_forwards_the_client_hello_unchanged() {
        let (dial, mut mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        let peer = tokio::spawn(async move {
            client.write_all(CLIENT_HELLO).await.unwrap();
            let mut got = vec![0u8; CLIENT_HELLO.len()];
            mongod.read_exact(&mut got).await.unwrap();
            assert_eq!(got, CLIENT_HELLO, "mongod gets the ClientHello as sent");
            mongod.write_all(b"\x16\x03\x03server bytes").await.unwrap();
            let mut back = [0u8; 15];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"\x16\x03\x03server bytes");
        });
        let (r, conn) = serve_one(Mode::Passthrough, &dial, server_side).await;
        peer.await.unwrap();
        assert!(r.is_ok(), "{r:?}");
        let tls = conn.tls.get().unwrap();
        assert_eq!(tls.sni.as_deref(), Some("db.moat.test"));
        assert_eq!(conn.transport(), Some(Transport::Tls));
    }

    #[tokio::test]
    async fn passthrough_refuses_garbage_that_only_looks_like_tls() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        client
            .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
            .await
            .unwrap();
        let (r, _) = serve_one(Mode::Passthrough, &dial, server_side).await;
        assert!(matches!(r, Err(ConnError::Tls(_))), "{r:?}");
        assert!(dial.0.lock().unwrap().is_some(), "mongod was never dialled");
    }

    #[tokio::test]
    async fn a_tls_client_without_any_certificate_is_a_tls_error_not_a_hang() {
        let (dial, _mongod) = upstream();
        let (mut client, server_side) = duplex(1 << 16);
        client.write_all(CLIENT_HELLO).await.unwrap();
        let (r, _) = serve_one(Mode::PreferSsl, &dial, server_side).await;
        assert!(matches!(r, Err(ConnError::NoCertificates)), "{r:?}");
        assert_eq!(r.unwrap_err().reason(), Some(RejectReason::TlsError));
    }

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

    /// Accepts any server certificate: these tests look at which one was sent.
    #[derive(Debug)]
    struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::client::danger::ServerCertVerifier for AnyCert {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        // webpki refuses to parse a certificate with an unknown critical extension (the
        // challenge certificate's acmeIdentifier), so the signature is not checked either.
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// The normal server configuration: a self-signed certificate for db1.moat.test.
    fn normal_server() -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db1.moat.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], der)
                .unwrap(),
        )
    }

    /// One handshake over a pipe, the client offering `alpn` for `sni`: whether the server
    /// answered it as a challenge, whether the certificate the client got carries the
    /// acmeIdentifier extension, and the protocol agreed.
    async fn offer(
        shared: &Arc<Shared>,
        sni: &str,
        alpn: &[&[u8]],
    ) -> (bool, bool, Option<Vec<u8>>) {
        let (client_io, server_io) = duplex(1 << 16);
        let server = normal_server();
        let s = shared.clone();
        let served = tokio::spawn(async move { handshake(server_io, &s, &server).await });
        let provider = tls::provider();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let stream = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(name, client_io)
            .await
            .unwrap();
        let (_, conn) = stream.get_ref();
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let acme_identifier = cert
            .extensions()
            .iter()
            .any(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31" && e.critical);
        let agreed = conn.alpn_protocol().map(<[u8]>::to_vec);
        let challenge = matches!(served.await.unwrap().unwrap(), Handshake::Challenge(_));
        (challenge, acme_identifier, agreed)
    }

    #[tokio::test]
    async fn only_a_cas_acme_tls_1_handshake_for_a_pending_name_gets_the_challenge_certificate() {
        let shared = shared(Mode::PreferSsl);
        let acme: &[u8] = b"acme-tls/1";
        // Nothing pending: acme-tls/1 is not even known to the normal path.
        assert_eq!(
            offer(&shared, "db1.moat.test", &[acme]).await,
            (false, false, None)
        );
        let _pending = shared
            .acme
            .challenges
            .answer("db1.moat.test", &[9u8; 32])
            .unwrap();
        assert_eq!(
            offer(&shared, "db1.moat.test", &[acme]).await,
            (true, true, Some(acme.to_vec())),
            "the CA's check"
        );
        assert_eq!(
            offer(&shared, "db1.moat.test", &[b"h2", b"mongodb"]).await,
            (false, false, None),
            "a client offering other protocols takes the normal path, unchanged"
        );
        assert_eq!(
            offer(&shared, "db2.moat.test", &[acme]).await,
            (false, false, None),
            "no challenge is pending for that name"
        );
    }
}
