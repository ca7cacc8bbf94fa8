//! Whole MongoDB messages: OP_MSG, legacy OP_QUERY and OP_REPLY, OP_COMPRESSED (recognised,
//! not decompressed). Zero-copy: documents are `bson::RawDocument`s borrowed from the
//! input, and every length field is checked against the bytes actually there.

use std::fmt;

use bson::RawDocument;

use super::header::{Header, OpCode, WireError, HEADER_LEN};

/// OP_MSG flag: a CRC-32C checksum follows the sections.
pub const CHECKSUM_PRESENT: u32 = 1;
/// OP_MSG flag: the sender will send another message without waiting for a reply.
pub const MORE_TO_COME: u32 = 1 << 1;
/// OP_MSG flag: the client accepts an exhaust reply stream.
pub const EXHAUST_ALLOWED: u32 = 1 << 16;
/// Flag bits 0-15 are "required": a receiver must reject ones it does not know.
const KNOWN_REQUIRED: u32 = CHECKSUM_PRESENT | MORE_TO_COME;

/// A kind-1 section: a named sequence of documents (e.g. `documents` of an insert).
pub struct Sequence<'a> {
    pub identifier: &'a str,
    pub documents: Vec<&'a RawDocument>,
}

/// A message's body by opcode. Its `Debug` shows document sizes, never their bytes: they
/// are the client's, up to a message long.
pub enum Body<'a> {
    Msg {
        flags: u32,
        /// The kind-0 section: the command itself.
        body: &'a RawDocument,
        sequences: Vec<Sequence<'a>>,
    },
    Query {
        flags: i32,
        collection: &'a str,
        skip: i32,
        limit: i32,
        query: &'a RawDocument,
    },
    Reply {
        flags: i32,
        cursor_id: i64,
        starting_from: i32,
        returned: i32,
        /// The first returned document (a command reply has exactly one).
        first: Option<&'a RawDocument>,
    },
    Compressed {
        original_opcode: i32,
        uncompressed_size: i32,
        compressor: u8,
    },
    /// A legacy opcode moat does not look into (OP_INSERT, OP_GET_MORE, ...).
    Other,
}

/// A parsed message.
#[derive(Debug)]
pub struct Message<'a> {
    pub header: Header,
    pub body: Body<'a>,
}

/// A document as `Debug` shows it: its size only.
struct Size<'a>(&'a RawDocument);

impl fmt::Debug for Size<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawDocument({} bytes)", self.0.as_bytes().len())
    }
}

impl fmt::Debug for Sequence<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequence")
            .field("identifier_bytes", &self.identifier.len())
            .field("documents", &self.documents.len())
            .finish()
    }
}

impl fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Msg {
                flags,
                body,
                sequences,
            } => f
                .debug_struct("Msg")
                .field("flags", flags)
                .field("body", &Size(body))
                .field("sequences", sequences)
                .finish(),
            Body::Query {
                flags,
                collection,
                skip,
                limit,
                query,
            } => f
                .debug_struct("Query")
                .field("flags", flags)
                .field("collection_bytes", &collection.len())
                .field("skip", skip)
                .field("limit", limit)
                .field("query", &Size(query))
                .finish(),
            Body::Reply {
                flags,
                cursor_id,
                starting_from,
                returned,
                first,
            } => f
                .debug_struct("Reply")
                .field("flags", flags)
                .field("cursor_id", cursor_id)
                .field("starting_from", starting_from)
                .field("returned", returned)
                .field("first", &first.map(Size))
                .finish(),
            Body::Compressed {
                original_opcode,
                uncompressed_size,
                compressor,
            } => f
                .debug_struct("Compressed")
                .field("original_opcode", original_opcode)
                .field("uncompressed_size", uncompressed_size)
                .field("compressor", compressor)
                .finish(),
            Body::Other => f.write_str("Other"),
        }
    }
}

fn invalid(what: impl Into<String>) -> WireError {
    WireError::Invalid(what.into())
}

/// A little-endian reader over a message body that never reads past its end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| invalid(format!("{what} runs past the end of the message")))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self, what: &str) -> Result<i32, WireError> {
        let b = self.take(4, what)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, what: &str) -> Result<i64, WireError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.take(1, what)?[0])
    }

    fn cstring(&mut self, what: &str) -> Result<&'a str, WireError> {
        let rest = &self.buf[self.pos..];
        let nul = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| invalid(format!("{what} is not NUL-terminated")))?;
        let s = std::str::from_utf8(&rest[..nul])
            .map_err(|_| invalid(format!("{what} is not UTF-8")))?;
        self.pos += nul + 1;
        Ok(s)
    }

    fn document(&mut self, what: &str) -> Result<&'a RawDocument, WireError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 5 {
            return Err(invalid(format!("{what} runs past the end of the message")));
        }
        let len = i32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let len = usize::try_from(len)
            .ok()
            .filter(|l| (5..=rest.len()).contains(l))
            .ok_or_else(|| invalid(format!("{what} has a bad length {len}")))?;
        let doc =
            RawDocument::from_bytes(&rest[..len]).map_err(|e| invalid(format!("{what}: {e}")))?;
        self.pos += len;
        Ok(doc)
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Parses one whole message from the start of `buf`. `Incomplete` until all of it is there.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, WireError> {
    let header = Header::parse(buf)?;
    if buf.len() < header.length {
        return Err(WireError::Incomplete {
            need: header.length,
        });
    }
    let mut c = Cursor {
        buf: &buf[HEADER_LEN..header.length],
        pos: 0,
    };
    let body = match header.op_code {
        OpCode::Msg => parse_msg(&mut c)?,
        OpCode::Query => Body::Query {
            flags: c.i32("OP_QUERY flags")?,
            collection: c.cstring("OP_QUERY fullCollectionName")?,
            skip: c.i32("OP_QUERY numberToSkip")?,
            limit: c.i32("OP_QUERY numberToReturn")?,
            query: c.document("OP_QUERY query")?,
        },
        OpCode::Reply => {
            let flags = c.i32("OP_REPLY responseFlags")?;
            let cursor_id = c.i64("OP_REPLY cursorID")?;
            let starting_from = c.i32("OP_REPLY startingFrom")?;
            let returned = c.i32("OP_REPLY numberReturned")?;
            let first = if returned > 0 {
                Some(c.document("OP_REPLY document")?)
            } else {
                None
            };
            Body::Reply {
                flags,
                cursor_id,
                starting_from,
                returned,
                first,
            }
        }
        OpCode::Compressed => Body::Compressed {
            original_opcode: c.i32("OP_COMPRESSED originalOpcode")?,
            uncompressed_size: c.i32("OP_COMPRESSED uncompressedSize")?,
            compressor: c.u8("OP_COMPRESSED compressorId")?,
        },
        _ => Body::Other,
    };
    Ok(Message { header, body })
}

fn parse_msg<'a>(c: &mut Cursor<'a>) -> Result<Body<'a>, WireError> {
    let flags = c.i32("OP_MSG flagBits")? as u32;
    let unknown = flags & 0xffff & !KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(invalid(format!(
            "OP_MSG has unknown required flag bits {unknown:#x}"
        )));
    }
    let end = if flags & CHECKSUM_PRESENT != 0 {
        c.remaining()
            .checked_sub(4)
            .ok_or_else(|| invalid("OP_MSG checksum runs past the end of the message"))?
    } else {
        c.remaining()
    };
    let mut sections = Cursor {
        buf: c.take(end, "OP_MSG sections")?,
        pos: 0,
    };
    let mut body = None;
    let mut sequences = Vec::new();
    while sections.remaining() > 0 {
        match sections.u8("OP_MSG section kind")? {
            0 => {
                if body.is_some() {
                    return Err(invalid("OP_MSG has two kind-0 sections"));
                }
                body = Some(sections.document("OP_MSG body")?);
            }
            1 => {
                let size = sections.i32("OP_MSG sequence size")?;
                let size = usize::try_from(size)
                    .ok()
                    .and_then(|s| s.checked_sub(4))
                    .ok_or_else(|| invalid(format!("OP_MSG sequence has a bad size {size}")))?;
                let mut seq = Cursor {
                    buf: sections.take(size, "OP_MSG document sequence")?,
                    pos: 0,
                };
                let identifier = seq.cstring("OP_MSG sequence identifier")?;
                let mut documents = Vec::new();
                while seq.remaining() > 0 {
                    documents.push(seq.document("OP_MSG sequence document")?);
                }
                sequences.push(Sequence {
                    identifier,
                    documents,
                });
            }
            k => return Err(invalid(format!("OP_MSG has an unknown section kind {k}"))),
        }
    }
    let body = body.ok_or_else(|| invalid("OP_MSG has no kind-0 body section"))?;
    Ok(Body::Msg {
        flags,
        body,
        sequences,
    })
}

impl<'a> Message<'a> {
    /// The command document: an OP_MSG body, or an OP_QUERY to `<db>.$cmd` (with a
    /// `$query` wrapper unwrapped); `None` for anything else.
    pub fn command(&self) -> Option<&'a RawDocument> {
        match &self.body {
            Body::Msg { body, .. } => Some(body),
            Body::Query {
                collection, query, ..
            } if collection.ends_with(".$cmd") => match query.get_document("$query") {
                Ok(inner) => Some(inner),
                Err(_) => Some(query),
            },
            _ => None,
        }
    }

    /// The reply document: an OP_MSG body or the first OP_REPLY document.
    pub fn reply(&self) -> Option<&'a RawDocument> {
        match &self.body {
            Body::Msg { body, .. } => Some(body),
            Body::Reply { first, .. } => *first,
            _ => None,
        }
    }

    /// The database a command runs against: `$db`, or the OP_QUERY namespace's database.
    pub fn database(&self) -> Option<&'a str> {
        match &self.body {
            Body::Query { collection, .. } => collection.split('.').next(),
            Body::Msg { body, .. } => body.get_str("$db").ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_msg(flags: u32, sections: &[u8], checksum: bool) -> Vec<u8> {
        let len = 16 + 4 + sections.len() + if checksum { 4 } else { 0 };
        let mut m = Vec::new();
        for v in [len as i32, 9, 0, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(sections);
        if checksum {
            m.extend_from_slice(&[1, 2, 3, 4]);
        }
        m
    }

    fn doc(d: bson::Document) -> Vec<u8> {
        let mut v = Vec::new();
        d.to_writer(&mut v).unwrap();
        v
    }

    #[test]
    fn op_msg_with_body_sequence_and_checksum() {
        let mut s = vec![0u8];
        s.extend(doc(bson::doc! {"insert": "c", "$db": "test"}));
        let docs = [doc(bson::doc! {"a": 1}), doc(bson::doc! {"a": 2})];
        let seq_len = 4 + "documents\0".len() + docs[0].len() + docs[1].len();
        s.push(1);
        s.extend_from_slice(&(seq_len as i32).to_le_bytes());
        s.extend_from_slice(b"documents\0");
        s.extend(docs.concat());
        let m = op_msg(CHECKSUM_PRESENT, &s, true);
        let parsed = parse(&m).unwrap();
        let Body::Msg {
            body, sequences, ..
        } = &parsed.body
        else {
            panic!("not OP_MSG")
        };
        assert_eq!(body.get_str("insert").unwrap(), "c");
        assert_eq!(sequences[0].identifier, "documents");
        assert_eq!(sequences[0].documents.len(), 2);
        assert_eq!(parsed.database(), Some("test"));
    }

    #[test]
    fn unknown_required_flag_bits_are_invalid_but_optional_ones_are_not() {
        let s = [vec![0u8], doc(bson::doc! {"ping": 1})].concat();
        assert!(matches!(
            parse(&op_msg(1 << 5, &s, false)),
            Err(WireError::Invalid(_))
        ));
        assert!(parse(&op_msg(EXHAUST_ALLOWED, &s, false)).is_ok());
    }

    #[test]
    fn a_document_length_is_never_trusted() {
        let mut d = doc(bson::doc! {"ping": 1});
        d[0] = 200; // claims 200 bytes
        let s = [vec![0u8], d].concat();
        assert!(matches!(
            parse(&op_msg(0, &s, false)),
            Err(WireError::Invalid(_))
        ));
        // A sequence whose size runs past the message.
        let s = [vec![1u8], 1000i32.to_le_bytes().to_vec(), b"x\0".to_vec()].concat();
        assert!(matches!(
            parse(&op_msg(0, &s, false)),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn missing_body_and_unknown_section_kinds_are_invalid() {
        assert!(matches!(
            parse(&op_msg(0, &[], false)),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            parse(&op_msg(0, &[7, 0, 0], false)),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn a_partial_message_is_incomplete() {
        let s = [vec![0u8], doc(bson::doc! {"ping": 1})].concat();
        let m = op_msg(0, &s, false);
        assert_eq!(
            parse(&m[..m.len() - 1]).unwrap_err(),
            WireError::Incomplete { need: m.len() }
        );
    }

    #[test]
    fn compressed_messages_are_recognised_not_decompressed() {
        let mut m = Vec::new();
        for v in [16 + 9 + 3, 1, 0, 2012, 2013, 100i32] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[2, 0xaa, 0xbb, 0xcc]);
        let p = parse(&m).unwrap();
        assert!(matches!(
            p.body,
            Body::Compressed {
                original_opcode: 2013,
                compressor: 2,
                ..
            }
        ));
    }

    #[test]
    fn debug_shows_sizes_never_the_clients_bytes() {
        let s = [
            vec![0u8],
            doc(bson::doc! {"hello": 1, "client": {"secret": "x"}}),
        ]
        .concat();
        let m = op_msg(0, &s, false);
        let shown = format!("{:?}", parse(&m).unwrap());
        assert!(
            shown.contains("RawDocument(") && shown.contains(" bytes)"),
            "{shown}"
        );
        assert!(!shown.contains("736563726574"), "{shown}"); // hex of "secret"
    }
}
