//! The `moat` binary: parse the command line, run the command, turn its outcome into an
//! exit code (SPEC: 0 ok, 1 runtime or validation error, 2 usage error, from clap).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use moat::certgen::CertgenError;
use moat::cli::{CertsCommand, Cli, Command};
use moat::config::load;
use moat::{app, certgen, check, events, telemetry, tls};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(a) => run(&a.config),
        Command::Check(a) => check::check(&a.config)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Certs(c) => certs(&c)
            .map(|line| println!("{line}"))
            .map_err(|e| anyhow::anyhow!("moat certs: {e}")),
        Command::Ctl(c) => return moat::admin::client::main(c),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `moat run`: load, start logging and the runtime, serve until shutdown.
fn run(path: &Path) -> anyhow::Result<()> {
    let resumption = tls::Resumption::new().context("moat: TLS setup failed")?;
    let loaded = load::load(path, &resumption)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("moat-worker")
        .enable_all()
        .build()
        .context("moat: cannot start the runtime")?;
    let (log, _flush_on_exit) = telemetry::init(&loaded.config.log);
    events::startup(env!("CARGO_PKG_VERSION"), &path.display().to_string());
    raise_fd_limit();
    let served = runtime.block_on(app::serve(path, loaded, resumption, log));
    runtime.shutdown_background();
    Ok(served?)
}

/// Runs a `moat certs` command; returns the line to print.
fn certs(cmd: &CertsCommand) -> Result<String, CertgenError> {
    let names = |h: &[String]| h.join(",");
    let password = |p: Option<PathBuf>| {
        p.map(|p| format!("; the key's password is in {} (0600)", p.display()))
            .unwrap_or_default()
    };
    Ok(match cmd {
        CertsCommand::Init(o) => {
            let f = certgen::init(o)?;
            format!(
                "wrote {} (CA), {} (CA key, keep private), {} and {} for names {}",
                f.ca.display(),
                f.ca_key.display(),
                f.cert.display(),
                f.key.display(),
                names(&o.hostnames)
            )
        }
        CertsCommand::Issue(o) => {
            let f = certgen::issue(o)?;
            format!(
                "wrote {} and {} for names {}{}",
                f.cert.display(),
                f.key.display(),
                names(&o.hostnames),
                password(f.new_password_file)
            )
        }
        CertsCommand::Csr(o) => {
            let created = certgen::csr(o)?;
            format!(
                "wrote {} (send it to your CA) and {} (this node's key, 0600){}",
                o.out.display(),
                o.key.display(),
                password(created)
            )
        }
    })
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
