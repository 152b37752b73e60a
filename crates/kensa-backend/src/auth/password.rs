//! Password hashes: Kensa writes argon2id PHC strings; it also verifies bcrypt hashes, because
//! Sensu clients (sensuctl, the Ansible collection) send bcrypt `password_hash` values.
//!
//! Both are deliberately slow (tens of milliseconds): callers on the async runtime must use
//! the `*_blocking` wrappers, which run on tokio's blocking pool.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` as an argon2id PHC string.
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// True if `password` matches `stored` (argon2 PHC string or bcrypt `$2a$/$2b$/$2y$`).
pub fn verify(password: &str, stored: &str) -> bool {
    if stored.starts_with("$2") {
        return bcrypt::verify(password, stored).unwrap_or(false);
    }
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// True if `stored` looks like a hash Kensa can verify.
pub fn is_supported_hash(stored: &str) -> bool {
    stored.starts_with("$2") || PasswordHash::new(stored).is_ok()
}

/// At most this many hashes are computed at once. Each argon2 run holds 19 MiB; unbounded,
/// a burst of logins grew the backend by gigabytes (measured: 96 parallel logins, 1.8 GiB)
/// and starved everything else of the two cores. Waiting logins queue here instead.
static HASHING_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

pub async fn hash_blocking(password: String) -> String {
    let _slot = HASHING_SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .expect("hashing does not panic")
}

pub async fn verify_blocking(password: String, stored: String) -> bool {
    let _slot = HASHING_SLOTS
        .acquire()
        .await
        .expect("the semaphore is never closed");
    tokio::task::spawn_blocking(move || verify(&password, &stored))
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_and_bcrypt_hashes_verify() {
        let argon = hash("P@ssw0rd!");
        assert!(argon.starts_with("$argon2id$"));
        assert!(verify("P@ssw0rd!", &argon));
        assert!(!verify("wrong", &argon));

        let bcrypt_hash = bcrypt::hash("P@ssw0rd!", 4).unwrap();
        assert!(verify("P@ssw0rd!", &bcrypt_hash));
        assert!(!verify("wrong", &bcrypt_hash));
        assert!(!verify("P@ssw0rd!", "not a hash"));
    }
}
