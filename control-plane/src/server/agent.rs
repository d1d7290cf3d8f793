//! The agents' calls: register, rotate, tasks (the long poll), status, logs, result.

use super::*;
use crate::store::{Write, Written};

pub(super) async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
    })
}

pub(super) async fn register(
    State(app): Shared,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("registration", e))?;
    if !secrets::well_formed(&req.registration_key, REGISTRATION_PREFIX) {
        return Err(ApiErr::new(
            ErrorCode::RegistrationKeyInvalid,
            "not a registration key (they start with ccr_)",
        ));
    }
    let now = now_ms();
    let (token, at) = app.issue(1, now);
    let host = serde_json::to_string(&req.host).map_err(internal)?;
    let key_hash = secrets::hash(&req.registration_key);
    let token_hash = secrets::hash(&token);
    let r = app.db(|s| s.register(&key_hash, &host, &token_hash, at.expires_at_ms, now))?;
    let (agent_id, name) = r.map_err(|refusal| match refusal {
        RegisterRefusal::Unknown => ApiErr::new(
            ErrorCode::RegistrationKeyInvalid,
            "unknown registration key; ask the operator for one (`chaos-control agents add`)",
        ),
        RegisterRefusal::Expired => ApiErr::new(
            ErrorCode::RegistrationKeyExpired,
            "the registration key has expired; ask the operator for a new one (`chaos-control agents rekey`)",
        ),
        RegisterRefusal::Used => ApiErr::new(
            ErrorCode::RegistrationKeyUsed,
            "the registration key was already used; each key registers once (`chaos-control agents rekey` issues a new one)",
        ),
        RegisterRefusal::MachineTaken { name, state } => ApiErr::new(
            ErrorCode::Conflict,
            format!(
                "this machine (same machine id) is already registered as agent {name} ({state}): one agent per machine. Revoke it first (`chaos-control agents revoke {name}`); the key stays unused"
            ),
        ),
    })?;
    app.saw(&agent_id);
    tracing::info!(%agent_id, %name, hostname = %req.host.hostname, version = %req.host.agent_version, "agent registered");
    let failed = app.db(|s| s.fail_unrunnable(&agent_id, now))?;
    for (run_id, message) in &failed {
        tracing::warn!(%run_id, %agent_id, %message, "queued run failed");
    }
    if !failed.is_empty() {
        app.logs_changed.notify_waiters();
    }
    Ok(Json(RegisterResponse {
        agent_id,
        name,
        token: at,
        settings: AgentSettings {
            poll_wait_secs: app.settings.poll_wait.as_secs(),
            lost_after_secs: app.settings.lost_after.as_secs(),
            token_ttl_secs: app.settings.token_ttl.as_secs(),
        },
    }))
}

pub(super) async fn rotate(
    State(app): Shared,
    UrlPath(id): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(_): JsonBody<RotateRequest>,
) -> Result<Json<AccessToken>, ApiErr> {
    if auth.agent_id != id {
        return Err(ApiErr::new(
            ErrorCode::Forbidden,
            "this token belongs to another agent",
        ));
    }
    // After authentication the presented token is the newest generation in use.
    let current = auth.generation;
    let now = now_ms();
    let (token, at) = app.issue(current + 1, now);
    let hash = secrets::hash(&token);
    app.db(|s| s.rotate(&id, current, &hash, at.expires_at_ms, now))?;
    tracing::info!(agent_id = %id, generation = current + 1, "token rotated");
    Ok(Json(at))
}

pub(super) async fn tasks(
    State(app): Shared,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    Extension(auth): Extension<Authed>,
) -> Result<Json<TasksResponse>, ApiErr> {
    if auth.agent_id != id {
        return Err(ApiErr::new(
            ErrorCode::Forbidden,
            "this token belongs to another agent",
        ));
    }
    let wait = Duration::from_secs(query_u64(&q, "wait", 0)?.min(MAX_WAIT_SECS));
    let mailbox = app.mailbox(&id);
    let woken = mailbox.notify.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    // Runs handed over to an earlier poll that ended before taking them: they are stored
    // as delivered, but never reached the agent, so this poll answers at once.
    let missed = {
        let mut m = mailbox.lock();
        m.stale = false;
        !std::mem::take(&mut m.handed).is_empty()
    };
    let redeliver = |now: u64| now.saturating_sub(ms(app.settings.redeliver_after));
    let (mut list, due, mut first) = app.db(|s| s.tasks_with_first(&id, redeliver(now_ms())))?;
    let mut from_memory = false;
    if !due && !missed && !wait.is_zero() {
        // Only a poll that holds nothing may take runs handed over at their creation.
        let empty = list.is_empty();
        if empty {
            mailbox.lock().waiting += 1;
        }
        let _held = app.metrics.long_poll();
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = app.shutdown.wait() => {}
        }
        let handed = if empty {
            let mut m = mailbox.lock();
            m.waiting = m.waiting.saturating_sub(1);
            let handed = std::mem::take(&mut m.handed);
            (!m.stale).then_some(handed)
        } else {
            None
        };
        match handed {
            // Nothing else changed for this agent since the store said it had nothing:
            // the answer is what was handed over (already stored as delivered).
            Some(handed) if !handed.is_empty() => {
                let now = now_ms();
                list = Vec::with_capacity(handed.len());
                for (task, created) in handed {
                    app.metrics.dispatched(now.saturating_sub(created));
                    list.push(chaos_protocol::agent::Task::Run(task));
                }
                from_memory = true;
            }
            _ => {
                (list, _, first) = app.db(|s| s.tasks_with_first(&id, redeliver(now_ms())))?;
            }
        }
        app.saw(&id);
    }
    if !list.is_empty() && !from_memory {
        let now = now_ms();
        app.db(|s| s.mark_delivered(&list, now))?;
        for created in first {
            app.metrics.dispatched(now.saturating_sub(created));
        }
    }
    Ok(Json(TasksResponse { tasks: list }))
}

pub(super) async fn status(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(up): JsonBody<StatusUpdate>,
) -> Result<Json<StatusResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    up.validate()
        .map_err(|e| ApiErr::from_invalid("status", e))?;
    let reported = up
        .faults
        .iter()
        .map(|f| (f.fault_id.as_str(), f.step, f.kind.as_str()));
    app.check_faults(&run, "faults", reported)?;
    let (state, abort) = match app
        .durable(Write::Status {
            run_id: run.clone(),
            update: up,
            now: now_ms(),
        })
        .await?
    {
        Written::State(s, a) => (s, a),
        Written::Logs(..) => return Err(internal("the store answered a status with log counts")),
    };
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %auth.agent_id, state = state.as_str(), "run status");
    let abort_reason = app.abort_reason(&run, abort)?;
    Ok(Json(StatusResponse {
        run_id: run,
        state,
        abort_requested: abort,
        abort_reason,
    }))
}

pub(super) async fn logs(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(batch): JsonBody<LogBatch>,
) -> Result<Json<LogsResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    batch
        .validate()
        .map_err(|e| ApiErr::from_invalid("log batch", e))?;
    let (accepted, duplicates) = match app
        .durable(Write::Logs {
            run_id: run.clone(),
            lines: batch.lines,
        })
        .await?
    {
        Written::Logs(a, d) => (a, d),
        Written::State(..) => return Err(internal("the store answered log lines with a state")),
    };
    let owner = app.db(|s| s.run_owner(&run))?;
    let abort_requested = owner.as_ref().is_some_and(|o| o.abort_requested);
    let abort_reason = owner.and_then(|o| o.abort_reason);
    if accepted > 0 {
        app.logs_changed.notify_waiters();
    }
    Ok(Json(LogsResponse {
        accepted,
        duplicates,
        abort_requested,
        abort_reason,
    }))
}

pub(super) async fn result(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(auth): Extension<Authed>,
    JsonBody(res): JsonBody<RunResult>,
) -> Result<Json<StatusResponse>, ApiErr> {
    app.own_run(&auth, &run)?;
    res.validate()
        .map_err(|e| ApiErr::from_invalid("result", e))?;
    if res.run_id != run {
        return Err(ApiErr::invalid(
            "the result is for another run",
            vec![Problem {
                path: "run_id".into(),
                message: format!("{} does not match the run in the path ({run})", res.run_id),
            }],
        ));
    }
    let reported = res.steps.iter().enumerate().flat_map(|(si, st)| {
        st.faults
            .iter()
            .map(move |f| (f.fault_id.as_str(), si as u32, f.kind.as_str()))
    });
    app.check_faults(&run, "steps[].faults", reported)?;
    let host_clean = res.host_clean();
    let (state, abort) = match app
        .durable(Write::Result {
            run_id: run.clone(),
            result: res,
            now: now_ms(),
        })
        .await?
    {
        Written::State(s, a) => (s, a),
        Written::Logs(..) => return Err(internal("the store answered a result with log counts")),
    };
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %auth.agent_id, state = state.as_str(), host_clean, "run result");
    let abort_reason = app.abort_reason(&run, abort)?;
    Ok(Json(StatusResponse {
        run_id: run,
        state,
        abort_requested: abort,
        abort_reason,
    }))
}
