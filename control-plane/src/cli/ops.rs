//! The operator commands (`agents`, `run`, `runs`): calls to the API with the admin token,
//! printed for people (through `say!`) or as JSON.

use super::*;

/// What the operator commands need to talk to the API.
struct Api {
    client: Client,
    token: String,
    json: bool,
}

impl Api {
    fn open(state: &Path, conn: &Conn) -> anyhow::Result<Api> {
        let paths = Paths::new(state);
        let url = match &conn.url {
            Some(u) => u.clone(),
            None => {
                let info = paths.init_info()?;
                format!("https://127.0.0.1:{}", info.port)
            }
        };
        let ca_path = conn.ca.clone().unwrap_or_else(|| paths.ca_pem());
        let ca = std::fs::read(&ca_path).with_context(|| {
            format!(
                "cannot read the CA certificate {} (pass --ca or --state-dir)",
                ca_path.display()
            )
        })?;
        let token_path = conn
            .admin_token_file
            .clone()
            .unwrap_or_else(|| paths.admin_token());
        let token = std::fs::read_to_string(&token_path)
            .with_context(|| {
                format!(
                    "cannot read the admin token {} (pass --admin-token-file or --state-dir; \
                     it is readable only by its owner)",
                    token_path.display()
                )
            })?
            .trim()
            .to_string();
        let client = Client::new(ClientConfig::new(url, ca))?;
        Ok(Api {
            client,
            token,
            json: conn.json,
        })
    }

    fn get<R: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<R> {
        Ok(self
            .client
            .call::<(), R>(Method::GET, path, Some(&self.token), None)?)
    }

    fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<R> {
        Ok(self
            .client
            .call(Method::POST, path, Some(&self.token), Some(body))?)
    }

    fn print_json<T: serde::Serialize>(&self, v: &T) -> anyhow::Result<()> {
        say!("{}", serde_json::to_string_pretty(v)?);
        Ok(())
    }
}

fn enc(s: &str) -> String {
    // Path segments are names or ids; anything else is refused by the server anyway.
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ago(ms: Option<u64>) -> String {
    let Some(t) = ms else { return "never".into() };
    let s = now_ms().saturating_sub(t) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

pub(super) fn agents(state: &Path, cmd: AgentsCmd) -> anyhow::Result<()> {
    match cmd {
        AgentsCmd::Add {
            name,
            key_ttl,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let k: RegistrationKey = api.post(
                "/admin/agents",
                &AddAgentRequest {
                    name,
                    key_ttl_secs: key_ttl.map(|d| d.0.as_secs().max(1)),
                },
            )?;
            if api.json {
                return api.print_json(&k);
            }
            print_key(&k, "added");
            Ok(())
        }
        AgentsCmd::List { conn } => {
            let api = Api::open(state, &conn)?;
            let list: AgentList = api.get("/admin/agents")?;
            if api.json {
                return api.print_json(&list);
            }
            if list.agents.is_empty() {
                say!("no agents yet; add one with `chaos-control agents add NAME`");
                return Ok(());
            }
            say!(
                "{:<20} {:<16} {:<8} {:<10} {:<10} {:<20} KERNEL",
                "NAME",
                "ID",
                "STATE",
                "LAST SEEN",
                "VERSION",
                "HOST"
            );
            for a in &list.agents {
                let h = a.host.as_ref();
                say!(
                    "{:<20} {:<16} {:<8} {:<10} {:<10} {:<20} {}",
                    a.name,
                    a.agent_id,
                    a.state.as_str(),
                    ago(a.last_seen_ms),
                    h.map(|h| h.agent_version.as_str()).unwrap_or("-"),
                    h.map(|h| h.hostname.as_str()).unwrap_or("-"),
                    h.map(|h| h.kernel.as_str()).unwrap_or("-"),
                );
            }
            for a in list.agents.iter().filter(|a| a.state_reason.is_some()) {
                say!(
                    "\n{} is {}: {}",
                    a.name,
                    a.state.as_str(),
                    a.state_reason.as_deref().unwrap_or_default()
                );
            }
            Ok(())
        }
        AgentsCmd::Show { agent, conn } => {
            let api = Api::open(state, &conn)?;
            let a: AgentInfo = api.get(&format!("/admin/agents/{}", enc(&agent)))?;
            if api.json {
                return api.print_json(&a);
            }
            print_agent(&a);
            Ok(())
        }
        AgentsCmd::Rekey {
            agent,
            unrevoke,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let body = if unrevoke {
                serde_json::json!({ "unrevoke": true })
            } else {
                serde_json::json!({})
            };
            let k: RegistrationKey =
                api.post(&format!("/admin/agents/{}/rekey", enc(&agent)), &body)?;
            if api.json {
                return api.print_json(&k);
            }
            print_key(&k, "rekeyed (its tokens no longer work)");
            Ok(())
        }
        AgentsCmd::Revoke {
            agent,
            reason,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let a: AgentInfo = api.post(
                &format!("/admin/agents/{}/revoke", enc(&agent)),
                &AbortRequest { reason },
            )?;
            if api.json {
                return api.print_json(&a);
            }
            say!("agent {} ({}) revoked", a.name, a.agent_id);
            Ok(())
        }
    }
}

fn print_key(k: &RegistrationKey, what: &str) {
    say!("agent {} ({}) {what}", k.name, k.agent_id);
    say!();
    say!(
        "registration key (one use, expires {}):",
        format_ms(k.expires_at_ms)
    );
    say!("  {}", k.registration_key);
    say!();
    say!("Put it in the agent's configuration as `registration_key`; the agent trades it");
    say!("for its own rotating token at first start. Keep it secret until then.");
}

fn print_agent(a: &AgentInfo) {
    say!("name          {}", a.name);
    say!("id            {}", a.agent_id);
    say!("state         {}", a.state.as_str());
    if let Some(r) = &a.state_reason {
        say!("reason        {r}");
    }
    say!("added         {}", format_ms(a.created_at_ms));
    if let Some(t) = a.registered_at_ms {
        say!("registered    {}", format_ms(t));
    }
    say!("last seen     {}", ago(a.last_seen_ms));
    say!("token gen.    {}", a.token_generation);
    if let Some(h) = &a.host {
        say!("hostname      {}", h.hostname);
        say!("version       {}", h.agent_version);
        say!("os            {}", h.os);
        say!("kernel        {}", h.kernel);
        say!("arch          {}", h.arch);
        say!("machine id    {}", h.machine_id);
        say!("kinds         {}", h.kinds.join(", "));
    }
}

pub(super) fn run_file(
    state: &Path,
    file: &Path,
    agents: Vec<String>,
    lease: Option<fault_core::Duration>,
    follow: bool,
    conn: &Conn,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    // The same validation the server does, so problems show with line numbers and
    // without a round trip.
    let prepared = Experiment::load_toml(&text, &chaos_control::registry())
        .map_err(|e| Exit(2, format!("{}: {e}", file.display())))?;
    if follow && agents.len() != 1 {
        bail!(Exit(2, "--follow needs exactly one --agent".into()));
    }
    let api = Api::open(state, conn)?;
    let resp: CreateRunsResponse = api.post(
        "/admin/runs",
        &CreateRunsRequest {
            experiment: prepared.experiment.to_value(),
            agents,
            lease_secs: lease.map(|d| d.0.as_secs()),
        },
    )?;
    if api.json && !follow {
        return api.print_json(&resp);
    }
    for r in &resp.runs {
        say!("run {} created for agent {}", r.run_id, r.agent_name);
    }
    if follow {
        follow_logs(&api, &resp.runs[0].run_id)?;
        show_run(&api, &resp.runs[0].run_id)?;
    } else {
        for r in &resp.runs {
            say!(
                "\nwatch:   chaos-control runs logs --follow {id}\ndetails: chaos-control runs show {id}\nabort:   chaos-control runs abort {id}",
                id = r.run_id
            );
        }
    }
    Ok(())
}

pub(super) fn runs(state: &Path, cmd: RunsCmd) -> anyhow::Result<()> {
    match cmd {
        RunsCmd::List {
            agent,
            state: st,
            limit,
            conn,
        } => {
            let api = Api::open(state, &conn)?;
            let mut q = format!("/admin/runs?limit={limit}");
            if let Some(a) = agent {
                q.push_str(&format!("&agent={}", enc(&a)));
            }
            if let Some(s) = st {
                q.push_str(&format!("&state={}", enc(&s)));
            }
            let list: RunList = api.get(&q)?;
            if api.json {
                return api.print_json(&list);
            }
            if list.runs.is_empty() {
                say!("no runs");
                return Ok(());
            }
            say!(
                "{:<9} {:<20} {:<24} {:<10} {:<10} ABORT",
                "RUN",
                "AGENT",
                "EXPERIMENT",
                "STATE",
                "CREATED"
            );
            for r in &list.runs {
                say!(
                    "{:<9} {:<20} {:<24} {:<10} {:<10} {}",
                    r.run_id,
                    r.agent_name,
                    r.name,
                    r.state.as_str(),
                    ago(Some(r.created_at_ms)),
                    if r.abort_requested { "requested" } else { "" }
                );
            }
            Ok(())
        }
        RunsCmd::Show { run, conn } => {
            let api = Api::open(state, &conn)?;
            if api.json {
                let d: RunDetail = api.get(&format!("/admin/runs/{}", enc(&run)))?;
                return api.print_json(&d);
            }
            show_run(&api, &run)
        }
        RunsCmd::Logs { run, follow, conn } => {
            let api = Api::open(state, &conn)?;
            if follow {
                follow_logs(&api, &run)
            } else {
                let mut after = 0;
                loop {
                    let p: LogPage =
                        api.get(&format!("/admin/runs/{}/logs?after={after}", enc(&run)))?;
                    print_lines(&api, &p)?;
                    if p.lines.is_empty() {
                        return Ok(());
                    }
                    after = p.next_after;
                }
            }
        }
        RunsCmd::Abort { run, reason, conn } => {
            let api = Api::open(state, &conn)?;
            let d: RunDetail = api.post(
                &format!("/admin/runs/{}/abort", enc(&run)),
                &AbortRequest { reason },
            )?;
            if api.json {
                return api.print_json(&d);
            }
            if d.summary.state.is_terminal() {
                say!("run {} {}", run, d.summary.state.as_str());
            } else {
                say!(
                    "abort of run {run} requested; agent {} will revert and report",
                    d.summary.agent_name
                );
            }
            Ok(())
        }
    }
}

fn print_lines(api: &Api, p: &LogPage) -> anyhow::Result<()> {
    for l in &p.lines {
        if api.json {
            say!("{}", serde_json::to_string(l)?);
        } else {
            let level = serde_json::to_value(l.level)?;
            say!(
                "{} {:<5} {}",
                format_ms(l.at_ms),
                level.as_str().unwrap_or(""),
                l.message
            );
        }
    }
    Ok(())
}

fn follow_logs(api: &Api, run: &str) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let p: LogPage = api.get(&format!(
            "/admin/runs/{}/logs?after={after}&wait=25",
            enc(run)
        ))?;
        print_lines(api, &p)?;
        after = p.next_after;
        if p.finished && p.lines.is_empty() {
            return Ok(());
        }
    }
}

fn show_run(api: &Api, run: &str) -> anyhow::Result<()> {
    let d: RunDetail = api.get(&format!("/admin/runs/{}", enc(run)))?;
    let s = &d.summary;
    say!("run           {}", s.run_id);
    say!("experiment    {}", s.name);
    say!("agent         {} ({})", s.agent_name, s.agent_id);
    say!("state         {}", s.state.as_str());
    say!("created       {}", format_ms(s.created_at_ms));
    for (label, t) in [
        ("delivered", s.delivered_at_ms),
        ("started", s.started_at_ms),
        ("finished", s.finished_at_ms),
    ] {
        if let Some(t) = t {
            say!("{label:<13} {}", format_ms(t));
        }
    }
    say!("lease         {}s", d.lease_secs);
    if s.abort_requested {
        say!(
            "abort         requested: {}",
            d.abort_reason.as_deref().unwrap_or("")
        );
    }
    if let Some(m) = &d.message {
        say!("message       {m}");
    }
    say!("log lines     {}", d.log_lines);
    let steps = d.experiment["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    say!("\nsteps:");
    for (i, st) in steps.iter().enumerate() {
        say!(
            "  {}. {}",
            i + 1,
            st["name"].as_str().unwrap_or("(unnamed)")
        );
        for f in st["faults"].as_array().into_iter().flatten() {
            say!(
                "       {} for {}",
                f["kind"].as_str().unwrap_or("?"),
                f["duration"].as_str().unwrap_or("?")
            );
        }
    }
    if !d.faults.is_empty() {
        say!("\nfaults:");
        for f in &d.faults {
            let st = serde_json::to_value(f.state)?;
            say!(
                "  {:<16} {:<16} {:<13} {}",
                f.fault_id,
                f.kind,
                st.as_str().unwrap_or(""),
                f.detail
            );
        }
    }
    if let Some(r) = &d.result {
        let outcome = serde_json::to_value(r.outcome)?;
        say!(
            "\nresult: {} in {} ms; host clean: {}",
            outcome.as_str().unwrap_or(""),
            r.elapsed_ms,
            if r.host_clean() { "yes" } else { "NO" }
        );
        if let Some(a) = &r.abort_reason {
            say!("  aborted: {a}");
        }
        for (i, st) in r.steps.iter().enumerate() {
            let o = serde_json::to_value(st.outcome)?;
            say!("  step {} {}: {}", i + 1, st.name, o.as_str().unwrap_or(""));
            if let Some(e) = &st.error {
                say!("    error: {e}");
            }
            for f in &st.faults {
                let rv = serde_json::to_value(f.revert)?;
                say!(
                    "    {} {} held {} ms, revert {}{}",
                    f.fault_id,
                    f.kind,
                    f.held_ms,
                    rv.as_str().unwrap_or(""),
                    f.error
                        .as_deref()
                        .map(|e| format!(", error: {e}"))
                        .unwrap_or_default()
                );
                for u in &f.manual_undo {
                    say!("      undo by hand: {u}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::terminal_safe;

    #[test]
    fn control_characters_are_printed_escaped() {
        assert_eq!(
            terminal_safe("plain text\tand\nlines"),
            "plain text\tand\nlines"
        );
        assert_eq!(
            terminal_safe("\u{1b}[2J\u{1b}]0;owned\u{7}x\ry"),
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}x\\u{d}y"
        );
        assert_eq!(terminal_safe("\u{9b}31m"), "\\u{9b}31m");
    }
}
