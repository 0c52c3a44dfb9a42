//! Accounts: password hashing, tokens, name rules and the failed-login throttle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};

use crate::protocol::ErrorCode;

/// Hashes a password with Argon2id and a random salt (PHC string). Slow on
/// purpose: call it from a blocking thread.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

/// Checks a password against its PHC string. Slow on purpose, like [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A fresh secret token (device or invite): 32 random bytes as hex, and its
/// SHA-256, which is all the store keeps. Tokens have full entropy, so a fast
/// hash is enough and resuming costs no Argon2.
pub fn new_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = hex::encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Usernames: 3–32 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn check_username(name: &str) -> Result<(), (ErrorCode, String)> {
    let ok_len = (3..=32).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err((
            ErrorCode::InvalidUsername,
            "a username is 3 to 32 characters of a-z, 0-9, '_', '.', '-', starting with a letter or digit".into(),
        ))
    }
}

pub fn check_password(password: &str) -> Result<(), (ErrorCode, String)> {
    if (8..=1024).contains(&password.len()) {
        Ok(())
    } else {
        Err((
            ErrorCode::WeakPassword,
            "a password is 8 to 1024 bytes long".into(),
        ))
    }
}

/// Slows down password guessing: after a few failures for one account or
/// from one address, further attempts are refused for a doubling interval.
pub struct Throttle {
    entries: Mutex<HashMap<ThrottleKey, Failures>>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ThrottleKey {
    User(String),
    Addr(IpAddr),
}

struct Failures {
    count: u32,
    last: Instant,
}

/// Failures forgotten after this long without another.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept at most, so a flood of random names cannot grow memory.
const MAX_ENTRIES: usize = 10_000;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

impl ThrottleKey {
    fn free_attempts(&self) -> u32 {
        match self {
            ThrottleKey::User(_) => 5,
            ThrottleKey::Addr(_) => 20,
        }
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    /// Counts an attempt for every key, or refuses with how long to wait if any
    /// key is over its limit. The attempt counts as a failure until
    /// [`Throttle::succeed`] clears it; checking and counting under one lock
    /// means concurrent guesses cannot slip past the limit together.
    /// `watched` keys are checked but not counted (see [`Throttle::fail`]).
    pub fn attempt(&self, keys: &[ThrottleKey], watched: &[ThrottleKey]) -> Result<(), Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys.iter().chain(watched) {
            let Some(f) = entries.get(key) else { continue };
            let free = key.free_attempts();
            if f.count < free || f.last.elapsed() > WINDOW {
                continue;
            }
            let backoff = Duration::from_secs(1u64 << (f.count - free).min(9)).min(MAX_BACKOFF);
            let waited = f.last.elapsed();
            if waited < backoff {
                return Err(backoff - waited);
            }
        }
        for key in keys {
            record(&mut entries, key.clone());
        }
        Ok(())
    }

    /// An attempt failed: counts it against the watched key, and restarts
    /// the counted keys' wait from now, so that the wait runs from the
    /// failure (as documented) and not from when a slow check began.
    pub fn fail(&self, counted: &[ThrottleKey], watched: ThrottleKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for key in counted {
            if let Some(f) = entries.get_mut(key) {
                f.last = Instant::now();
            }
        }
        record(&mut entries, watched);
    }

    /// Clears a key's failures after a good login.
    pub fn succeed(&self, key: &ThrottleKey) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Counts one failure for `key`, first making room if the table is full.
fn record(entries: &mut HashMap<ThrottleKey, Failures>, key: ThrottleKey) {
    if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
        entries.retain(|_, f| f.last.elapsed() < WINDOW);
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
    }
    let f = entries.entry(key).or_insert(Failures {
        count: 0,
        last: Instant::now(),
    });
    if f.last.elapsed() > WINDOW {
        f.count = 0;
    }
    f.count += 1;
    f.last = Instant::now();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(check_username("alice").is_ok());
        assert!(check_username("a.b-c_9").is_ok());
        assert!(check_username("al").is_err());
        assert!(check_username("Alice").is_err());
        assert!(check_username("_alice").is_err());
        assert!(check_username("al ice").is_err());
        assert!(check_username(&"a".repeat(33)).is_err());
    }

    #[test]
    fn throttle_after_five_failures() {
        let t = Throttle::default();
        let k = ThrottleKey::User("bob".into());
        for _ in 0..5 {
            assert!(t.attempt(std::slice::from_ref(&k), &[]).is_ok());
        }
        assert!(t.attempt(std::slice::from_ref(&k), &[]).is_err());
        // A failure restarts the wait: a second later, still waiting.
        let addr = ThrottleKey::Addr(std::net::Ipv4Addr::LOCALHOST.into());
        let before = t.attempt(&[], std::slice::from_ref(&k)).unwrap_err();
        t.fail(std::slice::from_ref(&k), addr);
        let after = t.attempt(&[], std::slice::from_ref(&k)).unwrap_err();
        assert!(after >= before, "{before:?} then {after:?}");
        t.succeed(&k);
        assert!(t.attempt(std::slice::from_ref(&k), &[]).is_ok());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
    }
}
