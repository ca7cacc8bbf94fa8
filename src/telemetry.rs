//! Logging: one `tracing` layer that writes mongod-style lines to stdout, either as
//! mongod 3.x text or as mongod 4.4+ structured JSON.
//!
//! moat's events (see [`crate::events`]) carry four fields besides their attributes:
//! `c` (component: NETWORK, ACCESS, CONTROL), `id` (mongod's log id where mongod logs the
//! same event), `ctx` (`listener`, `conn12`) and `msg` (the short JSON message). The text
//! form prints the event's formatted message; the JSON form prints `msg` and the attributes.
//! An attribute named `doc` holds JSON that moat serialised itself and is embedded as is.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Lets the level change at runtime.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

/// Flushes the log writer when dropped: keep it until the process is about to exit.
pub struct LogGuard(#[allow(dead_code)] WorkerGuard);

impl LogHandle {
    /// Applies a new `[log] level` (ignored while MOAT_LOG / RUST_LOG set the level).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.env_override {
            return Ok(());
        }
        let f = EnvFilter::builder()
            .parse(level)
            .map_err(|e| format!("invalid log level `{level}`: {e}"))?;
        self.filter.reload(f).map_err(|e| e.to_string())
    }
}

/// Installs the global logger. Lines go to stdout through a background writer thread, so
/// a slow terminal or pipe never stalls a connection task.
pub fn init(cfg: &LogConfig) -> (LogHandle, LogGuard) {
    let env = std::env::var("MOAT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .filter(|s| !s.trim().is_empty());
    let env_override = env.is_some();
    let level = env.unwrap_or_else(|| cfg.level.clone());
    let filter = EnvFilter::builder()
        .parse(&level)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("moat-log")
        .finish(std::io::stdout());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(MongodLayer {
            format: cfg.format,
            writer,
        })
        .try_init();
    (
        LogHandle {
            filter: handle,
            env_override,
        },
        LogGuard(guard),
    )
}

/// The formatter layer.
struct MongodLayer {
    format: LogFormat,
    writer: NonBlocking,
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S: Subscriber> Layer<S> for MongodLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            let now = SystemTime::now();
            let r = match self.format {
                LogFormat::Text => write_text(&mut line, now, *event.metadata().level(), &f),
                LogFormat::Json => write_json(&mut line, now, *event.metadata().level(), &f),
            };
            if r.is_ok() {
                line.push('\n');
                let mut w = self.writer.clone();
                let _ = w.write_all(line.as_bytes());
            }
        });
    }
}

/// What one event carried.
#[derive(Default)]
struct Fields {
    component: Option<String>,
    id: Option<u64>,
    ctx: Option<String>,
    msg: Option<String>,
    message: String,
    attrs: Vec<(&'static str, Attr)>,
}

enum Attr {
    /// A JSON value already serialised (the `doc` attribute: client metadata).
    Raw(String),
    Str(String),
    Int(i64),
    UInt(u64),
    Bool(bool),
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "c" => self.component = Some(value.to_string()),
            "ctx" => self.ctx = Some(value.to_string()),
            "msg" => self.msg = Some(value.to_string()),
            "message" => self.message.push_str(value),
            "doc" => self.attrs.push(("doc", Attr::Raw(value.to_string()))),
            n => self.attrs.push((n, Attr::Str(value.to_string()))),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "id" => self.id = Some(value),
            n => self.attrs.push((n, Attr::UInt(value))),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            "id" => self.id = u64::try_from(value).ok(),
            n => self.attrs.push((n, Attr::Int(value))),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attrs.push((field.name(), Attr::Bool(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let mut s = String::new();
        let _ = write!(s, "{value:?}");
        self.record_str(field, &s);
    }
}

fn severity(level: Level) -> &'static str {
    match level {
        Level::ERROR => "E",
        Level::WARN => "W",
        Level::INFO => "I",
        Level::DEBUG => "D1",
        Level::TRACE => "D2",
    }
}

/// `2026-11-22T10:00:00.000` (UTC; the offset is appended by each format).
fn timestamp(now: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_millis(now).to_string();
    s.pop(); // the trailing 'Z'
    s
}

fn write_text(out: &mut String, now: SystemTime, level: Level, f: &Fields) -> fmt::Result {
    write!(
        out,
        "{}+0000 {} {:<8} [{}] {}",
        timestamp(now),
        severity(level),
        f.component.as_deref().unwrap_or("-"),
        f.ctx.as_deref().unwrap_or("main"),
        f.message
    )?;
    // Events from outside moat's catalogue keep their fields visible.
    if f.msg.is_none() {
        for (k, v) in &f.attrs {
            write!(out, " {k}=")?;
            match v {
                Attr::Str(s) | Attr::Raw(s) => out.push_str(s),
                Attr::Int(i) => write!(out, "{i}")?,
                Attr::UInt(u) => write!(out, "{u}")?,
                Attr::Bool(b) => write!(out, "{b}")?,
            }
        }
    }
    Ok(())
}

fn write_json(out: &mut String, now: SystemTime, level: Level, f: &Fields) -> fmt::Result {
    write!(
        out,
        r#"{{"t":{{"$date":"{}+00:00"}},"s":"{}","c":"#,
        timestamp(now),
        severity(level)
    )?;
    json_str(out, f.component.as_deref().unwrap_or("-"));
    write!(out, r#","id":{},"ctx":"#, f.id.unwrap_or(0))?;
    json_str(out, f.ctx.as_deref().unwrap_or("main"));
    out.push_str(r#","msg":"#);
    json_str(out, f.msg.as_deref().unwrap_or(&f.message));
    if !f.attrs.is_empty() {
        out.push_str(r#","attr":{"#);
        for (i, (k, v)) in f.attrs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json_str(out, k);
            out.push(':');
            match v {
                Attr::Raw(s) => out.push_str(s),
                Attr::Str(s) => json_str(out, s),
                Attr::Int(n) => write!(out, "{n}")?,
                Attr::UInt(n) => write!(out, "{n}")?,
                Attr::Bool(b) => write!(out, "{b}")?,
            }
        }
        out.push('}');
    }
    out.push('}');
    Ok(())
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn fields() -> Fields {
        Fields {
            component: Some("NETWORK".into()),
            id: Some(22943),
            ctx: Some("listener".into()),
            msg: Some("Connection accepted".into()),
            message: "connection accepted from 10.0.0.5:51234 #12 (3 connections now open)".into(),
            attrs: vec![
                ("remote", Attr::Str("10.0.0.5:51234".into())),
                ("connectionId", Attr::UInt(12)),
                ("connectionCount", Attr::UInt(3)),
            ],
        }
    }

    fn t0() -> SystemTime {
        // 2026-11-22T10:00:00Z
        UNIX_EPOCH + Duration::from_secs(1_795_341_600)
    }

    #[test]
    fn text_line_is_mongod_3x_style() {
        let mut s = String::new();
        write_text(&mut s, t0(), Level::INFO, &fields()).unwrap();
        assert_eq!(
            s,
            "2026-11-22T10:00:00.000+0000 I NETWORK  [listener] connection accepted from 10.0.0.5:51234 #12 (3 connections now open)"
        );
    }

    #[test]
    fn json_line_is_mongod_44_style() {
        let mut s = String::new();
        write_json(&mut s, t0(), Level::INFO, &fields()).unwrap();
        assert_eq!(
            s,
            r#"{"t":{"$date":"2026-11-22T10:00:00.000+00:00"},"s":"I","c":"NETWORK","id":22943,"ctx":"listener","msg":"Connection accepted","attr":{"remote":"10.0.0.5:51234","connectionId":12,"connectionCount":3}}"#
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\u{1}");
        assert_eq!(s, r#""a\"b\\c\nd\u0001""#);
    }
}
