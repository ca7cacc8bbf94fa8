//! Firewall lookup cost at 1, 1k and 100k CIDR rules (and 1k security-group addresses).
//!
//!     cargo bench --bench firewall
//!
//! Rules are random IPv4 prefixes (/16../32) and IPv6 prefixes (/32../64) from a fixed
//! seed; lookups alternate between addresses inside a rule and random ones.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use moat::firewall::inventory::Inventory;
use moat::firewall::{DefaultPolicy, Firewall, Rule, Source};

/// xorshift64*: a fixed, dependency-free sequence.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn rules(n: usize, rng: &mut Rng) -> (Vec<Rule>, Vec<IpAddr>) {
    let mut rules = Vec::with_capacity(n);
    let mut inside = Vec::with_capacity(n);
    while rules.len() < n {
        let r = rng.next();
        let (net, ip): (ipnet::IpNet, IpAddr) = if r % 4 == 0 {
            let len = 32 + (r >> 8) as u8 % 33;
            let a = Ipv6Addr::from(((rng.next() as u128) << 64) | rng.next() as u128);
            let n = ipnet::Ipv6Net::new(a, len).unwrap().trunc();
            (n.into(), IpAddr::V6(n.network()))
        } else {
            let len = 16 + (r >> 8) as u8 % 17;
            let a = Ipv4Addr::from(rng.next() as u32);
            let n = ipnet::Ipv4Net::new(a, len).unwrap().trunc();
            (n.into(), IpAddr::V4(n.network()))
        };
        rules.push(Rule::new(Source::Cidr(net), "bench"));
        inside.push(ip);
    }
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    rules.dedup_by(|a, b| a.source == b.source);
    (rules, inside)
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("firewall_check");
    for n in [1usize, 1_000, 100_000] {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let (rules, inside) = rules(n, &mut rng);
        let fw = Firewall::build(DefaultPolicy::Deny, rules, &Inventory::default());
        let probes: Vec<IpAddr> = (0..4096)
            .map(|i| {
                if i % 2 == 0 {
                    inside[i % inside.len()]
                } else {
                    IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
                }
            })
            .collect();
        let mut i = 0;
        g.bench_with_input(BenchmarkId::from_parameter(n), &fw, |b, fw| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(fw.check(black_box(probes[i])))
            })
        });
    }
    g.finish();
}

fn build(c: &mut Criterion) {
    let mut rng = Rng(7);
    let (rules, _) = rules(100_000, &mut rng);
    c.bench_function("firewall_build_100k", |b| {
        b.iter(|| Firewall::build(DefaultPolicy::Deny, rules.clone(), &Inventory::default()))
    });
}

criterion_group!(benches, lookups, build);
criterion_main!(benches);
