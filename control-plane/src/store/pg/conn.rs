//! Reaching PostgreSQL: the URL (its password never printed), TLS with a given CA, and
//! PostgreSQL's errors in one line.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::{Result, StoreError};

/// The URL with its password (in the user part or a `password=` parameter) replaced by `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let (a, b) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
                out.replace_range(a..b, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_string(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

/// A PostgreSQL database: its URL (`postgres://user:password@host:port/dbname`), and the CA
/// that signs its server certificate when the connection is to use TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL (holds the password: print it only through [`redact`]).
    pub url: String,
    /// PEM file of the CA certificate(s) PostgreSQL's certificate must chain to. Given, the
    /// connection is TLS (rustls; the host name or address of the URL must be in the
    /// certificate) and never falls back to plain text.
    pub ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &redact(&self.url))
            .field("ca", &self.ca)
            .finish()
    }
}

impl PgTarget {
    /// Check the URL, and the CA file when one is given, without connecting.
    pub fn check(&self) -> Result<()> {
        self.config()?;
        self.tls()?;
        Ok(())
    }

    /// The client configuration: with a CA, TLS is required (`sslmode=disable` with a CA is
    /// refused; without a CA, `sslmode=require` is refused: nothing to check the server's
    /// certificate against).
    fn config(&self) -> Result<Config> {
        let mut c = config(&self.url)?;
        match (c.get_ssl_mode(), &self.ca) {
            (SslMode::Disable, Some(_)) => {
                return Err(StoreError::Conflict(
                    "the database URL says sslmode=disable, but --database-ca asks for TLS".into(),
                ))
            }
            (SslMode::Require, None) => {
                return Err(StoreError::Conflict(
                    "the database URL says sslmode=require: give --database-ca with the CA \
                     certificate that signs PostgreSQL's server certificate"
                        .into(),
                ))
            }
            (_, Some(_)) => {
                c.ssl_mode(SslMode::Require);
            }
            _ => {
                // No CA: plain text (prefer would try TLS with nothing to verify it by).
                c.ssl_mode(SslMode::Disable);
            }
        }
        Ok(c)
    }

    fn tls(&self) -> Result<Option<MakeRustlsConnect>> {
        let Some(ca) = &self.ca else { return Ok(None) };
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let bad = |m: String| StoreError::Conflict(format!("--database-ca {}: {m}", ca.display()));
        let pem = std::fs::read(ca).map_err(|e| bad(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&pem) {
            let c = c.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Some(MakeRustlsConnect::new(cfg)))
    }

    pub(crate) fn connect(&self) -> Result<Client> {
        let c = self.config()?;
        Ok(match self.tls()? {
            Some(tls) => c.connect(tls)?,
            None => c.connect(NoTls)?,
        })
    }
}

fn config(url: &str) -> Result<Config> {
    let mut c = Config::from_str(url).map_err(|e| {
        StoreError::Conflict(format!(
            "{} is not a PostgreSQL URL the client reads: {e}",
            redact(url)
        ))
    })?;
    if c.get_connect_timeout().is_none() {
        c.connect_timeout(Duration::from_secs(10));
    }
    if c.get_application_name().is_none() {
        c.application_name("chaos-control");
    }
    Ok(c)
}

/// One line saying what PostgreSQL answered (its code and message), without the URL.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                let t = x.to_string();
                if !s.contains(&t) {
                    s = format!("{s}: {t}");
                }
                src = x.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_appear_in_a_printed_url() {
        for (url, want) in [
            (
                "postgres://chaos:s3cret@db.example:5432/chaos",
                "postgres://chaos:***@db.example:5432/chaos",
            ),
            (
                "postgresql://u:p%40ss@h/db?sslmode=disable&password=x",
                "postgresql://u:***@h/db?sslmode=disable&password=***",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h:5432/db", "postgres://h:5432/db"),
        ] {
            assert_eq!(redact(url), want, "{url}");
        }
    }
}
