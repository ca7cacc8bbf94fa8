//! `moat check`: load everything the config names, exactly as `run` would, and report what
//! moat would do with it, or every problem, placed at file:line:col.

use std::fmt;
use std::path::Path;

use thiserror::Error;

use crate::config::load::{self, Loaded};
use crate::error::ConfigErrors;
use crate::events;
use crate::firewall::DefaultPolicy;
use crate::tls::Resumption;
use crate::upstream;

/// Why a config does not pass.
#[derive(Debug, Error)]
pub enum CheckError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("moat: TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// What `moat check` prints for a config that passes: one summary line, then warnings.
pub struct Report {
    path: String,
    loaded: Loaded,
    /// Members of the upstream's replica set that are its own address (when reachable).
    self_advertised: Vec<String>,
}

/// Loads and checks the config at `path`. An inventory that cannot be read is an error
/// here (at run time the last good one stays in service).
pub fn check(path: &Path) -> Result<Report, CheckError> {
    let loaded = load::load(path, &Resumption::new()?)?;
    if let Some(e) = loaded.inventory_problem() {
        return Err(e.into());
    }
    let timeout = loaded.config.upstream.connect_timeout;
    let self_advertised = upstream::advertised(&loaded.upstream, timeout)
        .map(|a| a.naming(&loaded.upstream, true))
        .unwrap_or_default();
    Ok(Report {
        path: path.display().to_string(),
        loaded,
        self_advertised,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.loaded;
        let fw = &l.firewall;
        let (cidr, groups, addresses) = fw.counts();
        let domains: Vec<&str> = l
            .config
            .tls
            .domains
            .iter()
            .map(|d| d.name.as_str())
            .collect();
        writeln!(
            f,
            "{}: OK: listen {}, upstream {}, mode {}, domains [{}], egress {}, firewall default {} with {cidr} CIDR and {groups} security-group rules ({addresses} addresses)",
            self.path,
            l.config.listen.address,
            l.upstream,
            l.config.tls.mode,
            domains.join(", "),
            l.config.egress.len(),
            fw.default_policy().as_str(),
        )?;
        if fw.default_policy() == DefaultPolicy::Deny && cidr + groups == 0 {
            writeln!(
                f,
                "warning: default deny and no firewall rules: every connection would be refused"
            )?;
        }
        for w in l.warnings() {
            writeln!(f, "warning: {w}")?;
        }
        for w in l.source.place(l.config.permission_warnings()).0 {
            writeln!(f, "warning: {w}")?;
        }
        if !self.self_advertised.is_empty() {
            let upstream = l.upstream.to_string();
            let hosts = self.self_advertised.join(", ");
            writeln!(
                f,
                "warning: {}",
                events::self_advertised_advice(&upstream, &hosts)
            )?;
        }
        for w in crate::scope::shared_deployment_scopes(Path::new(&self.path), &l.config) {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}
