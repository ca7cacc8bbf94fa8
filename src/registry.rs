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

/// All open connections, and the bytes of the client connections that have closed.
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Arc<Conn>>>>,
    closed_in: AtomicU64,
    closed_out: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            closed_in: AtomicU64::new(0),
            closed_out: AtomicU64::new(0),
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

    /// Removes a connection; a client connection's bytes move to the closed totals in the
    /// same step, so [`Registry::byte_totals`] never counts them twice or not at all.
    pub fn remove(&self, id: u64) {
        if let Ok(mut s) = self.shard(id).lock() {
            if let Some(c) = s.remove(&id) {
                if c.kind == Kind::Client {
                    self.closed_in
                        .fetch_add(c.bytes_in.load(Ordering::Relaxed), Ordering::Relaxed);
                    self.closed_out
                        .fetch_add(c.bytes_out.load(Ordering::Relaxed), Ordering::Relaxed);
                }
            }
        }
    }

    /// Bytes copied client → upstream and back by client connections, open and closed.
    /// Holds every shard while it counts (a scrape, not the data path).
    pub fn byte_totals(&self) -> (u64, u64) {
        let guards: Vec<_> = self.shards.iter().filter_map(|s| s.lock().ok()).collect();
        let (mut i, mut o) = (
            self.closed_in.load(Ordering::Relaxed),
            self.closed_out.load(Ordering::Relaxed),
        );
        for g in &guards {
            for c in g.values().filter(|c| c.kind == Kind::Client) {
                i += c.bytes_in.load(Ordering::Relaxed);
                o += c.bytes_out.load(Ordering::Relaxed);
            }
        }
        (i, o)
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

#[cfg(test)]
mod byte_tests {
    use super::*;

    #[test]
    fn byte_totals_keep_closed_connections() {
        let r = Registry::default();
        let a = "127.0.0.1:1".parse().unwrap();
        let c = r.insert(1, a, Kind::Client);
        c.bytes_in.store(10, Ordering::Relaxed);
        c.bytes_out.store(20, Ordering::Relaxed);
        let e = r.insert(2, a, Kind::Egress);
        e.bytes_in.store(1000, Ordering::Relaxed);
        assert_eq!(r.byte_totals(), (10, 20));
        r.remove(1);
        r.remove(2);
        assert_eq!(r.byte_totals(), (10, 20));
    }
}
