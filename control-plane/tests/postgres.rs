//! The PostgreSQL store, through the real `chaos-control` binary: two `serve` replicas on one
//! database serve one fleet (dispatch, reports, tokens, clone detection and aborts cross
//! replicas), and `migrate` moves a SQLite store into PostgreSQL. Each test gets a fresh
//! database on the tests' private cluster (tests/common/pg.rs); without PostgreSQL they print
//! SKIPPED.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chaos_protocol::admin::{AddAgentRequest, CreateRunsRequest, CreateRunsResponse};
use chaos_protocol::agent::{RegisterResponse, Task, TasksResponse};
use chaos_protocol::client::{Client, Method};
use chaos_protocol::run::{RunResult, RunState, StatusUpdate};
use common::{code, experiment, free_port, lines, register_req, Served};
use serde_json::{json, Value};

/// The long polls' wait: a poll answered before it ran out was woken by the dispatch.
const WAIT: Duration = Duration::from_secs(30);

/// A replica: `serve --database URL` on a shared state directory, with its metrics endpoint
/// (to see when agents' polls are waiting on it).
struct Replica {
    served: Served,
    metrics: SocketAddr,
}

impl Replica {
    /// On `port` (the first replica on the port `init` was given: the CLI's commands reach
    /// it), with `--database URL`.
    fn start(dir: &Path, port: u16, url: &str) -> Replica {
        Replica::start_with(dir, port, &["--database", url], &[])
    }

    /// The same, with the URL in `CHAOS_CONTROL_DATABASE` instead.
    fn start_env(dir: &Path, port: u16, url: &str) -> Replica {
        Replica::start_with(dir, port, &[], &[("CHAOS_CONTROL_DATABASE", url)])
    }

    fn start_with(dir: &Path, port: u16, args: &[&str], env: &[(&str, &str)]) -> Replica {
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_arg = metrics.to_string();
        let mut args = args.to_vec();
        args.extend(["--metrics-listen", &metrics_arg]);
        let served = Served::serve_env(dir, port, &args, env);
        Replica { served, metrics }
    }

    fn client(&self) -> Client {
        self.served.client()
    }

    /// Wait until `n` agents' polls are waiting on this replica (a condition, not a timer);
    /// `polls`, those polls, must not have been answered meanwhile (nothing was sent to them).
    fn wait_for_polls(&self, n: u64, polls: &[&Poll]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = scrape(self.metrics);
            let now = text.lines().find_map(|l| {
                l.strip_prefix("chaos_control_long_polls ")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            });
            if now == Some(n) {
                return;
            }
            assert!(
                !polls.iter().any(|p| p.is_finished()),
                "a poll on {} was answered before anything was sent to its agent:\n{}",
                self.served.addr,
                self.served.log()
            );
            assert!(
                Instant::now() < deadline,
                "{n} polls never waited on {}: {now:?}\n{}",
                self.served.addr,
                self.served.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `GET /metrics` over plain HTTP.
fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(chaos_control::pki::Paths::new(dir).admin_token())
        .unwrap()
        .trim()
        .to_string()
}

fn admin_get(c: &Client, admin: &str, path: &str) -> Value {
    c.call::<(), Value>(Method::GET, path, Some(admin), None)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn admin_post(c: &Client, admin: &str, path: &str, body: &Value) -> Value {
    c.call(Method::POST, path, Some(admin), Some(body))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Add an agent (as admin) and register it, both through `c`.
fn agent(c: &Client, admin: &str, name: &str) -> RegisterResponse {
    let key: chaos_protocol::admin::RegistrationKey = c
        .call(
            Method::POST,
            "/admin/agents",
            Some(admin),
            Some(&AddAgentRequest {
                name: name.into(),
                key_ttl_secs: None,
            }),
        )
        .unwrap();
    c.register(&register_req(&key.registration_key)).unwrap()
}

fn create_run(c: &Client, admin: &str, agents: &[&str]) -> CreateRunsResponse {
    c.call(
        Method::POST,
        "/admin/runs",
        Some(admin),
        Some(&CreateRunsRequest {
            experiment: experiment(),
            agents: agents.iter().map(|s| s.to_string()).collect(),
            lease_secs: None,
        }),
    )
    .unwrap()
}

/// A long poll in a thread: its answer and how long it took.
type Poll = JoinHandle<(TasksResponse, Duration)>;

fn poll(c: Client, reg: &RegisterResponse) -> Poll {
    let (id, tok) = (reg.agent_id.clone(), reg.token.token.clone());
    std::thread::spawn(move || {
        let t = Instant::now();
        let r = c.tasks(&id, &tok, WAIT).unwrap();
        (r, t.elapsed())
    })
}

fn running() -> StatusUpdate {
    StatusUpdate {
        state: RunState::Running,
        step: Some(0),
        faults: vec![],
        message: None,
    }
}

/// The result a chaos-agent sends for a run of [`experiment`].
fn result(run_id: &str, aborted: bool) -> RunResult {
    serde_json::from_value(json!({
        "run_id": run_id,
        "name": "fill-tmp",
        "outcome": if aborted { "aborted" } else { "completed" },
        "abort_reason": if aborted { json!("operator") } else { Value::Null },
        "steps": [{
            "name": "fill",
            "outcome": "completed",
            "error": null,
            "faults": [{
                "fault_id": format!("{run_id}-1-1"),
                "kind": "disk.fill",
                "description": "fill /tmp with 1 MiB",
                "injected": true,
                "observed": "1 MiB allocated",
                "held_ms": 5000,
                "revert": "reverted",
                "error": null,
                "manual_undo": []
            }]
        }],
        "elapsed_ms": 5012
    }))
    .unwrap()
}

fn log_seqs(c: &Client, admin: &str, run: &str) -> Vec<u64> {
    admin_get(c, admin, &format!("/admin/runs/{run}/logs?after=0"))["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn two_replicas_serve_one_fleet() {
    let Some(url) = common::pg::require("two_replicas_serve_one_fleet") else {
        return;
    };
    let dir = Served::init(&["--database", &url]);
    assert!(
        !chaos_control::pki::Paths::new(&*dir).db().exists(),
        "init --database made a SQLite store"
    );
    let admin = admin_token(&dir);
    let a = Replica::start(&dir, Served::init_port(&dir), &url);
    let b = Replica::start_env(&dir, free_port(), &url);
    let (ca, cb) = (a.client(), b.client());

    // Registered through A; agents 0 and 2 poll B, 1 and 3 poll A.
    let names = ["pg-0", "pg-1", "pg-2", "pg-3"];
    let regs: Vec<RegisterResponse> = names.iter().map(|n| agent(&ca, &admin, n)).collect();
    let on = |i: usize| if i % 2 == 0 { &b } else { &a };
    let polls: Vec<_> = regs
        .iter()
        .enumerate()
        .map(|(i, r)| poll(on(i).client(), r))
        .collect();
    let on_a: Vec<&Poll> = polls.iter().skip(1).step_by(2).collect();
    let on_b: Vec<&Poll> = polls.iter().step_by(2).collect();
    a.wait_for_polls(2, &on_a);
    b.wait_for_polls(2, &on_b);
    // A run for all of them, created on A, reaches every waiting agent before its wait ends.
    let runs = create_run(&ca, &admin, &names);
    let runs: Vec<String> = runs.runs.into_iter().map(|r| r.run_id).collect();
    for (i, p) in polls.into_iter().enumerate() {
        let (r, took) = p.join().unwrap();
        assert!(
            took < WAIT,
            "{}: the run came only with the wait's end",
            names[i]
        );
        let [Task::Run(run)] = r.tasks.as_slice() else {
            panic!(
                "{}: answered without its run (woken for nothing?): {r:?}",
                names[i]
            )
        };
        assert_eq!(run.run_id, runs[i]);
    }

    // Agents 0 and 1 report to one replica and send their logs to the other; each replica
    // shows what the other received.
    for (i, (here, there)) in [(&ca, &cb), (&cb, &ca)].into_iter().enumerate() {
        let (run, tok) = (&runs[i], &regs[i].token.token);
        here.status(run, tok, &running()).unwrap();
        let d = admin_get(there, &admin, &format!("/admin/runs/{run}"));
        assert_eq!(d["state"], "running", "{d}");
        let r = there.logs(run, tok, &lines(1, 10)).unwrap();
        assert_eq!((r.accepted, r.duplicates), (10, 0));
        let r = here.logs(run, tok, &lines(5, 12)).unwrap(); // a retry, partly new
        assert_eq!((r.accepted, r.duplicates), (2, 6));
        assert_eq!(log_seqs(here, &admin, run), (1..=12).collect::<Vec<_>>());
        let st = here.result(run, tok, &result(run, false)).unwrap();
        assert_eq!(st.state, RunState::Completed);
        there.result(run, tok, &result(run, false)).unwrap(); // a retry, on the other
        let d = admin_get(there, &admin, &format!("/admin/runs/{run}"));
        assert_eq!(d["state"], "completed", "{d}");
        assert_eq!(d["log_lines"], 12, "{d}");
        assert_eq!(d["result"]["steps"][0]["faults"][0]["revert"], "reverted");
    }

    // An abort asked on one replica reaches the agent waiting on the other: agent 2 waits
    // on B (abort through A), agent 3 on A (abort through B).
    ca.status(&runs[2], &regs[2].token.token, &running())
        .unwrap();
    cb.status(&runs[3], &regs[3].token.token, &running())
        .unwrap();
    let p2 = poll(b.client(), &regs[2]);
    let p3 = poll(a.client(), &regs[3]);
    b.wait_for_polls(1, &[&p2]);
    a.wait_for_polls(1, &[&p3]);
    for (i, c) in [(2, &ca), (3, &cb)] {
        let d = admin_post(
            c,
            &admin,
            &format!("/admin/runs/{}/abort", runs[i]),
            &json!({"reason": "game day over"}),
        );
        assert_eq!(d["abort_requested"], true, "{d}");
    }
    for (i, p, there) in [(2, p2, &cb), (3, p3, &ca)] {
        let (r, took) = p.join().unwrap();
        assert!(
            took < WAIT,
            "{}: the abort came only with the wait's end",
            names[i]
        );
        let [Task::Abort(ab)] = r.tasks.as_slice() else {
            panic!(
                "{}: answered without the abort (woken for nothing?): {r:?}",
                names[i]
            )
        };
        assert_eq!(
            (ab.run_id.as_str(), ab.reason.as_str()),
            (runs[i].as_str(), "game day over")
        );
        let st = there
            .result(&runs[i], &regs[i].token.token, &result(&runs[i], true))
            .unwrap();
        assert_eq!(st.state, RunState::Aborted);
    }
    for (i, c) in [(2, &ca), (3, &cb)] {
        let d = admin_get(c, &admin, &format!("/admin/runs/{}", runs[i]));
        assert_eq!(d["state"], "aborted", "{d}");
    }
    let list = admin_get(&cb, &admin, "/admin/agents");
    assert_eq!(list["agents"].as_array().map(Vec::len), Some(4), "{list}");
    for r in [&a, &b] {
        let log = r.served.log();
        assert!(log.contains("PostgreSQL"), "{log}");
        assert!(
            !log.contains(password(&url)),
            "the password reached the log:\n{log}"
        );
    }
}

/// The password of a URL of `common::pg`: postgres://chaos:PASSWORD@127.0.0.1:PORT/DB.
fn password(url: &str) -> &str {
    url.split_once("chaos:")
        .unwrap()
        .1
        .split_once('@')
        .unwrap()
        .0
}

#[test]
fn tokens_rotate_and_clones_lock_across_replicas() {
    let Some(url) = common::pg::require("tokens_rotate_and_clones_lock_across_replicas") else {
        return;
    };
    let dir = Served::init(&["--database", &url]);
    let admin = admin_token(&dir);
    let a = Replica::start(&dir, Served::init_port(&dir), &url);
    let b = Replica::start(&dir, free_port(), &url);
    let (ca, cb) = (a.client(), b.client());
    let reg = agent(&cb, &admin, "rotating");
    let id = reg.agent_id.as_str();
    let g1 = reg.token.token.clone();

    // Rotated on A; until generation 2 is used, generation 1 still works (on either).
    let g2 = ca.rotate(id, &g1).unwrap();
    assert_eq!(g2.generation, 2);
    cb.tasks(id, &g1, Duration::ZERO).unwrap();
    cb.tasks(id, &g2.token, Duration::ZERO).unwrap(); // first use, on B
                                                      // Rotated on B, used on A.
    let g3 = cb.rotate(id, &g2.token).unwrap();
    assert_eq!(g3.generation, 3);
    ca.tasks(id, &g3.token, Duration::ZERO).unwrap();
    let info = admin_get(&cb, &admin, &format!("/admin/agents/{id}"));
    assert_eq!(
        (info["token_generation"].as_u64(), info["state"].as_str()),
        (Some(3), Some("active"))
    );

    // Generation 2 again, on B, after A saw generation 3 in use: a clone; the identity is
    // locked on both replicas.
    let e = cb.tasks(id, &g2.token, Duration::ZERO).unwrap_err();
    assert_eq!(code(&e), (403, "identity_locked".into()));
    let e = ca.tasks(id, &g3.token, Duration::ZERO).unwrap_err();
    assert_eq!(code(&e), (403, "identity_locked".into()));
    let info = admin_get(&ca, &admin, &format!("/admin/agents/{id}"));
    assert_eq!(info["state"], "locked", "{info}");
}

#[test]
fn migrate_moves_a_sqlite_store_into_postgresql() {
    let Some(url) = common::pg::require("migrate_moves_a_sqlite_store_into_postgresql") else {
        return;
    };
    // A SQLite store with an agent, a running run and its logs.
    let s = Served::start();
    let admin = admin_token(&s.dir);
    let c = s.client();
    let reg = agent(&c, &admin, "moving");
    let tok = reg.token.token.clone();
    let run = create_run(&c, &admin, &["moving"]).runs[0].run_id.clone();
    c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    c.status(&run, &tok, &running()).unwrap();
    c.logs(&run, &tok, &lines(1, 20)).unwrap();
    let before = admin_get(&c, &admin, &format!("/admin/runs/{run}"));
    let dir = s.stop();

    let out = Served::cli_output(&dir, &["migrate", "--to", &url]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "migrate: {said}");
    assert!(
        !said.contains(password(&url)),
        "the password reached the output: {said}"
    );

    // Served from PostgreSQL: the agent's token works, the run and its logs are there.
    let p = Served::serve_on(&dir, Served::init_port(&dir), &["--database", &url]);
    let c = p.client();
    c.tasks(&reg.agent_id, &tok, Duration::ZERO).unwrap();
    let after = admin_get(&c, &admin, &format!("/admin/runs/{run}"));
    assert_eq!(after, before);
    assert_eq!(
        (after["state"].as_str(), after["log_lines"].as_u64()),
        (Some("running"), Some(20))
    );
    assert_eq!(log_seqs(&c, &admin, &run), (1..=20).collect::<Vec<_>>());
    let r = c.logs(&run, &tok, &lines(15, 25)).unwrap();
    assert_eq!((r.accepted, r.duplicates), (5, 6));
    let st = c.result(&run, &tok, &result(&run, false)).unwrap();
    assert_eq!(st.state, RunState::Completed);
    let info = admin_get(&c, &admin, &format!("/admin/agents/{}", reg.agent_id));
    assert_eq!(info["state"], "active", "{info}");

    // Into a database that is not empty: refused, and the store is left as it was.
    let out = Served::cli_output(&dir, &["migrate", "--to", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrate into a used database: {err}");
    assert!(err.contains("empty"), "{err}");
    assert!(
        !err.contains(password(&url)),
        "the password reached the output: {err}"
    );
    let d = admin_get(&c, &admin, &format!("/admin/runs/{run}"));
    assert_eq!(
        (d["state"].as_str(), d["log_lines"].as_u64()),
        (Some("completed"), Some(25))
    );
}

/// The server connections (`application_name` chaos-control) to database `db` and whether
/// each uses TLS, as PostgreSQL reports them.
fn server_connections(url: &str, db: &str) -> Vec<bool> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).unwrap();
    c.query(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE a.datname = $1 AND a.application_name = 'chaos-control'",
        &[&db],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn tls_to_postgresql_is_checked_against_the_given_ca() {
    let test = "tls_to_postgresql_is_checked_against_the_given_ca";
    let Some(url) = common::pg::require(test) else {
        return;
    };
    let ca = common::pg::tls_ca().unwrap();
    let ca_arg = ca.to_str().unwrap();
    let db = url.rsplit('/').next().unwrap().to_string();

    // A CA that did not sign PostgreSQL's certificate: init refuses, and writes nothing.
    let other = Served::init(&[]);
    let wrong = other.join("ca.pem");
    let dir = common::StateDir::fresh();
    let out = Served::cli_output(
        &dir,
        &[
            "init",
            "--name",
            "localhost",
            "--database",
            &url,
            "--database-ca",
            wrong.to_str().unwrap(),
        ],
    );
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "init trusted a wrong CA");
    assert!(said.contains("certificate"), "{said}");
    assert!(!said.contains(password(&url)), "{said}");
    assert!(
        !dir.join("ca.key").exists(),
        "init wrote files before it failed"
    );

    // sslmode=require without a CA is refused (exit 2): nothing to check the server against.
    let out = Served::cli_output(
        &dir,
        &["init", "--database", &format!("{url}?sslmode=require")],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The right CA: init and serve connect over TLS (every server connection of this
    // database is TLS, the listener's too), and the API works.
    let state = Served::init(&["--database", &url, "--database-ca", ca_arg]);
    let s = Served::serve_on(
        &state,
        Served::init_port(&state),
        &["--database", &url, "--database-ca", ca_arg],
    );
    let admin = admin_token(&state);
    let c = s.client();
    let reg = agent(&c, &admin, "over-tls");
    c.tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap();
    let conns = server_connections(&url, &db);
    assert!(
        conns.len() >= 2 && conns.iter().all(|tls| *tls),
        "the server's connections (store and listener) should all be TLS: {conns:?}\n{}",
        s.log()
    );
}

/// Two replicas' stores (two connections) racing on what must be unique: one use of a
/// registration key, one agent per machine, one next token generation. Each race starts both
/// calls together (a barrier) and is repeated; every interleaving must give one winner.
#[test]
fn racing_replicas_leave_one_winner() {
    use chaos_control::store::{Database, PgTarget, RegisterRefusal, Store};
    use std::sync::{Arc, Barrier};
    let Some(url) = common::pg::require("racing_replicas_leave_one_winner") else {
        return;
    };
    let db = Database::Postgres(PgTarget { url, ca: None });
    let stores = [Store::open(&db).unwrap(), Store::open(&db).unwrap()];
    let stores: Vec<_> = stores
        .into_iter()
        .map(|s| Arc::new(std::sync::Mutex::new(s)))
        .collect();
    let now = chaos_protocol::now_ms();
    let hash = |s: &str| chaos_control::secrets::hash(s);
    // Run `f(replica)` on both replicas at once; both answers, in replica order.
    fn race<T: Send + 'static>(
        stores: &[Arc<std::sync::Mutex<Store>>],
        f: impl Fn(usize, &mut Store) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let f = Arc::new(f);
        let go = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (s, f, go) = (stores[i].clone(), f.clone(), go.clone());
                std::thread::spawn(move || {
                    let mut s = s.lock().unwrap();
                    go.wait();
                    f(i, &mut s)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
    let host = |machine: &str| {
        let mut h = common::host();
        h.machine_id = machine.to_string();
        serde_json::to_string(&h).unwrap()
    };

    for round in 0..15 {
        // One key, registered through both replicas at once: one identity, one refusal.
        let (id, key) = (format!("a{round}"), format!("key-{round}"));
        let mut s0 = stores[0].lock().unwrap();
        s0.add_agent(
            &id,
            &format!("agent-{round}"),
            &hash(&key),
            now + 60_000,
            now,
        )
        .unwrap();
        drop(s0);
        let (h, m) = (hash(&key), host(&format!("m{round}")));
        let got = race(&stores, move |i, s| {
            s.register(&h, &m, &hash(&format!("t{round}-{i}")), now + 60_000, now)
                .unwrap()
        });
        let won = got.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: one key registered twice: {got:?}");
        assert!(got.contains(&Err(RegisterRefusal::Used)), "{got:?}");

        // Two rotations from generation 1 at once: one unused token of generation 2 stays.
        let (id2, r) = (id.clone(), round);
        race(&stores, move |i, s| {
            s.rotate(&id2, 1, &hash(&format!("g2-{r}-{i}")), now + 60_000, now)
                .unwrap()
        });
        let mut s0 = stores[0].lock().unwrap();
        let live = (0..2)
            .filter(|i| {
                s0.token(&hash(&format!("g2-{round}-{i}")))
                    .unwrap()
                    .is_some()
            })
            .count();
        assert_eq!(live, 1, "round {round}: two tokens of generation 2");

        // Two agents on one machine registering at once: one agent per machine.
        for k in 0..2 {
            s0.add_agent(
                &format!("b{round}-{k}"),
                &format!("twin-{round}-{k}"),
                &hash(&format!("twin-key-{round}-{k}")),
                now + 60_000,
                now,
            )
            .unwrap();
        }
        drop(s0);
        let m = host(&format!("shared-{round}"));
        let got = race(&stores, move |i, s| {
            s.register(
                &hash(&format!("twin-key-{r}-{i}")),
                &m,
                &hash(&format!("twin-token-{r}-{i}")),
                now + 60_000,
                now,
            )
            .unwrap()
        });
        let won = got.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "round {round}: two agents on one machine: {got:?}");
    }
}

/// Like the SQLite store, PostgreSQL holds secrets only as SHA-256 hashes: no registration
/// key, access token (first or rotated) or admin token appears in any table.
#[test]
fn secrets_reach_postgresql_only_as_hashes() {
    use chaos_control::store::{Database, PgTarget};
    let Some(url) = common::pg::require("secrets_reach_postgresql_only_as_hashes") else {
        return;
    };
    let h = common::Harness::with(chaos_control::server::Settings {
        database: Some(Database::Postgres(PgTarget {
            url: url.clone(),
            ca: None,
        })),
        ..Default::default()
    });
    let key = h.add_agent("hashy");
    let c = h.client();
    let reg = c.register(&register_req(&key.registration_key)).unwrap();
    let next = c.rotate(&reg.agent_id, &reg.token.token).expect("rotate");
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut hay = String::new();
    for table in ["meta", "agents", "tokens", "runs", "run_faults", "logs"] {
        for r in pg
            .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
            .unwrap()
        {
            hay.push_str(r.get::<_, &str>(0));
        }
    }
    assert!(
        hay.contains(&reg.agent_id),
        "the dump should hold the agent"
    );
    for (what, secret) in [
        ("registration key", &key.registration_key[4..]),
        ("access token", &reg.token.token[4..]),
        ("rotated access token", &next.token[4..]),
        ("admin token", &h.admin[6..]),
    ] {
        assert!(!hay.contains(secret), "{what} stored in clear");
    }
    // The binary columns (shown as hex above) hold 32-byte digests, nothing longer.
    let odd: i64 = pg
        .query_one(
            "SELECT (SELECT COUNT(*) FROM tokens WHERE length(hash) <> 32)
                  + (SELECT COUNT(*) FROM agents WHERE key_hash IS NOT NULL AND length(key_hash) <> 32)
                  + (SELECT COUNT(*) FROM meta WHERE key = 'admin_token_sha256' AND length(value) <> 32)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(odd, 0, "a stored secret is not a SHA-256 digest");
}

/// Poll `cond` every 20 ms for up to 20 s (a condition, not a timer); panics with `what`.
fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_replica_that_lost_its_listener_wakes_its_polls_once_it_listens_again() {
    let Some(url) = common::pg::require(
        "a_replica_that_lost_its_listener_wakes_its_polls_once_it_listens_again",
    ) else {
        return;
    };
    let db = url.rsplit('/').next().unwrap().to_string();
    let dir = Served::init(&["--database", &url]);
    let admin = admin_token(&dir);
    let a = Replica::start(&dir, Served::init_port(&dir), &url);
    let b = Replica::start(&dir, free_port(), &url);
    let ca = a.client();
    let reg = agent(&ca, &admin, "deaf-0");
    let p = poll(b.client(), &reg);
    b.wait_for_polls(1, &[&p]);

    // Cut both replicas' listening connections and keep them from coming back: the
    // database takes no new connections, while the store connections already open go on.
    // (from the cluster's `postgres` database: a database cannot close itself)
    let other = format!("{}/postgres", url.rsplit_once('/').unwrap().0);
    let mut pg = postgres::Client::connect(&other, postgres::NoTls).unwrap();
    pg.batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS false"))
        .unwrap();
    let cut = pg
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND query = 'LISTEN chaos_control'",
            &[&db],
        )
        .unwrap();
    assert_eq!(cut.len(), 2, "one listener per replica");
    until("B never noticed its listener was gone", || {
        b.served
            .log()
            .contains("cannot listen for other replicas' changes")
    });

    // A run made now is announced while B cannot hear it...
    let run = create_run(&ca, &admin, &["deaf-0"]).runs.remove(0).run_id;
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !p.is_finished(),
        "the poll on B was answered while B could not hear A:\n{}",
        b.served.log()
    );
    // ... and reaches the agent waiting on B once B listens again, not at the wait's end.
    pg.batch_execute(&format!("ALTER DATABASE {db} WITH ALLOW_CONNECTIONS true"))
        .unwrap();
    let (r, took) = p.join().unwrap();
    assert!(
        took < WAIT,
        "the run came only with the wait's end:\n{}",
        b.served.log()
    );
    let [Task::Run(got)] = r.tasks.as_slice() else {
        panic!("answered without its run: {r:?}")
    };
    assert_eq!(got.run_id, run);
    let log = b.served.log();
    assert!(
        log.contains("listening for other replicas' changes again"),
        "{log}"
    );
}
