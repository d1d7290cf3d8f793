//! `chaos-control migrate`: copy the SQLite store into an empty PostgreSQL database.

use std::path::Path;

use postgres::types::ToSql;
use rusqlite::types::Value;

use super::{PgStore, PgTarget, Result, SqliteStore, StoreError};

#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int,
    Bytes,
}

use Ty::{Bytes, Int, Text};

/// Every table, parents before children, with its columns.
const TABLES: &[(&str, &[(&str, Ty)])] = &[
    ("meta", &[("key", Text), ("value", Bytes)]),
    (
        "agents",
        &[
            ("id", Text),
            ("name", Text),
            ("state", Text),
            ("state_reason", Text),
            ("created_at_ms", Int),
            ("registered_at_ms", Int),
            ("last_seen_ms", Int),
            ("token_generation", Int),
            ("key_hash", Bytes),
            ("key_expires_at_ms", Int),
            ("key_used_at_ms", Int),
            ("host", Text),
        ],
    ),
    (
        "tokens",
        &[
            ("hash", Bytes),
            ("agent_id", Text),
            ("generation", Int),
            ("issued_at_ms", Int),
            ("expires_at_ms", Int),
            ("used_at_ms", Int),
        ],
    ),
    (
        "runs",
        &[
            ("id", Text),
            ("agent_id", Text),
            ("name", Text),
            ("experiment", Text),
            ("lease_secs", Int),
            ("state", Text),
            ("created_at_ms", Int),
            ("delivered_at_ms", Int),
            ("started_at_ms", Int),
            ("finished_at_ms", Int),
            ("abort_requested_at_ms", Int),
            ("abort_reason", Text),
            ("abort_delivered_at_ms", Int),
            ("step", Int),
            ("message", Text),
            ("result", Text),
        ],
    ),
    (
        "run_faults",
        &[
            ("run_id", Text),
            ("fault_id", Text),
            ("step", Int),
            ("kind", Text),
            ("state", Text),
            ("detail", Text),
            ("updated_at_ms", Int),
        ],
    ),
    (
        "logs",
        &[
            ("run_id", Text),
            ("seq", Int),
            ("at_ms", Int),
            ("level", Text),
            ("message", Text),
        ],
    ),
];

/// What was copied: rows per table, in copy order.
#[derive(Debug, Clone, Default)]
pub struct Copied {
    /// (table, rows).
    pub tables: Vec<(&'static str, u64)>,
}

fn param(table: &str, col: &str, ty: Ty, v: Value) -> Result<Box<dyn ToSql + Sync>> {
    let bad = |v: &Value| {
        StoreError::Conflict(format!(
            "{table}.{col} holds {v:?}, which is not what chaos-control writes there; \
             nothing was copied"
        ))
    };
    Ok(match (ty, v) {
        (Text, Value::Null) => Box::new(None::<String>),
        (Text, Value::Text(s)) => Box::new(Some(s)),
        (Int, Value::Null) => Box::new(None::<i64>),
        (Int, Value::Integer(i)) => Box::new(Some(i)),
        (Bytes, Value::Null) => Box::new(None::<Vec<u8>>),
        (Bytes, Value::Blob(b)) => Box::new(Some(b)),
        // `meta` values written as numbers or text (the schema version) keep their digits.
        (Bytes, Value::Integer(i)) => Box::new(Some(i.to_string().into_bytes())),
        (Bytes, Value::Text(s)) => Box::new(Some(s.into_bytes())),
        (_, v) => return Err(bad(&v)),
    })
}

/// Copy every row of the SQLite store at `from` into the PostgreSQL database `to`,
/// in one PostgreSQL transaction (all or nothing). The database must hold no store yet
/// (tables are created when missing). The SQLite file is only read.
pub fn sqlite_to_postgres(from: &Path, to: &PgTarget) -> Result<Copied> {
    if !from.exists() {
        return Err(StoreError::NotFound(format!(
            "{} does not exist: nothing to migrate",
            from.display()
        )));
    }
    let mut src = SqliteStore::open(from)?;
    let mut dst = PgStore::open(to)?;
    if !dst.is_empty()? {
        return Err(StoreError::Conflict(format!(
            "{} already holds a chaos-control store (agents, runs or an admin token): \
             migrate only into an empty database; nothing was copied",
            super::pg::redact(&to.url)
        )));
    }
    let mut tx = dst.client()?.transaction()?;
    let mut copied = Copied::default();
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|c| c.0).collect();
        let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        // The schema version is PostgreSQL's own (written when its tables were made).
        let conflict = if *table == "meta" {
            " ON CONFLICT (key) DO NOTHING"
        } else {
            ""
        };
        let st = tx.prepare(&format!(
            "INSERT INTO {table}({}) VALUES({}){conflict}",
            names.join(", "),
            placeholders.join(", ")
        ))?;
        let n = src.each_row(table, &names, |row| {
            let params = row
                .into_iter()
                .zip(cols.iter())
                .map(|(v, (col, ty))| param(table, col, *ty, v))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
            tx.execute(&st, &refs)?;
            Ok(())
        })?;
        copied.tables.push((table, n));
    }
    tx.commit()?;
    Ok(copied)
}
