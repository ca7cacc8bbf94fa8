//! Replies moat writes itself, in the framing the client used: OP_MSG for OP_MSG requests,
//! OP_REPLY for legacy OP_QUERY (old drivers' first `isMaster`).

use bson::Document;

use super::header::{Header, OpCode, HEADER_LEN};

/// mongod's `SSLHandshakeFailed`: what mongod reports when TLS is required and missing.
pub const SSL_HANDSHAKE_FAILED: i32 = 141;

/// mongod's `HostUnreachable`: what mongod reports when it cannot connect to a host it needs.
pub const HOST_UNREACHABLE: i32 = 6;

/// The command-failure document mongod sends: `{ok: 0, errmsg, code, codeName}`.
pub fn error_document(code: i32, code_name: &str, errmsg: &str) -> Document {
    bson::doc! { "ok": 0.0, "errmsg": errmsg, "code": code, "codeName": code_name }
}

/// Frames `body` as the reply to the request whose header is `request`.
pub fn reply_to(request: &Header, request_id: i32, body: &Document) -> Vec<u8> {
    let mut doc = Vec::with_capacity(256);
    // A Document always serialises: its keys are valid C strings and values are plain.
    if body.to_writer(&mut doc).is_err() {
        doc.clear();
    }
    let legacy = request.op_code == OpCode::Query;
    // OP_MSG: flagBits u32, section kind 0, the document.
    // OP_REPLY: responseFlags i32, cursorID i64, startingFrom i32, numberReturned i32, the document.
    let prefix = if legacy { 4 + 8 + 4 + 4 } else { 4 + 1 };
    let mut out = Vec::with_capacity(HEADER_LEN + prefix + doc.len());
    Header {
        length: HEADER_LEN + prefix + doc.len(),
        request_id,
        response_to: request.request_id,
        op_code: if legacy { OpCode::Reply } else { OpCode::Msg },
    }
    .write(&mut out);
    if legacy {
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&0i64.to_le_bytes());
        out.extend_from_slice(&0i32.to_le_bytes());
        out.extend_from_slice(&1i32.to_le_bytes());
    } else {
        out.extend_from_slice(&0u32.to_le_bytes());
        out.push(0);
    }
    out.extend_from_slice(&doc);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: OpCode) -> Header {
        Header {
            length: 100,
            request_id: 42,
            response_to: 0,
            op_code: op,
        }
    }

    #[test]
    fn op_msg_request_gets_op_msg_reply() {
        let body = error_document(SSL_HANDSHAKE_FAILED, "SSLHandshakeFailed", "TLS required");
        let out = reply_to(&request(OpCode::Msg), 1, &body);
        let h = Header::parse(&out).unwrap();
        assert_eq!(
            (h.op_code, h.response_to, h.length),
            (OpCode::Msg, 42, out.len())
        );
        assert_eq!(&out[16..21], &[0, 0, 0, 0, 0]);
        let doc = Document::from_reader(&out[21..]).unwrap();
        assert_eq!(doc.get_f64("ok").unwrap(), 0.0);
        assert_eq!(doc.get_i32("code").unwrap(), 141);
        assert_eq!(doc.get_str("errmsg").unwrap(), "TLS required");
    }

    #[test]
    fn op_query_request_gets_op_reply() {
        let body = error_document(SSL_HANDSHAKE_FAILED, "SSLHandshakeFailed", "TLS required");
        let out = reply_to(&request(OpCode::Query), 1, &body);
        let h = Header::parse(&out).unwrap();
        assert_eq!(
            (h.op_code, h.response_to, h.length),
            (OpCode::Reply, 42, out.len())
        );
        assert_eq!(i32::from_le_bytes(out[32..36].try_into().unwrap()), 1);
        let doc = Document::from_reader(&out[36..]).unwrap();
        assert_eq!(doc.get_str("codeName").unwrap(), "SSLHandshakeFailed");
    }
}
