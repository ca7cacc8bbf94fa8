//! The HTTP side for Prometheus and orchestrators: `GET /metrics`, `/healthz` (200 while
//! the process serves) and `/readyz` (200 when the upstream answered a connect recently;
//! moat probes it itself, so readiness does not wait for client traffic).
//!
//! The endpoint shares the process's descriptors with the public port, so it is bounded
//! like one: an optional source allowlist checked at accept, a cap on connections, a
//! deadline for each response to leave and one for each request to arrive.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use crate::events;
use crate::firewall::normalize_addr;
use crate::metrics::HttpDrop;
use crate::shared::Shared;
use crate::upstream;

/// Probes the upstream every `interval` unless a client connect did so recently.
pub async fn probe_upstream(shared: Arc<Shared>, interval: Duration) {
    shared.readiness.set_interval(interval);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if shared.readiness.idle_ms() < interval.as_millis() as u64 {
            continue;
        }
        let s = shared.settings_full();
        match upstream::connect(&s.upstream, s.connect_timeout).await {
            Ok(conn) => {
                drop(conn);
                shared.readiness.record(Ok(()));
            }
            Err(e) => shared.readiness.record(Err(&e)),
        }
    }
}

/// Connections the endpoint serves at once; beyond it a new one is closed at accept. It
/// keeps the endpoint from spending the descriptors the public port needs.
pub const MAX_CONNECTIONS: usize = 64;

/// How long one response may take to leave: a client that does not read it is
/// disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's headers. hyper starts this clock whenever it
/// waits for the next request, so it also closes a kept-alive connection idle this long
/// (Prometheus reconnects).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the HTTP endpoints until the process exits (it outlives the drain, so
/// Prometheus sees the end of it and /readyz says "shutting down"). With `allow`, only
/// those sources get an answer; anyone else is closed before a byte is read.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, allow: Option<Vec<IpNet>>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                events::accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = normalize_addr(peer);
        if let Some(allow) = &allow {
            if !allow.iter().any(|n| n.contains(&peer.ip())) {
                drop(stream);
                shared.metrics.http_dropped(HttpDrop::NotAllowed);
                if shared.refusal_log.allow() {
                    events::metrics_refused_not_allowed(peer);
                }
                continue;
            }
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            shared.metrics.http_dropped(HttpDrop::Limit);
            if shared.refusal_log.allow() {
                events::metrics_refused_limit(peer, MAX_CONNECTIONS);
            }
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let answer = |req: &Request<Incoming>| respond(req, &shared);
            if let Err(e) = serve_http(stream, answer).await {
                // At most one per slot per WRITE_TIMEOUT: bounded without a rate limit.
                if is_write_timeout(&e) {
                    shared.metrics.http_dropped(HttpDrop::WriteTimeout);
                    events::metrics_write_timeout(peer, WRITE_TIMEOUT);
                }
            }
            drop(slot);
        });
    }
}

/// Serves one HTTP/1.1 connection (keep-alive, pipelining) with the endpoint's time bounds.
async fn serve_http<I, F>(io: I, answer: F) -> Result<(), hyper::Error>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>>,
{
    let svc = service_fn(|req| std::future::ready(Ok::<_, Infallible>(answer(&req))));
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(WriteDeadline::new(io, WRITE_TIMEOUT)), svc)
        .await
}

/// Whether hyper gave up on a connection because of [`WriteDeadline`].
fn is_write_timeout(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io
                .get_ref()
                .is_some_and(|inner| inner.is::<WriteTimedOut>());
        }
        source = s.source();
    }
    false
}

/// The error a write fails with once its response is past the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the client did not take its response within {0:?}")]
struct WriteTimedOut(Duration);

/// A stream whose writes fail with `TimedOut` once a response has taken longer than the
/// limit to leave. The clock starts at a response's first write and stops when hyper
/// flushes it, so a kept-alive connection gets the full limit for each response, and a
/// client that pipelines requests but never reads is cut off instead of holding its
/// socket and task forever. Reads are untouched (hyper bounds them).
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// The running clock, while a response is being written.
    clock: Option<Pin<Box<Sleep>>>,
    /// A reused timer, so a response costs no allocation.
    spare: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            clock: None,
            spare: None,
        }
    }

    fn start_clock(&mut self) {
        if self.clock.is_none() {
            let deadline = Instant::now() + self.limit;
            self.clock = Some(match self.spare.take() {
                Some(mut s) => {
                    s.as_mut().reset(deadline);
                    s
                }
                None => Box::pin(tokio::time::sleep_until(deadline)),
            });
        }
    }

    fn stop_clock(&mut self) {
        if let Some(c) = self.clock.take() {
            self.spare = Some(c);
        }
    }

    /// Passes a write's result through, unless it is still pending past the deadline.
    fn bound<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            return r;
        }
        let expired = self
            .clock
            .as_mut()
            .is_some_and(|c| c.as_mut().poll(cx).is_ready());
        if expired {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteTimedOut(self.limit),
            )));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.start_clock();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.bound(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.start_clock();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.bound(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.stop_clock();
        }
        this.bound(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.start_clock();
        let r = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bound(cx, r)
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn respond(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(shared.scrape()),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match shared.readiness.check() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(why) => {
                let upstream = shared.settings().upstream.to_string();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {}\n", why.explain(&upstream)),
                )
            }
        },
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;

    const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    const BODY: usize = 64 * 1024;

    /// A response larger than the pipe, so writing it waits for the client to read.
    fn big(_: &Request<Incoming>) -> Response<Full<Bytes>> {
        text(StatusCode::OK, "text/plain", "x".repeat(BODY))
    }

    fn start() -> (DuplexStream, JoinHandle<Result<(), hyper::Error>>) {
        let (client, server) = tokio::io::duplex(16 * 1024);
        (client, tokio::spawn(serve_http(server, big)))
    }

    /// Reads one response with a `BODY`-byte body.
    async fn read_response(c: &mut DuplexStream) {
        let mut got = Vec::new();
        let mut b = [0u8; 8192];
        let head = loop {
            let n = c.read(&mut b).await.unwrap();
            assert!(n > 0, "closed mid-response");
            got.extend_from_slice(&b[..n]);
            if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        assert!(got.starts_with(b"HTTP/1.1 200"));
        while got.len() < head + BODY {
            let n = c.read(&mut b).await.unwrap();
            assert!(n > 0, "closed mid-body");
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(got.len(), head + BODY, "nothing beyond the one response");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_pipelines_and_never_reads_is_cut_off_at_the_write_deadline() {
        let (mut client, server) = start();
        let began = Instant::now();
        for _ in 0..8 {
            client.write_all(REQUEST).await.unwrap();
        }
        let ended = tokio::time::timeout(3 * WRITE_TIMEOUT, server)
            .await
            .expect("still connected long after the write deadline")
            .unwrap();
        let e = ended.expect_err("ends with an error");
        assert!(is_write_timeout(&e), "{e:?}");
        assert!(began.elapsed() >= WRITE_TIMEOUT, "{:?}", began.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn each_response_gets_its_own_write_deadline() {
        let (mut client, server) = start();
        // Three responses over 1.8 write deadlines, each waiting for the reader.
        for _ in 0..3 {
            client.write_all(REQUEST).await.unwrap();
            read_response(&mut client).await;
            tokio::time::sleep(WRITE_TIMEOUT * 6 / 10).await;
        }
        assert!(!server.is_finished(), "a reading client stays connected");
        drop(client);
        assert!(server.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_kept_alive_connection_is_closed_at_the_header_read_timeout() {
        let (mut client, server) = start();
        client.write_all(REQUEST).await.unwrap();
        read_response(&mut client).await;
        let idle = Instant::now();
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(3 * HEADER_READ_TIMEOUT, client.read(&mut b))
            .await
            .expect("still open long after the header read timeout")
            .unwrap();
        assert_eq!(n, 0);
        assert!(idle.elapsed() >= HEADER_READ_TIMEOUT);
        let _ = server.await.unwrap();
    }
}
