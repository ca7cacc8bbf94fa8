//! Files replaced atomically and durably: the new content is written next to the old file
//! under a random name (created `O_EXCL | O_NOFOLLOW`, so nothing planted at that path is
//! followed or reused), given the old file's owner, group and mode, fsynced, and renamed
//! over it. A crash leaves either the old file or the new one, never half of one. Used for
//! the config file (`moat ctl` write-back) and for certificates, keys and passwords that
//! ACME issues.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Attempts at a fresh temporary name before giving up (each is 64 random bits).
const TEMP_ATTEMPTS: usize = 8;

/// Whether a replacement is known to survive a power loss.
#[derive(Debug)]
pub enum Replaced {
    /// Renamed into place and the directory synced.
    Durable,
    /// Renamed into place, but syncing the directory failed: the rename may be lost.
    NotDurable(io::Error),
}

/// New content written and fsynced under a temporary name beside its target, not yet in
/// place; removed again if dropped before [`Staged::commit`].
pub struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the new content over the target.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.target)?;
        self.committed = true;
        Ok(())
    }

    /// The directory whose entry [`Staged::commit`] changes.
    pub fn dir(&self) -> &Path {
        parent(&self.target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `data` beside `path` and fsyncs it. The new file takes the owner, group and mode
/// of the file it will replace, or `mode_if_new` when there is none yet.
pub fn stage(path: &Path, data: &[u8], mode_if_new: u32) -> io::Result<Staged> {
    let dir = parent(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let old = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let (mut file, tmp) = create_temp(dir, &name)?;
    let staged = Staged {
        tmp,
        target: path.to_path_buf(),
        committed: false,
    };
    // The owner, group and mode of the file it replaces, whatever the umask (a systemd
    // unit's UMask=0077 would otherwise turn 0640 into 0600). Changing the owner needs
    // privilege; as the owner itself, keeping the group is what can be done.
    let mode = match &old {
        Some(old) => {
            if let Err(e) = std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())) {
                if e.kind() != io::ErrorKind::PermissionDenied {
                    return Err(e);
                }
                let _ = std::os::unix::fs::fchown(&file, None, Some(old.gid()));
            }
            old.mode() & 0o7777
        }
        None => mode_if_new,
    };
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(data)?;
    file.sync_all()?;
    Ok(staged)
}

/// Syncs a directory, so that renames in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Replaced {
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Replaced::Durable,
        Err(e) => Replaced::NotDurable(e),
    }
}

/// Replaces `path` with `data` (see [`stage`] for the owner and mode). An error means the
/// file is unchanged; a failure after the rename (the directory sync) is
/// [`Replaced::NotDurable`], not an error.
pub fn replace(path: &Path, data: &[u8], mode_if_new: u32) -> io::Result<Replaced> {
    let staged = stage(path, data, mode_if_new)?;
    let dir = staged.dir().to_path_buf();
    staged.commit()?;
    Ok(sync_dir(&dir))
}

/// A new file `.{name}.{random}.tmp` in `dir`, created exclusively, never through a link.
fn create_temp(dir: &Path, name: &str) -> io::Result<(fs::File, PathBuf)> {
    let random = rustls::crypto::aws_lc_rs::default_provider().secure_random;
    let mut last = io::Error::other("no attempt made");
    for _ in 0..TEMP_ATTEMPTS {
        let mut r = [0u8; 8];
        random
            .fill(&mut r)
            .map_err(|_| io::Error::other("no randomness for a temporary file name"))?;
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", u64::from_le_bytes(r)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_gets_the_mode_asked_for_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        replace(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        replace(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_staged_file_dropped_before_commit_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        fs::write(&p, "old").unwrap();
        drop(stage(&p, b"new", 0o644).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
