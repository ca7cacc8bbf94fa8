//! The SSL-mode decision: what happens to a new connection given the live mode and the
//! first bytes the client sent. Pure functions, no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// mongod's `net.tls.mode`, applied to moat's public port (and its egress side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Mode {
    /// Plaintext only; TLS clients are refused.
    #[serde(rename = "disabled")]
    Disabled,
    /// Both accepted; egress to peers is plaintext.
    #[serde(rename = "allowSSL")]
    AllowSsl,
    /// Both accepted; egress to peers uses TLS.
    #[serde(rename = "preferSSL")]
    PreferSsl,
    /// TLS only; plaintext clients get a MongoDB error reply, then are closed.
    #[serde(rename = "requireSSL")]
    RequireSsl,
    /// mongod terminates TLS itself: TLS connections are forwarded unterminated (the SNI
    /// read from the ClientHello, as nginx's `ssl_preread` does), plaintext ones as in
    /// allowSSL. For MONGODB-X509 and x.509 member authentication, which need mongod to
    /// see the client's certificate.
    #[serde(rename = "passthrough")]
    Passthrough,
}

impl Mode {
    /// Every mode, in roll-out order, then passthrough.
    pub const ALL: [Mode; 5] = [
        Mode::Disabled,
        Mode::AllowSsl,
        Mode::PreferSsl,
        Mode::RequireSsl,
        Mode::Passthrough,
    ];

    /// The name used in config, CLI, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Disabled => "disabled",
            Mode::AllowSsl => "allowSSL",
            Mode::PreferSsl => "preferSSL",
            Mode::RequireSsl => "requireSSL",
            Mode::Passthrough => "passthrough",
        }
    }

    /// Whether moat terminates TLS in this mode, and so needs certificates.
    pub fn terminates_tls(self) -> bool {
        matches!(self, Mode::AllowSsl | Mode::PreferSsl | Mode::RequireSsl)
    }

    /// Whether moat's own outgoing (egress) connections to peers use TLS: mongod's
    /// difference between allowSSL and preferSSL.
    pub fn egress_tls(self) -> bool {
        matches!(self, Mode::PreferSsl | Mode::RequireSsl)
    }

    pub(crate) fn to_u8(self) -> u8 {
        self as u8
    }

    pub(crate) fn from_u8(v: u8) -> Mode {
        match v {
            0 => Mode::Disabled,
            1 => Mode::AllowSsl,
            2 => Mode::PreferSsl,
            3 => Mode::RequireSsl,
            _ => Mode::Passthrough,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown mode `{s}`: expected disabled, allowSSL, preferSSL, requireSSL or passthrough")
            })
    }
}

/// How a client speaks on the public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plaintext,
}

impl Transport {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Plaintext => "plaintext",
        }
    }
}

/// Bytes needed before [`classify`] can decide.
pub const SNIFF_BYTES: usize = 3;

/// Tells TLS from plaintext MongoDB by the first bytes, or `None` if more are needed.
///
/// A TLS connection starts with a handshake record: `0x16`, then the record version's major
/// `0x03` and a minor of 1..=4 (TLS 1.0-1.3 record layers; clients send `03 01` or `03 03`).
/// A MongoDB message starts with its little-endian length, so a 790-byte message
/// (`16 03 00 00`) shares the first two bytes with TLS; the third byte tells them apart.
pub fn classify(first: &[u8]) -> Option<Transport> {
    match first {
        [] => None,
        [0x16] | [0x16, 0x03] => None,
        [0x16, 0x03, minor, ..] if (1..=4).contains(minor) => Some(Transport::Tls),
        _ => Some(Transport::Plaintext),
    }
}

/// Why a connection was refused: the closed label set of `moat_connections_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Firewall,
    Limit,
    TlsRequired,
    TlsDisabled,
    HandshakeTimeout,
    TlsError,
    ProxyHeader,
    UpstreamUnavailable,
    /// The source failed authentication too often and is banned for a while.
    AuthThrottled,
}

impl RejectReason {
    /// Every reason, in declaration order (`reason as usize` indexes it).
    pub const ALL: [RejectReason; 9] = [
        RejectReason::Firewall,
        RejectReason::Limit,
        RejectReason::TlsRequired,
        RejectReason::TlsDisabled,
        RejectReason::HandshakeTimeout,
        RejectReason::TlsError,
        RejectReason::ProxyHeader,
        RejectReason::UpstreamUnavailable,
        RejectReason::AuthThrottled,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Firewall => "firewall",
            RejectReason::Limit => "limit",
            RejectReason::TlsRequired => "tls_required",
            RejectReason::TlsDisabled => "tls_disabled",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::TlsError => "tls_error",
            RejectReason::ProxyHeader => "proxy_header",
            RejectReason::UpstreamUnavailable => "upstream_unavailable",
            RejectReason::AuthThrottled => "auth_throttled",
        }
    }
}

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Terminate TLS, then forward.
    AcceptTls,
    /// Forward the TLS bytes unterminated (mode passthrough).
    PassThroughTls,
    /// Forward the plaintext bytes as they are.
    ForwardPlaintext,
    /// Answer the first MongoDB message with an error saying TLS is required, then close.
    ReplyTlsRequired,
    /// Close without a word (a TLS client while TLS is disabled).
    Refuse(RejectReason),
}

/// The SSL-mode table of SPEC.md for the public port.
pub fn decide(mode: Mode, transport: Transport) -> Action {
    match (transport, mode) {
        (Transport::Tls, Mode::Disabled) => Action::Refuse(RejectReason::TlsDisabled),
        (Transport::Tls, Mode::Passthrough) => Action::PassThroughTls,
        (Transport::Tls, _) => Action::AcceptTls,
        (Transport::Plaintext, Mode::RequireSsl) => Action::ReplyTlsRequired,
        (Transport::Plaintext, _) => Action::ForwardPlaintext,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_HELLO: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
    /// A MongoDB OP_MSG header: length 0x5f, requestID 1, responseTo 0, opCode 2013.
    const OP_MSG: &[u8] = &[0x5f, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0x07, 0, 0];

    #[test]
    fn client_hello_is_tls() {
        assert_eq!(classify(CLIENT_HELLO), Some(Transport::Tls));
        assert_eq!(classify(&[0x16, 0x03, 0x03, 0x00]), Some(Transport::Tls));
    }

    #[test]
    fn mongodb_header_is_plaintext() {
        assert_eq!(classify(OP_MSG), Some(Transport::Plaintext));
    }

    #[test]
    fn a_790_byte_mongodb_message_is_not_mistaken_for_tls() {
        // 790 = 0x316: the length bytes 16 03 00 00 look like a TLS record header.
        assert_eq!(
            classify(&[0x16, 0x03, 0x00, 0x00, 7, 0, 0, 0]),
            Some(Transport::Plaintext)
        );
    }

    #[test]
    fn undecided_until_three_bytes_when_it_could_be_tls() {
        assert_eq!(classify(&[]), None);
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(&[0x16, 0x03]), None);
        // A first byte other than 0x16 decides at once.
        assert_eq!(classify(&[0x5f]), Some(Transport::Plaintext));
        assert_eq!(classify(&[0x16, 0x04]), Some(Transport::Plaintext));
    }

    #[test]
    fn mode_table_matches_spec() {
        use Action::*;
        let cases = [
            (
                Mode::Disabled,
                ForwardPlaintext,
                Refuse(RejectReason::TlsDisabled),
            ),
            (Mode::AllowSsl, ForwardPlaintext, AcceptTls),
            (Mode::PreferSsl, ForwardPlaintext, AcceptTls),
            (Mode::RequireSsl, ReplyTlsRequired, AcceptTls),
            (Mode::Passthrough, ForwardPlaintext, PassThroughTls),
        ];
        for (mode, plain, tls) in cases {
            assert_eq!(
                decide(mode, Transport::Plaintext),
                plain,
                "{mode} plaintext"
            );
            assert_eq!(decide(mode, Transport::Tls), tls, "{mode} tls");
        }
    }

    #[test]
    fn egress_uses_tls_only_from_prefer_ssl() {
        assert!(!Mode::Disabled.egress_tls());
        assert!(!Mode::AllowSsl.egress_tls());
        assert!(Mode::PreferSsl.egress_tls());
        assert!(Mode::RequireSsl.egress_tls());
        // mongod speaks TLS to its peers itself: moat must not wrap it again.
        assert!(!Mode::Passthrough.egress_tls());
    }

    #[test]
    fn every_reject_reason_indexes_its_own_place_in_all() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{}", r.as_str());
        }
    }

    #[test]
    fn mode_names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
            assert_eq!(Mode::from_u8(m.to_u8()), m);
        }
        assert_eq!("requiressl".parse::<Mode>(), Ok(Mode::RequireSsl));
        assert!("required".parse::<Mode>().is_err());
    }
}
