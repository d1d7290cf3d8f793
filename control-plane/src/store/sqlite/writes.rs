//! The writes agents wait for (status, log lines, result), each inside the caller's
//! transaction or savepoint: one at a time, or a group of them under one commit.

use super::*;

/// [`SqliteStore::update_status`] inside the caller's transaction (or savepoint).
pub(super) fn update_status_in(
    c: &Connection,
    run_id: &str,
    update: &StatusUpdate,
    now: u64,
) -> Result<(RunState, bool)> {
    let (state, abort): (String, bool) = c
        .prepare_cached("SELECT state, abort_requested_at_ms IS NOT NULL FROM runs WHERE id=?1")?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let state = state_of(state);
    if !rules::status_change(run_id, state, update.state)? {
        return Ok((state, abort));
    }
    let new = update.state;
    c.prepare_cached(
        "UPDATE runs SET state=?2,
            started_at_ms = COALESCE(started_at_ms, ?3),
            finished_at_ms = CASE WHEN ?4 THEN ?3 ELSE finished_at_ms END,
            step = COALESCE(?5, step),
            message = COALESCE(?6, message)
         WHERE id=?1",
    )?
    .execute(params![
        run_id,
        new.as_str(),
        now,
        new.is_terminal(),
        update.step,
        update.message
    ])?;
    if !update.faults.is_empty() {
        let mut st = c.prepare_cached(
            "INSERT INTO run_faults(run_id, fault_id, step, kind, state, detail, updated_at_ms)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(run_id, fault_id) DO UPDATE SET step=excluded.step,
                kind=excluded.kind, state=excluded.state, detail=excluded.detail,
                updated_at_ms=excluded.updated_at_ms",
        )?;
        for f in &update.faults {
            let fs = serde_json::to_value(f.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            st.execute(params![
                run_id, f.fault_id, f.step, f.kind, fs, f.detail, now
            ])?;
        }
    }
    Ok((new, abort))
}

/// [`SqliteStore::append_logs`] inside the caller's transaction (or savepoint).
pub(super) fn append_logs_in(
    c: &Connection,
    run_id: &str,
    lines: &[LogLine],
) -> Result<(u32, u32)> {
    let mut accepted = 0;
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO logs(run_id, seq, at_ms, level, message)
         VALUES(?1, ?2, ?3, ?4, ?5)",
    )?;
    for l in lines {
        let level = serde_json::to_value(l.level)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        accepted += st.execute(params![run_id, l.seq, l.at_ms, level, l.message])? as u32;
    }
    Ok((accepted, lines.len() as u32 - accepted))
}

/// [`SqliteStore::store_result`] inside the caller's transaction (or savepoint).
pub(super) fn store_result_in(
    c: &Connection,
    run_id: &str,
    result: &RunResult,
    now: u64,
) -> Result<(RunState, bool)> {
    let (state, abort, stored): (String, bool, Option<String>) = c
        .prepare_cached(
            "SELECT state, abort_requested_at_ms IS NOT NULL, result FROM runs WHERE id=?1",
        )?
        .query_row(params![run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let state = state_of(state);
    let new = result.outcome.state();
    if !rules::result_change(run_id, state, stored.as_deref(), result)? {
        return Ok((state, abort));
    }
    let json = serde_json::to_string(result).unwrap_or_default();
    c.prepare_cached(
        "UPDATE runs SET state=?2, result=?3, started_at_ms=COALESCE(started_at_ms, ?4),
            finished_at_ms=COALESCE(finished_at_ms, ?4) WHERE id=?1",
    )?
    .execute(params![run_id, new.as_str(), json, now])?;
    Ok((new, abort))
}
