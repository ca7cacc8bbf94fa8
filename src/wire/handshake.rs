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

use super::message::{Body, Message};

/// Messages (both directions) inspected at most on one connection.
pub const MAX_MESSAGES: u32 = 32;

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
    AuthSucceeded(Auth),
    AuthFailed {
        auth: Auth,
        code_name: String,
        errmsg: String,
    },
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The reply a pending request waits for.
enum Expect {
    Hello,
    Sasl,
    Authenticate,
}

/// One connection's inspection state.
#[derive(Debug, Default)]
pub struct Inspector {
    /// The verified TLS client certificate subject: MONGODB-X509's principal.
    tls_subject: Option<String>,
    pending: Vec<(i32, Expect)>,
    auth: Option<Auth>,
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
        let Some(cmd) = msg.command() else {
            return Next::Done("first command after the handshake");
        };
        let Some(Ok((name, _))) = cmd.iter().next() else {
            return Next::Done("empty command");
        };
        let id = msg.header.request_id;
        let db = msg.database().unwrap_or("admin").to_string();
        match name.as_str().to_ascii_lowercase().as_str() {
            "hello" | "ismaster" => {
                self.hellos += 1;
                if self.hellos > 1 && self.auth.is_none() {
                    // A monitor's periodic hello: nothing more to learn.
                    return Next::Done("repeated hello");
                }
                if let Ok(client) = cmd.get_document("client") {
                    if let Some(m) = metadata(client) {
                        out.push(Finding::Metadata(m));
                    }
                }
                if let Some((db, user)) = cmd
                    .get_str("saslSupportedMechs")
                    .ok()
                    .and_then(|s| s.split_once('.'))
                {
                    self.hinted = Some((db.to_string(), user.to_string()));
                }
                if let Ok(spec) = cmd.get_document("speculativeAuthenticate") {
                    let mut auth = self.start(spec, &db);
                    auth.speculative = true;
                    self.auth = Some(auth);
                }
                self.pending.push((id, Expect::Hello));
            }
            "saslstart" => {
                self.auth = Some(self.start(cmd, &db));
                self.pending.push((id, Expect::Sasl));
            }
            "saslcontinue" => {
                if self.auth.is_none() {
                    self.auth = Some(self.hinted_auth(&db));
                }
                self.pending.push((id, Expect::Sasl));
            }
            "authenticate" => {
                self.auth = Some(self.start(cmd, &db));
                self.pending.push((id, Expect::Authenticate));
            }
            _ => return Next::Done("first command after the handshake"),
        }
        Next::Continue
    }

    /// A message from the server.
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
        match expect {
            Expect::Hello => {
                let Some(auth) = self.auth.take() else {
                    return Next::Continue;
                };
                match reply.get_document("speculativeAuthenticate") {
                    // The server took the speculative step: finish now (X.509, or a SASL
                    // reply that says done), or wait for saslContinue.
                    Ok(spec) if auth.mechanism == "MONGODB-X509" => {
                        let mut auth = auth;
                        if let Ok(user) = spec.get_str("user") {
                            auth.user = user.to_string();
                        }
                        out.push(Finding::AuthSucceeded(auth));
                        return Next::Done("authenticated");
                    }
                    Ok(spec) if spec.get_bool("done").unwrap_or(false) => {
                        out.push(Finding::AuthSucceeded(auth));
                        return Next::Done("authenticated");
                    }
                    Ok(_) => self.auth = Some(auth),
                    // Not taken: the driver authenticates with explicit commands next.
                    Err(_) => {}
                }
                Next::Continue
            }
            Expect::Sasl | Expect::Authenticate => {
                let auth = self.auth.clone().unwrap_or_default();
                if !is_ok(reply) {
                    out.push(Finding::AuthFailed {
                        auth,
                        code_name: reply.get_str("codeName").unwrap_or("Unknown").to_string(),
                        errmsg: reply.get_str("errmsg").unwrap_or("").to_string(),
                    });
                    return Next::Done("authentication failed");
                }
                if expect == Expect::Authenticate || reply.get_bool("done").unwrap_or(false) {
                    let mut auth = auth;
                    if let Ok(user) = reply.get_str("user") {
                        auth.user = user.to_string();
                    }
                    out.push(Finding::AuthSucceeded(auth));
                    return Next::Done("authenticated");
                }
                Next::Continue
            }
        }
    }

    /// An auth conversation from a saslStart / authenticate (or speculative) document.
    fn start(&self, cmd: &RawDocument, db: &str) -> Auth {
        let mechanism = cmd.get_str("mechanism").unwrap_or("unknown").to_string();
        let db = cmd.get_str("db").unwrap_or(db).to_string();
        let user = if mechanism == "MONGODB-X509" {
            cmd.get_str("user")
                .map(str::to_string)
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

/// The user name in a SASL client-first payload. SCRAM: `n,,n=user,r=nonce` (with `=2C`
/// and `=3D` escapes); PLAIN: `authzid\0user\0password` (only the user is taken).
pub fn sasl_user(mechanism: &str, payload: &[u8]) -> Option<String> {
    if mechanism == "PLAIN" {
        let mut parts = payload.split(|b| *b == 0);
        let _authzid = parts.next()?;
        let user = parts.next()?;
        return String::from_utf8(user.to_vec()).ok();
    }
    if !mechanism.starts_with("SCRAM-") {
        return None;
    }
    let text = std::str::from_utf8(payload).ok()?;
    // Skip the GS2 header (`n,,` or `n,a=authzid,`).
    let mut fields = text.splitn(3, ',');
    let (_, _, bare) = (fields.next()?, fields.next()?, fields.next()?);
    let user = bare.split(',').find_map(|f| f.strip_prefix("n="))?;
    Some(user.replace("=2C", ",").replace("=3D", "="))
}

fn metadata(client: &RawDocument) -> Option<ClientMetadata> {
    let doc = bson::Document::try_from(client).ok()?;
    let driver = doc.get_document("driver").ok().map(|d| {
        let name = d.get_str("name").unwrap_or("?");
        let version = d.get_str("version").unwrap_or("?");
        format!("{name} {version}")
    });
    let app = doc
        .get_document("application")
        .ok()
        .and_then(|a| a.get_str("name").ok())
        .map(str::to_string);
    let json = bson::Bson::Document(doc.clone())
        .into_relaxed_extjson()
        .to_string();
    let mut text = String::new();
    shell(&bson::Bson::Document(doc), &mut text);
    Some(ClientMetadata {
        driver,
        app,
        text,
        json,
    })
}

/// Writes a value the way mongod 3.x prints documents in its log.
fn shell(v: &bson::Bson, out: &mut String) {
    use std::fmt::Write;
    match v {
        bson::Bson::Document(d) => {
            if d.is_empty() {
                out.push_str("{}");
                return;
            }
            out.push_str("{ ");
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(k);
                out.push_str(": ");
                shell(v, out);
            }
            out.push_str(" }");
        }
        bson::Bson::Array(a) => {
            if a.is_empty() {
                out.push_str("[]");
                return;
            }
            out.push_str("[ ");
            for (i, v) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                shell(v, out);
            }
            out.push_str(" ]");
        }
        bson::Bson::String(s) => {
            let _ = write!(out, "{s:?}");
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
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
        let len = 16 + 5 + body.len();
        let mut m = Vec::new();
        for v in [len as i32, id, response_to, 2013] {
            m.extend_from_slice(&v.to_le_bytes());
        }
        m.extend_from_slice(&[0, 0, 0, 0, 0]);
        m.extend(body);
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
}
