//! Tests of the configuration loader.
use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};

const KEY: &str = "ccr_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5";
const FP: &str = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
const SAMPLE: &str = include_str!("../../../../packaging/agent.toml.sample");

/// A directory of its own under the temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "chaos-agent-config-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// Write `name` (creating config.d if needed) with `mode`.
    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            if !parent.exists() {
                fs::create_dir_all(parent).unwrap();
                fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).unwrap();
            }
        }
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        p
    }
    fn ca(&self) -> PathBuf {
        self.write("ca.pem", CA, 0o644)
    }
    fn main(&self) -> PathBuf {
        self.path("agent.toml")
    }
    /// The snippet `chaos-control init` prints, with the key filled in.
    fn init_snippet(&self) -> String {
        let ca = self.ca();
        format!(
            "[control_plane]\n\
             url = \"https://host:8443\"\n\
             ca_file = \"{}\"        # a copy of /var/lib/chaos-control/ca.pem\n\
             ca_sha256 = \"{FP}\"\n\
             registration_key = \"{KEY}\"\n",
            ca.display()
        )
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn load(d: &Dir) -> Result<(Config, Vec<String>), ConfigError> {
    Config::load(&d.main())
}

fn err(d: &Dir) -> ConfigError {
    match load(d) {
        Ok((c, _)) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn the_init_snippet_alone_is_a_complete_configuration() {
    let d = Dir::new();
    let p = d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
    let (c, warnings) = load(&d).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(c.sources, vec![p]);
    assert_eq!(c.control_plane.url, "https://host:8443");
    assert_eq!(c.control_plane.host, "host");
    assert_eq!(c.control_plane.port, 8443);
    assert_eq!(c.control_plane.ca_pem, CA.as_bytes());
    assert_eq!(c.control_plane.ca_sha256.as_deref(), Some(FP));
    assert_eq!(
        c.control_plane.registration_key.as_ref().unwrap().expose(),
        KEY
    );
    assert!(!c.control_plane.proxy_from_env);
    assert_eq!(c.agent, AgentSettings::default());
    assert_eq!(c.self_protection, SelfProtection::default());
    assert_eq!(
        c.agent.state_dir(None),
        PathBuf::from("/var/lib/chaos-agent")
    );
    assert_eq!(c.agent.poll_wait(30), Duration::from_secs(30));
    assert_eq!(c.agent.poll_wait(600), Duration::from_secs(60));
    assert_eq!(c.agent.poll_wait(0), Duration::from_secs(1));
    assert_eq!(c.agent.outbox_max_bytes, 64 << 20);
}

#[test]
fn no_file_at_all_says_what_to_create() {
    let d = Dir::new();
    let e = err(&d);
    assert_eq!(e.kind(), ConfigErrorKind::NoConfig);
    let m = e.to_string();
    assert!(m.contains("config.d/20-control.toml"), "{m}");
    assert!(m.contains("chaos-control init"), "{m}");
    // An empty config.d is no configuration either.
    fs::create_dir(d.path("config.d")).unwrap();
    fs::set_permissions(d.path("config.d"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(err(&d).kind(), ConfigErrorKind::NoConfig);
}

#[test]
fn drop_ins_override_key_by_key_in_lexical_order() {
    let d = Dir::new();
    let main = d.write(
        "agent.toml",
        &format!(
            "{}\n[agent]\nlog_format = \"json\"\npoll_wait_secs = 10\n",
            d.init_snippet()
        ),
        0o600,
    );
    let b = d.write(
        "config.d/50-b.toml",
        "[agent]\npoll_wait_secs = 50\n[control_plane]\nurl = \"https://b.example\"\n",
        0o644,
    );
    let a = d.write(
        "config.d/10-a.toml",
        "[agent]\npoll_wait_secs = 20\noutbox_max_bytes = \"2MiB\"\n",
        0o644,
    );
    d.write("config.d/.hidden.toml", "garbage [", 0o644);
    d.write("config.d/99-z.toml.bak", "garbage [", 0o644);
    let (c, warnings) = load(&d).unwrap();
    assert_eq!(c.sources, vec![main, a, b]);
    assert_eq!(c.agent.poll_wait_secs, Some(50)); // the last file wins
    assert_eq!(c.agent.poll_wait(30), Duration::from_secs(50));
    assert_eq!(c.agent.outbox_max_bytes, 2 << 20); // only 10-a sets it
    assert_eq!(c.agent.log_format, LogFormat::Json); // only the main file sets it
    assert_eq!(c.control_plane.url, "https://b.example");
    assert_eq!(c.control_plane.port, 443);
    assert_eq!(
        c.control_plane.registration_key.as_ref().unwrap().expose(),
        KEY
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("99-z.toml.bak"), "{warnings:?}");
}

#[test]
fn unknown_keys_name_the_file_and_line() {
    let d = Dir::new();
    d.write("agent.toml", &d.init_snippet(), 0o600);
    let p = d.write(
        "config.d/20-control.toml",
        "# comment\n\n[control_plane]\nur = \"https://x\"\n\n[agent]\npoll_wait_secs = 5\nspare_control_plane = false\n[nope]\nx = 1\n",
        0o644,
    );
    let e = err(&d);
    assert_eq!(e.kind(), ConfigErrorKind::Invalid);
    let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(
        lines[0],
        format!(
            "{}:4: unknown key \"ur\" in [control_plane] (known: url, ca_file, ca_sha256, \
             registration_key, registration_key_file, proxy_from_env)",
            p.display()
        )
    );
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "{}:8: unknown key \"spare_control_plane\" in [agent]",
            p.display()
        )) && l.ends_with("spare_control_plane belongs in [self_protection]")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!(
            "{}:9: unknown section [nope] (known: [control_plane], [agent], [self_protection])",
            p.display()
        )),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
}

#[test]
fn keys_outside_sections_and_nested_tables_are_refused() {
    let d = Dir::new();
    d.write(
        "agent.toml",
        &format!(
            "url = \"https://x\"\n{}[control_plane.tls]\nx = 1\n",
            d.init_snippet()
        ),
        0o600,
    );
    let m = err(&d).to_string();
    assert!(
        m.contains(
            "agent.toml:1: unknown key \"url\" at the top level: it belongs in [control_plane]"
        ),
        "{m}"
    );
    assert!(
        m.contains(":7: unknown key \"tls\" in [control_plane]"),
        "{m}"
    );
}

#[test]
fn plain_http_is_refused_with_the_reason() {
    let d = Dir::new();
    let text = d
        .init_snippet()
        .replace("https://host:8443", "http://host:8443");
    let p = d.write("agent.toml", &text, 0o600);
    let m = err(&d).to_string();
    assert!(
        m.starts_with(&format!(
            "{}:2: control_plane.url: \"http://host:8443\" is plain http://",
            p.display()
        )),
        "{m}"
    );
    assert!(m.contains("https:// only"), "{m}");
}

#[test]
fn urls_are_checked_and_normalised() {
    let ok = |s: &str| Url::parse(s).unwrap();
    assert_eq!(ok("https://h.example/").normalized, "https://h.example");
    assert_eq!(
        ok("HTTPS://H.Example:8443").normalized,
        "https://h.example:8443"
    );
    let v6 = ok("https://[2001:DB8::1]:8443");
    assert_eq!((v6.host.as_str(), v6.port), ("2001:db8::1", 8443));
    assert_eq!(v6.normalized, "https://[2001:db8::1]:8443");
    assert_eq!(ok("https://10.0.0.1").port, 443);
    for bad in [
        "https://",
        "https://:8443",
        "https://h/api",
        "https://h?x=1",
        "https://u:p@h",
        "https://h:0",
        "https://h:99999",
        "https://h:+1",
        "https://2001:db8::1",
        "https://[zz]",
        "https://h h",
        "ftp://h",
        "h:8443",
    ] {
        assert!(Url::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn a_missing_ca_file_says_what_to_copy() {
    let d = Dir::new();
    let text = d.init_snippet().replace("ca.pem", "missing.pem");
    let p = d.write("agent.toml", &text, 0o600);
    let m = err(&d).to_string();
    assert!(
        m.starts_with(&format!(
            "{}:3: control_plane.ca_file: cannot read",
            p.display()
        )),
        "{m}"
    );
    assert!(m.contains("chaos-control init"), "{m}");
}

#[test]
fn a_ca_file_must_be_a_certificate_and_not_a_key() {
    let d = Dir::new();
    d.write("agent.toml", &d.init_snippet(), 0o600);
    d.write("ca.pem", "hello\n", 0o644);
    assert!(err(&d).to_string().contains("not a PEM certificate"));
    d.write(
        "ca.pem",
        &format!("{CA}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
        0o644,
    );
    assert!(err(&d).to_string().contains("contains a private key"));
    d.write("ca.pem", CA, 0o666);
    assert!(err(&d)
        .to_string()
        .contains("writable by group or others (mode 0666)"));
}

#[test]
fn required_keys_missing_are_named() {
    let d = Dir::new();
    d.write("agent.toml", "[control_plane]\n", 0o600);
    let e = err(&d);
    let m = e.to_string();
    assert!(m.contains("control_plane.url is missing"), "{m}");
    assert!(m.contains("control_plane.ca_file is missing"), "{m}");
    assert_eq!(e.problems().len(), 2);
}

#[test]
fn key_and_key_file_together_are_refused() {
    let d = Dir::new();
    let kf = d.write("registration.key", &format!("{KEY}\n"), 0o600);
    d.write("agent.toml", &d.init_snippet(), 0o600);
    d.write(
        "config.d/30-key.toml",
        &format!(
            "[control_plane]\nregistration_key_file = \"{}\"\n",
            kf.display()
        ),
        0o600,
    );
    let m = err(&d).to_string();
    assert!(
        m.contains("agent.toml:5) and control_plane.registration_key_file ("),
        "{m}"
    );
    assert!(m.contains("30-key.toml:2) are both set: keep one"), "{m}");
    assert!(!m.contains(&KEY[4..]), "{m}");
}

#[test]
fn a_key_file_is_read_trimmed_and_checked() {
    let d = Dir::new();
    let kf = d.write("registration.key", &format!("  {KEY}\n\n"), 0o600);
    let text = d.init_snippet().replace(
        &format!("registration_key = \"{KEY}\""),
        &format!("registration_key_file = \"{}\"", kf.display()),
    );
    d.write("agent.toml", &text, 0o600);
    let (c, warnings) = load(&d).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        c.control_plane.registration_key.as_ref().unwrap().expose(),
        KEY
    );
    assert_eq!(
        c.control_plane.registration_key_file.as_deref(),
        Some(kf.as_path())
    );

    // Readable by others: loads, with a warning.
    fs::set_permissions(&kf, fs::Permissions::from_mode(0o644)).unwrap();
    let (_, warnings) = load(&d).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("readable by group or others (mode 0644)"));

    // Re-read on every load (reload): a bad key now is an error that hides the content.
    let bad = format!("{}Z", &KEY[..KEY.len() - 1]);
    d.write("registration.key", &bad, 0o600);
    let m = err(&d).to_string();
    assert!(m.contains("not a registration key"), "{m}");
    assert!(!m.contains(&bad[4..]), "{m}");
    d.write("registration.key", "\n", 0o600);
    assert!(err(&d).to_string().contains("is empty"));
    fs::remove_file(&kf).unwrap();
    assert!(err(&d)
        .to_string()
        .contains("registration_key_file: cannot read"));
}

#[test]
fn no_key_at_all_is_allowed() {
    let d = Dir::new();
    let text = d
        .init_snippet()
        .replace(&format!("registration_key = \"{KEY}\"\n"), "");
    d.write("agent.toml", &text, 0o644);
    let (c, warnings) = load(&d).unwrap();
    assert!(c.control_plane.registration_key.is_none());
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn an_inline_key_in_a_readable_file_is_a_warning() {
    let d = Dir::new();
    d.write("agent.toml", &d.init_snippet(), 0o644);
    let (_, warnings) = load(&d).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("holds the registration key"),
        "{warnings:?}"
    );
}

#[test]
fn bad_key_formats_are_refused_without_echoing_them() {
    for bad in [
        "ccr_abc",
        "cca_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5",
        "ccr_3F9C0D1E2A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5",
        "ccr_3f9c0d1e2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5 ",
        "<from chaos-control agents add NAME>",
    ] {
        let d = Dir::new();
        let text = d.init_snippet().replace(KEY, bad);
        d.write("agent.toml", &text, 0o600);
        let m = err(&d).to_string();
        assert!(
            m.contains(":5: control_plane.registration_key: not a registration key: expected \"ccr_\" followed by 64"),
            "{m}"
        );
        assert!(!m.contains(&bad[4..]), "{m}");
    }
    let d = Dir::new();
    let text = d.init_snippet().replace(&format!("\"{KEY}\""), "42");
    d.write("agent.toml", &text, 0o600);
    assert!(err(&d)
        .to_string()
        .contains("registration_key: must be a string, not an integer"));
}

#[test]
fn toml_syntax_errors_give_the_line_and_never_the_key() {
    let d = Dir::new();
    let text = d
        .init_snippet()
        .replace(&format!("\"{KEY}\""), &format!("\"{KEY}"));
    let p = d.write("agent.toml", &text, 0o600);
    let m = err(&d).to_string();
    assert!(
        m.starts_with(&format!("{}:5: invalid TOML", p.display())),
        "{m}"
    );
    assert!(!m.contains(&KEY[4..]), "{m}");
}

#[test]
fn nan_inf_and_wrong_types_are_refused() {
    let cases = [
        ("[agent]\npoll_wait_secs = nan\n", "agent.poll_wait_secs: must be a whole number of seconds, not nan (NaN is not a number)"),
        ("[agent]\npoll_wait_secs = -inf\n", "infinity is not a number"),
        ("[agent]\npoll_wait_secs = 30.0\n", "not the float 30.0"),
        ("[agent]\npoll_wait_secs = \"30\"\n", "not a string"),
        ("[agent]\npoll_wait_secs = 0\n", "0 is out of range"),
        ("[agent]\npoll_wait_secs = 61\n", "61 is out of range"),
        ("[agent]\npoll_wait_secs = -1\n", "-1 is negative"),
        ("[agent]\noutbox_max_bytes = nan\n", "NaN is not a number"),
        ("[agent]\noutbox_max_bytes = \"1KiB\"\n", "too small"),
        ("[agent]\noutbox_max_bytes = \"lots\"\n", "invalid size"),
        ("[agent]\nlog_format = \"xml\"\n", "use \"text\" or \"json\""),
        ("[agent]\nlog_level = \"\"\n", "empty"),
        ("[agent]\nstate_dir = \"var/lib/x\"\n", "is relative"),
        ("[self_protection]\nspare_control_plane = \"yes\"\n", "must be true or false"),
        ("[self_protection]\nspare_dns_resolvers = 1\n", "must be true or false"),
        ("[self_protection]\nextra_spared_destinations = \"10.0.0.0/8\"\n", "must be a list"),
        ("[self_protection]\nextra_spared_destinations = [\"10.0.0.1/8\"]\n", "write \"10.0.0.0/8\""),
        ("[self_protection]\nextra_spared_destinations = [\"db.example\"]\n", "[0]: \"db.example\" is not an IP address"),
        ("[self_protection]\nextra_spared_destinations = [\"::/129\"]\n", "0 to 128"),
        ("[control_plane]\nproxy_from_env = nan\n", "NaN is not a number"),
        ("[control_plane]\nca_sha256 = \"AB:CD\"\n", "not a SHA-256 fingerprint"),
        ("agent = 1\n", "agent must be a section"),
        ("[[agent]]\n", "agent must be a section"),
    ];
    for (extra, want) in cases {
        let d = Dir::new();
        d.write("agent.toml", &d.init_snippet(), 0o600);
        let p = d.write("config.d/50-x.toml", extra, 0o600);
        let e = err(&d);
        assert_eq!(e.kind(), ConfigErrorKind::Invalid);
        let m = e.to_string();
        assert!(m.contains(want), "{extra:?}: {m}");
        assert!(
            m.starts_with(&format!("{}:", p.display())),
            "{extra:?}: {m}"
        );
    }
}

#[test]
fn every_problem_of_every_file_is_reported() {
    let d = Dir::new();
    d.write(
        "agent.toml",
        &format!("{}[agent]\nlog_format = 1\n", d.init_snippet()),
        0o600,
    );
    d.write("config.d/1.toml", "[agent]\npoll_wait_secs = 0\n", 0o600);
    d.write("config.d/2.toml", "[agent\n", 0o600);
    let e = err(&d);
    assert_eq!(e.problems().len(), 3, "{e}");
    assert!(e.problems()[0]
        .file
        .as_ref()
        .unwrap()
        .ends_with("agent.toml"));
    assert!(e.problems()[2].file.as_ref().unwrap().ends_with("2.toml"));
}

#[test]
fn files_others_can_write_are_refused() {
    let d = Dir::new();
    d.write("agent.toml", &d.init_snippet(), 0o664);
    let m = err(&d).to_string();
    assert!(m.contains("writable by group or others (mode 0664)"), "{m}");
    assert!(m.contains("chmod go-w"), "{m}");

    let d = Dir::new();
    d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
    fs::set_permissions(d.path("config.d"), fs::Permissions::from_mode(0o777)).unwrap();
    let m = err(&d).to_string();
    assert!(m.contains("the drop-in directory"), "{m}");
}

#[test]
fn values_are_typed_and_defaults_apply() {
    let d = Dir::new();
    d.write(
        "agent.toml",
        &format!(
            "{}proxy_from_env = true\n\
             [agent]\nstate_dir = \"/srv/chaos\"\noutbox_max_bytes = 0x200000\nlog_level = \"chaos_engine=debug,info\"\n\
             [self_protection]\nspare_dns_resolvers = false\n\
             extra_spared_destinations = [\"192.0.2.7\", \"10.0.0.0/8\", \"2001:db8::/32\", \"10.0.0.0/8\"]\n",
            d.init_snippet()
        ),
        0o600,
    );
    let (c, _) = load(&d).unwrap();
    assert!(c.control_plane.proxy_from_env);
    assert_eq!(c.agent.state_dir(None), PathBuf::from("/srv/chaos"));
    assert_eq!(
        c.agent.state_dir(Some(Path::new("/cli"))),
        PathBuf::from("/cli")
    );
    assert_eq!(c.agent.outbox_max_bytes, 2 << 20);
    assert_eq!(c.agent.log_level, "chaos_engine=debug,info");
    assert!(c.self_protection.spare_control_plane);
    assert!(!c.self_protection.spare_dns_resolvers);
    let spared: Vec<String> = c
        .self_protection
        .extra_spared_destinations
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(spared, ["192.0.2.7/32", "10.0.0.0/8", "2001:db8::/32"]);
}

#[test]
fn debug_of_the_config_never_shows_the_key() {
    let d = Dir::new();
    d.write("agent.toml", &d.init_snippet(), 0o600);
    let (c, _) = load(&d).unwrap();
    let dbg = format!("{c:?} {:#?}", c);
    assert!(!dbg.contains(&KEY[4..]), "{dbg}");
    assert!(dbg.contains("ccr_…(redacted)"), "{dbg}");
    let key = c.control_plane.registration_key.unwrap();
    assert_eq!(format!("{key}"), "ccr_…(redacted)");
    assert_eq!(format!("{key:?}"), "ccr_…(redacted)");
    assert_eq!(redact(&format!("x {KEY}, y")), "x ccr_…(redacted), y");
    assert_eq!(redact("\"ccr_\" followed"), "\"ccr_\" followed");
    assert_eq!(
        redact("ccr_…(redacted) ccr_x"),
        "ccr_…(redacted) ccr_…(redacted)"
    );
}

#[test]
fn fingerprints_are_normalised() {
    let plain = FP.replace(':', "").to_ascii_lowercase();
    assert_eq!(parse_fingerprint(&plain).unwrap(), FP);
    assert_eq!(parse_fingerprint(FP).unwrap(), FP);
    assert!(parse_fingerprint(&format!("{plain}00")).is_err());
    assert!(parse_fingerprint(&plain.replace('a', "g")).is_err());
}

#[test]
fn nameservers_are_read_from_resolv_conf() {
    let text = "# generated\nsearch example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                nameserver 10.0.0.2\n  nameserver   192.0.2.53  # x\n;nameserver 1.1.1.1\n\
                nameserver bogus\noptions ndots:2\n";
    let got: Vec<String> = nameservers(text).iter().map(|a| a.to_string()).collect();
    assert_eq!(got, ["10.0.0.2", "fe80::1", "192.0.2.53"]);
}

/// The sample with every `#key = value` line uncommented.
fn uncommented_sample() -> String {
    SAMPLE
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_sample_documents_every_key_with_its_default() {
    // Every key the code knows appears exactly once, commented, in its section.
    for (section, keys) in SECTIONS {
        let header = format!("\n[{section}]\n");
        let start = SAMPLE
            .find(&header)
            .unwrap_or_else(|| panic!("no [{section}] in the sample"));
        let body = &SAMPLE[start + header.len()..];
        let body = &body[..body.find("\n[").unwrap_or(body.len())];
        for key in *keys {
            let n = body
                .lines()
                .filter(|l| l.starts_with(&format!("#{key} = ")))
                .count();
            assert_eq!(n, 1, "[{section}] {key} in the sample");
        }
    }
    // Uncommented, it parses with no unknown key and no bad value, and sets every key.
    let text = uncommented_sample();
    let mut raw = Raw::default();
    let mut problems = Vec::new();
    raw.read_document(Path::new("agent.toml.sample"), &text, &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    let set = [
        raw.url.is_some(),
        raw.ca_file.is_some(),
        raw.ca_sha256.is_some(),
        raw.registration_key.is_some(),
        raw.registration_key_file.is_some(),
        raw.proxy_from_env.is_some(),
        raw.state_dir.is_some(),
        raw.poll_wait_secs.is_some(),
        raw.outbox_max_bytes.is_some(),
        raw.log_format.is_some(),
        raw.log_level.is_some(),
        raw.spare_control_plane.is_some(),
        raw.spare_dns_resolvers.is_some(),
        raw.extra_spared_destinations.is_some(),
    ];
    assert_eq!(
        set.len(),
        SECTIONS.iter().map(|(_, k)| k.len()).sum::<usize>()
    );
    assert!(set.iter().all(|s| *s), "{set:?}");
    // Keys with a default show exactly that default.
    let agent = AgentSettings::default();
    let protection = SelfProtection::default();
    assert!(!raw.proxy_from_env.unwrap().value);
    assert_eq!(
        raw.state_dir.unwrap().value,
        PathBuf::from(DEFAULT_STATE_DIR)
    );
    assert_eq!(raw.outbox_max_bytes.unwrap().value, agent.outbox_max_bytes);
    assert_eq!(raw.log_format.unwrap().value, agent.log_format);
    assert_eq!(raw.log_level.unwrap().value, agent.log_level);
    assert_eq!(
        raw.spare_control_plane.unwrap().value,
        protection.spare_control_plane
    );
    assert_eq!(
        raw.spare_dns_resolvers.unwrap().value,
        protection.spare_dns_resolvers
    );
    assert_eq!(
        raw.url.unwrap().value.normalized,
        "https://control.example:8443"
    );
}

#[test]
fn the_sample_as_installed_loads_once_completed() {
    // As shipped (every key commented), with the init snippet as a drop-in.
    let d = Dir::new();
    d.write("agent.toml", SAMPLE, 0o644);
    d.write("config.d/20-control.toml", &d.init_snippet(), 0o600);
    let (c, _) = load(&d).unwrap();
    assert_eq!(c.agent, AgentSettings::default());
    // Uncommented, with this test's CA and without the key file (one key source only).
    let d = Dir::new();
    let ca = d.ca();
    let text: String = uncommented_sample()
        .lines()
        .filter(|l| !l.starts_with("registration_key_file = "))
        .map(|l| l.replace("/etc/chaos-agent/ca.pem", &ca.display().to_string()) + "\n")
        .collect();
    d.write("agent.toml", &text, 0o600);
    let (c, _) = load(&d).unwrap();
    assert_eq!(c.control_plane.url, "https://control.example:8443");
}
