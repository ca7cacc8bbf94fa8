//! Handshake inspection: what a connection's first messages say about who the client is
//! and whether it authenticated. Pure: messages in, findings out; the connection code
//! logs them.
//!
//! It follows hello/isMaster (client metadata, `speculativeAuthenticate`), saslStart and
//! saslContinue (mechanism, and the user name from SCRAM's client-first message or PLAIN's
//! payload) and `authenticate` (MONGODB-X509), and decides success or failure from the
//! server's replies. It stops at the first ordinary command, once authentication has an
//! outcome, or after a bounded number of messages. Passwords, nonces, proofs and payloads
//! other than the user name are never kept.

use bson::{RawBsonRef, RawDocument};

use super::message::{Body, Message, MORE_TO_COME};
use super::render::{self, RenderError, Style};

/// Messages (both directions) inspected at most on one connection.
pub const MAX_MESSAGES: u32 = 32;

/// Authentication conversations followed at most on one connection. A driver uses one, or
/// two when the server does not take its speculative step.
pub const MAX_CONVERSATIONS: usize = 4;

/// Largest client metadata document logged: mongod refuses larger ones
/// (`kMaxMongoDMetadataDocumentByteLength`).
pub const MAX_METADATA_BYTES: usize = 512;

/// Deepest client metadata logged, in levels (the document itself is level 1). Drivers
/// send 3 or 4.
pub const MAX_METADATA_DEPTH: usize = 16;

/// Longest user, database, mechanism or error name kept from a message, in bytes.
pub const MAX_NAME: usize = 256;

/// Longest server error message kept, in bytes.
pub const MAX_ERRMSG: usize = 1024;

/// Who the client says it is (hello's `client` document).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientMetadata {
    /// `name version` of the driver, e.g. `PyMongo|c 4.20.0|`.
    pub driver: Option<String>,
    /// `application.name` (appName in the URI).
    pub app: Option<String>,
    /// The document in mongod's shell style: `{ driver: { name: "PyMongo", ... }, ... }`.
    pub text: String,
    /// The document as relaxed extended JSON.
    pub json: String,
}

/// What inspection found.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    Metadata(ClientMetadata),
    /// Client metadata over [`MAX_METADATA_BYTES`] or [`MAX_METADATA_DEPTH`]: not
    /// rendered, and inspection of the connection ends.
    MetadataTooLarge {
        bytes: usize,
        /// Within the size limit, but nested deeper than the depth limit.
        too_deep: bool,
    },
    AuthSucceeded(Auth),
    AuthFailed {
        auth: Auth,
        code_name: String,
        errmsg: String,
    },
    /// The replica-set members a hello reply advertises (`hosts`, then `me`), at most
    /// [`MAX_MEMBERS`] of them: moat checks them against its own upstream address.
    Members(Vec<String>),
}

/// Replica-set members read from one hello reply (a set has at most 50).
pub const MAX_MEMBERS: usize = 64;

/// An authentication conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Auth {
    pub mechanism: String,
    /// The user name (SCRAM / PLAIN), or the certificate subject (MONGODB-X509).
    pub user: String,
    pub db: String,
    /// Started inside hello (`speculativeAuthenticate`).
    pub speculative: bool,
}

impl Auth {
    /// The closed label set of `moat_auth_total`.
    pub fn mechanism_label(&self) -> &'static str {
        match self.mechanism.as_str() {
            "SCRAM-SHA-1" => "SCRAM-SHA-1",
            "SCRAM-SHA-256" => "SCRAM-SHA-256",
            "MONGODB-X509" => "MONGODB-X509",
            "PLAIN" => "PLAIN",
            _ => "other",
        }
    }
}

/// Whether to keep inspecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// The handshake is over: stop parsing, copy bytes.
    Done(&'static str),
}

/// The reply a pending request waits for, and the conversation (an index into
/// `Inspector::conversations`) that reply speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Hello(Option<usize>),
    Sasl(usize),
    Authenticate(usize),
}

/// One authentication conversation as the client and server see it.
#[derive(Debug)]
struct Conversation {
    auth: Auth,
    /// The server's `conversationId`, once a reply has named it.
    server_id: Option<i64>,
    /// False once the server declined it (a speculative step it did not take).
    open: bool,
}

/// One connection's inspection state.
#[derive(Debug, Default)]
pub struct Inspector {
    /// The verified TLS client certificate subject: MONGODB-X509's principal.
    tls_subject: Option<String>,
    /// Requests awaiting a reply, by request id (bounded by [`MAX_MESSAGES`]).
    pending: Vec<(i32, Expect)>,
    /// Every conversation begun, oldest first (bounded by [`MAX_CONVERSATIONS`]).
    conversations: Vec<Conversation>,
    hellos: u32,
    messages: u32,
    /// `saslSupportedMechs: "db.user"` from hello: names the user if auth fails early.
    hinted: Option<(String, String)>,
}

impl Inspector {
    pub fn new(tls_subject: Option<String>) -> Inspector {
        Inspector {
            tls_subject,
            ..Inspector::default()
        }
    }

    fn count(&mut self) -> Option<Next> {
        self.messages += 1;
        (self.messages > MAX_MESSAGES).then_some(Next::Done("message limit reached"))
    }

    /// A message from the client.
    pub fn client(&mut self, msg: &Message<'_>, out: &mut Vec<Finding>) -> Next {
        if let Some(done) = self.count() {
            return done;
        }
        if matches!(msg.body, Body::Compressed { .. }) {
            return Next::Done("compressed message");
        }
        if matches!(msg.body, Body::Msg { flags, .. } if flags & MORE_TO_COME != 0) {
            // No reply will answer it, so replies could no longer be paired with requests.
            // Drivers never send one during the handshake.
            return Next::Done("a request that wants no reply");
        }
        let Some(cmd) = msg.command() else {
            return Next::Done("first command after the handshake");
        };
        let Some(Ok((name, _))) = cmd.iter().next() else {
            return Next::Done("empty command");
        };
        let id = msg.header.request_id;
        let db = bounded(msg.database().unwrap_or("admin"), MAX_NAME);
        let expect = match name.as_str().to_ascii_lowercase().as_str() {
            "hello" | "ismaster" => {
                self.hellos += 1;
                if self.hellos > 1 && !self.conversations.iter().any(|c| c.open) {
                    // A monitor's periodic hello: nothing more to learn.
                    return Next::Done("repeated hello");
                }
                if let Some(found) = cmd.get_document("client").ok().and_then(metadata) {
                    let too_large = matches!(found, Finding::MetadataTooLarge { .. });
                    out.push(found);
                    if too_large {
                        return Next::Done("client metadata too large");
                    }
                }
                if let Some((db, user)) = cmd
                    .get_str("saslSupportedMechs")
                    .ok()
                    .and_then(|s| s.split_once('.'))
                {
                    self.hinted = Some((bounded(db, MAX_NAME), bounded(user, MAX_NAME)));
                }
                match cmd.get_document("speculativeAuthenticate") {
                    Ok(spec) => {
                        let mut auth = self.start(spec, &db);
                        auth.speculative = true;
                        match self.begin(auth) {
                            Ok(i) => Expect::Hello(Some(i)),
                            Err(done) => return done,
                        }
                    }
                    Err(_) => Expect::Hello(None),
                }
            }
            "saslstart" => match self.begin(self.start(cmd, &db)) {
                Ok(i) => Expect::Sasl(i),
                Err(done) => return done,
            },
            "saslcontinue" => match self.continued(cmd, &db) {
                Ok(i) => Expect::Sasl(i),
                Err(done) => return done,
            },
            "authenticate" => match self.begin(self.start(cmd, &db)) {
                Ok(i) => Expect::Authenticate(i),
                Err(done) => return done,
            },
            _ => return Next::Done("first command after the handshake"),
        };
        self.pending.push((id, expect));
        Next::Continue
    }

    /// A message from the server. Its `responseTo` names the request it answers, and so
    /// the conversation whose outcome it reports.
    pub fn server(&mut self, msg: &Message<'_>, out: &mut Vec<Finding>) -> Next {
        if let Some(done) = self.count() {
            return done;
        }
        let to = msg.header.response_to;
        let Some(pos) = self.pending.iter().position(|(id, _)| *id == to) else {
            return Next::Continue;
        };
        let (_, expect) = self.pending.remove(pos);
        let Some(reply) = msg.reply() else {
            return Next::Done("unexpected reply format");
        };
        if let Expect::Hello(_) = expect {
            if let Some(members) = members(reply) {
                out.push(Finding::Members(members));
            }
        }
        let i = match expect {
            Expect::Hello(None) => return Next::Continue,
            Expect::Hello(Some(i)) | Expect::Sasl(i) | Expect::Authenticate(i) => i,
        };
        let Some(conv) = self.conversations.get_mut(i) else {
            return Next::Done("lost track of a conversation");
        };
        if let Expect::Hello(_) = expect {
            let Ok(spec) = reply.get_document("speculativeAuthenticate") else {
                // Not taken: the driver authenticates with explicit commands next.
                conv.open = false;
                return Next::Continue;
            };
            // The server took the speculative step: finish now (X.509, or a SASL reply
            // that says done), or wait for saslContinue.
            if conv.auth.mechanism == "MONGODB-X509" || spec.get_bool("done").unwrap_or(false) {
                return succeeded(conv, spec, out);
            }
            conv.server_id = conversation_id(spec).or(conv.server_id);
            return Next::Continue;
        }
        if !is_ok(reply) {
            out.push(Finding::AuthFailed {
                auth: conv.auth.clone(),
                code_name: bounded(reply.get_str("codeName").unwrap_or("Unknown"), MAX_NAME),
                errmsg: bounded(reply.get_str("errmsg").unwrap_or(""), MAX_ERRMSG),
            });
            return Next::Done("authentication failed");
        }
        if matches!(expect, Expect::Authenticate(_)) || reply.get_bool("done").unwrap_or(false) {
            return succeeded(conv, reply, out);
        }
        conv.server_id = conversation_id(reply).or(conv.server_id);
        Next::Continue
    }

    /// Records a new conversation; its index, or `Done` past [`MAX_CONVERSATIONS`].
    fn begin(&mut self, auth: Auth) -> Result<usize, Next> {
        if self.conversations.len() >= MAX_CONVERSATIONS {
            return Err(Next::Done("too many authentication conversations"));
        }
        self.conversations.push(Conversation {
            auth,
            server_id: None,
            open: true,
        });
        Ok(self.conversations.len() - 1)
    }

    /// The conversation a saslContinue goes on: the newest open one whose server
    /// `conversationId` it names, else the newest open one, else one made from hello's
    /// `saslSupportedMechs` hint.
    fn continued(&mut self, cmd: &RawDocument, db: &str) -> Result<usize, Next> {
        let id = conversation_id(cmd);
        let open = |c: &Conversation| c.open;
        let named = self
            .conversations
            .iter()
            .rposition(|c| open(c) && id.is_some() && c.server_id == id);
        match named.or_else(|| self.conversations.iter().rposition(open)) {
            Some(i) => Ok(i),
            None => self.begin(self.hinted_auth(db)),
        }
    }

    /// An auth conversation from a saslStart / authenticate (or speculative) document.
    fn start(&self, cmd: &RawDocument, db: &str) -> Auth {
        let mechanism = bounded(cmd.get_str("mechanism").unwrap_or("unknown"), MAX_NAME);
        let db = cmd
            .get_str("db")
            .map(|d| bounded(d, MAX_NAME))
            .unwrap_or_else(|_| db.to_string());
        let user = if mechanism == "MONGODB-X509" {
            cmd.get_str("user")
                .map(|u| bounded(u, MAX_NAME))
                .ok()
                .or_else(|| self.tls_subject.clone())
                .unwrap_or_default()
        } else {
            cmd.get_binary("payload")
                .ok()
                .and_then(|p| sasl_user(&mechanism, p.bytes))
                .or_else(|| self.hinted.as_ref().map(|(_, u)| u.clone()))
                .unwrap_or_default()
        };
        Auth {
            mechanism,
            user,
            db,
            speculative: false,
        }
    }

    fn hinted_auth(&self, db: &str) -> Auth {
        let (db, user) = self
            .hinted
            .clone()
            .unwrap_or_else(|| (db.to_string(), String::new()));
        Auth {
            mechanism: "unknown".into(),
            user,
            db,
            speculative: false,
        }
    }
}

/// Reports `conv` as authenticated; an X.509 reply names its principal in `user`.
fn succeeded(conv: &Conversation, reply: &RawDocument, out: &mut Vec<Finding>) -> Next {
    let mut auth = conv.auth.clone();
    if let Ok(user) = reply.get_str("user") {
        auth.user = bounded(user, MAX_NAME);
    }
    out.push(Finding::AuthSucceeded(auth));
    Next::Done("authenticated")
}

/// `conversationId` as the server numbers it (an int32; other numeric types tolerated).
fn conversation_id(doc: &RawDocument) -> Option<i64> {
    match doc.get("conversationId") {
        Ok(Some(RawBsonRef::Int32(i))) => Some(i.into()),
        Ok(Some(RawBsonRef::Int64(i))) => Some(i),
        Ok(Some(RawBsonRef::Double(f))) if f.fract() == 0.0 && f.abs() < 1e15 => Some(f as i64),
        _ => None,
    }
}

/// `hosts` and `me` of a hello reply, bounded in count and length; `None` outside a set.
fn members(reply: &RawDocument) -> Option<Vec<String>> {
    let hosts = reply.get_array("hosts").ok()?;
    let mut out: Vec<String> = hosts
        .into_iter()
        .filter_map(|h| h.ok()?.as_str().map(|h| bounded(h, MAX_NAME)))
        .take(MAX_MEMBERS)
        .collect();
    if let Ok(me) = reply.get_str("me") {
        out.push(bounded(me, MAX_NAME));
    }
    Some(out)
}

/// `ok: 1` in whatever numeric (or boolean) type the server used.
fn is_ok(doc: &RawDocument) -> bool {
    match doc.get("ok") {
        Ok(Some(RawBsonRef::Double(f))) => f == 1.0,
        Ok(Some(RawBsonRef::Int32(i))) => i == 1,
        Ok(Some(RawBsonRef::Int64(i))) => i == 1,
        Ok(Some(RawBsonRef::Boolean(b))) => b,
        _ => false,
    }
}

/// `s` cut to at most `max` bytes on a character boundary; a cut is marked with `…`.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The user name in a SASL client-first payload, at most [`MAX_NAME`] bytes. SCRAM:
/// `n,,n=user,r=nonce` (with `=2C` and `=3D` escapes); PLAIN: `authzid\0user\0password`
/// (only the user is taken).
pub fn sasl_user(mechanism: &str, payload: &[u8]) -> Option<String> {
    if mechanism == "PLAIN" {
        let mut parts = payload.split(|b| *b == 0);
        let _authzid = parts.next()?;
        let user = std::str::from_utf8(parts.next()?).ok()?;
        return Some(bounded(user, MAX_NAME));
    }
    if !mechanism.starts_with("SCRAM-") {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    // Skip the GS2 header (`n,,` or `n,a=authzid,`).
    let mut fields = text.splitn(3, ',');
    let (_, _, bare) = (fields.next()?, fields.next()?, fields.next()?);
    let user = bare.split(',').find_map(|f| f.strip_prefix("n="))?;
    // Unescaping shortens; a name cut here is over MAX_NAME anyway and gets marked below.
    let user = bounded(user, 3 * MAX_NAME);
    Some(bounded(
        &user.replace("=2C", ",").replace("=3D", "="),
        MAX_NAME,
    ))
}

/// Reads hello's `client` document: [`Finding::Metadata`], or [`Finding::MetadataTooLarge`]
/// past [`MAX_METADATA_BYTES`] or [`MAX_METADATA_DEPTH`]; `None` if its bytes are malformed.
fn metadata(client: &RawDocument) -> Option<Finding> {
    let bytes = client.as_bytes().len();
    if bytes > MAX_METADATA_BYTES {
        return Some(Finding::MetadataTooLarge {
            bytes,
            too_deep: false,
        });
    }
    let mut text = String::new();
    let mut json = String::new();
    let rendered = render::render(client, Style::Shell, MAX_METADATA_DEPTH, &mut text)
        .and_then(|()| render::render(client, Style::Json, MAX_METADATA_DEPTH, &mut json));
    match rendered {
        Ok(()) => {}
        Err(RenderError::TooDeep(_)) => {
            return Some(Finding::MetadataTooLarge {
                bytes,
                too_deep: true,
            })
        }
        Err(RenderError::Malformed) => return None,
    }
    let driver = client.get_document("driver").ok().map(|d| {
        let name = d.get_str("name").unwrap_or("?");
        let version = d.get_str("version").unwrap_or("?");
        format!("{name} {version}")
    });
    let app = client
        .get_document("application")
        .ok()
        .and_then(|a| a.get_str("name").ok())
        .map(str::to_string);
    Some(Finding::Metadata(ClientMetadata {
        driver,
        app,
        text,
        json,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::message::parse;
    use super::*;

    /// A captured conversation: `(direction is client, bytes)` in wire order.
    fn conversation(name: &str) -> Vec<(bool, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/wire")
            .join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|p| {
                let client = p.to_string_lossy().ends_with("-client.bin");
                (client, std::fs::read(p).unwrap())
            })
            .collect()
    }

    /// Feeds a conversation; returns the findings and where inspection stopped (message
    /// index, reason).
    fn run(name: &str) -> (Vec<Finding>, Option<(usize, &'static str)>) {
        let mut ins = Inspector::new(None);
        let mut out = Vec::new();
        for (i, (client, bytes)) in conversation(name).iter().enumerate() {
            let msg = parse(bytes).unwrap();
            let next = if *client {
                ins.client(&msg, &mut out)
            } else {
                ins.server(&msg, &mut out)
            };
            if let Next::Done(why) = next {
                return (out, Some((i, why)));
            }
        }
        (out, None)
    }

    fn auth(mech: &str, user: &str, speculative: bool) -> Auth {
        Auth {
            mechanism: mech.into(),
            user: user.into(),
            db: "admin".into(),
            speculative,
        }
    }

    #[test]
    fn pymongo4_speculative_scram_sha_256_succeeds() {
        let (found, stop) = run("pymongo-4.20-scram-sha-256");
        let Finding::Metadata(m) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(m.driver.as_deref(), Some("PyMongo|c 4.20.0|"));
        assert_eq!(m.app.as_deref(), Some("fixture-app"));
        assert!(
            m.text.starts_with(
                "{ driver: { name: \"PyMongo|c\", version: \"4.20.0|\" }, os: { type: \"Linux\""
            ),
            "{}",
            m.text
        );
        assert!(
            m.json.starts_with("{\"driver\":{\"name\":\"PyMongo|c\""),
            "{}",
            m.json
        );
        assert_eq!(
            found[1],
            Finding::AuthSucceeded(auth("SCRAM-SHA-256", "alice", true))
        );
        // hello, reply, saslContinue, reply(done): stops at the reply that finished auth.
        assert_eq!(stop, Some((3, "authenticated")));
    }

    #[test]
    fn pymongo4_wrong_password_fails_with_the_servers_error() {
        let (found, stop) = run("pymongo-4.20-wrong-password");
        assert_eq!(
            found[1],
            Finding::AuthFailed {
                auth: auth("SCRAM-SHA-256", "alice", true),
                code_name: "AuthenticationFailed".into(),
                errmsg: "authentication failed".into()
            }
        );
        assert_eq!(stop, Some((3, "authentication failed")));
    }

    #[test]
    fn pymongo4_monitor_sends_metadata_and_never_authenticates() {
        let (found, stop) = run("pymongo-4.20-monitor");
        assert_eq!(found.len(), 1);
        assert!(matches!(found[0], Finding::Metadata(_)));
        assert_eq!(stop, Some((2, "repeated hello")));
    }

    #[test]
    fn legacy_op_query_ismaster_of_pymongo_3_11() {
        let (found, stop) = run("pymongo-3.11-op-query");
        let Finding::Metadata(m) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(m.driver.as_deref(), Some("PyMongo 3.11.0"));
        assert_eq!(m.app.as_deref(), Some("oldapp"));
        assert_eq!(
            found[1],
            Finding::AuthSucceeded(auth("SCRAM-SHA-256", "alice", true))
        );
        assert_eq!(stop, Some((3, "authenticated")));
    }

    #[test]
    fn mongosh_hello_and_auth() {
        let (found, _) = run("mongosh-2.12-op-query");
        let Finding::Metadata(m) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(m.driver.as_deref(), Some("nodejs|mongosh 7.9.0|2.12.0"));
        assert_eq!(m.app.as_deref(), Some("mongosh 2.12.0"));
        assert_eq!(
            found[1],
            Finding::AuthSucceeded(auth("SCRAM-SHA-256", "alice", true))
        );
    }

    #[test]
    fn scram_and_plain_user_names_are_read_and_nothing_else() {
        assert_eq!(
            sasl_user("SCRAM-SHA-1", b"n,,n=alice,r=abc").as_deref(),
            Some("alice")
        );
        assert_eq!(
            sasl_user("SCRAM-SHA-256", b"n,a=x,n=b=2Cob=3D,r=abc").as_deref(),
            Some("b,ob=")
        );
        assert_eq!(
            sasl_user("PLAIN", b"\0carol\0hunter2").as_deref(),
            Some("carol")
        );
        assert_eq!(sasl_user("GSSAPI", b"opaque"), None);
        assert_eq!(sasl_user("SCRAM-SHA-1", b"garbage"), None);
    }

    /// An OP_MSG with `doc` as its body.
    fn op_msg(id: i32, response_to: i32, doc: bson::Document) -> Vec<u8> {
        let mut body = Vec::new();
        doc.to_writer(&mut body).unwrap();
        op_msg_raw(id, response_to, &body)
    }

    /// An OP_MSG whose body is the document `body` (raw bytes: it may nest past what
    /// `bson::Document` can hold on a stack).
    fn op_msg_raw(id: i32, response_to: i32, body: &[u8]) -> Vec<u8> {
        let len = 16 + 5 + body.len();
        let mut m = Vec::new();
        for v in [len as i32, id, response_to, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn x509_principal_is_the_tls_client_subject() {
        let subject = "CN=alice,O=moat test".to_string();
        // Explicit authenticate without a user: the certificate names the principal.
        let mut ins = Inspector::new(Some(subject.clone()));
        let mut out = Vec::new();
        let auth = op_msg(
            1,
            0,
            bson::doc! {"authenticate": 1, "mechanism": "MONGODB-X509", "$db": "$external"},
        );
        assert_eq!(ins.client(&parse(&auth).unwrap(), &mut out), Next::Continue);
        let reply = op_msg(
            2,
            1,
            bson::doc! {"dbname": "$external", "user": subject.as_str(), "ok": 1.0},
        );
        assert_eq!(
            ins.server(&parse(&reply).unwrap(), &mut out),
            Next::Done("authenticated")
        );
        let want = Auth {
            mechanism: "MONGODB-X509".into(),
            user: subject.clone(),
            db: "$external".into(),
            speculative: false,
        };
        assert_eq!(out, vec![Finding::AuthSucceeded(want.clone())]);

        // Speculative, inside hello; and a refusal of the explicit command.
        let mut ins = Inspector::new(Some(subject.clone()));
        let mut out = Vec::new();
        let hello = op_msg(
            1,
            0,
            bson::doc! {"hello": 1, "$db": "admin",
            "speculativeAuthenticate": {"authenticate": 1, "mechanism": "MONGODB-X509", "db": "$external"}},
        );
        ins.client(&parse(&hello).unwrap(), &mut out);
        let reply = op_msg(
            2,
            1,
            bson::doc! {"isWritablePrimary": true, "ok": 1.0,
            "speculativeAuthenticate": {"dbname": "$external", "user": subject.as_str()}},
        );
        assert_eq!(
            ins.server(&parse(&reply).unwrap(), &mut out),
            Next::Done("authenticated")
        );
        assert_eq!(
            out,
            vec![Finding::AuthSucceeded(Auth {
                speculative: true,
                ..want.clone()
            })]
        );

        let mut ins = Inspector::new(Some(subject));
        let mut out = Vec::new();
        ins.client(&parse(&auth).unwrap(), &mut out);
        let refused = op_msg(
            2,
            1,
            bson::doc! {"ok": 0.0, "code": 18, "codeName": "AuthenticationFailed",
            "errmsg": "No verified subject name available from client"},
        );
        assert_eq!(
            ins.server(&parse(&refused).unwrap(), &mut out),
            Next::Done("authentication failed")
        );
        assert!(matches!(&out[0], Finding::AuthFailed { auth, .. } if auth.user == want.user));
    }

    #[test]
    fn an_ordinary_first_command_ends_inspection_at_once() {
        let mut m = Vec::new();
        let mut body = Vec::new();
        bson::doc! {"find": "c", "$db": "test"}
            .to_writer(&mut body)
            .unwrap();
        let len = 16 + 5 + body.len();
        for v in [len as i32, 1, 0, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0, 0]);
        m.extend(body);
        let mut out = Vec::new();
        let next = Inspector::new(None).client(&parse(&m).unwrap(), &mut out);
        assert_eq!(next, Next::Done("first command after the handshake"));
        assert!(out.is_empty());
    }

    /// Runs `f` on a thread with a 256 KiB stack: a renderer that recursed on a document's
    /// depth would overflow it and abort the test binary.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    use super::super::render::tests::{nested, old_shell};
    use bson::raw::{cstr, CStr};
    use bson::{Bson, RawDocumentBuf};

    /// `{hello: 1, <field>: value, $db: "admin"}` as OP_MSG request 1.
    fn hello_with(field: &CStr, value: &RawDocument) -> Vec<u8> {
        let mut d = RawDocumentBuf::new();
        d.append(cstr!("hello"), 1);
        d.append(field, value);
        d.append(cstr!("$db"), "admin");
        op_msg_raw(1, 0, d.as_bytes())
    }

    fn client_says(msg: &[u8]) -> (Next, Vec<Finding>) {
        let mut out = Vec::new();
        let next = Inspector::new(None).client(&parse(msg).unwrap(), &mut out);
        (next, out)
    }

    #[test]
    fn fixture_metadata_renders_exactly_as_before() {
        for name in [
            "pymongo-4.20-scram-sha-256",
            "pymongo-4.20-monitor",
            "pymongo-4.20-wrong-password",
            "pymongo-3.11-op-query",
            "mongosh-2.12-op-query",
        ] {
            let (_, hello) = &conversation(name)[0];
            let msg = parse(hello).unwrap();
            let client = msg.command().unwrap().get_document("client").unwrap();
            let owned = bson::Document::try_from(client).unwrap();
            let mut text = String::new();
            old_shell(&Bson::Document(owned.clone()), &mut text);
            let json = Bson::Document(owned).into_relaxed_extjson().to_string();
            let (found, _) = run(name);
            let Finding::Metadata(m) = &found[0] else {
                panic!("{name}: {found:?}")
            };
            assert_eq!(m.text, text, "{name}");
            assert_eq!(m.json, json, "{name}");
        }
        let (found, _) = run("pymongo-3.11-op-query");
        let Finding::Metadata(m) = &found[0] else {
            panic!("{found:?}")
        };
        assert_eq!(
            m.text,
            "{ driver: { name: \"PyMongo\", version: \"3.11.0\" }, os: { type: \"Linux\", \
             name: \"Linux\", architecture: \"x86_64\", version: \"6.18.44-fc-v669\" }, \
             platform: \"CPython 3.11.2.final.0\", application: { name: \"oldapp\" } }"
        );
    }

    #[test]
    fn seven_thousand_nested_client_documents_are_too_large_and_end_inspection() {
        on_small_stack(|| {
            let deep = nested(7000);
            assert_eq!(deep.len(), 55_997); // 8 bytes a level, as in the report
            let hello = hello_with(cstr!("client"), RawDocument::from_bytes(&deep).unwrap());
            let (next, found) = client_says(&hello);
            assert_eq!(next, Next::Done("client metadata too large"));
            assert_eq!(
                found,
                vec![Finding::MetadataTooLarge {
                    bytes: 55_997,
                    too_deep: false
                }]
            );
        });
    }

    #[test]
    fn metadata_under_512_bytes_but_deeper_than_the_limit_is_too_large() {
        on_small_stack(|| {
            let deep = nested(MAX_METADATA_DEPTH + 1);
            let hello = hello_with(cstr!("client"), RawDocument::from_bytes(&deep).unwrap());
            let (next, found) = client_says(&hello);
            assert_eq!(next, Next::Done("client metadata too large"));
            assert_eq!(
                found,
                vec![Finding::MetadataTooLarge {
                    bytes: deep.len(),
                    too_deep: true
                }]
            );
            // 60 levels in 477 bytes.
            let deep = nested(60);
            assert!(deep.len() < MAX_METADATA_BYTES);
            let hello = hello_with(cstr!("client"), RawDocument::from_bytes(&deep).unwrap());
            assert!(matches!(
                client_says(&hello).1[..],
                [Finding::MetadataTooLarge { too_deep: true, .. }]
            ));
        });
    }

    #[test]
    fn metadata_at_the_limits_is_logged_and_one_past_them_is_not() {
        let at_depth = nested(MAX_METADATA_DEPTH);
        let hello = hello_with(cstr!("client"), RawDocument::from_bytes(&at_depth).unwrap());
        let (next, found) = client_says(&hello);
        assert_eq!(next, Next::Continue);
        assert!(matches!(&found[..], [Finding::Metadata(_)]), "{found:?}");

        // {s: "xxx..."}: 13 bytes of framing around the string's characters.
        let sized = |bytes: usize| {
            let mut d = RawDocumentBuf::new();
            d.append(cstr!("s"), "x".repeat(bytes - 13).as_str());
            assert_eq!(d.as_bytes().len(), bytes);
            hello_with(cstr!("client"), &d)
        };
        let (next, found) = client_says(&sized(MAX_METADATA_BYTES));
        assert_eq!(next, Next::Continue);
        assert!(matches!(&found[..], [Finding::Metadata(_)]), "{found:?}");
        let (next, found) = client_says(&sized(MAX_METADATA_BYTES + 1));
        assert_eq!(next, Next::Done("client metadata too large"));
        assert_eq!(
            found,
            vec![Finding::MetadataTooLarge {
                bytes: 513,
                too_deep: false
            }]
        );
    }

    #[test]
    fn deep_documents_in_every_field_the_inspector_reads_are_harmless() {
        on_small_stack(|| {
            let deep_bytes = nested(7000);
            let deep = RawDocument::from_bytes(&deep_bytes).unwrap();
            let cmd = |first: (&CStr, Bson), rest: &[&CStr]| {
                let mut d = RawDocumentBuf::new();
                d.append(
                    first.0,
                    RawDocumentBuf::try_from(&bson::doc! {"v": first.1})
                        .unwrap()
                        .get("v")
                        .unwrap()
                        .unwrap(),
                );
                for k in rest {
                    d.append(*k, deep);
                }
                d
            };
            let one = || Bson::Int32(1);
            let requests = [
                hello_with(cstr!("speculativeAuthenticate"), deep),
                hello_with(cstr!("saslSupportedMechs"), deep),
                op_msg_raw(
                    1,
                    0,
                    cmd(
                        (cstr!("saslStart"), one()),
                        &[cstr!("payload"), cstr!("mechanism"), cstr!("db")],
                    )
                    .as_bytes(),
                ),
                op_msg_raw(
                    1,
                    0,
                    cmd(
                        (cstr!("saslContinue"), one()),
                        &[cstr!("conversationId"), cstr!("payload")],
                    )
                    .as_bytes(),
                ),
                op_msg_raw(
                    1,
                    0,
                    cmd(
                        (cstr!("authenticate"), one()),
                        &[cstr!("user"), cstr!("mechanism")],
                    )
                    .as_bytes(),
                ),
                op_msg_raw(
                    1,
                    0,
                    cmd((cstr!("hello"), one()), &[cstr!("$db")]).as_bytes(),
                ),
                op_msg_raw(1, 0, deep.as_bytes()),
                op_msg_raw(
                    1,
                    0,
                    cmd(
                        (cstr!("saslStart"), Bson::Document(bson::doc! {})),
                        &[cstr!("a")],
                    )
                    .as_bytes(),
                ),
            ];
            for req in &requests {
                let mut ins = Inspector::new(None);
                let mut out = Vec::new();
                ins.client(&parse(req).unwrap(), &mut out);
                // And a deep reply to it, in every field replies are read for.
                let reply = cmd(
                    (cstr!("ok"), Bson::Double(1.0)),
                    &[
                        cstr!("speculativeAuthenticate"),
                        cstr!("conversationId"),
                        cstr!("done"),
                        cstr!("user"),
                        cstr!("codeName"),
                        cstr!("errmsg"),
                    ],
                );
                ins.server(
                    &parse(&op_msg_raw(2, 1, reply.as_bytes())).unwrap(),
                    &mut out,
                );
                let mut ins = Inspector::new(None);
                ins.client(&parse(req).unwrap(), &mut out);
                ins.server(
                    &parse(&op_msg_raw(2, 1, deep.as_bytes())).unwrap(),
                    &mut out,
                );
            }
        });
    }

    /// A SCRAM client-first payload for `user`.
    fn scram_first(user: &str) -> bson::Binary {
        bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: format!("n,,n={user},r=nonce").into_bytes(),
        }
    }

    fn sasl_start(id: i32, user: &str) -> Vec<u8> {
        op_msg(
            id,
            0,
            bson::doc! {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": scram_first(user), "$db": "admin"},
        )
    }

    fn sasl_continue(id: i32, conversation: i32) -> Vec<u8> {
        op_msg(
            id,
            0,
            bson::doc! {"saslContinue": 1, "conversationId": conversation,
            "payload": scram_first("ignored"), "$db": "admin"},
        )
    }

    fn sasl_reply(id: i32, to: i32, conversation: i32, done: bool) -> Vec<u8> {
        op_msg(
            id,
            to,
            bson::doc! {"conversationId": conversation, "done": done, "ok": 1.0},
        )
    }

    /// Feeds `(is client, message)` in order; returns the findings and the last `Next`.
    fn feed(messages: &[(bool, Vec<u8>)]) -> (Vec<Finding>, Next) {
        let mut ins = Inspector::new(None);
        let mut out = Vec::new();
        let mut next = Next::Continue;
        for (client, m) in messages {
            let msg = parse(m).unwrap();
            next = if *client {
                ins.client(&msg, &mut out)
            } else {
                ins.server(&msg, &mut out)
            };
            if next != Next::Continue {
                break;
            }
        }
        (out, next)
    }

    fn scram(user: &str) -> Auth {
        auth("SCRAM-SHA-256", user, false)
    }

    #[test]
    fn a_saslstart_pipelined_behind_a_saslcontinue_does_not_take_its_success() {
        // alice's conversation is 1 at the server; her client-final message goes out, and
        // a saslStart for root right behind it. The reply to alice's saslContinue says done.
        let (found, next) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_continue(2, 1)),
            (true, sasl_start(3, "root")),
            (false, sasl_reply(101, 2, 1, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("alice"))]);
        assert_eq!(next, Next::Done("authenticated"));
    }

    #[test]
    fn a_saslstart_pipelined_ahead_of_a_saslcontinue_does_not_take_its_success() {
        let (found, next) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_start(2, "root")),
            (true, sasl_continue(3, 1)),
            (false, sasl_reply(101, 2, 1, false)),
            (false, sasl_reply(102, 3, 1, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("alice"))]);
        assert_eq!(next, Next::Done("authenticated"));
    }

    #[test]
    fn the_principal_is_the_one_whose_conversation_the_reply_answers() {
        // The twin of the two above: when the reply that says done answers root's request,
        // root is the principal; a failure is charged to the conversation it answers.
        let (found, _) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_continue(2, 1)),
            (true, sasl_start(3, "root")),
            (false, sasl_reply(101, 3, 2, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("root"))]);

        let refused = op_msg(
            101,
            2,
            bson::doc! {"ok": 0.0, "code": 18, "codeName": "AuthenticationFailed",
            "errmsg": "authentication failed"},
        );
        let (found, next) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_continue(2, 1)),
            (true, sasl_start(3, "root")),
            (false, refused),
        ]);
        assert_eq!(
            found,
            vec![Finding::AuthFailed {
                auth: scram("alice"),
                code_name: "AuthenticationFailed".into(),
                errmsg: "authentication failed".into()
            }]
        );
        assert_eq!(next, Next::Done("authentication failed"));
    }

    #[test]
    fn a_saslcontinue_goes_on_the_conversation_it_names() {
        // Two conversations known to the server (1: alice, 2: root); a continue naming 1
        // that succeeds is alice's even though root's started last.
        let (found, _) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_start(2, "root")),
            (false, sasl_reply(101, 2, 2, false)),
            (true, sasl_continue(3, 1)),
            (false, sasl_reply(102, 3, 1, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("alice"))]);
    }

    #[test]
    fn a_request_that_wants_no_reply_ends_inspection() {
        // Its request id could otherwise be paired with the reply to a later request.
        let mut quiet = sasl_continue(2, 1);
        quiet[16] = MORE_TO_COME as u8;
        let (found, next) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, quiet),
            (true, sasl_start(2, "root")),
            (false, sasl_reply(101, 2, 1, true)),
        ]);
        assert!(found.is_empty(), "{found:?}");
        assert_eq!(next, Next::Done("a request that wants no reply"));
    }

    #[test]
    fn replies_to_requests_that_share_an_id_are_paired_in_order() {
        // The server answers in order; the first reply with responseTo 2 is alice's.
        let (found, _) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_continue(2, 1)),
            (true, sasl_start(2, "root")),
            (false, sasl_reply(101, 2, 1, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("alice"))]);
        let (found, _) = feed(&[
            (true, sasl_start(1, "alice")),
            (false, sasl_reply(100, 1, 1, false)),
            (true, sasl_start(2, "root")),
            (true, sasl_continue(2, 1)),
            (false, sasl_reply(101, 2, 1, false)),
            (false, sasl_reply(102, 2, 1, true)),
        ]);
        assert_eq!(found, vec![Finding::AuthSucceeded(scram("alice"))]);
    }

    #[test]
    fn conversations_per_connection_are_capped() {
        let mut messages: Vec<_> = (1..=MAX_CONVERSATIONS as i32)
            .map(|id| (true, sasl_start(id, "alice")))
            .collect();
        let (found, next) = feed(&messages);
        assert!(found.is_empty());
        assert_eq!(next, Next::Continue);
        messages.push((true, sasl_start(99, "alice")));
        let (_, next) = feed(&messages);
        assert_eq!(next, Next::Done("too many authentication conversations"));
    }

    #[test]
    fn user_and_database_names_are_capped_on_a_character_boundary() {
        let long = "€".repeat(1000); // 3 bytes each
        let user = sasl_user("SCRAM-SHA-256", format!("n,,n={long},r=x").as_bytes()).unwrap();
        assert_eq!(user, format!("{}…", "€".repeat(MAX_NAME / 3)));
        let user = sasl_user("PLAIN", format!("\0{long}\0pw").as_bytes()).unwrap();
        assert_eq!(user, format!("{}…", "€".repeat(MAX_NAME / 3)));
        assert_eq!(bounded("short", MAX_NAME), "short");

        let x509 = op_msg(
            1,
            0,
            bson::doc! {"authenticate": 1, "mechanism": "MONGODB-X509",
            "user": "u".repeat(10_000), "db": "d".repeat(10_000)},
        );
        let ok = op_msg(2, 1, bson::doc! {"ok": 1, "user": "v".repeat(10_000)});
        let (found, _) = feed(&[(true, x509), (false, ok)]);
        let [Finding::AuthSucceeded(a)] = &found[..] else {
            panic!("{found:?}")
        };
        assert_eq!(a.user.len(), MAX_NAME + "…".len());
        assert_eq!(a.db.len(), MAX_NAME + "…".len());
    }
}
