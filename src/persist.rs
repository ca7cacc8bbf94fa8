//! Writing runtime changes (mode, rules) back into the config file the process started
//! with, so a restart keeps them.
//!
//! The file is re-read at each change and only the changed key is edited (toml_edit keeps
//! every comment and the layout), so an operator's edits made since start are merged, not
//! overwritten. The new file is written next to the old one, fsynced, and renamed over it:
//! a crash leaves either the old file or the new one, never half of one.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use toml_edit::{DocumentMut, Item, Table, Value};

/// Why a change could not be written.
#[derive(Debug, Error)]
pub enum PersistError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is no longer valid TOML ({message}); fix it or use --no-persist")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {path}: {source} (use --no-persist to change memory only)")]
    Write { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Edit(String),
}

/// Applies `edit` to the config file at `path` and replaces the file atomically.
pub fn edit<F>(path: &Path, edit: F) -> Result<(), PersistError>
where
    F: FnOnce(&mut DocumentMut) -> Result<(), String>,
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
    edit(&mut doc).map_err(PersistError::Edit)?;
    let new = doc.to_string();
    if new == text {
        return Ok(());
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
) -> Result<(), String> {
    let t = doc
        .entry(table)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("`{table}` in the config file is not a table"))?;
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

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.moat-{}.tmp", std::process::id()));
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_broken_file_is_reported_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("moat.toml");
        fs::write(&p, "[tls\n").unwrap();
        let e = edit(&p, |d| set_value(d, "tls", "mode", "disabled".into())).unwrap_err();
        assert!(matches!(e, PersistError::Parse { .. }), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "[tls\n");
    }
}
