//! Handshake inspection on a live connection: a [`Tap`] on the byte copy that frames
//! both directions into messages, hands them to the [`Inspector`], logs what it finds
//! and fills the connection's driver/app/user. It sees only the first messages; then it
//! lets go and the copy is plain again.

use std::net::SocketAddr;
use std::sync::Arc;

use std::sync::atomic::AtomicBool;

use crate::config::UpstreamAddr;
use crate::events;
use crate::metrics::Metrics;
use crate::proxy::{Direction, Tap};
use crate::registry::Conn;
use crate::throttle::{Policy, Throttle, Verdict};
use crate::upstream;
use crate::wire::framer::{Framer, Stop};
use crate::wire::handshake::{Finding, Inspector, Next, MAX_METADATA_BYTES, MAX_METADATA_DEPTH};
use crate::wire::message;

/// Largest message inspection reads: handshake messages are far smaller.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What the findings feed besides the log: failed authentications are counted against
/// their source, and the replica-set members a hello reply advertises are checked against
/// the upstream address (warned about once per process).
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    pub throttle: &'a Throttle,
    pub policy: &'a Policy,
    pub upstream: &'a UpstreamAddr,
    pub self_advertised_warned: &'a AtomicBool,
}

/// The inspection of one connection.
pub struct InspectTap<'a> {
    conn: Arc<Conn>,
    metrics: &'a Metrics,
    watch: Option<Watch<'a>>,
    peer: SocketAddr,
    inspector: Inspector,
    from_client: Framer,
    from_server: Framer,
    findings: Vec<Finding>,
}

impl<'a> InspectTap<'a> {
    pub fn new(
        conn: Arc<Conn>,
        peer: SocketAddr,
        metrics: &'a Metrics,
        watch: Option<Watch<'a>>,
    ) -> InspectTap<'a> {
        let subject = conn.tls.get().and_then(|t| t.client_subject.clone());
        InspectTap {
            conn,
            metrics,
            watch,
            peer,
            inspector: Inspector::new(subject),
            from_client: Framer::default(),
            from_server: Framer::default(),
            findings: Vec::new(),
        }
    }

    fn report(&mut self) {
        let findings = std::mem::take(&mut self.findings);
        for f in findings {
            match f {
                Finding::Metadata(m) => {
                    events::client_metadata(self.conn.id, self.peer, &m.text, &m.json);
                    if let Some(d) = m.driver {
                        let _ = self.conn.driver.set(d);
                    }
                    if let Some(a) = m.app {
                        let _ = self.conn.app.set(a);
                    }
                }
                Finding::MetadataTooLarge { bytes, too_deep } => events::client_metadata_too_large(
                    self.conn.id,
                    self.peer,
                    bytes,
                    MAX_METADATA_BYTES,
                    too_deep,
                    MAX_METADATA_DEPTH,
                ),
                Finding::Members(members) => {
                    if let Some(w) = self.watch {
                        upstream::warn_once_if_self_advertised(
                            members,
                            w.upstream,
                            w.self_advertised_warned,
                        );
                    }
                }
                Finding::AuthSucceeded(a) => {
                    self.metrics.auth(a.mechanism_label(), true);
                    events::auth_succeeded(
                        self.conn.id,
                        self.peer,
                        &a.mechanism,
                        &a.user,
                        &a.db,
                        a.speculative,
                    );
                    let _ = self.conn.user.set(format!("{}@{}", a.user, a.db));
                }
                Finding::AuthFailed {
                    auth: a,
                    code_name,
                    errmsg,
                } => {
                    self.metrics.auth(a.mechanism_label(), false);
                    events::auth_failed(
                        self.conn.id,
                        self.peer,
                        &a.mechanism,
                        &a.user,
                        &a.db,
                        a.speculative,
                        &code_name,
                        &errmsg,
                    );
                    self.count_failure();
                }
            }
        }
    }
}

impl InspectTap<'_> {
    /// A failed authentication counts against the source; the one that starts a ban says so.
    fn count_failure(&self) {
        let Some(w) = self.watch else {
            return;
        };
        let now = std::time::Instant::now();
        if let Verdict::Banned { failures } = w.throttle.failure(w.policy, self.peer.ip(), now) {
            self.metrics.auth_ban();
            events::auth_throttle_ban(self.peer.ip(), failures, w.policy.window, w.policy.ban);
        }
    }
}

impl Tap for InspectTap<'_> {
    fn observe(&mut self, dir: Direction, bytes: &[u8]) -> bool {
        let InspectTap {
            inspector,
            from_client,
            from_server,
            findings,
            ..
        } = self;
        let client = dir == Direction::ClientToUpstream;
        let framer = if client { from_client } else { from_server };
        let mut stopped: Option<String> = None;
        let mut unparsed = false;
        let fed = framer.feed(bytes, MAX_MESSAGE, |bytes| match message::parse(bytes) {
            Ok(msg) => {
                let next = if client {
                    inspector.client(&msg, findings)
                } else {
                    inspector.server(&msg, findings)
                };
                match next {
                    Next::Continue => true,
                    Next::Done(why) => {
                        stopped = Some(why.to_string());
                        false
                    }
                }
            }
            Err(e) => {
                stopped = Some(format!("unparseable message: {e}"));
                unparsed = true;
                false
            }
        });
        self.report();
        let keep = match fed {
            Ok(keep) => keep,
            Err(Stop::TooLarge(n)) => {
                stopped = Some(format!("a {n}-byte message is no handshake"));
                false
            }
            Err(Stop::Invalid(why)) => {
                stopped = Some(format!("not MongoDB messages: {why}"));
                unparsed = true;
                false
            }
        };
        if unparsed {
            self.metrics.inspection_stopped();
        }
        if let Some(why) = stopped {
            events::inspection_stopped(self.conn.id, &why);
        }
        keep
    }
}
