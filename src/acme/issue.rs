//! One issuance, start to end: the account, an order for the domain's hostnames, its
//! challenges (a dns-01 hook, or tls-alpn-01 answers on moat's port), a CSR for a key made
//! here, the chain checked against the key and the names, and the files written. The
//! protocol itself is instant-acme's.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use super::alpn::{Answer, AnswerError, Challenges};
use crate::config::{AcmeConfig, Challenge, DomainConfig};
use crate::durable;
use crate::events;
use crate::tls::certs::{self, Leaf, Secret};

/// An issuance that takes longer than this is abandoned (and retried later).
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the dns-01 hook may run for one record.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of the hook's stderr goes into an error message.
const HOOK_STDERR: u64 = 2048;
/// How long the CA gets to validate the challenges, then to sign.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(250))
    .backoff(1.5)
    .timeout(Duration::from_secs(180));

/// Why an issuance failed. Nothing was written, and the certificate in service stays.
#[derive(Debug, Error)]
pub enum AcmeError {
    #[error("account key {}: {message}", path.display())]
    AccountKey { path: PathBuf, message: String },
    #[error("{step}: {source}")]
    Protocol {
        step: &'static str,
        source: instant_acme::Error,
    },
    #[error("the CA offers no {challenge} challenge for {name}")]
    NoChallenge {
        challenge: &'static str,
        name: String,
    },
    #[error("the authorization for {name} is {status}")]
    Authorization { name: String, status: String },
    #[error("the CA did not validate the order: {0}")]
    Invalid(String),
    #[error("hook `{} {action} {fqdn}`: {why}", hook.display())]
    Hook {
        hook: PathBuf,
        action: &'static str,
        fqdn: String,
        why: String,
    },
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error("cannot make the key or the CSR: {0}")]
    Csr(String),
    #[error("the CA's certificate cannot be used: {0}")]
    Certificate(String),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("no certificate within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the issuance task failed: {0}")]
    Task(String),
}

fn protocol(step: &'static str) -> impl FnOnce(instant_acme::Error) -> AcmeError {
    move |source| AcmeError::Protocol { step, source }
}

/// A certificate the CA issued, checked, with the key made for it.
pub struct Issued {
    /// PEM: leaf first, then the chain, as the CA sent it.
    pub chain_pem: String,
    pub key: rcgen::KeyPair,
    pub leaf: Leaf,
    /// From the order to the chain in hand.
    pub took: Duration,
}

/// Gets a certificate for `d` from its CA and writes it (key, password, chain) in place.
/// The same path for the renewal task and `moat certs acme`.
pub async fn obtain(
    d: &DomainConfig,
    a: &AcmeConfig,
    challenges: &Challenges,
) -> Result<Issued, AcmeError> {
    let issued = tokio::time::timeout(ISSUE_TIMEOUT, issue(d, a, challenges))
        .await
        .map_err(|_| AcmeError::Timeout(ISSUE_TIMEOUT))??;
    let d = d.clone();
    tokio::task::spawn_blocking(move || install(&d, &issued).map(|()| issued))
        .await
        .map_err(|e| AcmeError::Task(e.to_string()))?
}

/// Asks the CA for a certificate for `d`'s hostnames and checks what comes back.
pub async fn issue(
    d: &DomainConfig,
    a: &AcmeConfig,
    challenges: &Challenges,
) -> Result<Issued, AcmeError> {
    let started = Instant::now();
    let account = account(a).await?;
    let ids: Vec<Identifier> = d
        .hostnames
        .iter()
        .map(|h| Identifier::Dns(h.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(protocol("creating the order"))?;
    let mut published = Vec::new();
    let mut answers = Vec::new();
    let validated = match authorize(&mut order, a, challenges, &mut published, &mut answers).await {
        Ok(()) => order
            .poll_ready(&POLL)
            .await
            .map_err(protocol("waiting for validation")),
        Err(e) => Err(e),
    };
    drop(answers);
    if let Some(hook) = &a.hook {
        for (fqdn, value) in &published {
            if let Err(e) = run_hook(hook, "clear", fqdn, value).await {
                events::acme_hook_clear_failed(&d.name, fqdn, &e);
            }
        }
    }
    match validated? {
        OrderStatus::Ready => {}
        status => return Err(AcmeError::Invalid(why_invalid(&mut order, status).await)),
    }
    let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(d.hostnames.clone())
        .map_err(|e| AcmeError::Csr(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| AcmeError::Csr(e.to_string()))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(protocol("finalizing the order"))?;
    let chain_pem = order
        .poll_certificate(&POLL)
        .await
        .map_err(protocol("downloading the certificate"))?;
    let leaf = check(d, &chain_pem, &key)?;
    Ok(Issued {
        chain_pem,
        key,
        leaf,
        took: started.elapsed(),
    })
}

/// Serialises making account keys: two domains may share one.
static ACCOUNT_KEYS: Mutex<()> = Mutex::new(());

/// The account for `a`'s key at `a`'s CA: found by its key, or created.
async fn account(a: &AcmeConfig) -> Result<Account, AcmeError> {
    let path = a.account_key.clone();
    let der = tokio::task::spawn_blocking(move || account_key(&path))
        .await
        .map_err(|e| AcmeError::Task(e.to_string()))??;
    let key_err = |message: String| AcmeError::AccountKey {
        path: a.account_key.clone(),
        message,
    };
    let key = instant_acme::Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(
        der.secret_pkcs8_der().to_vec(),
    ))
    .map_err(|e| key_err(format!("{e} (an ECDSA P-256 PKCS#8 key is needed)")))?;
    let builder = match &a.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    }
    .map_err(protocol("setting up the HTTPS client"))?;
    let (account, _) = builder
        .create_from_key((key, PrivateKeyDer::Pkcs8(der)), a.directory.clone())
        .await
        .map_err(protocol("finding or creating the account"))?;
    if !a.contact.is_empty() {
        let contact: Vec<&str> = a.contact.iter().map(String::as_str).collect();
        account
            .update_contacts(&contact)
            .await
            .map_err(protocol("setting the account's contact"))?;
    }
    Ok(account)
}

/// The account key at `path`, made (P-256, mode 0600) when there is none.
fn account_key(path: &Path) -> Result<PrivatePkcs8KeyDer<'static>, AcmeError> {
    let err = |message: String| AcmeError::AccountKey {
        path: path.to_path_buf(),
        message,
    };
    let _one = ACCOUNT_KEYS
        .lock()
        .map_err(|_| err("lock poisoned".into()))?;
    match std::fs::read(path) {
        Ok(pem) => {
            let pem = Zeroizing::new(pem);
            match PrivateKeyDer::from_pem_slice(&pem) {
                Ok(PrivateKeyDer::Pkcs8(k)) => Ok(k),
                Ok(_) => Err(err("not a PKCS#8 key (`BEGIN PRIVATE KEY`)".into())),
                Err(e) => Err(err(e.to_string())),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = rcgen::KeyPair::generate().map_err(|e| err(e.to_string()))?;
            let pem = Zeroizing::new(key.serialize_pem());
            if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
            durable::replace(path, pem.as_bytes(), 0o600).map_err(|e| err(e.to_string()))?;
            events::acme_account_key_created(&path.display().to_string());
            Ok(PrivatePkcs8KeyDer::from(key.serialize_der()))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Meets every pending authorization's challenge and tells the CA to check it. The dns-01
/// records published are added to `published` (to clear afterwards, whatever happens) and
/// the tls-alpn-01 answers to `answers` (withdrawn when dropped).
async fn authorize<'c>(
    order: &mut Order,
    a: &AcmeConfig,
    challenges: &'c Challenges,
    published: &mut Vec<(String, String)>,
    answers: &mut Vec<Answer<'c>>,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(protocol("reading an authorization"))?;
        let name = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                return Err(AcmeError::Authorization {
                    name,
                    status: format!("{status:?}").to_lowercase(),
                })
            }
        }
        let base = match authz.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            _ => return Err(AcmeError::Invalid(format!("{name} is not a DNS name"))),
        };
        let kind = match a.challenge {
            Challenge::Dns01 => ChallengeType::Dns01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut challenge = authz
            .challenge(kind)
            .ok_or_else(|| AcmeError::NoChallenge {
                challenge: a.challenge.as_str(),
                name: name.clone(),
            })?;
        let key_authorization = challenge.key_authorization();
        match (a.challenge, &a.hook) {
            (Challenge::Dns01, Some(hook)) => {
                let fqdn = format!("_acme-challenge.{base}.");
                let value = key_authorization.dns_value();
                run_hook(hook, "set", &fqdn, &value).await?;
                published.push((fqdn, value));
            }
            (Challenge::Dns01, None) => {
                return Err(AcmeError::Invalid("dns-01 needs a hook".into()));
            }
            (Challenge::TlsAlpn01, _) => {
                answers.push(challenges.answer(&base, key_authorization.digest().as_ref())?);
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(protocol("telling the CA to check the challenge"))?;
    }
    Ok(())
}

/// What the CA said about the challenges of an order that did not become ready.
async fn why_invalid(order: &mut Order, status: OrderStatus) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(e) = &c.error {
                    reasons.push(format!("{name}: {e}"));
                }
            }
        }
    }
    if reasons.is_empty() {
        format!("order status {status:?}")
    } else {
        reasons.join("; ")
    }
}

/// Runs `HOOK ACTION FQDN VALUE` (the shape of lego's and dehydrated's exec hooks), within
/// [`HOOK_TIMEOUT`]; its stdout is ignored, the start of its stderr explains a failure.
pub async fn run_hook(
    hook: &Path,
    action: &'static str,
    fqdn: &str,
    value: &str,
) -> Result<(), AcmeError> {
    let fail = |why: String| AcmeError::Hook {
        hook: hook.to_path_buf(),
        action,
        fqdn: fqdn.to_string(),
        why,
    };
    let mut child = tokio::process::Command::new(hook)
        .arg(action)
        .arg(fqdn)
        .arg(value)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let mut stderr = child.stderr.take();
    let run = async {
        let mut said = Vec::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.take(HOOK_STDERR).read_to_end(&mut said).await;
            // Keep draining, so a talkative hook never blocks on a full pipe.
            let _ = tokio::io::copy(err, &mut tokio::io::sink()).await;
        }
        (child.wait().await, said)
    };
    let (status, said) = tokio::time::timeout(HOOK_TIMEOUT, run).await.map_err(|_| {
        fail(format!(
            "no exit within {}",
            humantime::format_duration(HOOK_TIMEOUT)
        ))
    })?;
    let status = status.map_err(|e| fail(e.to_string()))?;
    if status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&said);
    let said = said.trim();
    Err(fail(if said.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {said}")
    }))
}

/// The chain the CA sent, checked: in order, for `key`, naming every hostname, valid.
fn check(d: &DomainConfig, chain_pem: &str, key: &rcgen::KeyPair) -> Result<Leaf, AcmeError> {
    let bad = |e: &dyn std::fmt::Display| AcmeError::Certificate(e.to_string());
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let leaf_der = chain.first().ok_or_else(|| bad(&"no certificate in it"))?;
    let leaf = certs::leaf(leaf_der, &d.cert).map_err(|e| bad(&e))?;
    certs::check_chain_order(&chain, &d.cert).map_err(|e| bad(&e))?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    certs::pair(chain, der, &crate::tls::provider(), &d.cert, &d.key).map_err(|(_, e)| bad(&e))?;
    for h in &d.hostnames {
        if !leaf.names.iter().any(|n| certs::covers(n, h)) {
            return Err(bad(&format_args!("it does not name {h}")));
        }
    }
    if leaf.not_after <= crate::clock::unix_secs() {
        return Err(bad(&"it has already expired"));
    }
    Ok(leaf)
}

/// Writes the key (encrypted under a fresh password when `key_password_file` is set, or
/// under the systemd credential's, which moat cannot write, with `key_password_credential`), the
/// password and the chain: each staged and fsynced first, then renamed into place one
/// after the other, so the files change together within microseconds. (An ACME domain
/// whose files do not match after a crash is renewed at the next start.)
pub fn install(d: &DomainConfig, issued: &Issued) -> Result<(), AcmeError> {
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AcmeError::Write { path, source }
    };
    let (key_pem, password) = match (&d.key_password_file, &d.key_password_credential) {
        (Some(_), _) => {
            let password =
                crate::certgen::random_password().map_err(|e| AcmeError::Csr(e.to_string()))?;
            let secret = Secret::new(password.as_bytes().to_vec());
            let pem = crate::certgen::encrypt_key(&issued.key, &secret)
                .map_err(|e| AcmeError::Csr(e.to_string()))?;
            (pem, Some(password))
        }
        (None, Some(_)) => {
            let secret = certs::domain_password(d)
                .map_err(|(_, e)| AcmeError::Csr(e.to_string()))?
                .ok_or_else(|| AcmeError::Csr("no key password".into()))?;
            let pem = crate::certgen::encrypt_key(&issued.key, &secret)
                .map_err(|e| AcmeError::Csr(e.to_string()))?;
            (pem, None)
        }
        (None, None) => (Zeroizing::new(issued.key.serialize_pem()), None),
    };
    let mut targets: Vec<(&Path, Zeroizing<Vec<u8>>, u32)> = Vec::new();
    if let (Some(path), Some(pw)) = (&d.key_password_file, &password) {
        targets.push((
            path,
            Zeroizing::new(format!("{}\n", pw.as_str()).into_bytes()),
            0o600,
        ));
    }
    targets.push((&d.key, Zeroizing::new(key_pem.as_bytes().to_vec()), 0o600));
    targets.push((
        &d.cert,
        Zeroizing::new(issued.chain_pem.as_bytes().to_vec()),
        0o644,
    ));
    let mut staged = Vec::new();
    for (path, data, mode) in &targets {
        if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write(path))?;
        }
        staged.push(durable::stage(path, data, *mode).map_err(write(path))?);
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (s, (path, _, _)) in staged.into_iter().zip(&targets) {
        let dir = s.dir().to_path_buf();
        s.commit().map_err(write(path))?;
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for dir in dirs {
        // A rename that may not survive a power loss is still in place now; the next
        // start would renew a mismatched pair.
        let _ = durable::sync_dir(&dir);
    }
    Ok(())
}
