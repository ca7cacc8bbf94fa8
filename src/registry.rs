//! The open connections, for `moat ctl connections` and the requireSSL safety check, and
//! the client traffic totals Prometheus scrapes.
//!
//! A connection registers once when accepted and unregisters when it ends; the lock is
//! taken only then (and by the admin listing), sharded so two workers rarely meet. What
//! changes during a connection's life — transport, SNI, byte counts, who the client is —
//! lives in the entry itself: atomics and set-once cells, never the registry lock.
//!
//! A scrape never takes the registry lock either, and its cost does not grow with the
//! connections open: the copy loop adds what it copies to [`Traffic`] as it goes, and the
//! open-by-transport gauges move when a connection's transport is learnt and when it ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::metrics::Scrape;
use crate::policy::Transport;

const SHARDS: usize = 16;

/// Byte counters in [`Traffic`]: one cache line each, picked by the copying thread. More
/// worker threads than this share lines (still correct, only less spread).
const SLOTS: usize = 16;

/// `transport` bit set when the connection has ended (the low bits keep its transport).
const ENDED: u8 = 4;

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

/// Where the copy loop publishes one direction's running total.
pub trait ByteSink: Sync {
    /// `total` is what the one task copying this direction has copied so far.
    fn publish(&self, total: u64);
}

impl ByteSink for AtomicU64 {
    fn publish(&self, total: u64) {
        self.store(total, Ordering::Relaxed);
    }
}

/// One direction's bytes on one connection. A client connection's count also feeds the
/// process-wide [`Traffic`], by the difference since the last publish, so the total is
/// counted once, as it happens, and never needs the connection again.
#[derive(Debug, Default)]
pub struct ByteCount {
    copied: AtomicU64,
    /// The totals to feed and the direction index in them (none for egress).
    feeds: Option<(Arc<Traffic>, usize)>,
}

impl ByteCount {
    fn feeding(traffic: &Arc<Traffic>, direction: usize) -> ByteCount {
        ByteCount {
            copied: AtomicU64::new(0),
            feeds: Some((traffic.clone(), direction)),
        }
    }

    /// Bytes copied so far.
    pub fn load(&self, order: Ordering) -> u64 {
        self.copied.load(order)
    }
}

impl ByteSink for ByteCount {
    fn publish(&self, total: u64) {
        // One writer (the copying task): a load and a store, no read-modify-write here.
        let before = self.copied.load(Ordering::Relaxed);
        if total <= before {
            return;
        }
        self.copied.store(total, Ordering::Relaxed);
        if let Some((traffic, direction)) = &self.feeds {
            traffic.add_bytes(*direction, total - before);
        }
    }
}

/// Two monotonic counters (client → upstream, upstream → client) alone on a cache line,
/// so threads copying at once never write the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot([AtomicU64; 2]);

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_SLOT: usize = NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % SLOTS;
}

/// Client traffic since start, readable at any time without a lock.
#[derive(Debug, Default)]
pub struct Traffic {
    bytes: [Slot; SLOTS],
    /// Client connections open now whose transport is known: [TLS, plaintext].
    open: [AtomicU64; 2],
}

impl Traffic {
    /// `moat_bytes_total` and `moat_connections_open`, for a scrape.
    pub fn export(&self, s: &mut Scrape) {
        let (up, down) = self.bytes();
        s.counter(
            "moat_bytes_total",
            "Bytes copied by client connections, by direction.",
            Some("direction"),
            [("client_to_upstream", up), ("upstream_to_client", down)],
        );
        let open = |t| i64::try_from(self.open(t)).unwrap_or(i64::MAX);
        s.gauge(
            "moat_connections_open",
            "Client connections open now, by transport.",
            Some("transport"),
            [Transport::Tls, Transport::Plaintext].map(|t| (t.as_str(), open(t))),
        );
    }

    fn add_bytes(&self, direction: usize, n: u64) {
        let slot = THREAD_SLOT.try_with(|s| *s).unwrap_or(0);
        self.bytes[slot].0[direction].fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes copied client → upstream and back by client connections, open and closed.
    /// Each slot only grows, so the sum does too.
    pub fn bytes(&self) -> (u64, u64) {
        self.bytes.iter().fold((0, 0), |(i, o), s| {
            (
                i + s.0[0].load(Ordering::Relaxed),
                o + s.0[1].load(Ordering::Relaxed),
            )
        })
    }

    /// Client connections open now over `t`.
    pub fn open(&self, t: Transport) -> u64 {
        self.open[transport_index(t)].load(Ordering::Relaxed)
    }
}

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Tls => 0,
        Transport::Plaintext => 1,
    }
}

fn transport_code(t: Transport) -> u8 {
    match t {
        Transport::Tls => 1,
        Transport::Plaintext => 2,
    }
}

fn transport_of(code: u8) -> Option<Transport> {
    match code & !ENDED {
        1 => Some(Transport::Tls),
        2 => Some(Transport::Plaintext),
        _ => None,
    }
}

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub remote: SocketAddr,
    pub kind: Kind,
    pub started: Instant,
    /// 0 = not yet known, 1 = TLS, 2 = plaintext; | [`ENDED`] once it has ended.
    transport: AtomicU8,
    pub tls: OnceLock<TlsInfo>,
    /// What the handshake said (filled by wire inspection): `name version` of the driver,
    /// the application name, and `user@db` once authenticated.
    pub driver: OnceLock<String>,
    pub app: OnceLock<String>,
    pub user: OnceLock<String>,
    /// Bytes copied client → upstream and upstream → client so far.
    pub bytes_in: ByteCount,
    pub bytes_out: ByteCount,
    /// The open-by-transport gauges this connection counts in (none for egress).
    traffic: Option<Arc<Traffic>>,
}

impl Conn {
    pub fn transport(&self) -> Option<Transport> {
        transport_of(self.transport.load(Ordering::Relaxed))
    }

    /// Records the transport; the connection counts as open over it from now until it
    /// ends. Nothing changes once it has ended.
    pub fn set_transport(&self, t: Transport) {
        let new = transport_code(t);
        let mut old = self.transport.load(Ordering::Relaxed);
        loop {
            if old == new || old & ENDED != 0 {
                return;
            }
            match self.transport.compare_exchange_weak(
                old,
                new,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => old = now,
            }
        }
        if let Some(traffic) = &self.traffic {
            if let Some(was) = transport_of(old) {
                traffic.open[transport_index(was)].fetch_sub(1, Ordering::Relaxed);
            }
            traffic.open[transport_index(t)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops counting the connection as open (once, however often it is called).
    fn end(&self) {
        let was = self.transport.fetch_or(ENDED, Ordering::Relaxed);
        if was & ENDED != 0 {
            return;
        }
        if let (Some(traffic), Some(t)) = (&self.traffic, transport_of(was)) {
            traffic.open[transport_index(t)].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// All open connections, and the client traffic totals.
pub struct Registry {
    shards: Vec<Mutex<HashMap<u64, Arc<Conn>>>>,
    traffic: Arc<Traffic>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            traffic: Arc::default(),
        }
    }
}

impl Registry {
    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Conn>>> {
        &self.shards[id as usize % SHARDS]
    }

    /// Adds a connection; it stays listed until [`Registry::remove`].
    pub fn insert(&self, id: u64, remote: SocketAddr, kind: Kind) -> Arc<Conn> {
        let (bytes_in, bytes_out, traffic) = match kind {
            Kind::Client => (
                ByteCount::feeding(&self.traffic, 0),
                ByteCount::feeding(&self.traffic, 1),
                Some(self.traffic.clone()),
            ),
            Kind::Egress => (ByteCount::default(), ByteCount::default(), None),
        };
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
            bytes_in,
            bytes_out,
            traffic,
        });
        if let Ok(mut s) = self.shard(id).lock() {
            s.insert(id, c.clone());
        }
        c
    }

    /// Removes a connection; it no longer counts as open. (Its bytes are in the totals
    /// already.)
    pub fn remove(&self, id: u64) {
        let removed = self.shard(id).lock().ok().and_then(|mut s| s.remove(&id));
        if let Some(c) = removed {
            c.end();
        }
    }

    /// Client traffic totals, for a scrape: no lock.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
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
mod traffic_tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn byte_totals_keep_closed_connections_once_and_skip_egress() {
        let r = Registry::default();
        let c = r.insert(1, addr(), Kind::Client);
        c.bytes_in.publish(10);
        c.bytes_out.publish(20);
        let e = r.insert(2, addr(), Kind::Egress);
        e.bytes_in.publish(1000);
        assert_eq!(r.traffic().bytes(), (10, 20));
        c.bytes_in.publish(15);
        assert_eq!(
            r.traffic().bytes(),
            (15, 20),
            "running totals add their growth"
        );
        assert_eq!(c.bytes_in.load(Ordering::Relaxed), 15);
        r.remove(1);
        r.remove(2);
        assert_eq!(r.traffic().bytes(), (15, 20));
    }

    #[test]
    fn open_gauges_follow_transport_and_end() {
        let r = Registry::default();
        let a = r.insert(1, addr(), Kind::Client);
        let b = r.insert(2, addr(), Kind::Client);
        let e = r.insert(3, addr(), Kind::Egress);
        assert_eq!(r.traffic().open(Transport::Tls), 0, "unknown until sniffed");
        a.set_transport(Transport::Tls);
        b.set_transport(Transport::Plaintext);
        e.set_transport(Transport::Tls);
        assert_eq!(
            r.traffic().open(Transport::Tls),
            1,
            "egress is not a client"
        );
        assert_eq!(r.traffic().open(Transport::Plaintext), 1);
        b.set_transport(Transport::Tls);
        assert_eq!(r.traffic().open(Transport::Plaintext), 0);
        assert_eq!(r.traffic().open(Transport::Tls), 2);
        r.remove(1);
        r.remove(1);
        r.remove(2);
        r.remove(3);
        assert_eq!(r.traffic().open(Transport::Tls), 0);
        a.set_transport(Transport::Plaintext);
        assert_eq!(
            r.traffic().open(Transport::Plaintext),
            0,
            "an ended connection stays ended"
        );
    }

    #[test]
    fn counting_and_reading_totals_never_wait_for_the_registry_lock() {
        let r = Arc::new(Registry::default());
        let c = r.insert(1, addr(), Kind::Client);
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let r = r.clone();
            std::thread::spawn(move || {
                let guards: Vec<_> = r.shards.iter().map(|s| s.lock().unwrap()).collect();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv();
                drop(guards);
            })
        };
        locked_rx.recv().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let scraper = {
            let r = r.clone();
            std::thread::spawn(move || {
                c.set_transport(Transport::Plaintext);
                c.bytes_in.publish(7);
                let seen = (r.traffic().bytes(), r.traffic().open(Transport::Plaintext));
                done_tx.send(seen).unwrap();
            })
        };
        let seen = done_rx.recv_timeout(std::time::Duration::from_secs(5));
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        scraper.join().unwrap();
        assert_eq!(
            seen,
            Ok(((7, 0), 1)),
            "blocked while the registry was locked"
        );
    }
}
