//! The `--users` file and its password hashes.
//!
//! One user per line, `NAME:HASH` or `NAME:HASH:admin`; blank lines and lines
//! starting with `#` are ignored. `HASH` is a PHC string (`$argon2id$v=19$…`) as
//! printed by `forkserve chat-passwd`. Names follow the chat's name rules (see
//! `names.rs`) and are looked up case-insensitively, like names in the chat.
//!
//! ```text
//! # forkserve chat users
//! ann:$argon2id$v=19$m=19456,t=2,p=1$…$…:admin
//! bob:$argon2id$v=19$m=19456,t=2,p=1$…$…
//! ```

use std::collections::HashMap;
use std::path::Path;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

/// One entry of the users file.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub hash: String,
    pub admin: bool,
}

/// The users allowed to join, with their password hashes.
#[derive(Debug, Clone, Default)]
pub struct Users {
    /// By [`name_key`](super::name_key).
    users: HashMap<String, UserEntry>,
    /// A hash checked for unknown names, so they take as long as known ones.
    decoy: Option<String>,
}

impl Users {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--users {}: {e}", path.display()))?;
        Users::parse(&text).map_err(|e| format!("--users {}: {e}", path.display()))
    }

    /// Parses the text of a users file.
    pub fn parse(text: &str) -> Result<Users, String> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let mut parts = line.split(':');
            let name = parts.next().unwrap_or("");
            let hash = parts.next().unwrap_or("");
            let admin = match parts.next() {
                None => false,
                Some("admin") => true,
                Some(other) => {
                    return Err(format!(
                        "line {n}: unknown flag '{other}' (expected 'admin')"
                    ));
                }
            };
            if parts.next().is_some() {
                return Err(format!("line {n}: expected NAME:HASH or NAME:HASH:admin"));
            }
            let name = super::user_name(name)
                .map_err(|e| format!("line {n}: invalid name '{name}': {e}"))?;
            if PasswordHash::new(hash).is_err() {
                return Err(format!(
                    "line {n}: '{name}' has no valid password hash (make one with `forkserve chat-passwd`)"
                ));
            }
            if users
                .insert(
                    super::name_key(&name),
                    UserEntry {
                        hash: hash.to_string(),
                        admin,
                    },
                )
                .is_some()
            {
                return Err(format!("line {n}: '{name}' listed twice"));
            }
        }
        let decoy = users.values().next().map(|u| u.hash.clone());
        Ok(Users { users, decoy })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the file lists nobody.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Checks a password. `Some(admin)` when `name` is listed and the password is
    /// right; unknown names cost a hash check too, and fail.
    pub fn check(&self, name: &str, password: &str) -> Option<bool> {
        match self.users.get(&super::name_key(name)) {
            Some(u) => verify(password, &u.hash).then_some(u.admin),
            None => {
                if let Some(d) = &self.decoy {
                    let _ = verify(password, d);
                }
                None
            }
        }
    }
}

fn verify(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Hashes a password with Argon2id (default parameters, random salt) as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_the_file_parses() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        let users = Users::parse(&format!("# users\n\nann:{h}:admin\nbob:{h}\n")).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.check("ann", "s3cret"), Some(true));
        assert_eq!(users.check("bob", "s3cret"), Some(false));
        assert_eq!(
            users.check("BOB", "s3cret"),
            Some(false),
            "names ignore case"
        );
        assert_eq!(users.check("bob", "wrong"), None);
        assert_eq!(users.check("eve", "s3cret"), None);
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(Users::parse("ann\n").unwrap_err().contains("line 1"));
        assert!(
            Users::parse("a/b:$x\n")
                .unwrap_err()
                .contains("invalid name")
        );
        assert!(
            Users::parse("ann:notahash\n")
                .unwrap_err()
                .contains("chat-passwd")
        );
    }
}
