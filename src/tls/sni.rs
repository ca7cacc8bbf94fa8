//! Choosing a domain's certificate by the name the client dialled (SNI).
//!
//! Lookups are two hash probes at most (the exact name, then `*.` + its parent), built once
//! per configuration, so handshake cost does not grow with the number of names.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// One `[[tls.domains]]`, loaded.
pub struct Domain {
    pub name: String,
    pub key: Arc<CertifiedKey>,
    pub hostnames: Vec<String>,
    /// The leaf certificate's notAfter, Unix seconds.
    pub not_after: Option<i64>,
    /// The leaf certificate's serial number (hex), to tell a rotation took effect.
    pub serial: String,
    /// The leaf certificate's notBefore, Unix seconds.
    pub not_before: Option<i64>,
    /// Who issued the leaf (its issuer's common name).
    pub issuer: String,
    /// Whether the certificate is the one the domain's files hold.
    pub origin: Origin,
}

/// Where a domain's certificate came from. Only an ACME domain is ever served from
/// anything but its files: it gets new ones from the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The domain's files, loaded and checked.
    Files,
    /// The files are missing or unusable, so the certificate served before is kept.
    Kept,
    /// The files are missing or unusable and there was nothing before: a self-signed
    /// stand-in that no client trusts, served until the CA issues the real one.
    Placeholder,
}

/// The certificate resolver handed to rustls.
pub struct SniResolver {
    domains: Vec<Domain>,
    exact: HashMap<String, usize>,
    /// Keyed by the parent of a `*.` name: `*.d123.example.net` → `d123.example.net`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.domains.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("SniResolver")
            .field("domains", &names)
            .field("default", &self.default)
            .finish()
    }
}

impl SniResolver {
    /// Domains' hostnames are lowercase and validated; `default` indexes `domains`.
    pub fn new(domains: Vec<Domain>, default: usize) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, d) in domains.iter().enumerate() {
            for h in &d.hostnames {
                match h.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), i),
                    None => exact.insert(h.clone(), i),
                };
            }
        }
        let list = domains;
        let default = default.min(list.len().saturating_sub(1));
        SniResolver {
            domains: list,
            exact,
            wildcard,
            default,
        }
    }

    /// The domain served for a client's SNI: an exact name beats a wildcard, and a wildcard
    /// covers one label only (RFC 6125); no SNI or an unknown name gets the default.
    pub fn select(&self, sni: Option<&str>) -> &Domain {
        let i = sni.and_then(|n| self.lookup(n)).unwrap_or(self.default);
        &self.domains[i]
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        let owned;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            owned = name.to_ascii_lowercase();
            owned.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&i) = self.exact.get(name) {
            return Some(i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// All domains, in configuration order.
    pub fn domains(&self) -> &[Domain] {
        &self.domains
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.select(hello.server_name()).key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(name: &str, hostnames: &[&str]) -> Domain {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Domain {
            name: name.to_string(),
            key: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)),
            hostnames: hostnames.iter().map(|s| s.to_string()).collect(),
            not_after: None,
            serial: String::new(),
            not_before: None,
            issuer: String::new(),
            origin: Origin::Files,
        }
    }

    fn resolver() -> SniResolver {
        SniResolver::new(
            vec![
                domain("account", &["*.acct123.example.net"]),
                domain(
                    "deployment",
                    &["d456.example.net", "db1.acct123.example.net"],
                ),
            ],
            1,
        )
    }

    #[test]
    fn exact_name_selects_its_domain() {
        assert_eq!(
            resolver().select(Some("d456.example.net")).name,
            "deployment"
        );
    }

    #[test]
    fn wildcard_covers_one_label() {
        let r = resolver();
        assert_eq!(r.select(Some("x.acct123.example.net")).name, "account");
        // Two labels deep is not covered by *.acct123.example.net: default.
        assert_eq!(r.select(Some("a.b.acct123.example.net")).name, "deployment");
        // Nor is the parent itself.
        assert_eq!(r.select(Some("acct123.example.net")).name, "deployment");
    }

    #[test]
    fn exact_name_beats_wildcard() {
        assert_eq!(
            resolver().select(Some("db1.acct123.example.net")).name,
            "deployment"
        );
    }

    #[test]
    fn no_sni_or_unknown_name_gets_the_default() {
        let r = resolver();
        assert_eq!(r.select(None).name, "deployment");
        assert_eq!(r.select(Some("other.example.org")).name, "deployment");
    }

    #[test]
    fn names_match_case_insensitively() {
        assert_eq!(
            resolver().select(Some("X.ACCT123.Example.NET")).name,
            "account"
        );
        assert_eq!(
            resolver().select(Some("d456.example.net.")).name,
            "deployment"
        );
    }
}
