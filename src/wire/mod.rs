//! The MongoDB wire protocol, as much of it as moat needs: message headers and the error
//! replies moat itself sends.

pub mod header;
pub mod reply;

pub use header::{Header, OpCode, WireError};
