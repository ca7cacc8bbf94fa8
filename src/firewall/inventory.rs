//! The EC2 network-interface inventory behind security-group rules: the JSON that
//! `aws ec2 describe-network-interfaces` prints, read from a file that a cron job or
//! systemd timer refreshes. moat never calls AWS itself.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

/// A file that is not `describe-network-interfaces` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not `aws ec2 describe-network-interfaces` output: {0}")]
pub struct NotInventory(pub String);

/// Addresses by (account, security group).
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    by_group: HashMap<(String, String), Vec<IpAddr>>,
    /// Interfaces in the file.
    pub interfaces: usize,
}

#[derive(Deserialize)]
struct Doc {
    #[serde(rename = "NetworkInterfaces")]
    interfaces: Vec<Interface>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Interface {
    owner_id: String,
    #[serde(default)]
    groups: Vec<Group>,
    private_ip_address: Option<IpAddr>,
    #[serde(default)]
    private_ip_addresses: Vec<PrivateIp>,
    #[serde(default)]
    ipv6_addresses: Vec<Ipv6>,
    association: Option<Association>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Group {
    group_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PrivateIp {
    private_ip_address: Option<IpAddr>,
    association: Option<Association>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Ipv6 {
    ipv6_address: IpAddr,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Association {
    public_ip: Option<IpAddr>,
}

impl Inventory {
    /// Parses `describe-network-interfaces` output.
    pub fn parse(json: &str) -> Result<Inventory, NotInventory> {
        let doc: Doc = serde_json::from_str(json).map_err(|e| NotInventory(e.to_string()))?;
        let mut by_group: HashMap<(String, String), Vec<IpAddr>> = HashMap::new();
        for i in &doc.interfaces {
            let mut addrs: Vec<IpAddr> = Vec::new();
            addrs.extend(i.private_ip_address);
            for p in &i.private_ip_addresses {
                addrs.extend(p.private_ip_address);
                addrs.extend(p.association.as_ref().and_then(|a| a.public_ip));
            }
            addrs.extend(i.ipv6_addresses.iter().map(|a| a.ipv6_address));
            addrs.extend(i.association.as_ref().and_then(|a| a.public_ip));
            addrs.sort();
            addrs.dedup();
            for g in &i.groups {
                by_group
                    .entry((i.owner_id.clone(), g.group_id.clone()))
                    .or_default()
                    .extend(addrs.iter().copied());
            }
        }
        Ok(Inventory {
            by_group,
            interfaces: doc.interfaces.len(),
        })
    }

    /// The addresses of interfaces of `account` that carry `group`.
    pub fn addresses(&self, account: &str, group: &str) -> &[IpAddr] {
        self.by_group
            .get(&(account.to_string(), group.to_string()))
            .map_or(&[], Vec::as_slice)
    }
}

/// A hash of an inventory file's bytes, to tell whether it changed.
pub fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_or_foreign_json_is_refused_with_a_reason() {
        assert!(Inventory::parse("{")
            .unwrap_err()
            .to_string()
            .contains("describe-network-interfaces"));
        assert!(Inventory::parse(r#"{"Reservations": []}"#).is_err());
        assert_eq!(
            Inventory::parse(r#"{"NetworkInterfaces": []}"#)
                .unwrap()
                .interfaces,
            0
        );
    }
}
