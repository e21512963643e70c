//! Random writes an app would make, on a device's current schema.
//!
//! Owns: [`random_write`] — picks a table operation (declare, alter, drop, re-create, put,
//! increment, delete, a transaction of several) over a small pool of names, keys and
//! values, so that devices collide often: the same table declared differently offline,
//! the same row written, deleted and revived, names reused after a drop.
//!
//! Invariants: every call makes at most one commit; an error the API documents for a bad
//! write (an unknown table, a wrong type, a refused schema change…) is a *refusal*, and
//! any other error is returned as a failure of the run.
//!
//! Never: writes through anything but the public `Workspace` API.

use rand::RngExt;
use rand::rngs::StdRng;
use shoal::{ColumnType, Commit, Error, MergeKind, TableSpec, Value, Workspace};
use shoal_tables::{ColumnView, TableView};

const TABLES: &[&str] = &["notes", "tags", "items", "Notes"];
const COLUMNS: &[&str] = &["a", "b", "c", "title", "n", "m", "A"];
const KEY_TYPES: &[ColumnType] = &[ColumnType::Text, ColumnType::Integer, ColumnType::Any];

/// What a write did.
pub(crate) enum Written {
    /// It committed this entry.
    Committed(Commit),
    /// Nothing to write (an idempotent declaration, an empty transaction).
    Nothing,
    /// The API refused it, as documented (the reason, for the trace).
    Refused(String),
    /// The device found its own log forked (a restored backup that had written): it
    /// writes nothing until it recovers.
    Forked(String),
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn name(rng: &mut StdRng, names: &[&'static str]) -> &'static str {
    names[rng.random_range(0..names.len())]
}

fn value_of(rng: &mut StdRng, ty: ColumnType) -> Value {
    if rng.random_bool(0.08) {
        return Value::Null;
    }
    let ty = match ty {
        ColumnType::Any => {
            *pick(rng, &[ColumnType::Integer, ColumnType::Real, ColumnType::Text, ColumnType::Blob])
        }
        other => other,
    };
    match ty {
        ColumnType::Integer => Value::Integer(rng.random_range(-3..40)),
        ColumnType::Real => {
            Value::real(*pick(rng, &[0.0, -0.0, 1.5, -2.25, f64::NAN, f64::INFINITY, 1e300]))
        }
        ColumnType::Text => Value::Text(pick(rng, &["", "x", "hello", "é", "a b"]).to_string()),
        ColumnType::Blob => Value::Blob(vec![rng.random_range(0..4u8); rng.random_range(0..3)]),
        ColumnType::Any => Value::Null,
    }
}

fn key_of(rng: &mut StdRng, ty: ColumnType) -> Value {
    match ty {
        ColumnType::Integer => Value::Integer(rng.random_range(0..6)),
        ColumnType::Text => Value::Text(pick(rng, &["k0", "k1", "k2", "k3", "k4"]).to_string()),
        ColumnType::Real => Value::real(rng.random_range(0..4) as f64),
        ColumnType::Blob => Value::Blob(vec![rng.random_range(0..4u8)]),
        ColumnType::Any => {
            if rng.random_bool(0.5) {
                Value::Integer(rng.random_range(0..4))
            } else {
                Value::Text(pick(rng, &["k0", "k1", "k2"]).to_string())
            }
        }
    }
}

fn merge_and_type(rng: &mut StdRng) -> (ColumnType, MergeKind) {
    match rng.random_range(0..6) {
        0 => (ColumnType::Integer, MergeKind::Counter),
        1 => (*pick(rng, &ColumnType::ALL), MergeKind::Max),
        _ => (*pick(rng, &ColumnType::ALL), MergeKind::Lww),
    }
}

/// True for errors the API documents as refusals of a bad write.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::UnknownTable { .. }
            | Error::UnknownColumn { .. }
            | Error::WrongType { .. }
            | Error::MissingKey { .. }
            | Error::KeyArity { .. }
            | Error::WrongMerge { .. }
            | Error::SchemaMismatch { .. }
            | Error::InvalidTable { .. }
            | Error::SchemaChange { .. }
            | Error::InvalidName(_)
            | Error::InvalidValue(_)
            // A device of an encrypted workspace before its keys arrive.
            | Error::NoKey
    )
}

fn is_fork(e: &Error) -> bool {
    matches!(e, Error::Forked(_) | Error::Sync(shoal_core::SyncError::Forked { .. }))
}

fn outcome(r: shoal::Result<Option<Commit>>) -> Result<Written, String> {
    match r {
        Ok(Some(c)) => Ok(Written::Committed(c)),
        Ok(None) => Ok(Written::Nothing),
        Err(e) if is_refusal(&e) => Ok(Written::Refused(e.to_string())),
        Err(e) if is_fork(&e) => Ok(Written::Forked(e.to_string())),
        Err(e) => Err(format!("a write failed: {e}")),
    }
}

fn key_cells(rng: &mut StdRng, t: &TableView) -> Vec<(String, Value)> {
    t.columns
        .iter()
        .filter(|c| c.merge.is_none())
        .map(|c| (c.name.clone(), key_of(rng, c.ty)))
        .collect()
}

fn declare_spec(rng: &mut StdRng, wide: bool) -> TableSpec {
    let mut spec = TableSpec::new(name(rng, TABLES)).key("id", *pick(rng, KEY_TYPES));
    if rng.random_bool(0.15) {
        spec = spec.key("k2", ColumnType::Integer);
    }
    if wide {
        // Near the width budget: a table that spreads over several physical shards.
        let n = rng.random_range(300..=shoal_tables::MAX_COLUMNS_PER_TABLE - 2);
        for i in 0..n {
            spec = spec.column(format!("w{i}"), ColumnType::Integer);
        }
        return spec;
    }
    for _ in 0..rng.random_range(1..4) {
        let name = name(rng, COLUMNS);
        if spec.columns.iter().any(|c| c.0.eq_ignore_ascii_case(name)) {
            continue;
        }
        let (ty, merge) = merge_and_type(rng);
        spec = match merge {
            MergeKind::Counter => spec.counter(name),
            MergeKind::Max => spec.max(name, ty),
            MergeKind::Lww => spec.column(name, ty),
        };
    }
    spec
}

/// Makes one random write on `ws` (see the module doc). `wide` allows a declaration near
/// the width budget.
pub(crate) fn random_write(
    rng: &mut StdRng,
    ws: &Workspace,
    wide: bool,
) -> Result<Written, String> {
    let schema = ws.schema().map_err(|e| format!("reading the schema: {e}"))?;
    let tables: Vec<&TableView> = schema.tables.iter().collect();
    if tables.is_empty() || rng.random_bool(0.08) {
        let wide = wide && rng.random_bool(0.3);
        return outcome(ws.declare(&declare_spec(rng, wide)));
    }
    let t = *pick(rng, &tables);
    let others: Vec<&ColumnView> = t.columns.iter().filter(|c| c.merge.is_some()).collect();
    match rng.random_range(0..100) {
        0..=5 => {
            let (ty, merge) = merge_and_type(rng);
            outcome(ws.add_column(&t.name, name(rng, COLUMNS), ty, merge).map(Some))
        }
        6..=8 if !others.is_empty() => {
            let c = pick(rng, &others);
            outcome(ws.rename_column(&t.name, &c.name, name(rng, COLUMNS)).map(Some))
        }
        9..=11 if !others.is_empty() => {
            let c = pick(rng, &others);
            outcome(ws.drop_column(&t.name, &c.name).map(Some))
        }
        12..=13 => outcome(ws.rename_table(&t.name, name(rng, TABLES)).map(Some)),
        14..=16 => outcome(ws.drop_table(&t.name).map(Some)),
        _ => {
            let mut tx = ws.transaction().map_err(|e| format!("a transaction: {e}"))?;
            for _ in 0..rng.random_range(1..4) {
                let r = match rng.random_range(0..10) {
                    0..=5 => {
                        let mut cells = key_cells(rng, t);
                        for c in &others {
                            if c.merge != Some(MergeKind::Counter) && rng.random_bool(0.6) {
                                cells.push((c.name.clone(), value_of(rng, c.ty)));
                            }
                        }
                        let cells: Vec<(&str, Value)> =
                            cells.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
                        tx.put(&t.name, &cells).map(|_| ())
                    }
                    6..=7 => {
                        let counters: Vec<&&ColumnView> =
                            others.iter().filter(|c| c.merge == Some(MergeKind::Counter)).collect();
                        if counters.is_empty() {
                            continue;
                        }
                        let c = pick(rng, &counters);
                        let key: Vec<Value> =
                            key_cells(rng, t).into_iter().map(|(_, v)| v).collect();
                        tx.increment(&t.name, &key, &c.name, rng.random_range(-5..10)).map(|_| ())
                    }
                    _ => {
                        let key: Vec<Value> =
                            key_cells(rng, t).into_iter().map(|(_, v)| v).collect();
                        tx.delete(&t.name, &key).map(|_| ())
                    }
                };
                if let Err(e) = r {
                    // The transaction is dropped uncommitted.
                    return if is_refusal(&e) {
                        Ok(Written::Refused(e.to_string()))
                    } else if is_fork(&e) {
                        Ok(Written::Forked(e.to_string()))
                    } else {
                        Err(format!("a write failed: {e}"))
                    };
                }
            }
            outcome(tx.commit())
        }
    }
}
