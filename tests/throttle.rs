//! Brute-force throttling with real pymongo logins against secantusdb: a source that keeps
//! failing authentication is refused at accept for a while, listed by `moat ctl bans` and
//! let back in by `moat ctl bans clear`; an exempt subnet never is.

use moat_test_support::*;

/// moat in front of an `--auth` secantusdb, banning after `failures` wrong logins.
fn throttled(mongo: &Mongo, failures: u32, extra: &str) -> Moat {
    let pki = Pki::new();
    Moat::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "",
        &format!(
            "{ADMIN}\n[auth_throttle]\nmax_failures = {failures}\nwindow = \"60s\"\nban = \"5m\"\n{extra}\n"
        ),
    ))
}

fn wrong_password(port: u16) -> PyResult {
    pymongo(
        &uri("alice:wrong@localhost", port, "&authSource=admin"),
        &["ping"],
    )
}

#[test]
fn a_source_that_keeps_failing_authentication_is_banned_listed_and_let_back_in() {
    let mongo = Mongo::start_auth();
    let moat = throttled(&mongo, 3, "");
    for i in 1..=3 {
        let r = wrong_password(moat.port());
        assert!(
            !r.ok && r.out.contains("AuthenticationFailed"),
            "try {i}: {}",
            r.out
        );
    }
    moat.lines().wait_for(
        "refusing new connections from 127.0.0.1 for 5m: 3 failed authentications within 1m",
        DEADLINE,
    );
    assert_eq!(
        moat.lines()
            .count("refusing new connections from 127.0.0.1"),
        1,
        "one line per ban"
    );

    // The right password does not help while the ban lasts: the connection is refused at
    // accept, before a byte is read.
    let r = pymongo(&alice_uri("localhost", moat.port(), ""), &["ping"]);
    assert!(!r.ok, "banned: {}", r.out);
    let mut s = tcp(moat.addr);
    assert!(closed_without_reply(&mut s));
    assert_eq!(
        moat.lines()
            .count("refusing new connections from 127.0.0.1"),
        1,
        "refusals are only counted"
    );

    let bans = moat.ctl_json(&["bans"]);
    assert_eq!(bans["bans"][0]["source"], "127.0.0.1", "{bans}");
    assert!(
        bans["bans"][0]["remaining_secs"].as_u64().unwrap() > 250,
        "{bans}"
    );
    let (code, table, err) = moat.ctl(&["bans", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("SOURCE") && table.contains("1 source(s) banned"),
        "{table}"
    );

    let (code, out, err) = moat.ctl(&["bans", "clear", "127.0.0.1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "lifted 1 ban(s)\n");
    let r = pymongo(&alice_uri("localhost", moat.port(), ""), &["insert_find"]);
    assert!(r.ok, "let back in: {}", r.out);
}

#[test]
fn an_exempt_subnet_is_never_banned() {
    let mongo = Mongo::start_auth();
    let moat = throttled(&mongo, 2, "exempt = [\"127.0.0.0/8\"]");
    for _ in 0..3 {
        assert!(!wrong_password(moat.port()).ok);
    }
    let r = pymongo(&alice_uri("localhost", moat.port(), ""), &["ping"]);
    assert!(r.ok, "exempt: {}", r.out);
    assert_eq!(moat.ctl_json(&["bans"])["bans"], serde_json::json!([]));
    assert_eq!(moat.lines().count("refusing new connections from"), 0);
}
