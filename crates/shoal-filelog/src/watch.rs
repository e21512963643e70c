//! File-system events for a shared folder, as wake-ups.
//!
//! Owns: one `notify` watcher on the workspace directory (recursively), or on the shared
//! folder itself until the workspace directory exists, and its re-arming when the watched
//! directory is removed, replaced or the watcher reports an error.
//!
//! Invariants: events are only hints. Each relevant event pokes a [`tokio::sync::Notify`]
//! (which keeps one permit, so bursts coalesce and nothing is lost while the consumer is
//! busy); the consumer rescans the folder, which is the truth. Reads (open / close
//! without writing) are ignored: the rescan itself reads files and must not wake itself.
//!
//! Never: decides anything from an event's contents beyond "look again".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;

use crate::layout::Layout;

/// A live watch on one directory.
pub(crate) struct FsWatch {
    _watcher: RecommendedWatcher,
    target: PathBuf,
    identity: Option<u64>,
    broken: Arc<AtomicBool>,
}

impl std::fmt::Debug for FsWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsWatch").field("target", &self.target).finish_non_exhaustive()
    }
}

fn identity(path: &Path) -> Option<u64> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        Some(std::os::unix::fs::MetadataExt::ino(&meta))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some(0)
    }
}

/// Keeps `current` if it still watches the right directory, otherwise replaces it with a
/// new watch (or none, when the folder is missing or watching fails — polling covers that).
pub(crate) fn rearm(
    current: Option<FsWatch>,
    layout: &Layout,
    wake: &Arc<Notify>,
) -> Option<FsWatch> {
    let ws_dir = layout.workspace_dir();
    let (target, mode) = if ws_dir.is_dir() {
        (ws_dir, RecursiveMode::Recursive)
    } else if layout.root().is_dir() {
        (layout.root().to_path_buf(), RecursiveMode::NonRecursive)
    } else {
        return None;
    };
    let id = identity(&target);
    if let Some(w) = current
        && w.target == target
        && w.identity == id
        && !w.broken.load(Ordering::Relaxed)
    {
        return Some(w);
    }
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let watched = target.clone();
    let poke = wake.clone();
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            let read_only = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Open(_) | AccessKind::Read)
                    | EventKind::Access(AccessKind::Close(AccessMode::Read))
            );
            if read_only {
                return;
            }
            if matches!(ev.kind, EventKind::Remove(_)) && ev.paths.contains(&watched) {
                flag.store(true, Ordering::Relaxed);
            }
            poke.notify_one();
        }
        Err(_) => {
            flag.store(true, Ordering::Relaxed);
            poke.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "file-system events unavailable; polling only");
            return None;
        }
    };
    if let Err(e) = watcher.watch(&target, mode) {
        tracing::debug!(path = %target.display(), error = %e, "cannot watch; polling only");
        return None;
    }
    // Anything that happened before the watch started is found by the rescan that follows.
    wake.notify_one();
    Some(FsWatch { _watcher: watcher, target, identity: id, broken })
}
