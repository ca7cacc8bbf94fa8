//! The `moat` binary: parse the command line, run the command, turn its outcome into an
//! exit code (SPEC: 0 ok, 1 runtime or validation error, 2 usage error, from clap).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use moat::certgen::CertgenError;
use moat::cli::{AcmeArgs, CertsCommand, Cli, Command, ScopeCommand};
use moat::config::load;
use moat::{app, certgen, check, events, scope, telemetry, tls};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Run(a) => run(&a.config),
        Command::Check(a) => check::check(&a.config)
            .map(|report| print!("{report}"))
            .map_err(anyhow::Error::from),
        Command::Certs(CertsCommand::Acme(a)) => acme(&a),
        Command::Certs(CertsCommand::Scope(ScopeCommand::New(o))) => scope::new(&o)
            .map(|s| print!("{}", scope_report(&s)))
            .map_err(|e| anyhow::anyhow!("moat certs scope: {e}")),
        Command::Certs(CertsCommand::Init(o)) => dev_pki(Pki::Init(&o)),
        Command::Certs(CertsCommand::Issue(o)) => dev_pki(Pki::Issue(&o)),
        Command::Certs(CertsCommand::Csr(o)) => dev_pki(Pki::Csr(&o)),
        Command::Ctl(c) => return moat::admin::client::main(c),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose words the message
/// before it already carries (many errors here quote their source).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
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

/// `moat certs acme`: one issuance by hand, by the renewal's own code path. For
/// tls-alpn-01 the challenge is answered on `listen.address`, which moat must not hold.
fn acme(args: &AcmeArgs) -> anyhow::Result<()> {
    let (config, _) = moat::config::load(&args.config)?;
    let d = config
        .tls
        .domains
        .iter()
        .find(|d| d.name == args.domain)
        .ok_or_else(|| {
            let names: Vec<&str> = config.tls.domains.iter().map(|d| d.name.as_str()).collect();
            anyhow::anyhow!(
                "moat certs acme: {}: no [[tls.domains]] is named `{}` (names: {})",
                args.config.display(),
                args.domain,
                names.join(", ")
            )
        })?;
    let a = d.acme.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "moat certs acme: {}: domain `{}` has no [tls.domains.acme] section",
            args.config.display(),
            d.name
        )
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("moat: cannot start the runtime")?;
    let (_log, _flush_on_exit) = telemetry::init(&config.log);
    let issued = runtime.block_on(async {
        let state = moat::acme::State::default();
        let obtain = moat::acme::issue::obtain(d, a, &state.challenges);
        if a.challenge != moat::config::Challenge::TlsAlpn01 {
            return obtain.await.map_err(anyhow::Error::from);
        }
        let addr = config.listen.address;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot answer tls-alpn-01 on {addr} (listen.address): is moat running there? A running moat renews by itself")
        })?;
        tokio::select! {
            r = obtain => r.map_err(anyhow::Error::from),
            r = moat::acme::alpn::respond(listener, &state.challenges) => {
                Err(anyhow::anyhow!("the tls-alpn-01 responder on {addr} stopped: {r:?}"))
            }
        }
    });
    let issued = issued.map_err(|e| anyhow::anyhow!("moat certs acme: domain {}: {e}", d.name))?;
    println!(
        "wrote {} and {} for domain {} (issued by {}, serial {}, valid until {}); a running moat serves it after `moat ctl reload`, and renews it by itself",
        d.cert.display(),
        d.key.display(),
        d.name,
        issued.leaf.issuer,
        issued.leaf.serial,
        moat::clock::datetime(issued.leaf.not_after)
    );
    Ok(())
}

/// What `moat certs scope new` prints.
fn scope_report(s: &scope::NewScope) -> String {
    let mut out = format!(
        "scope subdomain: {}
node hostnames:
",
        s.subdomain
    );
    for h in &s.node_hostnames {
        out.push_str(&format!(
            "  {h}
"
        ));
    }
    match &s.appended_to {
        Some(p) => out.push_str(&format!(
            "appended to {}:

",
            p.display()
        )),
        None => out.push_str(
            "its [[tls.domains]] block:

",
        ),
    }
    out.push_str(&s.block);
    if !s.block.contains("[tls.domains.acme]") {
        out.push_str(&format!(
            "
issue it from the dev CA: moat certs issue --domain {} --hostnames '*.{}'
",
            s.name, s.subdomain
        ));
    }
    out
}

/// The `moat certs` commands of the dev PKI.
enum Pki<'a> {
    Init(&'a certgen::InitOptions),
    Issue(&'a certgen::IssueOptions),
    Csr(&'a certgen::CsrOptions),
}

fn dev_pki(cmd: Pki<'_>) -> anyhow::Result<()> {
    certs(cmd)
        .map(|line| println!("{line}"))
        .map_err(|e| anyhow::anyhow!("moat certs: {e}"))
}

/// Runs a `moat certs` command of the dev PKI; returns the line to print.
fn certs(cmd: Pki<'_>) -> Result<String, CertgenError> {
    let names = |h: &[String]| h.join(",");
    let password = |p: Option<PathBuf>| {
        p.map(|p| format!("; the key's password is in {} (0600)", p.display()))
            .unwrap_or_default()
    };
    Ok(match cmd {
        Pki::Init(o) => {
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
        Pki::Issue(o) => {
            let f = certgen::issue(o)?;
            format!(
                "wrote {} and {} for names {}{}",
                f.cert.display(),
                f.key.display(),
                names(&o.hostnames),
                password(f.new_password_file)
            )
        }
        Pki::Csr(o) => {
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
