//! What moat's own code costs per connection, apart from the kernel and the crypto:
//! sniffing and the mode decision, framing, parsing and inspecting a real pymongo handshake,
//! and choosing a certificate by SNI among 1 to 1,000 domains.
//!
//!     cargo bench --bench hot_paths
//!
//! The handshake is pymongo 4.20's own (hello with client metadata and a speculative
//! SCRAM-SHA-256 saslStart, then saslContinue; tests/fixtures/wire), so the inspector walks
//! the same documents a real client sends.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moat::policy::{classify, decide, Mode};
use moat::tls::sni::{Domain, Origin, SniResolver};
use moat::wire::framer::Framer;
use moat::wire::handshake::Inspector;
use moat::wire::message;
use rustls::sign::CertifiedKey;

/// The conversation in order, each message with whether the client sent it.
const CONVERSATION: [(&[u8], bool); 6] = [
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/01-client.bin"),
        true,
    ),
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/02-server.bin"),
        false,
    ),
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/03-client.bin"),
        true,
    ),
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/04-server.bin"),
        false,
    ),
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/05-client.bin"),
        true,
    ),
    (
        include_bytes!("../tests/fixtures/wire/pymongo-4.20-scram-sha-256/06-server.bin"),
        false,
    ),
];

fn sniff(c: &mut Criterion) {
    let tls = [0x16, 0x03, 0x01];
    let plain = CONVERSATION[0].0;
    c.bench_function("sniff_and_decide", |b| {
        b.iter(|| {
            for first in [&tls[..], &plain[..3]] {
                if let Some(t) = classify(black_box(first)) {
                    black_box(decide(black_box(Mode::PreferSsl), t));
                }
            }
        })
    });
}

fn framing(c: &mut Criterion) {
    let hello = CONVERSATION[0].0;
    let mut g = c.benchmark_group("framer");
    g.throughput(Throughput::Bytes(hello.len() as u64));
    g.bench_function("whole_message", |b| {
        b.iter(|| {
            let mut f = Framer::default();
            let mut n = 0;
            f.feed(black_box(hello), 64 * 1024, |m| {
                n += m.len();
                true
            })
            .ok();
            black_box(n)
        })
    });
    // The worst ordinary case: a message that arrives in TCP-segment-sized pieces.
    g.bench_function("split_in_64_byte_reads", |b| {
        b.iter(|| {
            let mut f = Framer::default();
            let mut n = 0;
            for chunk in hello.chunks(64) {
                f.feed(black_box(chunk), 64 * 1024, |m| {
                    n += m.len();
                    true
                })
                .ok();
            }
            black_box(n)
        })
    });
    g.finish();
}

fn inspection(c: &mut Criterion) {
    c.bench_function("inspect_pymongo_handshake", |b| {
        b.iter(|| {
            let mut inspector = Inspector::new(None);
            let mut findings = Vec::new();
            for (bytes, from_client) in CONVERSATION {
                let Ok(msg) = message::parse(black_box(bytes)) else {
                    continue;
                };
                let next = if from_client {
                    inspector.client(&msg, &mut findings)
                } else {
                    inspector.server(&msg, &mut findings)
                };
                black_box(next);
            }
            black_box(findings.len())
        })
    });
}

fn certified_key() -> Arc<CertifiedKey> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bench.test".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(der)
        .expect("signing key");
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
}

/// `n` domains as a hosting provider would have them: each a deployment's wildcard plus
/// one exact node name.
fn resolver(n: usize, key: &Arc<CertifiedKey>) -> SniResolver {
    let domains = (0..n)
        .map(|i| Domain {
            name: format!("d{i}"),
            key: key.clone(),
            hostnames: vec![
                format!("*.d{i:05}.example.net"),
                format!("node1.a{i:05}.example.net"),
            ],
            not_after: None,
            serial: String::new(),
            not_before: None,
            issuer: String::new(),
            origin: Origin::Files,
        })
        .collect();
    SniResolver::new(domains, 0)
}

fn sni(c: &mut Criterion) {
    let key = certified_key();
    let mut g = c.benchmark_group("sni_select");
    for n in [1usize, 1_000] {
        let r = resolver(n, &key);
        let last = n - 1;
        let names = [
            format!("node3.d{last:05}.example.net"), // wildcard hit
            format!("node1.a{last:05}.example.net"), // exact hit
            "unknown.example.org".to_string(),       // default
        ];
        g.bench_with_input(BenchmarkId::from_parameter(n), &names, |b, names| {
            b.iter(|| {
                for name in names {
                    black_box(r.select(Some(black_box(name))));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sniff, framing, inspection, sni);
criterion_main!(benches);
