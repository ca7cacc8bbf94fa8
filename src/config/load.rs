//! A configuration with everything it names loaded and checked: the parsed file, the TLS
//! state, the egress targets and the firewall (rules, inventory, compiled tries). Built
//! once per start or reload, then applied whole: a bad file anywhere means nothing changes.

use std::path::Path;

use super::{Config, Source, UpstreamAddr};
use crate::egress::Target;
use crate::error::{ConfigError, ConfigErrors, Invalid};
use crate::firewall::plane::{FirewallPlane, InventoryError};
use crate::firewall::Firewall;
use crate::tls::{Resumption, TlsState};

/// Everything a config file names, loaded.
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    pub upstream: UpstreamAddr,
    pub tls: Option<TlsState>,
    pub egress: Vec<Target>,
    /// Rules and the security-group inventory, and the firewall compiled from them.
    pub plane: FirewallPlane,
    pub firewall: Firewall,
    /// Why the inventory could not be read, if it could not: `check` refuses the config,
    /// `run` starts without it and a reload keeps the last good one.
    pub inventory_error: Option<InventoryError>,
}

/// Reads the config file and loads every file it names; all problems are reported.
pub fn load(path: &Path, resumption: &Resumption) -> Result<Loaded, ConfigErrors> {
    load_over(path, resumption, None)
}

/// [`load`] for a reload: an ACME domain whose files are unusable keeps the certificate
/// `previous` served.
pub fn load_over(
    path: &Path,
    resumption: &Resumption,
    previous: Option<&TlsState>,
) -> Result<Loaded, ConfigErrors> {
    let (mut config, source) = super::load(path)?;
    let upstream = config.upstream_addr().ok_or_else(|| {
        let unresolved = format!("`{}` was not resolved", config.upstream.address);
        source.place(vec![Invalid::new("upstream.address", unresolved)])
    })?;
    let mut problems = Vec::new();
    let tls = TlsState::build(&config.tls, resumption, previous).unwrap_or_else(|p| {
        problems.extend(p);
        None
    });
    if let Some(t) = &tls {
        config.warnings.extend(t.warnings.iter().cloned());
    }
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
    let (plane, inventory_error) = FirewallPlane::new(&config.firewall);
    let firewall = plane.compile();
    Ok(Loaded {
        config,
        source,
        upstream,
        tls,
        egress,
        plane,
        firewall,
        inventory_error,
    })
}

impl Loaded {
    /// The config's warnings, placed at file:line:col.
    pub fn warnings(&self) -> Vec<ConfigError> {
        if self.config.warnings.is_empty() {
            return Vec::new();
        }
        self.source.place(self.config.warnings.clone()).0
    }

    /// The inventory error as a config error, for `moat check`.
    pub fn inventory_problem(&self) -> Option<ConfigErrors> {
        let e = self.inventory_error.as_ref()?;
        Some(
            self.source
                .place(vec![Invalid::new("firewall.security_groups.inventory", e)]),
        )
    }
}
