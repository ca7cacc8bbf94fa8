//! The HTTP side for Prometheus and orchestrators: `GET /metrics`, `/healthz` (200 while
//! the process serves) and `/readyz` (200 when the upstream answered a connect recently;
//! moat probes it itself, so readiness does not wait for client traffic).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::events;
use crate::state::Shared;
use crate::upstream;

/// What moat knows about the upstream's reachability.
#[derive(Default)]
pub struct Readiness {
    /// Unix milliseconds of the last connect attempt (probe or client), 0 = none yet.
    last_attempt: AtomicU64,
    last_ok: AtomicBool,
    /// Unix milliseconds of the last successful connect.
    last_success: AtomicU64,
    last_error: Mutex<String>,
    shutting_down: AtomicBool,
    /// The probe interval in milliseconds (0 = no prober: `[metrics]` not configured).
    interval_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Readiness {
    /// Records an upstream connect attempt.
    pub fn record(&self, result: Result<(), &std::io::Error>) {
        let now = now_ms();
        match result {
            Ok(()) => {
                self.last_success.store(now, Ordering::Relaxed);
                self.last_ok.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut s) = self.last_error.lock() {
                    *s = e.to_string();
                }
                self.last_ok.store(false, Ordering::Relaxed);
            }
        }
        self.last_attempt.store(now, Ordering::Relaxed);
    }

    /// The process has begun to shut down: not ready for new clients.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready; otherwise why not. Ready means: not shutting down, and the latest
    /// connect attempt succeeded within three probe intervals.
    pub fn check(&self, upstream: &str) -> Result<(), String> {
        let window = Duration::from_millis(3 * self.interval_ms.load(Ordering::Relaxed).max(1000));
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.last_attempt.load(Ordering::Relaxed) == 0 {
            return Err(format!("no connect to upstream {upstream} yet"));
        }
        if !self.last_ok.load(Ordering::Relaxed) {
            let e = self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default();
            return Err(format!("upstream {upstream} unreachable: {e}"));
        }
        let age = now_ms().saturating_sub(self.last_success.load(Ordering::Relaxed));
        if age > window.as_millis() as u64 {
            return Err(format!(
                "no successful connect to upstream {upstream} for {} ms",
                age
            ));
        }
        Ok(())
    }

    /// Milliseconds since the last attempt.
    fn idle_ms(&self) -> u64 {
        now_ms().saturating_sub(self.last_attempt.load(Ordering::Relaxed))
    }
}

/// Probes the upstream every `interval` unless a client connect did so recently.
pub async fn probe_upstream(shared: Arc<Shared>, interval: Duration) {
    shared
        .readiness
        .interval_ms
        .store(interval.as_millis() as u64, Ordering::Relaxed);
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

/// Serves the HTTP endpoints until the process exits (it outlives the drain, so
/// Prometheus sees the end of it and /readyz says "shutting down").
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                events::accept_error(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&req, &shared)) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
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
            shared.metrics.render(shared),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => {
            let upstream = shared.settings().upstream.to_string();
            match shared.readiness.check(&upstream) {
                Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    PLAIN,
                    format!("not ready: {why}\n"),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
