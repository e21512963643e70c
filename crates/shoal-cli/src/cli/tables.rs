//! `shoal table create | alter | list`: declaring tables, changing them, and showing the
//! schema with its conflicts.

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use shoal::tables::TableView;
use shoal::{ColumnType, MergeKind, Schema, TableSpec};

use super::args::{ColumnArgs, TableAlterArgs, TableCreateArgs};
use super::out::{Out, name_text};
use super::values::{parse_column_spec, parse_type};
use super::{Ctx, Outcome};

/// `shoal table create`.
pub fn create(ctx: &mut Ctx, a: TableCreateArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let mut spec = TableSpec::new(&a.name);
    for k in &a.key {
        let (name, ty) = parse_column_spec(k, "key")?;
        spec = spec.key(name, ty);
    }
    let matches = sub_matches(ctx, "create")?;
    spec.columns = ordered_columns(&matches, &a.columns)?;
    let commit = ws.declare(&spec)?;
    let schema = ws.schema()?;
    let table = schema.table_or_err(&a.name)?;
    if commit.is_none() {
        ctx.out
            .line(format!("table {} already exists as declared; nothing written", table.name))?;
    }
    show_table(&mut ctx.out, table)?;
    Ok(Outcome::Ok)
}

/// `shoal table alter`: each change is one entry, in this order: columns added, renamed,
/// dropped, then the table renamed or dropped.
pub fn alter(ctx: &mut Ctx, a: TableAlterArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let matches = sub_matches(ctx, "alter")?;
    let added = ordered_columns(&matches, &a.columns)?;
    let renames = a
        .rename_column
        .iter()
        .map(|r| {
            r.split_once('=').ok_or_else(|| {
                anyhow!("--rename-column {r:?}: write OLD=NEW, e.g. --rename-column title=name")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if added.is_empty()
        && renames.is_empty()
        && a.drop_column.is_empty()
        && a.rename.is_none()
        && !a.drop
    {
        bail!(
            "nothing to change: give --column, --counter, --max, --rename-column, \
             --drop-column, --rename or --drop"
        );
    }
    let mut name = a.name.clone();
    for (column, ty, merge) in &added {
        ws.add_column(&name, column, *ty, *merge)?;
    }
    for (old, new) in renames {
        ws.rename_column(&name, old, new)?;
    }
    for column in &a.drop_column {
        ws.drop_column(&name, column)?;
    }
    if let Some(new) = &a.rename {
        ws.rename_table(&name, new)?;
        name = new.clone();
    }
    if a.drop {
        ws.drop_table(&name)?;
        ctx.out.line(format!("dropped table {name}"))?;
        ctx.out.emit("dropped", json!({ "table": name }))?;
        return Ok(Outcome::Ok);
    }
    let schema = ws.schema()?;
    let table = schema.table_or_err(&name)?;
    show_table(&mut ctx.out, table)?;
    Ok(Outcome::Ok)
}

/// `shoal table list`.
pub fn list(ctx: &mut Ctx) -> Result<Outcome> {
    let ws = ctx.open()?;
    let schema = ws.schema()?;
    if schema.tables.is_empty() {
        ctx.out.line("no tables (create one with `shoal table create`)")?;
    }
    for (i, t) in schema.tables.iter().enumerate() {
        if i > 0 {
            ctx.out.line("")?;
        }
        show_table(&mut ctx.out, t)?;
    }
    show_conflicts(&mut ctx.out, &schema)?;
    Ok(Outcome::Ok)
}

/// Schema conflicts: a `conflict` envelope each, or lines for people.
pub fn show_conflicts(out: &mut Out, schema: &Schema) -> Result<()> {
    if !schema.conflicts.is_empty() {
        out.line("")?;
        out.line("schema conflicts (resolved the same way on every device; no data dropped):")?;
    }
    for c in &schema.conflicts {
        out.line(format!("  {}", c.message))?;
        let table = schema.tables.iter().find(|t| t.id == c.table).map(|t| t.name.clone());
        out.emit(
            "conflict",
            json!({
                "table": table,
                "table_id": c.table.to_string(),
                "column_id": c.column.map(|id| id.to_string()),
                "kind": format!("{:?}", c.kind),
                "message": c.message,
            }),
        )?;
    }
    Ok(())
}

/// One table: a `table` envelope, or its columns for people.
pub fn show_table(out: &mut Out, t: &TableView) -> Result<()> {
    let columns: Vec<serde_json::Value> = t
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "id": c.id.to_string(),
                "type": c.ty.sql_name(),
                "merge": c.merge.map_or("key".to_owned(), |m| m.to_string()),
            })
        })
        .collect();
    out.emit("table", json!({ "name": t.name, "id": t.id.to_string(), "columns": columns }))?;
    out.line(format!("table {} (id {})", t.name, t.id))?;
    let rows: Vec<Vec<String>> = t
        .columns
        .iter()
        .map(|c| {
            let merge = match c.merge {
                None => "key".to_owned(),
                Some(MergeKind::Lww) => "lww (last writer wins)".to_owned(),
                Some(MergeKind::Counter) => "counter (increments add up)".to_owned(),
                Some(MergeKind::Max) => "max (greatest value wins)".to_owned(),
            };
            vec![format!("  {}", name_text(&c.name)), c.ty.sql_name().to_owned(), merge]
        })
        .collect();
    out.table(&["  column", "type", "merge"], &rows)?;
    Ok(())
}

fn sub_matches(ctx: &Ctx, name: &str) -> Result<clap::ArgMatches> {
    ctx.matches
        .subcommand_matches("table")
        .and_then(|m| m.subcommand_matches(name))
        .cloned()
        .ok_or_else(|| anyhow!("bug: no matches for `table {name}`"))
}

/// The columns of --column, --counter and --max in the order they were typed (the order
/// they appear in the table).
fn ordered_columns(
    matches: &clap::ArgMatches,
    a: &ColumnArgs,
) -> Result<Vec<(String, ColumnType, MergeKind)>> {
    let indices = |id: &str| -> Vec<usize> {
        matches.indices_of(id).map(|i| i.collect()).unwrap_or_default()
    };
    let mut out: Vec<(usize, (String, ColumnType, MergeKind))> = Vec::new();
    for (i, text) in indices("column").into_iter().zip(&a.column) {
        let (name, ty) = parse_column_spec(text, "column")?;
        out.push((i, (name, ty, MergeKind::Lww)));
    }
    for (i, text) in indices("counter").into_iter().zip(&a.counter) {
        // `votes` or `votes:integer`; a counter is always INTEGER.
        let (name, ty) = match text.split_once(':') {
            Some((n, t)) => (n.to_owned(), parse_type(t)?),
            None => (text.clone(), ColumnType::Integer),
        };
        if ty != ColumnType::Integer {
            bail!("--counter {text:?}: a counter column is INTEGER");
        }
        out.push((i, (name, ty, MergeKind::Counter)));
    }
    for (i, text) in indices("max").into_iter().zip(&a.max) {
        let (name, ty) = parse_column_spec(text, "max")?;
        out.push((i, (name, ty, MergeKind::Max)));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}
