//! `chaos-control cert reissue` (a new server certificate from the same CA: new names, a new
//! expiry) and `chaos-control ca rotate` (a new CA, with an overlap during which agents trust
//! both, so no agent loses the server while the new CA reaches it).
//!
//! A rotation, step by step (`init.json`'s `rotation` says where it is):
//!
//! | step | `ca.pem` (what agents trust) | the server certificate is signed by |
//! |---|---|---|
//! | before | old CA | old CA |
//! | `ca rotate --stage` | old CA + new CA | old CA |
//! | (copy `ca.pem` to every agent; agents trust both) | | |
//! | `ca rotate --activate` | old CA + new CA | **new CA** |
//! | `ca rotate --finish` | new CA | new CA |
//! | (copy `ca.pem` to every agent again, with the new `ca_sha256`) | | |
//!
//! `--cancel` goes back to the old CA from `staged` or `active`. A running `serve` picks up a
//! new server certificate on SIGHUP (or at its next start). The CA keys never leave the
//! state directory (mode 0600).

use crate::pki::{self, Paths};
use crate::secrets::{write_private, write_public};
use crate::{Error, Result};

const STAGED: &str = "staged";
const ACTIVE: &str = "active";

fn read(p: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error(format!("cannot read {}: {e}", p.display())))
}

fn write_err(p: &std::path::Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error(format!("cannot write {}: {e}", p.display()))
}

/// The first PEM block of `text`, with its trailing newline.
fn first_pem(text: &str) -> Result<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = text
        .find(END)
        .ok_or_else(|| Error("the CA file holds no certificate".into()))?;
    let start = text[..end]
        .rfind("-----BEGIN CERTIFICATE-----")
        .ok_or_else(|| Error("the CA file holds no certificate".into()))?;
    Ok(format!("{}\n", &text[start..end + END.len()]))
}

fn fingerprint_of(pem: &str) -> Result<String> {
    let der =
        chaos_protocol::client::pem_to_der(pem.as_bytes()).map_err(|e| Error(e.to_string()))?;
    Ok(chaos_protocol::client::fingerprint(&der))
}

/// What a command did, for people.
#[derive(Debug, Clone)]
pub struct Done {
    /// Lines to print.
    pub lines: Vec<String>,
}

impl Done {
    /// The text to print.
    pub fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s
    }
}

const RELOAD: &str = "A running `chaos-control serve` uses it after SIGHUP (`kill -HUP <pid>`, or \
                      `systemctl reload` of its unit) or its next start.";

/// The CA that signs server certificates now: the next one while a rotation is active.
fn signing_ca(paths: &Paths, rotation: Option<&str>) -> Result<(String, String)> {
    if rotation == Some(ACTIVE) {
        Ok((read(&paths.ca_next_pem())?, read(&paths.ca_next_key())?))
    } else {
        Ok((first_pem(&read(&paths.ca_pem())?)?, read(&paths.ca_key())?))
    }
}

/// A new server certificate and key, signed by the CA in use, for `names` (the names it has
/// when empty; `localhost` and `127.0.0.1` always). `init.json` records the names (and the
/// URL, when names are given).
pub fn reissue(paths: &Paths, names: &[String]) -> Result<Done> {
    let mut info = paths.init_info()?;
    let names = if names.is_empty() {
        info.names.clone()
    } else {
        pki::server_names(names)?
    };
    let (ca_pem, ca_key) = signing_ca(paths, info.rotation.as_deref())?;
    let issuer = pki::load_issuer(&ca_pem, &ca_key)?;
    let (cert, key) = pki::make_server_cert(&names, &issuer)?;
    write_private(&paths.server_key(), key.as_bytes()).map_err(write_err(&paths.server_key()))?;
    write_public(&paths.server_pem(), cert.as_bytes()).map_err(write_err(&paths.server_pem()))?;
    let url_changed = info.names != names;
    info.url = pki::url_for(&names, info.port);
    info.names = names;
    save_info(paths, &info)?;
    let mut lines = vec![
        format!(
            "server certificate reissued for: {} (signed by the CA with SHA-256 {}; valid 5 years)",
            info.names.join(", "),
            fingerprint_of(&ca_pem)?
        ),
        RELOAD.to_string(),
    ];
    if url_changed {
        lines.push(format!("agents' url: {}", info.url));
    }
    Ok(Done { lines })
}

fn save_info(paths: &Paths, info: &pki::InitInfo) -> Result<()> {
    let json = serde_json::to_string_pretty(info).unwrap_or_default();
    write_public(&paths.init_json(), json.as_bytes()).map_err(write_err(&paths.init_json()))
}

/// Start a rotation: a new CA (`ca-next.*`), and `ca.pem` holding the old and the new CA.
pub fn stage(paths: &Paths) -> Result<Done> {
    let mut info = paths.init_info()?;
    if let Some(r) = &info.rotation {
        return Err(Error(format!(
            "a CA rotation is already {r}; finish it (`ca rotate --finish`) or cancel it (`ca rotate --cancel`) first"
        )));
    }
    let old = first_pem(&read(&paths.ca_pem())?)?;
    let (next_pem, next_key, _) = pki::make_ca()?;
    write_private(&paths.ca_next_key(), next_key.as_bytes())
        .map_err(write_err(&paths.ca_next_key()))?;
    write_public(&paths.ca_next_pem(), next_pem.as_bytes())
        .map_err(write_err(&paths.ca_next_pem()))?;
    write_public(&paths.ca_pem(), format!("{old}{next_pem}").as_bytes())
        .map_err(write_err(&paths.ca_pem()))?;
    info.rotation = Some(STAGED.into());
    save_info(paths, &info)?;
    Ok(Done {
        lines: vec![
            format!("new CA created (SHA-256 {})", fingerprint_of(&next_pem)?),
            format!(
                "{} now holds the old and the new CA. Copy it to every agent (its ca_file) and \
                 reload the agents (`systemctl reload chaos-agent`); ca_sha256 may stay as it is.",
                paths.ca_pem().display()
            ),
            "Then: chaos-control ca rotate --activate".into(),
        ],
    })
}

/// Sign the server certificate with the new CA. Agents that got the two-CA file keep
/// trusting the server.
pub fn activate(paths: &Paths) -> Result<Done> {
    let mut info = paths.init_info()?;
    if info.rotation.as_deref() != Some(STAGED) {
        return Err(Error(match info.rotation {
            None => "no CA rotation is staged: start one with `ca rotate --stage`".into(),
            Some(r) => format!("the CA rotation is already {r}"),
        }));
    }
    info.rotation = Some(ACTIVE.into());
    save_info(paths, &info)?;
    let mut done = reissue(paths, &[])?;
    done.lines.insert(
        0,
        "the server certificate is now signed by the new CA; agents that hold only the old CA \
         cannot reach it"
            .into(),
    );
    done.lines
        .push("Then, once every agent works: chaos-control ca rotate --finish".into());
    Ok(done)
}

/// End the rotation: the new CA is the only one; the old key is deleted.
pub fn finish(paths: &Paths) -> Result<Done> {
    let mut info = paths.init_info()?;
    if info.rotation.as_deref() != Some(ACTIVE) {
        return Err(Error(
            "the CA rotation is not active: `ca rotate --activate` first (agents must trust the new CA before the old one goes)".into(),
        ));
    }
    let next_pem = read(&paths.ca_next_pem())?;
    let next_key = read(&paths.ca_next_key())?;
    write_private(&paths.ca_key(), next_key.as_bytes()).map_err(write_err(&paths.ca_key()))?;
    write_public(&paths.ca_pem(), next_pem.as_bytes()).map_err(write_err(&paths.ca_pem()))?;
    let _ = std::fs::remove_file(paths.ca_next_key());
    let _ = std::fs::remove_file(paths.ca_next_pem());
    info.rotation = None;
    info.ca_sha256 = fingerprint_of(&next_pem)?;
    save_info(paths, &info)?;
    Ok(Done {
        lines: vec![
            format!(
                "the rotation is finished: {} holds only the new CA",
                paths.ca_pem().display()
            ),
            format!(
                "Copy it to every agent again and set ca_sha256 = \"{}\" in their configuration.",
                info.ca_sha256
            ),
        ],
    })
}

/// Give up a rotation: the old CA alone again (and the server certificate signed by it, if
/// the rotation was active).
pub fn cancel(paths: &Paths) -> Result<Done> {
    let mut info = paths.init_info()?;
    let Some(was) = info.rotation.clone() else {
        return Err(Error("no CA rotation is under way".into()));
    };
    let old = first_pem(&read(&paths.ca_pem())?)?;
    write_public(&paths.ca_pem(), old.as_bytes()).map_err(write_err(&paths.ca_pem()))?;
    info.rotation = None;
    save_info(paths, &info)?;
    let mut lines = vec![format!(
        "the CA rotation ({was}) is cancelled: {} holds the old CA alone",
        paths.ca_pem().display()
    )];
    if was == ACTIVE {
        lines.extend(reissue(paths, &[])?.lines);
    }
    let _ = std::fs::remove_file(paths.ca_next_key());
    let _ = std::fs::remove_file(paths.ca_next_pem());
    lines.push("Agents given the two-CA file may keep it or get the old one back.".into());
    Ok(Done { lines })
}
