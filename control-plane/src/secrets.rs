//! Random secrets, their hashes, and private files.
//!
//! Secrets are 32 random bytes (from the OS, through ring) in hex behind a prefix that says
//! what they are: `cca_` access token, `ccr_` registration key, `ccadm_` admin token. The
//! prefix lets secret scanners find leaked ones. Only the SHA-256 of a secret is stored;
//! 256 random bits need no salt or slow hash.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::rand::{SecureRandom, SystemRandom};

/// Prefix of agent access tokens.
pub const ACCESS_PREFIX: &str = "cca_";
/// Prefix of registration keys.
pub const REGISTRATION_PREFIX: &str = "ccr_";
/// Prefix of the admin token.
pub const ADMIN_PREFIX: &str = "ccadm_";

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the OS random number generator failed");
    hex(&buf)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new secret with this prefix.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

/// The SHA-256 of a secret: what the store keeps.
pub fn hash(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether `s` looks like a secret of this prefix (cheap check before any lookup).
pub fn well_formed(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Write a file readable only by its owner (mode 0600), atomically (temp + fsync + rename).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Write a public file (mode 0644), atomically.
pub fn write_public(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_random_and_well_formed() {
        let a = new_secret(ACCESS_PREFIX);
        let b = new_secret(ACCESS_PREFIX);
        assert_ne!(a, b);
        assert!(well_formed(&a, ACCESS_PREFIX));
        assert!(!well_formed(&a, REGISTRATION_PREFIX));
        assert!(!well_formed("cca_zz", ACCESS_PREFIX));
        assert_eq!(hash(&a).len(), 32);
    }

    #[test]
    fn private_files_are_0600() {
        let dir = std::env::temp_dir().join(format!("cc-secret-{}", random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        write_private(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
