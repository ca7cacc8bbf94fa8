//! The commands behind the CLI: load and validate, then serve (`run`), report (`check`),
//! or make certificates (`certs`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use tokio::net::{TcpListener, TcpSocket};

use crate::certgen;
use crate::cli::{CertsCommand, Cli, Command};
use crate::config::{self, Config, Source, UpstreamAddr};
use crate::error::{ConfigErrors, Invalid};
use crate::events;
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
    }
}

/// A configuration with everything it names loaded and checked.
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    pub upstream: UpstreamAddr,
    pub tls: Option<TlsState>,
    pub resumption: Resumption,
}

/// Reads the config file and loads every file it names; all problems are reported.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let (config, source) = config::load(path)?;
    let upstream = config
        .upstream_addr(&source.base_dir())
        .map_err(|m| source.place(vec![Invalid::new("upstream.address", m)]))?;
    let resumption = Resumption::new()
        .map_err(|e| source.place(vec![Invalid::new("tls", format!("TLS setup failed: {e}"))]))?;
    let tls = TlsState::build(&config.tls, &resumption).map_err(|p| source.place(p))?;
    Ok(Loaded {
        config,
        source,
        upstream,
        tls,
        resumption,
    })
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(l) => {
            let domains: Vec<&str> = l
                .config
                .tls
                .domains
                .iter()
                .map(|d| d.name.as_str())
                .collect();
            println!(
                "{}: OK: listen {}, upstream {}, mode {}, domains [{}]",
                path.display(),
                l.config.listen.address,
                l.upstream,
                l.config.tls.mode,
                domains.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path) -> ExitCode {
    let loaded = match load(path) {
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
    let _log = telemetry::init(&loaded.config.log);
    events::startup(env!("CARGO_PKG_VERSION"), &path.display().to_string());
    raise_fd_limit();
    let code = runtime.block_on(serve(loaded));
    runtime.shutdown_background();
    code
}

async fn serve(loaded: Loaded) -> ExitCode {
    let addr = loaded.config.listen.address;
    let listener = match bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "{}: listen.address: cannot listen on {addr}: {e}",
                loaded.source.path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let local = listener.local_addr().unwrap_or(addr);
    let settings = Settings::from_config(&loaded.config, loaded.upstream);
    let mode = loaded.config.tls.mode;
    events::listening(local, mode, &settings.upstream.to_string());
    let shared = Shared::new(settings, mode, loaded.tls);
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        if let Err(e) = shutdown::watch_signals(trigger).await {
            eprintln!("moat: cannot watch signals: {e}");
        }
    });
    server::run(listener, shared, shutdown).await;
    ExitCode::SUCCESS
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
    match cmd {
        CertsCommand::Init {
            dir,
            hostnames,
            ip,
            domain,
            force,
        } => {
            let opts = certgen::InitOptions {
                dir,
                domain,
                hostnames,
                ips: ip,
                force,
            };
            match certgen::init(&opts) {
                Ok(f) => {
                    println!(
                        "wrote {} (CA), {} (CA key, keep private), {} and {} for names {}",
                        f.ca.display(),
                        f.ca_key.display(),
                        f.cert.display(),
                        f.key.display(),
                        opts.hostnames.join(",")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("moat certs init: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
