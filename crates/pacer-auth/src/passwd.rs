//! Password files in mosquitto's format, so an existing mosquitto password file works
//! unchanged: `user:$7$<iterations>$<salt>$<hash>` (PBKDF2-HMAC-SHA512, mosquitto 2's
//! default) or `user:$6$<salt>$<hash>` (SHA-512 of password then salt, mosquitto 1.x), base64.

use std::collections::HashMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use crate::AuthError;

/// mosquitto_passwd's defaults for new hashes.
const PBKDF2_ITERATIONS: u32 = 101;
const SALT_LEN: usize = 12;

enum Hash {
    Pbkdf2 { iterations: u32, salt: Vec<u8>, hash: Vec<u8> },
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
}

impl Hash {
    fn stored(&self) -> &[u8] {
        match self {
            Hash::Pbkdf2 { hash, .. } | Hash::Sha512 { hash, .. } => hash,
        }
    }
}

pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl PasswordFile {
    pub fn load(path: &Path) -> Result<PasswordFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::file("password file", path, e))?;
        PasswordFile::parse(&text).map_err(|(line, message)| AuthError::Line {
            what: "password file",
            path: path.into(),
            line,
            message,
        })
    }

    fn parse(text: &str) -> Result<PasswordFile, (usize, String)> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = parse_line(line).map_err(|e| (i + 1, e))?;
            users.insert(user, hash);
        }
        Ok(PasswordFile { users })
    }

    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(stored) = self.users.get(user) else {
            // As long as for a known user, so the time taken does not tell who exists.
            let mut out = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(password, b"no such user", PBKDF2_ITERATIONS, &mut out);
            return false;
        };
        let computed = match stored {
            Hash::Pbkdf2 { iterations, salt, hash } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
            Hash::Sha512 { salt, .. } => Sha512::new().chain_update(password).chain_update(salt).finalize().to_vec(),
        };
        computed.ct_eq(stored.stored()).into()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// A digest of `user`'s stored hash: what a session signed for the user is bound to, so
    /// a changed password (or a removed user) ends the sessions opened with the old one.
    pub(crate) fn fingerprint(&self, user: &str) -> Option<[u8; 32]> {
        self.users.get(user).map(|h| Sha256::digest(h.stored()).into())
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
pub fn hash_line(user: &str, password: &str) -> Result<String, AuthError> {
    if user.is_empty() || user.contains(':') {
        return Err(AuthError::Invalid("user names must be non-empty and without ':'".into()));
    }
    let mut salt = [0u8; SALT_LEN];
    crate::random(&mut salt)?;
    let mut hash = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), &salt, PBKDF2_ITERATIONS, &mut hash);
    Ok(format!("{user}:$7${PBKDF2_ITERATIONS}${}${}", B64.encode(salt), B64.encode(hash)))
}

/// Adds or replaces (or with None removes) `user` in a password file, keeping other lines.
pub fn update_password_file(path: &Path, user: &str, password: Option<&str>) -> Result<(), AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AuthError::file("password file", path, e)),
    };
    let mut lines: Vec<String> =
        text.lines().filter(|l| l.split_once(':').is_none_or(|(u, _)| u != user)).map(str::to_string).collect();
    if let Some(password) = password {
        lines.push(hash_line(user, password)?);
    }
    let mut out = lines.join("\n");
    out.push('\n');
    crate::write_private(path, out.as_bytes()).map_err(|e| AuthError::file("password file", path, e))
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
    fn a_new_password_changes_the_fingerprint() {
        let first = PasswordFile::parse(&hash_line("alice", "one").unwrap()).unwrap();
        let second = PasswordFile::parse(&hash_line("alice", "two").unwrap()).unwrap();
        assert!(first.fingerprint("alice").is_some());
        assert_ne!(first.fingerprint("alice"), second.fingerprint("alice"));
        assert_eq!(first.fingerprint("bob"), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_password_file_parses_or_names_a_line(text in "([a-z]{0,4}:?[$]?[0-9]?[$]?[A-Za-z0-9+/=]{0,20}[$]?[A-Za-z0-9+/=]{0,8}\n){0,6}") {
            if let Err((line, message)) = PasswordFile::parse(&text) {
                proptest::prop_assert!(line >= 1 && !message.is_empty());
            }
        }
    }
}
