//! moat's integration-test harness, a crate of its own so that each test file (its own crate)
//! uses whichever helpers it needs without dead-code warnings for the rest. Everything runs for
//! real on loopback, bound to port 0; a test waits on a log line, a port or a channel, never
//! on a sleep.
//!
//! - [`proc`]: paths (repo, venv, the `moat` binary, temp dirs), child processes and their
//!   log lines.
//! - [`servers`]: moat itself ([`Moat`], its configs, `moat ctl`/`check`), a secantusdb
//!   upstream ([`Mongo`]) and an echoing stand-in ([`Recorder`]).
//! - [`pki`]: a dev CA and a `localhost` certificate ([`Pki`]).
//! - [`wire`]: raw TCP and MongoDB messages (hello round trips).
//! - [`tls`]: a rustls client.
//! - [`drivers`]: real clients: pymongo 4.x and 3.11, mongosh.
//! - [`http`]: moat's metrics and health endpoint.
//! - [`acme`]: an ACME CA (pebble) and its mock DNS (pebble-challtestsrv).
//!
//! Test files import it all with `use moat_test_support::*;`.

pub mod acme;
pub mod drivers;
pub mod http;
pub mod pki;
pub mod proc;
pub mod servers;
pub mod tls;
pub mod wire;

pub use acme::*;
pub use drivers::*;
pub use http::*;
pub use pki::*;
pub use proc::*;
pub use servers::*;
pub use tls::*;
pub use wire::*;
