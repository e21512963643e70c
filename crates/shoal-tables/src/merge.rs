//! The pure merge decisions of DESIGN §6, as small types and functions with no storage.
//!
//! Owns: [`survives`], [`lww_wins`], [`MaxFrontier`], [`CounterAdds`], [`CellState`],
//! [`RowState`] (data), and [`NameState`], [`TableDef`], [`ColumnDef`], [`Definitions`],
//! [`defined_after_drop`] (schema).
//!
//! What they guarantee (each is a join-semilattice: applying the same set of writes in any
//! order, with any interleaving of tombstones, gives *equal* states):
//! - A **floor** (`Option<Hlc>`, `None` = no tombstone) is the effective tombstone of a row
//!   or cell: the greatest of the row's deletes, its table's drop and (for cells) its
//!   column's drop. A write survives iff `Some(hlc) > floor` ([`survives`]): at equal HLC
//!   the tombstone wins.
//! - **Canonical state.** Every type forgets what a floor has excluded and keeps only what
//!   can still matter: an LWW cell keeps its winner; a counter keeps the sum of its
//!   increments *per HLC* (a later tombstone excludes all increments of one HLC or none, so
//!   nothing finer is needed); a max cell keeps its Pareto frontier (a write `(h1, v1)` is
//!   dropped when another `(h2, v2)` has `h2 >= h1` and `v2 >= v1`, because whenever
//!   `(h1, v1)` survives a floor, `(h2, v2)` survives it too and is at least as large); a
//!   row keeps its last-write HLC only while it is above the floor. So the state depends on
//!   the set of writes and tombstones, never on their arrival order.
//! - Cell states keep LWW writes, max writes and increments **apart**, so a disagreement
//!   between devices about a column's merge kind loses nothing: the view reads the part
//!   that matches the winning definition ([`CellState::value`]).
//! - Schema: names are LWW registers over `(hlc, name)`; definitions keep, per distinct
//!   definition, the greatest HLC it was declared at; the winner is the greatest
//!   `(hlc, definition bytes)`.
//!
//! Exactly-once application of each entry is the caller's job (the replica guarantees it
//! per `(origin, index)`): counters are not idempotent.
//!
//! Never: looks at wall clocks, devices or arrival order.

use std::collections::BTreeMap;

use shoal_core::Hlc;
use shoal_core::codec::put_varint;

use crate::ids::ColumnId;
use crate::op::CellWrite;
use crate::value::{ColumnType, MergeKind, Value};

/// True iff a write stamped `write` survives the tombstone `floor` (`None` = none). A
/// tombstone wins a tie.
pub fn survives(floor: Option<Hlc>, write: Hlc) -> bool {
    Some(write) > floor
}

/// True iff a write stamped `hlc` to a cell survives its row's delete, its table's drop and
/// its column's drop. The same rule [`RowState::put`] applies, for callers that keep their
/// own state.
pub fn cell_write_survives(
    hlc: Hlc,
    row_tombstone: Option<Hlc>,
    table_dropped: Option<Hlc>,
    column_dropped: Option<Hlc>,
) -> bool {
    survives(row_tombstone.max(table_dropped).max(column_dropped), hlc)
}

/// True iff the LWW write `incoming` beats `current`: greater `(hlc, value)`, values by
/// their total order. Equal pairs do not win (the state would not change anyway).
pub fn lww_wins(current: Option<(Hlc, &Value)>, incoming: (Hlc, &Value)) -> bool {
    match current {
        None => true,
        Some(current) => incoming > current,
    }
}

/// The Pareto frontier of the writes to a max column: sorted by HLC ascending, so values
/// are strictly descending. Its first surviving element holds the greatest surviving value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaxFrontier(Vec<(Hlc, Value)>);

impl MaxFrontier {
    /// An empty frontier.
    pub fn new() -> Self {
        MaxFrontier(Vec::new())
    }

    /// Adds a write; returns false when an existing write dominates it (same or later HLC
    /// and same or greater value), in which case nothing changes.
    pub fn insert(&mut self, hlc: Hlc, value: Value) -> bool {
        if self.0.iter().any(|(h, v)| *h >= hlc && *v >= value) {
            return false;
        }
        self.0.retain(|(h, v)| !(hlc >= *h && value >= *v));
        let at = self.0.partition_point(|(h, _)| *h < hlc);
        self.0.insert(at, (hlc, value));
        true
    }

    /// Forgets writes that do not survive `floor`.
    pub fn prune(&mut self, floor: Option<Hlc>) {
        self.0.retain(|(h, _)| survives(floor, *h));
    }

    /// The greatest value among writes surviving `floor`.
    pub fn max(&self, floor: Option<Hlc>) -> Option<&Value> {
        self.0.iter().find(|(h, _)| survives(floor, *h)).map(|(_, v)| v)
    }

    /// The frontier, by HLC ascending.
    pub fn entries(&self) -> &[(Hlc, Value)] {
        &self.0
    }

    /// True when no write is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The increments of a counter cell, as the wrapping sum of the increments at each HLC.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CounterAdds(BTreeMap<Hlc, i64>);

impl CounterAdds {
    /// No increments.
    pub fn new() -> Self {
        CounterAdds(BTreeMap::new())
    }

    /// Adds an increment stamped `hlc`. Not idempotent: apply each op once.
    pub fn add(&mut self, hlc: Hlc, n: i64) {
        let sum = self.0.entry(hlc).or_insert(0);
        *sum = sum.wrapping_add(n);
    }

    /// Forgets increments that do not survive `floor`.
    pub fn prune(&mut self, floor: Option<Hlc>) {
        self.0.retain(|h, _| survives(floor, *h));
    }

    /// The wrapping sum of the increments surviving `floor` (0 when none).
    pub fn sum(&self, floor: Option<Hlc>) -> i64 {
        self.0
            .iter()
            .filter(|(h, _)| survives(floor, **h))
            .fold(0i64, |acc, (_, n)| acc.wrapping_add(*n))
    }

    /// `(hlc, sum of the increments at that hlc)`, by HLC.
    pub fn entries(&self) -> impl Iterator<Item = (Hlc, i64)> + '_ {
        self.0.iter().map(|(h, n)| (*h, *n))
    }

    /// True when no increment is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Everything kept for one cell, one part per write kind.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CellState {
    /// The winning LWW write, if any survives.
    pub lww: Option<(Hlc, Value)>,
    /// The surviving increments.
    pub adds: CounterAdds,
    /// The surviving max writes' frontier.
    pub max: MaxFrontier,
}

impl CellState {
    /// Applies a write stamped `hlc` unless it does not survive `floor`; returns whether
    /// it was kept.
    pub fn apply(&mut self, hlc: Hlc, write: &CellWrite, floor: Option<Hlc>) -> bool {
        if !survives(floor, hlc) {
            return false;
        }
        match write {
            CellWrite::Set(v) => {
                if lww_wins(self.lww.as_ref().map(|(h, v)| (*h, v)), (hlc, v)) {
                    self.lww = Some((hlc, v.clone()));
                }
            }
            CellWrite::Max(v) => {
                self.max.insert(hlc, v.clone());
            }
            CellWrite::Add(n) => self.adds.add(hlc, *n),
        }
        true
    }

    /// Forgets writes that do not survive `floor`. The LWW winner has the greatest HLC of
    /// all LWW writes, so if it goes, every other did too.
    pub fn prune(&mut self, floor: Option<Hlc>) {
        if self.lww.as_ref().is_some_and(|(h, _)| !survives(floor, *h)) {
            self.lww = None;
        }
        self.adds.prune(floor);
        self.max.prune(floor);
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.lww.is_none() && self.adds.is_empty() && self.max.is_empty()
    }

    /// The visible value for a column merged as `merge`, counting only writes surviving
    /// `floor`: the LWW winner or NULL, the counter sum or 0, the max or NULL.
    pub fn value(&self, merge: MergeKind, floor: Option<Hlc>) -> Value {
        match merge {
            MergeKind::Lww => self
                .lww
                .as_ref()
                .filter(|(h, _)| survives(floor, *h))
                .map_or(Value::Null, |(_, v)| v.clone()),
            MergeKind::Counter => Value::Integer(self.adds.sum(floor)),
            MergeKind::Max => self.max.max(floor).cloned().unwrap_or(Value::Null),
        }
    }
}

/// Everything kept for one row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowState {
    /// The greatest HLC of the row's deletes (not counting a table drop).
    pub tombstone: Option<Hlc>,
    /// The greatest HLC of the row's writes, kept only while it is above the row's floor.
    pub last_write: Option<Hlc>,
    /// The cells with something kept.
    pub cells: BTreeMap<ColumnId, CellState>,
}

impl RowState {
    /// The row's effective tombstone: its latest delete or its table's drop.
    pub fn floor(&self, table_dropped: Option<Hlc>) -> Option<Hlc> {
        self.tombstone.max(table_dropped)
    }

    /// Applies a put stamped `hlc`: ignored entirely unless it survives the row's floor;
    /// otherwise records the row write and every cell surviving its own floor (the row's,
    /// raised by the column's drop from `column_dropped`). Returns whether the row write
    /// was kept.
    pub fn put(
        &mut self,
        hlc: Hlc,
        cells: &[(ColumnId, CellWrite)],
        table_dropped: Option<Hlc>,
        column_dropped: &dyn Fn(ColumnId) -> Option<Hlc>,
    ) -> bool {
        let floor = self.floor(table_dropped);
        if !survives(floor, hlc) {
            return false;
        }
        self.last_write = self.last_write.max(Some(hlc));
        for (column, write) in cells {
            let cell_floor = floor.max(column_dropped(*column));
            if survives(cell_floor, hlc) {
                self.cells.entry(*column).or_default().apply(hlc, write, cell_floor);
            }
        }
        true
    }

    /// Records a delete stamped `hlc` and forgets what it excludes.
    pub fn delete(
        &mut self,
        hlc: Hlc,
        table_dropped: Option<Hlc>,
        column_dropped: &dyn Fn(ColumnId) -> Option<Hlc>,
    ) {
        self.tombstone = self.tombstone.max(Some(hlc));
        self.prune(table_dropped, column_dropped);
    }

    /// Forgets everything at or below the row's floor and each cell's floor, and cells
    /// left empty.
    pub fn prune(
        &mut self,
        table_dropped: Option<Hlc>,
        column_dropped: &dyn Fn(ColumnId) -> Option<Hlc>,
    ) {
        let floor = self.floor(table_dropped);
        if self.last_write.is_some_and(|h| !survives(floor, h)) {
            self.last_write = None;
        }
        self.cells.retain(|column, cell| {
            cell.prune(floor.max(column_dropped(*column)));
            !cell.is_empty()
        });
    }

    /// True iff the row has a write newer than its floor.
    pub fn is_visible(&self, table_dropped: Option<Hlc>) -> bool {
        self.last_write.is_some_and(|h| survives(self.floor(table_dropped), h))
    }

    /// True when nothing is kept (the row can be forgotten).
    pub fn is_empty(&self) -> bool {
        self.tombstone.is_none() && self.last_write.is_none() && self.cells.is_empty()
    }
}

/// A last-writer-wins name: the greatest `(hlc, name)` offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameState {
    /// The HLC of the winning name write.
    pub hlc: Hlc,
    /// The name.
    pub name: String,
}

impl NameState {
    /// Offers a name write to a register; keeps the greater `(hlc, name)` (names compared
    /// bytewise). Returns whether the register changed.
    pub fn offer(slot: &mut Option<NameState>, hlc: Hlc, name: &str) -> bool {
        let wins = match slot {
            None => true,
            Some(cur) => (hlc, name.as_bytes()) > (cur.hlc, cur.name.as_bytes()),
        };
        if wins {
            *slot = Some(NameState { hlc, name: name.to_owned() });
        }
        wins
    }
}

/// A schema definition whose conflicts are decided by its canonical bytes.
pub trait Definition: Ord + Clone {
    /// The canonical bytes compared (after the HLC) to pick the winning definition.
    fn definition_bytes(&self) -> Vec<u8>;
}

/// What a `CreateTable` defines: the primary key's column ids and types, in key order.
/// Names are not part of it (they are LWW registers of their own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableDef {
    /// `(column, type)` of each key column, in key order.
    pub primary_key: Vec<(ColumnId, ColumnType)>,
}

impl Definition for TableDef {
    /// `varint(count) || (u64le(column) || u8(type))*`.
    fn definition_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 9 * self.primary_key.len());
        put_varint(&mut out, self.primary_key.len() as u64);
        for (column, ty) in &self.primary_key {
            out.extend_from_slice(&column.to_le_bytes());
            out.push(ty.code());
        }
        out
    }
}

/// What an `AddColumn` defines: the type and merge kind. The name is not part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ColumnDef {
    /// The declared type.
    pub ty: ColumnType,
    /// The merge kind.
    pub merge: MergeKind,
}

impl Definition for ColumnDef {
    /// `u8(type) || u8(merge)`.
    fn definition_bytes(&self) -> Vec<u8> {
        vec![self.ty.code(), self.merge.code()]
    }
}

/// Every distinct definition declared for one table or column id, with the greatest HLC
/// at which each was declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definitions<D: Definition>(BTreeMap<D, Hlc>);

impl<D: Definition> Default for Definitions<D> {
    fn default() -> Self {
        Definitions(BTreeMap::new())
    }
}

impl<D: Definition> Definitions<D> {
    /// Records a declaration of `def` at `hlc`.
    pub fn record(&mut self, def: D, hlc: Hlc) {
        let at = self.0.entry(def).or_insert(hlc);
        *at = (*at).max(hlc);
    }

    /// The winning definition and its HLC: the greatest `(hlc, definition bytes)`. Its
    /// HLC is also the latest declaration of any definition.
    pub fn winner(&self) -> Option<(&D, Hlc)> {
        self.0
            .iter()
            .max_by(|a, b| (a.1, a.0.definition_bytes()).cmp(&(b.1, b.0.definition_bytes())))
            .map(|(d, h)| (d, *h))
    }

    /// The HLC of the latest declaration (of any definition).
    pub fn latest(&self) -> Option<Hlc> {
        self.0.values().max().copied()
    }

    /// Every distinct definition with its latest HLC, in definition order.
    pub fn all(&self) -> impl Iterator<Item = (&D, Hlc)> + '_ {
        self.0.iter().map(|(d, h)| (d, *h))
    }

    /// How many distinct definitions were declared (more than one is a conflict).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was declared.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// True iff a table or column whose latest declaration is `latest_definition` is visible
/// despite its drop tombstone `dropped`: it must be declared, after the drop (a drop wins
/// a tie).
pub fn defined_after_drop(latest_definition: Option<Hlc>, dropped: Option<Hlc>) -> bool {
    latest_definition.is_some_and(|h| survives(dropped, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Hlc {
        Hlc::from_u64(n)
    }

    #[test]
    fn frontier_keeps_only_undominated_writes() {
        let mut f = MaxFrontier::new();
        assert!(f.insert(h(5), Value::Integer(3)));
        assert!(f.insert(h(3), Value::Integer(9)));
        assert!(!f.insert(h(4), Value::Integer(2)), "dominated by (5,3)");
        assert!(!f.insert(h(5), Value::Integer(3)), "duplicate");
        assert!(f.insert(h(6), Value::Integer(4)), "replaces (5,3)");
        assert_eq!(f.entries(), &[(h(3), Value::Integer(9)), (h(6), Value::Integer(4))]);
        assert_eq!(f.max(None), Some(&Value::Integer(9)));
        assert_eq!(f.max(Some(h(3))), Some(&Value::Integer(4)));
        assert_eq!(f.max(Some(h(6))), None);
    }

    #[test]
    fn lww_orders_by_hlc_then_value() {
        let a = Value::Integer(1);
        let b = Value::Integer(2);
        assert!(lww_wins(None, (h(1), &a)));
        assert!(lww_wins(Some((h(1), &a)), (h(1), &b)));
        assert!(!lww_wins(Some((h(1), &b)), (h(1), &a)));
        assert!(lww_wins(Some((h(1), &b)), (h(2), &a)));
        assert!(!lww_wins(Some((h(1), &a)), (h(1), &a)));
    }

    #[test]
    fn definition_winner_is_greatest_hlc_then_bytes() {
        let mut d = Definitions::default();
        let int = ColumnDef { ty: ColumnType::Integer, merge: MergeKind::Lww };
        let text = ColumnDef { ty: ColumnType::Text, merge: MergeKind::Lww };
        d.record(text, h(5));
        d.record(int, h(5));
        assert_eq!(d.winner(), Some((&text, h(5))));
        d.record(int, h(6));
        assert_eq!(d.winner(), Some((&int, h(6))));
        assert_eq!(d.latest(), Some(h(6)));
        assert!(defined_after_drop(Some(h(6)), Some(h(5))));
        assert!(!defined_after_drop(Some(h(6)), Some(h(6))));
        assert!(!defined_after_drop(None, None));
    }
}
