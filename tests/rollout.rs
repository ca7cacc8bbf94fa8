//! The zero-downtime roll-out under load, compressed for CI: benches/rollout_soak.py with 8
//! pymongo clients for 20 s (the full soak is 64 clients for 150 s; RELIABILITY.md).

use std::process::Command;
use std::time::Duration;

use moat_test_support::*;

#[test]
fn a_full_tls_rollout_under_load_fails_no_operation_and_drops_no_connection() {
    let dir = tempdir();
    let out = dir.path().join("soak.json");
    let mut soak = Proc::spawn(
        Command::new(python())
            .arg(repo().join("benches/rollout_soak.py"))
            .args(["--clients", "8", "--processes", "2", "--duration", "20"])
            .args(["--window", "2", "--moat", env!("CARGO_BIN_EXE_moat")])
            .arg("--json")
            .arg(&out),
    );
    let status = soak.wait_exit(Duration::from_secs(120));
    let printed = soak.lines.all().join("\n");
    assert!(status.success(), "{status:?}\n{printed}");
    let text = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));

    assert!(n("ops") > 1000, "{printed}");
    assert_eq!(n("failed_ops"), 0, "{printed}");
    assert_eq!(n("dropped_tls_connections"), 0, "{printed}");
    assert_eq!(n("dropped_plaintext_connections"), 0, "{printed}");
    assert_eq!(n("moat_rejected"), 0, "no client was refused: {printed}");
    for (step, count) in [
        ("mode", 5),
        ("move", 4),
        ("rotate", 2),
        ("firewall", 10),
        ("reload", 5),
    ] {
        assert_eq!(v["step_counts"][step], count, "{step}: {printed}");
    }
    for s in v["steps"].as_array().unwrap() {
        assert_eq!(s["ok"], true, "{s}");
    }
    // Throughput never stopped: every window did work.
    for w in v["windows_ops_s"].as_array().unwrap() {
        assert!(
            w.as_f64().unwrap() > 0.0,
            "a window without operations: {printed}"
        );
    }
    // Every client connection ended; moat holds no more descriptors than before the load
    // (one more if its readiness probe was connecting at that instant).
    let fds = &v["moat_fds"];
    assert!(
        fds["after"].as_u64().unwrap() <= fds["before"].as_u64().unwrap() + 1,
        "{fds}"
    );
}
