//! The operators' calls: agents and runs.

use super::*;

pub(super) fn key_for(app: &App, ttl: Option<u64>) -> (String, Vec<u8>, u64) {
    let key = secrets::new_secret(REGISTRATION_PREFIX);
    let hash = secrets::hash(&key);
    let ttl = ttl.map(|s| s * 1000).unwrap_or(ms(app.settings.key_ttl));
    (key, hash, now_ms() + ttl)
}

pub(super) async fn add_agent(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AddAgentRequest>,
) -> Result<(StatusCode, Json<RegistrationKey>), ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let id = secrets::random_hex(8);
    let (key, hash, expires) = key_for(&app, req.key_ttl_secs);
    app.db(|s| s.add_agent(&id, &req.name, &hash, expires, now_ms()))?;
    tracing::info!(agent_id = %id, name = %req.name, "agent added");
    Ok((
        StatusCode::CREATED,
        Json(RegistrationKey {
            agent_id: id,
            name: req.name,
            registration_key: key,
            expires_at_ms: expires,
        }),
    ))
}

pub(super) async fn list_agents(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<AgentList>, ApiErr> {
    let rows = app.db(|s| s.list_agents())?;
    Ok(Json(AgentList {
        agents: rows.iter().map(|r| app.agent_info(r)).collect(),
    }))
}

pub(super) fn find_agent(app: &App, key: &str) -> Result<crate::store::AgentRow, ApiErr> {
    if !is_agent_id(key) && chaos_protocol::validate_name(key).is_err() {
        return Err(ApiErr::new(
            ErrorCode::NotFound,
            format!("no agent {key:?}"),
        ));
    }
    app.db(|s| s.find_agent(key))?
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no agent {key:?}")))
}

pub(super) async fn show_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<AgentInfo>, ApiErr> {
    let row = find_agent(&app, &key)?;
    Ok(Json(app.agent_info(&row)))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RekeyRequest {
    #[serde(default)]
    key_ttl_secs: Option<u64>,
    /// Rekeying a revoked agent lets it back in: the operator must say so.
    #[serde(default)]
    unrevoke: bool,
}

pub(super) async fn rekey_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<RekeyRequest>,
) -> Result<Json<RegistrationKey>, ApiErr> {
    let row = find_agent(&app, &key)?;
    if row.state == "revoked" && !req.unrevoke {
        return Err(ApiErr::new(
            ErrorCode::Conflict,
            format!(
                "agent {} is revoked; a new key would let it register again. Say so explicitly: `chaos-control agents rekey {} --unrevoke` (API: \"unrevoke\": true)",
                row.name, row.name
            ),
        ));
    }
    let was_revoked = row.state == "revoked";
    if let Some(t) = req.key_ttl_secs {
        AddAgentRequest {
            name: row.name.clone(),
            key_ttl_secs: Some(t),
        }
        .validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    }
    let (k, hash, expires) = key_for(&app, req.key_ttl_secs);
    app.db(|s| s.rekey(&row.id, &hash, expires))?;
    app.wake(&row.id);
    if was_revoked {
        tracing::warn!(agent_id = %row.id, name = %row.name, "revoked agent un-revoked and rekeyed: it may register again with the new key");
    } else {
        tracing::info!(agent_id = %row.id, name = %row.name, "agent rekeyed: tokens dropped, new registration key issued");
    }
    Ok(Json(RegistrationKey {
        agent_id: row.id,
        name: row.name,
        registration_key: k,
        expires_at_ms: expires,
    }))
}

pub(super) async fn revoke_agent(
    State(app): Shared,
    UrlPath(key): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AbortRequest>,
) -> Result<Json<AgentInfo>, ApiErr> {
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let row = find_agent(&app, &key)?;
    let reason = req
        .reason
        .unwrap_or_else(|| "revoked by the operator".into());
    app.db(|s| s.revoke(&row.id, &reason))?;
    app.wake(&row.id);
    tracing::info!(agent_id = %row.id, name = %row.name, "agent revoked");
    let row = find_agent(&app, &row.id)?;
    Ok(Json(app.agent_info(&row)))
}

/// Every string of an experiment (names, descriptions, fault parameters, and keys) is free
/// of control characters: they would reach operators' terminals (`runs list`, `runs show`)
/// and agents' logs. Only a `description` may hold tabs and line breaks.
pub(super) fn control_chars(v: &serde_json::Value, path: &str, problems: &mut Vec<Problem>) {
    fn bad(s: &str, multiline: bool) -> Option<char> {
        s.chars()
            .find(|c| c.is_control() && !(*c == '\t' || multiline && matches!(c, '\n' | '\r')))
    }
    fn say(c: char) -> String {
        format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        )
    }
    match v {
        serde_json::Value::String(s) => {
            let multiline = path.ends_with(".description");
            if let Some(c) = bad(s, multiline) {
                problems.push(Problem {
                    path: path.into(),
                    message: say(c),
                });
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                control_chars(x, &format!("{path}[{i}]"), problems);
            }
        }
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                if let Some(c) = bad(k, false) {
                    problems.push(Problem {
                        path: format!("{path} (a key)"),
                        message: say(c),
                    });
                    continue;
                }
                control_chars(x, &format!("{path}.{k}"), problems);
            }
        }
        _ => {}
    }
}

pub(super) async fn create_runs(
    State(app): Shared,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<CreateRunsRequest>,
) -> Result<(StatusCode, Json<CreateRunsResponse>), ApiErr> {
    let mut problems = req.validate().err().map(|e| e.0).unwrap_or_default();
    control_chars(&req.experiment, "experiment", &mut problems);
    let (exp_json, name) = match Experiment::load_value(&req.experiment, &app.registry) {
        Ok(p) => (p.experiment.to_value(), p.experiment.name.clone()),
        Err(inv) => {
            problems.extend(inv.0.into_iter().map(|p| Problem {
                path: if p.path.is_empty() {
                    "experiment".into()
                } else {
                    format!("experiment.{}", p.path)
                },
                message: p.message,
            }));
            (serde_json::Value::Null, String::new())
        }
    };
    let mut targets: Vec<(String, String)> = Vec::new();
    // Agent ids already named (a broadcast names thousands: no quadratic search).
    let mut named: HashSet<String> = HashSet::new();
    if problems.is_empty() {
        for (i, key) in req.agents.iter().enumerate() {
            let path = format!("agents[{i}]");
            match app.db(|s| s.find_agent(key))? {
                None => problems.push(Problem {
                    path,
                    message: format!("no agent {key:?}"),
                }),
                Some(a) if a.state != "active" => problems.push(Problem {
                    path,
                    message: format!(
                        "agent {} is {}; only registered agents can run experiments",
                        a.name, a.state
                    ),
                }),
                Some(a) if named.contains(&a.id) => problems.push(Problem {
                    path,
                    message: format!("agent {} is named twice", a.name),
                }),
                Some(a) => {
                    let offered = a.kinds();
                    let missing = offered
                        .as_deref()
                        .map(|k| crate::store::missing_kinds(k, &exp_json))
                        .unwrap_or_default();
                    if missing.is_empty() {
                        named.insert(a.id.clone());
                        targets.push((a.id, a.name));
                    } else {
                        problems.push(Problem {
                            path,
                            message: format!(
                                "agent {} does not offer kind(s) {} (it registered: {}); \
                                 `chaos-agent doctor` on that host says why",
                                a.name,
                                missing.join(", "),
                                offered.unwrap_or_default().join(", ")
                            ),
                        });
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiErr::invalid(
            "the run request is invalid; nothing was created",
            problems,
        ));
    }
    let lease = req.lease_secs.unwrap_or(app.settings.lease.as_secs());
    let exp_text = serde_json::to_string(&exp_json).map_err(internal)?;
    // What a poll reading the store would hand out: the stored text, parsed.
    let exp_stored: serde_json::Value = serde_json::from_str(&exp_text).map_err(internal)?;
    let agent_ids: Vec<String> = targets.iter().map(|(id, _)| id.clone()).collect();
    let mut attempt = 0;
    let (runs, handed, created) = loop {
        let runs: Vec<(String, String)> = targets
            .iter()
            .map(|(id, _)| (secrets::random_hex(4), id.clone()))
            .collect();
        let mut ids: Vec<&String> = runs.iter().map(|r| &r.0).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != runs.len() {
            continue;
        }
        // Agents whose long poll waits here get their run from memory, stored as handed
        // out now (no store read and no delivery mark per agent).
        let handed = app.waiting(&agent_ids);
        let now = now_ms();
        match app.db(
            |s| match s.create_runs(&runs, &handed, &name, &exp_text, lease, now) {
                Err(StoreError::Conflict(m)) => Ok(Err(m)),
                other => other.map(Ok),
            },
        )? {
            Ok(()) => break (runs, handed, now),
            Err(m) if attempt < 5 => {
                attempt += 1;
                tracing::debug!(%m, "run id collision; retrying");
            }
            Err(m) => return Err(ApiErr::new(ErrorCode::Internal, m)),
        }
    };
    let mut out = Vec::with_capacity(runs.len());
    for (((run_id, agent_id), (_, agent_name)), handed) in runs.into_iter().zip(targets).zip(handed)
    {
        if handed {
            let task = chaos_protocol::agent::RunTask {
                run_id: run_id.clone(),
                experiment: exp_stored.clone(),
                lease_secs: lease,
                created_at_ms: created,
            };
            app.hand_over(&agent_id, task, created);
        } else {
            app.wake(&agent_id);
        }
        tracing::info!(%run_id, %agent_id, experiment = %name, "run created");
        out.push(RunRef {
            run_id,
            agent_id,
            agent_name,
        });
    }
    Ok((StatusCode::CREATED, Json(CreateRunsResponse { runs: out })))
}

pub(super) async fn list_runs(
    State(app): Shared,
    RawQuery(q): RawQuery,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<RunList>, ApiErr> {
    let limit = query_u64(&q, "limit", 50)?.clamp(1, 10_000) as u32;
    let agent_id = match query_str(&q, "agent") {
        Some(a) => Some(find_agent(&app, a)?.id),
        None => None,
    };
    let state = match query_str(&q, "state") {
        Some(s) => Some(RunState::parse(s).ok_or_else(|| {
            ApiErr::new(
                ErrorCode::BadRequest,
                format!("unknown state {s:?} (pending, running, completed, failed, aborted)"),
            )
        })?),
        None => None,
    };
    let runs = app.db(|s| {
        s.list_runs(&RunFilter {
            agent_id,
            state,
            limit,
        })
    })?;
    Ok(Json(RunList { runs }))
}

pub(super) fn check_run_id(run: &str) -> Result<(), ApiErr> {
    if is_run_id(run) {
        Ok(())
    } else {
        Err(ApiErr::new(ErrorCode::NotFound, format!("no run {run:?}")))
    }
}

pub(super) async fn show_run(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<RunDetail>, ApiErr> {
    check_run_id(&run)?;
    app.db(|s| s.run_detail(&run))?
        .map(Json)
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))
}

pub(super) async fn run_logs(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    RawQuery(q): RawQuery,
    Extension(AdminOk): Extension<AdminOk>,
) -> Result<Json<LogPage>, ApiErr> {
    check_run_id(&run)?;
    let after = query_u64(&q, "after", 0)?;
    let wait = Duration::from_secs(query_u64(&q, "wait", 0)?.min(MAX_WAIT_SECS));
    let limit = query_u64(&q, "limit", 1000)?.clamp(1, 1000) as u32;
    let deadline = Instant::now() + wait;
    loop {
        let changed = app.logs_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let owner = app
            .db(|s| s.run_owner(&run))?
            .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))?;
        let lines = app.db(|s| s.logs_after(&run, after, limit))?;
        let finished = owner.state.is_terminal();
        let left = deadline.saturating_duration_since(Instant::now());
        if !lines.is_empty() || finished || left.is_zero() {
            let next_after = lines.last().map(|l| l.seq).unwrap_or(after);
            return Ok(Json(LogPage {
                lines,
                next_after,
                finished,
            }));
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(left) => {}
            _ = app.shutdown.wait() => {
                return Ok(Json(LogPage { lines: vec![], next_after: after, finished: false }));
            }
        }
    }
}

pub(super) async fn abort_run(
    State(app): Shared,
    UrlPath(run): UrlPath<String>,
    Extension(AdminOk): Extension<AdminOk>,
    JsonBody(req): JsonBody<AbortRequest>,
) -> Result<Json<RunDetail>, ApiErr> {
    check_run_id(&run)?;
    req.validate()
        .map_err(|e| ApiErr::from_invalid("request", e))?;
    let reason = req
        .reason
        .unwrap_or_else(|| "aborted by the operator".into());
    app.db(|s| s.abort(&run, &reason, now_ms()))?;
    let detail = app
        .db(|s| s.run_detail(&run))?
        .ok_or_else(|| ApiErr::new(ErrorCode::NotFound, format!("no run {run}")))?;
    app.wake(&detail.summary.agent_id);
    app.logs_changed.notify_waiters();
    tracing::info!(run_id = %run, agent_id = %detail.summary.agent_id, %reason, "abort requested");
    Ok(Json(detail))
}
