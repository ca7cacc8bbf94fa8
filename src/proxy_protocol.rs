//! The PROXY protocol (v1 text, v2 binary) that load balancers put in front of a
//! connection to say who the real client is. Parsing is the `ppp` crate's; this module
//! decides what moat accepts.

use std::net::SocketAddr;

use ppp::v1::Addresses as V1;
use ppp::v2::{Addresses as V2, Command};
use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// `[listen] proxy_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    Off,
    V1,
    V2,
    Any,
}

/// The v2 header's fixed first 12 bytes.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Longest header moat reads (v1 is at most 107 bytes; v2 TLVs make it longer).
const MAX_HEADER: usize = 4096;

/// Whether the first bytes of a connection are a PROXY header. Unambiguous: a MongoDB
/// message cannot start with either signature (its length would exceed 48 MB), nor can TLS.
pub fn looks_like_header(first: &[u8]) -> bool {
    first.starts_with(b"PROXY ") || first.starts_with(V2_SIGNATURE)
}

/// What the bytes so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A valid header of `len` bytes; `source` is the real client, or `None` for a header
    /// that names none (v1 UNKNOWN, v2 LOCAL health checks, unix sockets).
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
    Invalid(HeaderError),
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY protocol header where one is required")]
    Missing,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("a PROXY v1 header, but listen.proxy_protocol = \"v2\"")]
    WrongV1,
    #[error("a PROXY v2 header, but listen.proxy_protocol = \"v1\"")]
    WrongV2,
    #[error("malformed PROXY v1 header: {0}")]
    MalformedV1(String),
    #[error("malformed PROXY v2 header: {0}")]
    MalformedV2(String),
    #[error("no PROXY header within handshake_timeout")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Read(String),
    #[error("closed before a complete PROXY header")]
    Closed,
}

/// Parses the header at the start of `buf`, as `mode` allows.
pub fn parse(buf: &[u8], mode: ProxyProtocol) -> Parsed {
    let prefix_of = |sig: &[u8]| sig.starts_with(&buf[..buf.len().min(sig.len())]);
    if !(prefix_of(b"PROXY ") || prefix_of(V2_SIGNATURE)) {
        return Parsed::Invalid(HeaderError::Missing);
    }
    // A v1 line ends with CRLF. ppp takes a bare LF as the end when it is the last byte
    // read and waits for CRLF when more follow, so the same bytes would be a header or not
    // depending on how TCP cut them: refuse a bare LF, however the bytes arrive.
    if buf.starts_with(b"PROXY ") && bare_lf(buf) {
        return Parsed::Invalid(HeaderError::MalformedV1(
            "the line ends with a bare LF, not CRLF".into(),
        ));
    }
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Parsed::Invalid(HeaderError::TooLong)
        } else {
            Parsed::Incomplete
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) if mode != ProxyProtocol::V2 => Parsed::Header {
            source: match h.addresses {
                V1::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                V1::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                V1::Unknown => None,
            },
            len: h.header.len(),
        },
        HeaderResult::V2(Ok(h)) if mode != ProxyProtocol::V1 => Parsed::Header {
            source: match (h.command, h.addresses) {
                (Command::Proxy, V2::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, V2::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            },
            len: h.len(),
        },
        HeaderResult::V1(Ok(_)) => Parsed::Invalid(HeaderError::WrongV1),
        HeaderResult::V2(Ok(_)) => Parsed::Invalid(HeaderError::WrongV2),
        HeaderResult::V1(Err(e)) => Parsed::Invalid(HeaderError::MalformedV1(e.to_string())),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(HeaderError::MalformedV2(e.to_string())),
    }
}

/// Whether the first line of a v1 header ends in a LF without the CR before it.
fn bare_lf(buf: &[u8]) -> bool {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => i == 0 || buf[i - 1] != b'\r',
        None => false,
    }
}

/// Reads a PROXY header from a trusted sender before `deadline`. Returns the real
/// client (if the header names one) and the bytes read past the header.
pub async fn read(
    tcp: &mut TcpStream,
    mode: ProxyProtocol,
    deadline: Instant,
) -> Result<(Option<SocketAddr>, Vec<u8>), HeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match parse(&buf, mode) {
            Parsed::Header { source, len } => return Ok((source, buf.split_off(len))),
            Parsed::Invalid(why) if !buf.is_empty() => return Err(why),
            _ => {}
        }
        buf.reserve(256);
        match timeout_at(deadline, tcp.read_buf(&mut buf)).await {
            Err(_) => return Err(HeaderError::Timeout),
            Ok(Err(e)) => return Err(HeaderError::Read(e.to_string())),
            Ok(Ok(0)) => return Err(HeaderError::Closed),
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(src: [u8; 4], port: u16) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        h.extend_from_slice(&src);
        h.extend_from_slice(&[127, 0, 0, 1]);
        h.extend_from_slice(&port.to_be_bytes());
        h.extend_from_slice(&27017u16.to_be_bytes());
        h
    }

    #[test]
    fn v1_header_gives_the_real_client_and_its_length() {
        let h = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 27017\r\n";
        let mut buf = h.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            parse(&buf, ProxyProtocol::V1),
            Parsed::Header {
                source: Some("203.0.113.9:51000".parse().unwrap()),
                len: h.len()
            }
        );
    }

    #[test]
    fn v2_header_gives_the_real_client() {
        let h = v2([198, 51, 100, 7], 40000);
        assert_eq!(
            parse(&h, ProxyProtocol::Any),
            Parsed::Header {
                source: Some("198.51.100.7:40000".parse().unwrap()),
                len: 28
            }
        );
    }

    #[test]
    fn partial_headers_ask_for_more() {
        assert_eq!(
            parse(b"PROXY TCP4 203.0.", ProxyProtocol::Any),
            Parsed::Incomplete
        );
        assert_eq!(
            parse(&v2([1, 2, 3, 4], 1)[..20], ProxyProtocol::Any),
            Parsed::Incomplete
        );
    }

    #[test]
    fn wrong_version_malformed_or_missing_headers_are_invalid() {
        let v1 = b"PROXY TCP4 203.0.113.9 10.0.0.1 51000 27017\r\n";
        assert!(matches!(parse(v1, ProxyProtocol::V2), Parsed::Invalid(_)));
        assert!(matches!(
            parse(&v2([1, 2, 3, 4], 1), ProxyProtocol::V1),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n", ProxyProtocol::Any),
            Parsed::Invalid(_)
        ));
        // A MongoDB message where a header is required.
        assert!(matches!(
            parse(&[0x5f, 0, 0, 0, 1, 0], ProxyProtocol::Any),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn headers_are_recognised_where_none_is_expected() {
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(looks_like_header(&v2([1, 2, 3, 4], 1)));
        assert!(!looks_like_header(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_header(&[0x5f, 0, 0, 0]));
    }

    #[test]
    fn a_bare_lf_is_refused_however_the_bytes_are_cut() {
        // Found by the proxy_header fuzz target: ppp took this as a 49-byte header when
        // the read ended at the LF, and waited for a CRLF when one more byte followed.
        let bytes = b"PROXY UNKNOWN ddddddddXY UNKNOWN dN ddddddddddN \ndddd";
        for end in 49..=bytes.len() {
            assert!(
                matches!(
                    parse(&bytes[..end], ProxyProtocol::Any),
                    Parsed::Invalid(HeaderError::MalformedV1(_))
                ),
                "{end} bytes"
            );
        }
        assert_eq!(parse(&bytes[..48], ProxyProtocol::Any), Parsed::Incomplete);
        let good = b"PROXY TCP4 10.0.0.5 127.0.0.1 51234 27017\r\n";
        assert!(matches!(
            parse(good, ProxyProtocol::V1),
            Parsed::Header { len: 43, .. }
        ));
    }
}
