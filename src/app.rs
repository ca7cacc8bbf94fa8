//! The commands behind the CLI: load and validate, then serve (`run`), report (`check`),
//! make certificates (`certs`) or talk to a running moat (`ctl`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::certgen;
use crate::cli::{CertsCommand, Cli, Command};
use crate::config::{self, Config, Source, UpstreamAddr};
use crate::control::{Control, RestartKeys};
use crate::ctl;
use crate::egress::{self, Egress, Target};
use crate::error::{ConfigErrors, Invalid};
use crate::events;
use crate::firewall::DefaultPolicy;
use crate::health;
use crate::rules::FirewallPlane;
use crate::server;
use crate::shutdown;
use crate::state::{Settings, Shared};
use crate::telemetry;
use crate::tls::{Resumption, TlsState};

/// Listen backlog: room for a burst of reconnecting drivers.
const BACKLOG: u32 = 4096;

/// Runs a parsed command line; the process exit code follows SPEC (0 ok, 1 error).
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run(a) => run(&a.config),
        Command::Check(a) => check(&a.config),
        Command::Certs(c) => certs(c),
        Command::Ctl(c) => ctl::main(c),
    }
}

/// A configuration with everything it names loaded and checked.
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    pub upstream: UpstreamAddr,
    pub tls: Option<TlsState>,
    pub egress: Vec<Target>,
}

/// Reads the config file and loads every file it names; all problems are reported.
pub fn load(path: &Path, resumption: &Resumption) -> Result<Loaded, ConfigErrors> {
    let (config, source) = config::load(path)?;
    let upstream = config
        .upstream_addr()
        .map_err(|m| source.place(vec![Invalid::new("upstream.address", m)]))?;
    let mut problems = Vec::new();
    let tls = TlsState::build(&config.tls, resumption).unwrap_or_else(|p| {
        problems.extend(p);
        None
    });
    let mut egress = Vec::new();
    for (i, e) in config.egress.iter().enumerate() {
        match Target::build(i, e) {
            Ok(t) => egress.push(t),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(source.place(problems));
    }
    Ok(Loaded {
        config,
        source,
        upstream,
        tls,
        egress,
    })
}

/// The config's warnings, placed at file:line:col.
pub fn warnings(l: &Loaded) -> Vec<crate::error::ConfigError> {
    if l.config.warnings.is_empty() {
        return Vec::new();
    }
    l.source.place(l.config.warnings.clone()).0
}

fn resumption() -> Result<Resumption, ExitCode> {
    Resumption::new().map_err(|e| {
        eprintln!("moat: TLS setup failed: {e}");
        ExitCode::FAILURE
    })
}

fn check(path: &Path) -> ExitCode {
    let resumption = match resumption() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let loaded = load(path, &resumption).and_then(|l| {
        // An inventory that cannot be read is only logged at runtime (the last good one
        // stays); here it is an error.
        let (plane, err) = FirewallPlane::new(&l.config.firewall, l.config.rules());
        match err {
            Some(e) => Err(l
                .source
                .place(vec![Invalid::new("firewall.security_groups.inventory", e)])),
            None => Ok((l, plane)),
        }
    });
    let (l, plane) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let fw = plane.compile();
    let (cidr, groups, addresses) = fw.counts();
    let domains: Vec<&str> = l
        .config
        .tls
        .domains
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    println!(
        "{}: OK: listen {}, upstream {}, mode {}, domains [{}], egress {}, firewall default {} with {cidr} CIDR and {groups} security-group rules ({addresses} addresses)",
        path.display(),
        l.config.listen.address,
        l.upstream,
        l.config.tls.mode,
        domains.join(", "),
        l.config.egress.len(),
        crate::control::policy_name(fw.default_policy()),
    );
    if fw.default_policy() == DefaultPolicy::Deny && cidr + groups == 0 {
        println!("warning: default deny and no firewall rules: every connection would be refused");
    }
    for w in warnings(&l) {
        println!("warning: {w}");
    }
    for w in l.source.place(l.config.permission_warnings()).0 {
        println!("warning: {w}");
    }
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let resumption = match resumption() {
        Ok(r) => r,
        Err(c) => return c,
    };
    let loaded = match load(path, &resumption) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("moat-worker")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (log, _flush_on_exit) = telemetry::init(&loaded.config.log);
    events::startup(env!("CARGO_PKG_VERSION"), &path.display().to_string());
    raise_fd_limit();
    let code = runtime.block_on(serve(path, loaded, resumption, log));
    runtime.shutdown_background();
    code
}

/// Prints `{file}: {key}: {what}` to stderr and returns the failure code.
fn fail(file: &Path, key: &str, what: impl std::fmt::Display) -> ExitCode {
    eprintln!("{}: {key}: {what}", file.display());
    ExitCode::FAILURE
}

async fn serve(
    path: &Path,
    loaded: Loaded,
    resumption: Resumption,
    log: telemetry::LogHandle,
) -> ExitCode {
    for w in warnings(&loaded) {
        events::config_warning(&w);
    }
    let file = loaded.source.path.clone();
    let addr = loaded.config.listen.address;
    let listener = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            return fail(
                &file,
                "listen.address",
                format!("cannot listen on {addr}: {e}"),
            )
        }
    };
    let mut egress_listeners = Vec::new();
    for (i, (cfg, target)) in loaded.config.egress.iter().zip(loaded.egress).enumerate() {
        match bind(cfg.listen) {
            Ok(l) => egress_listeners.push((
                l,
                Arc::new(Egress {
                    listen: cfg.listen,
                    target: arc_swap::ArcSwap::from_pointee(target),
                }),
            )),
            Err(e) => {
                return fail(
                    &file,
                    &format!("egress[{i}].listen"),
                    format!("cannot listen on {}: {e}", cfg.listen),
                )
            }
        }
    }
    let metrics_listener = match &loaded.config.metrics {
        Some(m) => match TcpListener::bind(m.listen).await {
            Ok(l) => Some((l, m.readiness_interval, m.allow_nets())),
            Err(e) => {
                return fail(
                    &file,
                    "metrics.listen",
                    format!("cannot listen on {}: {e}", m.listen),
                )
            }
        },
        None => None,
    };
    let admin_listener = match &loaded.config.admin.socket {
        Some(p) => match admin::bind(p) {
            Ok(l) => Some(l),
            Err(e) => {
                return fail(
                    &file,
                    "admin.socket",
                    format!("cannot create {}: {e}", p.display()),
                )
            }
        },
        None => None,
    };

    let local = listener.local_addr().unwrap_or(addr);
    let boot = RestartKeys::of(&loaded.config);
    let settings = Settings::from_config(&loaded.config, loaded.upstream);
    let mode = loaded.config.tls.mode;
    events::listening(local, mode, &settings.upstream.to_string());
    let (plane, inventory_error) =
        FirewallPlane::new(&loaded.config.firewall, loaded.config.rules());
    let firewall = plane.compile();
    if let Some(p) = &plane.inventory_path {
        match &inventory_error {
            Some(e) => events::inventory_failed(&p.display().to_string(), e, 0),
            None => events::inventory_loaded(
                &p.display().to_string(),
                plane.inventory.interfaces,
                firewall.counts().2,
            ),
        }
    }
    let (cidr, groups, addresses) = firewall.counts();
    events::firewall_summary(
        crate::control::policy_name(firewall.default_policy()),
        cidr,
        groups,
        addresses,
    );
    let shared = Shared::new(settings, mode, loaded.tls, firewall);
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        if let Err(e) = shutdown::watch_signals(trigger).await {
            eprintln!("moat: cannot watch signals: {e}");
        }
    });

    let tracker = TaskTracker::new();
    let control = Arc::new(Control::new(
        shared.clone(),
        path.to_path_buf(),
        resumption,
        Some(log),
        egress_listeners.iter().map(|(_, e)| e.clone()).collect(),
        boot,
        plane,
    ));
    for (l, eg) in egress_listeners {
        events::egress_listening(l.local_addr().unwrap_or(eg.listen), &eg.target.load().peer);
        let (shared, shutdown, t) = (shared.clone(), shutdown.clone(), tracker.clone());
        tokio::spawn(egress::serve(l, eg, shared, shutdown, t));
    }
    if let Some(l) = admin_listener {
        tokio::spawn(admin::serve(l, control.clone(), shutdown.clone()));
    }
    if let Some((l, interval, allow)) = metrics_listener {
        events::metrics_listening(l.local_addr().unwrap_or(addr));
        tokio::spawn(health::serve(l, shared.clone(), allow));
        tokio::spawn(health::probe_upstream(shared.clone(), interval));
    }
    tokio::spawn(reload_on_sighup(control.clone()));
    tokio::spawn(watch_expiry(shared.clone()));
    tokio::spawn(watch_inventory(control));
    tokio::spawn(summarise_refusals(shared.clone()));
    server::run(listener, shared, shutdown, tracker).await;
    ExitCode::SUCCESS
}

/// SIGHUP does what `moat ctl reload` does.
async fn reload_on_sighup(control: Arc<Control>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Err(e) = control.reload().await {
            events::reload_failed(&e.replace('\n', "; "));
        }
    }
}

/// Re-reads the security-group inventory when its file changes.
async fn watch_inventory(control: Arc<Control>) {
    loop {
        let wait = control.refresh_inventory().await;
        tokio::time::sleep(wait).await;
    }
}

/// Once a second, says how many refusal lines the rate limit held back.
async fn summarise_refusals(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        let n = shared.refusal_log.take_suppressed();
        if n > 0 {
            events::refusals_suppressed(n, crate::state::REFUSALS_LOGGED_PER_SECOND);
        }
    }
}

/// Warns about certificates close to expiry now and every 12 hours.
async fn watch_expiry(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(12 * 3600));
    loop {
        every.tick().await;
        crate::control::warn_expiring(&shared);
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Two descriptors per proxied connection: lift the soft open-files limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn certs(cmd: CertsCommand) -> ExitCode {
    let result = match cmd {
        CertsCommand::Init {
            dir,
            hostnames,
            ip,
            domain,
            force,
        } => certgen::init(&certgen::InitOptions {
            dir,
            domain,
            hostnames: hostnames.clone(),
            ips: ip,
            force,
        })
        .map(|f| {
            format!(
                "wrote {} (CA), {} (CA key, keep private), {} and {} for names {}",
                f.ca.display(),
                f.ca_key.display(),
                f.cert.display(),
                f.key.display(),
                hostnames.join(",")
            )
        }),
        CertsCommand::Issue {
            dir,
            domain,
            hostnames,
            ip,
            encrypt_key,
            force,
        } => certgen::issue(&certgen::IssueOptions {
            dir,
            domain,
            hostnames: hostnames.clone(),
            ips: ip,
            encrypt_key,
            force,
        })
        .map(|f| {
            let mut msg = format!(
                "wrote {} and {} for names {}",
                f.cert.display(),
                f.key.display(),
                hostnames.join(",")
            );
            if let Some(p) = f.new_password_file {
                msg += &format!("; the key's password is in {} (0600)", p.display());
            }
            msg
        }),
        CertsCommand::Csr {
            out,
            key,
            hostnames,
            ip,
            encrypt_key,
            force,
        } => certgen::csr(&certgen::CsrOptions {
            out: out.clone(),
            key: key.clone(),
            hostnames,
            ips: ip,
            encrypt_key,
            force,
        })
        .map(|created| {
            let mut msg = format!(
                "wrote {} (send it to your CA) and {} (this node's key, 0600)",
                out.display(),
                key.display()
            );
            if let Some(p) = created {
                msg += &format!("; the key's password is in {} (0600)", p.display());
            }
            msg
        }),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("moat certs: {e}");
            ExitCode::FAILURE
        }
    }
}
