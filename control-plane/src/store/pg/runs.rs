//! Runs in the PostgreSQL store: creating and handing them out, their status, logs, results
//! and aborts, and what the admin API reads back. Each change that another replica must hear
//! sends its `NOTIFY` inside the transaction that makes it.

use super::*;

impl PgStore {
    /// Create runs (one per agent) in one transaction, and wake the agents' long polls on
    /// every replica when it commits.
    pub fn create_runs(
        &mut self,
        runs: &[(String, String)],
        handed: &[bool],
        name: &str,
        experiment: &str,
        lease_secs: u64,
        now: u64,
    ) -> Result<()> {
        let ids: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
        let agents: Vec<&str> = runs.iter().map(|r| r.1.as_str()).collect();
        let handed: Vec<bool> = (0..runs.len())
            .map(|k| handed.get(k).copied().unwrap_or(false))
            .collect();
        let mut tx = self.client()?.transaction()?;
        match tx.execute(
            "INSERT INTO runs(id, agent_id, name, experiment, lease_secs, state, created_at_ms,
                              delivered_at_ms)
             SELECT v.r, v.a, $3, $4, $5, 'pending', $6, CASE WHEN v.h THEN $6::bigint END
             FROM unnest($1::text[], $2::text[], $7::bool[]) AS v(r, a, h)",
            &[
                &ids,
                &agents,
                &name,
                &experiment,
                &i(lease_secs),
                &i(now),
                &handed,
            ],
        ) {
            Err(e) if unique_violation(&e) => {
                return Err(StoreError::Conflict("a run id is taken".into()))
            }
            r => r?,
        };
        notify_agents(&mut tx, &agents)?;
        tx.commit()?;
        Ok(())
    }

    /// Fail the runs waiting for `agent_id` that need a kind it no longer offers.
    pub fn fail_unrunnable(&mut self, agent_id: &str, now: u64) -> Result<Vec<(String, String)>> {
        let Some(agent) = self.find_agent(agent_id)? else {
            return Ok(Vec::new());
        };
        let Some(offered) = agent.kinds() else {
            return Ok(Vec::new());
        };
        let mut tx = self.client()?.transaction()?;
        let rows = tx.query(
            "SELECT id, experiment FROM runs
             WHERE agent_id=$1 AND state='pending' AND abort_requested_at_ms IS NULL
             FOR UPDATE",
            &[&agent_id],
        )?;
        let mut failed = Vec::new();
        for r in &rows {
            let (run_id, exp) = (gs(r, 0)?, gs(r, 1)?);
            let exp: serde_json::Value = serde_json::from_str(&exp).unwrap_or_default();
            let Some(message) = rules::unrunnable(&agent, &offered, &exp) else {
                continue;
            };
            tx.execute(
                "UPDATE runs SET state='failed', finished_at_ms=$2, message=$3 WHERE id=$1",
                &[&run_id, &i(now), &message],
            )?;
            failed.push((run_id, message));
        }
        if !failed.is_empty() {
            notify_logs(&mut tx)?;
        }
        tx.commit()?;
        Ok(failed)
    }

    /// The tasks an agent has not acknowledged, whether any is due now, and the creation
    /// times of the runs among them never handed out before.
    pub fn tasks_with_first(
        &mut self,
        agent_id: &str,
        redeliver_before_ms: u64,
    ) -> Result<(Vec<Task>, bool, Vec<u64>)> {
        let rows = self.client()?.query(
            "SELECT id, experiment, lease_secs, created_at_ms, delivered_at_ms,
                    abort_requested_at_ms, abort_reason, abort_delivered_at_ms, state
             FROM runs WHERE agent_id=$1 AND state IN ('pending', 'running')
             ORDER BY created_at_ms",
            &[&agent_id],
        )?;
        let rows = rows
            .iter()
            .map(|r| {
                Ok(rules::TaskRow {
                    run_id: gs(r, 0)?,
                    experiment: gs(r, 1)?,
                    lease_secs: gu(r, 2)?,
                    created_at_ms: gu(r, 3)?,
                    delivered_at_ms: gou(r, 4)?,
                    abort_requested_at_ms: gou(r, 5)?,
                    abort_reason: gos(r, 6)?,
                    abort_delivered_at_ms: gou(r, 7)?,
                    state: gs(r, 8)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(rules::tasks(rows, redeliver_before_ms))
    }

    /// Record that these tasks were handed out now. Like the SQLite store, this one commit
    /// does not wait for the disk (`synchronous_commit = off` for it alone): lost in a crash,
    /// a mark only means the task is handed out once more.
    pub fn mark_delivered(&mut self, tasks: &[Task], now: u64) -> Result<()> {
        let (mut runs, mut aborts) = (Vec::new(), Vec::new());
        for t in tasks {
            match t {
                Task::Run(r) => runs.push(r.run_id.as_str()),
                Task::Abort(a) => aborts.push(a.run_id.as_str()),
            }
        }
        let mut tx = self.client()?.transaction()?;
        tx.batch_execute("SET LOCAL synchronous_commit = off")?;
        if !runs.is_empty() {
            tx.execute(
                "UPDATE runs SET delivered_at_ms=$2 WHERE id = ANY($1)",
                &[&runs, &i(now)],
            )?;
        }
        if !aborts.is_empty() {
            tx.execute(
                "UPDATE runs SET abort_delivered_at_ms=$2 WHERE id = ANY($1)",
                &[&aborts, &i(now)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Who owns a run.
    pub fn run_owner(&mut self, run_id: &str) -> Result<Option<RunOwner>> {
        let r = self.client()?.query_opt(
            "SELECT agent_id, state, abort_requested_at_ms IS NOT NULL, abort_reason
             FROM runs WHERE id=$1",
            &[&run_id],
        )?;
        r.map(|r| {
            let abort_requested = gb(&r, 2)?;
            Ok(RunOwner {
                agent_id: gs(&r, 0)?,
                state: state_of(gs(&r, 1)?),
                abort_requested,
                abort_reason: if abort_requested { gos(&r, 3)? } else { None },
            })
        })
        .transpose()
    }

    /// The stored experiment of a run (its JSON form), if the run exists.
    pub fn run_experiment(&mut self, run_id: &str) -> Result<Option<serde_json::Value>> {
        let r = self
            .client()?
            .query_opt("SELECT experiment FROM runs WHERE id=$1", &[&run_id])?;
        Ok(r.map(|r| gs(&r, 0))
            .transpose()?
            .map(|e| serde_json::from_str(&e).unwrap_or_default()))
    }

    /// Apply a status update. A terminal state is final.
    pub fn update_status(
        &mut self,
        run_id: &str,
        update: &StatusUpdate,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, abort_requested_at_ms IS NOT NULL FROM runs WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, abort) = (state_of(gs(&row, 0)?), gb(&row, 1)?);
        if !rules::status_change(run_id, state, update.state)? {
            return Ok((state, abort));
        }
        let new = update.state;
        tx.execute(
            "UPDATE runs SET state=$2,
                started_at_ms = COALESCE(started_at_ms, $3),
                finished_at_ms = CASE WHEN $4 THEN $3 ELSE finished_at_ms END,
                step = COALESCE($5, step),
                message = COALESCE($6, message)
             WHERE id=$1",
            &[
                &run_id,
                &new.as_str(),
                &i(now),
                &new.is_terminal(),
                &update.step.map(i64::from),
                &update.message,
            ],
        )?;
        if !update.faults.is_empty() {
            let st = tx.prepare(
                "INSERT INTO run_faults(run_id, fault_id, step, kind, state, detail, updated_at_ms)
                 VALUES($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT(run_id, fault_id) DO UPDATE SET step=excluded.step,
                    kind=excluded.kind, state=excluded.state, detail=excluded.detail,
                    updated_at_ms=excluded.updated_at_ms",
            )?;
            for f in &update.faults {
                tx.execute(
                    &st,
                    &[
                        &run_id,
                        &f.fault_id,
                        &i64::from(f.step),
                        &f.kind,
                        &enum_str(&f.state),
                        &f.detail,
                        &i(now),
                    ],
                )?;
            }
        }
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok((new, abort))
    }

    /// Store log lines (one statement); lines whose `seq` is already held are ignored.
    pub fn append_logs(&mut self, run_id: &str, lines: &[LogLine]) -> Result<(u32, u32)> {
        let seq: Vec<i64> = lines.iter().map(|l| i(l.seq)).collect();
        let at: Vec<i64> = lines.iter().map(|l| i(l.at_ms)).collect();
        let level: Vec<String> = lines.iter().map(|l| enum_str(&l.level)).collect();
        let message: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        let mut tx = self.client()?.transaction()?;
        let accepted = tx.execute(
            "INSERT INTO logs(run_id, seq, at_ms, level, message)
             SELECT $1, v.s, v.t, v.l, v.m
             FROM unnest($2::int8[], $3::int8[], $4::text[], $5::text[]) AS v(s, t, l, m)
             ON CONFLICT (run_id, seq) DO NOTHING",
            &[&run_id, &seq, &at, &level, &message],
        )? as u32;
        if accepted > 0 {
            notify_logs(&mut tx)?;
        }
        tx.commit()?;
        Ok((accepted, lines.len() as u32 - accepted))
    }

    /// Store the final result. The same result again is fine; a different one is a conflict.
    pub fn store_result(
        &mut self,
        run_id: &str,
        result: &RunResult,
        now: u64,
    ) -> Result<(RunState, bool)> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, abort_requested_at_ms IS NOT NULL, result FROM runs
             WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, abort, stored) = (state_of(gs(&row, 0)?), gb(&row, 1)?, gos(&row, 2)?);
        let new = result.outcome.state();
        if !rules::result_change(run_id, state, stored.as_deref(), result)? {
            return Ok((state, abort));
        }
        let json = serde_json::to_string(result).unwrap_or_default();
        tx.execute(
            "UPDATE runs SET state=$2, result=$3, started_at_ms=COALESCE(started_at_ms, $4),
                finished_at_ms=COALESCE(finished_at_ms, $4) WHERE id=$1",
            &[&run_id, &new.as_str(), &json, &i(now)],
        )?;
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok((new, abort))
    }

    /// Ask for an abort. A run never handed out is aborted at once.
    pub fn abort(&mut self, run_id: &str, reason: &str, now: u64) -> Result<RunState> {
        let mut tx = self.client()?.transaction()?;
        let Some(row) = tx.query_opt(
            "SELECT state, delivered_at_ms, agent_id FROM runs WHERE id=$1 FOR UPDATE",
            &[&run_id],
        )?
        else {
            return Err(StoreError::NotFound(format!("no run {run_id}")));
        };
        let (state, delivered, agent_id) = (state_of(gs(&row, 0)?), gou(&row, 1)?, gs(&row, 2)?);
        let new = if rules::abort_now(run_id, state, delivered)? {
            tx.execute(
                "UPDATE runs SET state='aborted', finished_at_ms=$2, abort_requested_at_ms=$2,
                    abort_reason=$3, message=$4 WHERE id=$1",
                &[&run_id, &i(now), &reason, &rules::ABORTED_UNSENT],
            )?;
            RunState::Aborted
        } else {
            tx.execute(
                "UPDATE runs SET abort_requested_at_ms=COALESCE(abort_requested_at_ms, $2),
                    abort_reason=$3 WHERE id=$1",
                &[&run_id, &i(now), &reason],
            )?;
            state
        };
        notify_agents(&mut tx, &[agent_id.as_str()])?;
        notify_logs(&mut tx)?;
        tx.commit()?;
        Ok(new)
    }

    /// Runs, newest first.
    pub fn list_runs(&mut self, f: &RunFilter) -> Result<Vec<RunSummary>> {
        let rows = self.client()?.query(
            "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms, r.delivered_at_ms,
                    r.started_at_ms, r.finished_at_ms, r.abort_requested_at_ms IS NOT NULL
             FROM runs r JOIN agents a ON a.id = r.agent_id
             WHERE ($1::text IS NULL OR r.agent_id = $1) AND ($2::text IS NULL OR r.state = $2)
             ORDER BY r.created_at_ms DESC, r.id LIMIT $3",
            &[
                &f.agent_id,
                &f.state.map(|s| s.as_str()),
                &i64::from(f.limit),
            ],
        )?;
        rows.iter().map(summary_row).collect()
    }

    /// One run with its faults and result.
    pub fn run_detail(&mut self, run_id: &str) -> Result<Option<RunDetail>> {
        let c = self.client()?;
        let Some(r) = c.query_opt(
            "SELECT r.id, r.agent_id, a.name, r.name, r.state, r.created_at_ms,
                    r.delivered_at_ms, r.started_at_ms, r.finished_at_ms,
                    r.abort_requested_at_ms IS NOT NULL,
                    r.experiment, r.lease_secs, r.abort_reason, r.step, r.message, r.result,
                    (SELECT COUNT(*) FROM logs l WHERE l.run_id = r.id)
             FROM runs r JOIN agents a ON a.id = r.agent_id WHERE r.id=$1",
            &[&run_id],
        )?
        else {
            return Ok(None);
        };
        let mut d = RunDetail {
            summary: summary_row(&r)?,
            experiment: serde_json::from_str(&gs(&r, 10)?).unwrap_or_default(),
            lease_secs: gu(&r, 11)?,
            abort_reason: gos(&r, 12)?,
            step: gou(&r, 13)?.map(|s| s.min(u32::MAX as u64) as u32),
            message: gos(&r, 14)?,
            faults: Vec::new(),
            result: gos(&r, 15)?.and_then(|j| serde_json::from_str(&j).ok()),
            log_lines: gu(&r, 16)?,
        };
        let rows = c.query(
            "SELECT fault_id, step, kind, state, detail FROM run_faults WHERE run_id=$1
             ORDER BY step, fault_id",
            &[&run_id],
        )?;
        d.faults = rows
            .iter()
            .map(|r| {
                Ok(FaultStatus {
                    fault_id: gs(r, 0)?,
                    step: g32(r, 1)?,
                    kind: gs(r, 2)?,
                    state: serde_json::from_value(serde_json::Value::String(gs(r, 3)?))
                        .unwrap_or(chaos_protocol::run::FaultState::Failed),
                    detail: gs(r, 4)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(d))
    }

    /// Log lines with `seq > after`, at most `limit`.
    pub fn logs_after(&mut self, run_id: &str, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let rows = self.client()?.query(
            "SELECT seq, at_ms, level, message FROM logs WHERE run_id=$1 AND seq > $2
             ORDER BY seq LIMIT $3",
            &[&run_id, &i(after), &i64::from(limit)],
        )?;
        rows.iter()
            .map(|r| {
                Ok(LogLine {
                    seq: gu(r, 0)?,
                    at_ms: gu(r, 1)?,
                    level: serde_json::from_value(serde_json::Value::String(gs(r, 2)?))
                        .unwrap_or(chaos_protocol::run::LogLevel::Info),
                    message: gs(r, 3)?,
                })
            })
            .collect()
    }

    /// Agents by state and runs by state (for the metrics).
    pub fn counts_by_state(&mut self) -> Result<(StateCounts, StateCounts)> {
        let c = self.client()?;
        let mut by = |sql: &str| -> Result<StateCounts> {
            c.query(sql, &[])?
                .iter()
                .map(|r| Ok((gs(r, 0)?, gu(r, 1)?)))
                .collect()
        };
        Ok((
            by("SELECT state, COUNT(*) FROM agents GROUP BY state")?,
            by("SELECT state, COUNT(*) FROM runs GROUP BY state")?,
        ))
    }

    /// Counts for tests and health: (agents, runs, log lines).
    pub fn counts(&mut self) -> Result<(u64, u64, u64)> {
        let r = self.client()?.query_one(
            "SELECT (SELECT COUNT(*) FROM agents), (SELECT COUNT(*) FROM runs),
                    (SELECT COUNT(*) FROM logs)",
            &[],
        )?;
        Ok((gu(&r, 0)?, gu(&r, 1)?, gu(&r, 2)?))
    }
}
