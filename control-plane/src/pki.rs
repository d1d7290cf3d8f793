//! `chaos-control init`: the state directory, a private CA, a server certificate, the admin
//! token, and the configuration snippet for agents.
//!
//! Layout of the state directory (mode 0700):
//!
//! | file | mode | what |
//! |---|---|---|
//! | `ca.pem` | 0644 | the CA certificate: copy it to every agent |
//! | `ca.key` | 0600 | the CA's private key (only `init` uses it) |
//! | `server.pem` | 0644 | the server certificate, signed by the CA |
//! | `server.key` | 0600 | its private key |
//! | `admin.token` | 0600 | the operator's token for the `agents`/`runs` commands |
//! | `control.db` | 0600 | the store (SQLite) |
//! | `init.json` | 0644 | what `init` was given: names, port, URL, CA fingerprint |
//! | `ca-next.pem`, `ca-next.key` | 0644, 0600 | the next CA, while a rotation is under way (`rotate.rs`) |

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

use crate::secrets::{self, write_private, write_public};
use crate::store::{Database, Store};
use crate::{Error, Result};

/// Key in the store's `meta` table holding the admin token's hash.
pub const ADMIN_HASH_KEY: &str = "admin_token_sha256";

/// The files of a state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The directory.
    pub dir: PathBuf,
}

impl Paths {
    /// Paths under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Paths {
        Paths { dir: dir.into() }
    }
    /// The next CA's certificate, during a rotation.
    pub fn ca_next_pem(&self) -> PathBuf {
        self.dir.join("ca-next.pem")
    }
    /// The next CA's key, during a rotation.
    pub fn ca_next_key(&self) -> PathBuf {
        self.dir.join("ca-next.key")
    }
    /// CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Server certificate.
    pub fn server_pem(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// Server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Admin token.
    pub fn admin_token(&self) -> PathBuf {
        self.dir.join("admin.token")
    }
    /// The store.
    pub fn db(&self) -> PathBuf {
        self.dir.join("control.db")
    }
    /// What init was given.
    pub fn init_json(&self) -> PathBuf {
        self.dir.join("init.json")
    }

    /// Read `init.json`.
    pub fn init_info(&self) -> Result<InitInfo> {
        let p = self.init_json();
        let text = std::fs::read_to_string(&p).map_err(|e| {
            Error(format!(
                "cannot read {}: {e} (run `chaos-control init` first, or pass --state-dir)",
                p.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Error(format!("{}: {e}", p.display())))
    }
}

/// What `init` recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitInfo {
    /// Names and addresses in the server certificate.
    pub names: Vec<String>,
    /// The port `serve` listens on by default.
    pub port: u16,
    /// The URL agents should use.
    pub url: String,
    /// SHA-256 fingerprint of the CA certificate.
    pub ca_sha256: String,
    /// A CA rotation under way (`chaos-control ca rotate`): `staged` or `active`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
}

/// What `init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The state directory.
    pub state_dir: PathBuf,
    /// DNS names and IP addresses agents will use to reach the server. `localhost` and
    /// `127.0.0.1` are always added, for the operator commands on this machine.
    pub names: Vec<String>,
    /// Port.
    pub port: u16,
    /// Replace an existing state directory's CA, certificates and admin token (agents then
    /// need the new CA; their registrations and tokens stay valid).
    pub force: bool,
    /// Where the store goes; `None`: the SQLite file `store.db` in the state directory.
    pub database: Option<Database>,
}

/// What `init` did.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The record written to `init.json`.
    pub info: InitInfo,
    /// The paths.
    pub paths: Paths,
    /// Where the store is.
    pub database: Database,
}

impl InitReport {
    /// The text to print: where things are and the agent configuration snippet.
    pub fn render(&self) -> String {
        let p = &self.paths;
        format!(
            "Initialised {dir}
  CA certificate      {ca}   (copy to every agent)
  server certificate  {srv}   for: {names}
  admin token         {adm}   (mode 0600; used by the agents/runs commands)
  store               {db}

CA SHA-256 fingerprint:
  {fp}

Next:
  chaos-control serve --state-dir {dir}{serve_db}
  chaos-control agents add NAME --state-dir {dir}     prints a one-time registration key

Agent configuration (e.g. /etc/chaos-agent/config.d/20-control.toml):

[control_plane]
url = \"{url}\"
ca_file = \"/etc/chaos-agent/ca.pem\"        # a copy of {ca}
ca_sha256 = \"{fp}\"
registration_key = \"<from chaos-control agents add NAME>\"
",
            dir = p.dir.display(),
            ca = p.ca_pem().display(),
            srv = p.server_pem().display(),
            names = self.info.names.join(", "),
            adm = p.admin_token().display(),
            db = self.database,
            serve_db = if self.database.is_postgres() {
                "   (with CHAOS_CONTROL_DATABASE=<the URL>)\n  \
                 more replicas: copy the state directory to each machine, start serve there \
                 with the same URL"
            } else {
                ""
            },
            fp = self.info.ca_sha256,
            url = self.info.url,
        )
    }
}

/// Create the state directory, CA, server certificate, admin token and store.
pub fn init(opts: &InitOptions) -> Result<InitReport> {
    let paths = Paths::new(&opts.state_dir);
    if paths.ca_key().exists() && !opts.force {
        return Err(Error(format!(
            "{} is already initialised (its CA exists); pass --force to replace the CA, \
             certificates and admin token",
            paths.dir.display()
        )));
    }
    let names = server_names(&opts.names)?;
    let database = opts
        .database
        .clone()
        .unwrap_or_else(|| Database::Sqlite(paths.db()));
    // A PostgreSQL store is checked before anything is written: one that already serves a
    // fleet keeps its admin token unless --force says to replace it.
    let mut pg_store = match &database {
        Database::Postgres(_) => {
            let mut store = Store::open(&database)
                .map_err(|e| Error(format!("cannot open the store in {database}: {e}")))?;
            if store.meta(ADMIN_HASH_KEY)?.is_some() && !opts.force {
                return Err(Error(format!(
                    "{database} already holds a chaos-control store (it has an admin token). \
                     For another replica, copy the state directory of the first one instead \
                     of running init; pass --force to replace the admin token"
                )));
            }
            Some(store)
        }
        Database::Sqlite(_) => None,
    };
    std::fs::create_dir_all(&paths.dir)
        .map_err(|e| Error(format!("cannot create {}: {e}", paths.dir.display())))?;
    std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
        Error(format!(
            "cannot set mode 0700 on {}: {e}",
            paths.dir.display()
        ))
    })?;

    let (ca_pem, ca_key_pem, server_pem, server_key_pem) = make_certs(&names)?;
    let io = |p: &Path, e: std::io::Error| Error(format!("cannot write {}: {e}", p.display()));
    write_private(&paths.ca_key(), ca_key_pem.as_bytes()).map_err(|e| io(&paths.ca_key(), e))?;
    write_public(&paths.ca_pem(), ca_pem.as_bytes()).map_err(|e| io(&paths.ca_pem(), e))?;
    write_private(&paths.server_key(), server_key_pem.as_bytes())
        .map_err(|e| io(&paths.server_key(), e))?;
    write_public(&paths.server_pem(), server_pem.as_bytes())
        .map_err(|e| io(&paths.server_pem(), e))?;

    let admin = secrets::new_secret(secrets::ADMIN_PREFIX);
    let mut store = match pg_store.take() {
        Some(s) => s,
        None => Store::open(&database)?,
    };
    store.set_meta(ADMIN_HASH_KEY, &secrets::hash(&admin))?;
    drop(store);
    write_private(&paths.admin_token(), format!("{admin}\n").as_bytes())
        .map_err(|e| io(&paths.admin_token(), e))?;

    let der =
        chaos_protocol::client::pem_to_der(ca_pem.as_bytes()).map_err(|e| Error(e.to_string()))?;
    let info = InitInfo {
        url: url_for(&names, opts.port),
        names,
        port: opts.port,
        ca_sha256: chaos_protocol::client::fingerprint(&der),
        rotation: None,
    };
    let json = serde_json::to_string_pretty(&info).unwrap_or_default();
    write_public(&paths.init_json(), json.as_bytes()).map_err(|e| io(&paths.init_json(), e))?;
    Ok(InitReport {
        info,
        paths,
        database,
    })
}

fn check_name(n: &str) -> Result<()> {
    if n.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error(format!(
            "{n:?} is neither a DNS name nor an IP address"
        )))
    }
}

fn make_certs(names: &[String]) -> Result<(String, String, String, String)> {
    let (ca_pem, ca_key_pem, issuer) = make_ca()?;
    let (server_pem, server_key_pem) = make_server_cert(names, &issuer)?;
    Ok((ca_pem, ca_key_pem, server_pem, server_key_pem))
}

fn cert_err(e: rcgen::Error) -> Error {
    Error(format!("cannot create certificates: {e}"))
}

/// A new private CA, valid ten years: (certificate PEM, key PEM, issuer).
pub(crate) fn make_ca() -> Result<(String, String, Issuer<'static, KeyPair>)> {
    let (y, m, d) = today();
    let ca_key = KeyPair::generate().map_err(cert_err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A distinct name per CA, so a client holding another installation's CA reports an
    // unknown issuer rather than a bad signature.
    let cn = format!("chaos-control private CA {}", secrets::random_hex(4));
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = rcgen::date_time_ymd(y, m, d) - back_date();
    ca.not_after = rcgen::date_time_ymd(y + 10, m, d);
    let ca_cert = ca.self_signed(&ca_key).map_err(cert_err)?;
    let ca_key_pem = ca_key.serialize_pem();
    Ok((ca_cert.pem(), ca_key_pem, Issuer::new(ca, ca_key)))
}

/// The CA stored in `pem` (its first certificate) and `key_pem`, to sign with.
pub(crate) fn load_issuer(pem: &str, key_pem: &str) -> Result<Issuer<'static, KeyPair>> {
    let key =
        KeyPair::from_pem(key_pem).map_err(|e| Error(format!("cannot read the CA key: {e}")))?;
    Issuer::from_ca_cert_pem(pem, key)
        .map_err(|e| Error(format!("cannot read the CA certificate: {e}")))
}

/// A server certificate for `names` (the first is its common name), valid five years,
/// signed by `issuer`: (certificate PEM, key PEM).
pub(crate) fn make_server_cert(
    names: &[String],
    issuer: &Issuer<'static, KeyPair>,
) -> Result<(String, String)> {
    let (y, m, d) = today();
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut sp = CertificateParams::new(names.to_vec()).map_err(cert_err)?;
    sp.distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.not_before = rcgen::date_time_ymd(y, m, d) - back_date();
    sp.not_after = rcgen::date_time_ymd(y + 5, m, d);
    let cert = sp.signed_by(&key, issuer).map_err(cert_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The names a server certificate gets: `names` (checked, trimmed, each once), then
/// `localhost` and `127.0.0.1` for the operator commands on this machine.
pub(crate) fn server_names(names: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for n in names
        .iter()
        .map(|s| s.trim().to_string())
        .chain(["localhost".to_string(), "127.0.0.1".to_string()])
    {
        check_name(&n)?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// The URL agents use: the first name that is not `localhost`/`127.0.0.1`.
pub(crate) fn url_for(names: &[String], port: u16) -> String {
    let first = names
        .iter()
        .find(|n| *n != "localhost" && *n != "127.0.0.1")
        .unwrap_or(&names[0]);
    let host = match first.parse::<IpAddr>() {
        Ok(IpAddr::V6(a)) => format!("[{a}]"),
        _ => first.clone(),
    };
    format!("https://{host}:{port}")
}

/// How far certificates are back-dated: 366 days. An agent checks the control plane's
/// certificate against its host's wall clock, which a `time.offset` fault may move back; with
/// a year of margin, shifts of up to a year back keep the agent talking to the control plane
/// (forward, the five-year validity is the margin). Back-dating gives nobody anything: the
/// CA is new, so nothing it signed can predate it.
fn back_date() -> std::time::Duration {
    std::time::Duration::from_secs(366 * 86_400)
}

/// Today's date (UTC) as (year, month, day), from the civil-from-days algorithm.
fn today() -> (i32, u8, u8) {
    let days = (chaos_protocol::now_ms() / 86_400_000) as i64;
    let (y, m, d) = civil_from_days(days);
    (y as i32, m as u8, d.min(28) as u8)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-24 13:05:09Z` for a time in ms since the Unix epoch.
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_hold_a_year_back_and_five_forward() {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime};
        let (ca_pem, _, server_pem, _) = make_certs(&["localhost".to_string()]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let cert = CertificateDer::from_pem_slice(server_pem.as_bytes()).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let day = 86_400;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // As an agent sees it with its clock moved by a time.offset fault.
        let at = |t: u64| {
            verifier.verify_server_cert(
                &cert,
                &[],
                &name,
                &[],
                UnixTime::since_unix_epoch(std::time::Duration::from_secs(t)),
            )
        };
        assert!(at(now).is_ok());
        assert!(
            at(now - 365 * day).is_ok(),
            "a year back: {:?}",
            at(now - 365 * day)
        );
        assert!(at(now + 4 * 365 * day).is_ok(), "four years on");
        assert!(at(now - 368 * day).is_err(), "not before the back-dating");
        assert!(at(now + 6 * 365 * day).is_err(), "five years' validity");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14 22:13:20Z");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("control.example.org").is_ok());
        assert!(check_name("10.0.0.1").is_ok());
        assert!(check_name("::1").is_ok());
        assert!(check_name("bad name").is_err());
        assert!(check_name("-x").is_err());
    }
}
