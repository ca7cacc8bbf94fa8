//! The `moat` binary: parse the command line, run the command, turn its outcome into an
//! exit code (SPEC: 0 ok, 1 runtime or validation error, 2 usage error, from clap).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use moat::cli::{Cli, Command};
use moat::config::load;
use moat::{app, certgen, check, events, telemetry, tls};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(a) => run(&a.config),
        Command::Check(a) => check::check(&a.config)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Certs(c) => certgen::run(&c)
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
    app::raise_fd_limit();
    let served = runtime.block_on(app::serve(path, loaded, resumption, log));
    runtime.shutdown_background();
    Ok(served?)
}
