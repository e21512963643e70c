//! Row commands: `put`, `get`, `delete`, `sql` and `watch`.
//!
//! `watch` re-queries the table whenever the workspace file's cursors move — which the
//! replica notices for commits of *any* process (it polls SQLite's `data_version`) — and
//! prints the rows that appeared, changed or disappeared. The in-process
//! `Workspace::watch` would miss commits made by other processes (`shoal put`, a `shoal
//! sync --watch` running beside it), so it is not used here. The cost is a copy of the
//! watched table in memory.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use futures::{FutureExt, StreamExt};
use serde_json::json;
use shoal::core::HasCursors;
use shoal::tables::{RowKey, TableId};
use shoal::{Commit, Value, Workspace};

use super::args::{KeyArgs, PutArgs, SqlArgs, WatchArgs};
use super::out::{self, key_text, row_json, time_text, value_json, value_quoted, value_text};
use super::values::{Assignment, parse_any, parse_assignment, parse_json_row, parse_key};
use super::{Ctx, Outcome};

/// `shoal put`: all assignments in one transaction.
pub fn put(ctx: &mut Ctx, a: PutArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let schema = ws.schema()?;
    let t = schema.table_or_err(&a.table)?;
    let mut assignments = Vec::new();
    if let Some(row) = &a.row {
        assignments.extend(parse_json_row(t, row)?);
    }
    for arg in &a.assignments {
        assignments.push(parse_assignment(t, arg)?);
    }
    if assignments.is_empty() {
        bail!("nothing to write: give COLUMN=VALUE (or COLUMN+=N for a counter), or --row JSON");
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut sets: Vec<(String, Value)> = Vec::new();
    let mut adds: Vec<(String, i64)> = Vec::new();
    for assignment in assignments {
        let name = match &assignment {
            Assignment::Set(n, _) | Assignment::Add(n, _) => n.clone(),
        };
        if !seen.insert(name.clone()) {
            bail!("column {}.{name} is given twice", t.name);
        }
        match assignment {
            Assignment::Set(n, v) => sets.push((n, v)),
            Assignment::Add(n, by) => adds.push((n, by)),
        }
    }
    let key_columns: Vec<&str> =
        t.columns.iter().filter(|c| c.merge.is_none()).map(|c| c.name.as_str()).collect();
    let mut key = Vec::new();
    for c in &key_columns {
        match sets.iter().find(|(n, _)| n == c) {
            Some((_, v)) => key.push(v.clone()),
            None => {
                return Err(shoal::Error::MissingKey {
                    table: t.name.clone(),
                    column: (*c).to_owned(),
                }
                .into());
            }
        }
    }
    let mut tx = ws.transaction()?;
    // A put writes the row's existence and its cells; increments alone need none.
    if adds.is_empty() || sets.iter().any(|(n, _)| !key_columns.contains(&n.as_str())) {
        let cells: Vec<(&str, Value)> = sets.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        tx.put(&t.name, &cells)?;
    }
    for (column, by) in &adds {
        tx.increment(&t.name, &key, column, *by)?;
    }
    let commit = tx.commit()?;
    report_commit(ctx, "wrote", &t.name, &key, commit)?;
    Ok(Outcome::Ok)
}

fn report_commit(
    ctx: &mut Ctx,
    verb: &str,
    table: &str,
    key: &[Value],
    commit: Option<Commit>,
) -> Result<()> {
    let Some(c) = commit else { return Ok(()) };
    ctx.out.line(format!(
        "{verb} {table} {} (entry {} of this device, {})",
        key_text(key),
        c.index,
        time_text(c.hlc.millis())
    ))?;
    ctx.out.emit(
        "commit",
        json!({
            "table": table,
            "key": key.iter().map(value_json).collect::<Vec<_>>(),
            "index": c.index,
            "hlc": out::hlc_json(c.hlc),
            "time": time_text(c.hlc.millis()),
        }),
    )?;
    Ok(())
}

/// `shoal get`: exit code 1 when there is no such row.
pub fn get(ctx: &mut Ctx, a: KeyArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let schema = ws.schema()?;
    let t = schema.table_or_err(&a.table)?;
    let key = parse_key(t, &a.key)?;
    let Some(row) = ws.get(&t.name, &key)? else {
        out::warn(format!("table {} has no row {}", t.name, key_text(&key)));
        return Ok(Outcome::NothingFound);
    };
    let (columns, values): (Vec<String>, Vec<Value>) = row.into_iter().unzip();
    ctx.out.emit("row", json!({ "table": t.name, "values": row_json(&columns, &values) }))?;
    let lines: Vec<Vec<String>> =
        columns.iter().zip(&values).map(|(c, v)| vec![c.clone(), value_text(v)]).collect();
    for line in super::out::render_table(&["", ""], &lines).into_iter().skip(1) {
        ctx.out.line(line)?;
    }
    Ok(Outcome::Ok)
}

/// `shoal delete`.
pub fn delete(ctx: &mut Ctx, a: KeyArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let schema = ws.schema()?;
    let t = schema.table_or_err(&a.table)?;
    let key = parse_key(t, &a.key)?;
    let mut tx = ws.transaction()?;
    tx.delete(&t.name, &key)?;
    let commit = tx.commit()?;
    report_commit(ctx, "deleted", &t.name, &key, commit)?;
    Ok(Outcome::Ok)
}

/// How many rows `shoal sql` reads before it fixes the column widths of its table: later
/// rows are printed as they come, a wider cell pushing the cells after it to the right.
const SQL_WIDTH_ROWS: usize = 100;

/// `shoal sql`: rows are printed as SQLite produces them (memory does not grow with the
/// result); Ctrl-C interrupts the query (exit code 130).
pub fn sql(ctx: &mut Ctx, a: SqlArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let params = a.params.iter().map(|p| parse_any(p)).collect::<Result<Vec<_>>>()?;
    let stop = Interrupter::install();
    let json = ctx.out.is_json();
    let sink = std::cell::RefCell::new(SqlSink::new(json));
    let result = ws.query_each(
        &a.sql,
        &params,
        |columns, handle| -> Result<()> {
            sink.borrow_mut().columns = columns.to_vec();
            stop.arm(handle);
            Ok(())
        },
        |row| sink.borrow_mut().row(row),
    );
    stop.disarm();
    let mut sink = sink.into_inner();
    match result {
        Ok(()) => {
            sink.finish()?;
            Ok(Outcome::Ok)
        }
        Err(e) if stop.fired() || matches!(e.downcast_ref(), Some(shoal::Error::Interrupted)) => {
            // What was read is printed; then say why it ends here.
            let _ = sink.finish_partial();
            out::warn(format!("interrupted (Ctrl-C) after {} rows", sink.count));
            Ok(Outcome::Interrupted)
        }
        Err(e) => {
            let _ = sink.finish_partial();
            Err(e)
        }
    }
}

/// Stops a running `shoal sql` on SIGINT: interrupts the SQLite query, and if the command
/// still has not ended two seconds later (stuck writing to a full pipe), exits with 130.
struct Interrupter {
    state: std::sync::Arc<InterruptState>,
}

#[derive(Default)]
struct InterruptState {
    fired: std::sync::atomic::AtomicBool,
    handle: std::sync::Mutex<Option<shoal::QueryInterrupt>>,
}

impl Interrupter {
    fn install() -> Interrupter {
        let state = std::sync::Arc::new(InterruptState::default());
        let task_state = state.clone();
        // The handler is registered here, before the query starts (a signal that came
        // before registration would kill the process without a message).
        #[cfg(unix)]
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
        tokio::spawn(async move {
            #[cfg(unix)]
            match signal {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            task_state.fired.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(h) = task_state.handle.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                h.interrupt();
            }
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            out::warn("interrupted (Ctrl-C)");
            std::process::exit(i32::from(Outcome::Interrupted.code()));
        });
        Interrupter { state }
    }

    fn arm(&self, handle: shoal::QueryInterrupt) {
        let mut slot = self.state.handle.lock().unwrap_or_else(|p| p.into_inner());
        if self.fired() {
            handle.interrupt();
        }
        *slot = Some(handle);
    }

    fn disarm(&self) {
        *self.state.handle.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn fired(&self) -> bool {
        self.state.fired.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Where `shoal sql` prints rows: JSON envelopes, or a table whose column widths come
/// from the first [`SQL_WIDTH_ROWS`] rows. Output is buffered, and flushed at least every
/// 50 ms while rows come, so a slow query shows its rows as they are found.
struct SqlSink {
    json: bool,
    columns: Vec<String>,
    /// Rows held back until the widths are known (human output only).
    pending: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
    count: u64,
    writer: std::io::BufWriter<std::io::Stdout>,
    flushed: std::time::Instant,
}

impl SqlSink {
    fn new(json: bool) -> SqlSink {
        SqlSink {
            json,
            columns: Vec::new(),
            pending: Vec::new(),
            widths: None,
            count: 0,
            writer: std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout()),
            flushed: std::time::Instant::now(),
        }
    }

    fn row(&mut self, row: &[Value]) -> Result<()> {
        use std::io::Write as _;
        self.count += 1;
        if self.json {
            let line = json!({ "type": "row", "data": { "values": row_json(&self.columns, row) } });
            writeln!(self.writer, "{line}")?;
        } else {
            let cells: Vec<String> = row.iter().map(value_text).collect();
            if self.widths.is_none() {
                self.pending.push(cells);
                if self.pending.len() >= SQL_WIDTH_ROWS {
                    self.print_pending()?;
                }
                return Ok(());
            }
            self.print_cells(&cells)?;
        }
        if self.flushed.elapsed() >= std::time::Duration::from_millis(50) {
            self.writer.flush()?;
            self.flushed = std::time::Instant::now();
        }
        Ok(())
    }

    /// Fixes the widths from the header and the rows held back, and prints them.
    fn print_pending(&mut self) -> Result<()> {
        let header: Vec<String> = self.columns.iter().map(|c| out::name_text(c)).collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for row in &self.pending {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        self.widths = Some(widths);
        self.print_cells(&header)?;
        for row in std::mem::take(&mut self.pending) {
            self.print_cells(&row)?;
        }
        Ok(())
    }

    fn print_cells(&mut self, cells: &[String]) -> Result<()> {
        use std::io::Write as _;
        let widths = self.widths.as_deref().unwrap_or_default();
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        writeln!(self.writer, "{}", line.trim_end())?;
        Ok(())
    }

    /// The end of a complete result: rows held back, or `(no rows)`.
    fn finish(&mut self) -> Result<()> {
        use std::io::Write as _;
        if !self.json && self.count == 0 {
            writeln!(self.writer, "(no rows)")?;
        }
        self.finish_partial()
    }

    /// Prints what is held back and flushes.
    fn finish_partial(&mut self) -> Result<()> {
        use std::io::Write as _;
        if !self.json && self.widths.is_none() && self.count > 0 {
            self.print_pending()?;
        }
        self.writer.flush()?;
        Ok(())
    }
}

/// A table's visible rows by key bytes: key values and `(column, value)` pairs.
type Snapshot = BTreeMap<Vec<u8>, (Vec<Value>, Vec<(String, Value)>)>;

/// The current name of table `id`, and its rows; no rows if it is no longer visible.
fn snapshot(ws: &Workspace, id: TableId) -> Result<(Option<String>, Snapshot)> {
    let schema = ws.schema()?;
    let Some(t) = schema.tables.iter().find(|t| t.id == id) else {
        return Ok((None, Snapshot::new()));
    };
    let keys = t.columns.iter().filter(|c| c.merge.is_none()).count();
    let sql = format!("SELECT * FROM {}", shoal::sqlite::quote_ident(&t.name));
    let result = ws.query(&sql, &[])?;
    let mut out = Snapshot::new();
    for row in result.rows {
        let key: Vec<Value> = row.iter().take(keys).cloned().collect();
        let bytes = RowKey::from_values(&key).map(RowKey::into_bytes).unwrap_or_default();
        out.insert(bytes, (key, result.columns.iter().cloned().zip(row).collect()));
    }
    Ok((Some(t.name.clone()), out))
}

/// `shoal watch`: prints each row that appears, changes or disappears.
pub async fn watch(ctx: &mut Ctx, a: WatchArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let id = ws.schema()?.table_or_err(&a.table)?.id;
    if a.count == Some(0) {
        // Zero changes asked for: nothing to print.
        return Ok(Outcome::Ok);
    }
    // Subscribe before the first read: a commit in between is then seen as a change.
    let mut events = ws.replica().watch_cursors();
    let (mut name, mut rows) = snapshot(&ws, id)?;
    // Scripts wait for this line before changing anything.
    ctx.out.emit("watching", json!({ "table": name, "rows": rows.len() }))?;
    if out::interactive() {
        out::warn(format!("watching {} ({} rows); Ctrl-C ends", a.table, rows.len()));
    }
    let mut shutdown = std::pin::pin!(super::shutdown_signal());
    let mut printed = 0u64;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            event = events.next() => if event.is_none() { break },
        }
        while let Some(Some(_)) = events.next().now_or_never() {}
        let (new_name, new_rows) = snapshot(&ws, id)?;
        let table = new_name.clone().or(name.clone()).unwrap_or_else(|| id.to_string());
        for change in diff(&rows, &new_rows) {
            print_change(ctx, &table, &change)?;
            printed += 1;
            if a.count.is_some_and(|n| printed >= n) {
                return Ok(Outcome::Ok);
            }
        }
        (name, rows) = (new_name, new_rows);
    }
    Ok(Outcome::Ok)
}

struct Change<'a> {
    kind: &'static str,
    key: &'a [Value],
    /// The columns whose value changed (all of them for an inserted row).
    columns: Vec<String>,
    /// The row now (None when deleted), and before (None when inserted).
    now: Option<&'a [(String, Value)]>,
    before: Option<&'a [(String, Value)]>,
}

fn diff<'a>(old: &'a Snapshot, new: &'a Snapshot) -> Vec<Change<'a>> {
    let mut out = Vec::new();
    for (k, (key, row)) in new {
        match old.get(k) {
            None => out.push(Change {
                kind: "insert",
                key,
                columns: row.iter().map(|(c, _)| c.clone()).collect(),
                now: Some(row),
                before: None,
            }),
            Some((_, before)) if before != row => {
                let columns = row
                    .iter()
                    .filter(|(c, v)| !before.iter().any(|(bc, bv)| bc == c && bv == v))
                    .map(|(c, _)| c.clone())
                    .collect();
                out.push(Change {
                    kind: "update",
                    key,
                    columns,
                    now: Some(row),
                    before: Some(before),
                })
            }
            Some(_) => {}
        }
    }
    for (k, (key, row)) in old {
        if !new.contains_key(k) {
            out.push(Change { kind: "delete", key, columns: vec![], now: None, before: Some(row) });
        }
    }
    out
}

fn print_change(ctx: &mut Ctx, table: &str, c: &Change<'_>) -> Result<()> {
    let values = c.now.map(|row| {
        let (cols, vals): (Vec<String>, Vec<Value>) = row.iter().cloned().unzip();
        row_json(&cols, &vals)
    });
    ctx.out.emit(
        "change",
        json!({
            "table": table,
            "change": c.kind,
            "key": c.key.iter().map(value_json).collect::<Vec<_>>(),
            "columns": c.columns,
            "values": values,
        }),
    )?;
    let cell = |row: Option<&[(String, Value)]>, col: &str| {
        row.and_then(|r| r.iter().find(|(n, _)| n == col))
            .map_or("-".to_owned(), |(_, v)| value_quoted(v))
    };
    let detail: Vec<String> = match c.kind {
        "insert" => c.columns.iter().map(|col| format!("{col}={}", cell(c.now, col))).collect(),
        "update" => c
            .columns
            .iter()
            .map(|col| format!("{col}: {} -> {}", cell(c.before, col), cell(c.now, col)))
            .collect(),
        _ => vec![],
    };
    let sign = match c.kind {
        "insert" => "+",
        "update" => "~",
        _ => "-",
    };
    ctx.out
        .line(format!("{sign} {table} {}  {}", key_text(c.key), detail.join("  ")).trim_end())?;
    Ok(())
}
