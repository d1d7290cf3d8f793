//! `LISTEN` for what other replicas change (see the module above).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::{describe, PgTarget, CHANNEL};

/// What another replica (or this one) changed, as heard on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A run or an abort for this agent.
    Wake(String),
    /// Some run's logs, status or result.
    Logs,
    /// The first `LISTEN` is in place: from now on no change is missed.
    Listening,
    /// The listening connection was lost and made again: changes made meanwhile were not
    /// heard, so everything waiting must look again.
    Reconnected,
}

/// Listen on [`CHANNEL`] until `stop` is set (checked every second), calling `on` for each
/// notification, except those sent by the backend whose pid `own` holds (this replica's
/// store connection: it woke its own waiters already). `on` hears [`Heard::Listening`] once
/// the first `LISTEN` is in place. A lost connection is made again (every 2 s until it
/// works); `on` then hears [`Heard::Reconnected`], since notifications sent meanwhile are gone.
pub fn listen(target: &PgTarget, stop: &AtomicBool, own: &AtomicI32, on: &dyn Fn(Heard)) {
    let mut complained = false;
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        let mut client = match target.connect().and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                if !complained {
                    tracing::error!(error = %e, "cannot listen for other replicas' changes; retrying every 2 s (long polls still see them within their wait)");
                    complained = true;
                }
                for _ in 0..20 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
        };
        if complained {
            tracing::info!("listening for other replicas' changes again");
            complained = false;
        }
        on(if first {
            Heard::Listening
        } else {
            Heard::Reconnected
        });
        first = false;
        let mut notes = client.notifications();
        while !stop.load(Ordering::SeqCst) {
            let next = notes.timeout_iter(Duration::from_secs(1)).next();
            match next {
                Ok(Some(n)) if n.process_id() == own.load(Ordering::SeqCst) => {}
                Ok(Some(n)) => match n.payload().strip_prefix("wake:") {
                    Some(agent) => on(Heard::Wake(agent.to_string())),
                    None => on(Heard::Logs),
                },
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "lost the connection that listens for other replicas' changes");
                    break;
                }
            }
        }
    }
}
