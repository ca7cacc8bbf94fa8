//! OCSP stapling from a file: a DER OCSP response (RFC 6960), fetched by whatever the
//! operator runs (a cron job with `openssl ocsp`, a CA's tooling), is checked before it is
//! stapled. moat staples only a successful basic response whose entry names the leaf
//! certificate (serial, issuer name hash and, when the chain carries the issuer, issuer key
//! hash), says `good`, and is current (`thisUpdate <= now < nextUpdate`). The responder's
//! signature is the client's to verify, as with any staple.
//!
//! The parser walks the DER with `asn1-rs` (x509-parser's own), without recursion, on at
//! most [`MAX_RESPONSE`] bytes: a response is a few hundred bytes to a few KiB.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use sha1::Digest;
use thiserror::Error;
use x509_parser::asn1_rs::{Any, Class, FromDer, GeneralizedTime, Tag};
use x509_parser::certificate::X509Certificate;

use crate::clock;

/// A file larger than this is not an OCSP response (they are a few KiB with the
/// responder's certificate); it is not read further.
pub const MAX_RESPONSE: u64 = 64 * 1024;

/// id-pkix-ocsp-basic (1.3.6.1.5.5.7.48.1.1), as DER OID content.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// A response fit to staple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staple {
    /// The file's bytes, sent as they are.
    pub der: Vec<u8>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds: the staple is dropped then unless a fresh file came.
    pub next_update: Option<i64>,
}

/// Why a response is not stapled; every message names the file.
#[derive(Debug, Error)]
pub enum OcspError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is larger than {MAX_RESPONSE} bytes: not an OCSP response", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: not a DER OCSP response ({what})", path.display())]
    Malformed { path: PathBuf, what: String },
    #[error("{}: the responder's answer is `{status}`, not `successful`: it holds no certificate status", path.display())]
    Unsuccessful { path: PathBuf, status: &'static str },
    #[error("{}: not a basic OCSP response (id-pkix-ocsp-basic)", path.display())]
    NotBasic { path: PathBuf },
    #[error("{}: certificate IDs hashed with an algorithm other than SHA-1 or SHA-2", path.display())]
    UnknownHash { path: PathBuf },
    #[error("{}: for another certificate (serial {found}), not the one served (serial {want})", path.display())]
    OtherCertificate {
        path: PathBuf,
        found: String,
        want: String,
    },
    #[error("{}: for serial {serial} from another issuer (the issuer's {which} hash differs)", path.display())]
    OtherIssuer {
        path: PathBuf,
        serial: String,
        which: &'static str,
    },
    #[error("{}: says the certificate (serial {serial}) is revoked, since {at}", path.display())]
    Revoked {
        path: PathBuf,
        serial: String,
        at: String,
    },
    #[error("{}: the responder does not know the certificate (serial {serial}): status unknown", path.display())]
    Unknown { path: PathBuf, serial: String },
    #[error("{}: not valid yet: thisUpdate is {at}", path.display())]
    NotYetValid { path: PathBuf, at: String },
    #[error("{}: expired at {at} (nextUpdate): fetch a fresh response", path.display())]
    Expired { path: PathBuf, at: String },
}

/// Reads the response at `path` (at most [`MAX_RESPONSE`] bytes, a regular file only: not a
/// FIFO or device that would block or never end) and checks it for `chain` (leaf first,
/// then its issuer if the file has it) at `now` (Unix seconds).
pub fn load(path: &Path, chain: &[CertificateDer<'_>], now: i64) -> Result<Staple, OcspError> {
    let der = read_capped(path)?;
    check(der, path, chain, now)
}

fn read_capped(path: &Path) -> Result<Vec<u8>, OcspError> {
    use std::os::unix::fs::OpenOptionsExt;
    let read_err = |source| OcspError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: opening a FIFO someone put there returns at once; it is refused below.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(read_err)?;
    if !file.metadata().map_err(read_err)?.is_file() {
        return Err(OcspError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mut der = Vec::new();
    file.take(MAX_RESPONSE + 1)
        .read_to_end(&mut der)
        .map_err(read_err)?;
    if der.len() as u64 > MAX_RESPONSE {
        return Err(OcspError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(der)
}

/// Checks a response's bytes (named `path` in errors) for `chain` at `now`.
pub fn check(
    der: Vec<u8>,
    path: &Path,
    chain: &[CertificateDer<'_>],
    now: i64,
) -> Result<Staple, OcspError> {
    let malformed = |what: &str| OcspError::Malformed {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let leaf = chain
        .first()
        .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| c)
        .ok_or_else(|| malformed("the certificate it is for cannot be read"))?;
    let issuer = chain
        .get(1)
        .and_then(|c| x509_parser::parse_x509_certificate(c).ok())
        .map(|(_, c)| c);
    let entry = parse(&der).map_err(|w| malformed(&w))?;
    let entries = match entry {
        Parsed::Unsuccessful(status) => {
            return Err(OcspError::Unsuccessful {
                path: path.to_path_buf(),
                status,
            })
        }
        Parsed::NotBasic => {
            return Err(OcspError::NotBasic {
                path: path.to_path_buf(),
            })
        }
        Parsed::Entries(e) => e,
    };
    let single = find(&entries, &leaf, issuer.as_ref(), path)?;
    let serial = hex(single.serial);
    match single.status {
        Status::Good => {}
        Status::Revoked(at) => {
            return Err(OcspError::Revoked {
                path: path.to_path_buf(),
                serial,
                at: clock::datetime(at),
            })
        }
        Status::Unknown => {
            return Err(OcspError::Unknown {
                path: path.to_path_buf(),
                serial,
            })
        }
    }
    if single.this_update > now {
        return Err(OcspError::NotYetValid {
            path: path.to_path_buf(),
            at: clock::datetime(single.this_update),
        });
    }
    if let Some(next) = single.next_update.filter(|&n| n <= now) {
        return Err(OcspError::Expired {
            path: path.to_path_buf(),
            at: clock::datetime(next),
        });
    }
    Ok(Staple {
        this_update: single.this_update,
        next_update: single.next_update,
        der,
    })
}

/// The entry for the leaf: same serial and issuer name hash, and the same issuer key hash
/// when the issuer is known.
fn find<'a>(
    entries: &'a [Single<'a>],
    leaf: &X509Certificate<'_>,
    issuer: Option<&X509Certificate<'_>>,
    path: &Path,
) -> Result<&'a Single<'a>, OcspError> {
    let want = leaf.raw_serial();
    let mut other_issuer = None;
    for e in entries {
        if trim_zeros(e.serial) != trim_zeros(want) {
            continue;
        }
        let digest = |data: &[u8]| hash(e.hash_alg, data);
        let name_hash = digest(leaf.issuer().as_raw()).ok_or_else(|| OcspError::UnknownHash {
            path: path.to_path_buf(),
        })?;
        if name_hash != e.name_hash {
            other_issuer = Some("name");
            continue;
        }
        if let Some(issuer) = issuer {
            let key = &issuer.public_key().subject_public_key.data;
            if digest(key).is_some_and(|h| h != e.key_hash) {
                other_issuer = Some("key");
                continue;
            }
        }
        return Ok(e);
    }
    match (other_issuer, entries.first()) {
        (Some(which), _) => Err(OcspError::OtherIssuer {
            path: path.to_path_buf(),
            serial: hex(want),
            which,
        }),
        (None, first) => Err(OcspError::OtherCertificate {
            path: path.to_path_buf(),
            found: first.map_or_else(|| "none".to_string(), |e| hex(e.serial)),
            want: hex(want),
        }),
    }
}

fn hash(alg: &[u8], data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        SHA1 => sha1::Sha1::digest(data).to_vec(),
        SHA256 => sha2::Sha256::digest(data).to_vec(),
        SHA384 => sha2::Sha384::digest(data).to_vec(),
        SHA512 => sha2::Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Lowercase hex of the INTEGER's bytes, as moat prints serials elsewhere (`moat ctl
/// status`, logs).
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a response says, before it is matched to a certificate.
#[derive(Debug)]
enum Parsed<'a> {
    Unsuccessful(&'static str),
    NotBasic,
    Entries(Vec<Single<'a>>),
}

/// One SingleResponse.
#[derive(Debug)]
struct Single<'a> {
    /// The CertID hash algorithm's OID (DER content).
    hash_alg: &'a [u8],
    name_hash: &'a [u8],
    key_hash: &'a [u8],
    /// The serial number's INTEGER content.
    serial: &'a [u8],
    status: Status,
    this_update: i64,
    next_update: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Good,
    /// Revoked at (Unix seconds).
    Revoked(i64),
    Unknown,
}

/// The next element of `input`, and what follows it.
fn next(input: &[u8]) -> Result<(&[u8], Any<'_>), String> {
    Any::from_der(input).map_err(|e| format!("bad DER: {e}"))
}

/// The one element `input` holds, nothing after it.
fn only(input: &[u8]) -> Result<Any<'_>, String> {
    let (rest, any) = next(input)?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the end", rest.len()));
    }
    Ok(any)
}

fn is(any: &Any<'_>, class: Class, tag: u32) -> bool {
    any.header.class() == class && any.header.tag() == Tag(tag)
}

/// `any` must be a universal `tag`; returns its content.
fn universal<'a>(any: &Any<'a>, tag: Tag, what: &str) -> Result<&'a [u8], String> {
    if any.header.class() == Class::Universal && any.header.tag() == tag {
        Ok(any.data)
    } else {
        Err(format!("expected {what}"))
    }
}

/// The elements of a SEQUENCE's content.
fn elements(mut content: &[u8]) -> Result<Vec<Any<'_>>, String> {
    let mut out = Vec::new();
    while !content.is_empty() {
        let (rest, any) = next(content)?;
        out.push(any);
        content = rest;
    }
    Ok(out)
}

fn time(any: &Any<'_>, what: &str) -> Result<i64, String> {
    GeneralizedTime::try_from(any)
        .ok()
        .and_then(|t| t.0.to_datetime().ok())
        .map(|t| t.unix_timestamp())
        .ok_or_else(|| format!("{what} is not a GeneralizedTime"))
}

/// OCSPResponse → BasicOCSPResponse → ResponseData → SingleResponses.
fn parse(der: &[u8]) -> Result<Parsed<'_>, String> {
    let response = only(der)?;
    let fields = elements(universal(&response, Tag::Sequence, "OCSPResponse")?)?;
    let status = match fields.first() {
        Some(s) if is(s, Class::Universal, Tag::Enumerated.0) => s.data,
        _ => return Err("no responseStatus".into()),
    };
    let status = match status {
        [0] => None,
        [1] => Some("malformedRequest"),
        [2] => Some("internalError"),
        [3] => Some("tryLater"),
        [5] => Some("sigRequired"),
        [6] => Some("unauthorized"),
        _ => Some("an unknown status"),
    };
    if let Some(s) = status {
        return Ok(Parsed::Unsuccessful(s));
    }
    let bytes = match fields.get(1) {
        Some(b) if is(b, Class::ContextSpecific, 0) => only(b.data)?,
        _ => return Err("a successful response without responseBytes".into()),
    };
    let rb = elements(universal(&bytes, Tag::Sequence, "ResponseBytes")?)?;
    let (Some(kind), Some(body)) = (rb.first(), rb.get(1)) else {
        return Err("ResponseBytes is incomplete".into());
    };
    if universal(kind, Tag::Oid, "responseType")? != OCSP_BASIC {
        return Ok(Parsed::NotBasic);
    }
    let basic = only(universal(body, Tag::OctetString, "response")?)?;
    let basic = elements(universal(&basic, Tag::Sequence, "BasicOCSPResponse")?)?;
    let tbs = basic.first().ok_or("BasicOCSPResponse is empty")?;
    let data = elements(universal(tbs, Tag::Sequence, "ResponseData")?)?;
    // [0] version (optional), responderID ([1] or [2]), producedAt, responses, [1] extensions
    let mut data = data.iter().peekable();
    if data
        .peek()
        .is_some_and(|v| is(v, Class::ContextSpecific, 0))
    {
        data.next();
    }
    match data.next() {
        Some(r) if is(r, Class::ContextSpecific, 1) || is(r, Class::ContextSpecific, 2) => {}
        _ => return Err("no responderID".into()),
    }
    let produced = data.next().ok_or("no producedAt")?;
    time(produced, "producedAt")?;
    let responses = data.next().ok_or("no responses")?;
    let responses = elements(universal(responses, Tag::Sequence, "responses")?)?;
    responses
        .iter()
        .map(single)
        .collect::<Result<Vec<_>, _>>()
        .map(Parsed::Entries)
}

fn single<'a>(any: &Any<'a>) -> Result<Single<'a>, String> {
    let f = elements(universal(any, Tag::Sequence, "SingleResponse")?)?;
    let (Some(cert_id), Some(status), Some(this_update)) = (f.first(), f.get(1), f.get(2)) else {
        return Err("SingleResponse is incomplete".into());
    };
    let id = elements(universal(cert_id, Tag::Sequence, "CertID")?)?;
    let [alg, name_hash, key_hash, serial] = id.as_slice() else {
        return Err("CertID does not have four fields".into());
    };
    let alg = elements(universal(alg, Tag::Sequence, "hashAlgorithm")?)?;
    let hash_alg = universal(alg.first().ok_or("empty hashAlgorithm")?, Tag::Oid, "OID")?;
    let status = if is(status, Class::ContextSpecific, 0) {
        Status::Good
    } else if is(status, Class::ContextSpecific, 1) {
        let info = elements(status.data)?;
        Status::Revoked(time(
            info.first().ok_or("empty RevokedInfo")?,
            "revocationTime",
        )?)
    } else if is(status, Class::ContextSpecific, 2) {
        Status::Unknown
    } else {
        return Err("certStatus is not good, revoked or unknown".into());
    };
    let next_update = match f.get(3) {
        Some(n) if is(n, Class::ContextSpecific, 0) => Some(time(&only(n.data)?, "nextUpdate")?),
        _ => None,
    };
    Ok(Single {
        hash_alg,
        name_hash: universal(name_hash, Tag::OctetString, "issuerNameHash")?,
        key_hash: universal(key_hash, Tag::OctetString, "issuerKeyHash")?,
        serial: universal(serial, Tag::Integer, "serialNumber")?,
        status,
        this_update: time(this_update, "thisUpdate")?,
        next_update,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A DER element: tag byte, length, content.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn gtime(ts: i64) -> Vec<u8> {
        let t = time::OffsetDateTime::from_unix_timestamp(ts).unwrap();
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            t.month() as u8,
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        tlv(0x18, s.as_bytes())
    }

    /// What a test response says about one certificate.
    pub(crate) struct Entry<'a> {
        pub leaf: &'a CertificateDer<'a>,
        pub issuer: &'a CertificateDer<'a>,
        /// 0 good, 1 revoked, 2 unknown.
        pub status: u8,
        pub this_update: i64,
        pub next_update: Option<i64>,
    }

    /// A basic OCSP response (signature not real: moat does not verify it) for `e`.
    pub(crate) fn response(e: &Entry<'_>) -> Vec<u8> {
        let (_, leaf) = x509_parser::parse_x509_certificate(e.leaf).unwrap();
        let (_, issuer) = x509_parser::parse_x509_certificate(e.issuer).unwrap();
        let cert_id = seq(&[
            seq(&[tlv(0x06, SHA1), vec![0x05, 0x00]]),
            tlv(0x04, &sha1::Sha1::digest(leaf.issuer().as_raw())),
            tlv(
                0x04,
                &sha1::Sha1::digest(&issuer.public_key().subject_public_key.data),
            ),
            tlv(0x02, leaf.raw_serial()),
        ]);
        let status = match e.status {
            0 => vec![0x80, 0x00],
            1 => tlv(0xa1, &gtime(e.this_update - 3600)),
            _ => vec![0x82, 0x00],
        };
        let mut single = vec![cert_id, status, gtime(e.this_update)];
        if let Some(n) = e.next_update {
            single.push(tlv(0xa0, &gtime(n)));
        }
        let data = seq(&[
            tlv(0xa2, &tlv(0x04, &[7; 20])),
            gtime(e.this_update),
            seq(&[seq(&single)]),
        ]);
        let sig_alg = seq(&[tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]);
        let basic = seq(&[data, sig_alg, tlv(0x03, &[0, 1, 2, 3])]);
        let bytes = seq(&[tlv(0x06, OCSP_BASIC), tlv(0x04, &basic)]);
        seq(&[tlv(0x0a, &[0]), tlv(0xa0, &bytes)])
    }

    /// A CA and two leaves it issued (different serials).
    pub(crate) fn pki() -> (CertificateDer<'static>, [CertificateDer<'static>; 2]) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "ocsp test CA");
        let ca = p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(p, &ca_key);
        let leaf = |n: u8| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["db.moat.test".to_string()]).unwrap();
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x10 + n, 0x20, 0x30]));
            p.signed_by(&key, &issuer).unwrap().der().clone()
        };
        (ca.der().clone(), [leaf(1), leaf(2)])
    }

    const NOW: i64 = 1_800_000_000;

    fn good<'a>(leaf: &'a CertificateDer<'a>, ca: &'a CertificateDer<'a>) -> Entry<'a> {
        Entry {
            leaf,
            issuer: ca,
            status: 0,
            this_update: NOW - 60,
            next_update: Some(NOW + 86_400),
        }
    }

    fn verdict(der: Vec<u8>, chain: &[CertificateDer<'_>], now: i64) -> Result<Staple, String> {
        check(der, Path::new("resp.der"), chain, now).map_err(|e| e.to_string())
    }

    #[test]
    fn a_good_current_response_for_the_leaf_is_stapled_as_it_is() {
        let (ca, [leaf, _]) = pki();
        let der = response(&good(&leaf, &ca));
        let chain = [leaf.clone(), ca.clone()];
        let staple = verdict(der.clone(), &chain, NOW).unwrap();
        assert_eq!(staple.der, der);
        assert_eq!(staple.next_update, Some(NOW + 86_400));
        // Without the issuer in the chain, the serial and issuer name still decide.
        assert!(verdict(der, &chain[..1], NOW).is_ok());
    }

    #[test]
    fn an_expired_or_not_yet_valid_response_is_not_stapled() {
        let (ca, [leaf, _]) = pki();
        let chain = [leaf.clone(), ca.clone()];
        let der = response(&good(&leaf, &ca));
        let e = verdict(der.clone(), &chain, NOW + 86_400).unwrap_err();
        assert!(e.contains("expired at 2027-01-16 08:00:00 UTC"), "{e}");
        let e = verdict(der, &chain, NOW - 61).unwrap_err();
        assert!(e.contains("not valid yet"), "{e}");
        // No nextUpdate: current from thisUpdate on (RFC 6960 4.2.2.1).
        let mut open = good(&leaf, &ca);
        open.next_update = None;
        assert!(verdict(response(&open), &chain, NOW + 10_000_000).is_ok());
    }

    #[test]
    fn a_response_for_another_certificate_or_issuer_is_not_stapled() {
        let (ca, [leaf, other]) = pki();
        let der = response(&good(&other, &ca));
        let e = verdict(der, &[leaf.clone(), ca.clone()], NOW).unwrap_err();
        assert!(
            e.contains(
                "for another certificate (serial 122030), not the one served (serial 112030)"
            ),
            "{e}"
        );
        // Same serial and issuer name, but another issuer key (a re-keyed CA, say).
        let (other_ca, _) = pki();
        let der = response(&Entry {
            issuer: &other_ca,
            ..good(&leaf, &ca)
        });
        let e = verdict(der.clone(), &[leaf.clone(), ca.clone()], NOW).unwrap_err();
        assert!(e.contains("the issuer's key hash differs"), "{e}");
        assert!(verdict(der, &[leaf], NOW).is_ok(), "no issuer to compare");
    }

    #[test]
    fn revoked_unknown_and_unsuccessful_responses_are_not_stapled() {
        let (ca, [leaf, _]) = pki();
        let chain = [leaf.clone(), ca.clone()];
        let revoked = response(&Entry {
            status: 1,
            ..good(&leaf, &ca)
        });
        let e = verdict(revoked, &chain, NOW).unwrap_err();
        assert!(e.contains("is revoked, since"), "{e}");
        let unknown = response(&Entry {
            status: 2,
            ..good(&leaf, &ca)
        });
        assert!(verdict(unknown, &chain, NOW)
            .unwrap_err()
            .contains("status unknown"));
        // tryLater: `SEQUENCE { ENUMERATED 3 }`.
        let e = verdict(vec![0x30, 0x03, 0x0a, 0x01, 0x03], &chain, NOW).unwrap_err();
        assert!(e.contains("`tryLater`, not `successful`"), "{e}");
    }

    #[test]
    fn garbage_truncation_and_trailing_bytes_are_refused_without_panicking() {
        let (ca, [leaf, _]) = pki();
        let chain = [leaf.clone(), ca.clone()];
        let der = response(&good(&leaf, &ca));
        for cut in 0..der.len() {
            assert!(
                verdict(der[..cut].to_vec(), &chain, NOW).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = der.clone();
        longer.push(0);
        let e = verdict(longer, &chain, NOW).unwrap_err();
        assert!(
            e.contains("not a DER OCSP response (1 bytes after the end)"),
            "{e}"
        );
        // Every single-byte corruption is an answer, not a panic.
        for i in 0..der.len() {
            let mut bad = der.clone();
            bad[i] ^= 0xff;
            let _ = verdict(bad, &chain, NOW);
        }
        let e = verdict(b"-----BEGIN".to_vec(), &chain, NOW).unwrap_err();
        assert!(e.starts_with("resp.der: not a DER OCSP response"), "{e}");
    }

    #[test]
    fn a_huge_or_special_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, [leaf, _]) = pki();
        let big = dir.path().join("big.der");
        std::fs::write(&big, vec![0u8; MAX_RESPONSE as usize + 1]).unwrap();
        let e = load(&big, &[leaf.clone(), ca.clone()], NOW).unwrap_err();
        assert!(matches!(e, OcspError::TooLarge { .. }), "{e}");
        let e = load(Path::new("/dev/zero"), std::slice::from_ref(&leaf), NOW).unwrap_err();
        assert!(matches!(e, OcspError::NotAFile { .. }), "{e}");
        let e = load(&dir.path().join("missing.der"), &[leaf], NOW).unwrap_err();
        assert!(e.to_string().contains("missing.der"), "{e}");
    }

    /// An `openssl ocsp` response (OpenSSL 3.0, `-ndays 1`) for `tests/fixtures/ocsp/leaf.pem`
    /// issued by `ca.pem` (certificates only: the keys were thrown away).
    #[test]
    fn a_response_made_by_openssl_is_read() {
        use rustls::pki_types::pem::PemObject;
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocsp");
        let cert = |f: &str| CertificateDer::from_pem_file(dir.join(f)).unwrap();
        let chain = [cert("leaf.pem"), cert("ca.pem")];
        let der = std::fs::read(dir.join("good.der")).unwrap();
        let this_update = match parse(&der).unwrap() {
            Parsed::Entries(e) => e[0].this_update,
            other => panic!("{other:?}"),
        };
        let staple = verdict(der.clone(), &chain, this_update + 60).unwrap();
        assert_eq!(staple.next_update, Some(this_update + 86_400));
        let e = verdict(der, &chain, this_update + 86_400).unwrap_err();
        assert!(e.contains("expired at"), "{e}");
    }
}
