//! The allowlist: CIDR rules and EC2 security-group rules, checked on the client's address
//! before moat reads a byte from it. Pure: no I/O.
//!
//! Rules compile into two longest-prefix-match tries (IPv4, IPv6); a security-group rule
//! contributes one host prefix per address the inventory lists for it. A lookup is a trie
//! walk of at most 32 or 128 levels, whatever the number of rules.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::{PrefixMap, PrefixSet};

pub mod inventory;
pub mod plane;
pub mod rule;

use crate::metrics::Scrape;
use inventory::Inventory;
pub use rule::{parse_cidr, Rule, RuleError, Source};

/// What a source that no rule matches gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    #[default]
    Deny,
    Allow,
}

impl DefaultPolicy {
    /// `deny` / `allow`, as the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::Deny => "deny",
            DefaultPolicy::Allow => "allow",
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack listener reports for IPv4
/// clients) is the IPv4 address: matched against IPv4 rules, logged as IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A rule that adds nothing: another rule already allows its whole source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap {
    /// Index of the redundant rule.
    pub rule: usize,
    /// Index of a rule that covers it (the same source, or a wider network).
    pub covered_by: usize,
}

/// The rules already covered by another one: a duplicate source, or a network inside a
/// wider one (a /24 in a /16). Harmless, and normal in a large exported inventory, so
/// they are reported, not refused. O(n log n): networks are visited widest first and each
/// is looked up before it is added.
pub fn overlaps(rules: &[Rule]) -> Vec<Overlap> {
    let mut found = Vec::new();
    let mut cidrs: Vec<(usize, IpNet)> = Vec::new();
    let mut groups: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        match &r.source {
            Source::Cidr(n) => cidrs.push((i, *n)),
            Source::SecurityGroup { group, account } => {
                if let Some(&j) = groups.get(&(account.as_str(), group.as_str())) {
                    found.push(Overlap {
                        rule: i,
                        covered_by: j,
                    });
                } else {
                    groups.insert((account.as_str(), group.as_str()), i);
                }
            }
        }
    }
    // Stable: of two equal networks, the one written first is the cover.
    cidrs.sort_by_key(|(_, n)| n.prefix_len());
    let mut v4: PrefixMap<Ipv4Net, usize> = PrefixMap::new();
    let mut v6: PrefixMap<Ipv6Net, usize> = PrefixMap::new();
    for (i, net) in cidrs {
        let cover = match net {
            IpNet::V4(n) => match v4.get_lpm(&n) {
                Some((_, j)) => Some(*j),
                None => {
                    v4.insert(n, i);
                    None
                }
            },
            IpNet::V6(n) => match v6.get_lpm(&n) {
                Some((_, j)) => Some(*j),
                None => {
                    v6.insert(n, i);
                    None
                }
            },
        };
        if let Some(j) = cover {
            found.push(Overlap {
                rule: i,
                covered_by: j,
            });
        }
    }
    found.sort_by_key(|o| o.rule);
    found
}

/// A socket address with an IPv4-mapped IPv6 address written as IPv4.
pub fn normalize_addr(a: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(normalize(a.ip()), a.port())
}

/// The firewall's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A compiled rule set; rebuilt whole when rules or the inventory change.
pub struct Firewall {
    default: DefaultPolicy,
    rules: Vec<Rule>,
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
    /// Addresses contributed by security-group rules.
    sg_addresses: usize,
}

impl Firewall {
    /// Compiles `rules`, resolving security groups through `inventory`. Networks already
    /// covered by a wider one are merged away: they would only add nodes to the tries.
    pub fn build(default: DefaultPolicy, rules: Vec<Rule>, inventory: &Inventory) -> Firewall {
        let mut nets: Vec<IpNet> = Vec::with_capacity(rules.len());
        let mut sg_addresses = 0;
        for r in &rules {
            match &r.source {
                Source::Cidr(n) => nets.push(*n),
                Source::SecurityGroup { group, account } => {
                    for ip in inventory.addresses(account, group) {
                        nets.push(IpNet::from(normalize(*ip)));
                        sg_addresses += 1;
                    }
                }
            }
        }
        // Widest first, so a covered network meets its cover already in the trie.
        nets.sort_unstable_by_key(|n| n.prefix_len());
        let mut v4 = PrefixSet::new();
        let mut v6 = PrefixSet::new();
        for net in nets {
            match net {
                IpNet::V4(n) if v4.get_lpm(&n).is_none() => {
                    v4.insert(n);
                }
                IpNet::V6(n) if v6.get_lpm(&n).is_none() => {
                    v6.insert(n);
                }
                _ => {}
            }
        }
        Firewall {
            default,
            rules,
            v4,
            v6,
            sg_addresses,
        }
    }

    /// Whether `ip` may connect.
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let hit = match normalize(ip) {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).is_some(),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).is_some(),
        };
        match (hit, self.default) {
            (true, _) | (false, DefaultPolicy::Allow) => Verdict::Allow,
            (false, DefaultPolicy::Deny) => Verdict::Deny,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_policy(&self) -> DefaultPolicy {
        self.default
    }

    /// `moat_firewall_rules`, for a scrape.
    pub fn export(&self, s: &mut Scrape) {
        let (cidr, groups, _) = self.counts();
        s.gauge(
            "moat_firewall_rules",
            "Firewall rules, by kind.",
            Some("kind"),
            [("cidr", cidr as i64), ("security_group", groups as i64)],
        );
    }

    /// (CIDR rules, security-group rules, addresses the groups resolved to).
    pub fn counts(&self) -> (usize, usize, usize) {
        let cidr = self
            .rules
            .iter()
            .filter(|r| matches!(r.source, Source::Cidr(_)))
            .count();
        (cidr, self.rules.len() - cidr, self.sg_addresses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Rule {
        Rule::parse(Some(s), None, None, "test").unwrap()
    }

    fn fw(rules: Vec<Rule>) -> Firewall {
        Firewall::build(DefaultPolicy::Deny, rules, &Inventory::default())
    }

    #[test]
    fn cidr_rule_allows_inside_and_denies_outside() {
        let f = fw(vec![cidr("203.0.113.0/24")]);
        assert_eq!(f.check(ip("203.0.113.77")), Verdict::Allow);
        assert_eq!(f.check(ip("203.0.114.1")), Verdict::Deny);
    }

    #[test]
    fn ipv6_rules_match_ipv6_only() {
        let f = fw(vec![cidr("2001:db8::/32")]);
        assert_eq!(f.check(ip("2001:db8:1::5")), Verdict::Allow);
        assert_eq!(f.check(ip("2001:db9::5")), Verdict::Deny);
        assert_eq!(f.check(ip("127.0.0.1")), Verdict::Deny);
    }

    #[test]
    fn ipv4_mapped_ipv6_is_matched_as_ipv4() {
        let f = fw(vec![cidr("127.0.0.2/32")]);
        assert_eq!(f.check(ip("::ffff:127.0.0.2")), Verdict::Allow);
        assert_eq!(f.check(ip("::ffff:127.0.0.3")), Verdict::Deny);
        // A rule written in the mapped form is the IPv4 rule it maps, for both forms of client.
        let f = fw(vec![cidr("::ffff:10.0.0.0/104")]);
        assert_eq!(f.check(ip("10.1.2.3")), Verdict::Allow);
        assert_eq!(f.check(ip("::ffff:10.1.2.3")), Verdict::Allow);
        assert_eq!(f.check(ip("11.1.2.3")), Verdict::Deny);
        assert_eq!(
            cidr("::ffff:10.0.0.0/104").source,
            cidr("10.0.0.0/8").source
        );
    }

    #[test]
    fn default_allow_admits_unmatched_sources() {
        let f = Firewall::build(DefaultPolicy::Allow, vec![], &Inventory::default());
        assert_eq!(f.check(ip("198.51.100.7")), Verdict::Allow);
        assert_eq!(fw(vec![]).check(ip("198.51.100.7")), Verdict::Deny);
    }

    #[test]
    fn security_group_rule_allows_the_groups_addresses_of_that_account_only() {
        let inv = Inventory::parse(
            r#"{"NetworkInterfaces": [
                {"OwnerId": "123456789012", "Groups": [{"GroupId": "sg-0a1b2c3d"}],
                 "PrivateIpAddress": "10.0.1.5",
                 "PrivateIpAddresses": [{"PrivateIpAddress": "10.0.1.5", "Association": {"PublicIp": "54.1.2.3"}},
                                        {"PrivateIpAddress": "10.0.1.6"}],
                 "Ipv6Addresses": [{"Ipv6Address": "2600:1f18::5"}]},
                {"OwnerId": "999999999999", "Groups": [{"GroupId": "sg-0a1b2c3d"}],
                 "PrivateIpAddress": "10.0.9.9"}
            ]}"#,
        )
        .unwrap();
        let rule = Rule::parse(None, Some("sg-0a1b2c3d"), Some("123456789012"), "apps").unwrap();
        let f = Firewall::build(DefaultPolicy::Deny, vec![rule], &inv);
        for a in ["10.0.1.5", "10.0.1.6", "54.1.2.3", "2600:1f18::5"] {
            assert_eq!(f.check(ip(a)), Verdict::Allow, "{a}");
        }
        // Same group id, other account: not allowed.
        assert_eq!(f.check(ip("10.0.9.9")), Verdict::Deny);
        assert_eq!(f.counts(), (0, 1, 4));
    }

    #[test]
    fn duplicates_and_networks_inside_wider_ones_are_overlaps_not_errors() {
        let sg = |g: &str| Rule::parse(None, Some(g), Some("123456789012"), "apps").unwrap();
        let rules = vec![
            cidr("10.1.2.0/24"),  // 0: inside rule 1, written before it
            cidr("10.0.0.0/8"),   // 1
            cidr("192.0.2.0/24"), // 2
            cidr("192.0.2.0/24"), // 3: duplicate of 2
            cidr("2001:db8::/32"),
            cidr("2001:db8:1::/48"), // 5: inside 4
            cidr("10.0.0.0/8"),      // 6: duplicate of 1
            sg("sg-0a1b2c3d"),
            sg("sg-0a1b2c3d"), // 8: duplicate of 7
            cidr("172.16.0.0/12"),
        ];
        let o = |rule, covered_by| Overlap { rule, covered_by };
        assert_eq!(
            overlaps(&rules),
            vec![o(0, 1), o(3, 2), o(5, 4), o(6, 1), o(8, 7)]
        );
        // Merged when compiling: every source still allowed, nothing else.
        let f = fw(rules);
        for a in [
            "10.1.2.3",
            "10.200.0.1",
            "192.0.2.9",
            "2001:db8:1::1",
            "172.16.5.5",
        ] {
            assert_eq!(f.check(ip(a)), Verdict::Allow, "{a}");
        }
        assert_eq!(f.check(ip("11.0.0.1")), Verdict::Deny);
        assert_eq!(f.v4.iter().count(), 3, "10/8, 192.0.2/24, 172.16/12");
    }

    #[test]
    fn overlaps_among_100k_rules_are_all_found() {
        // 100k rules as an exported inventory has them: 65,536 inside a later /8.
        let mut rules: Vec<Rule> = (0..100_000u32)
            .map(|i| {
                cidr(&format!(
                    "{}.{}.{}.0/24",
                    10 + (i >> 16),
                    (i >> 8) & 255,
                    i & 255
                ))
            })
            .collect();
        rules.push(cidr("10.0.0.0/8"));
        let found = overlaps(&rules);
        assert_eq!(found.len(), 65_536);
    }
}
