//! Files that change under moat are applied without a signal: the config file, every
//! certificate, key, password, OCSP and CA file, and the security-group inventory.
//!
//! inotify (the `notify` crate) watches each file's *directory*, not the file: editors and
//! `durable` writes replace a file by renaming over it, and a Kubernetes Secret or ConfigMap
//! update (cert-manager's rotations too) is a symlink swap — `tls.crt -> ..data/tls.crt`,
//! and `..data` is atomically replaced by renaming a new `..data_tmp` over it. So an event
//! counts when its file name is a watched one or starts with `..`.
//!
//! Events only say "look": after a quiet spell (`[watch] debounce`) the files are
//! fingerprinted (content hash, or size, mtime and inode for a large file) and compared with
//! what moat last read; only a real change is applied, as `moat ctl reload` applies it
//! (validate all, then swap; a bad file keeps the running state and is logged by name).
//! Every reload, SIGHUP or `ctl`, and moat's own writes (`ctl` persisting into the config,
//! ACME writing a certificate) record what they read, so none of them is applied twice. An
//! event storm costs one fingerprint pass per [`Debounce`] window at most.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ops::Control;
use crate::clock;
use crate::config::{Config, WatchConfig};
use crate::events;

/// Files larger than this are fingerprinted by size, mtime and inode instead of content (an
/// inventory of a large account is a few MiB; certificates are a few KiB).
const MAX_HASHED: u64 = 16 * 1024 * 1024;

/// Besides events, the files are looked at this often: a directory that could not be
/// watched (not there yet) or was replaced is still followed, only later.
const RECHECK: Duration = Duration::from_secs(60);

/// Pending pokes from the notify thread; more are dropped (one pending is enough).
const CHANNEL: usize = 16;

/// What a reload does with a file that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// The config file itself.
    Config,
    /// Read when the TLS state is built: certificates, keys, passwords, OCSP, client CA.
    Tls,
    /// Read by a reload only: the CA of an egress peer.
    Reload,
    /// The security-group inventory: re-read on its own, without a reload.
    Inventory,
}

/// One watched file, by the path the config names (symlinks not resolved).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watched {
    pub path: PathBuf,
    pub role: Role,
}

/// Every file a config (at `config_path`) makes moat read, each once.
pub fn watched(config_path: &Path, cfg: &Config) -> Vec<Watched> {
    let mut out: Vec<Watched> = Vec::new();
    let mut add = |path: &Path, role: Role| {
        if !out.iter().any(|w| w.path == path) {
            out.push(Watched {
                path: path.to_path_buf(),
                role,
            });
        }
    };
    add(config_path, Role::Config);
    if let Some(ca) = &cfg.tls.client_ca {
        add(ca, Role::Tls);
    }
    for d in &cfg.tls.domains {
        add(&d.cert, Role::Tls);
        add(&d.key, Role::Tls);
        for p in [&d.key_password_file, &d.ocsp].into_iter().flatten() {
            add(p, Role::Tls);
        }
    }
    for e in &cfg.egress {
        add(&e.ca, Role::Reload);
    }
    if let Some(sg) = &cfg.firewall.security_groups {
        add(&sg.inventory, Role::Inventory);
    }
    out
}

/// What the watcher follows: the `[watch]` settings, the files, and their fingerprints as
/// moat last read them.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub setting: WatchConfig,
    pub set: Vec<Watched>,
    pub seen: Prints,
}

impl Files {
    /// For a config now in force, whose files moat read when their fingerprints were `seen`
    /// (a file new to the set is fingerprinted now).
    pub fn new(config_path: &Path, cfg: &Config, mut seen: Prints) -> Files {
        let set = watched(config_path, cfg);
        seen.retain(|p, _| set.iter().any(|w| &w.path == p));
        for w in &set {
            if !seen.contains_key(&w.path) {
                seen.insert(w.path.clone(), fingerprint(&w.path));
            }
        }
        Files {
            setting: cfg.watch.clone(),
            set,
            seen,
        }
    }

    /// The paths with one of `roles`.
    pub fn paths(&self, roles: &[Role]) -> Vec<PathBuf> {
        self.set
            .iter()
            .filter(|w| roles.contains(&w.role))
            .map(|w| w.path.clone())
            .collect()
    }
}

/// What a file looked like, to tell whether it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Print {
    Missing,
    /// Could not be opened (permissions, a symlink loop): the error's kind.
    Unreadable(io::ErrorKind),
    /// Not a regular file (a FIFO, a device, a directory): never read, only identified.
    Special {
        dev: u64,
        ino: u64,
        mtime_ns: i128,
    },
    /// A regular file: its length and a hash of its content.
    Content {
        len: u64,
        hash: u64,
    },
    /// A regular file over [`MAX_HASHED`].
    Large {
        len: u64,
        dev: u64,
        ino: u64,
        mtime_ns: i128,
    },
}

/// Fingerprints by path.
pub type Prints = BTreeMap<PathBuf, Print>;

/// A file's fingerprint, following symlinks (a loop is `Unreadable`, not a hang). Opened
/// non-blocking, so a FIFO put in a file's place is identified, not waited on.
pub fn fingerprint(path: &Path) -> Print {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Print::Missing,
        Err(e) => return Print::Unreadable(e.kind()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Print::Unreadable(e.kind()),
    };
    let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    if !meta.is_file() {
        return Print::Special {
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns,
        };
    }
    if meta.len() > MAX_HASHED {
        return Print::Large {
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns,
        };
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    let mut reader = file.take(MAX_HASHED);
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.write(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Print::Unreadable(e.kind()),
        }
    }
    Print::Content {
        len,
        hash: hasher.finish(),
    }
}

/// Fingerprints of every watched file.
pub fn fingerprints(set: &[Watched]) -> Prints {
    set.iter()
        .map(|w| (w.path.clone(), fingerprint(&w.path)))
        .collect()
}

/// Fingerprints of `paths`.
pub fn fingerprints_of(paths: Vec<PathBuf>) -> Prints {
    paths
        .into_iter()
        .map(|p| {
            let print = fingerprint(&p);
            (p, print)
        })
        .collect()
}

/// What to do after looking at the files again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing moat reads is different.
    None,
    /// Only the inventory: it is re-read on its own, as its refresh would.
    Inventory(Vec<PathBuf>),
    /// Anything else: a reload, with the files that changed.
    Reload(Vec<PathBuf>),
}

/// Compares the files now with what moat last read.
pub fn compare(set: &[Watched], seen: &Prints, now: &Prints) -> Change {
    let changed: Vec<&Watched> = set
        .iter()
        .filter(|w| seen.get(&w.path) != now.get(&w.path))
        .collect();
    let paths = changed.iter().map(|w| w.path.clone()).collect();
    if changed.is_empty() {
        Change::None
    } else if changed.iter().all(|w| w.role == Role::Inventory) {
        Change::Inventory(paths)
    } else {
        Change::Reload(paths)
    }
}

/// The directories to watch: each file's own, and its symlink target's (when that is
/// elsewhere and resolvable).
pub fn directories(set: &[Watched]) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for w in set {
        // Absolute, so that `.` and the same directory by its full path are one watch.
        let dir = parent(&w.path);
        dirs.insert(std::fs::canonicalize(&dir).unwrap_or(dir));
        if let Ok(target) = std::fs::canonicalize(&w.path) {
            dirs.insert(parent(&target));
        }
    }
    dirs
}

fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Which events are about the watched files.
#[derive(Debug, Default)]
pub struct Filter {
    names: HashSet<OsString>,
}

impl Filter {
    /// The file names of the watched paths and of their symlink targets.
    pub fn new(set: &[Watched]) -> Filter {
        let mut names = HashSet::new();
        for w in set {
            names.extend(w.path.file_name().map(OsString::from));
            if let Ok(target) = std::fs::canonicalize(&w.path) {
                names.extend(target.file_name().map(OsString::from));
            }
        }
        Filter { names }
    }

    /// An event counts if it may change a file's content: not a mere open or read (moat's
    /// own reads would otherwise wake it), and about a watched name or a `..` entry (the
    /// Kubernetes `..data` swap).
    pub fn relevant(&self, kind: &EventKind, paths: &[PathBuf]) -> bool {
        let changes = match kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        changes
            && paths.iter().any(|p| {
                p.file_name().is_some_and(|n| {
                    self.names.contains(n) || n.as_encoded_bytes().starts_with(b"..")
                })
            })
    }
}

/// When to look after a run of events: `quiet` after the last one, but no later than
/// `max` after the first, so that a directory that never goes quiet is still looked at,
/// and at most once per `max`.
#[derive(Debug, Clone)]
pub struct Debounce {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    pub fn new(quiet: Duration) -> Debounce {
        let mut d = Debounce {
            quiet,
            max: quiet,
            first: None,
            last: None,
        };
        d.set_quiet(quiet);
        d
    }

    /// A new quiet time (a reload changed `[watch] debounce`); what is pending stays.
    pub fn set_quiet(&mut self, quiet: Duration) {
        self.quiet = quiet;
        self.max = (quiet * 5).max(Duration::from_secs(1));
    }

    /// An event arrived at `at`.
    pub fn poke(&mut self, at: Instant) {
        self.first.get_or_insert(at);
        self.last = Some(at);
    }

    /// When to look, if an event is pending.
    pub fn deadline(&self) -> Option<Instant> {
        Some((self.last? + self.quiet).min(self.first? + self.max))
    }

    /// Looked: nothing pending.
    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

/// The inotify side: the watcher and the directories it watches.
struct Inotify {
    watcher: RecommendedWatcher,
    dirs: BTreeSet<PathBuf>,
    /// Directories that could not be watched, with why (said once each).
    failed: BTreeMap<PathBuf, String>,
}

impl Inotify {
    fn start(filter: Arc<ArcSwap<Filter>>, tx: mpsc::Sender<()>) -> notify::Result<Inotify> {
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // notify's own thread: decide cheaply, never block.
            let look = match &res {
                Ok(ev) => ev.need_rescan() || filter.load().relevant(&ev.kind, &ev.paths),
                Err(_) => true,
            };
            if look {
                let _ = tx.try_send(());
            }
        })?;
        Ok(Inotify {
            watcher,
            dirs: BTreeSet::new(),
            failed: BTreeMap::new(),
        })
    }

    /// Watches `wanted` and nothing else; returns whether the set watched changed.
    fn follow(&mut self, wanted: &BTreeSet<PathBuf>) -> bool {
        let mut changed = false;
        for gone in self.dirs.difference(wanted).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.dirs.remove(&gone);
            changed = true;
        }
        self.failed.retain(|d, _| wanted.contains(d));
        for dir in wanted.difference(&self.dirs).cloned().collect::<Vec<_>>() {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.failed.remove(&dir);
                    self.dirs.insert(dir);
                    changed = true;
                }
                Err(e) => {
                    let why = e.to_string();
                    if self.failed.get(&dir) != Some(&why) {
                        events::watch_unavailable(&dir.display().to_string(), &why, RECHECK);
                        self.failed.insert(dir, why);
                    }
                }
            }
        }
        changed
    }
}

impl Control {
    /// Follows the watched files (when `[watch] enabled`) and rebuilds the TLS state when a
    /// stapled OCSP response expires; runs until moat stops.
    pub async fn watch_files(self: Arc<Self>) {
        let mut files = self.files.subscribe();
        let filter = Arc::new(ArcSwap::from_pointee(Filter::default()));
        let (tx, mut rx) = mpsc::channel(CHANNEL);
        let mut inotify: Option<Inotify> = None;
        let mut unavailable = false;
        let mut applied: Option<(WatchConfig, Vec<Watched>)> = None;
        let mut debounce = Debounce::new(WatchConfig::default().debounce);
        let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK, RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut enabled = false;
        let mut dirty = true;
        loop {
            // Only when a reload (or moat's own read or write) changed what is followed: an
            // event storm costs a poke per event here, not a copy of the set.
            let wanted = std::mem::take(&mut dirty).then(|| {
                let f = files.borrow_and_update();
                (f.setting.clone(), f.set.clone())
            });
            if let Some((setting, set)) = wanted.filter(|w| applied.as_ref() != Some(w)) {
                debounce.set_quiet(setting.debounce);
                if !setting.enabled {
                    if inotify.take().is_some() || applied.is_none() {
                        events::watch_off();
                    }
                } else {
                    filter.store(Arc::new(Filter::new(&set)));
                    if inotify.is_none() && !unavailable {
                        match Inotify::start(filter.clone(), tx.clone()) {
                            Ok(i) => inotify = Some(i),
                            Err(e) => {
                                // Once: the minute's look, SIGHUP and `ctl reload` still work.
                                unavailable = true;
                                events::watch_unavailable("", &e.to_string(), RECHECK);
                            }
                        }
                    }
                    let dirs = directories(&set);
                    if let Some(i) = &mut inotify {
                        if i.follow(&dirs) || applied.is_none() {
                            events::watch_started(set.len(), i.dirs.len(), setting.debounce);
                        }
                    }
                }
                enabled = setting.enabled;
                applied = Some((setting, set));
            }
            let pending = debounce.deadline();
            let staple = self.staple_expiry();
            let wake = staple.map(|(at, _)| at);
            let looked = tokio::select! {
                changed = files.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    dirty = true;
                    false
                }
                poke = rx.recv(), if enabled => {
                    if poke.is_some() {
                        debounce.poke(Instant::now());
                    }
                    false
                }
                _ = sleep_until_opt(pending), if pending.is_some() => {
                    debounce.clear();
                    self.apply_changes().await;
                    true
                }
                _ = recheck.tick(), if enabled => {
                    self.apply_changes().await;
                    true
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {
                    let expired = staple.is_some_and(|(_, at)| clock::unix_secs() >= at);
                    if expired {
                        if let Err(e) = self.swap_tls().await {
                            events::reload_failed(&e);
                        }
                    }
                    false
                }
            };
            // A symlink swap moves a file's target to another directory, a directory that
            // was missing may be there now: follow them.
            if let (true, Some(i)) = (looked, &mut inotify) {
                let set = self.files.borrow().set.clone();
                filter.store(Arc::new(Filter::new(&set)));
                i.follow(&directories(&set));
            }
        }
    }

    /// When to look whether a stapled OCSP response expired (a second after its
    /// nextUpdate, in pieces of an hour at most so that a wall clock that jumps is
    /// noticed), and that nextUpdate (Unix seconds).
    fn staple_expiry(&self) -> Option<(Instant, i64)> {
        let at = self.shared.tls()?.staples_expire?;
        let wait = (at - clock::unix_secs()).max(0) as u64 + 1;
        Some((Instant::now() + Duration::from_secs(wait.min(3600)), at))
    }

    /// Looks at the watched files and applies what changed: a reload, or the inventory
    /// alone. Serialised with every other change.
    pub async fn apply_changes(&self) -> Change {
        let plane = self.plane.lock().await;
        let files = self.files.borrow().clone();
        let set = files.set.clone();
        let now = match tokio::task::spawn_blocking(move || fingerprints(&set)).await {
            Ok(p) => p,
            Err(e) => {
                events::reload_failed(&format_args!("cannot look at the watched files: {e}"));
                return Change::None;
            }
        };
        let change = compare(&files.set, &files.seen, &now);
        match &change {
            Change::None => {}
            Change::Inventory(paths) => {
                events::watch_changed(&names(paths), "re-reading the inventory");
                self.files.send_modify(|f| f.seen = now);
                self.refresh_inventory_locked(plane);
            }
            Change::Reload(paths) => {
                events::watch_changed(&names(paths), "reloading");
                if let Err(e) = self.reload_locked(plane, Some(now)).await {
                    events::reload_failed(&e.to_string().replace('\n', "; "));
                }
            }
        }
        change
    }

    /// After a reload of `config` that read the files when they were `seen`.
    pub(super) fn files_reloaded(&self, config: Option<&Config>, seen: Prints) {
        match config {
            Some(cfg) => {
                let files = Files::new(&self.config_path, cfg, seen);
                self.files.send_replace(files);
            }
            // A failed reload: the bad files are not tried again until they change.
            None => self.files.send_modify(|f| f.seen.extend(seen)),
        }
    }

    /// The watched files' fingerprints now.
    pub(super) async fn fingerprint_files(&self) -> Prints {
        let set = self.files.borrow().set.clone();
        tokio::task::spawn_blocking(move || fingerprints(&set))
            .await
            .unwrap_or_default()
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `a, b` for a log line.
fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RenameMode};

    fn config(dir: &Path, extra: &str) -> (PathBuf, Config) {
        let path = dir.join("moat.toml");
        std::fs::write(
            &path,
            format!(
                r#"[listen]
address = "127.0.0.1:0"
[upstream]
address = "127.0.0.1:1"
[tls]
client_certificates = "optional"
client_ca = "ca/client-ca.pem"
[[tls.domains]]
name = "a"
cert = "/etc/tls/tls.crt"
key = "/etc/tls/tls.key"
key_password_file = "/run/secrets/pass"
ocsp = "a.ocsp"
[[egress]]
listen = "127.0.0.1:27101"
peer = "db2.moat.test:27017"
ca = "ca/client-ca.pem"
[firewall.security_groups]
inventory = "/var/lib/moat/eni.json"
{extra}"#
            ),
        )
        .unwrap();
        let cfg = crate::config::load(&path).unwrap().0;
        (path, cfg)
    }

    #[test]
    fn every_file_a_config_reads_is_watched_once_with_what_a_change_to_it_means() {
        let dir = tempfile::tempdir().unwrap();
        let (path, cfg) = config(dir.path(), "");
        let d = dir.path();
        let got: Vec<(PathBuf, Role)> = watched(&path, &cfg)
            .into_iter()
            .map(|w| (w.path, w.role))
            .collect();
        assert_eq!(
            got,
            vec![
                (path.clone(), Role::Config),
                (d.join("ca/client-ca.pem"), Role::Tls),
                (PathBuf::from("/etc/tls/tls.crt"), Role::Tls),
                (PathBuf::from("/etc/tls/tls.key"), Role::Tls),
                (PathBuf::from("/run/secrets/pass"), Role::Tls),
                (d.join("a.ocsp"), Role::Tls),
                (PathBuf::from("/var/lib/moat/eni.json"), Role::Inventory),
            ],
            "the egress CA is the client CA: listed once"
        );
        let dirs: Vec<PathBuf> = directories(&watched(&path, &cfg)).into_iter().collect();
        assert!(dirs.contains(&PathBuf::from("/etc/tls")), "{dirs:?}");
        assert!(dirs.contains(&d.join("ca")), "{dirs:?}");
        assert!(cfg.watch.enabled, "on by default");
        assert_eq!(cfg.watch.debounce, Duration::from_millis(200));
    }

    #[test]
    fn watch_can_be_turned_off_and_its_keys_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (_, cfg) = config(dir.path(), "[watch]\nenabled = false\ndebounce = \"1s\"\n");
        assert!(!cfg.watch.enabled);
        assert_eq!(cfg.watch.debounce, Duration::from_secs(1));
        let path = dir.path().join("moat.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("enabled = false", "enable = false")).unwrap();
        let e = crate::config::load(&path).unwrap_err().to_string();
        assert!(e.contains("watch.enable: unknown field `enable`"), "{e}");
        std::fs::write(&path, text.replace("\"1s\"", "\"1ms\"")).unwrap();
        let e = crate::config::load(&path).unwrap_err().to_string();
        assert!(e.contains("watch.debounce: 1ms is out of range"), "{e}");
    }

    fn set(paths: &[(&Path, Role)]) -> Vec<Watched> {
        paths
            .iter()
            .map(|(p, r)| Watched {
                path: p.to_path_buf(),
                role: *r,
            })
            .collect()
    }

    #[test]
    fn only_a_real_change_is_applied_and_the_inventory_alone_is_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, inv) = (dir.path().join("tls.crt"), dir.path().join("eni.json"));
        std::fs::write(&crt, "one").unwrap();
        std::fs::write(&inv, "{}").unwrap();
        let s = set(&[(&crt, Role::Tls), (&inv, Role::Inventory)]);
        let seen = fingerprints(&s);
        // Rewritten with the same bytes (a touch, an unrelated ConfigMap key): nothing.
        std::fs::write(&crt, "one").unwrap();
        assert_eq!(compare(&s, &seen, &fingerprints(&s)), Change::None);
        std::fs::write(&inv, "{\"NetworkInterfaces\": []}").unwrap();
        assert_eq!(
            compare(&s, &seen, &fingerprints(&s)),
            Change::Inventory(vec![inv.clone()])
        );
        std::fs::write(&crt, "two").unwrap();
        assert_eq!(
            compare(&s, &seen, &fingerprints(&s)),
            Change::Reload(vec![crt.clone(), inv.clone()])
        );
        std::fs::remove_file(&crt).unwrap();
        assert_eq!(fingerprint(&crt), Print::Missing);
    }

    #[test]
    fn a_kubernetes_symlink_swap_changes_the_fingerprint_and_a_loop_does_not_hang() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (ts, body) in [("..2026_a", "old"), ("..2026_b", "new")] {
            std::fs::create_dir(d.join(ts)).unwrap();
            std::fs::write(d.join(ts).join("tls.crt"), body).unwrap();
        }
        symlink("..2026_a", d.join("..data")).unwrap();
        symlink("..data/tls.crt", d.join("tls.crt")).unwrap();
        let s = set(&[(&d.join("tls.crt"), Role::Tls)]);
        let before = fingerprints(&s);
        symlink("..2026_b", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_eq!(
            compare(&s, &before, &fingerprints(&s)),
            Change::Reload(vec![d.join("tls.crt")])
        );
        // The target's directory is watched too, and its names count.
        let dirs = directories(&s);
        assert!(
            dirs.contains(d) && dirs.contains(&d.join("..2026_b")),
            "{dirs:?}"
        );

        symlink("loop2", d.join("loop1")).unwrap();
        symlink("loop1", d.join("loop2")).unwrap();
        assert!(matches!(
            fingerprint(&d.join("loop1")),
            Print::Unreadable(_)
        ));
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(
            matches!(fingerprint(&fifo), Print::Special { .. }),
            "not waited on"
        );
    }

    #[test]
    fn events_count_for_watched_names_and_dot_dot_entries_but_not_for_reads() {
        let s = set(&[(Path::new("/etc/tls/tls.crt"), Role::Tls)]);
        let f = Filter::new(&s);
        let create = EventKind::Create(CreateKind::File);
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let p = |s: &str| vec![PathBuf::from(s)];
        assert!(f.relevant(&create, &p("/etc/tls/tls.crt")));
        assert!(f.relevant(&rename, &p("/etc/tls/..data")));
        assert!(f.relevant(&rename, &p("/etc/tls/..data_tmp")));
        assert!(!f.relevant(&create, &p("/etc/tls/other.pem")));
        assert!(!f.relevant(&create, &p("/etc/tls/.tls.crt.swp")));
        let written = EventKind::Access(AccessKind::Close(AccessMode::Write));
        assert!(f.relevant(&written, &p("/etc/tls/tls.crt")));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(
            !f.relevant(&opened, &p("/etc/tls/tls.crt")),
            "moat's own reads"
        );
        assert!(!f.relevant(&read, &p("/etc/tls/tls.crt")));
    }

    /// A control plane on `dir/moat.toml` (no TLS), as `run` builds it.
    fn control(dir: &Path) -> (PathBuf, Control) {
        let path = dir.join("moat.toml");
        std::fs::write(
            &path,
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:1\"\n[log]\nlevel = \"info\"\n",
        )
        .unwrap();
        let resumption = crate::tls::Resumption::new().unwrap();
        let loaded = crate::config::load::load(&path, &resumption).unwrap();
        let settings = crate::shared::Settings::from_config(&loaded.config, loaded.upstream);
        let shared = crate::shared::Shared::new(
            settings,
            loaded.config.tls.mode,
            loaded.tls,
            loaded.firewall,
        );
        let control = Control::new(
            shared,
            path.clone(),
            resumption,
            None,
            Vec::new(),
            &loaded.config,
            loaded.plane,
        );
        (path, control)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_moat_read_or_wrote_itself_is_not_applied_again_but_a_later_edit_is() {
        let dir = tempfile::tempdir().unwrap();
        let (path, control) = control(dir.path());
        assert_eq!(control.apply_changes().await, Change::None, "as loaded");

        // `ctl rules add` persists into the file: moat's own write.
        let rule = crate::firewall::Rule::parse(Some("10.0.0.0/8"), None, None, "vpn").unwrap();
        control.rules_add(rule, true).await.unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("10.0.0.0/8"));
        assert_eq!(control.apply_changes().await, Change::None, "persisted");

        // An edit applied by SIGHUP / `ctl reload` is not applied a second time.
        let edit = |from: &str, to: &str| {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(&path, text.replace(from, to)).unwrap();
        };
        edit("level = \"info\"", "level = \"debug\"");
        control.reload().await.unwrap();
        assert_eq!(control.apply_changes().await, Change::None, "reloaded");

        edit("level = \"debug\"", "level = \"info\"");
        assert_eq!(
            control.apply_changes().await,
            Change::Reload(vec![path.clone()])
        );
        assert_eq!(control.apply_changes().await, Change::None, "applied once");

        // A bad edit fails once and is not retried until the file changes again.
        edit("[log]", "[log");
        assert_eq!(
            control.apply_changes().await,
            Change::Reload(vec![path.clone()])
        );
        assert_eq!(control.apply_changes().await, Change::None, "not retried");
    }

    #[test]
    fn a_burst_is_looked_at_once_after_it_goes_quiet_and_a_storm_once_per_window() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut d = Debounce::new(Duration::from_millis(200));
        assert_eq!(d.deadline(), None);
        d.poke(ms(0));
        d.poke(ms(50));
        assert_eq!(d.deadline(), Some(ms(250)), "quiet after the last");
        // A storm: an event every 100 ms never goes quiet; looked at after 1 s anyway.
        for n in 1..30 {
            d.poke(ms(50 + n * 100));
        }
        assert_eq!(d.deadline(), Some(ms(1000)));
        d.clear();
        assert_eq!(d.deadline(), None);
        let long = Debounce::new(Duration::from_secs(10));
        assert_eq!(long.max, Duration::from_secs(50));
    }
}
