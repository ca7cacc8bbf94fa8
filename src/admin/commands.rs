//! Admin requests and their replies (see SPEC "Admin socket protocol").

use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::{conn_json, Control, ModeError};
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
}

fn yes() -> bool {
    true
}

/// `{"ok": false, "error": msg}`.
pub fn error(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
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
    }
}
