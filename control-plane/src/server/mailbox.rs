//! Each agent's mailbox on this replica: the wake-up of its long polls, and the runs handed
//! over to a poll waiting here at their creation.

use super::*;

/// One agent's long polls on this replica: the wake-up, and the runs handed over at their
/// creation to a poll waiting here (so the woken poll answers them without reading the
/// store; the store has them already, marked delivered).
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    pub(super) notify: Notify,
    state: Mutex<MailState>,
}

#[derive(Debug, Default)]
pub(super) struct MailState {
    /// Polls waiting now that held nothing when they started (only those take handed runs).
    pub(super) waiting: u32,
    /// Runs created for a waiting poll, with their creation times, for the next answer.
    pub(super) handed: Vec<(chaos_protocol::agent::RunTask, u64)>,
    /// Something else changed for this agent (an abort, a revocation, another replica's
    /// run, a run created while no poll was waiting): the next answer reads the store.
    pub(super) stale: bool,
}

impl Mailbox {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, MailState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl App {
    pub(super) fn mailbox(&self, agent_id: &str) -> Arc<Mailbox> {
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(agent_id.to_string()).or_default().clone()
    }

    /// Wake the agent's long polls held here; they read the store for what changed.
    pub(super) fn wake(&self, agent_id: &str) {
        let m = self
            .wakers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(agent_id)
            .cloned();
        if let Some(m) = m {
            m.lock().stale = true;
            m.notify.notify_waiters();
        }
    }

    /// Which of `agents` have a long poll waiting here with nothing in hand: their new runs
    /// are handed over from memory (see [`App::hand_over`]).
    pub(super) fn waiting(&self, agents: &[String]) -> Vec<bool> {
        let w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        agents
            .iter()
            .map(|a| w.get(a).is_some_and(|m| m.lock().waiting > 0))
            .collect()
    }

    /// Give a run, created (and stored as delivered) for a poll that was waiting, to that
    /// poll. Should the poll have ended meanwhile, the next poll finds the run still in hand
    /// and answers at once, from the store.
    pub(super) fn hand_over(
        &self,
        agent_id: &str,
        task: chaos_protocol::agent::RunTask,
        created: u64,
    ) {
        let m = self.mailbox(agent_id);
        m.lock().handed.push((task, created));
        m.notify.notify_waiters();
    }
}
