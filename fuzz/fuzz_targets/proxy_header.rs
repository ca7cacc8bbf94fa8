//! Fuzzes PROXY protocol parsing as moat reads a header: byte by byte growing prefixes,
//! in every `proxy_protocol` mode. A header, once found, must fit the bytes and stay the
//! same as more arrive; the parser must never panic or ask for more than its cap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat::proxy_protocol::{parse, Parsed, ProxyProtocol};

fuzz_target!(|data: &[u8]| {
    for mode in [
        ProxyProtocol::V1,
        ProxyProtocol::V2,
        ProxyProtocol::Any,
    ] {
        let mut found: Option<Parsed> = None;
        for end in 0..=data.len() {
            let p = parse(&data[..end], mode);
            match (&found, &p) {
                (Some(first), _) => {
                    assert_eq!(&p, first, "the header changed at {end} bytes");
                }
                (None, Parsed::Header { len, .. }) => {
                    assert!(*len <= end, "a header longer than the bytes");
                    found = Some(p);
                }
                (None, Parsed::Invalid(_)) => break,
                (None, Parsed::Incomplete) => {
                    assert!(end < 4096, "incomplete past the cap");
                }
            }
        }
    }
});
