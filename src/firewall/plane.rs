//! The firewall's control-plane state: the rule list, the last good security-group
//! inventory, and the edits `moat ctl rules` makes to them. Every change ends in a freshly
//! compiled [`Firewall`] swapped in with one store. (Writing rules into the config file is
//! `admin::persist`'s.)

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::config::FirewallConfig;
use crate::events;
use crate::firewall::inventory::{self, Inventory};
use crate::firewall::{DefaultPolicy, Firewall, Rule, Source};

/// Rules, inventory and where the inventory comes from.
pub struct FirewallPlane {
    pub default: DefaultPolicy,
    pub rules: Vec<Rule>,
    pub inventory: Inventory,
    pub inventory_path: Option<PathBuf>,
    pub refresh: Duration,
    /// Hash of the file content last loaded: a rewrite is noticed even when its size and
    /// mtime (coarse, on some filesystems) are unchanged.
    loaded_hash: Option<u64>,
    last_error: Option<InventoryError>,
}

/// Why a rule edit was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PlaneError {
    #[error("{allowed} is already allowed by rule {id} ({description})")]
    AlreadyAllowed {
        allowed: String,
        id: String,
        description: String,
    },
    #[error("no rule has id `{0}` (see moat ctl rules list)")]
    NoSuchRule(String),
    #[error("security_group rules need [firewall.security_groups] inventory in the config file (then reload)")]
    NoInventory,
}

/// Why the security-group inventory could not be used (the last good one stays).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InventoryError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: inventory::NotInventory,
    },
}

/// What an inventory check found.
pub enum InventoryChange {
    /// The file is as it was.
    Unchanged,
    /// A new inventory was loaded.
    Loaded,
    /// The file is missing or corrupt; the last good inventory stays (error, newly seen).
    Failed(InventoryError),
    /// Still failing, with the error already reported.
    StillFailing,
}

impl FirewallPlane {
    /// The plane for a (validated) `[firewall]`. The inventory is read now; if it cannot
    /// be, the plane starts with none and the error is returned for the caller to report.
    pub fn new(cfg: &FirewallConfig) -> (FirewallPlane, Option<InventoryError>) {
        Self::with_rules(cfg, cfg.rules().to_vec())
    }

    fn with_rules(
        cfg: &FirewallConfig,
        rules: Vec<Rule>,
    ) -> (FirewallPlane, Option<InventoryError>) {
        let mut plane = FirewallPlane {
            default: cfg.default,
            rules,
            inventory: Inventory::default(),
            inventory_path: cfg.security_groups.as_ref().map(|s| s.inventory.clone()),
            refresh: cfg
                .security_groups
                .as_ref()
                .map_or(Duration::from_secs(60), |s| s.refresh),
            loaded_hash: None,
            last_error: None,
        };
        let err = match plane.check_inventory() {
            InventoryChange::Failed(e) => Some(e),
            _ => None,
        };
        (plane, err)
    }

    /// After a reload: when this plane could not read its inventory and `old` has a good
    /// one from the same file, that one stays in service. Returns whether it did.
    pub fn keep_last_good(&mut self, old: &FirewallPlane) -> bool {
        let keep = self.last_error.is_some()
            && self.inventory_path == old.inventory_path
            && old.loaded_hash.is_some();
        if keep {
            self.inventory = old.inventory.clone();
            self.loaded_hash = old.loaded_hash;
        }
        keep
    }

    /// Logs the inventory as it stands at start: loaded (with what it allows), or why not.
    pub fn log_inventory(&self, error: Option<&InventoryError>, firewall: &Firewall) {
        let Some(p) = &self.inventory_path else {
            return;
        };
        let path = p.display().to_string();
        match error {
            Some(e) => events::inventory_failed(&path, e, 0),
            None => events::inventory_loaded(&path, self.inventory.interfaces, firewall.counts().2),
        }
    }

    /// The inventory file's name for logs (`-` when there is none).
    pub fn inventory_name(&self) -> String {
        self.inventory_path
            .as_ref()
            .map_or_else(|| "-".to_string(), |p| p.display().to_string())
    }

    /// Compiles the current rules against the current inventory.
    pub fn compile(&self) -> Firewall {
        Firewall::build(self.default, self.rules.clone(), &self.inventory)
    }

    /// Re-reads the inventory file if it changed since the last look. A file that cannot
    /// be read or parsed leaves the last good inventory in place.
    pub fn check_inventory(&mut self) -> InventoryChange {
        let Some(path) = self.inventory_path.clone() else {
            return InventoryChange::Unchanged;
        };
        let loaded = std::fs::read(&path)
            .map_err(|e| InventoryError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })
            .and_then(|bytes| {
                let hash = inventory::content_hash(&bytes);
                if Some(hash) == self.loaded_hash {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(&bytes);
                Inventory::parse(&text)
                    .map(|inv| Some((inv, hash)))
                    .map_err(|e| InventoryError::Parse {
                        path: path.display().to_string(),
                        source: e,
                    })
            });
        match loaded {
            Ok(None) => InventoryChange::Unchanged,
            Ok(Some((inv, hash))) => {
                self.inventory = inv;
                self.loaded_hash = Some(hash);
                self.last_error = None;
                InventoryChange::Loaded
            }
            Err(e) if self.last_error.as_ref() == Some(&e) => InventoryChange::StillFailing,
            Err(e) => {
                self.last_error = Some(e.clone());
                InventoryChange::Failed(e)
            }
        }
    }

    /// The rule with the same source, if any.
    fn same(&self, rule: &Rule) -> Option<&Rule> {
        self.rules.iter().find(|r| r.source == rule.source)
    }

    /// Adds a rule; a rule for the same source is an error.
    pub fn add(&mut self, rule: Rule) -> Result<(), PlaneError> {
        if let Some(r) = self.same(&rule) {
            return Err(PlaneError::AlreadyAllowed {
                allowed: rule.source.to_string(),
                id: r.id.clone(),
                description: r.description.clone(),
            });
        }
        self.check_groups_usable(std::slice::from_ref(&rule))?;
        self.rules.push(rule);
        Ok(())
    }

    /// Removes the rule with this id (every copy of it: the file may list a source twice).
    pub fn remove(&mut self, id: &str) -> Result<Rule, PlaneError> {
        let i = self
            .rules
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| PlaneError::NoSuchRule(id.to_string()))?;
        let removed = self.rules.remove(i);
        self.rules.retain(|r| r.id != id);
        Ok(removed)
    }

    /// Merges `rules` (skipping sources already allowed), or replaces every rule with them.
    /// Returns (added, skipped, removed).
    pub fn merge(
        &mut self,
        rules: Vec<Rule>,
        replace: bool,
    ) -> Result<(usize, usize, usize), PlaneError> {
        self.check_groups_usable(&rules)?;
        let removed = if replace {
            std::mem::take(&mut self.rules).len()
        } else {
            0
        };
        let (mut added, mut skipped) = (0, 0);
        for r in rules {
            if self.same(&r).is_some() {
                skipped += 1;
            } else {
                self.rules.push(r);
                added += 1;
            }
        }
        Ok((added, skipped, removed))
    }

    fn check_groups_usable(&self, rules: &[Rule]) -> Result<(), PlaneError> {
        let groups = rules
            .iter()
            .any(|r| matches!(r.source, Source::SecurityGroup { .. }));
        if groups && self.inventory_path.is_none() {
            return Err(PlaneError::NoInventory);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(c: &str, d: &str) -> Rule {
        Rule::parse(Some(c), None, None, d).unwrap()
    }

    #[test]
    fn merging_skips_sources_already_allowed() {
        let (mut plane, _) =
            FirewallPlane::with_rules(&FirewallConfig::default(), vec![cidr("10.0.0.0/8", "a")]);
        let (added, skipped, removed) = plane
            .merge(
                vec![cidr("10.0.0.0/8", "b"), cidr("192.0.2.0/24", "c")],
                false,
            )
            .unwrap();
        assert_eq!((added, skipped, removed), (1, 1, 0));
        assert_eq!(plane.rules.len(), 2);
        let (added, _, removed) = plane.merge(vec![cidr("192.0.2.0/24", "c")], true).unwrap();
        assert_eq!((added, removed, plane.rules.len()), (1, 2, 1));
        assert!(plane
            .add(cidr("192.0.2.0/24", "again"))
            .unwrap_err()
            .to_string()
            .contains("already allowed"));
    }
}
