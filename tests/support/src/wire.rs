//! Raw sockets and MongoDB messages: plain TCP connections (from a chosen loopback source
//! too), a hello round trip over any stream, and the checks a refused connection gets.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use crate::proc::DEADLINE;

/// Plain TCP connection with read/write timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s
}

/// A TCP connection to `addr` from the local address `source` (e.g. "127.0.0.2", "::1").
pub fn tcp_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let src: IpAddr = source.parse().unwrap();
    let domain = if src.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&addr.into(), DEADLINE)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(DEADLINE))?;
    Ok(s)
}

/// An OP_MSG `{hello: 1, $db: "admin"}` with request id `id`.
pub fn op_msg_hello(id: i32) -> Vec<u8> {
    let doc = bson::doc! { "hello": 1, "$db": "admin" };
    let mut body = Vec::new();
    doc.to_writer(&mut body).unwrap();
    let len = 16 + 4 + 1 + body.len();
    let mut m = Vec::with_capacity(len);
    for v in [len as i32, id, 0, 2013] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(&body);
    m
}

/// One whole MongoDB message as read off a stream.
pub struct WireMessage {
    pub response_to: i32,
    pub op_code: i32,
    /// Everything after the 16-byte header.
    pub body: Vec<u8>,
}

impl WireMessage {
    /// The body document of an OP_MSG whose first section is kind 0.
    pub fn document(&self) -> bson::Document {
        bson::Document::from_reader(&self.body[5..]).unwrap()
    }
}

/// Reads one whole MongoDB message.
pub fn read_message<S: Read>(s: &mut S) -> WireMessage {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    let field = |at: usize| i32::from_le_bytes(h[at..at + 4].try_into().unwrap());
    let len = field(0) as usize;
    let mut body = vec![0u8; len - 16];
    s.read_exact(&mut body).unwrap();
    WireMessage {
        response_to: field(8),
        op_code: field(12),
        body,
    }
}

/// Reads one whole MongoDB message, which must be an OP_MSG; returns its body document.
pub fn read_op_msg<S: Read>(s: &mut S) -> bson::Document {
    let m = read_message(s);
    assert_eq!(m.op_code, 2013);
    m.document()
}

/// A hello round trip over any stream (plain TCP or TLS): the reply's body document.
pub fn hello_over<S: Read + Write>(s: &mut S, id: i32) -> bson::Document {
    s.write_all(&op_msg_hello(id)).unwrap();
    s.flush().unwrap();
    read_op_msg(s)
}

/// Whether the connection was closed without a byte of reply.
pub fn closed_without_reply(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// Sends `ping` and expects it echoed back (through moat to a [`crate::Recorder`]).
pub fn echo_ok(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut b = [0u8; 4];
    s.read_exact(&mut b).is_ok() && &b == b"ping"
}
