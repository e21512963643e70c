//! Version vectors and their live notifications.
//!
//! Owns: [`PeerCursors`] (origin -> next index; absent = 0), [`CursorsEvent`],
//! [`CursorStream`], and [`CursorBroadcast`], the one implementation of `watch_cursors`
//! that replicas share.
//!
//! Invariants: cursors only move forward ([`PeerCursors::advance`] and
//! [`PeerCursors::merge`] take the pointwise max). Events carry cursor *state*, not entries:
//! a watcher that misses or merges events loses nothing, because every event it does see
//! says where the replica is, and the final state is always delivered.
//!
//! Never: blocks a writer on a slow watcher.

use std::collections::BTreeMap;
use std::pin::Pin;

use futures::Stream;
use tokio::sync::watch;

use crate::ids::PeerId;

/// Per-origin positions: origin -> the next entry index (the number of entries held).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCursors(BTreeMap<PeerId, u64>);

impl PeerCursors {
    /// No entries of any origin.
    pub fn new() -> Self {
        PeerCursors(BTreeMap::new())
    }

    /// The next index for `origin` (0 when absent).
    pub fn get(&self, origin: &PeerId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Moves `origin` to `next` if that is forward; returns whether it moved.
    pub fn advance(&mut self, origin: PeerId, next: u64) -> bool {
        let cur = self.0.entry(origin).or_insert(0);
        if next > *cur {
            *cur = next;
            true
        } else {
            false
        }
    }

    /// Pointwise max with `other`.
    pub fn merge(&mut self, other: &PeerCursors) {
        for (origin, next) in &other.0 {
            self.advance(*origin, *next);
        }
    }

    /// Origins where `self` is ahead of `behind`, with the range `behind` lacks:
    /// `(origin, from, to)` meaning entries `from..to`.
    pub fn ahead_of(&self, behind: &PeerCursors) -> Vec<(PeerId, u64, u64)> {
        self.0
            .iter()
            .filter_map(|(origin, &to)| {
                let from = behind.get(origin);
                (to > from).then_some((*origin, from, to))
            })
            .collect()
    }

    /// The origins that moved forward between `older` and `self`, at their new positions.
    pub fn advanced_since(&self, older: &PeerCursors) -> PeerCursors {
        PeerCursors(
            self.0
                .iter()
                .filter(|(origin, next)| **next > older.get(origin))
                .map(|(o, n)| (*o, *n))
                .collect(),
        )
    }

    /// Iterates `(origin, next)` in origin order (absent origins are not listed).
    pub fn iter(&self) -> impl Iterator<Item = (PeerId, u64)> + '_ {
        self.0.iter().map(|(o, n)| (*o, *n))
    }

    /// How many origins are listed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no origin is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The total number of entries held, over all origins.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

impl FromIterator<(PeerId, u64)> for PeerCursors {
    fn from_iter<T: IntoIterator<Item = (PeerId, u64)>>(iter: T) -> Self {
        let mut c = PeerCursors::new();
        for (o, n) in iter {
            c.advance(o, n);
        }
        c
    }
}

/// A notification about a replica's cursors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorsEvent {
    /// The full cursors; always the first event of a stream.
    Snapshot(PeerCursors),
    /// The origins that advanced since the previous event, at their new positions.
    Advanced(PeerCursors),
}

/// A stream of cursor events: a `Snapshot`, then `Advanced` deltas. It ends when the
/// replica is closed or the connection to it is lost.
pub type CursorStream = Pin<Box<dyn Stream<Item = CursorsEvent> + Send>>;

/// Publishes a replica's cursors to any number of watchers.
///
/// Built on a `tokio::sync::watch` channel, which holds only the latest state: publishing
/// never waits for watchers, and a watcher that falls behind skips to the newest state (as
/// one `Advanced` event covering every origin that moved).
#[derive(Debug)]
pub struct CursorBroadcast {
    tx: watch::Sender<PeerCursors>,
}

impl CursorBroadcast {
    /// A broadcast starting at `initial`.
    pub fn new(initial: PeerCursors) -> Self {
        CursorBroadcast { tx: watch::Sender::new(initial) }
    }

    /// Moves cursors forward to include `advanced`; notifies watchers if anything moved.
    pub fn publish(&self, advanced: &PeerCursors) {
        self.tx.send_if_modified(|cur| {
            let before = cur.clone();
            cur.merge(advanced);
            *cur != before
        });
    }

    /// The current cursors.
    pub fn current(&self) -> PeerCursors {
        self.tx.borrow().clone()
    }

    /// A new watcher: `Snapshot` of the current state, then `Advanced` deltas.
    pub fn subscribe(&self) -> CursorStream {
        let rx = self.tx.subscribe();
        Box::pin(futures::stream::unfold((rx, None::<PeerCursors>), |(mut rx, last)| async move {
            match last {
                None => {
                    let snap = rx.borrow_and_update().clone();
                    Some((CursorsEvent::Snapshot(snap.clone()), (rx, Some(snap))))
                }
                Some(last) => loop {
                    rx.changed().await.ok()?;
                    let now = rx.borrow_and_update().clone();
                    let delta = now.advanced_since(&last);
                    if !delta.is_empty() {
                        return Some((CursorsEvent::Advanced(delta), (rx, Some(now))));
                    }
                },
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use proptest::prelude::*;

    fn p(n: u8) -> PeerId {
        PeerId::from_bytes([n; 16])
    }

    proptest! {
        #[test]
        fn merge_is_a_pointwise_max_and_a_semilattice(
            a in proptest::collection::vec((0u8..6, 0u64..50), 0..8),
            b in proptest::collection::vec((0u8..6, 0u64..50), 0..8),
        ) {
            let a: PeerCursors = a.into_iter().map(|(o, n)| (p(o), n)).collect();
            let b: PeerCursors = b.into_iter().map(|(o, n)| (p(o), n)).collect();
            let mut ab = a.clone();
            ab.merge(&b);
            let mut ba = b.clone();
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);
            for o in 0..6 {
                prop_assert_eq!(ab.get(&p(o)), a.get(&p(o)).max(b.get(&p(o))));
            }
            prop_assert!(ab.ahead_of(&a).iter().all(|(o, from, to)| *from == a.get(o) && *to == b.get(o)));
            prop_assert!(a.ahead_of(&ab).is_empty());
        }
    }

    #[tokio::test]
    async fn a_slow_watcher_sees_the_final_state() {
        let b = CursorBroadcast::new(PeerCursors::new());
        let mut s = b.subscribe();
        assert_eq!(s.next().await, Some(CursorsEvent::Snapshot(PeerCursors::new())));
        for i in 1..=1000u64 {
            b.publish(&[(p(1), i), (p(2), i / 2)].into_iter().collect());
        }
        let Some(CursorsEvent::Advanced(delta)) = s.next().await else {
            panic!("expected Advanced")
        };
        assert_eq!(delta.get(&p(1)), 1000);
        assert_eq!(delta.get(&p(2)), 500);
        drop(b);
        assert_eq!(s.next().await, None, "the stream ends with the broadcast");
    }
}
