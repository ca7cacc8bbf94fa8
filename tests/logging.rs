//! Handshake inspection end to end: real drivers (pymongo 4.20, Debian's pymongo 3.11,
//! mongosh 2.12) through moat into secantusdb with auth; mongod-style lines in text and
//! JSON; what `moat ctl` learns; transparency for bytes it cannot parse.

mod common;

use std::io::{Read, Write};
use std::path::Path;

use common::*;

fn moat_json(mongo: &Mongo, pki: &Pki) -> Moat {
    Moat::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        pki,
        "",
        &format!("{ADMIN}\n[log]\nformat = \"json\"\n"),
    ))
}

/// pymongo over TLS as bob/hunter2, a user that does not exist.
fn wrong_password(moat: &Moat, pki: &Pki) -> PyResult {
    let opts = format!("&authSource=admin{}", tls_opts(pki));
    pymongo(&uri("bob:hunter2@localhost", moat.port(), &opts), &["ping"])
}

#[test]
fn pymongo_session_is_logged_like_mongod_and_never_shows_the_password() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let ok = pymongo(
        &alice_uri(
            "localhost",
            moat.port(),
            &format!("{}&appName=billing", tls_opts(&pki)),
        ),
        &["insert_find"],
    );
    assert!(ok.ok, "{}", ok.out);
    let meta = moat
        .lines()
        .wait_for("received client metadata from 127.0.0.1:", DEADLINE);
    assert!(meta.contains(" I NETWORK  [conn"), "{meta}");
    assert!(
        meta.contains(
            ": { driver: { name: \"PyMongo|c\", version: \"4.20.0|\" }, os: { type: \"Linux\""
        ),
        "{meta}"
    );
    assert!(
        meta.contains("application: { name: \"billing\" }"),
        "{meta}"
    );
    let success = moat.lines().wait_for(
        "Successfully authenticated as principal alice on admin from client 127.0.0.1:",
        DEADLINE,
    );
    assert!(success.contains(" I ACCESS   [conn"), "{success}");

    let bad = wrong_password(&moat, &pki);
    assert!(!bad.ok);
    let failed = moat
        .lines()
        .wait_for("authentication failed for bob", DEADLINE);
    assert!(
        failed.contains(
            "SASL SCRAM-SHA-256 authentication failed for bob on admin from client 127.0.0.1:"
        ) && failed.ends_with(" ; AuthenticationFailed: authentication failed"),
        "{failed}"
    );
    for l in moat.lines().all() {
        assert!(
            !l.contains("secret") && !l.contains("hunter2"),
            "a password leaked: {l}"
        );
    }
}

#[test]
fn json_lines_carry_mongods_ids_for_the_same_events() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = moat_json(&mongo, &pki);
    let ok = pymongo(
        &alice_uri("localhost", moat.port(), &tls_opts(&pki)),
        &["ping"],
    );
    assert!(ok.ok, "{}", ok.out);
    let bad = wrong_password(&moat, &pki);
    assert!(!bad.ok);
    moat.lines().wait_for("\"id\":20249", DEADLINE);
    moat.lines().wait_for("\"id\":22944", DEADLINE);
    let events: Vec<serde_json::Value> = moat
        .lines()
        .all()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let by_id = |id: u64| {
        events
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("no id {id}"))
    };
    assert_eq!(by_id(22943)["msg"], "Connection accepted");
    let meta = by_id(51800);
    assert_eq!(meta["msg"], "client metadata");
    assert_eq!(
        meta["attr"]["doc"]["driver"]["name"], "PyMongo|c",
        "doc is an object: {meta}"
    );
    let ok = by_id(20250);
    assert_eq!(ok["attr"]["principalName"], "alice");
    assert_eq!(ok["attr"]["authenticationDatabase"], "admin");
    assert_eq!(ok["attr"]["mechanism"], "SCRAM-SHA-256");
    let failed = by_id(20249);
    assert_eq!(failed["attr"]["principalName"], "bob");
    assert_eq!(
        failed["attr"]["error"],
        "AuthenticationFailed: authentication failed"
    );
    assert_eq!(by_id(22944)["msg"], "Connection ended");
    for e in &events {
        let t = e["t"]["$date"].as_str().unwrap();
        assert!(t.ends_with("+00:00") && t.len() == 29, "{t}");
        assert!(!e.to_string().contains("hunter2"));
    }
}

#[test]
fn legacy_op_query_driver_and_mongosh_are_inspected_too() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config(&mongo.addr(), "preferSSL", &pki, ""));
    let old = pymongo_with(
        Path::new("/usr/bin/python3"),
        &alice_uri("localhost", moat.port(), "&appName=oldapp"),
        &["ping"],
    );
    assert!(old.ok, "{}", old.out);
    moat.lines().wait_for(
        "driver: { name: \"PyMongo\", version: \"3.11.0\" }",
        DEADLINE,
    );
    moat.lines().wait_for(
        "Successfully authenticated as principal alice on admin",
        DEADLINE,
    );

    let sh = mongosh_ping(&format!(
        "mongodb://alice:secret@localhost:{}/admin?directConnection=true{}",
        moat.port(),
        tls_opts(&pki)
    ));
    assert!(sh.ok && sh.out.contains("\"ok\":1"), "{}", sh.out);
    moat.lines()
        .wait_for("driver: { name: \"nodejs|mongosh\"", DEADLINE);
    moat.lines().wait_for_nth(
        "Successfully authenticated as principal alice on admin",
        2,
        DEADLINE,
    );
}

#[test]
fn ctl_shows_driver_app_and_user_and_the_require_ssl_refusal_names_them() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(&mongo.addr(), "preferSSL", &pki, "", ADMIN));
    let steady = Steady::start(&alice_uri("localhost", moat.port(), "&appName=reports"));
    let list = moat.ctl_json(&["connections", "--plaintext"]);
    let conns = list["connections"].as_array().unwrap();
    let authed = conns
        .iter()
        .find(|c| c["user"] == "alice@admin")
        .unwrap_or_else(|| panic!("no authenticated connection in {list}"));
    assert_eq!(authed["driver"], "PyMongo|c 4.20.0|");
    assert_eq!(authed["app"], "reports");
    let (code, _, err) = moat.ctl(&["mode", "set", "requireSSL"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reports") && err.contains("alice@admin") && err.contains("PyMongo|c 4.20.0|"),
        "{err}"
    );
    let (_, errors, out) = steady.finish();
    assert_eq!(errors, 0, "{out}");
}

#[test]
fn bytes_inspection_cannot_parse_are_forwarded_untouched() {
    let up = Recorder::start();
    let pki = Pki::new();
    let moat = Moat::start(&config(&up.addr.to_string(), "preferSSL", &pki, ""));
    // A valid OP_MSG header whose body is garbage.
    let mut msg = Vec::new();
    for v in [48i32, 1, 0, 2013] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    let mut s = tcp(moat.addr);
    s.write_all(&msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg, "the upstream got exactly the client's bytes");
    // Not a MongoDB message at all, after the first bytes.
    s.write_all(b"\xff\xff\xff\xffnot mongodb at all").unwrap();
    let mut back = [0u8; 22];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"\xff\xff\xff\xffnot mongodb at all");
    drop(s);
    // moat keeps serving.
    let mut s = tcp(moat.addr);
    assert!(echo_ok(&mut s));
}

#[test]
fn inspection_can_be_turned_off() {
    let mongo = Mongo::start_auth();
    let pki = Pki::new();
    let moat = Moat::start(&config_with(
        &mongo.addr(),
        "preferSSL",
        &pki,
        "",
        "[log]\ninspect = false\n",
    ));
    let ok = pymongo(&alice_uri("localhost", moat.port(), ""), &["ping"]);
    assert!(ok.ok, "{}", ok.out);
    moat.lines().wait_for("end connection", DEADLINE);
    assert_eq!(moat.lines().count("client metadata"), 0);
    assert_eq!(moat.lines().count("authenticated"), 0);
}
