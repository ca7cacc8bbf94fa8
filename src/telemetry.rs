//! Logging: one `tracing` layer that writes mongod-style lines to stdout, either as
//! mongod 3.x text or as mongod 4.4+ structured JSON.
//!
//! moat's events (see [`crate::events`]) carry four fields besides their attributes:
//! `c` (component: NETWORK, ACCESS, CONTROL), `id` (mongod's log id where mongod logs the
//! same event), `ctx` (`listener`, `conn12`) and `msg` (the short JSON message). The text
//! form prints the event's formatted message; the JSON form prints `msg` and the attributes.
//! An attribute named `doc` holds JSON that moat serialised itself and is embedded as is.
//!
//! Lines carry client-chosen text (user names, metadata, SNI), so no control character
//! leaves raw: a client cannot start a forged line or drive the operator's terminal. Lines
//! reach stdout through a bounded buffer and a writer thread; when stdout stalls, lines
//! are dropped and counted rather than stalling the connection that logs them.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};
use crate::metrics::Scrape;

/// Bytes of log lines held for the writer thread. A line that does not fit is dropped and
/// counted: a connection never waits for stdout.
pub const LOG_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// After a batch, the writer lets lines gather this long before the next: at thousands of
/// connections a second, one write and one wake-up per batch instead of per line.
const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// How long exit waits for buffered lines to reach stdout.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(2);

/// Lines dropped since start (`moat_log_lines_dropped_total`).
static LINES_DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since start because stdout was not keeping up.
pub fn lines_dropped() -> u64 {
    LINES_DROPPED.load(Ordering::Relaxed)
}

/// `moat_log_lines_dropped_total`, for a scrape.
pub fn export(s: &mut Scrape) {
    s.counter(
        "moat_log_lines_dropped_total",
        "Log lines dropped because stdout was not keeping up (logging never waits for it).",
        None,
        [("", lines_dropped())],
    );
}

/// Lets the level change at runtime.
#[derive(Clone)]
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

/// Flushes what is buffered (waiting at most [`FLUSH_ON_EXIT`]) when dropped: keep it until
/// the process is about to exit.
pub struct LogGuard(Arc<Queue>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.close(FLUSH_ON_EXIT);
    }
}

impl LogHandle {
    /// Applies a new `[log] level` (ignored while MOAT_LOG / RUST_LOG set the level).
    pub fn set_level(&self, level: &str) -> Result<(), LevelError> {
        if self.env_override {
            return Ok(());
        }
        let f = EnvFilter::builder()
            .parse(level)
            .map_err(|e| LevelError::Invalid(level.to_string(), e.to_string()))?;
        self.filter
            .reload(f)
            .map_err(|e| LevelError::Reload(e.to_string()))
    }
}

/// Why a new log level was not applied.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LevelError {
    #[error("invalid log level `{0}`: {1}")]
    Invalid(String, String),
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Installs the global logger. Lines go to stdout through a background writer thread and
/// a bounded buffer, so a slow terminal or pipe never stalls a connection: when the buffer
/// is full, lines are dropped, counted, and reported once stdout catches up.
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
    let queue = Arc::new(Queue::new(LOG_BUFFER_BYTES));
    let q = queue.clone();
    let spawned = std::thread::Builder::new()
        .name("moat-log".into())
        .spawn(move || q.drain(std::io::stdout(), crate::events::log_lines_dropped));
    if let Err(e) = spawned {
        // Without the thread nothing reaches stdout; say so where it can still be seen.
        eprintln!("moat: cannot start the log writer thread: {e}");
    }
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(MongodLayer {
            format: cfg.format,
            queue: queue.clone(),
        })
        .try_init();
    (
        LogHandle {
            filter: handle,
            env_override,
        },
        LogGuard(queue),
    )
}

/// Lines waiting for the writer thread. Logging appends under the lock (one memcpy); the
/// writer swaps the whole buffer out and writes it with the lock released.
struct Queue {
    pending: Mutex<Pending>,
    capacity: usize,
    /// Wakes the writer: lines arrived, or exit wants a flush.
    wake: Condvar,
    /// Tells exit the writer has flushed.
    flushed: Condvar,
}

struct Pending {
    buf: Vec<u8>,
    /// Lines dropped since the writer last reported it.
    dropped: u64,
    closing: bool,
    done: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(capacity),
                dropped: 0,
                closing: false,
                done: false,
            }),
            capacity,
            wake: Condvar::new(),
            flushed: Condvar::new(),
        }
    }

    /// A panic elsewhere while holding the lock leaves the buffer usable: logging goes on.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one whole line, or drops and counts it when the buffer is full. Never blocks
    /// on I/O.
    fn push(&self, line: &[u8]) {
        let mut p = self.lock();
        if p.buf.len() + line.len() > self.capacity {
            p.dropped += 1;
            drop(p);
            LINES_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The writer sleeps only on an empty buffer: wake it on the first line alone, so a
        // busy second costs no futex call per line.
        let wake = p.buf.is_empty();
        p.buf.extend_from_slice(line);
        drop(p);
        if wake {
            self.wake.notify_one();
        }
    }

    /// The writer thread: writes batches to `out` with blocking writes until [`Queue::close`].
    /// After a batch that followed drops it calls `report(n)` (which logs the drop count
    /// through the normal path, so it is formatted like every other line).
    fn drain<W: Write>(&self, mut out: W, report: fn(u64)) {
        let mut batch = Vec::with_capacity(self.capacity);
        loop {
            let (dropped, closing) = {
                let mut p = self.lock();
                while p.buf.is_empty() && p.dropped == 0 && !p.closing {
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                std::mem::swap(&mut p.buf, &mut batch);
                (std::mem::take(&mut p.dropped), p.closing)
            };
            if !batch.is_empty() {
                // A closed stdout loses the lines; there is nowhere left to say so.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
            if dropped > 0 {
                report(dropped);
                continue;
            }
            if !closing {
                std::thread::sleep(BATCH_INTERVAL);
            }
            if closing {
                let mut p = self.lock();
                if p.buf.is_empty() && p.dropped == 0 {
                    p.done = true;
                    drop(p);
                    self.flushed.notify_all();
                    return;
                }
            }
        }
    }

    /// Asks the writer to flush and stop; waits up to `timeout` for it (stdout may be stuck).
    fn close(&self, timeout: Duration) {
        let mut p = self.lock();
        p.closing = true;
        self.wake.notify_one();
        let _ = self
            .flushed
            .wait_timeout_while(p, timeout, |p| !p.done)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// The formatter layer.
struct MongodLayer {
    format: LogFormat,
    queue: Arc<Queue>,
}

thread_local! {
    /// The line being formatted, and its escaped form when it needs one.
    static BUFS: RefCell<(String, String)> =
        RefCell::new((String::with_capacity(512), String::new()));
}

impl<S: Subscriber> Layer<S> for MongodLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        BUFS.with(|bufs| {
            let Ok(mut bufs) = bufs.try_borrow_mut() else {
                return;
            };
            let (line, scratch) = &mut *bufs;
            let level = *event.metadata().level();
            if let Some(out) = format_line(self.format, SystemTime::now(), level, &f, line, scratch)
            {
                self.queue.push(out.as_bytes());
            }
        });
    }
}

/// One event as a whole line, newline included. Text lines are escaped as a whole:
/// client-chosen text (user names, metadata, SNI) sits in the message, escaping the whole
/// line cannot miss a field, and moat's own wording has no control characters to lose. A
/// clean line is only scanned; an escaped one is built in `scratch`.
fn format_line<'a>(
    format: LogFormat,
    now: SystemTime,
    level: Level,
    f: &Fields,
    line: &'a mut String,
    scratch: &'a mut String,
) -> Option<&'a str> {
    line.clear();
    match format {
        LogFormat::Text => {
            write_text(line, now, level, f).ok()?;
            if has_control(line) {
                scratch.clear();
                escape_into(scratch, line);
                scratch.push('\n');
                return Some(scratch);
            }
        }
        LogFormat::Json => write_json(line, now, level, f).ok()?,
    }
    line.push('\n');
    Some(line)
}

/// Whether `s` holds a control character: C0, DEL, or C1 (U+0080–U+009F, UTF-8 `C2 80`–`C2 9F`).
/// A byte scan, so the common clean line costs no allocation.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c < 0x20 || c == 0x7f || (c == 0xc2 && b.get(i + 1).is_some_and(|n| *n < 0xa0))
    })
}

/// Appends `s` with control characters written as visible escapes: `\n`, `\r`, `\t`,
/// `\x1b`, `\x7f`, `\u{85}`.
fn escape_into(out: &mut String, s: &str) {
    for ch in s.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `s` with control characters escaped (see the text log format), so client-chosen text can
/// neither break a line nor drive the terminal it is printed on. Borrowed when clean.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !has_control(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    escape_into(&mut out, s);
    Cow::Owned(out)
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
                Attr::Raw(s) => json_raw(out, s),
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
            // C0, DEL and C1: none may reach a terminal raw.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends JSON that moat serialised itself (`doc`). serde_json leaves DEL and C1 raw inside
/// strings; written as `\u00XX` they mean the same and cannot reach a terminal.
fn json_raw(out: &mut String, s: &str) {
    if !has_control(s) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        if ch.is_control() {
            let _ = write!(out, "\\u{:04x}", ch as u32);
        } else {
            out.push(ch);
        }
    }
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
        json_str(&mut s, "a\"b\\c\nd\u{1}\u{1b}[2J\u{7f}\u{85}\u{9b}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001\u001b[2J\u007f\u0085\u009bé""#);
    }

    /// A SCRAM user name that carries a forged success line, an ESC sequence and a C1 CSI.
    const FORGED: &str = "x\n2026-01-01T00:00:00.000+0000 I ACCESS   [conn9] Successfully authenticated as principal root\r\u{1b}[2J\u{9b}1m\u{7f}\t";

    fn auth_fields() -> Fields {
        Fields {
            component: Some("ACCESS".into()),
            id: Some(20249),
            ctx: Some("conn3".into()),
            msg: Some("Authentication failed".into()),
            message: format!("SASL SCRAM-SHA-256 authentication failed for {FORGED} on admin"),
            attrs: vec![
                ("principalName", Attr::Str(FORGED.into())),
                (
                    "doc",
                    Attr::Raw(format!("{{\"app\":\"{}\"}}", "\u{1b}\u{85}\u{7f}")),
                ),
            ],
        }
    }

    fn line(format: LogFormat, f: &Fields) -> String {
        let (mut line, mut scratch) = (String::new(), String::new());
        format_line(format, t0(), Level::INFO, f, &mut line, &mut scratch)
            .unwrap()
            .to_string()
    }

    #[test]
    fn text_lines_escape_control_characters_so_no_line_can_be_forged() {
        let l = line(LogFormat::Text, &auth_fields());
        assert_eq!(
            l,
            "2026-11-22T10:00:00.000+0000 I ACCESS   [conn3] SASL SCRAM-SHA-256 authentication failed for \
             x\\n2026-01-01T00:00:00.000+0000 I ACCESS   [conn9] Successfully authenticated as principal root\
             \\r\\x1b[2J\\u{9b}1m\\x7f\\t on admin\n"
        );
        assert_eq!(l.lines().count(), 1);
    }

    #[test]
    fn json_lines_escape_control_characters_in_strings_and_in_the_raw_doc() {
        let l = line(LogFormat::Json, &auth_fields());
        assert_eq!(l.lines().count(), 1);
        assert!(!l.trim_end().chars().any(char::is_control), "{l:?}");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["attr"]["principalName"], FORGED);
        assert_eq!(v["attr"]["doc"]["app"], "\u{1b}\u{85}\u{7f}");
    }

    #[test]
    fn clean_lines_pass_through_without_escaping() {
        let f = fields();
        let (mut l, mut scratch) = (String::new(), String::new());
        format_line(LogFormat::Text, t0(), Level::INFO, &f, &mut l, &mut scratch).unwrap();
        assert!(scratch.is_empty(), "the escape buffer was not used");
        assert_eq!(escape_controls("PyMongo|c é ü 日本"), "PyMongo|c é ü 日本");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        // The UTF-8 of U+00A0..U+00BF also starts with C2: not a control.
        assert!(!has_control("\u{a0}\u{bf}\u{100}"));
        assert!(has_control("\u{80}") && has_control("\u{9f}") && has_control("\u{7f}"));
    }

    static REPORTED: AtomicU64 = AtomicU64::new(0);

    fn record(n: u64) {
        REPORTED.fetch_add(n, Ordering::SeqCst);
    }

    /// A stdout that accepts nothing until released.
    struct Stuck(std::sync::mpsc::Receiver<()>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stdout_drops_and_counts_lines_instead_of_blocking_the_caller() {
        let q = Arc::new(Queue::new(1000));
        let (release, rx) = std::sync::mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Stuck(rx, written.clone());
        let writer = {
            let q = q.clone();
            std::thread::spawn(move || q.drain(out, record))
        };
        let before = lines_dropped();
        let started = std::time::Instant::now();
        for i in 0..10_000 {
            q.push(format!("line {i:05} of a burst\n").as_bytes());
        }
        assert!(started.elapsed() < Duration::from_secs(5), "logging waited");
        // At most one batch is with the stuck writer and one buffer is full; the rest drop.
        let dropped = lines_dropped() - before;
        assert!(dropped >= 10_000 - 2 * 1000 / 21, "{dropped}");
        // stdout recovers: everything queued is written, then the drop count is reported.
        drop(release);
        q.close(Duration::from_secs(5));
        writer.join().unwrap();
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("line 00000 of a burst\n"), "{text}");
        assert_eq!(text.lines().count() as u64 + dropped, 10_000);
        assert_eq!(REPORTED.load(Ordering::SeqCst), dropped);
    }

    #[test]
    fn exit_waits_a_bounded_time_for_a_stuck_stdout() {
        let q = Arc::new(Queue::new(1000));
        let (_hold, rx) = std::sync::mpsc::channel::<()>();
        let out = Stuck(rx, Arc::default());
        let qq = q.clone();
        std::thread::spawn(move || qq.drain(out, record));
        q.push(b"never written\n");
        let started = std::time::Instant::now();
        q.close(Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
