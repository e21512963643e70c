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

    #[test]
    fn survives_is_strictly_above_the_floor() {
        assert!(survives(None, h(0)), "no tombstone: every write survives");
        assert!(survives(Some(h(4)), h(5)));
        assert!(!survives(Some(h(5)), h(5)), "a tombstone wins a tie");
        assert!(!survives(Some(h(6)), h(5)));
    }

    #[test]
    fn cell_write_survives_each_floor_and_loses_ties() {
        assert!(cell_write_survives(h(5), None, None, None));
        // Each of the three floors alone: above it survives, at it or below it does not.
        for i in 0..3 {
            let floors = |f: Option<Hlc>| {
                let mut v = [None, None, None];
                v[i] = f;
                v
            };
            let [r, t, c] = floors(Some(h(4)));
            assert!(cell_write_survives(h(5), r, t, c), "floor {i} below");
            let [r, t, c] = floors(Some(h(5)));
            assert!(!cell_write_survives(h(5), r, t, c), "floor {i} tie");
            let [r, t, c] = floors(Some(h(6)));
            assert!(!cell_write_survives(h(5), r, t, c), "floor {i} above");
        }
        // The greatest floor decides, wherever it is.
        assert!(!cell_write_survives(h(5), Some(h(1)), Some(h(2)), Some(h(7))));
        assert!(!cell_write_survives(h(5), Some(h(7)), Some(h(2)), Some(h(1))));
        assert!(!cell_write_survives(h(5), Some(h(1)), Some(h(7)), Some(h(2))));
        assert!(cell_write_survives(h(8), Some(h(1)), Some(h(7)), Some(h(2))));
    }

    #[test]
    fn frontier_prune_and_emptiness() {
        let mut f = MaxFrontier::new();
        assert!(f.is_empty());
        assert_eq!(f.entries(), &[]);
        assert_eq!(f.max(None), None);
        assert!(f.insert(h(2), Value::Integer(5)));
        assert!(!f.is_empty());
        // Same HLC, greater value: replaces; same HLC, smaller value: dominated.
        assert!(f.insert(h(2), Value::Integer(6)));
        assert!(!f.insert(h(2), Value::Integer(4)));
        // Later and greater: replaces everything before it.
        assert!(f.insert(h(3), Value::Integer(7)));
        assert_eq!(f.entries(), &[(h(3), Value::Integer(7))]);
        // Earlier and greater, then a later smaller one: both kept, by HLC.
        assert!(f.insert(h(1), Value::Integer(9)));
        assert!(f.insert(h(4), Value::Integer(0)));
        assert_eq!(
            f.entries(),
            &[(h(1), Value::Integer(9)), (h(3), Value::Integer(7)), (h(4), Value::Integer(0))]
        );
        assert_eq!(f.max(Some(h(1))), Some(&Value::Integer(7)));
        let mut p = f.clone();
        p.prune(Some(h(1)));
        assert_eq!(p.entries(), &[(h(3), Value::Integer(7)), (h(4), Value::Integer(0))]);
        p.prune(None);
        assert_eq!(p.entries().len(), 2, "no floor prunes nothing");
        p.prune(Some(h(4)));
        assert!(p.is_empty(), "the tie goes to the tombstone");
        assert_eq!(MaxFrontier::new(), MaxFrontier::default());
    }

    #[test]
    fn counter_sums_per_hlc_above_the_floor() {
        let mut c = CounterAdds::new();
        assert!(c.is_empty());
        assert_eq!(c.sum(None), 0);
        c.add(h(2), 3);
        c.add(h(2), 4);
        c.add(h(5), -10);
        c.add(h(7), i64::MAX);
        c.add(h(7), 2);
        assert!(!c.is_empty());
        assert_eq!(
            c.entries().collect::<Vec<_>>(),
            [(h(2), 7), (h(5), -10), (h(7), i64::MAX.wrapping_add(2))]
        );
        assert_eq!(c.sum(None), 7i64.wrapping_sub(10).wrapping_add(i64::MIN + 1));
        assert_eq!(c.sum(Some(h(2))), (-10i64).wrapping_add(i64::MIN + 1));
        assert_eq!(c.sum(Some(h(6))), i64::MIN + 1);
        assert_eq!(c.sum(Some(h(7))), 0);
        let mut p = c.clone();
        p.prune(Some(h(5)));
        assert_eq!(p.entries().collect::<Vec<_>>(), [(h(7), i64::MIN + 1)]);
        p.prune(Some(h(7)));
        assert!(p.is_empty());
        // A sum of zero is kept as an entry.
        let mut z = CounterAdds::new();
        z.add(h(1), 5);
        z.add(h(1), -5);
        assert_eq!(z.entries().collect::<Vec<_>>(), [(h(1), 0)]);
        assert!(!z.is_empty());
        assert_eq!(CounterAdds::new(), CounterAdds::default());
    }

    #[test]
    fn cell_keeps_each_kind_apart_and_reads_the_one_asked() {
        let mut c = CellState::default();
        assert!(c.is_empty());
        assert_eq!(c.value(MergeKind::Lww, None), Value::Null);
        assert_eq!(c.value(MergeKind::Counter, None), Value::Integer(0));
        assert_eq!(c.value(MergeKind::Max, None), Value::Null);
        assert!(!c.apply(h(3), &CellWrite::Set(Value::Integer(1)), Some(h(3))), "tie");
        assert!(c.is_empty());
        assert!(c.apply(h(4), &CellWrite::Set(Value::Integer(1)), Some(h(3))));
        assert_eq!(c.lww, Some((h(4), Value::Integer(1))));
        assert!(!c.is_empty());
        // An older LWW write does not win.
        c.apply(h(3), &CellWrite::Set(Value::Integer(9)), None);
        assert_eq!(c.lww, Some((h(4), Value::Integer(1))));
        assert!(c.apply(h(6), &CellWrite::Max(Value::Integer(8)), None));
        assert!(c.apply(h(5), &CellWrite::Add(2), None));
        assert_eq!(c.value(MergeKind::Lww, None), Value::Integer(1));
        assert_eq!(c.value(MergeKind::Counter, None), Value::Integer(2));
        assert_eq!(c.value(MergeKind::Max, None), Value::Integer(8));
        // Reading under a floor counts only what survives it.
        assert_eq!(c.value(MergeKind::Lww, Some(h(4))), Value::Null);
        assert_eq!(c.value(MergeKind::Counter, Some(h(5))), Value::Integer(0));
        assert_eq!(c.value(MergeKind::Max, Some(h(5))), Value::Integer(8));
        assert_eq!(c.value(MergeKind::Max, Some(h(6))), Value::Null);
        // Each part alone makes the cell non-empty.
        for only in [CellWrite::Set(Value::Null), CellWrite::Max(Value::Null), CellWrite::Add(0)] {
            let mut one = CellState::default();
            assert!(one.apply(h(1), &only, None));
            assert!(!one.is_empty(), "{only:?}");
        }
        // Pruning forgets what a floor excludes, part by part.
        let mut p = c.clone();
        p.prune(Some(h(4)));
        assert_eq!(p.lww, None);
        assert_eq!(p.adds.entries().collect::<Vec<_>>(), [(h(5), 2)]);
        assert!(!p.is_empty());
        let mut p = c.clone();
        p.prune(Some(h(3)));
        assert_eq!(p, c, "everything is above h3");
        p.prune(Some(h(5)));
        assert_eq!((p.lww.is_none(), p.adds.is_empty(), p.max.is_empty()), (true, true, false));
        p.prune(Some(h(6)));
        assert!(p.is_empty());
    }

    #[test]
    fn row_put_delete_prune_and_visibility() {
        let no_drops = |_: ColumnId| None;
        let a = ColumnId(1);
        let b = ColumnId(2);
        let set = |n| CellWrite::Set(Value::Integer(n));
        let mut r = RowState::default();
        assert!(r.is_empty());
        assert!(!r.is_visible(None));
        assert_eq!(r.floor(None), None);
        assert_eq!(r.floor(Some(h(3))), Some(h(3)));
        // A put at or below the table drop is ignored entirely.
        assert!(!r.put(h(3), &[(a, set(1))], Some(h(3)), &no_drops));
        assert!(r.is_empty());
        assert!(r.put(h(4), &[(a, set(1))], Some(h(3)), &no_drops));
        assert_eq!(r.last_write, Some(h(4)));
        assert!(r.is_visible(Some(h(3))));
        assert!(!r.is_visible(Some(h(4))), "a drop at the write's HLC hides the row");
        // The last write only moves forward.
        assert!(r.put(h(2), &[], None, &no_drops));
        assert_eq!(r.last_write, Some(h(4)));
        // A cell at or below its column's drop is not recorded; the row write still is.
        let drop_b = |c: ColumnId| if c == b { Some(h(6)) } else { None };
        assert!(r.put(h(6), &[(a, set(2)), (b, set(3))], None, &drop_b));
        assert_eq!(r.last_write, Some(h(6)));
        assert_eq!(r.cells.keys().copied().collect::<Vec<_>>(), [a]);
        assert_eq!(r.cells[&a].lww, Some((h(6), Value::Integer(2))));
        assert!(r.put(h(7), &[(b, set(3))], None, &drop_b));
        assert_eq!(r.cells[&b].lww, Some((h(7), Value::Integer(3))));
        // A delete below the last write keeps the row visible and forgets older cells.
        r.delete(h(6), None, &no_drops);
        assert_eq!(r.tombstone, Some(h(6)));
        assert_eq!(r.last_write, Some(h(7)));
        assert!(r.is_visible(None));
        assert_eq!(r.cells.keys().copied().collect::<Vec<_>>(), [b]);
        // An older delete does not lower the tombstone.
        r.delete(h(1), None, &no_drops);
        assert_eq!(r.tombstone, Some(h(6)));
        // The table drop raises the floor when pruning.
        let mut d = r.clone();
        d.prune(Some(h(7)), &no_drops);
        assert_eq!((d.tombstone, d.last_write, d.cells.len()), (Some(h(6)), None, 0));
        assert!(!d.is_visible(None));
        assert!(!d.is_empty(), "the tombstone is kept");
        // A column drop prunes that column's cells only.
        let mut c = r.clone();
        c.put(h(8), &[(a, set(4))], None, &no_drops);
        c.prune(None, &|col| if col == b { Some(h(7)) } else { None });
        assert_eq!(c.cells.keys().copied().collect::<Vec<_>>(), [a]);
        assert_eq!(c.last_write, Some(h(8)));
        // A delete at the last write's HLC wins the tie.
        r.delete(h(7), None, &no_drops);
        assert_eq!((r.last_write, r.cells.len()), (None, 0));
        assert!(!r.is_visible(None));
        assert!(!r.is_empty());
        // Each part alone makes a row non-empty.
        let only_write = RowState { last_write: Some(h(1)), ..RowState::default() };
        assert!(!only_write.is_empty());
        let mut only_cell = RowState::default();
        only_cell.cells.insert(a, CellState::default());
        assert!(!only_cell.is_empty());
    }

    #[test]
    fn name_register_keeps_the_greatest_hlc_then_name() {
        let mut slot = None;
        assert!(NameState::offer(&mut slot, h(5), "b"));
        assert_eq!(slot, Some(NameState { hlc: h(5), name: "b".into() }));
        assert!(!NameState::offer(&mut slot, h(5), "b"), "an equal write changes nothing");
        assert!(!NameState::offer(&mut slot, h(5), "a"), "equal HLC, smaller name");
        assert!(!NameState::offer(&mut slot, h(4), "z"), "older, whatever the name");
        assert_eq!(slot, Some(NameState { hlc: h(5), name: "b".into() }));
        assert!(NameState::offer(&mut slot, h(5), "c"), "equal HLC, greater name");
        assert!(NameState::offer(&mut slot, h(6), "a"), "newer, whatever the name");
        assert_eq!(slot, Some(NameState { hlc: h(6), name: "a".into() }));
        // Names compare bytewise: "Z" (0x5a) < "a" (0x61), "é" (0xc3..) > "z".
        assert!(!NameState::offer(&mut slot, h(6), "Z"));
        assert!(NameState::offer(&mut slot, h(6), "é"));
        assert_eq!(slot.map(|s| s.name), Some("é".to_owned()));
    }

    #[test]
    fn definition_bytes_are_the_documented_forms() {
        let def = TableDef {
            primary_key: vec![(ColumnId(0x0102), ColumnType::Text), (ColumnId(7), ColumnType::Any)],
        };
        assert_eq!(
            def.definition_bytes(),
            [2, 2, 1, 0, 0, 0, 0, 0, 0, 3, 7, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        let col = ColumnDef { ty: ColumnType::Integer, merge: MergeKind::Counter };
        assert_eq!(col.definition_bytes(), [1, 1]);
        let col = ColumnDef { ty: ColumnType::Blob, merge: MergeKind::Max };
        assert_eq!(col.definition_bytes(), [4, 2]);
    }

    #[test]
    fn table_definition_ties_go_to_the_greater_bytes_not_the_derived_order() {
        // By the derived order `one` > `two` (column 5 > column 1); by the bytes `two` wins
        // (count 2 > count 1). At equal HLCs the bytes decide.
        let one = TableDef { primary_key: vec![(ColumnId(5), ColumnType::Integer)] };
        let two = TableDef {
            primary_key: vec![(ColumnId(1), ColumnType::Integer), (ColumnId(2), ColumnType::Text)],
        };
        assert!(one > two && one.definition_bytes() < two.definition_bytes());
        let mut d = Definitions::default();
        d.record(one.clone(), h(5));
        d.record(two.clone(), h(5));
        assert_eq!(d.winner(), Some((&two, h(5))));
        // Little-endian ids: 0x0100 encodes as 00 01 .., below 0x01's 01 00 ...
        let lo = TableDef { primary_key: vec![(ColumnId(0x01), ColumnType::Any)] };
        let hi = TableDef { primary_key: vec![(ColumnId(0x0100), ColumnType::Any)] };
        let mut d = Definitions::default();
        d.record(hi.clone(), h(2));
        d.record(lo.clone(), h(2));
        assert_eq!(d.winner(), Some((&lo, h(2))));
        // A later declaration wins whatever its bytes.
        d.record(hi.clone(), h(3));
        assert_eq!(d.winner(), Some((&hi, h(3))));
    }

    #[test]
    fn definitions_keep_each_distinct_definition_at_its_latest_hlc() {
        let mut d: Definitions<ColumnDef> = Definitions::default();
        assert!(d.is_empty());
        assert_eq!(d.len(), 0);
        assert_eq!(d.winner(), None);
        assert_eq!(d.latest(), None);
        let int = ColumnDef { ty: ColumnType::Integer, merge: MergeKind::Lww };
        let max = ColumnDef { ty: ColumnType::Any, merge: MergeKind::Max };
        d.record(int, h(4));
        d.record(int, h(2));
        assert!(!d.is_empty());
        assert_eq!(d.len(), 1);
        assert_eq!(d.all().collect::<Vec<_>>(), [(&int, h(4))], "the latest HLC is kept");
        d.record(max, h(3));
        assert_eq!(d.len(), 2);
        assert_eq!(d.all().collect::<Vec<_>>(), [(&max, h(3)), (&int, h(4))]);
        assert_eq!(d.winner(), Some((&int, h(4))));
        assert_eq!(d.latest(), Some(h(4)));
        d.record(max, h(9));
        assert_eq!(d.latest(), Some(h(9)));
        assert_eq!(d.winner(), Some((&max, h(9))));
        assert!(defined_after_drop(Some(h(1)), None));
        assert!(!defined_after_drop(None, Some(h(1))));
        assert!(!defined_after_drop(Some(h(1)), Some(h(2))));
    }
}
