//! Convergence drivers: move entries from any [`LogSource`] into any [`LogProcessor`].
//!
//! Owns: [`pull`] (one-shot: every origin where the source is ahead, in bounded batches),
//! [`pull_continuous`] (driven by the source's `watch_cursors`), and [`publish`] (a
//! device's own entries into its [`FileLogSink`]). *Push* is `pull` with the roles swapped.
//!
//! Invariants: the cursor diff against the durable state is the truth; events are only a
//! hint to look again. A problem with one origin's entries (rejected, too new, clock skew)
//! stalls that origin and is reported; the other origins keep syncing. A failure of the
//! source or processor as a whole ends the pass with an error.
//!
//! Never: holds more than two pages of one origin in memory (the one being applied and the
//! one being read ahead), whatever the log's length.

use futures::{FutureExt, StreamExt};

use crate::cursors::PeerCursors;
use crate::entry::{ChainPosition, Entry, check_seal};
use crate::error::SyncError;
use crate::ids::{PeerId, WorkspaceId};
use crate::ingest::Ingest;
use crate::sync::{FileLogSink, LogPosition, LogProcessor, LogSource};

/// What one pass of [`pull`] did.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Entries applied.
    pub new: u64,
    /// Entries the processor already had.
    pub duplicates: u64,
    /// Origins that could not advance, with why. Each stops at its first problem.
    pub stalled: Vec<(PeerId, SyncError)>,
}

/// Copies to `target` every entry `source` has and `target` lacks, origin by origin, in
/// bounded batches. While one batch is applied the next is read.
pub async fn pull<E>(
    source: &dyn LogSource<E>,
    target: &dyn LogProcessor<E>,
) -> Result<PullReport, SyncError>
where
    E: LogPosition + Send + 'static,
{
    let have = source.cursors().await?;
    let mut report = PullReport::default();
    let mut targets = target.cursors().await?;
    let first = target.pull_first();
    let mut order = have.ahead_of(&targets);
    // Stable: the named origins first, the rest in id order.
    order.sort_by_key(|(origin, _, _)| !first.contains(origin));
    for (origin, _, to) in order {
        // Another writer may have advanced the target meanwhile; re-reading is cheap.
        let from = targets.get(&origin);
        match pull_origin(source, target, origin, from, to).await {
            Ok((new, dup, next)) => {
                report.new += new;
                report.duplicates += dup;
                targets.advance(origin, next);
            }
            Err(e) if e.stalls_origin() => {
                tracing::warn!(%origin, error = %e, "origin stalled");
                report.stalled.push((origin, e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

async fn pull_origin<E>(
    source: &dyn LogSource<E>,
    target: &dyn LogProcessor<E>,
    origin: PeerId,
    mut from: u64,
    to: u64,
) -> Result<(u64, u64, u64), SyncError>
where
    E: LogPosition + Send + 'static,
{
    let (mut new, mut dup) = (0, 0);
    let mut page = source.read_since(origin, from).await?;
    while from < to {
        let Some(last) = page.last() else { break };
        let expected_next = last.index() + 1;
        // Read ahead from where this page ends while it is being applied.
        let (applied, ahead) = futures::join!(target.apply_batch(origin, page), async {
            if expected_next < to {
                Some(source.read_since(origin, expected_next).await)
            } else {
                None
            }
        });
        let applied = applied?;
        new += applied.new;
        dup += applied.duplicates;
        if applied.next <= from {
            return Err(SyncError::Rejected {
                origin,
                index: from,
                reason: crate::error::RejectReason::UnsealedRunTooLong,
            });
        }
        from = applied.next;
        page = match ahead {
            Some(read) if from == expected_next => read?,
            Some(_) | None if from < to => source.read_since(origin, from).await?,
            _ => Vec::new(),
        };
    }
    Ok((new, dup, from))
}

/// Pulls whenever `source` reports new cursors, until its cursor stream ends. Each event
/// triggers a full cursor diff, and events that queued up meanwhile are merged into one pass.
/// `on_pass` sees every pass's report (stalled origins are retried on the next event).
pub async fn pull_continuous<E>(
    source: &dyn LogSource<E>,
    target: &dyn LogProcessor<E>,
    mut on_pass: impl FnMut(PullReport) + Send,
) -> Result<(), SyncError>
where
    E: LogPosition + Send + 'static,
{
    let mut events = source.watch_cursors();
    while events.next().await.is_some() {
        // Coalesce: whatever else is already queued is covered by this pass's diff.
        while let Some(Some(_)) = events.next().now_or_never() {}
        on_pass(pull(source, target).await?);
    }
    Ok(())
}

/// Publishes `own`'s entries that `sink` lacks: reads the sink's origin from `source`
/// starting at `sink.published()` and hands them over page by page. Returns how many were
/// published.
pub async fn publish(
    source: &dyn LogSource<Entry>,
    sink: &mut dyn FileLogSink,
) -> Result<u64, SyncError> {
    let origin = sink.origin();
    check_own_log(source, &*sink).await?;
    let mut published = 0;
    loop {
        let from = sink.published();
        let have: PeerCursors = source.cursors().await?;
        if have.get(&origin) <= from {
            return Ok(published);
        }
        let page = source.read_since(origin, from).await?;
        if page.is_empty() {
            return Ok(published);
        }
        sink.publish(&page)?;
        published += page.len() as u64;
    }
}

/// Checks that `source`'s log of the sink's origin continues what the sink already holds, so
/// that a device never publishes (or silently skips publishing) a log that diverged from the
/// one it published before: the signature of the local log's entry at the sink's tip, or of
/// the first local run past it, must hold over the sink's chain. A mismatch is
/// [`SyncError::Forked`]: a copied device, or a restored backup that had written. (When the
/// sink is ahead of the source, the source takes its own entries back by pulling, where the
/// ingest pipeline makes the same check.)
pub async fn check_own_log(
    source: &dyn LogSource<Entry>,
    sink: &dyn FileLogSink,
) -> Result<(), SyncError> {
    let origin = sink.origin();
    let at = sink.position();
    if at.next == 0 {
        return Ok(());
    }
    let have = source.cursors().await?.get(&origin);
    if have < at.next {
        return Ok(());
    }
    let page = source.read_since(origin, at.next - 1).await?;
    own_log_continues(&sink.workspace(), &origin, at, page).map_err(|index| SyncError::Forked {
        origin,
        index,
        source_name: sink.describe(),
    })
}

/// The decision of [`check_own_log`] on a page of the local log that starts at `at.next - 1`
/// (the entry at the other store's tip) when the local log holds at least `at.next` entries:
/// `Err(index)` if the local log does not continue the chain `at`. Stores that read their
/// logs synchronously call it directly.
pub fn own_log_continues(
    workspace: &WorkspaceId,
    origin: &PeerId,
    at: ChainPosition,
    page: Vec<Entry>,
) -> Result<(), u64> {
    let tip = at.next.saturating_sub(1);
    let Some(first) = page.first() else { return Err(tip) };
    if first.index != tip {
        return Err(tip);
    }
    if page.len() == 1 {
        // The local tip is the other store's tip: the local log sealed it (a log is handed
        // out sealed) over its own chain, which must be the other's.
        return match first.seal {
            Some(seal) if check_seal(workspace, origin, at.next, &at.chain, &seal).is_ok() => {
                Ok(())
            }
            _ => Err(tip),
        };
    }
    // The local log is ahead: its next run must continue the chain. Its own stamps are not
    // judged here (a clock set back since must not stop a publication).
    let verifier = Ingest::ignoring_skew(*workspace);
    let run = verifier.verify(*origin, at, page.into_iter().skip(1).collect());
    match run.stop() {
        Some(SyncError::Rejected { .. }) if run.entries().is_empty() => Err(tip),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::entry::{Domain, Op, Payload};
    use crate::hlc::Hlc;
    use crate::ids::{DeviceKey, WorkspaceId};
    use crate::memory::MemoryReplica;
    use crate::sync::HasCursors;

    fn payload(n: u64) -> Payload {
        Payload {
            hlc: Hlc::from_millis(1_000 + n),
            author: None,
            ops: vec![Op { domain: Domain::TABLES, kind: 1, body: n.to_le_bytes().to_vec() }],
        }
    }

    /// The continuous driver follows the source's cursor stream: every batch appended to
    /// the source while it runs reaches the target.
    #[tokio::test]
    async fn continuous_pull_follows_the_source() {
        let key = DeviceKey::from_secret_bytes(&[5; 32]);
        let ws = WorkspaceId::derive(&key.public_key(), &[0; 16]);
        let source = Arc::new(MemoryReplica::new(ws, Some(key)));
        let target = Arc::new(MemoryReplica::new(ws, None));
        let passes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let driver = {
            let (source, target, passes) = (source.clone(), target.clone(), passes.clone());
            tokio::spawn(async move {
                pull_continuous(source.as_ref(), target.as_ref(), |report| {
                    assert!(report.stalled.is_empty(), "{:?}", report.stalled);
                    passes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                })
                .await
            })
        };
        for n in 0..20 {
            source.append_local(vec![payload(n)]).unwrap();
            if n % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let want = source.cursors().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while target.cursors().await.unwrap() != want {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the target catches up while the driver runs");
        assert_eq!(target.contents(), source.contents());
        assert!(passes.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        driver.abort();
    }
}
