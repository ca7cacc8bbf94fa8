//! Egress: the node's own mongod reaching its replica-set peers through moat.
//!
//! mongod dials a local `[[egress]] listen` address instead of the peer; moat forwards to
//! the peer speaking TLS when the live mode is preferSSL or requireSSL and plaintext in
//! disabled and allowSSL — mongod's own difference between allowSSL and preferSSL. The
//! mode is read per connection, so a mode change applies to the next one.
//!
//! A listener admits only the sources its `allow` names (when it names any), judged at
//! accept before a byte is read, and at most `max_connections` at once; both are read per
//! connection, so a reload applies them to the next one. Sockets on both sides get TCP
//! keepalive; `listen.idle_timeout` is for client connections only (mongod manages the
//! lifetime of its own connections to peers).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::config::EgressConfig;
use crate::conn::enable_keepalive;
use crate::error::Invalid;
use crate::events;
use crate::firewall;
use crate::firewall::normalize_addr;
use crate::policy::Transport;
use crate::proxy;
use crate::registry::Kind;
use crate::shared::Shared;
use crate::shutdown::Shutdown;
use crate::tls;

/// Where one egress listener forwards to, and how to verify it. Replaced whole on reload.
pub struct Target {
    pub peer: String,
    pub server_name: ServerName<'static>,
    connector: TlsConnector,
    /// Sources admitted; empty admits any (config validation keeps such a listener on
    /// loopback).
    allow: Vec<ipnet::IpNet>,
    max_connections: usize,
}

impl Target {
    /// Loads the CA and builds the TLS client; problems are named by `egress[i]` keys.
    pub fn build(i: usize, cfg: &EgressConfig) -> Result<Target, Invalid> {
        let key = |k: &str| format!("egress[{i}].{k}");
        let chain = tls::certs::load_chain(&cfg.ca).map_err(|m| Invalid::new(key("ca"), m))?;
        let mut roots = RootCertStore::empty();
        for c in chain {
            roots
                .add(c)
                .map_err(|e| Invalid::new(key("ca"), format!("{}: {e}", cfg.ca.display())))?;
        }
        let server_name = ServerName::try_from(cfg.server_name().to_string())
            .map_err(|e| Invalid::new(key("server_name"), e.to_string()))?;
        let client = ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Invalid::new(key("ca"), e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Target {
            peer: cfg.peer.clone(),
            server_name,
            connector: TlsConnector::from(Arc::new(client)),
            allow: cfg.allow_nets().to_vec(),
            max_connections: cfg.max_connections,
        })
    }

    /// Whether `source` may use this listener.
    pub fn admits(&self, source: IpAddr) -> bool {
        let ip = firewall::normalize(source);
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// One of a listener's `max_connections`, given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an egress connection ended early.
#[derive(Debug, Error)]
pub enum EgressError {
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("cannot enable TCP keepalive towards {0}: {1}")]
    Keepalive(String, std::io::Error),
    #[error("TLS handshake with {0} timed out")]
    TlsTimeout(String),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("{0}")]
    Copy(proxy::CopyError),
}

/// One `[[egress]]` listener.
pub struct Egress {
    pub listen: SocketAddr,
    pub target: ArcSwap<Target>,
}

impl Egress {
    pub fn new(listen: SocketAddr, target: Target) -> Egress {
        Egress {
            listen,
            target: ArcSwap::from_pointee(target),
        }
    }
}

/// Accepts mongod's outgoing connections on `listener` until shutdown.
pub async fn serve(
    listener: TcpListener,
    egress: Arc<Egress>,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let listen = listener.local_addr().unwrap_or(egress.listen);
    loop {
        let (local, from) = tokio::select! {
            _ = shutdown.requested() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    events::accept_error(&e);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let from = normalize_addr(from);
        let target = egress.target.load();
        if !target.admits(from.ip()) {
            if shared.refusal_log.allow() {
                events::egress_refused_source(listen, from);
            }
            continue;
        }
        let Some(slot) = Slot::take(&open, target.max_connections) else {
            if shared.refusal_log.allow() {
                events::egress_refused_limit(listen, from, target.max_connections);
            }
            continue;
        };
        drop(target);
        let (egress, shared) = (egress.clone(), shared.clone());
        tracker.spawn(async move { handle(local, from, &egress, &shared, slot).await });
    }
}

/// Serves one egress connection to its end, holding `slot` until then.
async fn handle(
    mut local: TcpStream,
    from: SocketAddr,
    egress: &Egress,
    shared: &Shared,
    slot: Slot,
) {
    let keepalive = shared.settings().tcp_keepalive;
    let _ = local.set_nodelay(true);
    let _ = enable_keepalive(&local, keepalive);
    let id = shared.next_id();
    let conn = shared.registry.insert(id, from, Kind::Egress);
    let target = egress.target.load_full();
    let mode = shared.mode();
    let transport = if mode.egress_tls() {
        Transport::Tls
    } else {
        Transport::Plaintext
    };
    conn.set_transport(transport);
    events::egress_accepted(id, from, &target.peer, transport, mode);
    let timeout = shared.settings().connect_timeout;
    let result = async {
        let peer = target.peer.clone();
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(&target.peer))
            .await
            .map_err(|_| EgressError::ConnectTimeout(peer.clone()))?
            .map_err(|e| EgressError::Connect(peer.clone(), e))?;
        let _ = tcp.set_nodelay(true);
        enable_keepalive(&tcp, keepalive).map_err(|e| EgressError::Keepalive(peer.clone(), e))?;
        let mut stream = if mode.egress_tls() {
            let handshake = target.connector.connect(target.server_name.clone(), tcp);
            let tls = tokio::time::timeout(timeout, handshake)
                .await
                .map_err(|_| EgressError::TlsTimeout(peer.clone()))?
                .map_err(|e| EgressError::Tls(peer.clone(), e))?;
            Either::Left(tls)
        } else {
            Either::Right(tcp)
        };
        let (bytes_in, bytes_out) = (&conn.bytes_in, &conn.bytes_out);
        proxy::run(&mut local, &mut stream, bytes_in, bytes_out, None, None)
            .await
            .map(drop)
            .map_err(|(e, _)| EgressError::Copy(e))
    }
    .await;
    if let Err(e) = result {
        events::egress_failed(id, &target.peer, &e);
    }
    shared.registry.remove(id);
    // Freed before the line that says so, as for client connections.
    drop(slot);
    events::egress_ended(id, from);
}
