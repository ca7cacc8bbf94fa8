//! Command-line interface (clap). `moat --help` and `moat <cmd> --help` document every flag.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::certgen::{CsrOptions, InitOptions, IssueOptions};
use crate::policy::Mode;
use crate::scope::ScopeNewOptions;

/// moat: a TLS-terminating sidecar for MongoDB nodes.
#[derive(Debug, Parser)]
#[command(name = "moat", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve: accept clients on the public port and forward them to the local mongod.
    Run(ConfigArg),
    /// Validate the config and every certificate and key it names, without serving.
    Check(ConfigArg),
    /// Make development certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Talk to a running moat through its admin socket.
    Ctl(CtlArgs),
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin socket (default: `[admin] socket` of --config).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// Config file whose `[admin] socket` to use.
    #[arg(long, short, global = true, default_value = "config.toml")]
    pub config: PathBuf,
    /// Print the raw JSON reply instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Mode, uptime, connections by transport, domains and their expiry.
    Status,
    /// Show (`mode` or `mode get`) or change (`mode set X`) the SSL mode.
    Mode {
        #[command(subcommand)]
        action: Option<ModeAction>,
    },
    /// List open connections: id, remote, transport, SNI/domain, age, bytes, driver, app, user.
    Connections {
        /// Only plaintext connections (who still connects without TLS).
        #[arg(long)]
        plaintext: bool,
    },
    /// Re-read the config file, certificates, keys and inventory (same as SIGHUP).
    Reload,
    /// List, add, remove, copy or export firewall rules.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Sources refused for failing authentication too often (`[auth_throttle]`).
    Bans {
        #[command(subcommand)]
        action: Option<BansAction>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BansAction {
    /// Every ban in force: source, time left, failures.
    List,
    /// Lift the ban of one source, or every ban.
    Clear {
        /// The source address (IPv4 or IPv6); without it, every ban is lifted.
        ip: Option<std::net::IpAddr>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesAction {
    /// Every rule: id, kind, value, account, description.
    List,
    /// Allow a CIDR, or an EC2 security group of an AWS account.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["cidr", "security_group"])))]
    Add {
        /// e.g. 203.0.113.0/24 or 2001:db8::/32
        #[arg(long)]
        cidr: Option<String>,
        /// e.g. sg-0a1b2c3d4e5f67890 (needs --account)
        #[arg(long, requires = "account")]
        security_group: Option<String>,
        /// The 12-digit AWS account id that owns the security group.
        #[arg(long)]
        account: Option<String>,
        /// Whose access this is ("office VPN").
        #[arg(long)]
        description: String,
        /// Change the running rules only; do not write them into the config file.
        #[arg(long)]
        no_persist: bool,
    },
    /// Remove a rule by its id (from `rules list`).
    Remove {
        id: String,
        #[arg(long)]
        no_persist: bool,
    },
    /// Copy the rules of another deployment (its moat config, or a `rules export` file).
    Copy {
        #[arg(long)]
        from: PathBuf,
        /// Replace every rule instead of adding the missing ones.
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        no_persist: bool,
    },
    /// Print the rules as [[firewall.rules]] TOML.
    Export,
}

#[derive(Debug, Subcommand)]
pub enum ModeAction {
    /// Print the current mode.
    Get,
    /// Change the mode for new connections; open connections keep going.
    Set {
        /// disabled | allowSSL | preferSSL | requireSSL | passthrough
        mode: Mode,
        /// requireSSL even while plaintext clients are connected; into or out of
        /// passthrough even while any client is.
        #[arg(long)]
        force: bool,
        /// Change the running mode only; do not write it into the config file.
        #[arg(long)]
        no_persist: bool,
    },
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "config.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a dev CA and a certificate + key for the default domain, signed by it.
    Init(InitOptions),
    /// Issue a certificate for a domain, signed by the dev CA that `certs init` made in DIR.
    Issue(IssueOptions),
    /// Make a new key pair for this node and a certificate signing request for a real CA.
    Csr(CsrOptions),
    /// Get a domain's certificate from its ACME CA now ([tls.domains.acme]), as moat's
    /// renewal does, and write it in place.
    Acme(AcmeArgs),
    /// Domain scopes: a random subdomain for an account's or a deployment's nodes.
    #[command(subcommand)]
    Scope(ScopeCommand),
}

#[derive(Debug, Args)]
pub struct AcmeArgs {
    /// The [[tls.domains]] name.
    #[arg(long)]
    pub domain: String,
    /// Configuration file (TOML).
    #[arg(long, short, default_value = "config.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum ScopeCommand {
    /// Make a random subdomain, print its node hostnames and write its [[tls.domains]] block.
    New(ScopeNewOptions),
}
