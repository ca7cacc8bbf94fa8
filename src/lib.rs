//! moat: a TLS-terminating sidecar for MongoDB nodes.
//!
//! One public port carries plaintext and TLS clients, told apart by their first bytes
//! ([`policy`]); each connection ([`conn`]) is sniffed, judged against the live SSL mode,
//! terminated ([`tls`]) and copied to the local mongod ([`proxy`], [`upstream`]).

pub mod acme;
pub mod admin;
pub mod app;
pub mod bufpool;
pub mod certgen;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod durable;
pub mod egress;
pub mod error;
pub mod events;
pub mod firewall;
pub mod health;
pub mod inspect;
pub mod metrics;
pub mod policy;
pub mod prefixed;
pub mod proxy;
pub mod proxy_protocol;
pub mod readiness;
pub mod registry;
pub mod scope;
pub mod server;
pub mod shared;
pub mod shutdown;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod upstream;
pub mod wire;
