//! Group commit of the writes agents wait for (status, log lines, results).
//!
//! With SQLite (`synchronous=FULL`) each commit waits for the disk. One thread, the
//! committer, takes every write queued while the previous group was being committed,
//! applies them in one transaction (each in a savepoint of its own) and commits once: one
//! fsync for the group. Each caller gets its write's own result only after that commit
//! returned, so nothing is acknowledged before it is on disk; a failed commit fails every
//! write of the group (none is stored). The request's task awaits its answer without
//! blocking a worker thread of the runtime while the disk syncs.
//!
//! With PostgreSQL the store's writes go through [`App::db`] as before (the database
//! server groups commits of its own).

use std::sync::Condvar;

use tokio::sync::oneshot;

use super::*;
use crate::store::{Write, Written};

type Reply = oneshot::Sender<Result<Written, StoreError>>;

#[derive(Default)]
struct Queue {
    writes: Vec<(Write, Reply)>,
    closed: bool,
}

/// The queue shared by the request handlers and the committer thread.
#[derive(Default)]
pub(super) struct Committer {
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Committer {
    /// Start the committer thread on `store`; it ends once [`Committer::close`] was called
    /// and the queue is empty.
    pub(super) fn start(store: Arc<Mutex<Store>>) -> std::io::Result<CommitHandle> {
        let c = Arc::new(Committer::default());
        let c2 = c.clone();
        std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || c2.run(&store))?;
        Ok(CommitHandle(c))
    }

    /// Queue `w`; the answer comes once the group holding it is committed.
    pub(super) async fn write(&self, w: Write) -> Result<Written, StoreError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                return Err(stopped());
            }
            q.writes.push((w, tx));
        }
        self.ready.notify_one();
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// No more writes are taken; the thread commits what is queued and ends.
    pub(super) fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.ready.notify_all();
    }

    fn run(&self, store: &Mutex<Store>) {
        loop {
            let batch = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                while q.writes.is_empty() && !q.closed {
                    q = self.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.writes.is_empty() {
                    return; // closed and drained
                }
                std::mem::take(&mut q.writes)
            };
            let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
            let r = {
                let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
                s.write_group(&writes)
            };
            match r {
                Ok(results) => {
                    for (reply, r) in replies.into_iter().zip(results) {
                        let _ = reply.send(r);
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, writes = writes.len(), "group commit failed; none of its writes is stored");
                    for reply in replies {
                        let _ = reply.send(Err(copy_err(&e)));
                    }
                }
            }
        }
    }
}

/// The server's end of the committer: dropping it (with the server's state) stops the
/// thread once what is queued is committed.
pub(super) struct CommitHandle(Arc<Committer>);

impl std::ops::Deref for CommitHandle {
    type Target = Committer;
    fn deref(&self) -> &Committer {
        &self.0
    }
}

impl Drop for CommitHandle {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn stopped() -> StoreError {
    StoreError::Sql(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
        Some("the store's committer has stopped".into()),
    ))
}

/// The same failure again, for each write of a failed group.
fn copy_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Sql(rusqlite::Error::SqliteFailure(c, m)) => {
            StoreError::Sql(rusqlite::Error::SqliteFailure(*c, m.clone()))
        }
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        other => StoreError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        )),
    }
}
