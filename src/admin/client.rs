//! `moat ctl`: a thin client of the admin socket. It sends one [`Request`], prints the
//! reply as a table (or the raw line with `--json`), and exits 0 when the reply says `ok`,
//! 1 when it does not or moat cannot be reached.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use thiserror::Error;

use super::protocol::{
    BadReply, ConnView, Failure, Reloaded, Reply, Request, RuleView, RulesCopied, Status,
};
use crate::cli::{BansAction, CtlArgs, CtlCommand, ModeAction, RulesAction};
use crate::clock;
use crate::telemetry::escape_controls;

/// How long to wait for a reply (a reload re-reads every certificate).
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why `moat ctl` got no answer.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot read {} to find the admin socket: {source} (or pass --socket)", path.display())]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    ParseConfig { path: PathBuf, message: String },
    #[error("{} has no [admin] socket: add one, or pass --socket", path.display())]
    NoSocket { path: PathBuf },
    #[error("cannot connect to {}: {source} (is moat running with this [admin] socket?)", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("{}: {source}", socket.display())]
    Send { socket: PathBuf, source: io::Error },
    #[error("{}: no reply: {source}", socket.display())]
    NoReply { socket: PathBuf, source: io::Error },
    #[error("{}: no reply: moat closed the connection", socket.display())]
    Closed { socket: PathBuf },
    #[error("{}: {source}: {line}", socket.display())]
    BadReply {
        socket: PathBuf,
        source: BadReply,
        line: String,
    },
}

pub fn main(args: CtlArgs) -> ExitCode {
    let request = request(&args.command);
    let (line, reply) = match socket_path(&args).and_then(|s| send(&s, &request)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat ctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{line}");
    }
    match reply {
        Ok(reply) => {
            if !args.json {
                print!("{}", render(&args.command, &reply));
            }
            if let Some(w) = warning(&reply) {
                eprintln!("moat ctl: warning: {}", escape_controls(w));
            }
            ExitCode::SUCCESS
        }
        Err(failure) => {
            if !args.json {
                eprintln!("moat ctl: {}", escape_controls(&failure.error));
                if !failure.plaintext_connections.is_empty() {
                    eprint!("{}", connections_table(&failure.plaintext_connections));
                }
            }
            ExitCode::FAILURE
        }
    }
}

/// `--socket`, else `[admin] socket` of the config file (relative to that file).
fn socket_path(args: &CtlArgs) -> Result<PathBuf, ClientError> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let path = args.config.clone();
    let text = std::fs::read_to_string(&path).map_err(|source| ClientError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let message = e.message().to_string();
        ClientError::ParseConfig {
            path: path.clone(),
            message,
        }
    })?;
    let sock = table
        .get("admin")
        .and_then(|a| a.get("socket"))
        .and_then(|s| s.as_str())
        .ok_or_else(|| ClientError::NoSocket { path: path.clone() })?;
    let base = path.parent().unwrap_or(Path::new(""));
    Ok(base.join(sock))
}

fn request(cmd: &CtlCommand) -> Request {
    match cmd {
        CtlCommand::Status => Request::Status {},
        CtlCommand::Mode {
            action: None | Some(ModeAction::Get),
        } => Request::ModeGet {},
        CtlCommand::Mode {
            action:
                Some(ModeAction::Set {
                    mode,
                    force,
                    no_persist,
                }),
        } => Request::ModeSet {
            mode: *mode,
            force: *force,
            persist: !no_persist,
        },
        CtlCommand::Connections { plaintext } => Request::Connections {
            plaintext: *plaintext,
        },
        CtlCommand::Reload => Request::Reload {},
        CtlCommand::Bans {
            action: None | Some(BansAction::List),
        } => Request::BansList {},
        CtlCommand::Bans {
            action: Some(BansAction::Clear { ip }),
        } => Request::BansClear { source: *ip },
        CtlCommand::Rules { action } => match action {
            RulesAction::List => Request::RulesList {},
            RulesAction::Export => Request::RulesExport {},
            RulesAction::Add {
                cidr,
                security_group,
                account,
                description,
                no_persist,
            } => Request::RulesAdd {
                cidr: cidr.clone(),
                security_group: security_group.clone(),
                account: account.clone(),
                description: description.clone(),
                persist: !no_persist,
            },
            RulesAction::Remove { id, no_persist } => Request::RulesRemove {
                id: id.clone(),
                persist: !no_persist,
            },
            RulesAction::Copy {
                from,
                replace,
                no_persist,
            } => Request::RulesCopy {
                // moat resolves relative paths from its own config directory; send ours.
                from: std::path::absolute(from).unwrap_or_else(|_| from.clone()),
                replace: *replace,
                persist: !no_persist,
            },
        },
    }
}

/// Sends `request`; returns the reply line as it came and what it says.
fn send(socket: &Path, request: &Request) -> Result<(String, Result<Reply, Failure>), ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let _ = s.set_read_timeout(Some(REPLY_TIMEOUT));
    let mut out = serde_json::to_string(request).unwrap_or_default();
    out.push('\n');
    // moat may answer and close before reading the request (a refusal): then the write
    // fails, but the answer is there to read, and it says more than "broken pipe".
    let sent = s.write_all(out.as_bytes());
    let mut line = String::new();
    let read = BufReader::new(&s).read_line(&mut line);
    let socket = socket.to_path_buf();
    match (sent, read) {
        (_, Ok(n)) if n > 0 => {}
        (Err(source), _) => return Err(ClientError::Send { socket, source }),
        (Ok(()), Err(source)) => return Err(ClientError::NoReply { socket, source }),
        (Ok(()), Ok(_)) => return Err(ClientError::Closed { socket }),
    }
    let line = line.trim_end().to_string();
    match request.decode(&line) {
        Ok(reply) => Ok((line, reply)),
        Err(source) => Err(ClientError::BadReply {
            socket,
            source,
            line,
        }),
    }
}

fn warning(reply: &Reply) -> Option<&str> {
    match reply {
        Reply::ModeSet(r) => r.warning.as_deref(),
        Reply::RuleAdded(r) => r.warning.as_deref(),
        Reply::RuleRemoved(r) => r.warning.as_deref(),
        Reply::RulesCopied(r) => r.warning.as_deref(),
        _ => None,
    }
}

fn persisted(p: bool) -> &'static str {
    if p {
        "saved to the config file"
    } else {
        "not saved"
    }
}

fn render(cmd: &CtlCommand, reply: &Reply) -> String {
    match reply {
        Reply::Status(s) => render_status(s),
        Reply::Mode(m) => format!("{}\n", m.mode),
        Reply::ModeSet(m) => format!(
            "mode {} → {} ({}; applied in {} µs)\n",
            m.previous,
            m.mode,
            if m.persisted {
                "saved to the config file"
            } else {
                "not saved: a restart or reload returns to the file's mode"
            },
            m.applied_in_us
        ),
        Reply::Connections(c) => connections_table(&c.connections),
        Reply::Reload(r) => render_reload(r),
        Reply::RulesList(l) => {
            let rows: Vec<Vec<String>> = l
                .rules
                .iter()
                .map(|r| {
                    vec![
                        r.id.clone(),
                        r.kind.clone(),
                        r.value.clone(),
                        r.account.clone().unwrap_or_else(|| "-".into()),
                        r.description.clone(),
                    ]
                })
                .collect();
            format!(
                "{}{} rule(s); sources no rule matches: {}\n",
                table(&["ID", "KIND", "VALUE", "ACCOUNT", "DESCRIPTION"], &rows),
                rows.len(),
                l.default
            )
        }
        Reply::RulesExport(e) => e.toml.clone(),
        Reply::RuleAdded(r) => {
            format!("added {} ({})\n", one_rule(&r.rule), persisted(r.persisted))
        }
        Reply::RuleRemoved(r) => {
            format!(
                "removed {} ({})\n",
                one_rule(&r.removed),
                persisted(r.persisted)
            )
        }
        Reply::RulesCopied(c) => render_copied(cmd, c),
        Reply::Bans(b) => {
            let rows: Vec<Vec<String>> = b
                .bans
                .iter()
                .map(|v| {
                    vec![
                        v.source.clone(),
                        age(v.remaining_secs as f64),
                        v.failures.to_string(),
                    ]
                })
                .collect();
            format!(
                "{}{} source(s) banned\n",
                table(&["SOURCE", "LEFT", "FAILURES"], &rows),
                rows.len()
            )
        }
        Reply::BansCleared(c) => format!("lifted {} ban(s)\n", c.cleared),
    }
}

fn one_rule(v: &RuleView) -> String {
    let account = v
        .account
        .as_ref()
        .map(|a| format!(" (account {a})"))
        .unwrap_or_default();
    format!(
        "{} {} {}{account}: {}",
        v.id, v.kind, v.value, v.description
    )
}

fn render_copied(cmd: &CtlCommand, c: &RulesCopied) -> String {
    let from = match cmd {
        CtlCommand::Rules {
            action: RulesAction::Copy { from, .. },
        } => from.display().to_string(),
        _ => "-".into(),
    };
    format!(
        "copied from {from}: {} added, {} skipped (already allowed), {} removed ({})\n",
        c.added,
        c.skipped,
        c.removed,
        persisted(c.persisted)
    )
}

fn render_reload(r: &Reloaded) -> String {
    let mut out = format!("reloaded: {}\n", r.applied.join(", "));
    if !r.needs_restart.is_empty() {
        out.push_str(&format!(
            "changed but only applied at restart: {}\n",
            r.needs_restart.join(", ")
        ));
    }
    for w in &r.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

fn render_status(s: &Status) -> String {
    let c = &s.connections;
    let fw = &s.firewall;
    let mut rows = vec![
        ("mode", s.mode.clone()),
        ("version", s.version.clone()),
        ("uptime", age(s.uptime_secs as f64)),
        ("config", s.config.clone()),
        ("upstream", s.upstream.clone()),
        (
            "connections",
            format!(
                "{} open (tls {}, plaintext {}); egress {}",
                c.open, c.tls, c.plaintext, c.egress
            ),
        ),
        (
            "firewall",
            format!(
                "default {}; {} CIDR rules, {} security-group rules ({} addresses)",
                fw.default, fw.cidr_rules, fw.security_group_rules, fw.security_group_addresses
            ),
        ),
    ];
    for e in &s.egress {
        rows.push(("egress", format!("{} → {}", e.listen, e.peer)));
    }
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<12} {v}\n"));
    }
    let domains: Vec<Vec<String>> = s
        .domains
        .iter()
        .map(|d| {
            let issuer = match (&d.issuer, d.acme) {
                (Some(i), true) => format!("{i} (ACME)"),
                (Some(i), false) => i.clone(),
                (None, _) => "none yet (placeholder)".into(),
            };
            let next = match (d.acme, d.next_renewal) {
                (true, Some(t)) => clock::datetime(t),
                _ => "-".into(),
            };
            vec![
                d.name.clone(),
                issuer,
                d.not_after.map_or("-".into(), expiry),
                next,
                d.hostnames.join(","),
            ]
        })
        .collect();
    if !domains.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "DOMAIN",
                "ISSUER",
                "EXPIRES (UTC)",
                "NEXT RENEWAL",
                "HOSTNAMES",
            ],
            &domains,
        ));
    }
    for d in &s.domains {
        if let (Some(e), Some(at)) = (&d.last_error, d.last_error_at) {
            out.push_str(&format!(
                "{}: last error {}: {}\n",
                d.name,
                clock::datetime(at),
                escape_controls(e)
            ));
        }
    }
    out
}

fn connections_table(conns: &[ConnView]) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = conns
        .iter()
        .map(|c| {
            let transport = match (c.kind.as_str(), &c.transport) {
                ("egress", t) => format!("egress-{}", dash(t)),
                (_, t) => dash(t),
            };
            let sni = match (&c.sni, &c.domain) {
                (None, None) => "-".to_string(),
                (sni, domain) => format!("{}/{}", dash(sni), dash(domain)),
            };
            vec![
                c.id.to_string(),
                c.remote.clone(),
                transport,
                sni,
                dash(&c.driver),
                dash(&c.app),
                dash(&c.user),
                age(c.age_secs),
                bytes(c.bytes_in),
                bytes(c.bytes_out),
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

/// Left-aligned columns, two spaces apart. Cells are escaped: client-chosen strings
/// (driver, app, user, SNI) must not drive the operator's terminal.
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
    let days = (not_after - clock::unix_secs()).div_euclid(86_400);
    let date = clock::date(not_after);
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
        let conns = [ConnView {
            id: 7,
            remote: "10.0.0.5:5000".into(),
            kind: "client".into(),
            transport: Some("tls".into()),
            sni: Some("db\u{1b}]0;owned\u{7}".into()),
            domain: Some("default".into()),
            age_secs: 0.0,
            bytes_in: 0,
            bytes_out: 0,
            driver: Some("evil\n7  10.0.0.6:1  tls  root".into()),
            app: Some("a\u{9b}2J".into()),
            user: Some("x\ry@admin".into()),
        }];
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
