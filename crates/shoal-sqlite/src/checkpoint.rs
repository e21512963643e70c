//! WAL checkpoints off the writer's thread.
//!
//! Owns: [`Checkpointer`], the write-ahead-log hook of the replica's writer connection and
//! the thread (with a connection of its own) that copies the log back into the file.
//!
//! SQLite's default moves the write-ahead log into the database file (a checkpoint) inside
//! the commit that grows the log past 1,000 pages, on the committing thread: during a
//! catch-up of one-row entries that was more than half of the commits' wall time (copying
//! and fsyncs), and commits are on the critical path of every apply. Here the writer's hook only wakes the checkpointer thread, which
//! runs a `PASSIVE` checkpoint (it copies what no reader still needs, waits for nobody) on
//! its own connection while the writer goes on.
//!
//! Invariants:
//! - Durability is unchanged: a checkpoint copies committed frames; what a commit
//!   guarantees (`synchronous`, see the replica) does not depend on who checkpoints or when.
//! - The log stays bounded: if it reaches [`INLINE_PAGES`] (the checkpointer lags, or a
//!   reader holds old frames), the committing thread checkpoints itself, as SQLite would.
//! - The thread ends, and its connection closes, before the replica's own connections do
//!   ([`Checkpointer::stop`]), so the last connection to close still merges and removes the
//!   log as before.
//!
//! Never: fails a commit (errors of a checkpoint are ignored, as SQLite's own automatic
//! checkpoint ignores them: the next one retries).

use std::os::raw::c_int;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};

/// Log size (pages) from which a commit wakes the checkpointer: SQLite's default automatic
/// checkpoint threshold.
pub const CHECKPOINT_PAGES: c_int = 1000;

/// Log size (pages) from which the committing thread checkpoints itself.
pub const INLINE_PAGES: c_int = 8 * CHECKPOINT_PAGES;

/// The checkpointer thread of one replica.
pub(crate) struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

type Hook = fn(&mut Wal, c_int) -> rusqlite::Result<()>;

impl Checkpointer {
    /// Starts the thread, with its own connection to `path`, and hooks the writer `conn`.
    pub(crate) fn start(path: &Path, conn: &mut Connection) -> rusqlite::Result<Self> {
        let own = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // One wake-up pending at most: commits during a checkpoint ask for one more.
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("shoal-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    let _ = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                }
            })
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?;
        conn.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            if pages >= INLINE_PAGES {
                let _ = wal.checkpoint();
            } else if pages >= CHECKPOINT_PAGES {
                let _ = wake.try_send(());
            }
            Ok(())
        }))?;
        Ok(Checkpointer { thread: Some(thread) })
    }

    /// Unhooks the writer `conn` (which drops the thread's wake-up sender) and waits for the
    /// thread to finish its checkpoint and close its connection.
    pub(crate) fn stop(&mut self, conn: &mut Connection) {
        let _ = conn.wal_hook(None::<Hook>);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
