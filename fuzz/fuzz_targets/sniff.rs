//! Fuzzes the first-bytes decision: classify every prefix of the input as TLS, plaintext
//! or undecided, and the mode table's answer for it in every mode. A decision, once made,
//! must not change as more bytes arrive, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat::policy::{classify, decide, Mode};

fuzz_target!(|data: &[u8]| {
    let mut decided = None;
    for end in 0..=data.len().min(64) {
        let now = classify(&data[..end]);
        if let Some(first) = decided {
            assert_eq!(now, Some(first), "a decision changed at {end} bytes");
        }
        if let Some(t) = now {
            decided = Some(t);
            for mode in Mode::ALL {
                let _ = decide(mode, t);
            }
        }
        let _ = moat::proxy_protocol::looks_like_header(&data[..end]);
    }
});
