//! The supervisor: the lease (no successful call for `lease_secs` aborts the run), the
//! systemd watchdog (pinged only while the poll loop keeps its promise to beat again), and
//! `STATUS=` lines.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Daemon;

impl Daemon<'_, '_> {
    pub(super) fn supervise(&self) {
        let mut last_status = String::new();
        let mut last_ping = Instant::now() - Duration::from_secs(3600);
        while !(self.runner_done.load(Ordering::SeqCst) && self.stop.is_aborted()) {
            // The lease: no successful call for lease_secs aborts the run.
            if let Some(a) = self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            {
                let silent = self
                    .last_ok
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .elapsed();
                if silent >= a.lease && !a.abort.is_aborted() {
                    let reason = format!(
                        "control plane unreachable for {} s (the run's lease)",
                        a.lease.as_secs()
                    );
                    tracing::error!(run_id = %a.run_id, "{reason}");
                    a.abort.abort(reason);
                    // STATUS= says so from now on, not only once a call in flight times out
                    // (up to its whole timeout later); the next successful call clears it.
                    let since = Instant::now()
                        .checked_sub(silent)
                        .unwrap_or_else(Instant::now);
                    self.unreachable_since
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(since);
                }
            }
            // The watchdog: only while the poll loop keeps its promise to beat again.
            if let Some(every) = self.sd.watchdog {
                let due = *self.beat_due.lock().unwrap_or_else(|e| e.into_inner());
                if Instant::now() <= due && last_ping.elapsed() >= every {
                    self.sd.watchdog();
                    last_ping = Instant::now();
                }
            }
            let status = self.status_line();
            if status != last_status {
                self.sd.status(&status);
                last_status = status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn status_line(&self) -> String {
        if self.stop.is_aborted() {
            return "stopping: reverting and flushing the outbox".into();
        }
        if let Some(why) = self.locked_out() {
            return format!("locked out: {why}; waiting for a new registration key (then systemctl reload chaos-agent)");
        }
        let run = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|a| a.run_id.clone());
        let since = *self
            .unreachable_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let link = since.map(|t| {
            let secs = t.elapsed().as_secs();
            format!("; control plane unreachable for {secs} s")
        });
        match run {
            Some(r) => format!("running {r}{}", link.unwrap_or_default()),
            None => format!("idle{}", link.unwrap_or_default()),
        }
    }
}
