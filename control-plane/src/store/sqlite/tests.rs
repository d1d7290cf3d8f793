//! The SQLite store's own settings.

use super::*;

#[test]
fn a_commit_is_on_disk_before_it_is_acknowledged() {
    let dir = std::env::temp_dir().join(format!("chaos-control-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = SqliteStore::open(&dir.join("store.db")).unwrap();
    let q = |pragma: &str| -> String {
        store
            .conn
            .query_row(&format!("PRAGMA {pragma}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
    };
    let (journal, sync) = (q("journal_mode"), q("synchronous"));
    let mut store = store;
    store.mark_delivered(&[], 1).unwrap();
    let after: i64 = store
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        after, 2,
        "a delivery mark leaves synchronous=FULL behind it"
    );
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
    // 2 = FULL: WAL commits are fsync'd (NORMAL, 1, may lose the last ones on power loss)
    assert_eq!((journal.as_str(), sync.as_str()), ("wal", "2"));
}

fn status(state: RunState) -> StatusUpdate {
    StatusUpdate {
        state,
        step: None,
        faults: Vec::new(),
        message: None,
    }
}

#[test]
fn a_group_commit_keeps_each_writes_own_result() {
    let dir = std::env::temp_dir().join(format!("chaos-control-group-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut store = SqliteStore::open(&dir.join("store.db")).unwrap();
    store.add_agent("a1", "one", b"k", 1_000_000, 1).unwrap();
    let runs = [
        ("r1".to_string(), "a1".to_string()),
        ("r2".to_string(), "a1".to_string()),
    ];
    // r2 is handed out at creation: stored as delivered, so not due again at once.
    store
        .create_runs(&runs, &[false, true], "x", "{}", 60, 100)
        .unwrap();
    let (tasks, due) = store.tasks_for("a1", 50).unwrap();
    assert_eq!((tasks.len(), due), (2, true));
    store.mark_delivered(&tasks[..1], 100).unwrap();
    assert!(!store.tasks_for("a1", 50).unwrap().1);
    store
        .update_status("r2", &status(RunState::Completed), 101)
        .unwrap();
    let line = LogLine {
        seq: 1,
        at_ms: 102,
        level: chaos_protocol::run::LogLevel::Info,
        message: "hello".into(),
    };
    let out = store
        .write_group(&[
            Write::Status {
                run_id: "r1".into(),
                update: status(RunState::Running),
                now: 102,
            },
            // A terminal state is final: refused, alone.
            Write::Status {
                run_id: "r2".into(),
                update: status(RunState::Running),
                now: 102,
            },
            Write::Logs {
                run_id: "r1".into(),
                lines: vec![line.clone(), line],
            },
        ])
        .unwrap();
    assert!(matches!(
        out[0],
        Ok(Written::State(RunState::Running, false))
    ));
    assert!(matches!(out[1], Err(StoreError::Conflict(_))));
    assert!(matches!(out[2], Ok(Written::Logs(1, 1))));
    let owner = |r: &str| store.run_owner(r).unwrap().unwrap().state;
    assert_eq!(owner("r1"), RunState::Running);
    assert_eq!(owner("r2"), RunState::Completed);
    assert_eq!(store.logs_after("r1", 0, 10).unwrap().len(), 1);
    drop(store);
    std::fs::remove_dir_all(&dir).unwrap();
}
