//! Structured fuzzing of what the handshake inspector reads: the input is a program that
//! BUILDS a BSON document — nested documents, arrays and code-with-scope scopes, any leaf
//! type, and "spines" of thousands of nested levels from three bytes — then places it in
//! one field the inspector reads (hello's `client` or `speculativeAuthenticate`, a SASL
//! payload, `conversationId`, `authenticate`'s `user`, `$db`, a server reply...), wraps it
//! in OP_MSG or legacy OP_QUERY / OP_REPLY, and feeds it through `InspectTap` in chunks,
//! both directions. The renderer also walks documents up to 4 KiB alone, with no depth
//! limit. Nothing may panic or overflow the stack, however deep.
//!
//! Input layout: `[placement][wrapping][chunk][program...]`. See fuzz/README.md.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use moat::inspect::InspectTap;
use moat::metrics::Metrics;
use moat::proxy::{Direction, Tap};
use moat::registry::{Kind, Registry};
use moat::wire::render::{render, Style};

/// Largest document the program builds: what fits one inspected message (64 KiB), which
/// is up to 9,000 levels of nesting at 7 or 8 bytes a level.
const MAX_BUILT: usize = moat::inspect::MAX_MESSAGE;

/// Largest document also rendered on its own, without a depth limit: every type and shape
/// in a few hundred levels. (Deeper ones cost milliseconds each under the sanitizers, and
/// the inspector never renders past 512 bytes; the renderer's 200,000-level unit test
/// covers depth.)
const MAX_DIRECT_RENDER: usize = 4096;

/// Keys the program picks from: the names the inspector looks up, and filler.
const KEYS: &[&str] = &[
    "a",
    "",
    "client",
    "driver",
    "name",
    "version",
    "application",
    "speculativeAuthenticate",
    "saslStart",
    "saslContinue",
    "authenticate",
    "mechanism",
    "payload",
    "user",
    "db",
    "$db",
    "$query",
    "conversationId",
    "done",
    "ok",
    "codeName",
    "errmsg",
    "saslSupportedMechs",
    "hello",
    "isMaster",
];

/// What an open container closes as.
enum Open {
    Doc,
    Array(u32),
    /// A code-with-scope's scope; the element's total length starts at this offset.
    Scope(usize),
}

/// Writes BSON bytes element by element, patching lengths as containers close.
struct Builder {
    out: Vec<u8>,
    /// Open containers: where each document's length field is, and what it is.
    stack: Vec<(usize, Open)>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            out: vec![0, 0, 0, 0],
            stack: vec![(0, Open::Doc)],
        }
    }

    fn key(&mut self, ty: u8, pick: u8) {
        self.out.push(ty);
        match self.stack.last_mut() {
            Some((_, Open::Array(i))) => {
                // The index as decimal digits, without a String per element.
                let mut digits = [0u8; 10];
                let mut n = *i;
                let mut at = digits.len();
                loop {
                    at -= 1;
                    digits[at] = b'0' + (n % 10) as u8;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                self.out.extend_from_slice(&digits[at..]);
                *i += 1;
            }
            _ => self
                .out
                .extend_from_slice(KEYS[pick as usize % KEYS.len()].as_bytes()),
        }
        self.out.push(0);
    }

    fn open(&mut self, array: bool, pick: u8) {
        self.key(if array { 0x04 } else { 0x03 }, pick);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.stack
            .push((at, if array { Open::Array(0) } else { Open::Doc }));
    }

    fn open_scope(&mut self, pick: u8, code: &[u8]) {
        self.key(0x0f, pick);
        let total = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.string(code);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        self.stack.push((at, Open::Scope(total)));
    }

    /// Closes the innermost container; `false` when only the top document is left.
    fn close(&mut self) -> bool {
        if self.stack.len() <= 1 {
            return false;
        }
        self.finish_one();
        true
    }

    fn finish_one(&mut self) {
        let Some((at, open)) = self.stack.pop() else {
            return;
        };
        self.out.push(0);
        let len = (self.out.len() - at) as i32;
        self.out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        if let Open::Scope(total) = open {
            let len = (self.out.len() - total) as i32;
            self.out[total..total + 4].copy_from_slice(&len.to_le_bytes());
        }
    }

    fn string(&mut self, s: &[u8]) {
        self.out
            .extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
        self.out.extend_from_slice(s);
        self.out.push(0);
    }

    fn finish(mut self) -> Vec<u8> {
        while !self.stack.is_empty() {
            self.finish_one();
        }
        self.out
    }
}

/// Printable, NUL-free bytes for strings and keys.
fn text(raw: &[u8]) -> Vec<u8> {
    raw.iter().map(|b| b'a' + b % 26).collect()
}

/// The next `n` bytes of the program (fewer at its end).
fn take(n: usize, p: &mut &[u8]) -> Vec<u8> {
    let n = n.min(p.len());
    let (head, tail) = p.split_at(n);
    *p = tail;
    head.to_vec()
}

/// Runs the program in `p` and returns the document it builds.
fn build(mut p: &[u8]) -> Vec<u8> {
    let mut b = Builder::new();
    while let Some((&op, rest)) = p.split_first() {
        p = rest;
        if b.out.len() > MAX_BUILT {
            break;
        }
        let arg = take(1, &mut p).first().copied().unwrap_or(0);
        match op % 11 {
            0 => b.open(false, arg),
            1 => b.open(true, arg),
            2 => {
                b.close();
            }
            3 => {
                let s = text(&take(arg as usize % 64, &mut p));
                b.key(0x02, arg);
                b.string(&s);
            }
            4 => {
                b.key(0x10, arg);
                b.out.extend_from_slice(&(arg as i32).to_le_bytes());
            }
            5 => {
                let mut f = take(8, &mut p);
                f.resize(8, 0);
                b.key(0x01, arg);
                b.out.extend_from_slice(&f);
            }
            6 => {
                let code = text(&take(arg as usize % 8, &mut p));
                b.open_scope(arg, &code);
            }
            7 => {
                // A spine of up to 65,535 levels (`a: {a: ...}`, or arrays by the op's
                // high bits), 8 bytes a level.
                let high = take(1, &mut p).first().copied().unwrap_or(0);
                let levels = u16::from_le_bytes([arg, high]) as usize;
                let budget = MAX_BUILT.saturating_sub(b.out.len()) / 8;
                for i in 0..levels.min(budget) {
                    b.open(op & (0x80 >> (i % 2)) != 0, 0);
                }
            }
            8 => {
                let bytes = take(arg as usize % 32, &mut p);
                b.key(0x05, arg);
                b.out.extend_from_slice(&(bytes.len() as i32).to_le_bytes());
                b.out.push(arg % 9);
                b.out.extend_from_slice(&bytes);
            }
            9 => {
                // Fixed-size leaves: null, undefined, min/max key, bool, oid, datetime,
                // timestamp, int64, decimal128.
                let (ty, size) = [
                    (0x0a, 0),
                    (0x06, 0),
                    (0xff, 0),
                    (0x7f, 0),
                    (0x08, 1),
                    (0x07, 12),
                    (0x09, 8),
                    (0x11, 8),
                    (0x12, 8),
                    (0x13, 16),
                ][arg as usize % 10];
                let mut v = take(size, &mut p);
                v.resize(size, 0);
                if ty == 0x08 {
                    v[0] &= 1;
                }
                b.key(ty, arg);
                b.out.extend_from_slice(&v);
            }
            _ => {
                // Leaves made of strings: regex, symbol, code, DBPointer.
                let s = text(&take(arg as usize % 16, &mut p));
                match arg % 4 {
                    0 => {
                        b.key(0x0b, arg);
                        b.out.extend_from_slice(&s);
                        b.out.push(0);
                        b.out.extend_from_slice(b"ix\0");
                    }
                    1 => {
                        b.key(0x0e, arg);
                        b.string(&s);
                    }
                    2 => {
                        b.key(0x0d, arg);
                        b.string(&s);
                    }
                    _ => {
                        b.key(0x0c, arg);
                        b.string(&s);
                        b.out.extend_from_slice(&[7; 12]);
                    }
                }
            }
        }
    }
    b.finish()
}

/// A document from `(key, value bytes, BSON type)` elements.
fn doc(elements: &[(&str, &[u8], u8)]) -> Vec<u8> {
    let mut d = vec![0, 0, 0, 0];
    for (k, v, ty) in elements {
        d.push(*ty);
        d.extend_from_slice(k.as_bytes());
        d.push(0);
        d.extend_from_slice(v);
    }
    d.push(0);
    let len = d.len() as i32;
    d[..4].copy_from_slice(&len.to_le_bytes());
    d
}

fn bstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as i32 + 1).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

const INT: u8 = 0x10;
const STR: u8 = 0x02;
const DOC: u8 = 0x03;
const BIN: u8 = 0x05;

fn scram_payload() -> Vec<u8> {
    let p = b"n,,n=alice,r=0123456789";
    let mut v = (p.len() as i32).to_le_bytes().to_vec();
    v.push(0);
    v.extend_from_slice(p);
    v
}

/// A request: OP_MSG, OP_QUERY on `admin.$cmd`, or OP_QUERY with a `$query` wrapper.
fn request(id: i32, body: &[u8], wrapping: u8) -> Vec<u8> {
    let mut m = Vec::new();
    match wrapping % 3 {
        0 => {
            header(&mut m, id, 0, 2013);
            m.extend_from_slice(&[0, 0, 0, 0, 0]);
            m.extend_from_slice(body);
        }
        w => {
            header(&mut m, id, 0, 2004);
            m.extend_from_slice(&0i32.to_le_bytes());
            m.extend_from_slice(b"admin.$cmd\0");
            m.extend_from_slice(&0i32.to_le_bytes());
            m.extend_from_slice(&(-1i32).to_le_bytes());
            if w == 2 {
                m.extend_from_slice(&doc(&[("$query", body, DOC)]));
            } else {
                m.extend_from_slice(body);
            }
        }
    }
    patch_len(m)
}

/// A reply: OP_MSG, or OP_REPLY with one document.
fn reply(id: i32, to: i32, body: &[u8], wrapping: u8) -> Vec<u8> {
    let mut m = Vec::new();
    if wrapping & 4 == 0 {
        header(&mut m, id, to, 2013);
        m.extend_from_slice(&[0, 0, 0, 0, 0]);
    } else {
        header(&mut m, id, to, 1);
        m.extend_from_slice(&[0; 16]);
        m.extend_from_slice(&1i32.to_le_bytes());
    }
    m.extend_from_slice(body);
    patch_len(m)
}

fn header(m: &mut Vec<u8>, id: i32, to: i32, op: i32) {
    for v in [0, id, to, op] {
        m.extend_from_slice(&v.to_le_bytes());
    }
}

fn patch_len(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as i32;
    m[..4].copy_from_slice(&len.to_le_bytes());
    m
}

/// The conversation carrying `d` in the field `placement` picks: `(from client, message)`.
fn conversation(d: &[u8], placement: u8, wrapping: u8) -> Vec<(bool, Vec<u8>)> {
    let one = 1i32.to_le_bytes();
    let admin = bstr("admin");
    let scram = bstr("SCRAM-SHA-256");
    let payload = scram_payload();
    let sasl_start = |payload: (&[u8], u8)| {
        doc(&[
            ("saslStart", &one, INT),
            ("mechanism", &scram, STR),
            ("payload", payload.0, payload.1),
            ("db", &admin, STR),
        ])
    };
    let start = sasl_start((&payload, BIN));
    let hello_spec = doc(&[
        ("hello", &one, INT),
        ("speculativeAuthenticate", &start, DOC),
        ("$db", &admin, STR),
    ]);
    let ok_reply = |field: &str| {
        doc(&[
            ("ok", &1f64.to_le_bytes(), 0x01),
            ("conversationId", &one, INT),
            (field, d, DOC),
        ])
    };
    let c = |id, body: Vec<u8>| (true, request(id, &body, wrapping));
    let s = |to, body: Vec<u8>| (false, reply(100 + to, to, &body, wrapping));
    match placement % 12 {
        0 => vec![c(
            1,
            doc(&[
                ("hello", &one, INT),
                ("client", d, DOC),
                ("$db", &admin, STR),
            ]),
        )],
        1 => vec![c(
            1,
            doc(&[("hello", &one, INT), ("speculativeAuthenticate", d, DOC)]),
        )],
        2 => vec![c(
            1,
            doc(&[
                ("hello", &one, INT),
                ("speculativeAuthenticate", &sasl_start((d, DOC)), DOC),
            ]),
        )],
        3 => vec![c(1, sasl_start((d, DOC)))],
        4 => vec![
            c(1, start.clone()),
            s(1, ok_reply("x")),
            c(
                2,
                doc(&[
                    ("saslContinue", &one, INT),
                    ("conversationId", d, DOC),
                    ("payload", d, DOC),
                ]),
            ),
        ],
        5 => vec![c(
            1,
            doc(&[
                ("authenticate", &one, INT),
                ("mechanism", &bstr("MONGODB-X509"), STR),
                ("user", d, DOC),
            ]),
        )],
        6 => vec![c(1, doc(&[("hello", &one, INT), ("$db", d, DOC)]))],
        7 => vec![c(1, d.to_vec())],
        8 => vec![c(1, hello_spec), s(1, ok_reply("speculativeAuthenticate"))],
        9 => vec![c(1, start), s(1, d.to_vec())],
        10 => vec![
            c(1, start.clone()),
            s(1, ok_reply("done")),
            c(2, start),
            s(2, ok_reply("user")),
        ],
        _ => vec![
            c(1, start),
            s(
                1,
                doc(&[("ok", d, DOC), ("codeName", d, DOC), ("errmsg", d, DOC)]),
            ),
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    let metrics = METRICS.get_or_init(Metrics::new);
    let [placement, wrapping, chunk, program @ ..] = data else {
        return;
    };
    let d = build(program);

    if d.len() <= MAX_DIRECT_RENDER {
        if let Ok(raw) = bson::RawDocument::from_bytes(&d) {
            for style in [Style::Shell, Style::Json] {
                let _ = render(raw, style, usize::MAX, &mut String::new());
            }
        }
    }

    let registry = Registry::default();
    let peer = "127.0.0.1:1".parse().unwrap();
    let conn = registry.insert(1, peer, Kind::Client);
    let mut tap = InspectTap::new(conn, peer, metrics, None);
    let chunk = (*chunk as usize + 1) * 64;
    'feed: for (client, message) in conversation(&d, *placement, *wrapping) {
        let dir = if client {
            Direction::ClientToUpstream
        } else {
            Direction::UpstreamToClient
        };
        for piece in message.chunks(chunk) {
            if !tap.observe(dir, piece) {
                break 'feed;
            }
        }
    }
});
