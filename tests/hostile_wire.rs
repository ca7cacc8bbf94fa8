//! Hostile MongoDB messages against a running moat: documents nested thousands deep in every
//! field the handshake inspector reads, from the client and from the server. moat must stay
//! up and keep serving a real driver, and say once that it did not log oversized metadata.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use bson::raw::{cstr, CStr};
use bson::{RawDocument, RawDocumentBuf};

use moat_test_support::*;

/// The depth of the reported crash: 8 bytes a level, 56 KB, under inspection's 64 KiB cap.
const LEVELS: usize = 7000;

/// `{a: {a: ... {}}}`, `levels` documents in all, written directly (bson's owned types would
/// recurse on it).
fn nested(levels: usize) -> Vec<u8> {
    let mut doc = Vec::with_capacity(8 * levels);
    for outer in 1..levels {
        let len = 5 + 8 * (levels - outer);
        doc.extend_from_slice(&(len as i32).to_le_bytes());
        doc.extend_from_slice(&[0x03, b'a', 0]);
    }
    doc.extend_from_slice(&[5, 0, 0, 0, 0]);
    doc.resize(doc.len() + levels - 1, 0);
    doc
}

/// An OP_MSG with the raw document `body`.
fn op_msg(id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
    let len = 16 + 5 + body.len();
    let mut m = Vec::with_capacity(len);
    for v in [len as i32, id, response_to, 2013] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&[0, 0, 0, 0, 0]);
    m.extend_from_slice(body);
    m
}

/// A legacy OP_QUERY to `admin.$cmd` with the raw document `query`.
fn op_query(id: i32, query: &[u8]) -> Vec<u8> {
    let ns = b"admin.$cmd\0";
    let len = 16 + 4 + ns.len() + 8 + query.len();
    let mut m = Vec::with_capacity(len);
    for v in [len as i32, id, 0, 2004, 0] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(ns);
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&(-1i32).to_le_bytes());
    m.extend_from_slice(query);
    m
}

/// A command document: `name: 1`, then each field set to `value`, then any `plain` fields.
fn command(name: &CStr, deep: &[(&CStr, &RawDocument)], plain: &bson::Document) -> Vec<u8> {
    let mut d = RawDocumentBuf::new();
    d.append(name, 1);
    for (k, v) in deep {
        d.append(*k, *v);
    }
    let plain = RawDocumentBuf::try_from(plain).unwrap();
    for e in plain.iter() {
        let (k, v) = e.unwrap();
        d.append(k, v);
    }
    d.into_bytes()
}

/// Reads one whole reply; `None` when the connection ends (or stalls) first.
fn reply(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h).ok()?;
    let len = i32::from_le_bytes(h[0..4].try_into().unwrap()) as usize;
    let mut rest = vec![0u8; len.checked_sub(16)?];
    s.read_exact(&mut rest).ok()?;
    Some([h.to_vec(), rest].concat())
}

/// Sends `messages` on one raw connection, each followed by the server's answer (or the end
/// of the connection: the server may refuse what it cannot decode).
fn send_all(addr: SocketAddr, messages: &[Vec<u8>]) {
    let mut s = tcp(addr);
    for m in messages {
        if s.write_all(m).is_err() || reply(&mut s).is_none() {
            return;
        }
    }
}

/// moat is still running and serving a real driver.
fn assert_serving(moat: &mut Moat, case: &str) {
    if let Some(st) = moat.proc.child.try_wait().unwrap() {
        panic!(
            "moat exited ({st}) after {case}:\n{}",
            moat.lines().all().join("\n")
        );
    }
    let r = pymongo(&uri("localhost", moat.port(), ""), &["insert_find"]);
    assert!(r.ok, "after {case}: {}", r.out);
}

fn preferssl_moat(upstream: &str) -> (Moat, Pki) {
    let pki = Pki::new();
    let moat = Moat::start(&config(upstream, "preferSSL", &pki, ""));
    (moat, pki)
}

#[test]
fn deeply_nested_metadata_does_not_crash_moat() {
    let mongo = Mongo::start();
    let (mut moat, _pki) = preferssl_moat(&mongo.addr());
    let deep = nested(LEVELS);
    assert_eq!(deep.len(), 55_997);
    let hello = command(
        cstr!("hello"),
        &[(cstr!("client"), RawDocument::from_bytes(&deep).unwrap())],
        &bson::doc! {"$db": "admin"},
    );
    send_all(moat.addr, &[op_msg(1, 0, &hello)]);
    let line = moat.lines().wait_for("client metadata too large", DEADLINE);
    assert!(
        line.contains("55997 bytes") && line.contains("127.0.0.1:"),
        "{line}"
    );
    assert_serving(&mut moat, "a 7,000-deep client document");
    assert_eq!(moat.lines().count("client metadata too large"), 1);
}

#[test]
fn deep_documents_in_every_client_field_do_not_crash_moat() {
    let mongo = Mongo::start();
    let (mut moat, _pki) = preferssl_moat(&mongo.addr());
    let bytes = nested(LEVELS);
    let deep = RawDocument::from_bytes(&bytes).unwrap();
    let shallow_deep = nested(60); // under 512 bytes, past the depth limit
    let shallow_deep = RawDocument::from_bytes(&shallow_deep).unwrap();
    let admin = bson::doc! {"$db": "admin"};
    let scram = bson::doc! {"mechanism": "SCRAM-SHA-256", "$db": "admin",
    "payload": bson::Binary { subtype: bson::spec::BinarySubtype::Generic,
        bytes: b"n,,n=alice,r=0123456789abcdef".to_vec() }};
    let spec_start = command(
        cstr!("saslStart"),
        &[(cstr!("payload"), deep)],
        &bson::doc! {"mechanism": "SCRAM-SHA-256", "db": "admin"},
    );
    let hello_spec = {
        let mut d = RawDocumentBuf::new();
        d.append(cstr!("hello"), 1);
        d.append(
            cstr!("speculativeAuthenticate"),
            RawDocument::from_bytes(&spec_start).unwrap(),
        );
        d.append(cstr!("$db"), "admin");
        d.into_bytes()
    };
    let hello = op_msg(1, 0, &command(cstr!("hello"), &[], &admin));
    let start = op_msg(2, 0, &command(cstr!("saslStart"), &[], &scram));
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "client metadata under 512 bytes, 60 levels deep",
            vec![op_msg(
                1,
                0,
                &command(cstr!("hello"), &[(cstr!("client"), shallow_deep)], &admin),
            )],
        ),
        (
            "client metadata in a legacy OP_QUERY isMaster",
            vec![op_query(
                1,
                &command(
                    cstr!("isMaster"),
                    &[(cstr!("client"), deep)],
                    &bson::doc! {},
                ),
            )],
        ),
        (
            "speculativeAuthenticate itself",
            vec![op_msg(
                1,
                0,
                &command(
                    cstr!("hello"),
                    &[(cstr!("speculativeAuthenticate"), deep)],
                    &admin,
                ),
            )],
        ),
        (
            "speculativeAuthenticate's payload",
            vec![op_msg(1, 0, &hello_spec)],
        ),
        (
            "saslStart's command document",
            vec![op_msg(
                1,
                0,
                &command(
                    cstr!("saslStart"),
                    &[(cstr!("mechanism"), deep)],
                    &bson::doc! {"$db": "admin"},
                ),
            )],
        ),
        (
            "saslStart's payload",
            vec![
                hello.clone(),
                op_msg(
                    2,
                    0,
                    &command(
                        cstr!("saslStart"),
                        &[(cstr!("payload"), deep)],
                        &bson::doc! {"mechanism": "SCRAM-SHA-256", "$db": "admin"},
                    ),
                ),
            ],
        ),
        (
            "saslContinue's conversationId and payload",
            vec![
                hello.clone(),
                start.clone(),
                op_msg(
                    3,
                    0,
                    &command(
                        cstr!("saslContinue"),
                        &[(cstr!("conversationId"), deep)],
                        &admin,
                    ),
                ),
            ],
        ),
        (
            "authenticate's user and mechanism",
            vec![op_msg(
                1,
                0,
                &command(
                    cstr!("authenticate"),
                    &[(cstr!("user"), deep)],
                    &bson::doc! {"mechanism": "MONGODB-X509", "$db": "$external"},
                ),
            )],
        ),
        (
            "$db",
            vec![op_msg(
                1,
                0,
                &command(cstr!("hello"), &[(cstr!("$db"), deep)], &bson::doc! {}),
            )],
        ),
        ("the whole command", vec![op_msg(1, 0, &bytes)]),
    ];
    for (case, messages) in &cases {
        send_all(moat.addr, messages);
        assert_serving(&mut moat, case);
    }
    // Only the metadata cases are refused as metadata.
    moat.lines()
        .wait_for_nth("client metadata too large", 2, DEADLINE);
    assert_eq!(moat.lines().count("client metadata too large"), 2);
}

/// A stand-in upstream between moat and a real server: a connection whose first message
/// carries `comment: "deep-reply:<field>"` is answered, message after message, with
/// `{ok: 1, <field>: <7,000 levels>}` (or, for `whole`, the nested document itself; for
/// `oversized`, a 100 KB reply); every other connection is relayed to `real`.
fn deep_upstream(real: String) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let real = real.clone();
            std::thread::spawn(move || serve_one(s, &real));
        }
    });
    addr
}

fn serve_one(mut client: TcpStream, real: &str) {
    let Some(first) = reply(&mut client) else {
        return;
    };
    let field = first
        .get(21..)
        .and_then(|b| RawDocument::from_bytes(b).ok())
        .and_then(|d| d.get_str("comment").ok())
        .and_then(|c| c.strip_prefix("deep-reply:"))
        .map(str::to_string);
    let Some(field) = field else {
        let Ok(mut server) = TcpStream::connect(real) else {
            return;
        };
        if server.write_all(&first).is_err() {
            return;
        }
        let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(std::net::Shutdown::Write);
        });
        let _ = std::io::copy(&mut client, &mut server);
        let _ = server.shutdown(std::net::Shutdown::Write);
        return;
    };
    let deep = nested(LEVELS);
    let deep = RawDocument::from_bytes(&deep).unwrap();
    let body = match field.as_str() {
        "whole" => deep.as_bytes().to_vec(),
        "oversized" => command(cstr!("ok"), &[], &bson::doc! {"pad": "x".repeat(100_000)}),
        "ok" => command(cstr!("done"), &[(cstr!("ok"), deep)], &bson::doc! {}),
        f => {
            let mut d = RawDocumentBuf::new();
            d.append(cstr!("ok"), 1.0);
            d.append(<&CStr>::try_from(f).unwrap(), deep);
            d.into_bytes()
        }
    };
    let mut request = first;
    let mut id = 1000;
    loop {
        let to = i32::from_le_bytes(request[4..8].try_into().unwrap());
        id += 1;
        if client.write_all(&op_msg(id, to, &body)).is_err() {
            return;
        }
        let Some(next) = reply(&mut client) else {
            return;
        };
        request = next;
    }
}

#[test]
fn deep_and_oversized_replies_do_not_crash_moat() {
    let mongo = Mongo::start();
    let upstream = deep_upstream(mongo.addr());
    let (mut moat, _pki) = preferssl_moat(&upstream.to_string());
    let payload = bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes: b"n,,n=alice,r=0123456789abcdef".to_vec(),
    };
    for field in [
        "speculativeAuthenticate",
        "conversationId",
        "done",
        "user",
        "codeName",
        "errmsg",
        "ok",
        "whole",
        "oversized",
    ] {
        let comment = format!("deep-reply:{field}");
        let spec = bson::doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
        "payload": payload.clone(), "db": "admin"};
        let hello = bson::doc! {"hello": 1, "comment": &comment,
        "speculativeAuthenticate": spec, "$db": "admin"};
        let start = bson::doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
        "payload": payload.clone(), "$db": "admin"};
        let next = bson::doc! {"saslContinue": 1, "conversationId": 1,
        "payload": payload.clone(), "$db": "admin"};
        let x509 = bson::doc! {"authenticate": 1, "mechanism": "MONGODB-X509",
        "$db": "$external"};
        let raw = |id: i32, d: &bson::Document| {
            let mut b = Vec::new();
            d.to_writer(&mut b).unwrap();
            op_msg(id, 0, &b)
        };
        send_all(
            moat.addr,
            &[raw(1, &hello), raw(2, &start), raw(3, &next), raw(4, &x509)],
        );
        assert_serving(&mut moat, &format!("a reply with a deep {field}"));
    }
}
