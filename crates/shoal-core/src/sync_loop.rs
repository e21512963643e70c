//! The sync loop: when to run a sync pass against one target (a folder now, a relay later),
//! whatever the transport.
//!
//! Owns: [`run_sync_loop`] — run a pass at start; then again after a local commit of this
//! device's own origin (debounced, so a burst becomes one pass), after the target reports
//! other origins' progress, when the target asks for a retry, and every poll interval
//! regardless; after a failed pass, back off exponentially (listening to nothing but the
//! deadline), jittered. [`SyncTarget`] is what a transport provides; [`LoopTiming`] the
//! intervals.
//!
//! Invariants: events only decide *when* to look; every pass diffs cursors against the
//! durable state, so a dropped or merged event costs latency, never data. A failure of one
//! pass is retried; only a misuse of the API or a bug ends the loop.
//!
//! Never: moves entries itself (the target's pass does), or holds locks across waits.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};

use crate::cursors::{CursorStream, CursorsEvent};
use crate::error::SyncError;
use crate::ids::PeerId;
use crate::sync::HasCursors;

/// Which way a sync moves entries, with any target (a folder, a relay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    /// Both ways.
    #[default]
    Both,
    /// Only from the target into this device: a read-only mirror or backup, which never
    /// publishes or pushes.
    PullOnly,
    /// Only from this device to the target.
    PushOnly,
}

impl Direction {
    /// Whether entries are taken in.
    pub fn pulls(self) -> bool {
        self != Direction::PushOnly
    }

    /// Whether entries are sent out.
    pub fn pushes(self) -> bool {
        self != Direction::PullOnly
    }
}

/// The intervals of a sync loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopTiming {
    /// A pass runs at least this often, events or not.
    pub poll_interval: Duration,
    /// A local commit waits this long for more before its pass runs.
    pub debounce: Duration,
    /// The first wait after a failed pass; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    /// The longest wait after failed passes.
    pub retry_max: Duration,
}

impl LoopTiming {
    /// The wait before retrying after `failures` failed passes in a row (at least 1).
    pub fn backoff(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(20);
        self.retry_initial.saturating_mul(1 << shift).min(self.retry_max)
    }
}

/// Scales `wait` by a random factor in [0.5, 1), so that devices cut off together (a relay
/// restart) do not all come back in the same instant. Without randomness, the full wait.
pub fn jittered(wait: Duration) -> Duration {
    match crate::ids::random_bytes::<2>() {
        Ok(r) => wait.mul_f64(0.5 + f64::from(u16::from_le_bytes(r)) / 131_072.0),
        Err(_) => wait,
    }
}

/// What a transport provides to the sync loop.
#[async_trait]
pub trait SyncTarget: Send + Sync {
    /// One pass: publish or push this device's new entries, pull everyone else's.
    async fn pass(&self) -> Result<(), SyncError>;

    /// The target's cursor events (a folder's scans, a relay's announcements).
    fn target_events(&self) -> CursorStream;

    /// When the target wants another pass regardless of events (a file due for a retry).
    fn next_retry(&self) -> Option<Instant> {
        None
    }
}

/// Runs passes against `target` for the device `own` whose replica is `local` (see the
/// module doc) until `shutdown` completes or the local replica's events end.
pub async fn run_sync_loop(
    own: PeerId,
    local: &dyn HasCursors,
    target: &dyn SyncTarget,
    timing: LoopTiming,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SyncError> {
    let mut local_events = local.watch_cursors();
    let mut target_events = target.target_events();
    let mut target_live = true;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut failures = 0u32;
    loop {
        let backoff = match target.pass().await {
            Ok(()) => {
                failures = 0;
                None
            }
            Err(e @ (SyncError::Misuse(_) | SyncError::Bug(_))) => return Err(e),
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, failures, "sync pass failed; retrying");
                Some(jittered(timing.backoff(failures)))
            }
        };
        let now = Instant::now();
        let mut deadline = now + timing.poll_interval;
        if let Some(b) = backoff {
            deadline = deadline.min(now + b);
        }
        if let Some(retry) = target.next_retry() {
            deadline = deadline.min(retry.max(now));
        }
        // While backing off, only the deadline (or shutdown) ends the wait.
        let listening = backoff.is_none();
        let local_commit = loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep_until(deadline.into()) => break false,
                event = local_events.next(), if listening => match event {
                    Some(e) if wakes(&e, own, Side::Local) => break true,
                    Some(_) => {}
                    None => return Ok(()),
                },
                event = target_events.next(), if listening && target_live => match event {
                    Some(e) if wakes(&e, own, Side::Target) => break false,
                    Some(_) => {}
                    None => target_live = false,
                },
            }
        };
        // Debounce local commits: let the burst finish, so one pass covers all of it.
        // Target events are the transport's to debounce, and timers need none.
        if local_commit {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(timing.debounce) => {}
            }
        }
        while let Some(Some(_)) = local_events.next().now_or_never() {}
        while let Some(Some(_)) = target_events.next().now_or_never() {}
    }
}

#[derive(Clone, Copy)]
enum Side {
    Local,
    Target,
}

/// Whether a cursor event calls for a pass: locally, only the device's own commits
/// (entries pulled in need no publishing); at the target, only other origins (our own
/// publications need no pulling).
fn wakes(event: &CursorsEvent, own: PeerId, side: Side) -> bool {
    match (event, side) {
        (CursorsEvent::Snapshot(_), _) => true,
        (CursorsEvent::Advanced(c), Side::Local) => c.get(&own) > 0,
        (CursorsEvent::Advanced(c), Side::Target) => c.iter().any(|(o, _)| o != own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t = LoopTiming {
            poll_interval: Duration::from_secs(2),
            debounce: Duration::from_millis(50),
            retry_initial: Duration::from_millis(250),
            retry_max: Duration::from_secs(30),
        };
        let waits: Vec<u128> = (1..=9).map(|f| t.backoff(f).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(t.backoff(u32::MAX), Duration::from_secs(30));
    }

    /// A target whose first pass fails: the loop retries after the backoff, runs a pass
    /// after each local commit, and ends on shutdown.
    #[tokio::test]
    async fn failed_passes_are_retried_and_local_commits_wake_a_pass() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        use crate::cursors::CursorBroadcast;
        use crate::entry::{Domain, Op, Payload};
        use crate::hlc::Hlc;
        use crate::ids::{DeviceKey, WorkspaceId};
        use crate::memory::MemoryReplica;

        struct Flaky {
            passes: AtomicU32,
            events: CursorBroadcast,
        }
        #[async_trait]
        impl SyncTarget for Flaky {
            async fn pass(&self) -> Result<(), SyncError> {
                if self.passes.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(SyncError::Unavailable { what: "t".into(), reason: "down".into() });
                }
                Ok(())
            }
            fn target_events(&self) -> CursorStream {
                self.events.subscribe()
            }
        }
        let key = DeviceKey::from_secret_bytes(&[4; 32]);
        let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
        let own = key.peer_id(&ws);
        let local = Arc::new(MemoryReplica::new(ws, Some(key)));
        let target = Arc::new(Flaky {
            passes: AtomicU32::new(0),
            events: CursorBroadcast::new(crate::cursors::PeerCursors::new()),
        });
        let timing = LoopTiming {
            poll_interval: Duration::from_secs(60),
            debounce: Duration::from_millis(1),
            retry_initial: Duration::from_millis(5),
            retry_max: Duration::from_millis(5),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = {
            let (local, target) = (local.clone(), target.clone());
            tokio::spawn(async move {
                run_sync_loop(own, &*local, &*target, timing, async {
                    let _ = stopped.await;
                })
                .await
            })
        };
        let wait_for = |n: u32| {
            let target = target.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while target.passes.load(Ordering::SeqCst) < n {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                })
                .await
                .expect("the pass ran")
            }
        };
        wait_for(2).await; // the failed first pass, then its retry
        let op = Op { domain: Domain::TABLES, kind: 1, body: vec![1] };
        local
            .append_local(vec![Payload { hlc: Hlc::from_millis(1), author: None, ops: vec![op] }])
            .unwrap();
        wait_for(3).await; // the local commit woke a pass, long before the poll interval
        let _ = stop.send(());
        run.await.unwrap().unwrap();
    }

    #[test]
    fn only_own_commits_and_others_progress_wake_a_pass() {
        let own = PeerId::from_bytes([1; 16]);
        let other = PeerId::from_bytes([2; 16]);
        let ev = |o: PeerId| CursorsEvent::Advanced([(o, 3)].into_iter().collect());
        assert!(wakes(&ev(own), own, Side::Local));
        assert!(!wakes(&ev(other), own, Side::Local), "pulled entries need no publishing");
        assert!(wakes(&ev(other), own, Side::Target));
        assert!(!wakes(&ev(own), own, Side::Target), "our own publication needs no pull");
    }
}
