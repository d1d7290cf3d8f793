//! Every refusal: the right status and code, nothing stored, and the server keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use chaos_control::server::Settings;
use chaos_protocol::client::{Client, ClientConfig, ClientError, Method};
use chaos_protocol::run::{LogBatch, LogLevel, LogLine};
use common::{code, register_req, Harness};
use serde_json::{json, Value};

fn one_line(seq: u64, message: &str) -> LogBatch {
    LogBatch {
        lines: vec![LogLine {
            seq,
            at_ms: 1,
            level: LogLevel::Info,
            message: message.into(),
        }],
    }
}

fn assert_refused(got: (u16, Value), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

#[test]
fn bad_credentials_are_refused_and_nothing_is_stored() {
    let h = Harness::new();
    let a = h.agent("alpha");
    let b = h.agent("beta");
    let run = h.create_run(&["alpha"]).runs[0].run_id.clone();
    let before = h.counts();
    let tasks = format!("/agents/{}/tasks", a.agent_id);
    let logs = format!("/runs/{run}/logs");
    let body = serde_json::to_vec(&one_line(1, "x")).unwrap();
    let forged = format!("cca_{}", "ab".repeat(32));

    // No token, malformed header, wrong token, a registration key, the admin token.
    assert_refused(h.raw(Method::GET, &tasks, None, b""), 401, "missing_token");
    assert_refused(
        h.raw(Method::POST, &logs, None, &body),
        401,
        "missing_token",
    );
    assert_refused(
        h.raw(Method::GET, &tasks, Some("garbage"), b""),
        401,
        "invalid_token",
    );
    assert_refused(
        h.raw(Method::GET, &tasks, Some(&forged), b""),
        401,
        "invalid_token",
    );
    assert_refused(
        h.raw(Method::POST, &logs, Some(&forged), &body),
        401,
        "invalid_token",
    );
    assert_refused(
        h.raw(Method::GET, &tasks, Some(&h.admin), b""),
        401,
        "invalid_token",
    );
    // Another agent's token.
    assert_refused(
        h.raw(Method::GET, &tasks, Some(&b.token.token), b""),
        403,
        "forbidden",
    );
    assert_refused(
        h.raw(Method::POST, &logs, Some(&b.token.token), &body),
        403,
        "forbidden",
    );
    assert_refused(
        h.raw(
            Method::POST,
            &format!("/agents/{}/token", a.agent_id),
            Some(&b.token.token),
            b"{}",
        ),
        403,
        "forbidden",
    );
    // Agent tokens cannot make operator calls, and a wrong admin token is refused.
    assert_refused(
        h.raw(Method::GET, "/admin/agents", Some(&a.token.token), b""),
        401,
        "invalid_token",
    );
    let wrong_admin = format!("ccadm_{}", "cd".repeat(32));
    assert_refused(
        h.raw(
            Method::POST,
            "/admin/agents",
            Some(&wrong_admin),
            br#"{"name":"intruder"}"#,
        ),
        401,
        "invalid_token",
    );
    assert_refused(
        h.raw(Method::GET, "/admin/runs", None, b""),
        401,
        "missing_token",
    );

    assert_eq!(h.counts(), before, "nothing stored");
    h.client().health().unwrap();
}

#[test]
fn registration_keys_are_single_use_and_expire() {
    let h = Harness::new();
    let c = h.client();
    let key = h.add_agent("once");
    c.register(&register_req(&key.registration_key)).unwrap();
    let e = c
        .register(&register_req(&key.registration_key))
        .unwrap_err();
    assert_eq!(code(&e), (401, "registration_key_used".into()));
    let e = c
        .register(&register_req(&format!("ccr_{}", "00".repeat(32))))
        .unwrap_err();
    assert_eq!(code(&e), (401, "registration_key_invalid".into()));
    let e = c.register(&register_req("not-a-key")).unwrap_err();
    assert_eq!(code(&e), (401, "registration_key_invalid".into()));

    let short = h
        .admin_post(
            "/admin/agents",
            &json!({"name": "short", "key_ttl_secs": 1}),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let e = c
        .register(&register_req(short["registration_key"].as_str().unwrap()))
        .unwrap_err();
    assert_eq!(code(&e), (401, "registration_key_expired".into()));
    let info = h.admin_get("/admin/agents/short").unwrap();
    assert_eq!(info["state"], "pending");
    // Adding a name twice is a conflict.
    let e = h
        .admin_post("/admin/agents", &json!({"name": "once"}))
        .unwrap_err();
    assert_eq!(code(&e), (409, "conflict".into()));
}

#[test]
fn expired_and_revoked_tokens_are_refused() {
    let h = Harness::with(Settings {
        token_ttl: Duration::from_millis(2000),
        ..Default::default()
    });
    let c = h.client();
    let a = h.agent("expiring");
    c.tasks(&a.agent_id, &a.token.token, Duration::ZERO)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let e = c
        .tasks(&a.agent_id, &a.token.token, Duration::ZERO)
        .unwrap_err();
    assert_eq!(code(&e), (401, "token_expired".into()));
    let e = c.rotate(&a.agent_id, &a.token.token).unwrap_err();
    assert_eq!(code(&e), (401, "token_expired".into()));

    let r = h.agent("revoked");
    c.tasks(&r.agent_id, &r.token.token, Duration::ZERO)
        .unwrap();
    h.admin_post(
        "/admin/agents/revoked/revoke",
        &json!({"reason": "decommissioned"}),
    )
    .unwrap();
    let e = c
        .tasks(&r.agent_id, &r.token.token, Duration::ZERO)
        .unwrap_err();
    assert_eq!(code(&e), (401, "agent_revoked".into()));
    let info = h.admin_get("/admin/agents/revoked").unwrap();
    assert_eq!(
        (info["state"].as_str(), info["state_reason"].as_str()),
        (Some("revoked"), Some("decommissioned"))
    );
}

#[test]
fn malformed_oversized_and_invalid_bodies() {
    let h = Harness::new();
    let a = h.agent("bodies");
    let run = h.create_run(&["bodies"]).runs[0].run_id.clone();
    let tok = Some(a.token.token.as_str());
    let logs = format!("/runs/{run}/logs");
    let before = h.counts();

    assert_refused(
        h.raw(Method::POST, &logs, tok, b"{not json"),
        400,
        "malformed_json",
    );
    assert_refused(h.raw(Method::POST, &logs, tok, b""), 400, "malformed_json");
    assert_refused(
        h.raw(Method::POST, &logs, tok, br#"{"lines": [], "extra": 1}"#),
        422,
        "invalid",
    );
    let (s, b) = h.raw(
        Method::POST,
        &logs,
        tok,
        br#"{"lines": [{"seq": "one", "at_ms": 1, "level": "info", "message": "m"}]}"#,
    );
    assert_refused((s, b.clone()), 422, "invalid");
    assert_eq!(b["error"]["problems"][0]["path"], "lines[0].seq", "{b}");
    let (s, b) = h.raw(
        Method::POST,
        &logs,
        tok,
        br#"{"lines": [{"seq": 0, "at_ms": 1, "level": "info", "message": "bell\u0007"}]}"#,
    );
    assert_refused((s, b.clone()), 422, "invalid");
    assert_eq!(b["error"]["problems"].as_array().unwrap().len(), 2, "{b}");

    // 2 MiB of log lines: 413 before anything is parsed.
    let huge = one_line(1, &"x".repeat(2 * 1024 * 1024));
    let body = serde_json::to_vec(&huge).unwrap();
    assert_refused(
        h.raw(Method::POST, &logs, tok, &body),
        413,
        "payload_too_large",
    );
    // A message over the per-line limit inside a small-enough body: 422.
    let long = serde_json::to_vec(&one_line(1, &"y".repeat(9000))).unwrap();
    assert_refused(h.raw(Method::POST, &logs, tok, &long), 422, "invalid");

    assert_refused(h.raw(Method::GET, "/nope", None, b""), 404, "not_found");
    assert_refused(
        h.raw(Method::DELETE, "/health", None, b""),
        405,
        "method_not_allowed",
    );
    assert_refused(
        h.raw(
            Method::GET,
            &format!("/agents/{}/tasks?wait=soon", a.agent_id),
            tok,
            b"",
        ),
        400,
        "bad_request",
    );
    assert_eq!(h.counts(), before, "nothing stored");
    h.client().health().unwrap();
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the harness's server, trusting its CA: raw HTTP/1.1 on top.
fn tls(h: &Harness) -> Tls {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&h.ca).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(h.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Read one response with a Content-Length body: status, lower-cased head, JSON body.
fn read_response(s: &mut Tls) -> (u16, String, Value) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    s.read_exact(&mut body).expect("the response body");
    (status, head, serde_json::from_slice(&body).unwrap())
}

/// After a 413 the rest of the body is still read (a lingering close), so a client that
/// only reads the answer once it has sent everything gets the answer, not EPIPE or a reset.
/// Here the client reads the answer first and sends the rest after: the server must still
/// take all of it, then close cleanly.
#[test]
fn oversized_bodies_are_answered_then_drained() {
    let h = Harness::new();
    let a = h.agent("linger");
    let run = h.create_run(&["linger"]).runs[0].run_id.clone();
    let max = h.settings.max_body;
    let head = |framing: &str| {
        format!(
            "POST {}/runs/{run}/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\n{framing}\r\n\r\n",
            chaos_protocol::API_PREFIX,
            a.token.token
        )
    };
    let refused = |s: &mut Tls| {
        let (status, head, body) = read_response(s);
        assert_refused((status, body), 413, "payload_too_large");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    };
    let closes_cleanly = |s: &mut Tls| {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
            .expect("a clean close after the body");
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    };

    // Refused on its Content-Length: the answer comes before any of the body is sent.
    let body = vec![b'x'; 2 * max];
    let mut s = tls(&h);
    s.write_all(head(&format!("Content-Length: {}", body.len())).as_bytes())
        .unwrap();
    s.flush().unwrap();
    refused(&mut s);
    s.write_all(&body).expect("the server still reads the body");
    s.flush().unwrap();
    closes_cleanly(&mut s);

    // Chunked: refused once past the limit, and the rest is still read.
    let mut s = tls(&h);
    s.write_all(head("Transfer-Encoding: chunked").as_bytes())
        .unwrap();
    s.write_all(format!("{:x}\r\n", max + 1).as_bytes())
        .unwrap();
    s.write_all(&body[..=max]).unwrap();
    s.write_all(b"\r\n").unwrap();
    s.flush().unwrap();
    refused(&mut s);
    s.write_all(format!("{:x}\r\n", max).as_bytes()).unwrap();
    s.write_all(&body[..max])
        .expect("the server still reads the body");
    s.write_all(b"\r\n0\r\n\r\n").unwrap();
    s.flush().unwrap();
    closes_cleanly(&mut s);

    h.client().health().unwrap();
}

#[test]
fn sql_metacharacters_are_data_not_sql() {
    let h = Harness::new();
    let evil = "x'); DROP TABLE agents; --";
    let (s, b) = h.raw(
        Method::POST,
        "/admin/agents",
        Some(&h.admin),
        serde_json::to_vec(&json!({ "name": evil }))
            .unwrap()
            .as_slice(),
    );
    assert_refused((s, b), 422, "invalid");
    assert_refused(
        h.raw(
            Method::GET,
            "/admin/agents/x'%20OR%20'1'='1",
            Some(&h.admin),
            b"",
        ),
        404,
        "not_found",
    );
    assert_refused(
        h.raw(
            Method::GET,
            "/admin/runs/'%20OR%201=1--",
            Some(&h.admin),
            b"",
        ),
        404,
        "not_found",
    );
    assert_refused(
        h.raw(
            Method::GET,
            "/admin/runs?agent=a'%20OR%20'1'='1",
            Some(&h.admin),
            b"",
        ),
        404,
        "not_found",
    );

    // Free text with metacharacters is stored verbatim (bound parameters).
    let key = h.add_agent("sql-host");
    let mut req = register_req(&key.registration_key);
    req.host.hostname = "db'; DELETE FROM tokens; --".into();
    let reg = h.client().register(&req).unwrap();
    let run = h.create_run(&["sql-host"]).runs[0].run_id.clone();
    let msg = "'); DROP TABLE logs; SELECT ('";
    h.client()
        .logs(&run, &reg.token.token, &one_line(1, msg))
        .unwrap();
    let info = h.admin_get("/admin/agents/sql-host").unwrap();
    assert_eq!(info["host"]["hostname"], "db'; DELETE FROM tokens; --");
    let page = h.admin_get(&format!("/admin/runs/{run}/logs")).unwrap();
    assert_eq!(page["lines"][0]["message"], msg);
    assert_eq!(h.counts(), (1, 1, 1));
    h.client()
        .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap();
}

#[test]
fn plain_http_and_untrusted_clients_are_refused() {
    let h = Harness::new();
    // Plain HTTP to the TLS port: no HTTP answer, and the server keeps serving.
    let mut s = std::net::TcpStream::connect(h.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // The client refuses http:// itself.
    let e = Client::new(ClientConfig::new(
        format!("http://127.0.0.1:{}", h.addr.port()),
        h.ca.clone(),
    ))
    .unwrap_err();
    assert!(matches!(e, ClientError::Config(_)), "{e}");

    // A client that trusts another CA: the TLS handshake fails.
    let other = Harness::new();
    let c = Client::new(ClientConfig::new(h.url(), other.ca.clone())).unwrap();
    let e = c.health().unwrap_err();
    assert!(matches!(e, ClientError::Transport(_)), "{e}");
    assert!(e.to_string().contains("invalid peer certificate"), "{e}");

    // A CA whose fingerprint does not match what the operator copied.
    let mut cfg = ClientConfig::new(h.url(), h.ca.clone());
    cfg.ca_sha256 = Some("00:11".into());
    assert!(matches!(
        Client::new(cfg).unwrap_err(),
        ClientError::Config(_)
    ));
    let info = chaos_control::pki::Paths::new(&h.dir).init_info().unwrap();
    let mut cfg = ClientConfig::new(h.url(), h.ca.clone());
    cfg.ca_sha256 = Some(info.ca_sha256.to_lowercase());
    Client::new(cfg).unwrap().health().unwrap();

    assert_eq!(h.counts(), (0, 0, 0));
    h.client().health().unwrap();
}

#[test]
fn secrets_are_stored_only_as_hashes_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::new();
    let key = h.add_agent("hashy");
    let reg = h
        .client()
        .register(&register_req(&key.registration_key))
        .unwrap();
    let paths = chaos_control::pki::Paths::new(&h.dir);
    // Flush the WAL into the main file so a grep of the directory sees everything.
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&h.dir).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("control.db")
        {
            all.extend(std::fs::read(&p).unwrap());
        }
    }
    let hay = String::from_utf8_lossy(&all);
    assert!(
        !hay.contains(&reg.token.token[4..]),
        "access token stored in clear"
    );
    assert!(
        !hay.contains(&key.registration_key[4..]),
        "key stored in clear"
    );
    assert!(!hay.contains(&h.admin[6..]), "admin token stored in clear");
    let mut private = vec![paths.ca_key(), paths.server_key(), paths.admin_token()];
    if common::on_postgres() {
        // The store lives in PostgreSQL (what it holds there: postgres.rs,
        // secrets_reach_postgresql_only_as_hashes); none of it is in the directory.
        assert!(!paths.db().exists(), "a SQLite store beside PostgreSQL");
    } else {
        private.push(paths.db());
    }
    for p in private {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
}

/// A caller without a valid token learns nothing about a call's schema: the token is checked
/// before the body is read, so a large, schema-wrong body gets 401 (not a 422 naming the
/// expected fields), on agent and admin calls alike, and the answer arrives although the
/// client writes its whole body first.
#[test]
fn tokens_are_checked_before_bodies_are_parsed() {
    let h = Harness::new();
    let a = h.agent("gate");
    let run = h.create_run(&["gate"]).runs[0].run_id.clone();
    let before = h.counts();
    // Just under the body limit, valid JSON of the wrong shape.
    let filler = "z".repeat(h.settings.max_body - 64);
    let wrong = serde_json::to_vec(&json!({ "unexpected": filler })).unwrap();
    assert!(wrong.len() < h.settings.max_body);
    let forged = format!("cca_{}", "cd".repeat(32));
    let agent_calls = [
        format!("/runs/{run}/status"),
        format!("/runs/{run}/logs"),
        format!("/runs/{run}/result"),
        format!("/agents/{}/token", a.agent_id),
    ];
    for path in &agent_calls {
        assert_refused(
            h.raw(Method::POST, path, None, &wrong),
            401,
            "missing_token",
        );
        assert_refused(
            h.raw(Method::POST, path, Some(&forged), &wrong),
            401,
            "invalid_token",
        );
        // The admin token is not an agent token either.
        assert_refused(
            h.raw(Method::POST, path, Some(&h.admin), &wrong),
            401,
            "invalid_token",
        );
    }
    for path in [
        "/admin/agents",
        "/admin/runs",
        &format!("/admin/runs/{run}/abort"),
    ] {
        assert_refused(
            h.raw(Method::POST, path, None, &wrong),
            401,
            "missing_token",
        );
        assert_refused(
            h.raw(Method::POST, path, Some(a.token.token.as_str()), &wrong),
            401,
            "invalid_token",
        );
    }
    assert_eq!(h.counts(), before, "nothing stored");
    // With the right token the same body is parsed, and refused for its shape.
    let (s, b) = h.raw(
        Method::POST,
        &format!("/runs/{run}/logs"),
        Some(a.token.token.as_str()),
        &wrong,
    );
    assert_refused((s, b), 422, "invalid");
    h.client().health().unwrap();
}

/// An agent may only report its run's own faults: fault ids the run's experiment makes, at
/// their step, with their kind. Path-like ids, another run's ids and invented kinds are
/// refused (422, the offending field named) and nothing is stored.
#[test]
fn status_and_result_report_only_the_runs_own_faults() {
    let h = Harness::new();
    let a = h.agent("owner");
    let runs = h.create_run(&["owner"]);
    let run = runs.runs[0].run_id.clone();
    let other = h.create_run(&["owner"]).runs[0].run_id.clone();
    let tok = Some(a.token.token.as_str());
    let status = |fault_id: &str, step: u32, kind: &str| {
        serde_json::to_vec(&json!({
            "state": "running",
            "faults": [{"fault_id": fault_id, "step": step, "kind": kind, "state": "holding"}]
        }))
        .unwrap()
    };
    let path = format!("/runs/{run}/status");
    let own = format!("{run}-1-1");
    for (id, step, kind, field) in [
        ("../../etc/passwd", 0, "disk.fill", "faults[0].fault_id"),
        (
            &format!("{other}-1-1")[..],
            0,
            "disk.fill",
            "faults[0].fault_id",
        ),
        (
            &format!("{run}-1-2")[..],
            0,
            "disk.fill",
            "faults[0].fault_id",
        ),
        (&own[..], 0, "evil.kind", "faults[0].kind"),
        (&own[..], 3, "disk.fill", "faults[0].step"),
    ] {
        let (s, b) = h.raw(Method::POST, &path, tok, &status(id, step, kind));
        assert_refused((s, b.clone()), 422, "invalid");
        assert_eq!(b["error"]["problems"][0]["path"], field, "{b}");
    }
    let shown = h.admin_get(&format!("/admin/runs/{run}")).unwrap();
    assert_eq!(shown["state"], "pending", "{shown}");
    assert!(
        shown["faults"].as_array().is_none_or(|f| f.is_empty()),
        "{shown}"
    );
    // The run's own fault is taken.
    let (s, b) = h.raw(Method::POST, &path, tok, &status(&own, 0, "disk.fill"));
    assert_eq!(s, 200, "{b}");

    // A result naming a fault of another run is refused the same way.
    let result = json!({
        "run_id": run, "name": "fill-tmp", "outcome": "completed", "elapsed_ms": 5,
        "steps": [{"name": "fill", "outcome": "completed", "faults": [{
            "fault_id": "../x", "kind": "disk.fill", "description": "d", "injected": true,
            "held_ms": 1, "revert": "reverted", "manual_undo": []
        }]}]
    });
    let (s, b) = h.raw(
        Method::POST,
        &format!("/runs/{run}/result"),
        tok,
        &serde_json::to_vec(&result).unwrap(),
    );
    assert_refused((s, b.clone()), 422, "invalid");
    assert_eq!(
        b["error"]["problems"][0]["path"], "steps[].faults[0].fault_id",
        "{b}"
    );
}

/// Control characters (an ANSI escape in an experiment name, a bell in a step name, a NUL in
/// a fault parameter) are refused on admin calls, each field named; nothing is created.
#[test]
fn control_characters_are_refused_in_experiments() {
    let h = Harness::new();
    h.agent("term");
    let before = h.counts();
    let mut exp = common::experiment();
    exp["name"] = json!("\u{1b}[31mred\u{1b}[0m");
    exp["steps"][0]["name"] = json!("ring\u{7}");
    exp["steps"][0]["faults"][0]["path"] = json!("/tmp\u{0}x");
    let body = serde_json::to_vec(&json!({"experiment": exp, "agents": ["term"]})).unwrap();
    let (s, b) = h.raw(Method::POST, "/admin/runs", Some(&h.admin), &body);
    assert_refused((s, b.clone()), 422, "invalid");
    let paths: Vec<&str> = b["error"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    for want in [
        "experiment.name",
        "experiment.steps[0].name",
        "experiment.steps[0].faults[0].path",
    ] {
        assert!(paths.contains(&want), "{want} not in {paths:?}: {b}");
    }
    // The abort reason is free text too.
    let run = h.create_run(&["term"]).runs[0].run_id.clone();
    let (s, b) = h.raw(
        Method::POST,
        &format!("/admin/runs/{run}/abort"),
        Some(&h.admin),
        br#"{"reason": "\u001b]0;title\u0007"}"#,
    );
    assert_refused((s, b), 422, "invalid");
    // A description may span lines.
    let mut ok = common::experiment();
    ok["description"] = json!("first line\nsecond\tline");
    let body = serde_json::to_vec(&json!({"experiment": ok, "agents": ["term"]})).unwrap();
    let (s, b) = h.raw(Method::POST, "/admin/runs", Some(&h.admin), &body);
    assert_eq!(s, 201, "{b}");
    assert_eq!(h.counts().1, before.1 + 2);
}

/// A revoked agent stays revoked: rekeying it is refused (409) unless the operator says
/// `unrevoke`; then the new key registers it again.
#[test]
fn rekey_does_not_silently_unrevoke() {
    let h = Harness::new();
    let a = h.agent("banned");
    h.admin_post(
        &format!("/admin/agents/{}/revoke", a.agent_id),
        &json!({"reason": "compromised"}),
    )
    .unwrap();
    let rekey = format!("/admin/agents/{}/rekey", a.agent_id);
    let e = h.admin_post(&rekey, &json!({})).unwrap_err();
    assert_eq!(code(&e), (409, "conflict".into()));
    assert!(e.to_string().contains("--unrevoke"), "{e}");
    let shown = h
        .admin_get(&format!("/admin/agents/{}", a.agent_id))
        .unwrap();
    assert_eq!(shown["state"], "revoked", "{shown}");
    let k = h.admin_post(&rekey, &json!({"unrevoke": true})).unwrap();
    let reg = h
        .client()
        .register(&register_req(k["registration_key"].as_str().unwrap()))
        .unwrap();
    assert_eq!(reg.agent_id, a.agent_id);
}

/// A plain TCP connection from `src` (any 127.0.0.0/8 address is this machine) to `dst`.
fn connect_from(src: &str, dst: std::net::SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        sock.connect(dst).await.unwrap().into_std().unwrap()
    });
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The server closed the connection: a read ends (EOF or reset) instead of waiting until
/// the 10 s read timeout.
fn assert_closed_by_server(s: &mut impl Read, what: &str) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // an answer (e.g. 408/400) before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => panic!("{what}: still open after 10 s ({e})"),
        }
    }
}

/// Clients that never finish: a TCP connection that never starts TLS, a request head sent
/// halfway, a body announced and never sent. Each is closed by the server once its time
/// is up (1 s here), not held forever.
#[test]
fn slow_clients_are_cut_off() {
    let h = Harness::with(Settings {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..Settings::default()
    });
    let a = h.agent("slowpoke");
    let run = h.create_run(&["slowpoke"]).runs[0].run_id.clone();

    let mut no_tls = connect_from("127.0.0.1", h.addr);
    let mut half_heads: Vec<Tls> = (0..5)
        .map(|_| {
            let mut s = tls(&h);
            s.write_all(b"POST /api/v1/agents/register HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
                .unwrap();
            s.flush().unwrap();
            s
        })
        .collect();
    let mut no_body = tls(&h);
    write!(
        no_body,
        "POST /api/v1/runs/{run}/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"lines\": [",
        a.token.token
    )
    .unwrap();
    no_body.flush().unwrap();

    assert_closed_by_server(&mut no_tls, "a connection that never started TLS");
    for (i, s) in half_heads.iter_mut().enumerate() {
        assert_closed_by_server(s, &format!("half-sent head {i}"));
    }
    let (status, _, body) = read_response(&mut no_body);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not arrive"),
        "{body}"
    );
    assert_closed_by_server(&mut no_body, "a body never sent");
    // The server serves on.
    h.client().health().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.app.connections().0 > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.app.connections().0, 0, "every connection was given back");
}

/// One address cannot hold more than its share: past the per-peer limit its new
/// connections are closed at once, while an agent on another address keeps its long poll
/// and gets its run.
#[test]
fn one_address_cannot_starve_the_others() {
    let h = Harness::with(Settings {
        header_timeout: Duration::from_secs(60),
        max_connections_per_peer: 5,
        ..Settings::default()
    });
    let a = h.agent("patient");
    // Five connections from 127.0.0.2 that never start TLS: held (their handshake has
    // 60 s).
    let held: Vec<TcpStream> = (0..5).map(|_| connect_from("127.0.0.2", h.addr)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.app.connections().0 < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(h.app.connections(), (5, 0));
    // The sixth from that address is closed at once.
    let mut sixth = connect_from("127.0.0.2", h.addr);
    assert_closed_by_server(&mut sixth, "a connection over the per-peer limit");
    assert_eq!(h.app.connections().1, 1, "one refused");
    // An agent on 127.0.0.1 long-polls and gets the run created meanwhile.
    let agent_id = a.agent_id.clone();
    let token = a.token.token.clone();
    let client = h.client();
    let poll = std::thread::spawn(move || client.tasks(&agent_id, &token, Duration::from_secs(20)));
    // (Created before or during the poll: either way the poll hands it out.)
    let run = h.create_run(&["patient"]).runs[0].run_id.clone();
    let got = poll.join().unwrap().unwrap();
    assert_eq!(got.tasks.len(), 1, "{got:?}");
    match &got.tasks[0] {
        chaos_protocol::agent::Task::Run(t) => assert_eq!(t.run_id, run),
        other => panic!("expected the run, got {other:?}"),
    }
    drop(held);
}
