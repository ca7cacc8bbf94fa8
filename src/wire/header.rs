//! The 16-byte header every MongoDB message starts with.

use thiserror::Error;

/// Size of the standard message header.
pub const HEADER_LEN: usize = 16;

/// mongod's cap on `messageLength` (`MaxMessageSizeBytes`).
pub const MAX_MESSAGE_LEN: usize = 48_000_000;

/// The opcodes moat recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Reply,
    Update,
    Insert,
    Query,
    GetMore,
    Delete,
    KillCursors,
    Compressed,
    Msg,
}

impl OpCode {
    /// The opcode for a header value, if it is one MongoDB defines.
    pub fn from_i32(v: i32) -> Option<OpCode> {
        Some(match v {
            1 => OpCode::Reply,
            2001 => OpCode::Update,
            2002 => OpCode::Insert,
            2004 => OpCode::Query,
            2005 => OpCode::GetMore,
            2006 => OpCode::Delete,
            2007 => OpCode::KillCursors,
            2012 => OpCode::Compressed,
            2013 => OpCode::Msg,
            _ => return None,
        })
    }

    /// The header value.
    pub fn as_i32(self) -> i32 {
        match self {
            OpCode::Reply => 1,
            OpCode::Update => 2001,
            OpCode::Insert => 2002,
            OpCode::Query => 2004,
            OpCode::GetMore => 2005,
            OpCode::Delete => 2006,
            OpCode::KillCursors => 2007,
            OpCode::Compressed => 2012,
            OpCode::Msg => 2013,
        }
    }
}

/// Why bytes are not (yet) a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// More bytes are needed; `need` is the total length required.
    #[error("incomplete message: {need} bytes needed")]
    Incomplete { need: usize },
    /// The bytes cannot be a MongoDB message.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// A parsed message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length, header included; checked to be in 16..=48,000,000.
    pub length: usize,
    pub request_id: i32,
    pub response_to: i32,
    pub op_code: OpCode,
}

fn le_i32(b: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Header {
    /// Parses the header at the start of `buf` without trusting its length field.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Incomplete { need: HEADER_LEN });
        }
        let raw_len = le_i32(buf, 0);
        let length = usize::try_from(raw_len)
            .ok()
            .filter(|l| (HEADER_LEN..=MAX_MESSAGE_LEN).contains(l))
            .ok_or_else(|| {
                WireError::Invalid(format!(
                    "messageLength {raw_len} outside {HEADER_LEN}..={MAX_MESSAGE_LEN}"
                ))
            })?;
        let raw_op = le_i32(buf, 12);
        let op_code = OpCode::from_i32(raw_op)
            .ok_or_else(|| WireError::Invalid(format!("unknown opCode {raw_op}")))?;
        Ok(Header {
            length,
            request_id: le_i32(buf, 4),
            response_to: le_i32(buf, 8),
            op_code,
        })
    }

    /// Writes the header for a message of `length` bytes.
    pub fn write(&self, out: &mut Vec<u8>) {
        // `length` is at most MAX_MESSAGE_LEN, which fits an i32.
        out.extend_from_slice(&(self.length as i32).to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.response_to.to_le_bytes());
        out.extend_from_slice(&self.op_code.as_i32().to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: i32, op: i32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [len, 7, 0, op] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_an_op_msg_header() {
        let h = Header::parse(&header(100, 2013)).unwrap();
        assert_eq!(h.length, 100);
        assert_eq!(h.request_id, 7);
        assert_eq!(h.op_code, OpCode::Msg);
    }

    #[test]
    fn short_input_is_incomplete_not_invalid() {
        assert_eq!(
            Header::parse(&header(100, 2013)[..15]),
            Err(WireError::Incomplete { need: 16 })
        );
    }

    #[test]
    fn length_field_is_not_trusted() {
        assert!(matches!(
            Header::parse(&header(15, 2013)),
            Err(WireError::Invalid(_))
        ));
        assert!(matches!(
            Header::parse(&header(-1, 2013)),
            Err(WireError::Invalid(_))
        ));
        assert!(Header::parse(&header(48_000_000, 2013)).is_ok());
        assert!(matches!(
            Header::parse(&header(48_000_001, 2013)),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn unknown_opcode_is_invalid() {
        assert!(matches!(
            Header::parse(&header(100, 2014)),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn write_round_trips() {
        let h = Header::parse(&header(100, 2004)).unwrap();
        let mut out = Vec::new();
        h.write(&mut out);
        assert_eq!(out, header(100, 2004));
    }
}
