//! `--metrics-listen`: the Prometheus endpoint, scraped over plain HTTP while agents poll.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chaos_protocol::client::Method;
use common::Harness;

/// `GET /metrics` on the metrics router, served on an ephemeral port of 127.0.0.1.
fn serve_metrics(h: &Harness) -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let router = chaos_control::server::metrics_router(h.app.clone());
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let l = tokio::net::TcpListener::from_std(l).unwrap();
                axum::serve(l, router).await.unwrap();
            })
    });
    addr
}

fn scrape(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}

fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

#[test]
fn metrics_show_agents_runs_polls_dispatch_and_auth_failures() {
    let h = Harness::new();
    let addr = serve_metrics(&h);
    let a = h.agent("scraped");
    h.add_agent("never-registered");
    // Two refused calls.
    h.raw(
        Method::GET,
        &format!("/agents/{}/tasks", a.agent_id),
        None,
        b"",
    );
    h.raw(Method::GET, "/admin/agents", Some("cca_nope"), b"");

    // A long poll held while scraped, then woken by a run.
    let (agent_id, token) = (a.agent_id.clone(), a.token.token.clone());
    let client = h.client();
    let poll = std::thread::spawn(move || client.tasks(&agent_id, &token, Duration::from_secs(30)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, t) = scrape(addr, "/metrics");
        if value(&t, "chaos_control_long_polls") == 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the poll never showed:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    h.create_run(&["scraped"]);
    let got = poll.join().unwrap().unwrap();
    assert_eq!(got.tasks.len(), 1);

    let (status, t) = scrape(addr, "/metrics");
    assert_eq!(status, 200, "{t}");
    assert_eq!(value(&t, "chaos_control_agents{state=\"active\"}"), 1.0);
    assert_eq!(value(&t, "chaos_control_agents{state=\"pending\"}"), 1.0);
    assert_eq!(value(&t, "chaos_control_runs{state=\"pending\"}"), 1.0);
    assert_eq!(value(&t, "chaos_control_long_polls"), 0.0);
    assert_eq!(value(&t, "chaos_control_dispatch_seconds_count"), 1.0);
    assert_eq!(
        value(&t, "chaos_control_dispatch_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "chaos_control_auth_failures_total{code=\"missing_token\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &t,
            "chaos_control_auth_failures_total{code=\"invalid_token\"}"
        ),
        1.0
    );
    // (The calls above are finished: their connections are closed.)
    assert_eq!(value(&t, "chaos_control_connections_refused_total"), 0.0);
    assert!(value(&t, "chaos_control_connections") >= 0.0);
    // Delivering it again (not acknowledged) is not a second dispatch.
    let c = h.client();
    c.tasks(&a.agent_id, &a.token.token, Duration::ZERO)
        .unwrap();
    let (_, t) = scrape(addr, "/metrics");
    assert_eq!(value(&t, "chaos_control_dispatch_seconds_count"), 1.0);
    // Nothing else is served there.
    assert_eq!(scrape(addr, "/api/v1/health").0, 404);
}
