//! The MongoDB wire protocol, as much of it as moat needs: message headers and bodies,
//! handshake inspection, and the error replies moat itself sends.

pub mod framer;
pub mod handshake;
pub mod header;
pub mod message;
pub mod render;
pub mod reply;

pub use header::{Header, OpCode, WireError};
