//! `moat ctl`: a thin client of the admin socket. It sends one JSON request, prints the
//! reply as a table (or raw with `--json`), and exits 0 when the reply says `ok`, 1 when it
//! does not or moat cannot be reached.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cli::{CtlArgs, CtlCommand, ModeAction, RulesAction};
use crate::telemetry::escape_controls;

/// How long to wait for a reply (a reload re-reads every certificate).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn main(args: CtlArgs) -> ExitCode {
    let socket = match socket_path(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("moat ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = request(&args.command);
    let reply = match send(&socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = reply.get("ok").and_then(Value::as_bool) == Some(true);
    if args.json {
        println!("{reply}");
    } else if ok {
        print!("{}", render(&args.command, &reply));
    } else {
        eprintln!(
            "moat ctl: {}",
            escape_controls(
                reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("request failed")
            )
        );
        if let Some(conns) = reply.get("plaintext_connections").and_then(Value::as_array) {
            eprint!("{}", connections_table(conns));
        }
    }
    if let Some(w) = reply.get("warning").and_then(Value::as_str) {
        eprintln!("moat ctl: warning: {w}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `--socket`, else `[admin] socket` of the config file (relative to that file).
fn socket_path(args: &CtlArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let cfg = &args.config;
    let text = std::fs::read_to_string(cfg).map_err(|e| {
        format!(
            "cannot read {} to find the admin socket: {e} (or pass --socket)",
            cfg.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| format!("{}: {}", cfg.display(), e.message()))?;
    let sock = table
        .get("admin")
        .and_then(|a| a.get("socket"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| {
            format!(
                "{} has no [admin] socket: add one, or pass --socket",
                cfg.display()
            )
        })?;
    let base = cfg.parent().unwrap_or(Path::new(""));
    Ok(base.join(sock))
}

fn request(cmd: &CtlCommand) -> Value {
    match cmd {
        CtlCommand::Status => json!({"cmd": "status"}),
        CtlCommand::Mode {
            action: None | Some(ModeAction::Get),
        } => json!({"cmd": "mode.get"}),
        CtlCommand::Mode {
            action:
                Some(ModeAction::Set {
                    mode,
                    force,
                    no_persist,
                }),
        } => {
            json!({"cmd": "mode.set", "mode": mode.as_str(), "force": force, "persist": !no_persist})
        }
        CtlCommand::Connections { plaintext } => {
            json!({"cmd": "connections", "plaintext": plaintext})
        }
        CtlCommand::Reload => json!({"cmd": "reload"}),
        CtlCommand::Rules { action } => match action {
            RulesAction::List => json!({"cmd": "rules.list"}),
            RulesAction::Export => json!({"cmd": "rules.export"}),
            RulesAction::Add {
                cidr,
                security_group,
                account,
                description,
                no_persist,
            } => json!({
                "cmd": "rules.add", "cidr": cidr, "security_group": security_group,
                "account": account, "description": description, "persist": !no_persist,
            }),
            RulesAction::Remove { id, no_persist } => {
                json!({"cmd": "rules.remove", "id": id, "persist": !no_persist})
            }
            RulesAction::Copy {
                from,
                replace,
                no_persist,
            } => {
                // moat resolves relative paths from its own config directory; send ours.
                let from = std::path::absolute(from).unwrap_or_else(|_| from.clone());
                json!({"cmd": "rules.copy", "from": from, "replace": replace, "persist": !no_persist})
            }
        },
    }
}

fn send(socket: &Path, request: &Value) -> Result<Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is moat running with this [admin] socket?)",
            socket.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(REPLY_TIMEOUT));
    // moat may answer and close before reading the request (a refusal): then the write
    // fails, but the answer is there to read, and it says more than "broken pipe".
    let sent = s.write_all(format!("{request}\n").as_bytes());
    let mut line = String::new();
    let read = BufReader::new(&s).read_line(&mut line);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(e), _) => return Err(format!("{}: {e}", socket.display())),
        (Ok(()), Err(e)) => return Err(format!("{}: no reply: {e}", socket.display())),
        (Ok(()), Ok(_)) => {
            return Err(format!(
                "{}: no reply: moat closed the connection",
                socket.display()
            ))
        }
    }
    serde_json::from_str(&line)
        .map_err(|e| format!("{}: bad reply ({e}): {line}", socket.display()))
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn render(cmd: &CtlCommand, r: &Value) -> String {
    match cmd {
        CtlCommand::Status => render_status(r),
        CtlCommand::Mode {
            action: None | Some(ModeAction::Get),
        } => format!("{}\n", s(r, "mode")),
        CtlCommand::Mode {
            action: Some(ModeAction::Set { .. }),
        } => format!(
            "mode {} → {} ({}; applied in {} µs)\n",
            s(r, "previous"),
            s(r, "mode"),
            if r["persisted"].as_bool() == Some(true) {
                "saved to the config file"
            } else {
                "not saved: a restart or reload returns to the file's mode"
            },
            r["applied_in_us"].as_u64().unwrap_or(0)
        ),
        CtlCommand::Connections { .. } => {
            connections_table(r["connections"].as_array().map_or(&[][..], |v| v))
        }
        CtlCommand::Rules { action } => render_rules(action, r),
        CtlCommand::Reload => {
            let list = |k: &str| -> String {
                r[k].as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            let mut out = format!("reloaded: {}\n", list("applied"));
            let restart = list("needs_restart");
            if !restart.is_empty() {
                out.push_str(&format!("changed but only applied at restart: {restart}\n"));
            }
            out
        }
    }
}

fn render_rules(action: &RulesAction, r: &Value) -> String {
    let persisted = |r: &Value| {
        if r["persisted"].as_bool() == Some(true) {
            "saved to the config file"
        } else {
            "not saved"
        }
    };
    let one = |v: &Value| {
        let account = v["account"]
            .as_str()
            .map(|a| format!(" (account {a})"))
            .unwrap_or_default();
        format!(
            "{} {} {}{account}: {}",
            s(v, "id"),
            s(v, "kind"),
            s(v, "value"),
            s(v, "description")
        )
    };
    match action {
        RulesAction::List => {
            let rows: Vec<Vec<String>> = r["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    vec![
                        s(v, "id").to_string(),
                        s(v, "kind").to_string(),
                        s(v, "value").to_string(),
                        s(v, "account").to_string(),
                        s(v, "description").to_string(),
                    ]
                })
                .collect();
            format!(
                "{}{} rule(s); sources no rule matches: {}\n",
                table(&["ID", "KIND", "VALUE", "ACCOUNT", "DESCRIPTION"], &rows),
                rows.len(),
                s(r, "default")
            )
        }
        RulesAction::Export => s(r, "toml").to_string(),
        RulesAction::Add { .. } => format!("added {} ({})\n", one(&r["rule"]), persisted(r)),
        RulesAction::Remove { .. } => {
            format!("removed {} ({})\n", one(&r["removed"]), persisted(r))
        }
        RulesAction::Copy { from, .. } => format!(
            "copied from {}: {} added, {} skipped (already allowed), {} removed ({})\n",
            from.display(),
            r["added"].as_u64().unwrap_or(0),
            r["skipped"].as_u64().unwrap_or(0),
            r["removed"].as_u64().unwrap_or(0),
            persisted(r)
        ),
    }
}

fn render_status(r: &Value) -> String {
    let c = &r["connections"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    let mut rows = vec![
        ("mode", s(r, "mode").to_string()),
        ("version", s(r, "version").to_string()),
        ("uptime", age(r["uptime_secs"].as_f64().unwrap_or(0.0))),
        ("config", s(r, "config").to_string()),
        ("upstream", s(r, "upstream").to_string()),
        (
            "connections",
            format!(
                "{} open (tls {}, plaintext {}); egress {}",
                n("open"),
                n("tls"),
                n("plaintext"),
                n("egress")
            ),
        ),
    ];
    let fw = &r["firewall"];
    rows.push((
        "firewall",
        format!(
            "default {}; {} CIDR rules, {} security-group rules ({} addresses)",
            s(fw, "default"),
            fw["cidr_rules"].as_u64().unwrap_or(0),
            fw["security_group_rules"].as_u64().unwrap_or(0),
            fw["security_group_addresses"].as_u64().unwrap_or(0)
        ),
    ));
    for e in r["egress"].as_array().into_iter().flatten() {
        rows.push(("egress", format!("{} → {}", s(e, "listen"), s(e, "peer"))));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    let domains: Vec<Vec<String>> = r["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                s(d, "name").to_string(),
                d["not_after"].as_i64().map_or("-".into(), expiry),
                d["hostnames"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    if !domains.is_empty() {
        out.push('\n');
        out.push_str(&table(&["DOMAIN", "EXPIRES (UTC)", "HOSTNAMES"], &domains));
    }
    out
}

fn connections_table(conns: &[Value]) -> String {
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let kind = s(c, "kind");
            let transport = match (kind, s(c, "transport")) {
                ("egress", t) => format!("egress-{t}"),
                (_, t) => t.to_string(),
            };
            let sni = match (c["sni"].as_str(), c["domain"].as_str()) {
                (None, None) => "-".to_string(),
                (sni, domain) => format!("{}/{}", sni.unwrap_or("-"), domain.unwrap_or("-")),
            };
            vec![
                c["id"].as_u64().unwrap_or(0).to_string(),
                s(c, "remote").to_string(),
                transport,
                sni,
                s(c, "driver").to_string(),
                s(c, "app").to_string(),
                s(c, "user").to_string(),
                age(c["age_secs"].as_f64().unwrap_or(0.0)),
                bytes(c["bytes_in"].as_u64().unwrap_or(0)),
                bytes(c["bytes_out"].as_u64().unwrap_or(0)),
            ]
        })
        .collect();
    let head = [
        "ID",
        "REMOTE",
        "TRANSPORT",
        "SNI/DOMAIN",
        "DRIVER",
        "APP",
        "USER",
        "AGE",
        "IN",
        "OUT",
    ];
    format!("{}{} connection(s)\n", table(&head, &rows), rows.len())
}

/// Left-aligned columns, two spaces apart. Cells can hold what clients sent (driver, app,
/// user, SNI): their control characters are escaped so they cannot drive the terminal.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape_controls(c).into_owned()).collect())
        .collect();
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(head.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn age(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// `2027-12-27 (397 days)`.
fn expiry(not_after: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = (not_after - now).div_euclid(86_400);
    let date = time::OffsetDateTime::from_unix_timestamp(not_after)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| not_after.to_string());
    if days < 0 {
        format!("{date} (EXPIRED)")
    } else {
        format!("{date} ({days} days)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn client_strings_in_the_connections_table_cannot_drive_the_terminal() {
        let conns = [json!({
            "id": 7, "remote": "10.0.0.5:5000", "kind": "client", "transport": "tls",
            "sni": "db\u{1b}]0;owned\u{7}", "domain": "default",
            "driver": "evil\n7  10.0.0.6:1  tls  root", "app": "a\u{9b}2J", "user": "x\ry@admin",
        })];
        let t = connections_table(&conns);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(!t.chars().any(|c| c.is_control() && c != '\n'), "{t:?}");
        for want in [
            "db\\x1b]0;owned\\x07/default",
            "evil\\n7  10.0.0.6:1  tls  root",
            "a\\u{9b}2J",
            "x\\ry@admin",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
    }

    #[test]
    fn sizes_and_ages_read_like_a_human_wrote_them() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(185.0), "3m05s");
        assert_eq!(age(7200.0), "2h00m");
    }
}
