//! The control plane: what `moat ctl` and SIGHUP can change while moat serves — the SSL
//! mode, the firewall rules, and everything a reload re-reads. Each change is validated in
//! full first and then applied with single atomic stores; changes are serialised by one
//! async lock that the data path never touches.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::signal::unix::Signal;
use tokio::sync::{watch, Mutex, MutexGuard, Notify};
use toml_edit::DocumentMut;

use super::persist::{self, DocError, PersistError, RulesFileError};
use super::protocol::{
    BanView, Bans, BansCleared, ConnView, ConnectionCounts, Connections, DomainView, EgressView,
    Failure, FirewallView, ModeReply, ModeSet, Reloaded, Reply, Request, RuleAdded, RuleRemoved,
    RuleView, RulesCopied, RulesExport, RulesList, Status,
};
use super::watch::{fingerprints_of, Files, Prints, Role};
use crate::config::load::{self, Loaded};
use crate::config::{Config, DomainConfig, TlsConfig};
use crate::egress::Egress;
use crate::error::ConfigErrors;
use crate::events;
use crate::firewall::plane::{FirewallPlane, InventoryChange, PlaneError};
use crate::firewall::{Rule, RuleError};
use crate::policy::{Mode, Transport};
use crate::registry::{Conn, Kind};
use crate::shared::{Settings, Shared};
use crate::telemetry::LogHandle;
use crate::tls::sni::Origin;
use crate::tls::{Resumption, TlsState};

/// Values only read at start: a reload that changes them says a restart is needed.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartKeys {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub admin_socket: Option<PathBuf>,
    pub egress: Vec<SocketAddr>,
    pub metrics: Option<SocketAddr>,
}

impl RestartKeys {
    pub fn of(cfg: &Config) -> RestartKeys {
        RestartKeys {
            listen: cfg.listen.address,
            max_connections: cfg.listen.max_connections,
            admin_socket: cfg.admin.socket.clone(),
            egress: cfg.egress.iter().map(|e| e.listen).collect(),
            metrics: cfg.metrics.as_ref().map(|m| m.listen),
        }
    }

    fn changed(&self, new: &RestartKeys) -> Vec<String> {
        let keys = [
            (self.listen != new.listen, "listen.address"),
            (
                self.max_connections != new.max_connections,
                "listen.max_connections",
            ),
            (self.admin_socket != new.admin_socket, "admin.socket"),
            (self.egress != new.egress, "egress[].listen"),
            (self.metrics != new.metrics, "metrics.listen"),
        ];
        keys.iter()
            .filter(|(changed, _)| *changed)
            .map(|(_, k)| k.to_string())
            .collect()
    }
}

/// Why a mode change was refused.
#[derive(Debug, Error)]
pub enum ModeError {
    #[error("mode {0} accepts TLS clients but no [[tls.domains]] certificate is loaded: add one to the config and reload first")]
    NoCertificates(Mode),
    #[error("{} plaintext connection{} open: requireSSL would refuse their reconnects. Move those clients to TLS (see the list), or use --force", .0.len(), if .0.len() == 1 { " is" } else { "s are" })]
    PlaintextOpen(Vec<Arc<Conn>>),
    #[error("{open} client connection{} open: moving between passthrough (mongod terminates TLS) and a mode where moat terminates it changes what every reconnecting client meets. Drain them first, or use --force", if *.open == 1 { " is" } else { "s are" })]
    PassthroughSwitch { open: usize },
    #[error("mode not changed: {0}")]
    Persist(#[from] PersistError),
}

/// Why a reload kept the running configuration.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    LogLevel(#[from] crate::telemetry::LevelError),
    #[error("the reload did not finish: {0}")]
    Task(String),
    #[error("{0}")]
    Tls(String),
}

/// Why a rule change was refused; nothing changed, in the file or in the running moat.
#[derive(Debug, Error)]
pub enum RulesError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error(transparent)]
    Plane(#[from] PlaneError),
    #[error(transparent)]
    File(#[from] RulesFileError),
    #[error("rules not changed: {0}; the running firewall is unchanged")]
    Persist(#[from] PersistError),
}

/// What the control plane operates on.
pub struct Control {
    pub shared: Arc<Shared>,
    pub config_path: PathBuf,
    resumption: Resumption,
    log: Option<LogHandle>,
    egress: Vec<Arc<Egress>>,
    boot: RestartKeys,
    /// Serialises every change; holds the firewall's rules and inventory.
    pub(super) plane: Mutex<FirewallPlane>,
    /// The `[tls]` in force: what an ACME renewal rebuilds the TLS state from.
    tls_config: std::sync::Mutex<TlsConfig>,
    /// The ACME domains in force, for the renewal tasks (`admin::renew`).
    pub(super) acme_domains: watch::Sender<Vec<DomainConfig>>,
    /// Wakes every renewal task after a reload, to look at what is served again.
    pub(super) renewal_wakeup: Notify,
    /// The files a reload reads, as moat last read them, and `[watch]` (`admin::watch`).
    pub(super) files: watch::Sender<Files>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        config_path: PathBuf,
        resumption: Resumption,
        log: Option<LogHandle>,
        egress: Vec<Arc<Egress>>,
        config: &Config,
        plane: FirewallPlane,
    ) -> Control {
        Control {
            shared,
            config_path: config_path.clone(),
            resumption,
            log,
            egress,
            boot: RestartKeys::of(config),
            plane: Mutex::new(plane),
            tls_config: std::sync::Mutex::new(config.tls.clone()),
            acme_domains: watch::Sender::new(acme_domains(config)),
            renewal_wakeup: Notify::new(),
            files: watch::Sender::new(Files::new(&config_path, config, Prints::new())),
        }
    }

    /// Runs one admin request.
    pub async fn handle(&self, request: Request) -> Result<Reply, Failure> {
        let failed = |e: &dyn std::fmt::Display| Failure::new(e.to_string());
        match request {
            Request::Status {} => Ok(Reply::Status(self.status())),
            Request::ModeGet {} => Ok(Reply::Mode(ModeReply {
                mode: self.shared.mode().as_str().into(),
            })),
            Request::ModeSet {
                mode,
                force,
                persist,
            } => match self.set_mode(mode, force, persist).await {
                Ok(r) => Ok(Reply::ModeSet(r)),
                Err(e) => Err(Failure {
                    error: e.to_string(),
                    plaintext_connections: match &e {
                        ModeError::PlaintextOpen(conns) => {
                            conns.iter().map(|c| conn_view(c)).collect()
                        }
                        _ => Vec::new(),
                    },
                }),
            },
            Request::Connections { plaintext } => {
                Ok(Reply::Connections(self.connections(plaintext)))
            }
            Request::Reload {} => self.reload().await.map(Reply::Reload).map_err(|e| {
                failed(&format_args!(
                    "reload failed, running configuration kept: {e}"
                ))
            }),
            Request::RulesList {} => Ok(Reply::RulesList(self.rules_list())),
            Request::BansList {} => Ok(Reply::Bans(self.bans())),
            Request::BansClear { source } => Ok(Reply::BansCleared(self.clear_bans(source))),
            Request::RulesExport {} => Ok(Reply::RulesExport(RulesExport {
                toml: persist::export(self.shared.firewall().rules()),
            })),
            Request::RulesAdd {
                cidr,
                security_group,
                account,
                description,
                persist,
            } => {
                let rule = Rule::parse(
                    cidr.as_deref(),
                    security_group.as_deref(),
                    account.as_deref(),
                    &description,
                );
                match rule {
                    Ok(r) => self.rules_add(r, persist).await.map(Reply::RuleAdded),
                    Err(e) => Err(RulesError::from(e)),
                }
                .map_err(|e| failed(&e))
            }
            Request::RulesRemove { id, persist } => self
                .rules_remove(&id, persist)
                .await
                .map(Reply::RuleRemoved)
                .map_err(|e| failed(&e)),
            Request::RulesCopy {
                from,
                replace,
                persist,
            } => {
                let base = self.config_path.parent().unwrap_or(Path::new(""));
                self.rules_copy(base.join(from), replace, persist)
                    .await
                    .map(Reply::RulesCopied)
                    .map_err(|e| failed(&e))
            }
        }
    }

    /// Changes the SSL mode for new connections; open ones keep going.
    pub async fn set_mode(
        &self,
        mode: Mode,
        force: bool,
        persist: bool,
    ) -> Result<ModeSet, ModeError> {
        let _one_at_a_time = self.plane.lock().await;
        let previous = self.shared.mode();
        if mode.terminates_tls() && self.shared.tls().is_none() {
            return Err(ModeError::NoCertificates(mode));
        }
        if mode == Mode::RequireSsl && !force {
            let open = self.plaintext_clients();
            if !open.is_empty() {
                return Err(ModeError::PlaintextOpen(open));
            }
        }
        let crosses = (previous == Mode::Passthrough) != (mode == Mode::Passthrough);
        if crosses && !force {
            let open = self.shared.open_connections();
            if open > 0 {
                return Err(ModeError::PassthroughSwitch { open });
            }
        }
        let warning = if persist {
            self.persist(move |d| persist::set_value(d, "tls", "mode", mode.as_str().into()))
                .await?
        } else {
            None
        };
        let start = Instant::now();
        self.shared.set_mode(mode);
        let applied = start.elapsed();
        let how = if persist {
            "moat ctl, saved to the config file"
        } else {
            "moat ctl, not saved: a restart or reload returns to the file's mode"
        };
        events::mode_changed(previous, mode, how);
        Ok(ModeSet {
            mode: mode.as_str().into(),
            previous: previous.as_str().into(),
            persisted: persist,
            applied_in_us: applied.as_micros() as u64,
            warning,
        })
    }

    fn plaintext_clients(&self) -> Vec<Arc<Conn>> {
        self.shared
            .registry
            .snapshot()
            .into_iter()
            .filter(|c| c.kind == Kind::Client && c.transport() == Some(Transport::Plaintext))
            .collect()
    }

    /// Re-reads the config file and everything it names; applies it all or nothing.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let plane = self.plane.lock().await;
        self.reload_locked(plane, None).await
    }

    /// [`Control::reload`] under the change lock; `seen` are the watched files'
    /// fingerprints taken before anything was read (taken now when `None`), recorded as
    /// read whatever the outcome, so the watcher applies only later changes.
    pub(super) async fn reload_locked(
        &self,
        mut plane: MutexGuard<'_, FirewallPlane>,
        seen: Option<Prints>,
    ) -> Result<Reloaded, ReloadError> {
        let seen = match seen {
            Some(s) => s,
            None => self.fingerprint_files().await,
        };
        match self.reload_files(&mut plane).await {
            Ok((reloaded, config)) => {
                self.files_reloaded(Some(&config), seen);
                Ok(reloaded)
            }
            Err(e) => {
                self.files_reloaded(None, seen);
                Err(e)
            }
        }
    }

    async fn reload_files(
        &self,
        plane: &mut FirewallPlane,
    ) -> Result<(Reloaded, Config), ReloadError> {
        let path = self.config_path.clone();
        let resumption = self.resumption.clone();
        let previous = self.shared.tls();
        let loaded = tokio::task::spawn_blocking(move || {
            load::load_over(&path, &resumption, previous.as_deref())
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))
        .and_then(|r| r.map_err(ReloadError::from));
        self.shared.metrics.reload(loaded.is_ok());
        let loaded = loaded?;
        for w in loaded.warnings() {
            events::config_warning(&w);
        }
        let Loaded {
            config,
            upstream,
            tls,
            egress,
            plane: mut new_plane,
            inventory_error,
            ..
        } = loaded;
        if let Some(log) = &self.log {
            log.set_level(&config.log.level)?;
        }
        let mut applied = Vec::new();
        let domains = config.tls.domains.len();
        self.shared.set_tls(tls);
        if let Ok(mut running) = self.tls_config.lock() {
            *running = config.tls.clone();
        }
        self.acme_domains.send_replace(acme_domains(&config));
        if let Some(tls) = self.shared.tls() {
            tls.warn_expiring();
        }
        applied.push(format!("{domains} TLS domain(s) re-read"));
        // Egress targets were built by `load`; match them to the running listeners.
        for (cfg, target) in config.egress.iter().zip(egress) {
            if let Some(eg) = self.egress.iter().find(|e| e.listen == cfg.listen) {
                eg.target.store(Arc::new(target));
            }
        }
        let settings = Settings::from_config(&config, upstream);
        applied.push(format!("upstream {}", settings.upstream));
        self.shared.set_settings(settings);
        let previous = self.shared.mode();
        let mode = config.tls.mode;
        if mode != previous {
            self.shared.set_mode(mode);
            events::mode_changed(previous, mode, "reload");
        }
        applied.push(format!("mode {mode}"));
        let mut warnings = Vec::new();
        if let Some(e) = inventory_error {
            // The inventory is refreshed on its own as soon as the file is good again, so
            // a bad one does not hold back the rest (a certificate rotation, say).
            let kept = new_plane.keep_last_good(plane);
            let interfaces = new_plane.inventory.interfaces;
            events::inventory_failed(&new_plane.inventory_name(), &e, interfaces);
            warnings.push(if kept {
                format!("firewall.security_groups.inventory: {e}; the last good inventory ({interfaces} interfaces) stays in service")
            } else {
                format!("firewall.security_groups.inventory: {e}; security-group rules match no address until it can be read")
            });
        }
        *plane = new_plane;
        self.shared
            .set_firewall(tokio::task::block_in_place(|| plane.compile()));
        applied.push(format!("{} firewall rules", plane.rules.len()));
        applied.push(format!("log level {}", config.log.level));
        let needs_restart = self.boot.changed(&RestartKeys::of(&config));
        events::reloaded(&applied.join(", "), &needs_restart.join(", "));
        let reloaded = Reloaded {
            applied,
            needs_restart,
            mode: mode.as_str().into(),
            warnings,
        };
        Ok((reloaded, config))
    }

    /// Rebuilds the TLS state from the `[tls]` in force and the files it names, and swaps
    /// it in for new handshakes: the TLS part of a reload, after ACME wrote new files.
    pub async fn swap_tls(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.plane.lock().await;
        let cfg = self
            .tls_config
            .lock()
            .map_err(|_| ReloadError::Task("TLS configuration lock poisoned".into()))?
            .clone();
        let resumption = self.resumption.clone();
        let previous = self.shared.tls();
        let tls_files = self.files.borrow().paths(&[Role::Tls]);
        let (seen, built) = tokio::task::spawn_blocking(move || {
            // Fingerprinted before they are read: a later change is still the watcher's.
            let seen = fingerprints_of(tls_files);
            (
                seen,
                TlsState::build(&cfg, &resumption, previous.as_deref()),
            )
        })
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?;
        self.files.send_modify(|f| f.seen.extend(seen));
        match built {
            Ok(state) => {
                if let Some(s) = &state {
                    for w in &s.warnings {
                        events::config_warning(&format_args!("{}: {}", w.key, w.message));
                    }
                }
                self.shared.set_tls(state);
                Ok(())
            }
            Err(problems) => Err(ReloadError::Tls(
                problems
                    .iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// SIGHUP (`hup`, installed at start) does what `moat ctl reload` does.
    pub async fn reload_on(self: Arc<Self>, mut hup: Signal) {
        while hup.recv().await.is_some() {
            if let Err(e) = self.reload().await {
                events::reload_failed(&e.to_string().replace('\n', "; "));
            }
        }
    }

    /// `moat ctl status`.
    pub fn status(&self) -> Status {
        let conns = self.shared.registry.snapshot();
        let count = |k: Kind, t: Option<Transport>| {
            conns
                .iter()
                .filter(|c| c.kind == k && (t.is_none() || c.transport() == t))
                .count()
        };
        let domains = self
            .shared
            .tls()
            .map(|t| {
                t.resolver
                    .domains()
                    .iter()
                    .map(|d| {
                        let acme = self.shared.acme.status(&d.name);
                        DomainView {
                            name: d.name.clone(),
                            hostnames: d.hostnames.clone(),
                            not_after: d.not_after,
                            issuer: match d.origin {
                                Origin::Placeholder => None,
                                Origin::Files | Origin::Kept => Some(d.issuer.clone()),
                            },
                            acme: acme.is_some(),
                            next_renewal: acme.as_ref().and_then(|a| a.next_renewal),
                            last_error: acme.as_ref().and_then(|a| a.last_error.clone()),
                            last_error_at: acme.and_then(|a| a.last_error_at),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uptime_secs = self
            .shared
            .started
            .elapsed()
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let fw = self.shared.firewall();
        let (cidr_rules, security_group_rules, security_group_addresses) = fw.counts();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: self.shared.mode().as_str().into(),
            uptime_secs,
            config: self.config_path.display().to_string(),
            upstream: self.shared.settings().upstream.to_string(),
            connections: ConnectionCounts {
                open: count(Kind::Client, None),
                tls: count(Kind::Client, Some(Transport::Tls)),
                plaintext: count(Kind::Client, Some(Transport::Plaintext)),
                egress: count(Kind::Egress, None),
            },
            domains,
            firewall: FirewallView {
                default: fw.default_policy().as_str().into(),
                cidr_rules,
                security_group_rules,
                security_group_addresses,
            },
            egress: self
                .egress
                .iter()
                .map(|e| EgressView {
                    listen: e.listen.to_string(),
                    peer: e.target.load().peer.clone(),
                })
                .collect(),
        }
    }

    /// `moat ctl connections`.
    pub fn connections(&self, plaintext_only: bool) -> Connections {
        let connections = self
            .shared
            .registry
            .snapshot()
            .iter()
            .filter(|c| !plaintext_only || c.transport() == Some(Transport::Plaintext))
            .map(|c| conn_view(c))
            .collect();
        Connections { connections }
    }

    /// `bans.list`.
    pub fn bans(&self) -> Bans {
        let bans = self
            .shared
            .throttle
            .bans(Instant::now())
            .into_iter()
            .map(|b| BanView {
                source: b.source.to_string(),
                remaining_secs: b.remaining.as_secs(),
                failures: b.failures,
            })
            .collect();
        Bans { bans }
    }

    /// `bans.clear`.
    pub fn clear_bans(&self, source: Option<IpAddr>) -> BansCleared {
        let cleared = self.shared.throttle.clear(source, Instant::now());
        let which = source.map_or_else(|| "all".to_string(), |s| s.to_string());
        events::bans_cleared(&which, cleared);
        BansCleared { cleared }
    }

    /// `rules.list`.
    pub fn rules_list(&self) -> RulesList {
        let fw = self.shared.firewall();
        RulesList {
            default: fw.default_policy().as_str().into(),
            rules: fw.rules().iter().map(RuleView::from).collect(),
        }
    }

    /// `rules.add`.
    pub async fn rules_add(&self, rule: Rule, persist: bool) -> Result<RuleAdded, RulesError> {
        let view = RuleView::from(&rule);
        let saved = rule.clone();
        let warning = self
            .edit_rules(
                move |plane| plane.add(rule),
                persist.then_some(move |doc: &mut DocumentMut| persist::add_in(doc, &saved)),
                &format!("added {} {} ({})", view.id, view.value, view.description),
            )
            .await?;
        Ok(RuleAdded {
            rule: view,
            persisted: persist,
            warning,
        })
    }

    /// `rules.remove`.
    pub async fn rules_remove(&self, id: &str, persist: bool) -> Result<RuleRemoved, RulesError> {
        let rule = self
            .shared
            .firewall()
            .rules()
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| PlaneError::NoSuchRule(id.to_string()))?;
        let view = RuleView::from(&rule);
        let id = id.to_string();
        let warning = self
            .edit_rules(
                move |plane| plane.remove(&id).map(drop),
                persist.then_some(move |doc: &mut DocumentMut| persist::remove_in(doc, &rule)),
                &format!("removed {} {} ({})", view.id, view.value, view.description),
            )
            .await?;
        Ok(RuleRemoved {
            removed: view,
            persisted: persist,
            warning,
        })
    }

    /// `rules.copy`: merges (or with `replace`, substitutes) another deployment's rules.
    pub async fn rules_copy(
        &self,
        from: PathBuf,
        replace: bool,
        persist: bool,
    ) -> Result<RulesCopied, RulesError> {
        let incoming = tokio::task::spawn_blocking(move || persist::read_rules_file(&from))
            .await
            .map_err(|e| PersistError::Task(e.to_string()))??;
        let for_file = incoming.clone();
        let mut counts = (0, 0, 0);
        let edit = |plane: &mut FirewallPlane| {
            counts = plane.merge(incoming, replace)?;
            Ok(())
        };
        // The file is merged on its own terms: rules written into it by hand since start
        // stay (unless `replace` asks for exactly the copied set).
        let write = persist.then_some(move |doc: &mut DocumentMut| {
            if replace {
                persist::replace_in(doc, &for_file)
            } else {
                for_file.iter().try_for_each(|r| persist::add_in(doc, r))
            }
        });
        let what = if replace {
            "rules replaced by a copy"
        } else {
            "rules merged from a copy"
        };
        let warning = self.edit_rules(edit, write, what).await?;
        let (added, skipped, removed) = counts;
        Ok(RulesCopied {
            added,
            skipped,
            removed,
            persisted: persist,
            warning,
        })
    }

    /// Applies `edit` to the plane, writes the change into the config file with `write`
    /// (only when persisting), then compiles and swaps in the new firewall. If writing
    /// fails, nothing changes, in the file or in the running moat. Returns a warning when
    /// the write may not be durable.
    async fn edit_rules<E, W>(
        &self,
        edit: E,
        write: Option<W>,
        what: &str,
    ) -> Result<Option<String>, RulesError>
    where
        E: FnOnce(&mut FirewallPlane) -> Result<(), PlaneError>,
        W: FnOnce(&mut DocumentMut) -> Result<(), DocError> + Send + 'static,
    {
        let mut plane = self.plane.lock().await;
        let before = plane.rules.clone();
        edit(&mut plane)?;
        let mut warning = None;
        if let Some(write) = write {
            match self.persist(write).await {
                Ok(w) => warning = w,
                Err(e) => {
                    plane.rules = before;
                    return Err(e.into());
                }
            }
        }
        self.shared
            .set_firewall(tokio::task::block_in_place(|| plane.compile()));
        events::rules_changed(what, plane.rules.len());
        Ok(warning)
    }

    /// Edits the config file; a write that may not be durable is logged and returned as a
    /// warning for the reply.
    async fn persist<W>(&self, write: W) -> Result<Option<String>, PersistError>
    where
        W: FnOnce(&mut DocumentMut) -> Result<(), DocError> + Send + 'static,
    {
        let path = self.config_path.clone();
        let config = self.files.borrow().paths(&[Role::Config]);
        let (saved, seen) = tokio::task::spawn_blocking(move || {
            // moat's own write: not a change for the watcher to apply again.
            persist::edit(&path, write).map(|saved| (saved, fingerprints_of(config)))
        })
        .await
        .map_err(|e| PersistError::Task(e.to_string()))??;
        self.files.send_modify(|f| f.seen.extend(seen));
        let warning = saved.warning(&self.config_path);
        if let Some(w) = &warning {
            events::config_warning(w);
        }
        Ok(warning)
    }

    /// Re-reads the security-group inventory if its file changed; returns how long to wait
    /// before the next look.
    pub async fn refresh_inventory(&self) -> Duration {
        let plane = self.plane.lock().await;
        self.refresh_inventory_locked(plane)
    }

    /// [`Control::refresh_inventory`] under the change lock.
    pub(super) fn refresh_inventory_locked(
        &self,
        mut plane: MutexGuard<'_, FirewallPlane>,
    ) -> Duration {
        match plane.check_inventory() {
            InventoryChange::Loaded => {
                let fw = tokio::task::block_in_place(|| plane.compile());
                let (_, _, addresses) = fw.counts();
                self.shared.set_firewall(fw);
                events::inventory_loaded(
                    &plane.inventory_name(),
                    plane.inventory.interfaces,
                    addresses,
                );
            }
            InventoryChange::Failed(e) => {
                events::inventory_failed(&plane.inventory_name(), &e, plane.inventory.interfaces)
            }
            InventoryChange::Unchanged | InventoryChange::StillFailing => {}
        }
        plane.refresh
    }

    /// Re-reads the security-group inventory whenever its file changes.
    pub async fn watch_inventory(self: Arc<Self>) {
        loop {
            let wait = self.refresh_inventory().await;
            tokio::time::sleep(wait).await;
        }
    }
}

/// The domains a config has moat get from an ACME CA.
fn acme_domains(config: &Config) -> Vec<DomainConfig> {
    config
        .tls
        .domains
        .iter()
        .filter(|d| d.acme.is_some())
        .cloned()
        .collect()
}

/// One connection as the admin protocol shows it.
pub fn conn_view(c: &Conn) -> ConnView {
    use std::sync::atomic::Ordering::Relaxed;
    let tls = c.tls.get();
    ConnView {
        id: c.id,
        remote: c.remote.to_string(),
        kind: match c.kind {
            Kind::Client => "client",
            Kind::Egress => "egress",
        }
        .into(),
        transport: c.transport().map(|t| t.as_str().into()),
        sni: tls.and_then(|t| t.sni.clone()),
        domain: tls.map(|t| t.domain.clone()),
        age_secs: c.started.elapsed().as_secs_f64(),
        bytes_in: c.bytes_in.load(Relaxed),
        bytes_out: c.bytes_out.load(Relaxed),
        driver: c.driver.get().cloned(),
        app: c.app.get().cloned(),
        user: c.user.get().cloned(),
    }
}
