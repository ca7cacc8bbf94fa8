//! Domain scopes: the nodes of an account, or of one deployment, answer under a random
//! subdomain (`node1.<random>.db.example.net`), and one wildcard certificate covers it.
//! An account scope is shared by every cluster of the account (one certificate to get and
//! renew, but a leaked key speaks for all of them); a deployment scope belongs to one
//! cluster and is never reused (narrower is safer, wider is cheaper).
//!
//! `moat certs scope new` makes one; `moat check` warns when a deployment scope of the
//! config it checks is also in another config beside it (the `*.toml` files in the same
//! directory: where one host keeps its deployments' configs).

use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::DocumentMut;

use crate::config::{Config, Scope};
use crate::durable;

/// Random bits in a scope's label (10 base32 characters).
pub const LABEL_BITS: u32 = 50;
/// Other configs looked at beside the checked one, at most.
const MAX_SIBLINGS: usize = 1000;
/// Largest sibling file read.
const MAX_SIBLING_BYTES: u64 = 1 << 20;

/// Why a scope could not be made.
#[derive(Debug, Error)]
pub enum ScopeError {
    #[error("no randomness available for the scope's label")]
    NoRandomness,
    #[error("--base `{0}` is not a DNS name (letters, digits and hyphens, dot-separated)")]
    BadBase(String),
    #[error("--scope `{0}`: use account or deployment")]
    BadScope(String),
    #[error("--acme-directory needs --dns-hook: a scope is a wildcard, which a CA issues by dns-01 only")]
    NoHook,
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error("{}: a [[tls.domains]] is already named `{name}` (use --name)", path.display())]
    NameTaken { path: PathBuf, name: String },
}

fn parse_scope(s: &str) -> Result<Scope, ScopeError> {
    match s {
        "account" => Ok(Scope::Account),
        "deployment" => Ok(Scope::Deployment),
        _ => Err(ScopeError::BadScope(s.to_string())),
    }
}

/// What `moat certs scope new` makes.
#[derive(Debug, Clone, clap::Args)]
pub struct ScopeNewOptions {
    /// account: one subdomain for all of an account's clusters (wider, cheaper);
    /// deployment: one per cluster, never reused (narrower, safer).
    #[arg(long, value_parser = |s: &str| parse_scope(s).map_err(|e| e.to_string()))]
    pub scope: Scope,
    /// The parent domain the random subdomain goes under, e.g. db.example.net.
    #[arg(long)]
    pub base: String,
    /// The [[tls.domains]] name (default: the scope and its label, `deployment-<label>`).
    #[arg(long)]
    pub name: Option<String>,
    /// How many node hostnames to print (node1, node2, ...).
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Directory of the certificate and key files the block names.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Issue the wildcard by ACME dns-01 from this directory URL (default: the dev CA,
    /// with `moat certs issue`).
    #[arg(long)]
    pub acme_directory: Option<String>,
    /// dns-01: the program run as `HOOK set|clear FQDN VALUE`.
    #[arg(long)]
    pub dns_hook: Option<PathBuf>,
    /// ACME account contact, e.g. mailto:ops@example.net (repeatable).
    #[arg(long)]
    pub acme_contact: Vec<String>,
    /// The CA certificate the ACME directory's HTTPS certificate chains to (a test CA).
    #[arg(long)]
    pub acme_directory_ca: Option<PathBuf>,
    /// The ACME account key (made when missing); default DIR/acme-account.pem.
    #[arg(long)]
    pub acme_account_key: Option<PathBuf>,
    /// Append the block to this config file (and make the first domain its default_domain
    /// if none is set) instead of printing it only.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A scope made by [`new`].
#[derive(Debug, Clone)]
pub struct NewScope {
    /// The random subdomain with its base: `k3x9q2ab7d.db.example.net`.
    pub subdomain: String,
    /// The domain's name in the config.
    pub name: String,
    /// `node1.<subdomain>`, ...
    pub node_hostnames: Vec<String>,
    /// The `[[tls.domains]]` block.
    pub block: String,
    /// The config file the block was appended to.
    pub appended_to: Option<PathBuf>,
}

/// A DNS-safe lowercase label of [`LABEL_BITS`] random bits from the OS RNG (base32:
/// `a-z` and `2-7`).
pub fn random_label() -> Result<String, ScopeError> {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut raw = [0u8; 8];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut raw)
        .map_err(|_| ScopeError::NoRandomness)?;
    let mut bits = u64::from_le_bytes(raw);
    let label = (0..LABEL_BITS / 5)
        .map(|_| {
            let c = ALPHABET[(bits & 31) as usize] as char;
            bits >>= 5;
            c
        })
        .collect();
    Ok(label)
}

fn check_base(base: &str) -> Result<String, ScopeError> {
    let base = base.trim_end_matches('.').to_ascii_lowercase();
    let ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    // Room for `*.` and `node99.` plus the random label.
    if base.is_empty() || base.len() > 253 - 20 || !base.split('.').all(ok) {
        return Err(ScopeError::BadBase(base));
    }
    Ok(base)
}

/// Makes a scope: the random subdomain, its node hostnames, and its `[[tls.domains]]`
/// block (appended to `--config` when given).
pub fn new(opts: &ScopeNewOptions) -> Result<NewScope, ScopeError> {
    let base = check_base(&opts.base)?;
    let label = random_label()?;
    let subdomain = format!("{label}.{base}");
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{label}", opts.scope.as_str()));
    let node_hostnames = (1..=opts.nodes.max(1))
        .map(|n| format!("node{n}.{subdomain}"))
        .collect();
    let dir = opts.dir.display().to_string();
    let q = |s: &str| toml_edit::Value::from(s).to_string();
    let mut block = format!(
        "[[tls.domains]]\nname = {}\nscope = {}\nhostnames = [{}]\ncert = {}\nkey = {}\n",
        q(&name),
        q(opts.scope.as_str()),
        q(&format!("*.{subdomain}")),
        q(&format!("{dir}/{name}.pem")),
        q(&format!("{dir}/{name}-key.pem")),
    );
    if let Some(directory) = &opts.acme_directory {
        let hook = opts.dns_hook.as_ref().ok_or(ScopeError::NoHook)?;
        let account = opts
            .acme_account_key
            .clone()
            .unwrap_or_else(|| opts.dir.join("acme-account.pem"));
        block.push_str(&format!(
            "\n[tls.domains.acme]\ndirectory = {}\nchallenge = \"dns-01\"\nhook = {}\naccount_key = {}\n",
            q(directory),
            q(&hook.display().to_string()),
            q(&account.display().to_string()),
        ));
        if !opts.acme_contact.is_empty() {
            let list: Vec<String> = opts.acme_contact.iter().map(|c| q(c)).collect();
            block.push_str(&format!("contact = [{}]\n", list.join(", ")));
        }
        if let Some(ca) = &opts.acme_directory_ca {
            block.push_str(&format!(
                "directory_ca = {}\n",
                q(&ca.display().to_string())
            ));
        }
    }
    let appended_to = match &opts.config {
        Some(path) => {
            append(path, &name, &block)?;
            Some(path.clone())
        }
        None => None,
    };
    Ok(NewScope {
        subdomain,
        name,
        node_hostnames,
        block,
        appended_to,
    })
}

/// Appends `block` to the config at `path`; with one domain there and no default_domain,
/// that domain becomes the default (clients without SNI keep getting what they got).
fn append(path: &Path, name: &str, block: &str) -> Result<(), ScopeError> {
    let fail = |message: String| ScopeError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| fail(e.message().to_string()))?;
    let names = domain_names(&doc);
    if names.iter().any(|n| n == name) {
        return Err(ScopeError::NameTaken {
            path: path.to_path_buf(),
            name: name.to_string(),
        });
    }
    let has_default = doc
        .get("tls")
        .and_then(|t| t.get("default_domain"))
        .is_some();
    if let (false, [only]) = (has_default, names.as_slice()) {
        crate::admin::persist::set_value(&mut doc, "tls", "default_domain", only.as_str().into())
            .map_err(|e| fail(e.to_string()))?;
    }
    let mut out = doc.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(block);
    durable::replace(path, out.as_bytes(), 0o600).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

fn domain_names(doc: &DocumentMut) -> Vec<String> {
    doc.get("tls")
        .and_then(|t| t.get("domains"))
        .and_then(|d| d.as_array_of_tables())
        .map(|a| {
            a.iter()
                .filter_map(|t| t.get("name").and_then(|n| n.as_str()).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The subdomain a scope's hostname stands for: `*.x.example.net` stands for
/// `x.example.net`; an exact name for itself.
fn scope_of(hostname: &str) -> String {
    let h = hostname.to_ascii_lowercase();
    match h.strip_prefix("*.") {
        Some(parent) => parent.to_string(),
        None => h,
    }
}

/// Whether a hostname another config serves is inside the subdomain `scope`: the
/// subdomain itself, its wildcard, or a name one label under it (`node1.x.example.net`).
fn inside(scope: &str, hostname: &str) -> bool {
    let h = hostname.to_ascii_lowercase();
    let h = h.strip_prefix("*.").unwrap_or(&h);
    h == scope || h.split_once('.').is_some_and(|(_, parent)| parent == scope)
}

/// Warnings for each deployment scope of `config` (read from `path`) that another config
/// in the same directory also serves.
pub fn shared_deployment_scopes(path: &Path, config: &Config) -> Vec<String> {
    let mine: Vec<(usize, String)> = config
        .tls
        .domains
        .iter()
        .enumerate()
        .filter(|(_, d)| d.scope == Some(Scope::Deployment))
        .flat_map(|(i, d)| d.hostnames.iter().map(move |h| (i, scope_of(h))))
        .collect();
    if mine.is_empty() {
        return Vec::new();
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let me = std::fs::canonicalize(path).ok();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    for entry in entries.flatten().take(MAX_SIBLINGS) {
        let other = entry.path();
        let is_toml = other.extension().is_some_and(|e| e == "toml");
        let small = entry
            .metadata()
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_SIBLING_BYTES);
        if !is_toml || !small || std::fs::canonicalize(&other).ok() == me {
            continue;
        }
        for (j, hostnames) in sibling_domains(&other) {
            for (i, s) in &mine {
                if hostnames.iter().any(|h| inside(s, h)) {
                    warnings.push(format!(
                        "tls.domains[{i}]: the deployment scope {s} is also served by {} (tls.domains[{j}]): a deployment scope belongs to one deployment; make another with `moat certs scope new --scope deployment`",
                        other.display()
                    ));
                }
            }
        }
    }
    warnings.sort();
    warnings
}

/// `(index, hostnames)` of each `[[tls.domains]]` in a file that looks like a moat config.
fn sibling_domains(path: &Path) -> Vec<(usize, Vec<String>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let Some(domains) = doc
        .get("tls")
        .and_then(|t| t.get("domains"))
        .and_then(|d| d.as_array())
    else {
        return Vec::new();
    };
    domains
        .iter()
        .enumerate()
        .map(|(j, d)| {
            let hostnames = d
                .get("hostnames")
                .and_then(|h| h.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|h| h.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (j, hostnames)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_dns_safe_lowercase_and_differ() {
        let a = random_label().unwrap();
        let b = random_label().unwrap();
        assert_eq!(a.len(), 10);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c)));
        assert_ne!(a, b, "50 random bits twice the same");
    }

    #[test]
    fn a_scope_holds_its_wildcard_and_its_node_names_only() {
        let s = scope_of("*.K3x.db.example.net");
        assert_eq!(s, "k3x.db.example.net");
        assert!(inside(&s, "*.k3x.db.example.net"));
        assert!(inside(&s, "NODE1.k3x.db.example.net"));
        assert!(inside(&s, "k3x.db.example.net"));
        assert!(!inside(&s, "other.db.example.net"));
        assert!(!inside(&s, "a.b.k3x.db.example.net"));
    }

    #[test]
    fn a_bad_base_is_refused() {
        assert!(check_base("db.example.net.").is_ok());
        assert!(check_base("db..example.net").is_err());
        assert!(check_base("-db.example.net").is_err());
        assert!(check_base("db_1.example.net").is_err());
    }
}
