//! The one ingest pipeline: how a replica takes entries it did not write (DESIGN §4).
//!
//! Owns: [`Ingest`] (the checks, in order), [`VerifiedRun`] (the only value a replica's
//! apply accepts; nothing outside this module can build one), and the [`Membership`] hook.
//!
//! For a run of one origin's entries against the receiver's position, in order:
//! 1. **duplicates**: leading entries below the receiver's cursor are counted and dropped;
//! 2. **origin and gaps**: every further entry must be of this origin, at the next index;
//! 3. **clock skew**: an entry whose last op is stamped more than
//!    [`crate::MAX_FORWARD_SKEW_MS`] ahead of the local wall clock stops the run;
//! 4. **control checks** ([`crate::control::check_entry`]): a forged or misplaced genesis
//!    stops the run;
//! 5. **chain links** through every entry's hash, and at most [`MAX_SEAL_GAP`] entries
//!    between seals;
//! 6. **seals**: one signature check for the whole run when it is honest — the last seal
//!    authenticates everything before it. Only when it fails are earlier seals checked, to
//!    keep the longest authentic prefix;
//! 7. **membership** ([`Membership`]): entries the hook does not admit are still accepted
//!    (stored and forwarded) but *held*: the replica does not apply them.
//!
//! **Superseded entries.** A replica that knows a successor of the origin
//! ([`crate::control::ControlOp::Successor`]) passes its cut to [`Ingest::verify_with`]:
//! entries at or after the cut skip step 3 (their stamps no longer matter: they will never
//! be applied, and a clock that ran ahead is the usual reason for a successor) and are
//! accepted as *superseded* ([`VerifiedRun::superseded_from`]): stored and forwarded, never
//! applied. Everything else (chain, seals) is checked as for any entry.
//!
//! Unknown domains and op kinds are not judged here: they are authentic entries, stored and
//! forwarded, and applying them stalls their origin with "needs upgrade".
//!
//! Invariants: a [`VerifiedRun`] holds only entries that continue the receiver's chain
//! from [`VerifiedRun::start`] and end on a valid seal; its [`VerifiedRun::stop`] says why
//! the rest of the input was not accepted. Verification touches no storage, so replicas run
//! it outside their write lock and check, once they hold it, that their position is still
//! [`VerifiedRun::start`].
//!
//! Never: applies anything, or accepts an entry not covered by a valid seal.

use std::fmt;
use std::sync::Arc;

use crate::control;
use crate::entry::{ChainHash, ChainPosition, Entry, EntryBody, MAX_SEAL_GAP, Seal, check_seal};
use crate::error::{RejectReason, SyncError};
use crate::hlc::{SystemClock, WallClock, check_skew};
use crate::ids::{PeerId, PublicKey, WorkspaceId};

/// Decides whether an authentic entry may be applied. Entries it refuses are stored and
/// forwarded but held (not applied), with the reason shown in status.
pub trait Membership: Send + Sync + fmt::Debug {
    /// `Ok` if entry `index` of `origin` may be applied; otherwise why not.
    fn admit(&self, origin: &PeerId, index: u64, body: &EntryBody) -> Result<(), String>;
}

/// Admits every authentic entry (until membership is enforced by the security work).
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenMembership;

impl Membership for OpenMembership {
    fn admit(&self, _origin: &PeerId, _index: u64, _body: &EntryBody) -> Result<(), String> {
        Ok(())
    }
}

/// The ingest pipeline of one workspace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingest {
    workspace: WorkspaceId,
    clock: Arc<dyn WallClock>,
    membership: Arc<dyn Membership>,
    /// The receiving device's own origin, whose entries' stamps are not judged.
    own: Option<PeerId>,
}

/// Entries of one origin that passed the pipeline: authentic, contiguous from
/// [`VerifiedRun::start`], ending on a valid seal. Built only by [`Ingest::verify`].
#[derive(Debug)]
pub struct VerifiedRun {
    origin: PeerId,
    start: ChainPosition,
    duplicates: u64,
    entries: Vec<Entry>,
    end: ChainPosition,
    key: Option<PublicKey>,
    held: Option<(u64, String)>,
    superseded: Option<u64>,
    stop: Option<SyncError>,
}

impl VerifiedRun {
    /// The origin.
    pub fn origin(&self) -> PeerId {
        self.origin
    }

    /// The receiver position the run was verified against.
    pub fn start(&self) -> ChainPosition {
        self.start
    }

    /// The position after the accepted entries.
    pub fn end(&self) -> ChainPosition {
        self.end
    }

    /// Leading entries the receiver already had.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The accepted entries, in order, starting at `start().next`.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The origin's public key, from the run's seals.
    pub fn key(&self) -> Option<PublicKey> {
        self.key
    }

    /// The first accepted entry that must not be applied (the membership hook refused it),
    /// and why. It and every later entry of the origin are stored but held.
    pub fn held(&self) -> Option<(u64, &str)> {
        self.held.as_ref().map(|(i, r)| (*i, r.as_str()))
    }

    /// The cut the run was verified with: entries at or after it are superseded (stored and
    /// forwarded, never applied; their clock skew was not judged).
    pub fn superseded_from(&self) -> Option<u64> {
        self.superseded
    }

    /// Why the rest of the input was not accepted, if it was not.
    pub fn stop(&self) -> Option<&SyncError> {
        self.stop.as_ref()
    }

    /// The accepted entries, to verify them again (when the receiver moved meanwhile).
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// Takes the stop reason out (to return it after applying the accepted part).
    pub fn take_stop(&mut self) -> Option<SyncError> {
        self.stop.take()
    }
}

impl Ingest {
    /// The pipeline of `workspace`, with the system clock and open membership.
    pub fn new(workspace: WorkspaceId) -> Self {
        Ingest {
            workspace,
            clock: Arc::new(SystemClock),
            membership: Arc::new(OpenMembership),
            own: None,
        }
    }

    /// The pipeline for entries whose stamps are not to be judged against today's clock:
    /// a log re-verified where it is stored (they passed the skew check when they arrived),
    /// or a device's own entries on their way out (a clock set back since must not stop a
    /// publication; receivers judge the skew).
    pub fn ignoring_skew(workspace: WorkspaceId) -> Self {
        Ingest::new(workspace)
            .with_clock(Arc::new(crate::hlc::ManualClock::new(crate::hlc::Hlc::MAX_MILLIS)))
    }

    /// The same pipeline reading another wall clock (tests inject one).
    pub fn with_clock(mut self, clock: Arc<dyn WallClock>) -> Self {
        self.clock = clock;
        self
    }

    /// The same pipeline on the device of origin `own`: its own entries (taken back from a
    /// folder after a backup was restored) are not judged for clock skew. Its own clock
    /// stamped them and its key signed them, so nobody else can push a stamp in through
    /// them; judging them against a clock set back since would stall the device's own log
    /// and let it write over entries the folder holds (found by `shoal-sim`).
    pub fn with_own_origin(mut self, own: PeerId) -> Self {
        self.own = Some(own);
        self
    }

    /// The same pipeline with a membership hook.
    pub fn with_membership(mut self, membership: Arc<dyn Membership>) -> Self {
        self.membership = membership;
        self
    }

    /// The workspace.
    pub fn workspace(&self) -> WorkspaceId {
        self.workspace
    }

    /// Runs the pipeline (see the module doc) over `entries` of `origin`, ascending, against
    /// the receiver's `position`.
    pub fn verify(
        &self,
        origin: PeerId,
        position: ChainPosition,
        entries: Vec<Entry>,
    ) -> VerifiedRun {
        self.verify_with(origin, position, entries, None)
    }

    /// [`Ingest::verify`] for an origin whose entries from `superseded_from` on are
    /// superseded by a successor (see the module doc).
    pub fn verify_with(
        &self,
        origin: PeerId,
        position: ChainPosition,
        mut entries: Vec<Entry>,
        superseded_from: Option<u64>,
    ) -> VerifiedRun {
        let wall = self.clock.now_millis();
        let duplicates =
            entries.iter().take_while(|e| e.origin == origin && e.index < position.next).count();
        let mut stop = None;
        // Seals seen: (entries up to and including it, position after it, the seal).
        let mut seals: Vec<(usize, ChainPosition, Seal)> = Vec::new();
        let mut chain = position.chain;
        for (i, e) in entries[duplicates..].iter().enumerate() {
            let expected = position.next + i as u64;
            // A superseded entry's stamp is not judged (it will never be applied), nor one of
            // the device's own (see `with_own_origin`).
            let wall =
                if superseded_from.is_some_and(|cut| expected >= cut) || self.own == Some(origin) {
                    u64::MAX
                } else {
                    wall
                };
            if let Err(reason) = self.check_entry(origin, expected, wall, e) {
                stop = Some(reason);
                break;
            }
            chain = chain.link(&e.hash());
            if let Some(seal) = e.seal {
                seals.push((i + 1, ChainPosition { next: expected + 1, chain }, seal));
            } else if (i + 1 - seals.last().map_or(0, |s| s.0)) as u64 >= MAX_SEAL_GAP {
                stop = Some(SyncError::Rejected {
                    origin,
                    index: e.index,
                    reason: RejectReason::UnsealedRunTooLong,
                });
                break;
            }
        }

        let (accepted, end) = self.authenticate(origin, position, &seals, &mut stop);
        let key = seals.first().map(|s| s.2.key);
        if accepted == 0 && duplicates == 0 && stop.is_none() && !entries.is_empty() {
            stop = Some(SyncError::Rejected {
                origin,
                index: position.next,
                reason: RejectReason::NoSignedHead,
            });
        }
        entries.truncate(duplicates + accepted);
        entries.drain(..duplicates);
        // Keep only the seals that were verified: the last, and block ends. Any other seal
        // came from whoever sent the run and was never checked (one signature covers the
        // run), so storing it would let a relay plant a bad seal for the next receiver.
        let last = entries.len().saturating_sub(1);
        for (i, e) in entries.iter_mut().enumerate() {
            if i != last && !(e.index + 1).is_multiple_of(MAX_SEAL_GAP) {
                e.seal = None;
            }
        }
        let held = entries.iter().find_map(|e| {
            self.membership.admit(&origin, e.index, &e.body).err().map(|why| (e.index, why))
        });
        VerifiedRun {
            origin,
            start: position,
            duplicates: duplicates as u64,
            entries,
            end,
            key,
            held,
            superseded: superseded_from,
            stop,
        }
    }

    /// Steps 2–4 of the pipeline for one entry expected at `next`.
    fn check_entry(
        &self,
        origin: PeerId,
        next: u64,
        wall: u64,
        e: &Entry,
    ) -> Result<(), SyncError> {
        if e.origin != origin {
            return Err(SyncError::Rejected {
                origin,
                index: e.index,
                reason: RejectReason::WrongOrigin,
            });
        }
        if e.index != next {
            return Err(SyncError::Gap { origin, expected: next, got: e.index });
        }
        if let Some(last) = e.body.last_hlc()
            && let Err(skew) = check_skew(last, wall)
        {
            return Err(SyncError::ClockSkew { origin, index: e.index, skew });
        }
        control::check_entry(&self.workspace, &origin, e.index, &e.body)
            .map_err(|reason| SyncError::Rejected { origin, index: e.index, reason })
    }

    /// Step 6: the longest prefix whose last seal is valid. One signature check when the
    /// last seal is valid; otherwise the seals from the first on, until one fails (which then
    /// becomes the stop reason).
    fn authenticate(
        &self,
        origin: PeerId,
        position: ChainPosition,
        seals: &[(usize, ChainPosition, Seal)],
        stop: &mut Option<SyncError>,
    ) -> (usize, ChainPosition) {
        let check = |&(_, at, seal): &(usize, ChainPosition, Seal)| {
            check_seal(&self.workspace, &origin, at.next, &at.chain, &seal)
        };
        let Some(last) = seals.last() else { return (0, position) };
        if check(last).is_ok() {
            // The entries up to `last` are authentic. The block-end seals among them are kept
            // (a stored log needs one at least every MAX_SEAL_GAP entries, for whoever pages
            // it next), so each is checked too: one signature per 1,024 entries. A bad one
            // cuts the run at the good seal before it, so nothing unverified is ever stored.
            let mut good = (0, position);
            for s in seals.iter().filter(|s| s.1.next.is_multiple_of(MAX_SEAL_GAP)) {
                if s.0 == last.0 {
                    break;
                }
                if let Err(reason) = check(s) {
                    *stop = Some(SyncError::Rejected { origin, index: s.1.next - 1, reason });
                    return good;
                }
                good = (s.0, s.1);
            }
            return (last.0, last.1);
        }
        let mut good = (0, position);
        for s in seals {
            match check(s) {
                Ok(()) => good = (s.0, s.1),
                Err(reason) => {
                    *stop = Some(SyncError::Rejected { origin, index: s.1.next - 1, reason });
                    break;
                }
            }
        }
        good
    }
}

/// Recomputes the chain through `entries` from `start` (contiguous indices of one origin),
/// without checking seals: for a file reader that checks one head at the end, and for
/// replicas that re-verify what they stored.
pub fn chain_through(start: ChainPosition, entries: &[Entry]) -> Result<ChainHash, (u64, u64)> {
    let mut chain = start.chain;
    for (i, e) in entries.iter().enumerate() {
        let expected = start.next + i as u64;
        if e.index != expected {
            return Err((expected, e.index));
        }
        chain = chain.link(&e.hash());
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Domain, EntryBody, Op, Payload, SignedHead};
    use crate::hlc::{Hlc, ManualClock};
    use crate::ids::DeviceKey;

    fn setup() -> (DeviceKey, WorkspaceId, PeerId, Ingest) {
        let key = DeviceKey::from_secret_bytes(&[3; 32]);
        let ws = WorkspaceId::from_bytes([9; 16]);
        let origin = key.peer_id(&ws);
        let ingest = Ingest::new(ws).with_clock(Arc::new(ManualClock::new(100_000_000)));
        (key, ws, origin, ingest)
    }

    fn log(key: &DeviceKey, ws: WorkspaceId, n: u64, seal_every: u64) -> Vec<Entry> {
        let origin = key.peer_id(&ws);
        let mut chain = ChainHash::seed(&ws, &origin);
        (0..n)
            .map(|index| {
                let payload = Payload {
                    hlc: Hlc::from_millis(10_000_000 + index),
                    author: None,
                    ops: vec![Op {
                        domain: Domain::TABLES,
                        kind: 1,
                        body: index.to_le_bytes().to_vec(),
                    }],
                };
                let mut e = Entry { origin, index, body: EntryBody::Live(payload), seal: None };
                chain = chain.link(&e.hash());
                if (index + 1) % seal_every == 0 || index + 1 == n {
                    e.seal = Some(SignedHead::sign(key, ws, index + 1, chain).seal);
                }
                e
            })
            .collect()
    }

    #[test]
    fn an_honest_run_verifies_and_duplicates_are_skipped() {
        let (key, ws, origin, ingest) = setup();
        let entries = log(&key, ws, 10, 4);
        let run = ingest.verify(origin, ChainPosition::start(&ws, &origin), entries.clone());
        assert!(run.stop().is_none());
        assert_eq!((run.duplicates(), run.entries().len(), run.end().next), (0, 10, 10));

        let mid = ingest.verify(origin, ChainPosition::start(&ws, &origin), entries[..4].to_vec());
        let run = ingest.verify(origin, mid.end(), entries);
        assert_eq!((run.duplicates(), run.entries().len(), run.end().next), (4, 6, 10));
    }

    #[test]
    fn an_unsealed_tail_is_not_accepted() {
        let (key, ws, origin, ingest) = setup();
        let entries = log(&key, ws, 10, 4);
        let run = ingest.verify(origin, ChainPosition::start(&ws, &origin), entries[..7].to_vec());
        assert!(run.stop().is_none());
        assert_eq!(run.entries().len(), 4);
        let run = ingest.verify(origin, run.end(), entries[4..7].to_vec());
        assert!(matches!(
            run.stop(),
            Some(SyncError::Rejected { reason: RejectReason::NoSignedHead, .. })
        ));
    }

    #[test]
    fn tampered_transplanted_and_forged_runs_are_rejected() {
        let (key, ws, origin, ingest) = setup();
        let start = ChainPosition::start(&ws, &origin);
        let entries = log(&key, ws, 8, 4);

        let mut tampered = entries.clone();
        if let EntryBody::Live(p) = &mut tampered[5].body {
            p.ops[0].body[0] ^= 1;
        }
        let run = ingest.verify(origin, start, tampered);
        assert_eq!(run.entries().len(), 4, "the run before the tampered entry stands");
        assert!(matches!(
            run.stop(),
            Some(SyncError::Rejected { index: 7, reason: RejectReason::BadSignature, .. })
        ));

        let other_ws = WorkspaceId::from_bytes([8; 16]);
        let run = Ingest::new(other_ws).verify(
            origin,
            ChainPosition::start(&other_ws, &origin),
            entries.clone(),
        );
        assert!(run.entries().is_empty());
        assert!(matches!(
            run.stop(),
            Some(SyncError::Rejected { reason: RejectReason::KeyNotOfOrigin, .. })
        ));

        let forger = DeviceKey::from_secret_bytes(&[4; 32]);
        let mut forged = entries.clone();
        forged[7].seal = Some(Seal { key: forger.public_key(), signature: [0; 64] });
        let run = ingest.verify(origin, start, forged);
        assert_eq!(run.entries().len(), 4);
        assert!(matches!(
            run.stop(),
            Some(SyncError::Rejected { index: 7, reason: RejectReason::KeyNotOfOrigin, .. })
        ));

        let run = ingest.verify(origin, start, entries[1..].to_vec());
        assert!(matches!(run.stop(), Some(SyncError::Gap { expected: 0, got: 1, .. })));

        let mut expunged = entries.clone();
        expunged[2] = expunged[2].expunged();
        assert_eq!(
            ingest.verify(origin, start, expunged).entries().len(),
            8,
            "expunged keep the chain"
        );
    }

    #[test]
    fn a_skewed_entry_stops_the_run_at_the_seal_before_it() {
        let (key, ws, origin, _) = setup();
        // Entries stamped 10^7 + i ms; the wall clock reads 10^7 + 5 ms - the skew limit.
        let clock = ManualClock::new(10_000_005 - crate::MAX_FORWARD_SKEW_MS);
        let ingest = Ingest::new(ws).with_clock(Arc::new(clock));
        let run = ingest.verify(origin, ChainPosition::start(&ws, &origin), log(&key, ws, 10, 2));
        assert_eq!(run.entries().len(), 6, "entries 0..=5 are within the limit, sealed at 5");
        assert!(matches!(run.stop(), Some(SyncError::ClockSkew { index: 6, .. })));
    }

    proptest::proptest! {
        /// Against a model: whatever is done to an honest run (entries dropped, bodies
        /// tampered, seals removed or forged), the pipeline accepts exactly the longest
        /// prefix that continues the receiver's chain and ends on a seal whose signature
        /// holds — never an entry after a tampered one, never an unsealed tail.
        #[test]
        fn accepts_exactly_the_longest_authentic_sealed_prefix(
            n in 1u64..40,
            seal_every in 1u64..9,
            from in 0u64..40,
            tamper in proptest::option::of(0usize..40),
            unseal in proptest::collection::vec(0usize..40, 0..4),
            forge in proptest::option::of(0usize..40),
        ) {
            let (key, ws, origin, ingest) = setup();
            let honest = log(&key, ws, n, seal_every);
            let from = from.min(n);
            let start = if from == 0 {
                ChainPosition::start(&ws, &origin)
            } else {
                ingest.verify(origin, ChainPosition::start(&ws, &origin), honest[..from as usize].to_vec()).end()
            };
            // The receiver may hold less than `from` if the prefix ended unsealed.
            let have = start.next as usize;
            let mut run: Vec<Entry> = honest[have..].to_vec();
            let mut bad_from = run.len(); // first index (in `run`) that is not authentic
            if let Some(t) = tamper.filter(|t| *t < run.len()) {
                if let EntryBody::Live(p) = &mut run[t].body {
                    p.ops[0].body.push(1);
                }
                bad_from = t;
            }
            let len = run.len();
            for u in unseal.into_iter().filter(|u| *u < len) {
                run[u].seal = None;
            }
            if let Some(f) = forge.filter(|f| *f < run.len()) {
                run[f].seal = Some(Seal { key: key.public_key(), signature: [7; 64] });
            }
            // Model. A seal holds iff it is the honest one of an untampered prefix. If the
            // run's last seal holds, everything up to it is accepted (the forged interior
            // seals do not matter: they are not kept); otherwise the run is cut at the last
            // holding seal before the first that fails.
            let holds = |i: usize| i < bad_from && run[i].seal == honest[have + i].seal;
            let sealed: Vec<usize> = (0..run.len()).filter(|&i| run[i].seal.is_some()).collect();
            let accepted = match sealed.last() {
                None => 0,
                Some(&l) if holds(l) => l + 1,
                Some(_) => {
                    let fail = sealed.iter().position(|&i| !holds(i)).unwrap_or(sealed.len());
                    if fail == 0 { 0 } else { sealed[fail - 1] + 1 }
                }
            };
            let got = ingest.verify(origin, start, run);
            proptest::prop_assert_eq!(got.entries().len(), accepted);
            proptest::prop_assert_eq!(got.end().next, start.next + accepted as u64);
            let unsealed = |v: &[Entry]| v.iter().map(|e| Entry { seal: None, ..e.clone() }).collect::<Vec<_>>();
            proptest::prop_assert_eq!(unsealed(got.entries()), unsealed(&honest[have..have + accepted]));
            // Only verified seals are kept: the last accepted entry's, and it is honest.
            for (i, e) in got.entries().iter().enumerate() {
                if i + 1 == accepted {
                    proptest::prop_assert_eq!(e.seal, honest[have + i].seal);
                } else {
                    proptest::prop_assert!(e.seal.is_none());
                }
            }
        }
    }

    #[test]
    fn superseded_entries_are_accepted_whatever_their_stamp() {
        let (key, ws, origin, _) = setup();
        // The wall clock is far behind every entry: all ten are skewed.
        let ingest = Ingest::new(ws).with_clock(Arc::new(ManualClock::new(1_000)));
        let start = ChainPosition::start(&ws, &origin);
        let run = ingest.verify(origin, start, log(&key, ws, 10, 2));
        assert!(matches!(run.stop(), Some(SyncError::ClockSkew { index: 0, .. })));
        // Superseded from 0: all accepted, marked superseded.
        let run = ingest.verify_with(origin, start, log(&key, ws, 10, 2), Some(0));
        assert!(run.stop().is_none(), "{:?}", run.stop());
        assert_eq!((run.entries().len(), run.superseded_from()), (10, Some(0)));
        // Superseded from 4: entry 0 is still judged.
        let run = ingest.verify_with(origin, start, log(&key, ws, 10, 2), Some(4));
        assert!(matches!(run.stop(), Some(SyncError::ClockSkew { index: 0, .. })));
        // A superseded entry is still authenticated.
        let mut tampered = log(&key, ws, 10, 2);
        if let EntryBody::Live(p) = &mut tampered[7].body {
            p.ops[0].body[0] ^= 1;
        }
        let run = ingest.verify_with(origin, start, tampered, Some(0));
        assert_eq!(run.entries().len(), 6);
        assert!(matches!(run.stop(), Some(SyncError::Rejected { .. })));
    }

    #[derive(Debug)]
    struct Until(u64);
    impl Membership for Until {
        fn admit(&self, _: &PeerId, index: u64, _: &EntryBody) -> Result<(), String> {
            if index < self.0 { Ok(()) } else { Err("not admitted".into()) }
        }
    }

    #[test]
    fn entries_the_membership_hook_refuses_are_accepted_but_held() {
        let (key, ws, origin, ingest) = setup();
        let ingest = ingest.with_membership(Arc::new(Until(3)));
        let run = ingest.verify(origin, ChainPosition::start(&ws, &origin), log(&key, ws, 8, 4));
        assert_eq!(run.entries().len(), 8);
        assert_eq!(run.held(), Some((3, "not admitted")));
    }
}
