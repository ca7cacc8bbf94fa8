//! The config file as `moat ctl` changes it: runtime changes (mode, rules) written back so
//! a restart keeps them, and the `[[firewall.rules]]` of another file read for `rules copy`.
//!
//! The file is re-read at each change and only the changed key is edited (toml_edit keeps
//! every comment and the layout), so an operator's edits made since start are merged, not
//! overwritten. The file is replaced atomically and durably ([`crate::durable`]): a crash
//! leaves either the old file or the new one, never half of one.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::{ArrayOfTables, DocumentMut, Item, Table, Value};

use crate::config::RuleConfig;
use crate::durable::{self, Replaced};
use crate::firewall::{Rule, RuleError, Source};

/// Why a change could not be written. In every case the file on disk is unchanged.
#[derive(Debug, Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}; the file is unchanged")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is no longer valid TOML ({message}); fix it or use --no-persist; the file is unchanged")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source} (use --no-persist to change memory only); the file is unchanged")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}; the file is unchanged")]
    Edit(#[from] DocError),
    #[error("the write did not finish ({0}); the file is unchanged")]
    Task(String),
}

/// Why a change does not fit the document as it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DocError {
    #[error("`{0}` in the config file is not a table")]
    NotATable(String),
    #[error("`firewall.rules` in the config file is not written as [[firewall.rules]] tables")]
    RulesNotTables,
}

/// Why another file's rules could not be read.
#[derive(Debug, Error)]
pub enum RulesFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} has no [[firewall.rules]]", path.display())]
    NoRules { path: PathBuf },
    #[error("{}: firewall.rules[{index}]: {source}", path.display())]
    Rule {
        path: PathBuf,
        index: usize,
        source: RuleError,
    },
}

/// What a successful edit did to the file.
#[derive(Debug)]
pub enum Saved {
    /// The document already said so: nothing was written.
    Unchanged,
    /// Written and durable.
    Written,
    /// Written (the new file is in place), but syncing its directory failed, so the rename
    /// may not survive a power loss.
    NotDurable(io::Error),
}

impl Saved {
    /// A note for the operator when the write is not known to be durable.
    pub fn warning(&self, path: &Path) -> Option<String> {
        match self {
            Saved::NotDurable(e) => Some(format!(
                "{} was replaced, but syncing its directory failed ({e}): the change is in the file and applied, but may not survive a power loss",
                path.display()
            )),
            Saved::Unchanged | Saved::Written => None,
        }
    }
}

/// Applies `edit` to the config file at `path` and replaces the file atomically.
pub fn edit<F>(path: &Path, edit: F) -> Result<Saved, PersistError>
where
    F: FnOnce(&mut DocumentMut) -> Result<(), DocError>,
{
    // A config mounted through a symlink (Kubernetes ConfigMaps) is edited where it lives.
    let real = fs::canonicalize(path).map_err(|source| PersistError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = fs::read_to_string(&real).map_err(|source| PersistError::Read {
        path: real.clone(),
        source,
    })?;
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| PersistError::Parse {
                path: real.clone(),
                message: e.message().to_string(),
            })?;
    edit(&mut doc)?;
    let new = doc.to_string();
    if new == text {
        return Ok(Saved::Unchanged);
    }
    write_atomic(&real, new.as_bytes()).map_err(|source| PersistError::Write {
        path: real.clone(),
        source,
    })
}

/// Sets `table.key = value`, creating the table if needed and keeping the comment that
/// followed the old value on its line.
pub fn set_value(
    doc: &mut DocumentMut,
    table: &str,
    key: &str,
    value: Value,
) -> Result<(), DocError> {
    let t = doc
        .entry(table)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| DocError::NotATable(table.to_string()))?;
    let mut value = value;
    match t.get_mut(key) {
        // Replace in place: the key keeps the comment lines above it, the value keeps the
        // comment after it.
        Some(item) => {
            if let Item::Value(old) = item {
                *value.decor_mut() = old.decor().clone();
            }
            *item = Item::Value(value);
        }
        None => {
            t.insert(key, Item::Value(value));
        }
    }
    Ok(())
}

/// Reads the rules of another deployment's moat config, or of a `rules export` file:
/// both hold `[[firewall.rules]]`.
pub fn read_rules_file(path: &Path) -> Result<Vec<Rule>, RulesFileError> {
    let text = fs::read_to_string(path).map_err(|source| RulesFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |message: String| RulesFileError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let doc: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| parse(e.message().to_string()))?;
    let rules = doc
        .get("firewall")
        .and_then(|f| f.get("rules"))
        .ok_or_else(|| RulesFileError::NoRules {
            path: path.to_path_buf(),
        })?;
    let list: Vec<RuleConfig> = rules
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| parse(format!("firewall.rules: {}", e.message())))?;
    list.iter()
        .enumerate()
        .map(|(index, r)| {
            r.to_rule().map_err(|source| RulesFileError::Rule {
                path: path.to_path_buf(),
                index,
                source,
            })
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

fn rules_array(doc: &mut DocumentMut) -> Result<&mut ArrayOfTables, DocError> {
    let fw = doc
        .entry("firewall")
        .or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| DocError::NotATable("firewall".into()))?;
    fw.entry("rules")
        .or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or(DocError::RulesNotTables)
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
pub fn add_in(doc: &mut DocumentMut, rule: &Rule) -> Result<(), DocError> {
    let arr = rules_array(doc)?;
    if !arr.iter().any(|t| same_source(t, rule)) {
        arr.push(rule_table(rule));
    }
    Ok(())
}

/// Removes every rule with the same source from the config document (other rules and
/// their comments stay as they are). Already gone (edited by hand): nothing to write.
pub fn remove_in(doc: &mut DocumentMut, rule: &Rule) -> Result<(), DocError> {
    rules_array(doc)?.retain(|t| !same_source(t, rule));
    Ok(())
}

/// Replaces every rule in the config document.
pub fn replace_in(doc: &mut DocumentMut, rules: &[Rule]) -> Result<(), DocError> {
    let arr = rules_array(doc)?;
    arr.clear();
    for r in rules {
        arr.push(rule_table(r));
    }
    Ok(())
}

/// Replaces `path` with `data` (see [`durable::replace`]). An error means the file is
/// unchanged; a failure after the rename (the directory sync) is [`Saved::NotDurable`].
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<Saved> {
    // The config file exists (it was just read): its owner and mode are kept.
    Ok(match durable::replace(path, data, 0o600)? {
        Replaced::Durable => Saved::Written,
        Replaced::NotDurable(e) => Saved::NotDurable(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const CONFIG: &str = r#"# moat config
[listen]
address = "127.0.0.1:27017"

[tls]
# roll-out step 2
mode = "allowSSL"    # disabled | allowSSL | preferSSL | requireSSL
default_domain = "d"
"#;

    #[test]
    fn setting_a_key_keeps_comments_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, CONFIG).unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "requireSSL".into())).unwrap();
        let after = fs::read_to_string(&p).unwrap();
        assert_eq!(
            after,
            CONFIG.replace(r#"mode = "allowSSL""#, r#"mode = "requireSSL""#)
        );
    }

    #[test]
    fn a_missing_table_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, "[listen]\naddress = \"127.0.0.1:1\"\n").unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "disabled".into())).unwrap();
        let after = fs::read_to_string(&p).unwrap();
        assert!(after.contains("[tls]\nmode = \"disabled\""), "{after}");
    }

    #[test]
    fn file_mode_is_kept_and_no_temp_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, CONFIG).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "disabled".into())).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn edits_made_on_disk_since_start_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, CONFIG).unwrap();
        // The operator edits another key by hand while moat runs.
        fs::write(&p, CONFIG.replace("127.0.0.1:27017", "0.0.0.0:27017")).unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "preferSSL".into())).unwrap();
        let after = fs::read_to_string(&p).unwrap();
        assert!(after.contains("0.0.0.0:27017") && after.contains(r#"mode = "preferSSL""#));
    }

    #[test]
    fn a_link_planted_at_the_old_predictable_temp_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, CONFIG).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        // Where moat used to write its temp file: `.moat.toml.moat-<pid>.tmp`.
        let planted = dir
            .path()
            .join(format!(".moat.toml.moat-{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "disabled".into())).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::read_to_string(&p)
            .unwrap()
            .contains(r#"mode = "disabled""#));
    }

    #[test]
    fn the_mode_survives_a_strict_umask_and_the_owner_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, CONFIG).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        // SAFETY: umask only swaps the process file-creation mask (restored below).
        let old = unsafe { libc::umask(0o077) };
        let r = edit(&p, |d| set_value(d, "tls", "mode", "disabled".into()));
        unsafe { libc::umask(old) };
        r.unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped the owner half: changing a file's owner needs root");
            return;
        }
        std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        edit(&p, |d| set_value(d, "tls", "mode", "allowSSL".into())).unwrap();
        let m = fs::metadata(&p).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }

    #[test]
    fn a_write_that_may_not_be_durable_says_so() {
        let e = io::Error::other("EIO");
        let w = Saved::NotDurable(e)
            .warning(Path::new("/etc/moat.toml"))
            .unwrap();
        assert!(
            w.contains("/etc/moat.toml was replaced") && w.contains("power loss"),
            "{w}"
        );
        assert!(Saved::Written.warning(Path::new("x")).is_none());
    }

    #[test]
    fn a_broken_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, "[tls\n").unwrap();
        let e = edit(&p, |d| set_value(d, "tls", "mode", "disabled".into())).unwrap_err();
        assert!(matches!(e, PersistError::Parse { .. }), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "[tls\n");
    }

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
}
