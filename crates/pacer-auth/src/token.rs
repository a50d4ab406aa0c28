//! Bearer tokens for scripts, Prometheus and Grafana: `pacer token create NAME --user U`
//! prints a token once; the token file keeps only its SHA-256, the user it acts as and
//! when it expires, one JSON object a line. Revoking removes the line. The server rereads
//! the file when it changes, so a created or revoked token counts at the next request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{AuthError, Refused};

/// What every token starts with, so a leaked one is easy to recognise (and to search for).
const PREFIX: &str = "pacer_";

/// A token as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub user: String,
    /// ms since the Unix epoch.
    pub created: i64,
    /// ms since the Unix epoch; None: never.
    pub expires: Option<i64>,
    sha256: String,
}

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<Vec<TokenInfo>, AuthError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuthError::file("token file", path, e)),
    };
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        tokens.push(serde_json::from_str(line).map_err(|e| AuthError::Line {
            what: "token file",
            path: path.into(),
            line: i + 1,
            message: e.to_string(),
        })?);
    }
    Ok(tokens)
}

fn write(path: &Path, tokens: &[TokenInfo]) -> Result<(), AuthError> {
    let text: String = tokens.iter().map(|t| serde_json::to_string(t).expect("plain fields") + "\n").collect();
    crate::write_private(path, text.as_bytes()).map_err(|e| AuthError::file("token file", path, e))
}

/// Makes a token named `name` acting as `user`; returns it (the file keeps only its hash).
pub fn create(path: &Path, name: &str, user: &str, expires: Option<i64>) -> Result<String, AuthError> {
    if name.is_empty() || user.is_empty() {
        return Err(AuthError::Invalid("a token needs a name and a user".into()));
    }
    let mut tokens = read(path)?;
    if tokens.iter().any(|t| t.name == name) {
        return Err(AuthError::Invalid(format!(
            "a token named {name:?} exists: revoke it first, or pick another name"
        )));
    }
    let mut secret = [0u8; 32];
    crate::random(&mut secret)?;
    let token = format!("{PREFIX}{}", B64URL.encode(secret));
    tokens.push(TokenInfo {
        name: name.into(),
        user: user.into(),
        created: pacer_core::now_ms(),
        expires,
        sha256: digest(&token),
    });
    write(path, &tokens)?;
    Ok(token)
}

/// Removes the token named `name`; false when there was none.
pub fn revoke(path: &Path, name: &str) -> Result<bool, AuthError> {
    let mut tokens = read(path)?;
    let before = tokens.len();
    tokens.retain(|t| t.name != name);
    if tokens.len() == before {
        return Ok(false);
    }
    write(path, &tokens)?;
    Ok(true)
}

pub fn list(path: &Path) -> Result<Vec<TokenInfo>, AuthError> {
    read(path)
}

/// The token file as the server reads it: reread when its size or time changes.
pub(crate) struct Tokens {
    path: PathBuf,
    loaded: Mutex<(Option<Stamp>, HashMap<String, TokenInfo>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
}

impl Tokens {
    pub fn new(path: PathBuf) -> Tokens {
        Tokens { path, loaded: Mutex::new((None, HashMap::new())) }
    }

    /// The user `token` acts as.
    pub fn verify(&self, token: &str) -> Result<String, Refused> {
        if !token.starts_with(PREFIX) {
            return Err(Refused::BadCredentials);
        }
        let stamp = std::fs::metadata(&self.path).ok().map(|m| Stamp { modified: m.modified().ok(), len: m.len() });
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if loaded.0 != stamp {
            match read(&self.path) {
                Ok(tokens) => *loaded = (stamp, tokens.into_iter().map(|t| (t.sha256.clone(), t)).collect()),
                // Kept as it was: a half-edited file must not lock everyone out.
                Err(e) => {
                    tracing::error!(error = %e, "the token file did not load; the tokens known before still count")
                }
            }
        }
        let info = loaded.1.get(&digest(token)).ok_or(Refused::BadCredentials)?;
        if info.expires.is_some_and(|t| t <= pacer_core::now_ms()) {
            return Err(Refused::Expired);
        }
        Ok(info.user.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_revoked_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let tokens = Tokens::new(path.clone());
        assert_eq!(tokens.verify("pacer_nothing"), Err(Refused::BadCredentials), "no file yet");

        let grafana = create(&path, "grafana", "ops", None).unwrap();
        let old = create(&path, "old", "ops", Some(pacer_core::now_ms() - 1)).unwrap();
        assert!(create(&path, "grafana", "admin", None).is_err(), "names are unique");
        assert_eq!(tokens.verify(&grafana), Ok("ops".into()));
        assert_eq!(tokens.verify(&old), Err(Refused::Expired));
        assert_eq!(tokens.verify(&format!("{grafana}x")), Err(Refused::BadCredentials));
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&grafana), "only the hash is kept");

        assert!(revoke(&path, "grafana").unwrap());
        assert!(!revoke(&path, "grafana").unwrap());
        assert_eq!(tokens.verify(&grafana), Err(Refused::BadCredentials), "revoked at once");
        assert_eq!(list(&path).unwrap().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["old"]);
    }
}
