//! `moat run` after the config has loaded: bind every listener it names, build the shared
//! state, start the tasks around the accept loop (egress, admin socket, metrics, signals,
//! watchers), then accept until shutdown.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio_util::task::TaskTracker;

use crate::admin::{self, ops::Control};
use crate::config::load::Loaded;
use crate::egress::{self, Egress};
use crate::events;
use crate::health;
use crate::server;
use crate::shared::{Settings, Shared};
use crate::shutdown::{self, Signals};
use crate::telemetry::LogHandle;
use crate::tls::Resumption;

/// Listen backlog: room for a burst of reconnecting drivers.
const BACKLOG: u32 = 4096;

/// A listener the config names that could not be opened: `{file}: {key}: {what}`.
#[derive(Debug, Error)]
#[error("{}: {key}: {what}: {source}", file.display())]
pub struct BindError {
    pub file: PathBuf,
    pub key: String,
    pub what: String,
    pub source: io::Error,
}

/// Why `run` could not start serving.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("moat: cannot watch signals: {0}")]
    Signals(io::Error),
    #[error("moat: the accept loop stopped: {0}")]
    Accept(tokio::task::JoinError),
}

/// Every socket moat serves, opened before anything starts so a clash fails the start.
struct Listeners {
    public: TcpListener,
    egress: Vec<(TcpListener, Arc<Egress>)>,
    metrics: Option<TcpListener>,
    admin: Option<UnixListener>,
}

impl Listeners {
    fn bind(loaded: &mut Loaded) -> Result<Listeners, BindError> {
        let cfg = &loaded.config;
        let fail = |key: String, what: String| {
            let file = loaded.source.path.clone();
            move |source| BindError {
                file,
                key,
                what,
                source,
            }
        };
        let addr = cfg.listen.address;
        let public = bind(addr).map_err(fail(
            "listen.address".into(),
            format!("cannot listen on {addr}"),
        ))?;
        let mut egress = Vec::new();
        let targets = std::mem::take(&mut loaded.egress);
        for (i, (e, target)) in cfg.egress.iter().zip(targets).enumerate() {
            let l = bind(e.listen).map_err(fail(
                format!("egress[{i}].listen"),
                format!("cannot listen on {}", e.listen),
            ))?;
            egress.push((l, Arc::new(Egress::new(e.listen, target))));
        }
        let metrics = match &cfg.metrics {
            Some(m) => Some(bind(m.listen).map_err(fail(
                "metrics.listen".into(),
                format!("cannot listen on {}", m.listen),
            ))?),
            None => None,
        };
        let admin = match &cfg.admin.socket {
            Some(p) => Some(admin::bind(p).map_err(fail(
                "admin.socket".into(),
                format!("cannot create {}", p.display()),
            ))?),
            None => None,
        };
        Ok(Listeners {
            public,
            egress,
            metrics,
            admin,
        })
    }
}

/// Serves until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(
    path: &Path,
    mut loaded: Loaded,
    resumption: Resumption,
    log: LogHandle,
) -> Result<(), ServeError> {
    for w in loaded.warnings() {
        events::config_warning(&w);
    }
    let listeners = Listeners::bind(&mut loaded)?;
    let Loaded {
        config,
        upstream,
        tls,
        plane,
        firewall,
        inventory_error,
        ..
    } = loaded;
    let local = listeners
        .public
        .local_addr()
        .unwrap_or(config.listen.address);
    let settings = Settings::from_config(&config, upstream);
    let mode = config.tls.mode;
    let signals = Signals::install().map_err(ServeError::Signals)?;
    events::listening(local, mode, &settings.upstream.to_string());
    plane.log_inventory(inventory_error.as_ref(), &firewall);
    events::firewall_summary(&firewall);

    let shared = Shared::new(settings, mode, tls, firewall);
    let (trigger, shutdown) = shutdown::channel();
    let ((term, int), hup) = signals.split();
    tokio::spawn(shutdown::watch_signals(term, int, trigger));
    let tracker = TaskTracker::new();
    let egress: Vec<Arc<Egress>> = listeners.egress.iter().map(|(_, e)| e.clone()).collect();
    let control = Arc::new(Control::new(
        shared.clone(),
        path.to_path_buf(),
        resumption,
        Some(log),
        egress,
        &config,
        plane,
    ));
    for (l, eg) in listeners.egress {
        events::egress_listening(l.local_addr().unwrap_or(eg.listen), &eg.target.load().peer);
        let (shared, shutdown, t) = (shared.clone(), shutdown.clone(), tracker.clone());
        tokio::spawn(egress::serve(l, eg, shared, shutdown, t));
    }
    if let Some(l) = listeners.admin {
        tokio::spawn(admin::serve(l, control.clone(), shutdown.clone()));
    }
    if let (Some(l), Some(m)) = (listeners.metrics, &config.metrics) {
        events::metrics_listening(l.local_addr().unwrap_or(m.listen));
        tokio::spawn(health::serve(
            l,
            shared.clone(),
            m.allow_nets().map(<[_]>::to_vec),
        ));
        tokio::spawn(health::probe_upstream(shared.clone(), m.readiness_interval));
    }
    tokio::spawn(control.clone().reload_on(hup));
    tokio::spawn(control.clone().renew_certificates());
    tokio::spawn(control.clone().watch_files());
    tokio::spawn(control.watch_inventory());
    tokio::spawn(shared.clone().watch_expiry());
    tokio::spawn(shared.clone().summarise_refusals());
    // On a worker, not on the thread that blocks on this future: a connection task
    // spawned from a worker starts on that worker's own queue, where one spawned from
    // outside the pool must wake a worker through the shared queue first.
    let accepting = tokio::spawn(server::run(listeners.public, shared, shutdown, tracker));
    accepting.await.map_err(ServeError::Accept)?;
    Ok(())
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
