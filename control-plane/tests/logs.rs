//! The server's log says who called: the client address is on every request line and on
//! the `identity locked` warning.

mod common;

use std::time::Duration;

use chaos_protocol::client::ClientError;
use serde_json::Value;

#[test]
fn refusals_and_the_identity_lock_are_logged_with_the_client_address() {
    let s = common::Served::start();
    let key: Value = serde_json::from_str(&s.cli(&["agents", "add", "logged", "--json"])).unwrap();
    let c = s.client();
    let reg = c
        .register(&common::register_req(
            key["registration_key"].as_str().unwrap(),
        ))
        .unwrap();
    // A refused call without a token.
    let e = c
        .tasks(&reg.agent_id, "cca_nope", Duration::ZERO)
        .unwrap_err();
    assert!(matches!(e, ClientError::Api { status: 401, .. }), "{e}");
    // Generation 2 is used, then generation 1 again: the identity is locked.
    let g2 = c.rotate(&reg.agent_id, &reg.token.token).unwrap();
    c.tasks(&reg.agent_id, &g2.token, Duration::ZERO).unwrap();
    let e = c
        .tasks(&reg.agent_id, &reg.token.token, Duration::ZERO)
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Api {
                status: 403 | 401,
                ..
            }
        ),
        "{e}"
    );

    let log = s.log();
    let refused = log
        .lines()
        .find(|l| l.contains("request refused") && l.contains("/tasks"))
        .unwrap_or_else(|| panic!("no refused request in\n{log}"));
    assert!(refused.contains("peer=127.0.0.1:"), "{refused}");
    let locked = log
        .lines()
        .find(|l| l.contains("identity locked"))
        .unwrap_or_else(|| panic!("no identity-locked warning in\n{log}"));
    assert!(locked.contains("peer=127.0.0.1:"), "{locked}");
    assert!(!log.contains(&reg.token.token), "a token reached the log");
    assert!(!log.contains(&g2.token), "a token reached the log");
}
