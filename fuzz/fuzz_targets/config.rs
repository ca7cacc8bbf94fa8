//! Fuzzes the config loader: TOML text in, a validated Config or a list of problems placed
//! at file:line:col out, never a panic. Names in `upstream.address` are replaced by a
//! loopback address first: resolving them would make each run wait on DNS.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use moat::config::Source;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = without_names(text);
    let source = Source {
        path: PathBuf::from("/nonexistent/fuzz/moat.toml"),
        text,
    };
    if let Err(e) = source.parse() {
        // Every problem renders, and says where it is.
        for p in &e.0 {
            let _ = p.to_string();
        }
    }
});

/// The text with any `upstream.address` that is not an IP literal or `unix:` path
/// replaced by `127.0.0.1:1`.
fn without_names(text: &str) -> String {
    let Ok(mut doc) = text.parse::<toml::Table>() else {
        return text.to_string();
    };
    let named = doc
        .get("upstream")
        .and_then(|u| u.get("address"))
        .and_then(|a| a.as_str())
        .is_some_and(|a| !a.starts_with("unix:") && a.parse::<std::net::SocketAddr>().is_err());
    if !named {
        return text.to_string();
    }
    if let Some(toml::Value::Table(u)) = doc.get_mut("upstream") {
        u.insert("address".into(), toml::Value::String("127.0.0.1:1".into()));
    }
    doc.to_string()
}
