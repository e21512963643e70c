//! Membership: who may write a workspace, folded from its control log (DESIGN §8).
//!
//! Owns: [`ControlLog`] (the control entries a replica has stored, from every origin) and
//! [`Roster`] (what they mean: each device's role, who admitted it, its state, and its
//! *limit*: the first index of its log that may not be applied). The rules are written
//! down in `docs/ARCHITECTURE.md` ("Membership"); in short:
//!
//! - The genesis creator is the first admin. A device joins by its entry 0: a
//!   [`ControlOp::Join`] redeeming a valid invite (made by an admin, not expired by the
//!   join's stamp, not revoked, among the invite's first `uses` joins by peer id), or a
//!   [`ControlOp::Request`] that an admin answers with [`ControlOp::SetRole`]. A
//!   [`ControlOp::Successor`] at entry 0 inherits its predecessor's admission and role.
//! - A control op counts only if its entry is below its author's limit, and admin ops
//!   only if the author is an admin. Roles only rise.
//! - An admin counts as one in its own entries from its admission as admin, or, when
//!   promoted, from the first entry after its own acks show it had seen the promotion (an
//!   op is judged from its author's own prefix).
//! - A [`ControlOp::Remove`] by an admin cuts the target at the op's cut, raised to what
//!   the remover's own acks show it had seen of the target and past the target's entries
//!   the remover's own admission rests on; removals apply one at a time, most senior
//!   remover first (fewest grants from the creator, then peer id, then index), each only
//!   if its author still counts after the earlier ones. A [`ControlOp::Leave`] cuts its
//!   author after the leaving entry.
//! - **Witnessed validity.** The rules above, applied to a set of entries, are a pure
//!   function of the set, but not monotone: a revocation, a removal or a better-ranked
//!   join arriving later can make an entry invalid that was valid before. So the roster of
//!   a set also keeps valid every entry that some member's [`ControlOp::Ack`] saw valid:
//!   an ack by member `M` (not the entry's own author) covering entry `k` of `T` keeps
//!   `k` valid if `k` was below `T`'s limit in the roster of exactly what the ack covers.
//!   A replica that acks what it has before it stores control entries that would cut what
//!   it applied (the replica's duty, `docs/ARCHITECTURE.md`) therefore never sees an
//!   applied entry turn invalid, and new logs only ever make more entries valid. An ack
//!   also witnesses *admission*: a device it saw admitted stays admitted (its join keeps
//!   its use, whatever revocation or better-ranked join arrives later); only removal or
//!   leaving ends it.
//!
//! Invariants: [`ControlLog::roster`] depends only on the set of entries inserted, never on
//! their order or on any clock; claimed HLCs play no part except an invite's expiry, which
//! is judged against the join's own stamp (`docs/ARCHITECTURE.md` says what that bounds).
//!
//! Never: reads data ops, touches storage, or decides from arrival order.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::control::{ControlOp, Role};
use crate::encryption::KeyWrap;
use crate::entry::EntryBody;
use crate::hlc::Hlc;
use crate::ids::{ExchangeKey, PeerId, PublicKey, WorkspaceId};
use crate::ingest::Membership;

/// The control entries a replica stores, from every origin, keyed by (origin, index).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlLog {
    entries: BTreeMap<PeerId, BTreeMap<u64, ControlEntry>>,
}

/// One stored control entry: its stamp and the control ops this version understands (ops
/// it does not understand stall the origin elsewhere; here they count for nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ControlEntry {
    hlc: Hlc,
    ops: Vec<ControlOp>,
}

/// What a device is, in a [`Roster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Its role, once admitted.
    pub role: Option<Role>,
    /// The admin whose invite or admission let it in (the predecessor, for a successor;
    /// `None` for the creator and for devices not admitted).
    pub admitted_by: Option<PeerId>,
    /// The stamp of its entry 0, as it claims it.
    pub joined_at: Option<Hlc>,
    /// Where it receives wrapped workspace keys.
    pub exchange: Option<ExchangeKey>,
    /// Active, pending, removed or left.
    pub state: DeviceState,
    /// The first index of its log that may not be applied (`u64::MAX`: none).
    pub limit: u64,
}

/// A device's state in a [`Roster`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// Admitted; its entries apply.
    Active,
    /// Not admitted (yet): its entries are stored and forwarded, never applied.
    Pending(String),
    /// Removed by `by`: its entries from `cut` on are never applied.
    Removed {
        /// The admin that removed it.
        by: PeerId,
        /// The first index not applied (the remover's cut, extended by members' acks).
        cut: u64,
    },
    /// It left: nothing after its leaving entry applies.
    Left {
        /// The first index not applied.
        cut: u64,
    },
}

/// An invite as the roster sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteStatus {
    /// The invite key (the public half of the code's secret).
    pub key: PublicKey,
    /// The admin that made it.
    pub by: PeerId,
    /// The entry of `by` that made it.
    pub index: u64,
    /// The role it grants.
    pub role: Role,
    /// Unix ms after which joins are refused (0: never).
    pub expires: u64,
    /// How many joins it admits.
    pub uses: u32,
    /// The devices that joined with it, admitted or not.
    pub joined: Vec<PeerId>,
    /// Whether an admin revoked it.
    pub revoked: bool,
    /// The epoch keys it carries, wrapped for its secret (empty when not encrypted).
    pub wrapped: Vec<(u32, KeyWrap)>,
}

/// A wrapped epoch key the roster trusts: written by an admin (in an entry that counts),
/// or by a device for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedWrap {
    /// Who wrote it.
    pub by: PeerId,
    /// The entry of `by` that holds it.
    pub index: u64,
    /// The epoch whose key it wraps.
    pub epoch: u32,
    /// The device it is wrapped for.
    pub recipient: PeerId,
    /// The wrap.
    pub wrap: KeyWrap,
}

/// The meaning of a [`ControlLog`]: who may write, from which index to which.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    /// The workspace was created before membership existed (no policy in its genesis):
    /// every authentic device is admitted.
    pub open: bool,
    /// Data entries are encrypted (the genesis policy).
    pub encrypted: bool,
    /// The creator, once its genesis is known.
    pub creator: Option<PeerId>,
    /// Whether the genesis is known. Before it is, nothing is known to be valid (every
    /// limit is 0), and nobody can tell whether the workspace is open.
    pub founded: bool,
    devices: BTreeMap<PeerId, DeviceStatus>,
    invites: Vec<InviteStatus>,
    key_wraps: Vec<TrustedWrap>,
}

impl ControlLog {
    /// An empty log.
    pub fn new() -> Self {
        ControlLog::default()
    }

    /// Records the control ops of entry `index` of `origin` (a data or expunged entry, or
    /// a control entry with none this version knows, records nothing).
    pub fn insert(&mut self, origin: PeerId, index: u64, body: &EntryBody) {
        let EntryBody::Live(payload) = body else { return };
        let ops: Vec<ControlOp> =
            payload.ops.iter().filter_map(|op| ControlOp::decode(op).ok()).collect();
        if !ops.is_empty() {
            self.insert_ops(origin, index, payload.hlc, ops);
        }
    }

    /// Records decoded control ops of entry `index` of `origin`, stamped `hlc`.
    pub fn insert_ops(&mut self, origin: PeerId, index: u64, hlc: Hlc, ops: Vec<ControlOp>) {
        self.entries.entry(origin).or_default().insert(index, ControlEntry { hlc, ops });
    }

    /// The number of control entries recorded.
    pub fn len(&self) -> usize {
        self.entries.values().map(BTreeMap::len).sum()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// What the log means (see the module doc).
    pub fn roster(&self, workspace: &WorkspaceId) -> Roster {
        let mut memo = HashMap::new();
        self.roster_memo(workspace, &mut memo)
    }

    fn roster_memo(
        &self,
        workspace: &WorkspaceId,
        memo: &mut HashMap<Vec<(PeerId, u64)>, Roster>,
    ) -> Roster {
        // Witnessed validity: what members' acks saw valid is a floor under the limits.
        // The floor only rises, and the rules are applied again with it (an invite below a
        // witnessed limit counts, say), until it stops rising.
        let mut floor: BTreeMap<PeerId, u64> = BTreeMap::new();
        // Devices whose admission a member's ack saw: admitted whatever arrives later.
        let mut witnessed: BTreeSet<PeerId> = BTreeSet::new();
        loop {
            let roster = base_roster(self, workspace, &floor, &witnessed);
            if roster.open {
                return roster;
            }
            let mut raised = false;
            for (member, log) in &self.entries {
                for (&at, entry) in log {
                    for op in &entry.ops {
                        let ControlOp::Ack { cursors } = op else { continue };
                        if at >= roster.limit(member) {
                            continue;
                        }
                        let known = self.known_by(member, at, cursors);
                        if known.len() == self.len() {
                            continue; // it saw everything: nothing to add
                        }
                        let key: Vec<(PeerId, u64)> =
                            known.entries.iter().map(|(o, l)| (*o, l.len() as u64)).collect();
                        let seen = match memo.get(&key) {
                            Some(r) => r.clone(),
                            None => {
                                let r = known.roster_memo(workspace, memo);
                                memo.insert(key, r.clone());
                                r
                            }
                        };
                        for &(target, next) in cursors {
                            if target == *member {
                                continue;
                            }
                            let valid = next.min(seen.limit(&target));
                            let f = floor.entry(target).or_insert(0);
                            if valid > *f {
                                *f = valid;
                                raised = true;
                            }
                            let admitted = seen.device(&target).is_some_and(|d| d.role.is_some());
                            if next > 0 && admitted && witnessed.insert(target) {
                                raised = true;
                            }
                        }
                    }
                }
            }
            if !raised {
                return roster;
            }
        }
    }

    /// The part of this log that an ack at entry `at` of `member` with `cursors` covers:
    /// the member's own entries before it, and each acked origin's below its cursor.
    fn known_by(&self, member: &PeerId, at: u64, cursors: &[(PeerId, u64)]) -> ControlLog {
        let bound: BTreeMap<PeerId, u64> = cursors.iter().copied().collect();
        let mut known = ControlLog::new();
        for (origin, log) in &self.entries {
            let next = if origin == member { at } else { bound.get(origin).copied().unwrap_or(0) };
            let kept: BTreeMap<u64, ControlEntry> =
                log.range(..next).map(|(i, e)| (*i, e.clone())).collect();
            if !kept.is_empty() {
                known.entries.insert(*origin, kept);
            }
        }
        known
    }
}

impl Roster {
    /// The first index of `origin`'s log that may not be applied.
    pub fn limit(&self, origin: &PeerId) -> u64 {
        if self.open {
            return u64::MAX;
        }
        self.devices.get(origin).map_or(0, |d| d.limit)
    }

    /// Every device the log mentions by its own entries.
    pub fn devices(&self) -> impl Iterator<Item = (&PeerId, &DeviceStatus)> {
        self.devices.iter()
    }

    /// One device.
    pub fn device(&self, origin: &PeerId) -> Option<&DeviceStatus> {
        self.devices.get(origin)
    }

    /// The invites admins made, in (author, index) order.
    pub fn invites(&self) -> &[InviteStatus] {
        &self.invites
    }

    /// The admitted admins, active or not.
    pub fn admins(&self) -> Vec<PeerId> {
        self.devices
            .iter()
            .filter(|(_, d)| d.role == Some(Role::Admin))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The wrapped epoch keys the roster trusts, in (author, index) order.
    pub fn key_wraps(&self) -> &[TrustedWrap] {
        &self.key_wraps
    }

    /// The newest epoch any trusted wrap or invite carries a key of.
    pub fn newest_epoch(&self) -> Option<u32> {
        let wraps = self.key_wraps.iter().map(|w| w.epoch);
        let invites = self.invites.iter().flat_map(|i| i.wrapped.iter().map(|(e, _)| *e));
        wraps.chain(invites).max()
    }

    /// Whether `device` was given a key of `epoch`: a trusted wrap for it, or the invite it
    /// joined with.
    pub fn was_given(&self, device: &PeerId, epoch: u32) -> bool {
        self.key_wraps.iter().any(|w| w.recipient == *device && w.epoch == epoch)
            || self
                .invites
                .iter()
                .any(|i| i.joined.contains(device) && i.wrapped.iter().any(|(e, _)| *e == epoch))
    }

    /// Whether `origin` is an admitted admin whose entry `index` counts.
    pub fn is_admin_at(&self, origin: &PeerId, index: u64) -> bool {
        self.devices
            .get(origin)
            .is_some_and(|d| d.role == Some(Role::Admin) && index < self.limit(origin))
    }
}

impl Membership for Roster {
    fn admit(&self, origin: &PeerId, index: u64, _body: &EntryBody) -> Result<(), String> {
        if index < self.limit(origin) {
            return Ok(());
        }
        Err(match self.devices.get(origin).map(|d| &d.state) {
            None => "not a member: no join from this device".to_owned(),
            Some(DeviceState::Pending(why)) => format!("not a member: {why}"),
            Some(DeviceState::Removed { by, cut }) => {
                format!("removed by {} from entry {cut} on", by.short())
            }
            Some(DeviceState::Left { cut }) => format!("left the workspace at entry {cut}"),
            Some(DeviceState::Active) => "past its limit".to_owned(),
        })
    }
}

/// How a non-creator device asks to be admitted: its entry 0.
#[derive(Debug, Clone)]
enum Admission {
    Join { invite: PublicKey, exchange: ExchangeKey },
    Request { exchange: ExchangeKey },
    Successor { predecessor: PeerId, exchange: Option<ExchangeKey> },
    None,
}

/// The rules of the module doc, with the limits witnessed so far (`floor`) as a lower bound.
/// Grants are a least fixed point from "only the creator"; removals are then applied one at
/// a time in seniority order, each judged under the grants the earlier ones left.
fn base_roster(
    log: &ControlLog,
    workspace: &WorkspaceId,
    floor: &BTreeMap<PeerId, u64>,
    witnessed: &BTreeSet<PeerId>,
) -> Roster {
    let genesis = log.entries.iter().find_map(|(origin, l)| {
        let e = l.get(&0)?;
        let founds = e.ops.iter().any(|o| o.founds() == Some(*workspace));
        founds.then_some((*origin, e))
    });
    let mut roster = Roster {
        open: false,
        encrypted: false,
        creator: None,
        founded: false,
        devices: BTreeMap::new(),
        invites: Vec::new(),
        key_wraps: Vec::new(),
    };
    let Some((creator, genesis)) = genesis else {
        // Nothing is known to be valid before the genesis arrives.
        for origin in log.entries.keys() {
            roster
                .devices
                .insert(*origin, pending(None, "the workspace's genesis is not here yet"));
        }
        return roster;
    };
    roster.creator = Some(creator);
    roster.founded = true;
    let policy = genesis.ops.iter().find_map(|o| match o {
        ControlOp::Policy { encrypted, creator_exchange } => Some((*encrypted, *creator_exchange)),
        _ => None,
    });
    let Some((encrypted, creator_exchange)) = policy else {
        roster.open = true;
        return roster;
    };
    roster.encrypted = encrypted;

    let admissions: BTreeMap<PeerId, (Admission, Hlc)> = log
        .entries
        .iter()
        .filter(|(o, _)| **o != creator)
        .map(|(o, l)| {
            let Some(first) = l.get(&0) else { return (*o, (Admission::None, Hlc::ZERO)) };
            let how = first
                .ops
                .iter()
                .find_map(|op| match op {
                    ControlOp::Join { invite_key, exchange, .. } => {
                        Some(Admission::Join { invite: *invite_key, exchange: *exchange })
                    }
                    ControlOp::Request { exchange } => {
                        Some(Admission::Request { exchange: *exchange })
                    }
                    ControlOp::Successor { exchange, .. } => op
                        .predecessor(workspace)
                        .map(|(p, _)| Admission::Successor { predecessor: p, exchange: *exchange }),
                    _ => None,
                })
                .unwrap_or(Admission::None);
            (*o, (how, first.hlc))
        })
        .collect();

    // Removals are applied one at a time, most senior remover first (fewest grants between
    // it and the creator, then peer id, then index), each only if its author still counts
    // as an admin at that entry given the removals applied before it. Cuts only fall, so
    // this ends, and a junior cannot undo a senior's earlier removal of it.
    let mut cuts: BTreeMap<PeerId, (PeerId, u64)> = BTreeMap::new();
    let folded = loop {
        let round =
            fold_round(log, creator, creator_exchange, &admissions, &cuts, floor, witnessed);
        let next =
            round.removals.iter().find(|r| cuts.get(&r.target).is_none_or(|&(_, c)| r.cut < c));
        match next {
            Some(r) => {
                cuts.insert(r.target, (r.author, r.cut));
            }
            None => break round,
        }
    };
    roster.devices = folded.devices;
    roster.invites = folded.invites;
    roster.key_wraps = folded.key_wraps;
    // Origins that wrote control entries but never asked to join.
    for origin in log.entries.keys() {
        roster.devices.entry(*origin).or_insert_with(|| pending(None, "it never joined"));
    }
    roster
}

/// Raises limits to what members' acks witnessed (see [`ControlLog::roster`]).
fn apply_floor(devices: &mut BTreeMap<PeerId, DeviceStatus>, floor: &BTreeMap<PeerId, u64>) {
    for (target, &limit) in floor {
        let device = devices.entry(*target).or_insert_with(|| pending(None, "it never joined"));
        if limit <= device.limit {
            continue;
        }
        device.limit = limit;
        device.state = match &device.state {
            DeviceState::Removed { by, .. } => DeviceState::Removed { by: *by, cut: limit },
            DeviceState::Left { .. } => DeviceState::Left { cut: limit },
            DeviceState::Pending(why) => DeviceState::Pending(format!(
                "{why}; its entries below {limit} stay valid (a member acknowledged them)"
            )),
            DeviceState::Active => DeviceState::Active,
        };
    }
}

struct Round {
    devices: BTreeMap<PeerId, DeviceStatus>,
    invites: Vec<InviteStatus>,
    key_wraps: Vec<TrustedWrap>,
    /// The removals that count under this round's grants, in the order they are applied.
    removals: Vec<Removal>,
}

/// A removal op that counts, with its effective cut.
struct Removal {
    author: PeerId,
    target: PeerId,
    cut: u64,
}

fn pending(joined_at: Option<Hlc>, why: &str) -> DeviceStatus {
    DeviceStatus {
        role: None,
        admitted_by: None,
        joined_at,
        exchange: None,
        state: DeviceState::Pending(why.to_owned()),
        limit: 0,
    }
}

/// A device's grant in one round: its role, who granted it, and the first index of its own
/// log from which it acts as an admin (`u64::MAX`: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grant {
    role: Role,
    by: Option<PeerId>,
    admin_from: u64,
    /// The entry that granted it (the invite, or the promotion), when there is one.
    granted_at: Option<(PeerId, u64)>,
}

/// The greatest index of `target`'s entries on which `device`'s grant rests (through the
/// chain of who granted whom), plus one; 0 if none.
fn chain_floor(grants: &BTreeMap<PeerId, Grant>, device: &PeerId, target: &PeerId) -> u64 {
    let mut floor = 0;
    let mut seen = BTreeSet::new();
    let mut at = *device;
    while seen.insert(at) {
        let Some(Grant { granted_at: Some((by, index)), .. }) = grants.get(&at) else { break };
        if by == target {
            floor = floor.max(index + 1);
        }
        at = *by;
    }
    floor
}

/// The first index after which `device`'s own log shows it had seen entry `index` of
/// `origin`: one past its first ack whose cursor for `origin` passes `index`.
fn seen_from(log: &ControlLog, device: &PeerId, origin: &PeerId, index: u64) -> Option<u64> {
    log.entries.get(device)?.iter().find_map(|(at, e)| {
        let saw = e.ops.iter().any(|op| match op {
            ControlOp::Ack { cursors } => {
                cursors.iter().any(|(o, next)| o == origin && *next > index)
            }
            _ => false,
        });
        saw.then_some(at + 1)
    })
}

/// The greatest cursor for `target` in `device`'s acks before its entry `before`.
fn acked_before(log: &ControlLog, device: &PeerId, target: &PeerId, before: u64) -> u64 {
    let Some(l) = log.entries.get(device) else { return 0 };
    l.range(..before)
        .flat_map(|(_, e)| e.ops.iter())
        .filter_map(|op| match op {
            ControlOp::Ack { cursors } => {
                cursors.iter().find(|(o, _)| o == target).map(|(_, next)| *next)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Grants, invites and the removals that count, given the cuts applied so far.
fn fold_round(
    log: &ControlLog,
    creator: PeerId,
    creator_exchange: ExchangeKey,
    admissions: &BTreeMap<PeerId, (Admission, Hlc)>,
    cuts: &BTreeMap<PeerId, (PeerId, u64)>,
    floor: &BTreeMap<PeerId, u64>,
    witnessed: &BTreeSet<PeerId>,
) -> Round {
    // A device leaves after its first leaving entry.
    let left: BTreeMap<PeerId, u64> = log
        .entries
        .iter()
        .filter_map(|(o, l)| {
            l.iter()
                .find(|(_, e)| e.ops.iter().any(|op| matches!(op, ControlOp::Leave)))
                .map(|(i, _)| (*o, i + 1))
        })
        .collect();
    let limit_of = |o: &PeerId, grants: &BTreeMap<PeerId, Grant>| {
        let own = if grants.contains_key(o) {
            let cut = cuts.get(o).map_or(u64::MAX, |(_, c)| *c);
            cut.min(left.get(o).copied().unwrap_or(u64::MAX))
        } else {
            0
        };
        own.max(floor.get(o).copied().unwrap_or(0))
    };

    // Grants, as admissions and promotions make them (a positive fixed point in itself).
    // An admin op counts from the author's own prefix: a device promoted to admin acts as
    // one only in entries written after its own log shows it had seen the promotion.
    let mut grants: BTreeMap<PeerId, Grant> = BTreeMap::new();
    grants.insert(creator, Grant { role: Role::Admin, by: None, admin_from: 0, granted_at: None });
    let mut invites: Vec<InviteStatus> = Vec::new();
    let mut revoked: HashSet<PublicKey> = HashSet::new();
    let mut counted: Vec<(PeerId, u64, &ControlOp)>;
    loop {
        let before = grants.clone();
        let admin_at = |o: &PeerId, at: u64| {
            before.get(o).is_some_and(|g| g.role == Role::Admin && at >= g.admin_from)
        };
        // The ops that count under the grants so far, in (author, index) order.
        counted = log
            .entries
            .iter()
            .flat_map(|(o, l)| {
                l.range(..limit_of(o, &before))
                    .flat_map(move |(i, e)| e.ops.iter().map(move |op| (*o, *i, op)))
            })
            .collect();
        invites.clear();
        revoked.clear();
        for &(author, index, op) in &counted {
            if !admin_at(&author, index) {
                continue;
            }
            match op {
                ControlOp::Invite { invite_key, role, expires, uses, wrapped }
                    if !invites.iter().any(|i| i.key == *invite_key) =>
                {
                    invites.push(InviteStatus {
                        key: *invite_key,
                        by: author,
                        index,
                        role: *role,
                        expires: *expires,
                        uses: *uses,
                        joined: Vec::new(),
                        revoked: false,
                        wrapped: wrapped.clone(),
                    });
                }
                ControlOp::RevokeInvite { invite_key } => {
                    revoked.insert(*invite_key);
                }
                _ => {}
            }
        }
        // Joins: a join a member's ack saw admitted stays admitted (revoked, expired or
        // over-used since); the invite's remaining uses go to the other on-time joins of an
        // unrevoked invite, by peer id (the order of `admissions`).
        let mut redeemed: HashMap<PublicKey, u32> = HashMap::new();
        let seen_first = admissions.iter().filter(|(d, _)| witnessed.contains(*d));
        let others = admissions.iter().filter(|(d, _)| !witnessed.contains(*d));
        for (device, (how, hlc)) in seen_first.chain(others) {
            let Admission::Join { invite, .. } = how else { continue };
            let Some(inv) = invites.iter_mut().find(|i| i.key == *invite) else { continue };
            inv.joined.push(*device);
            let on_time = inv.expires == 0 || hlc.millis() <= inv.expires;
            if witnessed.contains(device) {
                *redeemed.entry(*invite).or_insert(0) += 1;
                let admin_from = if inv.role == Role::Admin { 0 } else { u64::MAX };
                grants.entry(*device).or_insert(Grant {
                    role: inv.role,
                    by: Some(inv.by),
                    admin_from,
                    granted_at: Some((inv.by, inv.index)),
                });
                continue;
            }
            if !on_time || revoked.contains(invite) {
                continue;
            }
            let used = redeemed.entry(*invite).or_insert(0);
            if *used < inv.uses {
                *used += 1;
                let admin_from = if inv.role == Role::Admin { 0 } else { u64::MAX };
                grants.entry(*device).or_insert(Grant {
                    role: inv.role,
                    by: Some(inv.by),
                    admin_from,
                    granted_at: Some((inv.by, inv.index)),
                });
            }
        }
        for (device, (how, _)) in admissions {
            // A successor is the same device under a new key: it inherits the predecessor's
            // admission only while the predecessor is neither removed nor gone (else a
            // removed device could sign itself back in).
            let out = |p: &PeerId| cuts.contains_key(p) || left.contains_key(p);
            if let Admission::Successor { predecessor, .. } = how
                && !out(predecessor)
                && let Some(&g) = before.get(predecessor)
            {
                let admin_from = if g.role == Role::Admin { 0 } else { u64::MAX };
                grants.entry(*device).or_insert(Grant {
                    role: g.role,
                    by: Some(*predecessor),
                    admin_from,
                    granted_at: g.granted_at,
                });
            }
        }
        for &(author, index, op) in &counted {
            let ControlOp::SetRole { target, role } = op else { continue };
            let asked = admissions.get(target).is_some_and(|(a, _)| !matches!(a, Admission::None));
            if !admin_at(&author, index) || !asked {
                continue;
            }
            let g = grants.entry(*target).or_insert(Grant {
                role: *role,
                by: Some(author),
                admin_from: u64::MAX,
                granted_at: Some((author, index)),
            });
            if *role > g.role {
                g.role = *role;
                g.by = Some(author);
                g.granted_at = Some((author, index));
            }
            if *role == Role::Admin {
                let from = seen_from(log, target, &author, index).unwrap_or(u64::MAX);
                g.admin_from = g.admin_from.min(from);
            }
        }
        if grants == before {
            break;
        }
    }
    for inv in &mut invites {
        inv.revoked = revoked.contains(&inv.key);
    }
    let admin_at = |o: &PeerId, at: u64| {
        grants.get(o).is_some_and(|g| g.role == Role::Admin && at >= g.admin_from)
    };

    // Removals that count, most senior remover first. A remover cannot cut below what
    // its own log shows it had seen of the target, nor below the target's entries its own
    // admission rests on (removing the admin that invited you cannot undo your own
    // invite: that would make the removal invalidate itself).
    let depth = |o: &PeerId| {
        let (mut d, mut at, mut seen) = (0u32, *o, BTreeSet::new());
        while seen.insert(at) {
            let Some(Grant { by: Some(by), .. }) = grants.get(&at) else { break };
            d += 1;
            at = *by;
        }
        d
    };
    let mut removals: Vec<(u32, u64, Removal)> = counted
        .iter()
        .filter_map(|&(author, index, op)| match op {
            // A device leaves with `Leave`; removing itself counts for nothing.
            ControlOp::Remove { target, cut } if admin_at(&author, index) && *target != author => {
                let cut = (*cut)
                    .max(acked_before(log, &author, target, index))
                    .max(chain_floor(&grants, &author, target));
                Some((depth(&author), index, Removal { author, target: *target, cut }))
            }
            _ => None,
        })
        .collect();
    removals.sort_by_key(|r| (r.0, r.2.author, r.1));
    let removals: Vec<Removal> = removals.into_iter().map(|(_, _, r)| r).collect();

    let mut devices = BTreeMap::new();
    let all: BTreeSet<PeerId> =
        log.entries.keys().copied().chain(std::iter::once(creator)).collect();
    for origin in all {
        let joined = admissions.get(&origin);
        let joined_at = if origin == creator {
            log.entries.get(&creator).and_then(|l| l.get(&0)).map(|e| e.hlc)
        } else {
            joined.map(|(_, h)| *h)
        };
        let exchange = if origin == creator {
            Some(creator_exchange)
        } else {
            match joined.map(|(a, _)| a) {
                Some(Admission::Join { exchange, .. } | Admission::Request { exchange }) => {
                    Some(*exchange)
                }
                Some(Admission::Successor { exchange, .. }) => *exchange,
                _ => None,
            }
        };
        let Some(&Grant { role, by: admitted_by, .. }) = grants.get(&origin) else {
            let why = match joined.map(|(a, _)| a) {
                Some(Admission::Join { .. }) => {
                    "its invite is unknown here, expired, revoked or used up"
                }
                Some(Admission::Request { .. }) => "it asked to join; no admin admitted it yet",
                Some(Admission::Successor { .. }) => {
                    "its predecessor is not a member (never admitted, removed or gone)"
                }
                _ => "it never joined",
            };
            let mut d = pending(joined_at, why);
            d.exchange = exchange;
            devices.insert(origin, d);
            continue;
        };
        let (state, limit) = match (cuts.get(&origin), left.get(&origin)) {
            (Some(&(by, cut)), l) if l.is_none_or(|l| cut <= *l) => {
                (DeviceState::Removed { by, cut }, cut)
            }
            (_, Some(&cut)) => (DeviceState::Left { cut }, cut),
            _ => (DeviceState::Active, u64::MAX),
        };
        devices.insert(
            origin,
            DeviceStatus { role: Some(role), admitted_by, joined_at, exchange, state, limit },
        );
    }
    apply_floor(&mut devices, floor);
    // Key wraps: an admin's (in an entry that counts), or a device's for itself. Nobody
    // else can hand a member a key it would then write under.
    let key_wraps = counted
        .iter()
        .filter_map(|&(author, index, op)| match op {
            ControlOp::EpochKeys { epoch, wraps } => Some((author, index, *epoch, wraps)),
            _ => None,
        })
        .flat_map(|(author, index, epoch, wraps)| {
            let admin = admin_at(&author, index);
            wraps.iter().filter(move |(recipient, _)| admin || *recipient == author).map(
                move |(recipient, wrap)| TrustedWrap {
                    by: author,
                    index,
                    epoch,
                    recipient: *recipient,
                    wrap: *wrap,
                },
            )
        })
        .collect();
    Round { devices, invites, removals, key_wraps }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::put_varint;
    use crate::ids::DeviceKey;
    use crate::invite::InviteCode;
    use proptest::prelude::*;

    struct World {
        ws: WorkspaceId,
        creator: DeviceKey,
        log: ControlLog,
    }

    fn key(n: u8) -> DeviceKey {
        DeviceKey::from_secret_bytes(&[n; 32])
    }

    fn code(w: &World, n: u8) -> InviteCode {
        InviteCode::from_parts(w.ws, "", [n; 32])
    }

    impl World {
        fn new(policy: bool) -> World {
            let creator = key(1);
            let ws = WorkspaceId::derive(&creator.public_key(), &[0; 16]);
            let mut log = ControlLog::new();
            let mut ops = vec![ControlOp::genesis(creator.public_key(), [0; 16])];
            if policy {
                ops.push(ControlOp::Policy {
                    encrypted: false,
                    creator_exchange: creator.exchange_key(),
                });
            }
            log.insert_ops(creator.peer_id(&ws), 0, Hlc::from_millis(1), ops);
            World { ws, creator, log }
        }
        fn id(&self, k: &DeviceKey) -> PeerId {
            k.peer_id(&self.ws)
        }
        fn put(&mut self, k: &DeviceKey, index: u64, op: ControlOp) {
            let id = self.id(k);
            self.log.insert_ops(id, index, Hlc::from_millis(1000 + index), vec![op]);
        }
        fn roster(&self) -> Roster {
            self.log.roster(&self.ws)
        }
        fn limit(&self, k: &DeviceKey) -> u64 {
            self.roster().limit(&self.id(k))
        }
    }

    #[test]
    fn the_creator_is_admin_and_an_invite_admits_a_device_whose_admin_is_offline() {
        let mut w = World::new(true);
        let (c, a) = (w.creator.clone(), key(2));
        let code = code(&w, 50);
        // The join arrives before the invite: pending until it is known.
        w.put(&a, 0, code.join_op(&a));
        assert_eq!(w.limit(&a), 0);
        let r = w.roster();
        assert!(matches!(r.device(&w.id(&a)).unwrap().state, DeviceState::Pending(_)));
        w.put(&c, 1, code.invite_op(Role::Member, 0, 1, vec![]));
        let r = w.roster();
        let d = r.device(&w.id(&a)).unwrap();
        assert_eq!(
            (d.role, d.admitted_by, d.limit),
            (Some(Role::Member), Some(w.id(&c)), u64::MAX)
        );
        assert_eq!(d.exchange, Some(a.exchange_key()));
        assert!(r.is_admin_at(&w.id(&c), 5));
        assert!(!r.is_admin_at(&w.id(&a), 5));
        assert!(r.admit(&w.id(&a), 9, &EntryBody::Expunged(crate::EntryHash([0; 32]))).is_ok());
    }

    #[test]
    fn expired_revoked_over_used_and_unknown_invites_admit_nobody() {
        let mut w = World::new(true);
        let c = w.creator.clone();
        // Expired: the join is stamped 1000 ms, the invite expired at 999.
        let (old, late) = (code(&w, 51), key(2));
        w.put(&c, 1, old.invite_op(Role::Member, 999, 1, vec![]));
        w.put(&late, 0, old.join_op(&late));
        assert_eq!(w.limit(&late), 0);
        // Revoked.
        let (revoked, r1) = (code(&w, 52), key(3));
        w.put(&c, 2, revoked.invite_op(Role::Member, 0, 5, vec![]));
        w.put(&r1, 0, revoked.join_op(&r1));
        assert_eq!(w.limit(&r1), u64::MAX);
        w.put(&c, 3, ControlOp::RevokeInvite { invite_key: revoked.key().public_key() });
        assert_eq!(w.limit(&r1), 0, "nobody acknowledged the join before the revocation");
        // Over-used: two joins of a one-use invite; the lower peer id wins.
        let (once, j1, j2) = (code(&w, 53), key(4), key(5));
        w.put(&c, 4, once.invite_op(Role::Admin, 0, 1, vec![]));
        w.put(&j1, 0, once.join_op(&j1));
        w.put(&j2, 0, once.join_op(&j2));
        let (winner, loser) = if w.id(&j1) < w.id(&j2) { (&j1, &j2) } else { (&j2, &j1) };
        assert_eq!(w.limit(winner), u64::MAX);
        assert_eq!(w.limit(loser), 0);
        assert_eq!(w.roster().device(&w.id(winner)).unwrap().role, Some(Role::Admin));
        // An invite nobody made.
        let (never, n) = (code(&w, 54), key(6));
        w.put(&n, 0, never.join_op(&n));
        assert_eq!(w.limit(&n), 0);
    }

    #[test]
    fn only_admins_admit_promote_remove_and_invite() {
        let mut w = World::new(true);
        let (c, m, req, other) = (w.creator.clone(), key(2), key(3), key(4));
        let inv = code(&w, 50);
        w.put(&c, 1, inv.invite_op(Role::Member, 0, 3, vec![]));
        w.put(&m, 0, inv.join_op(&m));
        w.put(&req, 0, ControlOp::Request { exchange: req.exchange_key() });
        // A member's admission, invite and removal count for nothing.
        w.put(&m, 1, ControlOp::SetRole { target: w.id(&req), role: Role::Member });
        let minv = code(&w, 60);
        w.put(&m, 2, minv.invite_op(Role::Admin, 0, 1, vec![]));
        w.put(&other, 0, minv.join_op(&other));
        w.put(&m, 3, ControlOp::Remove { target: w.id(&c), cut: 0 });
        assert_eq!((w.limit(&req), w.limit(&other), w.limit(&c)), (0, 0, u64::MAX));
        // The creator admits the requester and promotes the member. The member's earlier
        // admin ops still count for nothing: an op is judged from its author's own prefix.
        w.put(&c, 2, ControlOp::SetRole { target: w.id(&req), role: Role::Member });
        w.put(&c, 3, ControlOp::SetRole { target: w.id(&m), role: Role::Admin });
        assert_eq!(w.limit(&req), u64::MAX);
        assert_eq!((w.limit(&other), w.limit(&c)), (0, u64::MAX));
        assert_eq!(w.roster().device(&w.id(&m)).unwrap().role, Some(Role::Admin));
        // Once its log shows it saw the promotion, it acts as an admin...
        w.put(&m, 4, ControlOp::Ack { cursors: vec![(w.id(&c), 4)] });
        let later = code(&w, 61);
        let third = key(5);
        w.put(&m, 5, later.invite_op(Role::Member, 0, 1, vec![]));
        w.put(&third, 0, later.join_op(&third));
        assert_eq!(w.limit(&third), u64::MAX);
        // ... but cannot cut the creator below what it had seen of it (its own ack), so
        // the promotion it acts on stays valid.
        w.put(&m, 6, ControlOp::Remove { target: w.id(&c), cut: 0 });
        assert_eq!(w.limit(&c), 4);
        assert_eq!(w.limit(&third), u64::MAX);
    }

    #[test]
    fn removal_cuts_leave_ends_and_a_removed_admins_later_ops_count_for_nothing() {
        let mut w = World::new(true);
        let (c, a, b, late) = (w.creator.clone(), key(2), key(3), key(4));
        let inv = code(&w, 50);
        w.put(&c, 1, inv.invite_op(Role::Admin, 0, 2, vec![]));
        w.put(&a, 0, inv.join_op(&a));
        w.put(&b, 0, inv.join_op(&b));
        w.put(&c, 2, ControlOp::Remove { target: w.id(&a), cut: 3 });
        let r = w.roster();
        assert_eq!(r.limit(&w.id(&a)), 3);
        assert_eq!(
            r.device(&w.id(&a)).unwrap().state,
            DeviceState::Removed { by: w.id(&c), cut: 3 }
        );
        // a's invite written at its entry 4, past its cut, admits nobody.
        let inv2 = code(&w, 51);
        w.put(&a, 4, inv2.invite_op(Role::Member, 0, 1, vec![]));
        w.put(&late, 0, inv2.join_op(&late));
        assert_eq!(w.limit(&late), 0);
        // b leaves at its entry 2: entries 0..=2 stay valid.
        w.put(&b, 2, ControlOp::Leave);
        assert_eq!(w.limit(&b), 3);
        // Neither can sign itself back in as a successor of its old key.
        for (old, new) in [(&a, key(5)), (&b, key(6))] {
            let chain = crate::entry::ChainHash([0; 32]);
            let op = ControlOp::successor(old, w.ws, w.id(&new), u64::MAX, chain, None);
            w.put(&new, 0, op);
            assert_eq!(w.limit(&new), 0, "a successor of a device that is out");
        }
        // A successor of an active member is admitted.
        let chain = crate::entry::ChainHash([0; 32]);
        let next = key(7);
        w.put(&next, 0, ControlOp::successor(&c, w.ws, w.id(&next), u64::MAX, chain, None));
        assert_eq!(w.limit(&next), u64::MAX);
    }

    #[test]
    fn an_acknowledged_entry_stays_valid_whatever_arrives_later() {
        let mut w = World::new(true);
        let (c, m, x, y) = (w.creator.clone(), key(2), key(3), key(4));
        let inv = code(&w, 50);
        w.put(&c, 1, inv.invite_op(Role::Member, 0, 3, vec![]));
        w.put(&m, 0, inv.join_op(&m));
        let once = code(&w, 51);
        w.put(&c, 2, once.invite_op(Role::Member, 0, 1, vec![]));
        // Whichever of x and y sorts last joins first and writes 5 entries; m sees them and
        // acknowledges them.
        let (first, second) = if w.id(&x) > w.id(&y) { (&x, &y) } else { (&y, &x) };
        w.put(first, 0, once.join_op(first));
        assert_eq!(w.limit(first), u64::MAX);
        let mut cursors = vec![(w.id(&c), 3), (w.id(first), 5)];
        cursors.sort();
        w.put(&m, 1, ControlOp::Ack { cursors });
        // The better-ranked join arrives: the acknowledged join keeps the one use.
        w.put(second, 0, once.join_op(second));
        assert_eq!(w.limit(second), 0);
        assert_eq!(w.limit(first), u64::MAX);
        // Removed from entry 2, its five acknowledged entries stay valid; later ones do not.
        w.put(&c, 3, ControlOp::Remove { target: w.id(first), cut: 2 });
        assert_eq!(w.limit(first), 5);
        // Its own acks never extend its own validity.
        let mut own = vec![(w.id(&c), 4), (w.id(first), 9)];
        own.sort();
        w.put(first, 9, ControlOp::Ack { cursors: own });
        assert_eq!(w.limit(first), 5);
    }

    #[test]
    fn a_join_a_member_saw_admitted_keeps_its_use_and_survives_revocation() {
        let mut w = World::new(true);
        let (c, m, first, second) = (w.creator.clone(), key(2), key(3), key(4));
        let inv = code(&w, 50);
        w.put(&c, 1, inv.invite_op(Role::Member, 0, 5, vec![]));
        w.put(&m, 0, inv.join_op(&m));
        let once = code(&w, 51);
        w.put(&c, 2, once.invite_op(Role::Member, 0, 1, vec![]));
        // Whichever sorts last joins first, and m acknowledges its join.
        let (early, late) =
            if w.id(&first) > w.id(&second) { (&first, &second) } else { (&second, &first) };
        w.put(early, 0, once.join_op(early));
        let mut cursors = vec![(w.id(&c), 3), (w.id(early), 1)];
        cursors.sort();
        w.put(&m, 1, ControlOp::Ack { cursors });
        // The better-ranked join arrives later: the witnessed join keeps the one use.
        w.put(late, 0, once.join_op(late));
        assert_eq!(w.limit(early), u64::MAX);
        assert_eq!(w.limit(late), 0);
        // Revoking the invite now refuses no join a member saw admitted.
        w.put(&c, 3, ControlOp::RevokeInvite { invite_key: once.key().public_key() });
        assert_eq!((w.limit(early), w.limit(late)), (u64::MAX, 0));
    }

    #[test]
    fn a_workspace_without_a_policy_is_open_and_nothing_applies_before_its_genesis() {
        let mut w = World::new(false);
        let stranger = key(9);
        w.put(&stranger, 3, ControlOp::Leave);
        assert!(w.roster().open);
        assert_eq!(w.limit(&stranger), u64::MAX);
        let mut empty = ControlLog::new();
        empty.insert_ops(w.id(&stranger), 0, Hlc::ZERO, vec![ControlOp::Leave]);
        assert_eq!(empty.roster(&w.ws).limit(&w.id(&stranger)), 0);
        assert_eq!(empty.roster(&w.ws).limit(&w.id(&w.creator)), 0);
    }

    #[test]
    fn insert_decodes_control_ops_and_skips_what_it_does_not_know() {
        let w = World::new(true);
        let mut log = ControlLog::new();
        let mut body = Vec::new();
        put_varint(&mut body, 0);
        let ops = vec![
            ControlOp::Leave.to_op(),
            crate::Op { domain: crate::Domain::CONTROL, kind: 999, body },
        ];
        let payload = crate::Payload { hlc: Hlc::from_millis(5), author: None, ops };
        log.insert(w.id(&w.creator), 4, &EntryBody::Live(payload));
        assert_eq!(log.len(), 1);
    }

    // ---- Property: validity never flips at a member that acks before cutting. ----

    /// A generated control history: each device's authored log (entries that are `None`
    /// hold data only).
    #[derive(Debug, Clone)]
    struct History {
        logs: Vec<(u8, Vec<Option<ControlOp>>)>,
    }

    #[derive(Debug, Clone)]
    enum Step {
        Data(usize),
        Invite(usize, bool, u32, bool),
        Join(usize, usize),
        Request(usize),
        SetRole(usize, usize, bool),
        Remove(usize, usize, u64),
        Revoke(usize, usize),
        Leave(usize),
        Ack(usize),
    }

    const OBSERVERS: [u8; 3] = [10, 11, 12];
    const DEVICES: [u8; 5] = [1, 2, 3, 4, 5]; // 1 is the creator

    fn step() -> impl Strategy<Value = Step> {
        let d = 0..DEVICES.len();
        prop_oneof![
            3 => d.clone().prop_map(Step::Data),
            2 => (d.clone(), any::<bool>(), 1..3u32, any::<bool>())
                .prop_map(|(a, r, u, e)| Step::Invite(a, r, u, e)),
            3 => (d.clone(), 0..8usize).prop_map(|(a, c)| Step::Join(a, c)),
            1 => d.clone().prop_map(Step::Request),
            2 => (d.clone(), d.clone(), any::<bool>()).prop_map(|(a, t, r)| Step::SetRole(a, t, r)),
            2 => (d.clone(), d.clone(), 0..6u64).prop_map(|(a, t, c)| Step::Remove(a, t, c)),
            1 => (d.clone(), 0..8usize).prop_map(|(a, c)| Step::Revoke(a, c)),
            1 => d.clone().prop_map(Step::Leave),
            2 => d.prop_map(Step::Ack),
        ]
    }

    fn history(steps: &[Step], first_ops: &[u8]) -> (WorkspaceId, History, Vec<Hlc>) {
        let w = World::new(true);
        let ws = w.ws;
        let obs_code = code(&w, 200);
        let mut logs: Vec<(u8, Vec<Option<ControlOp>>)> =
            DEVICES.iter().map(|&n| (n, vec![])).collect();
        logs[0].1.push(Some(ControlOp::genesis(w.creator.public_key(), [0; 16])));
        logs[0].1.push(Some(obs_code.invite_op(Role::Member, 0, 3, vec![])));
        // Two invites every device may have been given: one for two members, one for a
        // single admin (so joins compete for it).
        let (two, one) = (code(&w, 201), code(&w, 202));
        logs[0].1.push(Some(two.invite_op(Role::Member, 0, 2, vec![])));
        logs[0].1.push(Some(one.invite_op(Role::Admin, 0, 1, vec![])));
        for (n, (d, log)) in logs.iter_mut().enumerate().skip(1) {
            let first = match (first_ops.get(n).copied().unwrap_or(0)) % 3 {
                0 => two.join_op(&key(*d)),
                1 => one.join_op(&key(*d)),
                _ => ControlOp::Request { exchange: key(*d).exchange_key() },
            };
            log.push(Some(first));
        }
        let mut codes: Vec<InviteCode> = vec![two, one];
        let mut stamps = vec![];
        for (n, s) in steps.iter().enumerate() {
            let pick = |i: usize| codes.get(i % codes.len().max(1)).cloned();
            let (author, op) = match s {
                Step::Data(a) => (*a, None),
                Step::Invite(a, admin, uses, expires) => {
                    let c = code(&w, 100 + n as u8);
                    codes.push(c.clone());
                    let role = if *admin { Role::Admin } else { Role::Member };
                    let exp = if *expires { 1000 * (n as u64 + 3) } else { 0 };
                    (*a, Some(c.invite_op(role, exp, *uses, vec![])))
                }
                Step::Join(a, c) => match pick(*c) {
                    Some(c) => (*a, Some(c.join_op(&key(DEVICES[*a])))),
                    None => (*a, None),
                },
                Step::Request(a) => {
                    (*a, Some(ControlOp::Request { exchange: key(DEVICES[*a]).exchange_key() }))
                }
                Step::SetRole(a, t, admin) => {
                    let role = if *admin { Role::Admin } else { Role::Member };
                    (*a, Some(ControlOp::SetRole { target: key(DEVICES[*t]).peer_id(&ws), role }))
                }
                Step::Remove(a, t, cut) => (
                    *a,
                    Some(ControlOp::Remove { target: key(DEVICES[*t]).peer_id(&ws), cut: *cut }),
                ),
                Step::Revoke(a, c) => match pick(*c) {
                    Some(c) => {
                        (*a, Some(ControlOp::RevokeInvite { invite_key: c.key().public_key() }))
                    }
                    None => (*a, None),
                },
                Step::Leave(a) => (*a, Some(ControlOp::Leave)),
                Step::Ack(a) => {
                    // What exists so far of every other device (never the future).
                    let mut cursors: Vec<(PeerId, u64)> = logs
                        .iter()
                        .filter(|(m, l)| *m != DEVICES[*a] && !l.is_empty())
                        .map(|(m, l)| (key(*m).peer_id(&ws), l.len() as u64))
                        .collect();
                    cursors.sort();
                    (*a, Some(ControlOp::Ack { cursors }))
                }
            };
            let log = &mut logs[author].1;
            // Joins and requests only as entry 0; a device's entry 0 otherwise holds data.
            let op = match op {
                Some(ControlOp::Join { .. } | ControlOp::Request { .. }) if !log.is_empty() => None,
                other => other,
            };
            log.push(op);
            stamps.push(Hlc::from_millis(1000 * (n as u64 + 1)));
        }
        for &o in &OBSERVERS {
            logs.push((o, vec![Some(obs_code.join_op(&key(o)))]));
        }
        (ws, History { logs }, stamps)
    }

    /// The ops of a generated entry: the genesis carries the policy beside it.
    fn ops_of(op: ControlOp) -> Vec<ControlOp> {
        match op {
            ControlOp::Genesis { .. } => {
                let policy =
                    ControlOp::Policy { encrypted: false, creator_exchange: key(1).exchange_key() };
                vec![op, policy]
            }
            op => vec![op],
        }
    }

    /// One observer: what it received of each log, the acks it wrote, what it applied.
    struct Observer {
        me: u8,
        received: BTreeMap<u8, usize>,
        acks: Vec<Option<ControlOp>>,
        applied: BTreeMap<u8, u64>,
        log: ControlLog,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn validity_never_flips_at_a_member_that_acks_first(
            steps in proptest::collection::vec(step(), 1..24),
            first in proptest::collection::vec(any::<u8>(), 5),
            order in proptest::collection::vec(any::<u16>(), 400),
        ) {
            let (ws, hist, _) = history(&steps, &first);
            let id = |n: u8| key(n).peer_id(&ws);
            let mut obs: Vec<Observer> = OBSERVERS.iter().map(|&o| {
                // Its own join, entry 0 of its own log, is there from the start.
                let mut log = ControlLog::new();
                let join = hist.logs.iter().find(|(m, _)| *m == o).unwrap().1[0].clone().unwrap();
                log.insert_ops(id(o), 0, Hlc::from_millis(1), vec![join]);
                Observer { me: o, received: BTreeMap::new(), acks: vec![], applied: BTreeMap::new(), log }
            }).collect();
            let mut picks = order.iter().copied().cycle();
            let log_of = |obs: &[Observer], n: u8| -> Vec<Option<ControlOp>> {
                if let Some(o) = obs.iter().find(|o| o.me == n) {
                    // An observer's log: its join, then the acks it wrote.
                    let mut l = hist.logs.iter().find(|(m, _)| *m == n).unwrap().1.clone();
                    l.extend(o.acks.iter().cloned());
                    return l;
                }
                hist.logs.iter().find(|(m, _)| *m == n).unwrap().1.clone()
            };
            let all: Vec<u8> = hist.logs.iter().map(|(n, _)| *n).collect();
            for _ in 0..2000 {
                let who = picks.next().unwrap() as usize % obs.len();
                let origin = all[picks.next().unwrap() as usize % all.len()];
                let source = log_of(&obs, origin);
                let me = obs[who].me;
                let o = &mut obs[who];
                let got = o.received.get(&origin).copied().unwrap_or(0);
                if origin == me || got >= source.len() {
                    continue;
                }
                let entry = source[got].clone();
                // Would storing it cut what this observer applied? Then ack first.
                let mut next_log = o.log.clone();
                if let Some(op) = entry.clone() {
                    next_log.insert_ops(id(origin), got as u64, Hlc::from_millis(1000 * got as u64), ops_of(op));
                }
                let after = next_log.roster(&ws);
                let cuts = o.applied.iter().any(|(n, a)| after.limit(&id(*n)) < *a);
                if cuts {
                    let mut cursors: Vec<(PeerId, u64)> = o.received.iter()
                        .filter(|(_, r)| **r > 0).map(|(n, r)| (id(*n), *r as u64)).collect();
                    cursors.sort();
                    let at = 1 + o.acks.len() as u64;
                    let ack = ControlOp::Ack { cursors };
                    o.log.insert_ops(id(me), at, Hlc::from_millis(1), vec![ack.clone()]);
                    o.acks.push(Some(ack));
                }
                if let Some(op) = entry {
                    o.log.insert_ops(id(origin), got as u64, Hlc::from_millis(1000 * got as u64), ops_of(op));
                }
                o.received.insert(origin, got + 1);
                let roster = o.log.roster(&ws);
                let own_ok = roster.limit(&id(me)) == u64::MAX;
                // Observers are admitted by the creator's entry 1, which no removal can cut
                // (removers' admissions rest on later entries of the creator).
                if o.received.get(&1).copied().unwrap_or(0) >= 2 {
                    prop_assert!(own_ok, "observer {me} lost its own admission");
                }
                for (&n, &r) in &o.received.clone() {
                    let now = (r as u64).min(roster.limit(&id(n)));
                    let was = o.applied.get(&n).copied().unwrap_or(0);
                    if own_ok {
                        prop_assert!(now >= was, "observer {me}: origin {n} went from {was} to {now} applied");
                    }
                    o.applied.insert(n, now);
                }
            }
        }

        #[test]
        fn the_roster_depends_on_the_set_not_the_order_nor_on_claimed_times(
            steps in proptest::collection::vec(step(), 1..24),
            first in proptest::collection::vec(any::<u8>(), 5),
            seed in any::<u64>(),
        ) {
            let (ws, hist, stamps) = history(&steps, &first);
            let _ = stamps;
            let mut entries: Vec<(PeerId, u64, ControlOp)> = vec![];
            for (n, l) in &hist.logs {
                for (i, op) in l.iter().enumerate() {
                    if let Some(op) = op {
                        entries.push((key(*n).peer_id(&ws), i as u64, op.clone()));
                    }
                }
            }
            let mut forward = ControlLog::new();
            for (o, i, op) in &entries {
                forward.insert_ops(*o, *i, Hlc::from_millis(*i), ops_of(op.clone()));
            }
            let mut shuffled = entries.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            // Arrival in another order, with every stamp but the joins' (an invite's expiry
            // is judged against the join's own) moved back or forth: claimed times play no
            // part, so backdating changes nothing.
            let mut backward = ControlLog::new();
            for (o, i, op) in &shuffled {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let hlc = match op {
                    ControlOp::Join { .. } => Hlc::from_millis(*i),
                    _ => Hlc::from_millis((s >> 20) % 10_000_000),
                };
                backward.insert_ops(*o, *i, hlc, ops_of(op.clone()));
            }
            // (`joined_at` only reports the claim.)
            let meaning = |r: Roster| -> Vec<_> {
                r.devices
                    .into_iter()
                    .map(|(id, d)| (id, d.role, d.admitted_by, d.state, d.limit, d.exchange))
                    .collect()
            };
            prop_assert_eq!(meaning(forward.roster(&ws)), meaning(backward.roster(&ws)));
        }
    }
}
