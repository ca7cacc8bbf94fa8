//! Connecting to the local mongod over TCP or a unix socket.

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};

use crate::config::UpstreamAddr;

/// An open upstream connection.
pub enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects within `timeout`, trying each resolved address in turn. The error says which
/// address failed and how.
pub async fn connect(addr: &UpstreamAddr, timeout: Duration) -> io::Result<Upstream> {
    let attempt = async {
        match addr {
            UpstreamAddr::Unix(path) => UnixStream::connect(path).await.map(Upstream::Unix),
            UpstreamAddr::Tcp { addrs, .. } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    match TcpStream::connect(a).await {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Upstream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect timed out after {}",
                humantime::format_duration(timeout)
            ),
        )),
    }
}
