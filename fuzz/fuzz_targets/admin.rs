//! Fuzzes the admin protocol both ways: a request line as the server parses it, and a reply
//! line as `moat ctl` decodes it for every kind of request. Bad lines are errors, never
//! panics; a request that parses serialises back to one that parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat::admin::protocol::Request;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = serde_json::from_str::<Request>(line.trim()) {
        let again = serde_json::to_string(&r).expect("a request serialises");
        let back: Request = serde_json::from_str(&again).expect("and parses back");
        assert_eq!(back, r);
    }
    for request in [
        r#"{"cmd":"status"}"#,
        r#"{"cmd":"mode.set","mode":"requireSSL"}"#,
        r#"{"cmd":"connections"}"#,
        r#"{"cmd":"reload"}"#,
        r#"{"cmd":"rules.list"}"#,
        r#"{"cmd":"rules.copy","from":"x"}"#,
        r#"{"cmd":"bans.list"}"#,
    ] {
        let request: Request = serde_json::from_str(request).expect("a known request");
        let _ = request.decode(line);
    }
});
