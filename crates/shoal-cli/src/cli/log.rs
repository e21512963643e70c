//! `shoal log`: the history of the workspace, a table or a row — every entry with its
//! device (origin), index, HLC, wall time and decoded ops, oldest first.
//!
//! Each origin's log is read page by page and the origins are merged by HLC (an origin's
//! HLCs only grow), so memory stays bounded by a page per origin, plus `--limit` entries
//! when only the latest are asked for. Table and column names come from the current
//! schema, else from the schema ops met so far, else the id is shown.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use anyhow::{Result, bail};
use serde_json::{Value as Json, json};
use shoal::Workspace;
use shoal::core::control::ControlOp;
use shoal::core::{ChainHash, ChainPosition, Domain, Entry, EntryBody, Op, PeerId};
use shoal::tables::{CellWrite, ColumnId, RowKey, TableId, TableOp};

use super::args::LogArgs;
use super::out::{hex, hlc_json, key_text, time_text, value_json, value_quoted};
use super::values::parse_key;
use super::{Ctx, Outcome};

const PAGE: usize = 512;

/// `shoal log`.
pub fn run(ctx: &mut Ctx, a: LogArgs) -> Result<Outcome> {
    let ws = ctx.open()?;
    let schema = ws.schema()?;
    let cursors = ws.replica().durable_cursors()?;
    let mut origins: Vec<(PeerId, u64)> = cursors.iter().collect();
    if let Some(prefix) = &a.origin {
        let prefix = prefix.to_ascii_lowercase();
        origins.retain(|(o, _)| o.to_hex().starts_with(&prefix));
        if origins.is_empty() {
            bail!("no device {prefix:?} in this workspace (see `shoal status`)");
        }
        if origins.len() > 1 {
            bail!("{prefix:?} matches {} devices; give more of its id", origins.len());
        }
    }
    let mut filter = Filter::default();
    if let Some(name) = &a.table {
        let t = schema.table_or_err(name)?;
        filter.table = Some(t.id);
        if !a.row.is_empty() {
            let key = parse_key(t, &a.row)?;
            filter.row = Some(RowKey::from_values(&key)?);
        }
    }
    let mut names = Names::default();
    for t in &schema.tables {
        names.tables.insert(t.id, t.name.clone());
        for c in &t.columns {
            names.columns.insert((t.id, c.id), c.name.clone());
        }
    }
    names.own = ws.device();

    let mut merged = Merge::new(&ws, &origins)?;
    let mut kept: VecDeque<Entry> = VecDeque::new();
    let mut shown = 0u64;
    while let Some(entry) = merged.next(&ws)? {
        names.learn(&entry);
        if !filter.matches(&entry) {
            continue;
        }
        match a.limit {
            Some(limit) => {
                kept.push_back(entry);
                if kept.len() > limit {
                    kept.pop_front();
                }
            }
            None => {
                show(ctx, &names, &filter, &entry)?;
                shown += 1;
            }
        }
    }
    for entry in &kept {
        show(ctx, &names, &filter, entry)?;
        shown += 1;
    }
    if shown == 0 {
        ctx.out.line("(no entries)")?;
    }
    Ok(Outcome::Ok)
}

/// Origins' logs merged by (HLC, origin, index).
struct Merge {
    readers: Vec<Reader>,
    heap: BinaryHeap<Reverse<(u64, PeerId, u64, usize)>>,
}

struct Reader {
    origin: PeerId,
    next: u64,
    /// The chain before `next` (an encrypted entry's associated data binds it).
    chain: ChainHash,
    end: u64,
    buf: VecDeque<Entry>,
}

fn entry_hlc(e: &Entry) -> u64 {
    e.payload().map_or(0, |p| p.hlc.as_u64())
}

impl Merge {
    fn new(ws: &Workspace, origins: &[(PeerId, u64)]) -> Result<Merge> {
        let mut m = Merge { readers: Vec::new(), heap: BinaryHeap::new() };
        for (i, (origin, end)) in origins.iter().enumerate() {
            let chain = ChainPosition::start(&ws.id(), origin).chain;
            m.readers.push(Reader {
                origin: *origin,
                next: 0,
                chain,
                end: *end,
                buf: VecDeque::new(),
            });
            m.refill(ws, i)?;
        }
        Ok(m)
    }

    /// Makes sure reader `i` has its next entry buffered, and queues it.
    fn refill(&mut self, ws: &Workspace, i: usize) -> Result<()> {
        let r = &mut self.readers[i];
        if r.buf.is_empty() && r.next < r.end {
            let page = ws.replica().history(Some(r.origin), r.next, PAGE)?;
            // Entries this device can decrypt are shown as what they hold.
            let (page, chain) = ws.replica().open_run(r.chain, page)?;
            r.chain = chain;
            match page.last() {
                Some(last) => r.next = last.index + 1,
                None => r.next = r.end,
            }
            r.buf.extend(page);
        }
        if let Some(e) = r.buf.front() {
            self.heap.push(Reverse((entry_hlc(e), r.origin, e.index, i)));
        }
        Ok(())
    }

    fn next(&mut self, ws: &Workspace) -> Result<Option<Entry>> {
        let Some(Reverse((_, _, _, i))) = self.heap.pop() else { return Ok(None) };
        let entry = self.readers[i].buf.pop_front();
        self.refill(ws, i)?;
        Ok(entry)
    }
}

#[derive(Default)]
struct Filter {
    table: Option<TableId>,
    row: Option<RowKey>,
}

impl Filter {
    fn matches(&self, e: &Entry) -> bool {
        let Some(table) = self.table else { return true };
        let Some(p) = e.payload() else { return false };
        p.ops.iter().any(|op| self.op_matches(table, op))
    }

    fn op_matches(&self, table: TableId, op: &Op) -> bool {
        let Ok(t) = TableOp::decode(op) else { return false };
        if t.table() != table {
            return false;
        }
        match (&self.row, &t) {
            (None, _) => true,
            (Some(row), TableOp::Put { key, .. } | TableOp::Delete { key, .. }) => key == row,
            (Some(_), _) => false,
        }
    }
}

#[derive(Default)]
struct Names {
    tables: HashMap<TableId, String>,
    columns: HashMap<(TableId, ColumnId), String>,
    own: Option<PeerId>,
}

impl Names {
    /// Names from schema ops, for tables and columns that are not visible any more.
    fn learn(&mut self, e: &Entry) {
        let Some(p) = e.payload() else { return };
        for op in &p.ops {
            match TableOp::decode(op) {
                Ok(TableOp::CreateTable { table, name, primary_key }) => {
                    self.tables.entry(table).or_insert(name);
                    for pk in primary_key {
                        self.columns.entry((table, pk.column)).or_insert(pk.name);
                    }
                }
                Ok(TableOp::AddColumn { table, column, name, .. }) => {
                    self.columns.entry((table, column)).or_insert(name);
                }
                _ => {}
            }
        }
    }

    fn table(&self, id: TableId) -> String {
        self.tables.get(&id).cloned().unwrap_or_else(|| format!("table:{id}"))
    }

    fn column(&self, t: TableId, c: ColumnId) -> String {
        self.columns.get(&(t, c)).cloned().unwrap_or_else(|| format!("column:{c}"))
    }
}

/// One control op for people, and as JSON.
fn describe_control(op: &ControlOp) -> (String, Json) {
    let j = |name: &str, extra: Json| {
        let mut out = json!({ "domain": "control", "op": name });
        if let (Some(o), Json::Object(e)) = (out.as_object_mut(), extra) {
            o.extend(e);
        }
        out
    };
    match op {
        ControlOp::Genesis { creator, salt } => {
            let key = creator.as_bytes();
            (
                format!("genesis: workspace founded by key {}", hex(key)),
                j("genesis", json!({ "creator_key": hex(key), "salt": hex(salt) })),
            )
        }
        ControlOp::Successor { predecessor_key, cut, .. } => (
            format!("successor of key {} from its entry {cut}", hex(predecessor_key.as_bytes())),
            j(
                "successor",
                json!({ "predecessor_key": hex(predecessor_key.as_bytes()), "cut": cut }),
            ),
        ),
        ControlOp::Policy { encrypted, .. } => (
            format!("policy: members only{}", if *encrypted { ", encrypted" } else { "" }),
            j("policy", json!({ "members_only": true, "encrypted": encrypted })),
        ),
        ControlOp::Invite { invite_key, role, expires, uses, .. } => (
            format!(
                "invite {} for {uses} {role} device(s){}",
                &hex(invite_key.as_bytes())[..8],
                if *expires == 0 {
                    String::new()
                } else {
                    format!(", until {}", time_text(*expires))
                }
            ),
            j(
                "invite",
                json!({ "invite_key": hex(invite_key.as_bytes()), "role": role.name(), "uses": uses, "expires_ms": expires }),
            ),
        ),
        ControlOp::Join { invite_key, .. } => (
            format!("join with invite {}", &hex(invite_key.as_bytes())[..8]),
            j("join", json!({ "invite_key": hex(invite_key.as_bytes()) })),
        ),
        ControlOp::Request { .. } => ("asks to join (no invite)".into(), j("request", json!({}))),
        ControlOp::SetRole { target, role } => (
            format!("admit {} as {role}", target.short()),
            j("set_role", json!({ "device": target.to_hex(), "role": role.name() })),
        ),
        ControlOp::RevokeInvite { invite_key } => (
            format!("revoke invite {}", &hex(invite_key.as_bytes())[..8]),
            j("revoke_invite", json!({ "invite_key": hex(invite_key.as_bytes()) })),
        ),
        ControlOp::Remove { target, cut } => (
            format!("remove {} from its entry {cut}", target.short()),
            j("remove", json!({ "device": target.to_hex(), "cut": cut })),
        ),
        ControlOp::Leave => ("leaves the workspace".into(), j("leave", json!({}))),
        ControlOp::EpochKeys { epoch, wraps } => (
            format!("key of epoch {epoch} for {} device(s)", wraps.len()),
            j(
                "epoch_keys",
                json!({ "epoch": epoch, "devices": wraps.iter().map(|(d, _)| d.to_hex()).collect::<Vec<_>>() }),
            ),
        ),
        ControlOp::Ack { cursors } => (
            format!("acknowledges {} device(s)' entries", cursors.len()),
            j(
                "ack",
                json!({ "cursors": cursors.iter().map(|(o, n)| json!({ "device": o.to_hex(), "next": n })).collect::<Vec<_>>() }),
            ),
        ),
    }
}

/// One op for people, and as JSON.
fn describe(names: &Names, op: &Op) -> (String, Json) {
    if let Ok(control) = ControlOp::decode(op) {
        return describe_control(&control);
    }
    if op.domain != Domain::TABLES {
        return (
            format!("op of domain {} kind {} ({} bytes)", op.domain.0, op.kind, op.body.len()),
            json!({ "domain": op.domain.0, "kind": op.kind, "bytes": op.body.len() }),
        );
    }
    let t = match TableOp::decode(op) {
        Ok(t) => t,
        Err(e) => {
            return (
                format!("table op kind {} that this version cannot read: {e}", op.kind),
                json!({ "domain": "tables", "kind": op.kind, "error": e.to_string() }),
            );
        }
    };
    let table = names.table(t.table());
    let base = |name: &str| json!({ "domain": "tables", "op": name, "table": table, "table_id": t.table().to_string() });
    let with = |mut j: Json, extra: Json| {
        if let (Some(o), Json::Object(e)) = (j.as_object_mut(), extra) {
            o.extend(e);
        }
        j
    };
    match &t {
        TableOp::CreateTable { name, primary_key, .. } => {
            let cols: Vec<String> =
                primary_key.iter().map(|c| format!("{} {}", c.name, c.ty)).collect();
            let key: Vec<Json> = primary_key
                .iter()
                .map(|c| json!({ "name": c.name, "id": c.column.to_string(), "type": c.ty.sql_name() }))
                .collect();
            (
                format!("create table {name} (key {})", cols.join(", ")),
                with(base("create_table"), json!({ "name": name, "primary_key": key })),
            )
        }
        TableOp::AddColumn { column, name, ty, merge, .. } => (
            format!("add column {table}.{name} {ty} {merge}"),
            with(
                base("add_column"),
                json!({ "column": name, "column_id": column.to_string(), "type": ty.sql_name(), "merge": merge.to_string() }),
            ),
        ),
        TableOp::RenameTable { name, .. } => (
            format!("rename table {table} to {name}"),
            with(base("rename_table"), json!({ "name": name })),
        ),
        TableOp::RenameColumn { table: tid, column, name } => (
            format!("rename column {table}.{} to {name}", names.column(*tid, *column)),
            with(
                base("rename_column"),
                json!({ "column": names.column(*tid, *column), "column_id": column.to_string(), "name": name }),
            ),
        ),
        TableOp::DropTable { .. } => (format!("drop table {table}"), base("drop_table")),
        TableOp::DropColumn { table: tid, column } => (
            format!("drop column {table}.{}", names.column(*tid, *column)),
            with(
                base("drop_column"),
                json!({ "column": names.column(*tid, *column), "column_id": column.to_string() }),
            ),
        ),
        TableOp::Put { table: tid, key, cells } => {
            let key_values = key.values().unwrap_or_default();
            let mut text = Vec::new();
            let mut json_cells = Vec::new();
            for (c, w) in cells {
                let name = names.column(*tid, *c);
                let (t, kind, v) = match w {
                    CellWrite::Set(v) => {
                        (format!("{name}={}", value_quoted(v)), "set", value_json(v))
                    }
                    CellWrite::Max(v) => {
                        (format!("{name} max {}", value_quoted(v)), "max", value_json(v))
                    }
                    CellWrite::Add(n) => (format!("{name}+={n}"), "add", json!(n)),
                };
                text.push(t);
                json_cells.push(json!({ "column": name, "column_id": c.to_string(), "write": kind, "value": v }));
            }
            (
                format!("put {table} {}: {}", key_text(&key_values), text.join(" "))
                    .trim_end_matches(": ")
                    .to_owned(),
                with(
                    base("put"),
                    json!({ "key": key_values.iter().map(value_json).collect::<Vec<_>>(), "cells": json_cells }),
                ),
            )
        }
        TableOp::Delete { key, .. } => {
            let key_values = key.values().unwrap_or_default();
            (
                format!("delete {table} {}", key_text(&key_values)),
                with(
                    base("delete"),
                    json!({ "key": key_values.iter().map(value_json).collect::<Vec<_>>() }),
                ),
            )
        }
    }
}

fn show(ctx: &mut Ctx, names: &Names, filter: &Filter, e: &Entry) -> Result<()> {
    let this = Some(e.origin) == names.own;
    let device = e.origin.short();
    match &e.body {
        EntryBody::Expunged(hash) => {
            ctx.out.emit(
                "entry",
                json!({
                    "origin": e.origin.to_hex(), "this_device": this, "index": e.index,
                    "expunged": true, "hash": hex(&hash.0), "ops": [],
                }),
            )?;
            ctx.out.line(format!("device {device} #{}  (expunged)", e.index))?;
        }
        EntryBody::Encrypted(c) => {
            ctx.out.emit(
                "entry",
                json!({
                    "origin": e.origin.to_hex(), "this_device": this, "index": e.index,
                    "hlc": hlc_json(c.hlc), "time": time_text(c.hlc.millis()),
                    "encrypted": true, "epoch": c.epoch, "op_count": c.op_count,
                    "expunged": false, "ops": [],
                }),
            )?;
            ctx.out.line(format!(
                "device {device} #{}  {}  (encrypted: {} ops under key epoch {})",
                e.index,
                time_text(c.hlc.millis()),
                c.op_count,
                c.epoch
            ))?;
        }
        EntryBody::Live(p) => {
            let mut ops_json = Vec::new();
            let mut lines = Vec::new();
            let mut hidden = 0;
            for (i, op) in p.ops.iter().enumerate() {
                let (text, mut j) = describe(names, op);
                let hlc = p.hlc.plus(i as u64);
                if let Some(o) = j.as_object_mut() {
                    o.insert("hlc".into(), hlc_json(hlc));
                }
                ops_json.push(j);
                let relevant = match filter.table {
                    Some(t) if filter.row.is_some() => filter.op_matches(t, op),
                    _ => true,
                };
                if relevant { lines.push(text) } else { hidden += 1 }
            }
            ctx.out.emit(
                "entry",
                json!({
                    "origin": e.origin.to_hex(),
                    "this_device": this,
                    "index": e.index,
                    "hlc": hlc_json(p.hlc),
                    "time": time_text(p.hlc.millis()),
                    "author": p.author.map(|a| a.to_hex()),
                    "sealed": e.seal.is_some(),
                    "expunged": false,
                    "ops": ops_json,
                }),
            )?;
            ctx.out.line(format!(
                "{}  device {device}{} #{}  hlc {}",
                time_text(p.hlc.millis()),
                if this { " (this)" } else { "" },
                e.index,
                p.hlc
            ))?;
            for l in lines {
                ctx.out.line(format!("    {l}"))?;
            }
            if hidden > 0 {
                ctx.out.line(format!(
                    "    (and {hidden} other op{})",
                    if hidden == 1 { "" } else { "s" }
                ))?;
            }
        }
    }
    Ok(())
}
