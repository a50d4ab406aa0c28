//! Passwords and access control in mosquitto's file formats, so an existing mosquitto
//! password file and ACL file work unchanged.
//!
//! Password lines are `user:$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512, mosquitto
//! 2's default) or `user:$6$<salt>$<hash>` (SHA-512 of password then salt, mosquitto 1.x),
//! base64. ACL lines are `user NAME`, `topic [read|write|readwrite|deny] TOPIC` (for the
//! user named last, or anonymous clients before any `user` line) and `pattern [...] TOPIC`
//! (everyone, with `%u` = username and `%c` = client id). Without a matching rule: denied.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

use crate::topic;

/// mosquitto_passwd's defaults for new hashes.
const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

enum Hash {
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> anyhow::Result<PasswordFile> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("password file {}: {e}", path.display()))?;
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = parse_line(line)
                .map_err(|e| anyhow::anyhow!("password file {}, line {}: {e}", path.display(), i + 1))?;
            users.insert(user, hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(stored) = self.users.get(user) else { return false };
        let computed = match stored {
            Hash::Pbkdf2 { iterations, salt, hash } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
            Hash::Sha512 { salt, .. } => Sha512::new().chain_update(password).chain_update(salt).finalize().to_vec(),
        };
        let expected = match stored {
            Hash::Pbkdf2 { hash, .. } | Hash::Sha512 { hash, .. } => hash,
        };
        computed.ct_eq(expected).into()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn parse_line(line: &str) -> Result<(String, Hash), String> {
    let (user, rest) = line.split_once(':').ok_or("expected user:hash")?;
    let b64 = |s: &str| B64.decode(s).map_err(|e| format!("bad base64 ({e})"));
    let parts: Vec<&str> = rest.split('$').collect();
    let hash = match parts.as_slice() {
        ["", "7", iterations, salt, hash] => Hash::Pbkdf2 {
            iterations: iterations.parse().map_err(|_| "bad iteration count")?,
            salt: b64(salt)?,
            hash: b64(hash)?,
        },
        ["", "6", salt, hash] => Hash::Sha512 { salt: b64(salt)?, hash: b64(hash)? },
        _ => {
            return Err(
                "expected a $7$ (PBKDF2-SHA512) or $6$ (SHA-512) hash; plain text passwords are not accepted".into()
            )
        }
    };
    Ok((user.to_string(), hash))
}

/// A `$7$` line for `user`, as `mosquitto_passwd` writes it.
pub fn hash_line(user: &str, password: &str) -> anyhow::Result<String> {
    anyhow::ensure!(!user.is_empty() && !user.contains(':'), "user names must be non-empty and without ':'");
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| anyhow::anyhow!("no randomness for the salt: {e}"))?;
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, PBKDF2_ITERATIONS, &mut hash);
    Ok(format!("{user}:$7${PBKDF2_ITERATIONS}${}${}", B64.encode(salt), B64.encode(hash)))
}

/// Adds or replaces (or with None removes) `user` in a password file, keeping other lines.
pub fn update_password_file(path: &Path, user: &str, password: Option<&str>) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("password file {}: {e}", path.display()),
    };
    let mut lines: Vec<String> =
        text.lines().filter(|l| l.split_once(':').is_none_or(|(u, _)| u != user)).map(str::to_string).collect();
    if let Some(password) = password {
        lines.push(hash_line(user, password)?);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    std::fs::write(path, out).map_err(|e| anyhow::anyhow!("writing password file {}: {e}", path.display()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!((self, access), (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    grant: Grant,
    topic: String,
}

#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> anyhow::Result<Acl> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("ACL file {}: {e}", path.display()))?;
        Acl::parse(&text).map_err(|(line, e)| anyhow::anyhow!("ACL file {}, line {line}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> Result<Acl, (usize, String)> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((i + 1, "user needs a name".into()));
                    }
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (grant, topic) = match rest.split_once(char::is_whitespace) {
                        Some(("read", t)) => (Grant::Read, t),
                        Some(("write", t)) => (Grant::Write, t),
                        Some(("readwrite", t)) => (Grant::ReadWrite, t),
                        Some(("deny", t)) => (Grant::Deny, t),
                        _ => (Grant::ReadWrite, rest),
                    };
                    let topic = topic.trim();
                    topic::validate_topic_filter(topic).map_err(|e| (i + 1, format!("{keyword} {topic:?}: {e}")))?;
                    let rule = Rule { grant, topic: topic.to_string() };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => return Err((i + 1, format!("unknown keyword {other:?}: expected user, topic or pattern"))),
            }
        }
        Ok(acl)
    }

    /// The rules that apply to a client, with `%u`/`%c` filled in.
    fn rules(&self, username: Option<&str>, client_id: &str) -> Vec<Rule> {
        let own = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        let patterns = self.patterns.iter().filter_map(|r| {
            if r.topic.contains("%u") && username.is_none() {
                return None; // a username pattern says nothing about anonymous clients
            }
            let topic = r.topic.replace("%u", username.unwrap_or("")).replace("%c", client_id);
            Some(Rule { grant: r.grant, topic })
        });
        own.into_iter().chain(patterns).collect()
    }

    /// Whether the client may publish to (Write) or receive from (Read) `topic_name`.
    pub fn allows_topic(&self, username: Option<&str>, client_id: &str, topic_name: &str, access: Access) -> bool {
        let rules = self.rules(username, client_id);
        let matching = rules.iter().filter(|r| topic::matches(&r.topic, topic_name));
        let mut allowed = false;
        for r in matching {
            if r.grant == Grant::Deny {
                return false;
            }
            allowed |= r.grant.allows(access);
        }
        allowed
    }

    /// Whether the client may subscribe to `filter`: some read rule covers every topic it
    /// can match and no deny rule covers all of them. Denied topics inside an allowed
    /// subscription are held back message by message ([`Acl::allows_topic`] on delivery).
    pub fn allows_subscription(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        let rules = self.rules(username, client_id);
        if rules.iter().any(|r| r.grant == Grant::Deny && covers(&r.topic, filter)) {
            return false;
        }
        rules.iter().any(|r| r.grant.allows(Access::Read) && covers(&r.topic, filter))
    }
}

/// Whether every topic `filter` matches is matched by `rule` too.
fn covers(rule: &str, filter: &str) -> bool {
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(x)) if x != "#" => {}
            (Some(a), Some(b)) if a == b && b != "+" && b != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd -b` (2.0.11): alice with the default, bob -H sha512.
    const MOSQUITTO_FILE: &str = "alice:$7$101$q25gONOyUZvn+n26$cwCMfW9puTB90juG2H183inpoVabPxPmEIxI/laF+7yQpPD1u4+YPIrSoCjrR0ErUQzpWkl3xZXvuAX4WzZjcw==\nbob:$6$WzUeXXiQ0EOS+lPy$FS46L1zt5a6TZyAwxG+qFXJuAI51qjs6kNtGfLiXVqoa8/lrohUaPqEw30V5In5+8nkZlA5Ksv23MJ47ThCM2w==\n";

    #[test]
    fn mosquitto_password_files_verify() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, MOSQUITTO_FILE).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("alice", b"secret1"));
        assert!(!file.verify("alice", b"secret2"));
        assert!(file.verify("bob", b"secret2"));
        assert!(!file.verify("carol", b"secret1"));

        update_password_file(&path, "carol", Some("pw3")).unwrap();
        update_password_file(&path, "bob", None).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        assert!(file.verify("carol", b"pw3") && file.verify("alice", b"secret1") && !file.verify("bob", b"secret2"));

        std::fs::write(&path, "dave:plaintext\n").unwrap();
        let err = PasswordFile::load(&path).err().unwrap().to_string();
        assert!(err.contains("line 1") && err.contains("plain text"), "{err}");
    }

    #[test]
    fn acl_rules_work_as_in_mosquitto() {
        let acl = Acl::parse(
            "topic read public/#\n\nuser alice\ntopic readwrite owntracks/alice/#\ntopic deny owntracks/alice/secret\n\
             pattern write devices/%c/status\npattern read owntracks/%u/#\n",
        )
        .unwrap();
        let a = Some("alice");
        assert!(acl.allows_topic(a, "phone", "owntracks/alice/phone", Access::Write));
        assert!(!acl.allows_topic(a, "phone", "owntracks/bob/phone", Access::Write), "alice cannot publish as bob");
        assert!(!acl.allows_topic(a, "phone", "owntracks/alice/secret", Access::Write), "deny wins");
        assert!(acl.allows_topic(a, "phone", "devices/phone/status", Access::Write), "%c pattern");
        assert!(!acl.allows_topic(a, "phone", "devices/other/status", Access::Write));
        assert!(acl.allows_topic(Some("bob"), "b1", "owntracks/bob/x", Access::Read), "%u pattern");
        assert!(acl.allows_topic(None, "anon", "public/news", Access::Read), "anonymous rules");
        assert!(!acl.allows_topic(None, "anon", "public/news", Access::Write));

        assert!(acl.allows_subscription(a, "phone", "owntracks/alice/+"));
        assert!(!acl.allows_subscription(a, "phone", "owntracks/#"), "wider than granted");
        assert!(acl.allows_subscription(a, "phone", "owntracks/alice/#"));
        assert!(!acl.allows_topic(a, "phone", "owntracks/alice/secret", Access::Read), "held back on delivery");
        assert!(!acl.allows_subscription(a, "phone", "owntracks/alice/secret"), "wholly denied");
        assert!(Acl::parse("topic bogus x y\nwhatever z").unwrap_err().0 == 2);
    }
}
