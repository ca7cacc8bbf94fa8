//! One allow rule: a CIDR or an EC2 security group of an account, with a description and
//! an id derived from what it allows. Parsing says exactly what is wrong.

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

/// Why a rule (or a CIDR) is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error(
        "a security_group rule needs the account (12-digit AWS account id) that owns the group"
    )]
    GroupWithoutAccount,
    #[error("`account` goes with `security_group`")]
    AccountWithoutGroup,
    #[error("a rule is either a `cidr` or a `security_group` + `account`, not both")]
    Both,
    #[error("a rule needs `cidr`, or `security_group` and `account`")]
    Neither,
    #[error("every rule needs a `description` saying whose access it is")]
    NoDescription,
    #[error("`{0}` is not a CIDR: write it like \"203.0.113.0/24\" or \"2001:db8::/32\"")]
    NotCidr(String),
    #[error("`{given}` has host bits set: did you mean {network}?")]
    HostBits { given: String, network: IpNet },
    #[error("`{0}` is not a security group id (sg- and 8 or 17 hex digits)")]
    NotGroup(String),
    #[error("`{0}` is not an AWS account id (12 digits)")]
    NotAccount(String),
}

/// Where a rule lets connections come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Cidr(IpNet),
    SecurityGroup { group: String, account: String },
}

impl Source {
    /// `cidr` or `security_group`: the closed label set of `moat_firewall_rules`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Cidr(_) => "cidr",
            Source::SecurityGroup { .. } => "security_group",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Cidr(n) => write!(f, "{n}"),
            Source::SecurityGroup { group, account } => write!(f, "{group} (account {account})"),
        }
    }
}

/// One allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Derived from the source, so the same rule has the same id on every node and
    /// across restarts: `r` + 12 hex digits.
    pub id: String,
    pub source: Source,
    pub description: String,
}

impl Rule {
    pub fn new(source: Source, description: impl Into<String>) -> Rule {
        Rule {
            id: rule_id(&source),
            source,
            description: description.into(),
        }
    }

    /// Parses a rule from its config form: a CIDR, or a security group with its account.
    pub fn parse(
        cidr: Option<&str>,
        security_group: Option<&str>,
        account: Option<&str>,
        description: &str,
    ) -> Result<Rule, RuleError> {
        let source = match (cidr, security_group, account) {
            (Some(c), None, None) => Source::Cidr(parse_cidr(c)?),
            (None, Some(g), Some(a)) => {
                check_group(g)?;
                check_account(a)?;
                Source::SecurityGroup {
                    group: g.to_string(),
                    account: a.to_string(),
                }
            }
            (None, Some(_), None) => return Err(RuleError::GroupWithoutAccount),
            (None, None, Some(_)) => return Err(RuleError::AccountWithoutGroup),
            (Some(_), _, _) => return Err(RuleError::Both),
            (None, None, None) => return Err(RuleError::Neither),
        };
        if description.trim().is_empty() {
            return Err(RuleError::NoDescription);
        }
        Ok(Rule::new(source, description))
    }
}

/// A CIDR (or a bare address, as a host prefix) with no host bits set.
pub fn parse_cidr(s: &str) -> Result<IpNet, RuleError> {
    let s = s.trim();
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(RuleError::NotCidr(s.to_string())),
        },
    };
    if net.trunc() != net {
        return Err(RuleError::HostBits {
            given: s.to_string(),
            network: net.trunc(),
        });
    }
    Ok(normalize_net(net))
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) is the IPv4 network it maps, so
/// it matches IPv4 clients the same way whichever form a rule is written in.
fn normalize_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

fn check_group(g: &str) -> Result<(), RuleError> {
    let hex = g.strip_prefix("sg-").unwrap_or("");
    let ok = (hex.len() == 8 || hex.len() == 17) && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if ok {
        Ok(())
    } else {
        Err(RuleError::NotGroup(g.to_string()))
    }
}

fn check_account(a: &str) -> Result<(), RuleError> {
    if a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(RuleError::NotAccount(a.to_string()))
    }
}

/// A stable id from the rule's source (FNV-1a, 48 bits).
fn rule_id(source: &Source) -> String {
    let text = match source {
        Source::Cidr(n) => format!("cidr:{n}"),
        Source::SecurityGroup { group, account } => format!("sg:{account}:{group}"),
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("r{:012x}", h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Rule {
        Rule::parse(Some(s), None, None, "test").unwrap()
    }

    #[test]
    fn rules_are_checked_before_they_are_accepted() {
        assert!(parse_cidr("10.0.0.5/24")
            .unwrap_err()
            .to_string()
            .contains("did you mean 10.0.0.0/24"));
        assert!(parse_cidr("10.0.0.300/32").is_err());
        assert_eq!(parse_cidr("10.0.0.5").unwrap().to_string(), "10.0.0.5/32");
        assert!(Rule::parse(None, Some("sg-xyz"), Some("123456789012"), "d").is_err());
        assert!(Rule::parse(None, Some("sg-0a1b2c3d"), Some("1234"), "d").is_err());
        assert!(Rule::parse(None, Some("sg-0a1b2c3d"), None, "d").is_err());
        assert!(Rule::parse(Some("10.0.0.0/8"), None, None, " ").is_err());
        assert!(Rule::parse(Some("10.0.0.0/8"), Some("sg-0a1b2c3d"), None, "d").is_err());
    }

    #[test]
    fn rule_ids_are_stable_and_distinct() {
        assert_eq!(cidr("10.0.0.0/8").id, cidr("10.0.0.0/8").id);
        assert_ne!(cidr("10.0.0.0/8").id, cidr("10.0.0.0/9").id);
        assert_eq!(cidr("10.0.0.0/8").id.len(), 13);
    }
}
