//! The sender: flushes the outbox to the control plane in order, with backoff; drops what
//! the control plane refuses for good (and says so), aborts a run when an answer says
//! `abort_requested`, and on stop keeps flushing for a bounded time.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::outbox::Message;
use super::{Backoff, CallError, Daemon, FLUSH_ON_STOP};

impl Daemon<'_, '_> {
    pub(super) fn send_loop(&self) {
        let mut backoff = Backoff::default();
        let mut flush_until: Option<Instant> = None;
        loop {
            if self.runner_done.load(Ordering::SeqCst) {
                let until = *flush_until.get_or_insert_with(|| Instant::now() + FLUSH_ON_STOP);
                if self.outbox.is_empty() || Instant::now() >= until || self.locked_out().is_some()
                {
                    if !self.outbox.is_empty() {
                        tracing::warn!("stopping with messages still in the outbox: they are sent after the next start");
                    }
                    return;
                }
            }
            let batch = match self.outbox.next_batch() {
                Ok(Some(b)) => b,
                Ok(None) => {
                    self.outbox.wait(Duration::from_millis(500));
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "cannot read the outbox");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            let (files, msg) = batch;
            let run_id = msg.run_id().to_string();
            let sent = self.call(|c, _agent, token| match &msg {
                Message::Status { update, .. } => c
                    .status(&run_id, token, update)
                    .map(|r| r.abort_requested.then_some(r.abort_reason)),
                Message::Logs { lines, .. } => c
                    .logs(
                        &run_id,
                        token,
                        &chaos_protocol::run::LogBatch {
                            lines: lines.clone(),
                        },
                    )
                    .map(|r| r.abort_requested.then_some(r.abort_reason)),
                Message::Result { result, .. } => c
                    .result(&run_id, token, result)
                    .map(|r| r.abort_requested.then_some(r.abort_reason)),
            });
            match sent {
                Ok(abort) => {
                    backoff.reset();
                    if let Message::Logs { lines, .. } = &msg {
                        let last = lines.iter().map(|l| l.seq).max().unwrap_or(0);
                        self.outbox.sent_logs(&run_id, last);
                    }
                    self.outbox.ack(&files);
                    // The same reason text as the abort task's (which may arrive first,
                    // or after): the run is aborted once, with the operator's reason.
                    if let Some(reason) = abort {
                        let reason = crate::daemon::abort_reason(reason.as_deref().unwrap_or(""));
                        self.abort_active(Some(&run_id), &reason);
                    }
                }
                Err(CallError::NoIdentity) => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(CallError::Retry(e)) => {
                    let d = backoff.next();
                    tracing::debug!(error = %e, retry_in_ms = d.as_millis() as u64, "outbox flush waits for the control plane");
                    let until = flush_until.unwrap_or_else(|| Instant::now() + d);
                    std::thread::sleep(
                        d.min(until.saturating_duration_since(Instant::now()))
                            .max(Duration::from_millis(50)),
                    );
                }
                Err(CallError::Refused(e)) => {
                    // It will be refused the same way again: drop it, say so locally.
                    tracing::error!(run_id = %run_id, error = %e, message = ?msg_kind(&msg), "the control plane refused a message; dropped");
                    self.outbox.ack(&files);
                }
            }
        }
    }
}

fn msg_kind(m: &Message) -> &'static str {
    match m {
        Message::Status { .. } => "status",
        Message::Logs { .. } => "logs",
        Message::Result { .. } => "result",
    }
}
