//! `cert reissue` and `ca rotate`: agents keep reaching the server through a CA rotation
//! when they hold the two-CA file, and the server certificate can be renewed without a new
//! CA.

mod common;

use std::time::Duration;

use chaos_control::pki::Paths;
use chaos_control::rotate;
use chaos_protocol::client::{Client, ClientConfig, ClientError};
use common::Harness;

fn client(h: &Harness, ca: &[u8], pin: Option<&str>) -> Client {
    let mut cfg = ClientConfig::new(h.url(), ca.to_vec());
    cfg.timeout = Duration::from_secs(10);
    cfg.ca_sha256 = pin.map(str::to_string);
    Client::new(cfg).unwrap()
}

fn works(c: &Client, a: &chaos_protocol::agent::RegisterResponse) -> Result<(), ClientError> {
    c.tasks(&a.agent_id, &a.token.token, Duration::ZERO)
        .map(|_| ())
}

fn refused_tls(r: Result<(), ClientError>, what: &str) {
    match r {
        Err(ClientError::Transport(m)) => {
            assert!(
                m.to_lowercase().contains("issuer") || m.contains("certificate"),
                "{what}: {m}"
            )
        }
        other => panic!("{what}: expected a TLS refusal, got {other:?}"),
    }
}

#[test]
fn a_ca_rotation_keeps_agents_that_hold_both_cas() {
    let mut h = Harness::new();
    let paths = Paths::new(&h.dir);
    let a = h.agent("rotating");
    let old_ca = h.ca.clone();
    let old_fp = paths.init_info().unwrap().ca_sha256;

    // Nothing to activate, finish or cancel yet.
    assert!(rotate::activate(&paths).is_err());
    assert!(rotate::finish(&paths).is_err());
    assert!(rotate::cancel(&paths).is_err());

    rotate::stage(&paths).unwrap();
    assert!(rotate::stage(&paths).is_err(), "one rotation at a time");
    assert!(rotate::finish(&paths).is_err(), "not before --activate");
    let both = std::fs::read(paths.ca_pem()).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&both)
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    // Before activation: the old CA alone and the two-CA file both work (pinned to the
    // old fingerprint too).
    works(&client(&h, &old_ca, None), &a).unwrap();
    works(&client(&h, &both, Some(&old_fp)), &a).unwrap();

    rotate::activate(&paths).unwrap();
    h.restart();
    works(&client(&h, &both, Some(&old_fp)), &a).unwrap();
    refused_tls(
        works(&client(&h, &old_ca, None), &a),
        "only the old CA, after --activate",
    );

    rotate::finish(&paths).unwrap();
    h.restart();
    let new_ca = std::fs::read(paths.ca_pem()).unwrap();
    let info = paths.init_info().unwrap();
    assert_ne!(info.ca_sha256, old_fp);
    assert!(info.rotation.is_none());
    assert!(!paths.ca_next_key().exists() && !paths.ca_next_pem().exists());
    works(&client(&h, &new_ca, Some(&info.ca_sha256)), &a).unwrap();
    works(&client(&h, &both, None), &a).unwrap();
    refused_tls(
        works(&client(&h, &old_ca, None), &a),
        "only the old CA, after --finish",
    );
    // A reissue after the rotation is signed by the new CA.
    rotate::reissue(&paths, &["control.example".to_string()]).unwrap();
    h.restart();
    works(&client(&h, &new_ca, Some(&info.ca_sha256)), &a).unwrap();
}

#[test]
fn a_cancelled_rotation_goes_back_to_the_old_ca() {
    let mut h = Harness::new();
    let paths = Paths::new(&h.dir);
    let a = h.agent("cancelled");
    let old_ca = h.ca.clone();
    rotate::stage(&paths).unwrap();
    rotate::activate(&paths).unwrap();
    rotate::cancel(&paths).unwrap();
    h.restart();
    assert_eq!(std::fs::read(paths.ca_pem()).unwrap(), old_ca);
    assert!(paths.init_info().unwrap().rotation.is_none());
    works(&client(&h, &old_ca, None), &a).unwrap();
}

#[test]
fn reissue_changes_names_and_keeps_the_ca() {
    let mut h = Harness::new();
    let paths = Paths::new(&h.dir);
    let a = h.agent("renewed");
    let before = std::fs::read(paths.server_pem()).unwrap();
    let done = rotate::reissue(&paths, &["ctl.example".into(), "10.9.8.7".into()]).unwrap();
    assert!(done.render().contains("ctl.example"), "{}", done.render());
    let info = paths.init_info().unwrap();
    assert_eq!(
        info.names,
        ["ctl.example", "10.9.8.7", "localhost", "127.0.0.1"]
    );
    assert_eq!(info.url, format!("https://ctl.example:{}", info.port));
    assert_ne!(std::fs::read(paths.server_pem()).unwrap(), before);
    h.restart();
    // The same CA (and pin) as before.
    works(&client(&h, &h.ca, Some(&info.ca_sha256)), &a).unwrap();
    // Bad names are refused and nothing changes.
    let now = std::fs::read(paths.server_pem()).unwrap();
    assert!(rotate::reissue(&paths, &["bad name".into()]).is_err());
    assert_eq!(std::fs::read(paths.server_pem()).unwrap(), now);
}

/// The certificate a server at `addr` presents (its leaf, DER), trusting `ca`.
fn presented(addr: std::net::SocketAddr, ca: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c.ok()?).ok()?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .ok()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "127.0.0.1".try_into().unwrap())
            .ok()?;
    let tcp = std::net::TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(b"").ok()?;
    s.flush().ok()?;
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).ok()?;
    }
    Some(s.conn.peer_certificates()?.first()?.to_vec())
}

/// `chaos-control serve` reloads its certificate on SIGHUP: after `cert reissue`, new
/// connections get the new certificate without a restart.
#[test]
fn serve_reloads_the_certificate_on_sighup() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let s = common::Served::start();
    let ca = s.ca();
    let leaf = |p: &std::path::Path| {
        CertificateDer::pem_file_iter(p)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    let wait_for = |want: &[u8], what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if presented(s.addr, &ca).as_deref() == Some(want) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = leaf(&s.dir.join("server.pem"));
    wait_for(&first, "the server never presented its certificate");
    let out = s.cli(&["cert", "reissue", "--name", "renewed.example"]);
    assert!(out.contains("renewed.example"), "{out}");
    let second = leaf(&s.dir.join("server.pem"));
    assert_ne!(first, second);
    s.signal(libc::SIGHUP);
    wait_for(&second, "the new certificate was not served after SIGHUP");
    assert!(
        s.log().contains("server certificate reloaded"),
        "{}",
        s.log()
    );
}
