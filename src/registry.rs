//! The open connections, for `moat ctl connections` and the requireSSL safety check.
//!
//! A connection registers once when accepted and unregisters when it ends; the lock is
//! taken only then (and by the admin listing), sharded so two workers rarely meet. What
//! changes during a connection's life — transport, SNI, byte counts, who the client is —
//! lives in the entry itself: atomics and set-once cells, never the registry lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::policy::Transport;

const SHARDS: usize = 16;

/// TLS facts of a connection, set once after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub domain: String,
    /// The verified client certificate's subject (RFC 2253), for MONGODB-X509.
    pub client_subject: Option<String>,
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client on the public port.
    Client,
    /// The local mongod dialling out through an `[[egress]]` listener.
    Egress,
}

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub remote: SocketAddr,
    pub kind: Kind,
    pub started: Instant,
    /// 0 = not yet known, 1 = TLS, 2 = plaintext.
    transport: AtomicU8,
    pub tls: OnceLock<TlsInfo>,
    /// What the handshake said (filled by wire inspection): `name version` of the driver,
    /// the application name, and `user@db` once authenticated.
    pub driver: OnceLock<String>,
    pub app: OnceLock<String>,
    pub user: OnceLock<String>,
    /// Bytes copied client → upstream and upstream → client so far.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Conn {
    pub fn transport(&self) -> Option<Transport> {
        match self.transport.load(Ordering::Relaxed) {
            1 => Some(Transport::Tls),
            2 => Some(Transport::Plaintext),
            _ => None,
        }
    }

    pub fn set_transport(&self, t: Transport) {
        let v = match t {
            Transport::Tls => 1,
            Transport::Plaintext => 2,
        };
        self.transport.store(v, Ordering::Relaxed);
    }
}

/// All open connections.
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Arc<Conn>>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Conn>>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Adds a connection; it stays listed until [`Registry::remove`].
    pub fn insert(&self, id: u64, remote: SocketAddr, kind: Kind) -> Arc<Conn> {
        let c = Arc::new(Conn {
            id,
            remote,
            kind,
            started: Instant::now(),
            transport: AtomicU8::new(0),
            tls: OnceLock::new(),
            driver: OnceLock::new(),
            app: OnceLock::new(),
            user: OnceLock::new(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        if let Ok(mut s) = self.shard(id).lock() {
            s.insert(id, c.clone());
        }
        c
    }

    pub fn remove(&self, id: u64) {
        if let Ok(mut s) = self.shard(id).lock() {
            s.remove(&id);
        }
    }

    /// Every open connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<Arc<Conn>> = self
            .shards
            .iter()
            .filter_map(|s| {
                s.lock()
                    .ok()
                    .map(|m| m.values().cloned().collect::<Vec<_>>())
            })
            .flatten()
            .collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_what_is_open_oldest_first() {
        let r = Registry::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for id in [17, 3, 40] {
            r.insert(id, a, Kind::Client);
        }
        r.remove(3);
        let ids: Vec<u64> = r.snapshot().iter().map(|c| c.id).collect();
        assert_eq!(ids, [17, 40]);
    }

    #[test]
    fn transport_is_unknown_until_sniffed() {
        let r = Registry::default();
        let c = r.insert(1, "127.0.0.1:1".parse().unwrap(), Kind::Client);
        assert_eq!(c.transport(), None);
        c.set_transport(Transport::Plaintext);
        assert_eq!(c.transport(), Some(Transport::Plaintext));
    }
}
