//! The outbox: every status transition, log line and result for the control plane is first
//! written here (`<state-dir>/outbox/<seq>.json`, atomically), then sent, in order, by the
//! sender thread, and deleted once the control plane has it. While the control plane is
//! unreachable messages wait here; a restart loses none. Consecutive messages of one run are
//! sent together (log lines up to the protocol's batch size, status updates merged).
//!
//! The outbox is bounded (`outbox_max_bytes`): when full, new log lines are dropped and
//! counted (one warning line says how many once there is room again); status updates and
//! results are always kept, since they are small and the run's outcome depends on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use chaos_protocol::run::{FaultStatus, LogLevel, LogLine, RunResult, StatusUpdate};
use fault_core::host::fs::{sync_dir, write_atomic};
use serde::{Deserialize, Serialize};

/// One message for the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Message {
    /// `POST /runs/{run}/status`.
    Status {
        run_id: String,
        update: StatusUpdate,
    },
    /// `POST /runs/{run}/logs`.
    Logs { run_id: String, lines: Vec<LogLine> },
    /// `POST /runs/{run}/result`.
    Result { run_id: String, result: RunResult },
}

impl Message {
    pub(crate) fn run_id(&self) -> &str {
        match self {
            Message::Status { run_id, .. }
            | Message::Logs { run_id, .. }
            | Message::Result { run_id, .. } => run_id,
        }
    }
}

/// `<outbox>/sent/<run>`: the highest log `seq` of the run the control plane accepted.
const SENT_DIR: &str = "sent";

struct State {
    next: u64,
    bytes: u64,
    dropped_lines: u64,
}

/// The on-disk queue.
pub(crate) struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    wake: Condvar,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("dir", &self.dir).finish()
    }
}

fn entries(dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue; // temporary files of an interrupted write
        };
        out.push((seq, e.path(), e.metadata().map(|m| m.len()).unwrap_or(0)));
    }
    out.sort();
    Ok(out)
}

impl Outbox {
    pub(crate) fn open(state_dir: &Path, max_bytes: u64) -> anyhow::Result<Outbox> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("outbox");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join(SENT_DIR))
            .with_context(|| format!("creating {}", dir.display()))?;
        let all = entries(&dir)?;
        let next = all.last().map_or(1, |(s, _, _)| s + 1);
        let bytes = all.iter().map(|(_, _, b)| b).sum();
        Ok(Outbox {
            dir,
            max_bytes,
            state: Mutex::new(State {
                next,
                bytes,
                dropped_lines: 0,
            }),
            wake: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a message durably. Log lines are dropped (and counted) when the outbox is full.
    pub(crate) fn push(&self, msg: Message) -> anyhow::Result<()> {
        let json = serde_json::to_vec(&msg).context("encoding an outbox message")?;
        let mut st = self.lock();
        if let Message::Logs { lines, .. } = &msg {
            if st.bytes + json.len() as u64 > self.max_bytes {
                st.dropped_lines += lines.len() as u64;
                return Ok(());
            }
        }
        let path = self.dir.join(format!("{:016}.json", st.next));
        write_atomic(&path, &json, 0o600)?;
        st.next += 1;
        st.bytes += json.len() as u64;
        self.wake.notify_all();
        Ok(())
    }

    /// Log lines dropped because the outbox was full, since the last call (then reset).
    pub(crate) fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.lock().dropped_lines)
    }

    /// Wait up to `timeout` for a message to be queued. Returns at once when one is.
    pub(crate) fn wait(&self, timeout: Duration) {
        let st = self.lock();
        if self.is_empty() {
            let _ = self.wake.wait_timeout(st, timeout);
        }
    }

    /// Wake whoever waits (shutdown, a retry that should not wait).
    pub(crate) fn nudge(&self) {
        self.wake.notify_all();
    }

    pub(crate) fn is_empty(&self) -> bool {
        entries(&self.dir).map(|e| e.is_empty()).unwrap_or(true)
    }

    fn sent_path(&self, run_id: &str) -> PathBuf {
        self.dir.join(SENT_DIR).join(run_id)
    }

    /// The highest log `seq` of `run_id` the control plane has accepted, as recorded by
    /// [`sent_logs`](Outbox::sent_logs).
    fn sent_seq(&self, run_id: &str) -> u64 {
        std::fs::read_to_string(self.sent_path(run_id))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The control plane accepted log lines of `run_id` up to `seq`: remember it (before the
    /// messages are acknowledged and deleted), so numbering continues after them even once
    /// the outbox holds none of the run's lines (the server ignores a `seq` it already has).
    pub(crate) fn sent_logs(&self, run_id: &str, seq: u64) {
        if seq <= self.sent_seq(run_id) {
            return;
        }
        let r = write_atomic(&self.sent_path(run_id), seq.to_string().as_bytes(), 0o600);
        if let Err(e) = r {
            tracing::error!(run_id, error = %e, "cannot remember which log lines were sent; lines written after a restart may be taken for ones already sent");
        }
    }

    /// Forget the sent `seq` of runs `keep` says no (runs no longer remembered).
    pub(crate) fn forget_sent(&self, keep: impl Fn(&str) -> bool) {
        let Ok(dir) = std::fs::read_dir(self.dir.join(SENT_DIR)) else {
            return;
        };
        for e in dir.flatten() {
            if !e.file_name().to_str().is_some_and(&keep) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// The highest log `seq` of `run_id` queued or already sent (to continue numbering in
    /// another [`Reporter`](super::runs::Reporter), e.g. after a restart).
    pub(crate) fn max_seq(&self, run_id: &str) -> u64 {
        let mut max = self.sent_seq(run_id);
        for (_, path, _) in entries(&self.dir).unwrap_or_default() {
            if let Ok(Message::Logs { run_id: r, lines }) = read(&path) {
                if r == run_id {
                    max = lines.iter().map(|l| l.seq).fold(max, u64::max);
                }
            }
        }
        max
    }

    /// The next thing to send: the oldest message, merged with the ones after it of the
    /// same run and type. Returns the files it covers, to [`ack`](Outbox::ack) after.
    pub(crate) fn next_batch(&self) -> anyhow::Result<Option<(Vec<PathBuf>, Message)>> {
        let mut files = Vec::new();
        let mut batch: Option<Message> = None;
        for (_, path, _) in entries(&self.dir)? {
            let msg = match read(&path) {
                Ok(m) => m,
                Err(e) => {
                    // A damaged message cannot be sent; keep it aside for a person.
                    tracing::error!(path = %path.display(), error = %e, "unreadable outbox message set aside");
                    let _ = std::fs::rename(&path, path.with_extension("damaged"));
                    continue;
                }
            };
            match (&mut batch, msg) {
                (None, m) => batch = Some(m),
                (
                    Some(Message::Logs { run_id, lines }),
                    Message::Logs {
                        run_id: r,
                        lines: more,
                    },
                ) if *run_id == r && lines.len() + more.len() <= chaos_protocol::MAX_LOG_LINES => {
                    lines.extend(more)
                }
                (
                    Some(Message::Status { run_id, update }),
                    Message::Status {
                        run_id: r,
                        update: later,
                    },
                ) if *run_id == r && !is_terminal(update) => merge(update, later),
                _ => break,
            }
            files.push(path);
        }
        Ok(batch.map(|b| (files, b)))
    }

    /// The control plane has these (or refused them for good): delete them.
    pub(crate) fn ack(&self, files: &[PathBuf]) {
        let mut freed = 0;
        for f in files {
            freed += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(f);
        }
        let _ = sync_dir(&self.dir);
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(freed);
    }
}

fn read(path: &Path) -> anyhow::Result<Message> {
    let bytes = std::fs::read(path)?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn is_terminal(u: &StatusUpdate) -> bool {
    !matches!(
        u.state,
        chaos_protocol::run::RunState::Running | chaos_protocol::run::RunState::Pending
    )
}

/// Two status updates of one run as one: the later state, step and message, and the latest
/// state of every fault.
fn merge(into: &mut StatusUpdate, later: StatusUpdate) {
    let mut faults: BTreeMap<String, FaultStatus> = into
        .faults
        .drain(..)
        .map(|f| (f.fault_id.clone(), f))
        .collect();
    for f in later.faults {
        faults.insert(f.fault_id.clone(), f);
    }
    into.faults = faults.into_values().collect();
    into.state = later.state;
    if later.step.is_some() {
        into.step = later.step;
    }
    if later.message.is_some() {
        into.message = later.message;
    }
}

/// A log line for the outbox (the message cut to the protocol's limit).
pub(crate) fn line(seq: u64, level: LogLevel, message: String) -> LogLine {
    let mut message = message;
    if message.len() > chaos_protocol::MAX_LOG_MESSAGE_BYTES {
        let mut cut = chaos_protocol::MAX_LOG_MESSAGE_BYTES - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    // Control characters other than newline and tab are refused by the protocol.
    let message = message
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    LogLine {
        seq,
        at_ms: now_ms(),
        level,
        message,
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chaos_protocol::run::RunState;

    fn status(state: RunState, fault: &str, fs: chaos_protocol::run::FaultState) -> Message {
        Message::Status {
            run_id: "r1".into(),
            update: StatusUpdate {
                state,
                step: Some(0),
                faults: vec![FaultStatus {
                    fault_id: fault.into(),
                    step: 0,
                    kind: "k.k".into(),
                    state: fs,
                    detail: String::new(),
                }],
                message: None,
            },
        }
    }

    #[test]
    fn survives_reopen_keeps_order_and_merges() {
        use chaos_protocol::run::FaultState as F;
        let dir = fault_core::testing::TempDir::new("outbox");
        {
            let o = Outbox::open(dir.path(), 1 << 20).unwrap();
            o.push(status(RunState::Running, "r1-1-1", F::Planned))
                .unwrap();
            o.push(status(RunState::Running, "r1-1-1", F::Holding))
                .unwrap();
            o.push(status(RunState::Running, "r1-1-2", F::Planned))
                .unwrap();
            for seq in 1..=3 {
                o.push(Message::Logs {
                    run_id: "r1".into(),
                    lines: vec![line(seq, LogLevel::Info, format!("l{seq}\u{1b}[31m"))],
                })
                .unwrap();
            }
        }
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(o.max_seq("r1"), 3);
        let (files, m) = o.next_batch().unwrap().unwrap();
        assert_eq!(files.len(), 3);
        let Message::Status { update, .. } = m else {
            panic!("{m:?}")
        };
        assert_eq!(update.faults.len(), 2);
        assert_eq!(update.faults[0].state, F::Holding);
        o.ack(&files);
        let (files, m) = o.next_batch().unwrap().unwrap();
        let Message::Logs { lines, .. } = m else {
            panic!()
        };
        assert_eq!(lines.iter().map(|l| l.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(!lines[0].message.contains('\u{1b}'));
        o.ack(&files);
        assert!(o.next_batch().unwrap().is_none());
        assert!(o.is_empty());
    }

    #[test]
    fn numbering_continues_after_lines_already_sent() {
        let dir = fault_core::testing::TempDir::new("outbox");
        {
            let o = Outbox::open(dir.path(), 1 << 20).unwrap();
            for seq in 1..=3 {
                o.push(Message::Logs {
                    run_id: "r1".into(),
                    lines: vec![line(seq, LogLevel::Info, format!("l{seq}"))],
                })
                .unwrap();
            }
            let (files, _) = o.next_batch().unwrap().unwrap();
            o.sent_logs("r1", 3);
            o.ack(&files);
            assert!(o.is_empty());
            assert_eq!(o.max_seq("r1"), 3);
            o.sent_logs("r1", 2); // never backwards
        }
        // A restart: nothing queued, yet the next line of r1 is 4.
        let o = Outbox::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(o.max_seq("r1"), 3);
        assert_eq!(o.max_seq("r2"), 0);
        o.forget_sent(|r| r != "r1");
        assert_eq!(o.max_seq("r1"), 0);
    }

    #[test]
    fn a_full_outbox_drops_log_lines_but_never_status_or_results() {
        let dir = fault_core::testing::TempDir::new("outbox");
        let o = Outbox::open(dir.path(), 400).unwrap();
        for seq in 1..=20 {
            o.push(Message::Logs {
                run_id: "r1".into(),
                lines: vec![line(seq, LogLevel::Info, "x".repeat(50))],
            })
            .unwrap();
        }
        assert!(o.take_dropped() > 0);
        o.push(status(
            RunState::Completed,
            "r1-1-1",
            chaos_protocol::run::FaultState::Reverted,
        ))
        .unwrap();
        let mut saw_status = false;
        while let Some((files, m)) = o.next_batch().unwrap() {
            saw_status |= matches!(m, Message::Status { .. });
            o.ack(&files);
        }
        assert!(saw_status);
    }
}
