//! Dashboard sessions: a cookie naming the user, signed with a key kept in the data
//! directory (HMAC-SHA256), so it survives restarts and nothing is stored per session.
//! The signature covers a digest of the user's password hash, so changing the password (or
//! removing the user) ends every session opened with the old one; logging out ends one
//! session at once (its nonce is kept beside the key until it would have expired anyway, so
//! a restart does not bring it back).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::{AuthError, Refused};

/// How long a login lasts: a race day, or an operator's shift.
pub const SESSION_MS: i64 = 24 * 3600 * 1000;
const KEY_LEN: usize = 32;

pub(crate) struct Sessions {
    key: [u8; KEY_LEN],
    /// Nonces of sessions ended by logging out, with when they would have expired.
    ended: Mutex<HashMap<String, i64>>,
    /// Where they are kept (None: in memory only).
    ended_file: Option<PathBuf>,
}

impl Sessions {
    /// A key of this process only: sessions end when it stops.
    pub fn ephemeral() -> Result<Sessions, AuthError> {
        let mut key = [0u8; KEY_LEN];
        crate::random(&mut key)?;
        Ok(Sessions { key, ended: Mutex::new(HashMap::new()), ended_file: None })
    }

    /// The signing key in `path`, made on first use (readable by this user only).
    pub fn open(path: &Path) -> Result<Sessions, AuthError> {
        let key = match std::fs::read(path) {
            Ok(bytes) if bytes.len() == KEY_LEN => bytes.try_into().expect("length checked"),
            Ok(_) => return Err(AuthError::Invalid(format!("{}: not a session key; remove it", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                crate::random(&mut key)?;
                crate::write_private(path, &key).map_err(|e| AuthError::file("session key", path, e))?;
                key
            }
            Err(e) => return Err(AuthError::file("session key", path, e)),
        };
        let ended_file = path.with_extension("ended");
        let now = pacer_core::now_ms();
        let ended: HashMap<String, i64> = std::fs::read_to_string(&ended_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (nonce, expires) = line.split_once(' ')?;
                Some((nonce.to_string(), expires.parse().ok()?))
            })
            .filter(|(_, expires)| *expires > now)
            .collect();
        Ok(Sessions { key, ended: Mutex::new(ended), ended_file: Some(ended_file) })
    }

    fn mac(&self, user: &str, expires: i64, nonce: &str, fingerprint: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for part in [user.as_bytes(), expires.to_string().as_bytes(), nonce.as_bytes(), fingerprint] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// A cookie value for `user`, whose password hash digests to `fingerprint`.
    pub fn start(&self, user: &str, fingerprint: &[u8; 32]) -> Result<String, AuthError> {
        let expires = pacer_core::now_ms() + SESSION_MS;
        let mut nonce = [0u8; 16];
        crate::random(&mut nonce)?;
        let nonce = B64URL.encode(nonce);
        let tag = B64URL.encode(self.mac(user, expires, &nonce, fingerprint).finalize().into_bytes());
        Ok(format!("{}.{expires}.{nonce}.{tag}", B64URL.encode(user)))
    }

    /// The user a cookie value was signed for; `fingerprint` looks the user's password up.
    pub fn verify(&self, cookie: &str, fingerprint: impl Fn(&str) -> Option<[u8; 32]>) -> Result<String, Refused> {
        let parts: Vec<&str> = cookie.split('.').collect();
        let [user, expires, nonce, tag] = parts.as_slice() else { return Err(Refused::BadCredentials) };
        let user = B64URL.decode(user).ok().and_then(|u| String::from_utf8(u).ok()).ok_or(Refused::BadCredentials)?;
        let expires: i64 = expires.parse().map_err(|_| Refused::BadCredentials)?;
        let tag = B64URL.decode(tag).map_err(|_| Refused::BadCredentials)?;
        let fingerprint = fingerprint(&user).ok_or(Refused::BadCredentials)?;
        self.mac(&user, expires, nonce, &fingerprint).verify_slice(&tag).map_err(|_| Refused::BadCredentials)?;
        if expires <= pacer_core::now_ms() {
            return Err(Refused::Expired);
        }
        if self.ended.lock().expect("not poisoned").contains_key(*nonce) {
            return Err(Refused::Expired);
        }
        Ok(user)
    }

    /// Ends the session of a cookie value that verified (logging out); others of the same
    /// user go on.
    pub fn end(&self, cookie: &str) {
        let parts: Vec<&str> = cookie.split('.').collect();
        let [_, expires, nonce, _] = parts.as_slice() else { return };
        let Ok(expires) = expires.parse::<i64>() else { return };
        let now = pacer_core::now_ms();
        let mut ended = self.ended.lock().expect("not poisoned");
        ended.retain(|_, e| *e > now);
        ended.insert(nonce.to_string(), expires);
        if let Some(file) = &self.ended_file {
            let lines: String = ended.iter().map(|(nonce, expires)| format!("{nonce} {expires}\n")).collect();
            if let Err(e) = crate::write_private(file, lines.as_bytes()) {
                tracing::warn!(file = %file.display(), error = %e, "a logout is not kept: it lasts until Pacer stops");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_signed_bound_to_the_password_and_ends_on_logout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.key");
        let sessions = Sessions::open(&path).unwrap();
        let (pw1, pw2) = ([1u8; 32], [2u8; 32]);
        let cookie = sessions.start("alice", &pw1).unwrap();
        assert_eq!(sessions.verify(&cookie, |_| Some(pw1)), Ok("alice".into()));
        assert_eq!(sessions.verify(&cookie, |_| Some(pw2)), Err(Refused::BadCredentials), "password changed");
        assert_eq!(sessions.verify(&cookie, |_| None), Err(Refused::BadCredentials), "user removed");

        let forged = format!("{}{}", B64URL.encode("admin"), &cookie[cookie.find('.').unwrap()..]);
        assert_eq!(sessions.verify(&forged, |_| Some(pw1)), Err(Refused::BadCredentials), "another name");

        let reopened = Sessions::open(&path).unwrap();
        assert_eq!(reopened.verify(&cookie, |_| Some(pw1)), Ok("alice".into()), "the key survives a restart");
        let other = Sessions::open(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.verify(&cookie, |_| Some(pw1)), Err(Refused::BadCredentials), "another key");

        let second = sessions.start("alice", &pw1).unwrap();
        sessions.end(&cookie);
        assert_eq!(sessions.verify(&cookie, |_| Some(pw1)), Err(Refused::Expired), "logged out");
        assert_eq!(sessions.verify(&second, |_| Some(pw1)), Ok("alice".into()), "other sessions go on");
        let restarted = Sessions::open(&path).unwrap();
        assert_eq!(restarted.verify(&cookie, |_| Some(pw1)), Err(Refused::Expired), "still logged out after a restart");
        assert_eq!(restarted.verify(&second, |_| Some(pw1)), Ok("alice".into()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// No cookie but one Pacer signed is taken, whatever its shape.
        #[test]
        fn made_up_cookies_are_refused(cookie in "[A-Za-z0-9_.-]{0,120}") {
            let sessions = Sessions::ephemeral().unwrap();
            proptest::prop_assert!(sessions.verify(&cookie, |_| Some([0u8; 32])).is_err());
            sessions.end(&cookie);
        }
    }
}
