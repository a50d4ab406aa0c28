//! Who is asking, and what they may do: one answer for every interface.
//!
//! Every way into Pacer (MQTT, the HTTP API and dashboard, the live feeds, the OwnTracks
//! and OsmAnd endpoints) authenticates with the [`Authorizer`] and asks it the same
//! questions. Users are those of a mosquitto password file; tokens and dashboard sessions
//! act as one of them. Each user has a [`Role`]:
//!
//! - admins: everything (DDL, TERMINATE, any stream, any topic);
//! - readers: read every stream and topic; write only where the ACL lets them;
//! - everyone else (and anonymous clients, where allowed): what the mosquitto ACL lets them.
//!
//! Records are judged by their topic: the MQTT topic they were published on, or, for a
//! record with none (a query's output, a record posted over HTTP), `$stream/{stream}/{key}`
//! (`$stream/{stream}` without a key), so `topic read $stream/race_status/#` in the ACL
//! grants a derived stream. Pacer's internal streams (`__…`) are read by admins only and
//! written by nobody from outside.
//!
//! Without a password file names are not checked: with no ACL either, everyone may do
//! everything, which is why Pacer then listens on loopback only unless told otherwise.

pub mod acl;
pub mod passwd;
mod session;
pub mod token;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pacer_core::{header, Record};
pub use pacer_log::RecordFilter;

pub use acl::{Access, Acl};
pub use passwd::{hash_line, update_password_file, PasswordFile};
pub use session::SESSION_MS;

/// The prefix of the topics records without an MQTT topic are judged by.
pub const STREAM_TOPIC_PREFIX: &str = "$stream/";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what} {}: {error}", path.display())]
    File { what: &'static str, path: PathBuf, error: std::io::Error },
    #[error("{what} {}, line {line}: {message}", path.display())]
    Line { what: &'static str, path: PathBuf, line: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl AuthError {
    fn file(what: &'static str, path: &Path, error: std::io::Error) -> AuthError {
        AuthError::File { what, path: path.into(), error }
    }
}

/// Why a client was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("anonymous clients are not allowed: give a user name and password")]
    Anonymous,
    #[error("bad user name or password")]
    BadCredentials,
    #[error("the token or session has expired")]
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Reader,
    /// What the ACL says (everything, without an ACL).
    User,
}

/// Who is asking, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    user: Option<String>,
    role: Role,
}

impl Identity {
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Where the users, their rights and the keys are.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// mosquitto password file; None: names are not checked.
    pub password_file: Option<PathBuf>,
    /// mosquitto ACL file; None: every user may use every topic (as in mosquitto).
    pub acl_file: Option<PathBuf>,
    /// Bearer tokens (`pacer token create`); None: no tokens.
    pub token_file: Option<PathBuf>,
    /// The key dashboard sessions are signed with, made on first use; None: no sessions.
    pub session_key_file: Option<PathBuf>,
    pub admins: Vec<String>,
    pub readers: Vec<String>,
    /// Clients without a user name get in (with the ACL's anonymous rules).
    pub allow_anonymous: bool,
}

pub struct Authorizer {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
    tokens: Option<token::Tokens>,
    sessions: Option<session::Sessions>,
    admins: HashSet<String>,
    readers: HashSet<String>,
    allow_anonymous: bool,
}

impl Authorizer {
    pub fn open(config: &AuthConfig) -> Result<Authorizer, AuthError> {
        let passwords = config.password_file.as_deref().map(PasswordFile::load).transpose()?;
        let acl = config.acl_file.as_deref().map(Acl::load).transpose()?;
        if passwords.is_none() && !(config.admins.is_empty() && config.readers.is_empty()) {
            return Err(AuthError::Invalid(
                "admins and readers name users of a password file: set password_file too".into(),
            ));
        }
        if let Some(passwords) = &passwords {
            for user in config.admins.iter().chain(&config.readers).filter(|u| !passwords.contains(u)) {
                tracing::warn!(user, "an admin or reader is not in the password file: only a token can act as them");
            }
        }
        let sessions = match config.session_key_file.as_deref().map(session::Sessions::open) {
            Some(Err(e @ AuthError::File { .. })) => {
                tracing::warn!(error = %e, "the session key could not be kept: logins last until Pacer stops");
                Some(session::Sessions::ephemeral()?)
            }
            other => other.transpose()?,
        };
        Ok(Authorizer {
            passwords,
            acl,
            tokens: config.token_file.clone().map(token::Tokens::new),
            sessions,
            admins: config.admins.iter().cloned().collect(),
            readers: config.readers.iter().cloned().collect(),
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// No users, no ACL: everyone may do everything (tests, and Pacer on loopback).
    pub fn open_to_everyone() -> Authorizer {
        Authorizer::open(&AuthConfig { allow_anonymous: true, ..Default::default() }).expect("nothing to load")
    }

    /// Only `acl` decides, and anyone may connect (the MQTT fuzzer's broker).
    pub fn with_acl(acl: Acl) -> Authorizer {
        Authorizer { acl: Some(acl), ..Authorizer::open_to_everyone() }
    }

    /// Whether names are checked against a password file.
    pub fn checks_passwords(&self) -> bool {
        self.passwords.is_some()
    }

    /// Whether an ACL file decides what users may do.
    pub fn has_acl(&self) -> bool {
        self.acl.is_some()
    }

    /// Whether a caller without credentials gets in.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// A device that names itself but proves nothing (OsmAnd's id): a plain user, whatever
    /// the name, so the ACL alone decides; never an admin or reader.
    pub fn device(&self, name: &str) -> Identity {
        Identity { user: Some(name.to_string()), role: Role::User }
    }

    /// The identity of a user whose credentials were checked before (the owner of a stored
    /// MQTT session, back after a restart); None: anonymous.
    pub fn acting_as(&self, user: Option<&str>) -> Identity {
        self.identity(user)
    }

    fn identity(&self, user: Option<&str>) -> Identity {
        let role = match user {
            // Names are only vouched for by a password file (or a token made for them).
            Some(u) if self.passwords.is_some() && self.admins.contains(u) => Role::Admin,
            Some(u) if self.passwords.is_some() && self.readers.contains(u) => Role::Reader,
            _ if self.passwords.is_none() && self.acl.is_none() => Role::Admin,
            _ => Role::User,
        };
        Identity { user: user.map(str::to_string), role }
    }

    /// The caller without credentials, if allowed.
    pub fn anonymous(&self) -> Result<Identity, Refused> {
        if self.allow_anonymous {
            Ok(self.identity(None))
        } else {
            Err(Refused::Anonymous)
        }
    }

    /// A user name and password (MQTT CONNECT, HTTP Basic); no name: anonymous. Without a
    /// password file the name is taken as given, as mosquitto does.
    pub fn login(&self, user: Option<&str>, password: Option<&[u8]>) -> Result<Identity, Refused> {
        let Some(user) = user else { return self.anonymous() };
        match &self.passwords {
            Some(passwords) if !passwords.verify(user, password.unwrap_or_default()) => Err(Refused::BadCredentials),
            Some(_) => Ok(self.identity(Some(user))),
            None if self.allow_anonymous => Ok(self.identity(Some(user))),
            None => Err(Refused::BadCredentials),
        }
    }

    /// A bearer token from `pacer token create`.
    pub fn token(&self, token: &str) -> Result<Identity, Refused> {
        let tokens = self.tokens.as_ref().ok_or(Refused::BadCredentials)?;
        Ok(self.identity(Some(&tokens.verify(token)?)))
    }

    /// A session cookie value for a user who logged in with a password.
    pub fn start_session(&self, who: &Identity) -> Option<String> {
        let (sessions, passwords, user) = (self.sessions.as_ref()?, self.passwords.as_ref()?, who.user()?);
        let fingerprint = passwords.fingerprint(user)?;
        match sessions.start(user, &fingerprint) {
            Ok(cookie) => Some(cookie),
            Err(e) => {
                tracing::error!(error = %e, "could not start a session");
                None
            }
        }
    }

    /// The user a session cookie value belongs to.
    pub fn session(&self, cookie: &str) -> Result<Identity, Refused> {
        let (Some(sessions), Some(passwords)) = (&self.sessions, &self.passwords) else {
            return Err(Refused::BadCredentials);
        };
        let user = sessions.verify(cookie, |u| passwords.fingerprint(u))?;
        Ok(self.identity(Some(&user)))
    }

    /// Logging out: the session of this cookie value ends now. Only a valid one is kept
    /// as ended, so made-up cookies cannot fill the list.
    pub fn end_session(&self, cookie: &str) {
        if let (Some(sessions), Ok(_)) = (&self.sessions, self.session(cookie)) {
            sessions.end(cookie);
        }
    }

    /// Whether `who` may publish to (Write) or receive from (Read) an MQTT topic.
    /// `client_id` fills `%c` in ACL patterns; None off MQTT.
    pub fn may_use_topic(&self, who: &Identity, client_id: Option<&str>, topic: &str, access: Access) -> bool {
        if who.is_admin() || (who.role == Role::Reader && access == Access::Read) {
            return true;
        }
        self.acl.as_ref().is_none_or(|acl| acl.allows_topic(who.user(), client_id, topic, access))
    }

    /// Whether `who` may subscribe to an MQTT topic filter.
    pub fn may_subscribe(&self, who: &Identity, client_id: Option<&str>, filter: &str) -> bool {
        match (who.role, &self.acl) {
            (Role::Admin | Role::Reader, _) | (_, None) => true,
            (_, Some(acl)) => acl.allows_subscription(who.user(), client_id, filter),
        }
    }

    /// Whether `who` may read `record` of `stream`: by its MQTT topic, or its stream topic.
    pub fn may_read_record(&self, who: &Identity, stream: &str, record: &Record) -> bool {
        let rules = self.acl.as_ref().map(|acl| acl.rules_for(who.user(), None));
        readable(who, rules.as_ref(), stream, record)
    }

    /// Whether `who` may append a record with `key` to `stream` (over HTTP): admins
    /// anywhere but internal streams, readers nowhere, others where the ACL lets them
    /// write its stream topic.
    pub fn may_write_stream(&self, who: &Identity, stream: &str, key: Option<&[u8]>) -> bool {
        if pacer_log::is_internal(stream) {
            return false;
        }
        match who.role {
            Role::Admin => true,
            Role::Reader => false,
            Role::User => self.may_use_topic(who, None, &stream_topic(stream, key), Access::Write),
        }
    }

    /// Whether `who` may change the SQL catalog: CREATE, DROP, INSERT INTO, TERMINATE.
    pub fn may_change_catalog(&self, who: &Identity) -> bool {
        who.is_admin()
    }

    /// Whether `who` reads every stream but the internal ones, and `/metrics`: admins and
    /// readers (everyone, on a Pacer without a password file or ACL).
    pub fn may_read_everything(&self, who: &Identity) -> bool {
        matches!(who.role, Role::Admin | Role::Reader)
    }

    /// What `who` may read of the records leaving Pacer: None for admins (everything).
    /// The caller's rules are worked out once, not per record.
    pub fn record_filter(&self, who: &Identity) -> Option<RecordFilter> {
        if who.is_admin() {
            return None;
        }
        let rules = self.acl.as_ref().map(|acl| acl.rules_for(who.user(), None));
        let who = who.clone();
        Some(Arc::new(move |stream: &str, record: &Record| readable(&who, rules.as_ref(), stream, record)))
    }
}

/// [`Authorizer::may_read_record`], with `who`'s ACL rules (None: no ACL) at hand.
fn readable(who: &Identity, rules: Option<&acl::Rules>, stream: &str, record: &Record) -> bool {
    if pacer_log::is_internal(stream) {
        return who.is_admin();
    }
    let Some(rules) = rules.filter(|_| who.role == Role::User) else { return true };
    let topic = record.header(header::TOPIC).and_then(|t| std::str::from_utf8(t).ok());
    topic.is_some_and(|t| rules.allows_topic(t, Access::Read))
        || rules.allows_topic(&stream_topic(stream, record.key.as_deref()), Access::Read)
}

/// The topic a record without an MQTT topic is judged by: `$stream/{stream}/{key}`.
pub fn stream_topic(stream: &str, key: Option<&[u8]>) -> String {
    match key {
        Some(key) => format!("{STREAM_TOPIC_PREFIX}{stream}/{}", String::from_utf8_lossy(key)),
        None => format!("{STREAM_TOPIC_PREFIX}{stream}"),
    }
}

fn random(buf: &mut [u8]) -> Result<(), AuthError> {
    getrandom::fill(buf).map_err(|e| AuthError::Invalid(format!("no randomness from the system: {e}")))
}

/// Writes a file only its owner may read, whole or not at all (a temporary file renamed
/// over it), so a server rereading it never sees half of it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn authorizer(dir: &Path, acl: &str, allow_anonymous: bool) -> Arc<Authorizer> {
        let (passwd, acl_file) = (dir.join("passwd"), dir.join("acl"));
        for (user, password) in [("alice", "a"), ("bob", "b"), ("ops", "o"), ("root", "r")] {
            update_password_file(&passwd, user, Some(password)).unwrap();
        }
        std::fs::write(&acl_file, acl).unwrap();
        Arc::new(
            Authorizer::open(&AuthConfig {
                password_file: Some(passwd),
                acl_file: Some(acl_file),
                token_file: Some(dir.join("tokens")),
                session_key_file: Some(dir.join("session.key")),
                admins: vec!["root".into()],
                readers: vec!["ops".into()],
                allow_anonymous,
            })
            .unwrap(),
        )
    }

    fn record(topic: Option<&str>, key: &str) -> Record {
        Record {
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: Some(Bytes::from(key.to_string())),
            value: Bytes::from_static(b"{}"),
            headers: topic.map(|t| vec![(header::TOPIC.to_string(), Bytes::from(t.to_string()))]).unwrap_or_default(),
        }
    }

    #[test]
    fn roles_and_the_acl_decide_what_each_user_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authorizer(
            dir.path(),
            "user alice\ntopic readwrite owntracks/alice/#\ntopic read $stream/race_status/#\n\
             topic write $stream/notes/alice/#\n",
            false,
        );
        let alice = auth.login(Some("alice"), Some(b"a")).unwrap();
        let ops = auth.login(Some("ops"), Some(b"o")).unwrap();
        let root = auth.login(Some("root"), Some(b"r")).unwrap();
        assert_eq!((alice.role(), ops.role(), root.role()), (Role::User, Role::Reader, Role::Admin));
        assert_eq!(auth.login(Some("alice"), Some(b"x")), Err(Refused::BadCredentials));
        assert_eq!(auth.login(None, None), Err(Refused::Anonymous));

        let own = record(Some("owntracks/alice/phone"), "alice/phone");
        let other = record(Some("owntracks/bob/phone"), "bob/phone");
        let league = record(None, "bob");
        for (who, own_ok, other_ok, league_ok) in [(&alice, true, false, true), (&ops, true, true, true)] {
            assert_eq!(auth.may_read_record(who, "locations", &own), own_ok);
            assert_eq!(auth.may_read_record(who, "locations", &other), other_ok);
            assert_eq!(auth.may_read_record(who, "race_status", &league), league_ok);
        }
        assert!(!auth.may_read_record(&alice, "race", &record(None, "alice")), "a stream topic not granted");
        assert!(!auth.may_read_record(&ops, "__catalog", &league), "internal: admins only");
        assert!(auth.may_read_record(&root, "__catalog", &league));

        assert!(auth.may_write_stream(&alice, "notes", Some(b"alice/1")));
        assert!(!auth.may_write_stream(&alice, "notes", Some(b"bob/1")));
        assert!(!auth.may_write_stream(&ops, "notes", Some(b"alice/1")), "readers change nothing");
        assert!(auth.may_write_stream(&root, "anything", None));
        assert!(!auth.may_write_stream(&root, "__retained", None), "internal streams: nobody");
        assert!(auth.may_change_catalog(&root) && !auth.may_change_catalog(&ops) && !auth.may_change_catalog(&alice));

        assert!(auth.may_subscribe(&ops, Some("c"), "#") && !auth.may_subscribe(&alice, Some("c"), "#"));
        assert!(!auth.may_use_topic(&ops, Some("c"), "owntracks/ops/x", Access::Write), "readers publish by the ACL");
        let filter = auth.record_filter(&alice).unwrap();
        assert!(filter("locations", &own) && !filter("locations", &other));
        assert!(auth.record_filter(&root).is_none());
    }

    #[test]
    fn tokens_and_sessions_act_as_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let auth = authorizer(dir.path(), "", true);
        assert_eq!(auth.anonymous().unwrap().user(), None);
        let token = token::create(&dir.path().join("tokens"), "grafana", "ops", None).unwrap();
        assert_eq!(auth.token(&token).unwrap().role(), Role::Reader);
        assert_eq!(auth.token("pacer_forged"), Err(Refused::BadCredentials));

        let alice = auth.login(Some("alice"), Some(b"a")).unwrap();
        let cookie = auth.start_session(&alice).unwrap();
        assert_eq!(auth.session(&cookie), Ok(alice));
        update_password_file(&dir.path().join("passwd"), "alice", Some("new")).unwrap();
        let reloaded = authorizer(dir.path(), "", true);
        assert_eq!(reloaded.session(&cookie), Err(Refused::BadCredentials), "a new password ends old sessions");
    }

    #[test]
    fn without_a_password_file_everyone_may_do_everything() {
        let open = Authorizer::open_to_everyone();
        let anyone = open.login(Some("whoever"), None).unwrap();
        assert!(anyone.is_admin() && open.anonymous().unwrap().is_admin());
        let err = Authorizer::open(&AuthConfig { admins: vec!["root".into()], ..Default::default() }).err().unwrap();
        assert!(err.to_string().contains("password_file"), "{err}");
    }
}
