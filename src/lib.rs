//! moat: a TLS-terminating sidecar for MongoDB nodes.
//!
//! One public port carries plaintext and TLS clients, told apart by their first bytes
//! ([`policy`]); each connection ([`conn`]) is sniffed, judged against the live SSL mode,
//! terminated ([`tls`]) and copied to the local mongod ([`proxy`], [`upstream`]).

pub mod admin;
pub mod app;
pub mod certgen;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod ctl;
pub mod egress;
pub mod error;
pub mod events;
pub mod firewall;
pub mod health;
pub mod inspect;
pub mod inventory;
pub mod io;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod proxy;
pub mod proxy_header;
pub mod registry;
pub mod rules;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wire;
