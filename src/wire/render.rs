//! Client documents as log text, written straight from the raw bytes: mongod 3.x's shell
//! style (`{ driver: { name: "PyMongo" } }`) and relaxed extended JSON.
//!
//! The walk keeps its own stack of element iterators and refuses to go deeper than the
//! caller's limit, so a document nested thousands of levels deep costs an error, not the
//! thread's stack. No owned copy of a document, array or scope is made; only a scalar leaf
//! becomes an owned `Bson`, to be formatted exactly as the bson crate formats it.

use std::fmt::Write;

use bson::raw::{RawBsonRef, RawDocument, RawIter};
use bson::Bson;
use thiserror::Error;

/// How a document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// mongod 3.x's log style: `{ key: "value", list: [ 1, 2 ] }`.
    Shell,
    /// Relaxed extended JSON, as `Bson::into_relaxed_extjson().to_string()` writes it.
    Json,
}

/// Why a document was not rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    /// The document nests more than the given number of levels.
    #[error("nested deeper than {0} levels")]
    TooDeep(usize),
    /// An element's bytes are not valid BSON.
    #[error("malformed BSON")]
    Malformed,
}

/// One open document, array or code-with-scope scope.
struct Frame<'a> {
    elements: RawIter<'a>,
    array: bool,
    /// JSON only: this scope closes a `{"$code": ..., "$scope": ...}` wrapper too.
    scope: bool,
    empty: bool,
}

/// Appends `doc` to `out` in `style`. Levels are counted from 1 for `doc` itself; a
/// document, array or scope below level `max_depth` is [`RenderError::TooDeep`]. On error
/// `out` holds a partial rendering, to be discarded.
pub fn render(
    doc: &RawDocument,
    style: Style,
    max_depth: usize,
    out: &mut String,
) -> Result<(), RenderError> {
    if max_depth == 0 {
        return Err(RenderError::TooDeep(0));
    }
    let mut stack = vec![open(doc.iter_elements(), false, out)];
    while let Some(top) = stack.last_mut() {
        let Some(element) = top.elements.next() else {
            if let Some(done) = stack.pop() {
                close(&done, style, out);
            }
            continue;
        };
        let element = element.map_err(|_| RenderError::Malformed)?;
        let value = element.value().map_err(|_| RenderError::Malformed)?;
        match (style, top.empty) {
            (Style::Shell, true) => out.push(' '),
            (Style::Shell, false) => out.push_str(", "),
            (Style::Json, true) => {}
            (Style::Json, false) => out.push(','),
        }
        top.empty = false;
        if !top.array {
            let key = element.key().as_str();
            match style {
                Style::Shell => out.push_str(key),
                Style::Json => json_string(key, out),
            }
            out.push_str(if style == Style::Shell { ": " } else { ":" });
        }
        let child = match value {
            RawBsonRef::Document(d) => Some((d.iter_elements(), false, false)),
            RawBsonRef::Array(a) => Some((a.iter_elements(), true, false)),
            // The shell style prints only the code, as bson's Display does.
            RawBsonRef::JavaScriptCodeWithScope(c) if style == Style::Shell => {
                out.push_str(c.code);
                None
            }
            RawBsonRef::JavaScriptCodeWithScope(c) => {
                out.push_str("{\"$code\":");
                json_string(c.code, out);
                out.push_str(",\"$scope\":");
                Some((c.scope.iter_elements(), false, true))
            }
            leaf => {
                scalar(leaf, style, out)?;
                None
            }
        };
        if let Some((elements, array, scope)) = child {
            if stack.len() >= max_depth {
                return Err(RenderError::TooDeep(max_depth));
            }
            let mut frame = open(elements, array, out);
            frame.scope = scope;
            stack.push(frame);
        }
    }
    Ok(())
}

fn open<'a>(elements: RawIter<'a>, array: bool, out: &mut String) -> Frame<'a> {
    out.push(if array { '[' } else { '{' });
    Frame {
        elements,
        array,
        scope: false,
        empty: true,
    }
}

fn close(frame: &Frame<'_>, style: Style, out: &mut String) {
    if style == Style::Shell && !frame.empty {
        out.push(' ');
    }
    out.push(if frame.array { ']' } else { '}' });
    if frame.scope {
        out.push('}');
    }
}

/// A JSON string literal, escaped exactly as serde_json escapes it (`"`, `\`, and C0
/// controls; short forms for five of them), without building a `Value` per key.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
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

/// A leaf value. Containers are walked by [`render`] and never reach here.
fn scalar(value: RawBsonRef<'_>, style: Style, out: &mut String) -> Result<(), RenderError> {
    match value {
        RawBsonRef::Document(_) | RawBsonRef::Array(_) | RawBsonRef::JavaScriptCodeWithScope(_) => {
            return Err(RenderError::Malformed)
        }
        RawBsonRef::String(s) if style == Style::Shell => {
            let _ = write!(out, "{s:?}");
            return Ok(());
        }
        _ => {}
    }
    let owned = Bson::try_from(value).map_err(|_| RenderError::Malformed)?;
    let _ = match style {
        Style::Shell => write!(out, "{owned}"),
        Style::Json => write!(out, "{}", owned.into_relaxed_extjson()),
    };
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bson::raw::cstr;
    use bson::{doc, RawDocumentBuf};

    /// The renderer this module replaced (recursive, on an owned document): the oracle for
    /// documents small enough to hold on the stack.
    pub(crate) fn old_shell(v: &Bson, out: &mut String) {
        match v {
            Bson::Document(d) if d.is_empty() => out.push_str("{}"),
            Bson::Document(d) => {
                out.push_str("{ ");
                for (i, (k, v)) in d.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(k);
                    out.push_str(": ");
                    old_shell(v, out);
                }
                out.push_str(" }");
            }
            Bson::Array(a) if a.is_empty() => out.push_str("[]"),
            Bson::Array(a) => {
                out.push_str("[ ");
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    old_shell(v, out);
                }
                out.push_str(" ]");
            }
            Bson::String(s) => {
                let _ = write!(out, "{s:?}");
            }
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }

    fn both(raw: &RawDocument) -> (String, String) {
        let mut text = String::new();
        render(raw, Style::Shell, 64, &mut text).unwrap();
        let mut json = String::new();
        render(raw, Style::Json, 64, &mut json).unwrap();
        (text, json)
    }

    /// Today's output equals what the old code made of the same bytes (which it first
    /// turned into an owned document).
    fn assert_same_as_before(d: bson::Document) {
        let raw = RawDocumentBuf::try_from(&d).unwrap();
        let d = bson::Document::try_from(raw.as_ref()).unwrap();
        let (text, json) = both(&raw);
        let mut want = String::new();
        old_shell(&Bson::Document(d.clone()), &mut want);
        assert_eq!(text, want);
        assert_eq!(json, Bson::Document(d).into_relaxed_extjson().to_string());
    }

    fn every_type() -> bson::Document {
        use bson::spec::BinarySubtype;
        doc! {
            "s": "quote \" and \n newline, é",
            "i32": -7i32,
            "i64": 1i64 << 40,
            "f": 4.5f64,
            "whole": 1.0f64,
            "nan": f64::NAN,
            "inf": f64::NEG_INFINITY,
            "t": true,
            "null": Bson::Null,
            "undef": Bson::Undefined,
            "min": Bson::MinKey,
            "max": Bson::MaxKey,
            "oid": bson::oid::ObjectId::from_bytes([7; 12]),
            "date": bson::DateTime::from_millis(1_700_000_000_123),
            "old_date": bson::DateTime::from_millis(-5),
            "bin": bson::Binary { subtype: BinarySubtype::Generic, bytes: vec![0, 1, 254] },
            "uuid": bson::Binary { subtype: BinarySubtype::Uuid, bytes: vec![9; 16] },
            "re": bson::Regex { pattern: "^a.*".try_into().unwrap(), options: "xi".try_into().unwrap() },
            "ts": bson::Timestamp { time: 12, increment: 3 },
            "dec": bson::Decimal128::from_bytes([1; 16]),
            "code": Bson::JavaScriptCode("f()".into()),
            "cws": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                code: "g()".into(),
                scope: doc! {"x": 1, "deeper": {"y": [1, {"z": "w"}]}},
            }),
            "sym": Bson::Symbol("sym".into()),
            "nested": {"a": [], "b": {}, "c": [[1, 2], {"d": [true]}]},
            "": "empty key",
            "key \"with\" quotes": 1,
        }
    }

    #[test]
    fn every_bson_type_renders_as_the_bson_crate_renders_it() {
        assert_same_as_before(every_type());
        assert_same_as_before(doc! {});
        assert_same_as_before(doc! {"driver": {"name": "PyMongo", "version": "4.20.0"}});
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let every: String = (0u32..0x800).filter_map(char::from_u32).collect();
        for s in [
            every.as_str(),
            "",
            "plain",
            "\u{2028}\u{7f}\u{9f}\u{10FFFF}",
        ] {
            let mut out = String::new();
            json_string(s, &mut out);
            assert_eq!(out, serde_json::Value::from(s).to_string());
        }
    }

    #[test]
    fn db_pointer_renders_like_the_bson_crate() {
        // doc! cannot build a DbPointer: write the element by hand.
        let mut bytes = vec![0, 0, 0, 0, 0x0c, b'p', 0];
        bytes.extend_from_slice(&3i32.to_le_bytes());
        bytes.extend_from_slice(b"ns\0");
        bytes.extend_from_slice(&[5; 12]);
        bytes.push(0);
        let len = bytes.len() as i32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        let raw = RawDocument::from_bytes(&bytes).unwrap();
        let owned = bson::Document::try_from(raw).unwrap();
        assert_same_as_before(owned);
    }

    /// `{a: {a: ... {}}}`, `levels` documents in all, built without recursion.
    pub(crate) fn nested(levels: usize) -> Vec<u8> {
        let mut doc = Vec::with_capacity(8 * levels);
        for outer in 1..levels {
            let len = 5 + 8 * (levels - outer);
            doc.extend_from_slice(&(len as i32).to_le_bytes());
            doc.extend_from_slice(&[0x03, b'a', 0]);
        }
        doc.extend_from_slice(&[5, 0, 0, 0, 0]);
        doc.resize(doc.len() + levels - 1, 0);
        doc
    }

    #[test]
    fn depth_limit_counts_the_document_itself_as_level_one() {
        let three = nested(3);
        let raw = RawDocument::from_bytes(&three).unwrap();
        let mut out = String::new();
        render(raw, Style::Shell, 3, &mut out).unwrap();
        assert_eq!(out, "{ a: { a: {} } }");
        assert_eq!(
            render(raw, Style::Json, 2, &mut String::new()),
            Err(RenderError::TooDeep(2))
        );
    }

    #[test]
    fn a_code_with_scope_scope_counts_as_a_level() {
        let d = doc! {"c": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
            code: "f".into(), scope: doc! {"x": {"y": 1}},
        })};
        let raw = RawDocumentBuf::try_from(&d).unwrap();
        assert!(render(&raw, Style::Json, 3, &mut String::new()).is_ok());
        assert_eq!(
            render(&raw, Style::Json, 2, &mut String::new()),
            Err(RenderError::TooDeep(2))
        );
    }

    #[test]
    fn a_very_deep_document_renders_on_a_small_stack_without_a_limit() {
        // 200,000 levels: far past any recursion a 256 KiB stack would survive.
        let bytes = nested(200_000);
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let raw = RawDocument::from_bytes(&bytes).unwrap();
                let mut out = String::new();
                render(raw, Style::Json, usize::MAX, &mut out).unwrap();
                let levels = 200_000 - 1;
                assert_eq!(out.len(), levels * "{\"a\":}".len() + "{}".len());
                assert!(out.starts_with("{\"a\":{\"a\":"));
                assert!(out.ends_with(&format!("{{}}{}", "}".repeat(levels))));
                let mut out = String::new();
                assert_eq!(
                    render(raw, Style::Shell, 16, &mut out),
                    Err(RenderError::TooDeep(16))
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn malformed_elements_are_an_error_not_a_panic() {
        let mut d = RawDocumentBuf::new();
        d.append(cstr!("s"), "text");
        let mut bytes = d.into_bytes();
        bytes[7..11].copy_from_slice(&100i32.to_le_bytes()); // string length past the end
        let raw = RawDocument::from_bytes(&bytes).unwrap();
        assert_eq!(
            render(raw, Style::Json, 16, &mut String::new()),
            Err(RenderError::Malformed)
        );
    }
}
