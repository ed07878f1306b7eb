//! Tokens: `pn_<id>_<secret>`. The store keeps the secret's argon2 hash only; the
//! server verifies a token with argon2 once, then remembers its SHA-256 digest and
//! compares later presentations in constant time. Tokens are never logged.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use std::path::Path;

use rusqlite::OptionalExtension;

use crate::store::{self, Role};

/// The tokens' database inside a store: apart from the learner's, so that a token can
/// be made before the store exists and while a server runs.
pub const DB: &str = "tokens.db";

fn open(dir: &Path) -> Result<rusqlite::Connection> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(DB);
    let conn = store::connect(&path)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS tokens(id TEXT PRIMARY KEY, role TEXT NOT NULL,
                                           hash TEXT NOT NULL, created TEXT NOT NULL);",
    )
    .map_err(|e| store::corrupt(&path, e))?;
    Ok(conn)
}

/// Adds a token of `role` to the store in `dir` (created if new); returns the token
/// to hand out. Only its secret's argon2 hash is kept.
pub fn add_token(dir: &Path, role: Role) -> Result<String> {
    let (id, secret, hash) = new_token()?;
    open(dir)?.execute(
        "INSERT INTO tokens(id, role, hash, created) VALUES (?1, ?2, ?3, ?4)",
        rusqlite::params![id, role.name(), hash, store::now()],
    )?;
    Ok(format_token(&id, &secret))
}

/// A token's role and hash, by its id.
pub fn lookup(dir: &Path, id: &str) -> Result<Option<(Role, String)>> {
    if !dir.join(DB).is_file() {
        return Ok(None);
    }
    let row: Option<(String, String)> = open(dir)?
        .query_row("SELECT role, hash FROM tokens WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    row.map(|(role, hash)| Ok((Role::parse(&role)?, hash)))
        .transpose()
}

/// How many tokens the store in `dir` has.
pub fn count(dir: &Path) -> Result<usize> {
    if !dir.join(DB).is_file() {
        return Ok(0);
    }
    let n: i64 = open(dir)?.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
    Ok(n as usize)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| anyhow!("no randomness for a token: {e}"))?;
    Ok(b)
}

/// A new token: its id, its secret and the secret's argon2 hash (PHC string).
pub fn new_token() -> Result<(String, String, String)> {
    let id = hex(&random::<8>()?);
    let secret = hex(&random::<32>()?);
    let salt = SaltString::encode_b64(&random::<16>()?).map_err(|e| anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| anyhow!("hashing a token: {e}"))?
        .to_string();
    Ok((id, secret, hash))
}

/// The token handed out for an id and a secret.
pub fn format_token(id: &str, secret: &str) -> String {
    format!("pn_{id}_{secret}")
}

/// A token's id and secret, if it has a token's shape.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("pn_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id, 16) && ok(secret, 64)).then_some((id, secret))
}

/// Whether `secret` matches an argon2 PHC hash.
pub fn verify(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Tokens verified once, by id: their role and the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct Verified {
    known: Mutex<HashMap<String, (Role, [u8; 32])>>,
}

impl Verified {
    /// The role of a token already verified, compared in constant time; `None` if
    /// this id was never verified (the caller then asks the store and argon2).
    pub fn role(&self, id: &str, secret: &str) -> Option<Option<Role>> {
        let known = self.known.lock().expect("token cache");
        let (role, digest) = known.get(id)?;
        let given: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        Some(bool::from(given.ct_eq(digest)).then_some(*role))
    }

    /// Remembers a token argon2 verified.
    pub fn remember(&self, id: &str, secret: &str, role: Role) {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        self.known
            .lock()
            .expect("token cache")
            .insert(id.to_string(), (role, digest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_and_a_changed_one_does_not() {
        let (id, secret, hash) = new_token().unwrap();
        let token = format_token(&id, &secret);
        let (i, s) = parse_token(&token).unwrap();
        assert_eq!((i, s), (id.as_str(), secret.as_str()));
        assert!(verify(s, &hash));
        let mut wrong = secret.clone();
        wrong.replace_range(0..1, if &secret[0..1] == "a" { "b" } else { "a" });
        assert!(!verify(&wrong, &hash));
        assert!(!hash.contains(&secret), "only the hash is kept");
        let cache = Verified::default();
        assert_eq!(cache.role(&id, &secret), None);
        cache.remember(&id, &secret, Role::Writer);
        assert_eq!(cache.role(&id, &secret), Some(Some(Role::Writer)));
        assert_eq!(cache.role(&id, &wrong), Some(None));
    }

    #[test]
    fn malformed_tokens_are_not_parsed() {
        for t in [
            "",
            "pn_",
            "pn_abc_def",
            "xx_0123456789abcdef_",
            "pn_0123456789abcdeg_00",
        ] {
            assert!(parse_token(t).is_none(), "{t}");
        }
    }
}
