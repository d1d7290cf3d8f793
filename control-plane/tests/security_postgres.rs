//! The security test suite (`tests/security.rs`) against the PostgreSQL store: the same
//! tests, with every `common::Harness` on a fresh database of the tests' private PostgreSQL
//! cluster (`tests/common/pg.rs`; the harness picks the store by this binary's name).
//! Without PostgreSQL each test says `SKIPPED … on PostgreSQL` and runs on SQLite.

#[path = "security.rs"]
mod security;
