//! Admin requests and their replies (see SPEC "Admin socket protocol").

use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::ops::{conn_json, Control, ModeError};
use crate::firewall::Rule;
use crate::policy::Mode;

/// One request: `{"cmd": "...", ...}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", deny_unknown_fields)]
pub enum Request {
    #[serde(rename = "status")]
    Status,
    #[serde(rename = "mode.get")]
    ModeGet,
    #[serde(rename = "mode.set")]
    ModeSet {
        mode: String,
        #[serde(default)]
        force: bool,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "connections")]
    Connections {
        #[serde(default)]
        plaintext: bool,
    },
    #[serde(rename = "reload")]
    Reload,
    #[serde(rename = "rules.list")]
    RulesList,
    #[serde(rename = "rules.add")]
    RulesAdd {
        cidr: Option<String>,
        security_group: Option<String>,
        account: Option<String>,
        #[serde(default)]
        description: String,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.remove")]
    RulesRemove {
        id: String,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.copy")]
    RulesCopy {
        /// Another deployment's moat config, or a `rules.export` file; relative paths are
        /// taken from moat's config directory.
        from: String,
        #[serde(default)]
        replace: bool,
        #[serde(default = "yes")]
        persist: bool,
    },
    #[serde(rename = "rules.export")]
    RulesExport,
}

fn yes() -> bool {
    true
}

/// `{"ok": false, "error": msg}`.
pub fn error(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
}

fn reply(r: Result<Value, String>) -> Value {
    r.unwrap_or_else(|e| error(&e))
}

/// Parses one request line and runs it.
pub async fn dispatch(control: &Control, line: &[u8]) -> Value {
    let req: Request = match std::str::from_utf8(line)
        .map_err(|e| e.to_string())
        .and_then(|s| serde_json::from_str(s.trim()).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return error(&format!("bad request: {e}")),
    };
    match req {
        Request::Status => control.status(),
        Request::ModeGet => json!({"ok": true, "mode": control.shared.mode().as_str()}),
        Request::ModeSet {
            mode,
            force,
            persist,
        } => {
            let mode: Mode = match mode.parse() {
                Ok(m) => m,
                Err(e) => return error(&e),
            };
            match control.set_mode(mode, force, persist).await {
                Ok(v) => v,
                Err(e) => {
                    let mut v = error(&e.to_string());
                    if let ModeError::PlaintextOpen(conns) = &e {
                        v["plaintext_connections"] = conns.iter().map(|c| conn_json(c)).collect();
                    }
                    v
                }
            }
        }
        Request::Connections { plaintext } => control.connections(plaintext),
        Request::Reload => match control.reload().await {
            Ok(v) => v,
            Err(e) => error(&format!("reload failed, running configuration kept: {e}")),
        },
        Request::RulesList => control.rules_list(),
        Request::RulesExport => control.rules_export(),
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
                Ok(r) => reply(control.rules_add(r, persist).await),
                Err(e) => error(&e),
            }
        }
        Request::RulesRemove { id, persist } => reply(control.rules_remove(id, persist).await),
        Request::RulesCopy {
            from,
            replace,
            persist,
        } => {
            let base = control
                .config_path
                .parent()
                .unwrap_or(std::path::Path::new(""));
            let from = base.join(from);
            reply(control.rules_copy(from, replace, persist).await)
        }
    }
}
