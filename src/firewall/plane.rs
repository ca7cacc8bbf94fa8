//! The firewall's control-plane state: the rule list, the last good security-group
//! inventory, and the edits `moat ctl rules` makes. Every change ends in a freshly compiled
//! [`Firewall`] swapped in with one store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};

use crate::config::{FirewallConfig, RuleConfig};
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
    last_error: Option<String>,
}

/// What an inventory check found.
pub enum InventoryChange {
    /// The file is as it was.
    Unchanged,
    /// A new inventory was loaded.
    Loaded,
    /// The file is missing or corrupt; the last good inventory stays (error, newly seen).
    Failed(String),
    /// Still failing, with the error already reported.
    StillFailing,
}

impl FirewallPlane {
    /// The plane for a (validated) `[firewall]`. The inventory is read now; if it cannot
    /// be, the plane starts with none and the error is returned for the caller to report.
    pub fn new(cfg: &FirewallConfig, rules: Vec<Rule>) -> (FirewallPlane, Option<String>) {
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

    /// Takes a reloaded `[firewall]`: rules, default and inventory location. The inventory
    /// is re-read.
    pub fn reconfigure(&mut self, cfg: &FirewallConfig, rules: Vec<Rule>) -> InventoryChange {
        self.default = cfg.default;
        self.rules = rules;
        let path = cfg.security_groups.as_ref().map(|s| s.inventory.clone());
        if path != self.inventory_path {
            self.inventory = Inventory::default();
            self.inventory_path = path;
        }
        if let Some(s) = &cfg.security_groups {
            self.refresh = s.refresh;
        }
        self.loaded_hash = None;
        self.last_error = None;
        self.check_inventory()
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
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|bytes| {
                let hash = inventory::content_hash(&bytes);
                if Some(hash) == self.loaded_hash {
                    return Ok(None);
                }
                let text = String::from_utf8_lossy(&bytes);
                Inventory::parse(&text)
                    .map(|inv| Some((inv, hash)))
                    .map_err(|e| format!("{}: {e}", path.display()))
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
    pub fn add(&mut self, rule: Rule) -> Result<(), String> {
        if let Some(r) = self.same(&rule) {
            return Err(format!(
                "{} is already allowed by rule {} ({})",
                rule.source, r.id, r.description
            ));
        }
        self.check_groups_usable(std::slice::from_ref(&rule))?;
        self.rules.push(rule);
        Ok(())
    }

    /// Removes the rule with this id (every copy of it: the file may list a source twice).
    pub fn remove(&mut self, id: &str) -> Result<Rule, String> {
        let i = self
            .rules
            .iter()
            .position(|r| r.id == id)
            .ok_or_else(|| format!("no rule has id `{id}` (see moat ctl rules list)"))?;
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
    ) -> Result<(usize, usize, usize), String> {
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

    fn check_groups_usable(&self, rules: &[Rule]) -> Result<(), String> {
        let groups = rules
            .iter()
            .any(|r| matches!(r.source, Source::SecurityGroup { .. }));
        if groups && self.inventory_path.is_none() {
            return Err("security_group rules need [firewall.security_groups] inventory in the config file (then reload)".into());
        }
        Ok(())
    }
}

/// Reads the rules of another deployment's moat config, or of a `rules export` file:
/// both hold `[[firewall.rules]]`.
pub fn read_rules_file(path: &Path) -> Result<Vec<Rule>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", path.display(), e.message()))?;
    let rules = doc
        .get("firewall")
        .and_then(|f| f.get("rules"))
        .ok_or_else(|| format!("{} has no [[firewall.rules]]", path.display()))?;
    let list: Vec<RuleConfig> = rules.clone().try_into().map_err(|e: toml::de::Error| {
        format!("{}: firewall.rules: {}", path.display(), e.message())
    })?;
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            r.to_rule()
                .map_err(|e| format!("{}: firewall.rules[{i}]: {e}", path.display()))
        })
        .collect()
}

fn rule_table(rule: &Rule) -> Table {
    let mut t = Table::new();
    match &rule.source {
        Source::Cidr(n) => {
            t.insert("cidr", toml_edit::value(n.to_string()));
        }
        Source::SecurityGroup { group, account } => {
            t.insert("security_group", toml_edit::value(group.as_str()));
            t.insert("account", toml_edit::value(account.as_str()));
        }
    }
    t.insert("description", toml_edit::value(rule.description.as_str()));
    t
}

/// `[[firewall.rules]]` blocks for these rules: what `rules export` prints and
/// `rules copy --from` reads.
pub fn export(rules: &[Rule]) -> String {
    let mut doc = DocumentMut::new();
    let _ = replace_in(&mut doc, rules);
    doc.to_string()
}

fn rules_array(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, String> {
    let fw = doc
        .entry("firewall")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or("`firewall` in the config file is not a table")?;
    fw.entry("rules")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or_else(|| {
            "`firewall.rules` in the config file is not written as [[firewall.rules]] tables"
                .to_string()
        })
}

/// Whether a `[[firewall.rules]]` table allows `rule`'s source.
fn same_source(t: &Table, rule: &Rule) -> bool {
    let text = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Rule::parse(
        text("cidr").as_deref(),
        text("security_group").as_deref(),
        text("account").as_deref(),
        "-",
    )
    .is_ok_and(|r| r.source == rule.source)
}

/// Appends a rule to the config document, unless the file already has one for the same
/// source (written there by hand since start, say).
pub fn add_in(doc: &mut DocumentMut, rule: &Rule) -> Result<(), String> {
    let arr = rules_array(doc)?;
    if !arr.iter().any(|t| same_source(t, rule)) {
        arr.push(rule_table(rule));
    }
    Ok(())
}

/// Removes every rule with the same source from the config document (other rules and
/// their comments stay as they are). Already gone (edited by hand): nothing to write.
pub fn remove_in(doc: &mut DocumentMut, rule: &Rule) -> Result<(), String> {
    rules_array(doc)?.retain(|t| !same_source(t, rule));
    Ok(())
}

/// Replaces every rule in the config document.
pub fn replace_in(doc: &mut DocumentMut, rules: &[Rule]) -> Result<(), String> {
    let arr = rules_array(doc)?;
    arr.clear();
    for r in rules {
        arr.push(rule_table(r));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(c: &str, d: &str) -> Rule {
        Rule::parse(Some(c), None, None, d).unwrap()
    }

    #[test]
    fn export_round_trips_through_read_rules_file() {
        let rules = vec![
            cidr("203.0.113.0/24", "office VPN"),
            Rule::parse(
                None,
                Some("sg-0a1b2c3d"),
                Some("123456789012"),
                "app servers",
            )
            .unwrap(),
        ];
        let text = export(&rules);
        assert!(
            text.contains(
                "[[firewall.rules]]\ncidr = \"203.0.113.0/24\"\ndescription = \"office VPN\""
            ),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rules.toml");
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_rules_file(&p).unwrap(), rules);
    }

    #[test]
    fn removing_from_the_document_keeps_the_other_rules_and_comments() {
        let src = "[listen]\naddress = \"127.0.0.1:1\"\n\n# office\n[[firewall.rules]]\ncidr = \"203.0.113.0/24\"\ndescription = \"office VPN\"\n\n# CI\n[[firewall.rules]]\ncidr = \"198.51.100.0/24\"\ndescription = \"ci\"\n";
        let mut doc: DocumentMut = src.parse().unwrap();
        remove_in(&mut doc, &cidr("203.0.113.0/24", "x")).unwrap();
        let out = doc.to_string();
        assert!(
            !out.contains("203.0.113.0/24")
                && out.contains("# CI\n[[firewall.rules]]\ncidr = \"198.51.100.0/24\""),
            "{out}"
        );
        add_in(&mut doc, &cidr("10.0.0.0/8", "vpc")).unwrap();
        assert!(doc
            .to_string()
            .ends_with("[[firewall.rules]]\ncidr = \"10.0.0.0/8\"\ndescription = \"vpc\"\n"));
    }

    #[test]
    fn a_rule_already_in_the_file_is_not_written_twice_and_removal_takes_every_copy() {
        let src = "[[firewall.rules]]\ncidr = \"10.0.0.0/8\"\ndescription = \"by hand\"\n";
        let mut doc: DocumentMut = src.parse().unwrap();
        add_in(&mut doc, &cidr("10.0.0.0/8", "from ctl")).unwrap();
        assert_eq!(doc.to_string(), src, "the hand-written rule stays, once");
        add_in(&mut doc, &cidr("192.0.2.0/24", "new")).unwrap();
        rules_array(&mut doc)
            .unwrap()
            .push(rule_table(&cidr("10.0.0.0/8", "again")));
        remove_in(&mut doc, &cidr("10.0.0.0/8", "x")).unwrap();
        let out = doc.to_string();
        assert!(
            !out.contains("10.0.0.0/8") && out.contains("192.0.2.0/24"),
            "{out}"
        );
    }

    #[test]
    fn merging_skips_sources_already_allowed() {
        let (mut plane, _) =
            FirewallPlane::new(&FirewallConfig::default(), vec![cidr("10.0.0.0/8", "a")]);
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
            .contains("already allowed"));
    }
}
