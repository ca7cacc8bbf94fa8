//! The control plane: what `moat ctl` and SIGHUP can change while moat serves — the SSL
//! mode, and everything a reload re-reads. Each change is validated in full first and then
//! applied with single atomic stores; changes are serialised by one async lock that the
//! data path never touches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::admin::persist::{self, PersistError};
use crate::app;
use crate::egress::{Egress, Target};
use crate::events;
use crate::firewall::plane::{self, FirewallPlane, InventoryChange};
use crate::firewall::Rule;
use crate::policy::{Mode, Transport};
use crate::registry::{Conn, Kind};
use crate::shared::{Settings, Shared};
use crate::telemetry::LogHandle;
use crate::tls::Resumption;

/// Values only read at start: a reload that changes them says a restart is needed.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartKeys {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub admin_socket: Option<PathBuf>,
    pub egress: Vec<SocketAddr>,
}

impl RestartKeys {
    pub fn of(cfg: &crate::config::Config) -> RestartKeys {
        RestartKeys {
            listen: cfg.listen.address,
            max_connections: cfg.listen.max_connections,
            admin_socket: cfg.admin.socket.clone(),
            egress: cfg.egress.iter().map(|e| e.listen).collect(),
        }
    }

    fn changed(&self, new: &RestartKeys) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.listen != new.listen {
            v.push("listen.address");
        }
        if self.max_connections != new.max_connections {
            v.push("listen.max_connections");
        }
        if self.admin_socket != new.admin_socket {
            v.push("admin.socket");
        }
        if self.egress != new.egress {
            v.push("egress[].listen");
        }
        v
    }
}

/// Why a mode change was refused.
#[derive(Debug)]
pub enum ModeError {
    /// A TLS-accepting mode without any certificate configured.
    NoCertificates(Mode),
    /// requireSSL while plaintext clients are connected (without `force`).
    PlaintextOpen(Vec<Arc<Conn>>),
    Persist(PersistError),
}

impl std::fmt::Display for ModeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModeError::NoCertificates(m) => write!(
                f,
                "mode {m} accepts TLS clients but no [[tls.domains]] certificate is loaded: add one to the config and reload first"
            ),
            ModeError::PlaintextOpen(v) => write!(
                f,
                "{} plaintext connection{} open: requireSSL would refuse their reconnects. Move those clients to TLS (see the list), or use --force",
                v.len(),
                if v.len() == 1 { " is" } else { "s are" }
            ),
            ModeError::Persist(e) => write!(f, "mode not changed: {e}"),
        }
    }
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
    plane: Mutex<FirewallPlane>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        config_path: PathBuf,
        resumption: Resumption,
        log: Option<LogHandle>,
        egress: Vec<Arc<Egress>>,
        boot: RestartKeys,
        plane: FirewallPlane,
    ) -> Control {
        Control {
            shared,
            config_path,
            resumption,
            log,
            egress,
            boot,
            plane: Mutex::new(plane),
        }
    }

    /// Changes the SSL mode for new connections; open ones keep going.
    pub async fn set_mode(
        &self,
        mode: Mode,
        force: bool,
        persist: bool,
    ) -> Result<Value, ModeError> {
        let _one_at_a_time = self.plane.lock().await;
        let previous = self.shared.mode();
        if mode.accepts_tls() && self.shared.tls().is_none() {
            return Err(ModeError::NoCertificates(mode));
        }
        if mode == Mode::RequireSsl && !force {
            let open = self.plaintext_clients();
            if !open.is_empty() {
                return Err(ModeError::PlaintextOpen(open));
            }
        }
        let warning = if persist {
            self.persist(move |d| persist::set_value(d, "tls", "mode", mode.as_str().into()))
                .await
                .map_err(ModeError::Persist)?
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
        Ok(with_warning(
            json!({
                "ok": true,
                "mode": mode.as_str(),
                "previous": previous.as_str(),
                "persisted": persist,
                "applied_in_us": applied.as_micros() as u64,
            }),
            warning,
        ))
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
    pub async fn reload(&self) -> Result<Value, String> {
        let mut plane = self.plane.lock().await;
        let path = self.config_path.clone();
        let resumption = self.resumption.clone();
        let loaded = tokio::task::spawn_blocking(move || app::load(&path, &resumption))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string());
        self.shared.metrics.reload(loaded.is_ok());
        let loaded = loaded?;
        for w in app::warnings(&loaded) {
            events::config_warning(&w);
        }
        // Egress targets were built by `load`; match them to the running listeners.
        let targets: Vec<(Arc<Egress>, Target)> = loaded
            .config
            .egress
            .iter()
            .zip(loaded.egress)
            .filter_map(|(cfg, t)| {
                let eg = self.egress.iter().find(|e| e.listen == cfg.listen)?;
                Some((eg.clone(), t))
            })
            .collect();
        if let Some(log) = &self.log {
            log.set_level(&loaded.config.log.level)?;
        }
        let mut applied = Vec::new();
        let domains = loaded.config.tls.domains.len();
        self.shared.set_tls(loaded.tls);
        warn_expiring(&self.shared);
        applied.push(format!("{domains} TLS domain(s) re-read"));
        for (eg, t) in targets {
            eg.target.store(Arc::new(t));
        }
        let settings = Settings::from_config(&loaded.config, loaded.upstream);
        applied.push(format!("upstream {}", settings.upstream));
        self.shared.set_settings(settings);
        let previous = self.shared.mode();
        let mode = loaded.config.tls.mode;
        if mode != previous {
            self.shared.set_mode(mode);
            events::mode_changed(previous, mode, "reload");
        }
        applied.push(format!("mode {mode}"));
        let rules = loaded.config.rules();
        if let InventoryChange::Failed(e) = plane.reconfigure(&loaded.config.firewall, rules) {
            events::inventory_failed(&inventory_name(&plane), &e, plane.inventory.interfaces);
        }
        self.shared
            .set_firewall(tokio::task::block_in_place(|| plane.compile()));
        applied.push(format!("{} firewall rules", plane.rules.len()));
        applied.push(format!("log level {}", loaded.config.log.level));
        let restart = self
            .boot
            .changed(&crate::admin::ops::RestartKeys::of(&loaded.config));
        events::reloaded(&applied.join(", "), &restart.join(", "));
        Ok(json!({
            "ok": true,
            "applied": applied,
            "needs_restart": restart,
            "mode": mode.as_str(),
        }))
    }

    /// `moat ctl status`.
    pub fn status(&self) -> Value {
        let conns = self.shared.registry.snapshot();
        let count = |k: Kind, t: Option<Transport>| {
            conns
                .iter()
                .filter(|c| c.kind == k && (t.is_none() || c.transport() == t))
                .count()
        };
        let domains: Vec<Value> = self
            .shared
            .tls()
            .map(|t| {
                t.resolver
                    .domains()
                    .iter()
                    .map(|d| json!({"name": d.name, "hostnames": d.hostnames, "not_after": d.not_after}))
                    .collect()
            })
            .unwrap_or_default();
        let uptime = self
            .shared
            .started
            .elapsed()
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let fw = self.shared.firewall();
        let (cidr, groups, addresses) = fw.counts();
        json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "mode": self.shared.mode().as_str(),
            "uptime_secs": uptime,
            "config": self.config_path.display().to_string(),
            "upstream": self.shared.settings().upstream.to_string(),
            "connections": {
                "open": count(Kind::Client, None),
                "tls": count(Kind::Client, Some(Transport::Tls)),
                "plaintext": count(Kind::Client, Some(Transport::Plaintext)),
                "egress": count(Kind::Egress, None),
            },
            "domains": domains,
            "firewall": {
                "default": policy_name(fw.default_policy()),
                "cidr_rules": cidr,
                "security_group_rules": groups,
                "security_group_addresses": addresses,
            },
            "egress": self.egress.iter().map(|e| json!({
                "listen": e.listen.to_string(),
                "peer": e.target.load().peer.clone(),
            })).collect::<Vec<_>>(),
        })
    }

    /// `moat ctl connections`.
    pub fn connections(&self, plaintext_only: bool) -> Value {
        let list: Vec<Value> = self
            .shared
            .registry
            .snapshot()
            .iter()
            .filter(|c| !plaintext_only || c.transport() == Some(Transport::Plaintext))
            .map(|c| conn_json(c))
            .collect();
        json!({"ok": true, "connections": list})
    }
}

impl Control {
    /// `rules.list`.
    pub fn rules_list(&self) -> Value {
        let fw = self.shared.firewall();
        let rules: Vec<_> = fw.rules().iter().map(Rule::view).collect();
        json!({"ok": true, "default": policy_name(fw.default_policy()), "rules": rules})
    }

    /// `rules.export`: the rules as `[[firewall.rules]]` TOML.
    pub fn rules_export(&self) -> Value {
        json!({"ok": true, "toml": plane::export(self.shared.firewall().rules())})
    }

    /// `rules.add`.
    pub async fn rules_add(&self, rule: Rule, persist: bool) -> Result<Value, String> {
        let view = rule.view();
        let saved = rule.clone();
        let warning = self
            .edit_rules(
                move |plane| plane.add(rule),
                persist
                    .then_some(move |doc: &mut toml_edit::DocumentMut| plane::add_in(doc, &saved)),
                &format!("added {} {} ({})", view.id, view.value, view.description),
            )
            .await?;
        Ok(with_warning(
            json!({"ok": true, "rule": view, "persisted": persist}),
            warning,
        ))
    }

    /// `rules.remove`.
    pub async fn rules_remove(&self, id: String, persist: bool) -> Result<Value, String> {
        let rule = self
            .shared
            .firewall()
            .rules()
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or_else(|| format!("no rule has id `{id}` (see moat ctl rules list)"))?;
        let view = rule.view();
        let warning = self
            .edit_rules(
                move |plane| plane.remove(&id).map(|_| ()),
                persist.then_some(move |doc: &mut toml_edit::DocumentMut| {
                    plane::remove_in(doc, &rule)
                }),
                &format!("removed {} {} ({})", view.id, view.value, view.description),
            )
            .await?;
        Ok(with_warning(
            json!({"ok": true, "removed": view, "persisted": persist}),
            warning,
        ))
    }

    /// `rules.copy`: merges (or with `replace`, substitutes) another deployment's rules.
    pub async fn rules_copy(
        &self,
        from: PathBuf,
        replace: bool,
        persist: bool,
    ) -> Result<Value, String> {
        let incoming = tokio::task::spawn_blocking(move || plane::read_rules_file(&from))
            .await
            .map_err(|e| e.to_string())??;
        let for_file = incoming.clone();
        let counts = Arc::new(std::sync::Mutex::new((0, 0, 0)));
        let c = counts.clone();
        let edit = move |plane: &mut FirewallPlane| {
            let r = plane.merge(incoming, replace)?;
            if let Ok(mut c) = c.lock() {
                *c = r;
            }
            Ok(())
        };
        // The file is merged on its own terms: rules written into it by hand since start
        // stay (unless `replace` asks for exactly the copied set).
        let write = persist.then_some(move |doc: &mut toml_edit::DocumentMut| {
            if replace {
                plane::replace_in(doc, &for_file)
            } else {
                for_file.iter().try_for_each(|r| plane::add_in(doc, r))
            }
        });
        let what = if replace {
            "rules replaced by a copy"
        } else {
            "rules merged from a copy"
        };
        let warning = self.edit_rules(edit, write, what).await?;
        let (added, skipped, removed) = counts.lock().map(|c| *c).unwrap_or_default();
        Ok(with_warning(
            json!({"ok": true, "added": added, "skipped": skipped, "removed": removed, "persisted": persist}),
            warning,
        ))
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
    ) -> Result<Option<String>, String>
    where
        E: FnOnce(&mut FirewallPlane) -> Result<(), String>,
        W: FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String> + Send + 'static,
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
                    return Err(format!(
                        "rules not changed: {e}; the running firewall is unchanged"
                    ));
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
        W: FnOnce(&mut toml_edit::DocumentMut) -> Result<(), String> + Send + 'static,
    {
        let path = self.config_path.clone();
        let saved = tokio::task::spawn_blocking(move || persist::edit(&path, write))
            .await
            .unwrap_or_else(|e| Err(PersistError::Edit(e.to_string())))?;
        let warning = saved.warning(&self.config_path);
        if let Some(w) = &warning {
            events::config_warning(w);
        }
        Ok(warning)
    }

    /// Re-reads the security-group inventory if its file changed; returns how long to wait
    /// before the next look.
    pub async fn refresh_inventory(&self) -> std::time::Duration {
        let mut plane = self.plane.lock().await;
        match plane.check_inventory() {
            InventoryChange::Loaded => {
                let fw = tokio::task::block_in_place(|| plane.compile());
                let (_, _, addresses) = fw.counts();
                self.shared.set_firewall(fw);
                events::inventory_loaded(
                    &inventory_name(&plane),
                    plane.inventory.interfaces,
                    addresses,
                );
            }
            InventoryChange::Failed(e) => {
                events::inventory_failed(&inventory_name(&plane), &e, plane.inventory.interfaces)
            }
            InventoryChange::Unchanged | InventoryChange::StillFailing => {}
        }
        plane.refresh
    }
}

fn inventory_name(plane: &FirewallPlane) -> String {
    plane
        .inventory_path
        .as_ref()
        .map_or_else(|| "-".to_string(), |p| p.display().to_string())
}

/// `deny` / `allow`.
pub fn policy_name(p: crate::firewall::DefaultPolicy) -> &'static str {
    match p {
        crate::firewall::DefaultPolicy::Deny => "deny",
        crate::firewall::DefaultPolicy::Allow => "allow",
    }
}

/// Certificates expire quietly; this is said at start, at each reload and twice a day.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// Logs a warning for each domain whose certificate expires within 14 days.
pub fn warn_expiring(shared: &Shared) {
    if let Some(tls) = shared.tls() {
        for (name, days, not_after) in tls.expiring_within(EXPIRY_WARNING_DAYS) {
            events::certificate_expiring(name, days, &crate::tls::date(not_after));
        }
    }
}

/// `reply` with `"warning": w` added when there is one.
fn with_warning(mut reply: Value, warning: Option<String>) -> Value {
    if let Some(w) = warning {
        reply["warning"] = Value::String(w);
    }
    reply
}

/// One connection as the admin protocol shows it (stable keys).
pub fn conn_json(c: &Conn) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let tls = c.tls.get();
    json!({
        "id": c.id,
        "remote": c.remote.to_string(),
        "kind": match c.kind { Kind::Client => "client", Kind::Egress => "egress" },
        "transport": c.transport().map(Transport::as_str),
        "sni": tls.and_then(|t| t.sni.clone()),
        "domain": tls.map(|t| t.domain.clone()),
        "age_secs": c.started.elapsed().as_secs_f64(),
        "bytes_in": c.bytes_in.load(Relaxed),
        "bytes_out": c.bytes_out.load(Relaxed),
        "driver": c.driver.get(),
        "app": c.app.get(),
        "user": c.user.get(),
    })
}
