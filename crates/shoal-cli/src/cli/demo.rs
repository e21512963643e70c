//! `shoal demo`: Shoal's main job in a few seconds. Three devices (alice, bob, carol) share
//! a workspace through a local folder, edit the same rows while offline — the same cell on
//! two devices, a delete against an edit at the same timestamp, a write after a delete,
//! concurrent counter increments, a max column — then sync and converge. The demo prints
//! the converged table, checks that it is identical on all three devices, and explains
//! how each conflict was resolved.
//!
//! The devices share a simulated clock (`ManualClock`), so every run resolves the same
//! way; only ids and paths differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;
use shoal::core::{Hlc, ManualClock};
use shoal::{ColumnType, Commit, TableSpec, Value, Workspace, WorkspaceOptions};

use super::args::DemoArgs;
use super::out::{row_json, time_text, value_quoted, value_text};
use super::{Ctx, Outcome};

/// 2026-11-02T09:00:00Z, the simulated start.
const START: u64 = 1_793_610_000_000;
const MINUTE: u64 = 60_000;
const QUERY: &str = "SELECT * FROM todo ORDER BY id";

struct Device {
    name: &'static str,
    ws: Workspace,
}

impl Device {
    fn label(&self) -> String {
        let id = self.ws.device().map(|d| d.short()).unwrap_or_default();
        format!("{} ({id})", self.name)
    }
}

fn text(s: &str) -> Result<Value> {
    Ok(Value::text(s)?)
}

/// The time of day of an HLC, with its counter when not zero.
fn at(h: Hlc) -> String {
    let t = time_text(h.millis());
    let clock = t.get(11..23).unwrap_or(&t).to_owned();
    if h.counter() == 0 { clock } else { format!("{clock}+{}", h.counter()) }
}

/// `shoal demo`.
pub async fn run(ctx: &mut Ctx, a: DemoArgs) -> Result<Outcome> {
    let started = Instant::now();
    let (_temp, dir): (Option<tempfile::TempDir>, PathBuf) = match &a.keep {
        Some(d) => {
            std::fs::create_dir(d).map_err(|e| {
                anyhow::anyhow!("{}: cannot create the demo directory: {e}", d.display())
            })?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new().prefix("shoal-demo-").tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let folder = dir.join("shared");
    std::fs::create_dir(&folder)?;
    let clock = ManualClock::new(START);
    let opts = || WorkspaceOptions { clock: Arc::new(clock.clone()), ..Default::default() };
    let out = &mut ctx.out;
    out.line("Shoal demo: three devices, one shared folder, offline edits that conflict.")?;
    out.line(format!(
        "(files in {}; the devices share a simulated clock, so every run resolves the same way)",
        dir.display()
    ))?;

    // 1. Set-up: alice founds the workspace; bob and carol join through the folder.
    let alice = Device { name: "alice", ws: Workspace::create(dir.join("alice.shoal"), opts())? };
    alice.ws.declare(
        &TableSpec::new("todo")
            .key("id", ColumnType::Text)
            .column("title", ColumnType::Text)
            .column("done", ColumnType::Integer)
            .counter("votes")
            .max("progress", ColumnType::Integer),
    )?;
    let mut tx = alice.ws.transaction()?;
    for (id, title) in [("t1", "buy milk"), ("t2", "call mom"), ("t3", "fix bike")] {
        tx.put("todo", &[("id", text(id)?), ("title", text(title)?), ("done", Value::Integer(0))])?;
    }
    tx.commit()?;
    alice.ws.sync_folder(&folder).await?;
    let id = alice.ws.id();
    let bob = Device { name: "bob", ws: Workspace::join(dir.join("bob.shoal"), id, opts())? };
    let carol = Device { name: "carol", ws: Workspace::join(dir.join("carol.shoal"), id, opts())? };
    for d in [&bob, &carol] {
        d.ws.sync_folder(&folder).await?;
    }
    out.line("")?;
    out.line(format!(
        "1. {} creates a workspace with a table `todo`, adds three rows and syncs;",
        alice.label()
    ))?;
    out.line(format!(
        "   {} and {} join from the shared folder. Everyone has:",
        bob.label(),
        carol.label()
    ))?;
    show_table(out, &alice.ws, "   ")?;

    // 2. Offline edits. Each device commits to its own log only; nobody syncs.
    out.line("")?;
    out.line("2. All three go offline and edit the same rows:")?;
    clock.set(START + MINUTE);
    let del_t2 = write(&alice, |tx| {
        tx.delete("todo", &[text("t2")?])?;
        Ok(())
    })?;
    let edit_t2 = write(&bob, |tx| {
        tx.put("todo", &[("id", text("t2")?), ("title", text("call mom tonight")?)])?;
        Ok(())
    })?;
    out.line(format!("   {}  alice deletes t2", at(del_t2.hlc)))?;
    out.line(format!("   {}  bob   sets t2.title = \"call mom tonight\"", at(edit_t2.hlc)))?;
    clock.set(START + 2 * MINUTE);
    let bob_t1 = write(&bob, |tx| {
        tx.put(
            "todo",
            &[
                ("id", text("t1")?),
                ("title", text("buy oat milk")?),
                ("progress", Value::Integer(40)),
            ],
        )?;
        tx.increment("todo", &[text("t1")?], "votes", 2)?;
        Ok(())
    })?;
    out.line(format!(
        "   {}  bob   sets t1.title = \"buy oat milk\", t1.progress = 40, adds 2 to t1.votes",
        at(bob_t1.hlc)
    ))?;
    let del_t3 = write(&carol, |tx| {
        tx.delete("todo", &[text("t3")?])?;
        Ok(())
    })?;
    out.line(format!("   {}  carol deletes t3", at(del_t3.hlc)))?;
    clock.set(START + 3 * MINUTE);
    let carol_t1 = write(&carol, |tx| {
        tx.put(
            "todo",
            &[
                ("id", text("t1")?),
                ("title", text("buy almond milk")?),
                ("progress", Value::Integer(25)),
            ],
        )?;
        tx.increment("todo", &[text("t1")?], "votes", 3)?;
        Ok(())
    })?;
    out.line(format!(
        "   {}  carol sets t1.title = \"buy almond milk\", t1.progress = 25, adds 3 to t1.votes",
        at(carol_t1.hlc)
    ))?;
    clock.set(START + 4 * MINUTE);
    let alice_late = write(&alice, |tx| {
        tx.increment("todo", &[text("t1")?], "votes", 1)?;
        tx.put("todo", &[("id", text("t3")?), ("done", Value::Integer(1))])?;
        Ok(())
    })?;
    out.line(format!("   {}  alice adds 1 to t1.votes, sets t3.done = 1", at(alice_late.hlc)))?;

    // 3. Back online: two rounds of sync through the folder.
    out.line("")?;
    out.line("3. They come back online and sync through the folder (two rounds):")?;
    clock.set(START + 5 * MINUTE);
    let devices = [&alice, &bob, &carol];
    for round in 0..2 {
        for d in devices {
            let r = d.ws.sync_folder(&folder).await?;
            if !r.status.stalled.is_empty() || !r.status.bad_files.is_empty() {
                bail!("demo: {} could not sync: {:?}", d.name, r.status);
            }
            if round == 0 || r.report.pulled > 0 {
                out.line(format!(
                    "   {:5} published {} entr{}, pulled {}",
                    d.name,
                    r.report.published,
                    if r.report.published == 1 { "y" } else { "ies" },
                    r.report.pulled
                ))?;
            }
        }
    }

    // 4. The converged table, identical everywhere.
    let results: Vec<_> =
        devices.iter().map(|d| d.ws.query(QUERY, &[])).collect::<Result<_, _>>()?;
    let cursors: Vec<_> =
        devices.iter().map(|d| d.ws.replica().durable_cursors()).collect::<Result<_, _>>()?;
    let identical =
        results.windows(2).all(|w| w[0] == w[1]) && cursors.windows(2).all(|w| w[0] == w[1]);
    out.line("")?;
    out.line(format!(
        "4. The converged table{}:",
        if identical { ", identical on alice, bob and carol" } else { " (NOT identical!)" }
    ))?;
    show_table(out, &alice.ws, "   ")?;
    for (d, r) in devices.iter().zip(&results) {
        for row in &r.rows {
            out.emit(
                "row",
                json!({ "device": d.name, "table": "todo", "values": row_json(&r.columns, row) }),
            )?;
        }
    }

    // 5. Why: each conflict, checked against the converged state.
    out.line("")?;
    out.line("5. How each conflict was resolved:")?;
    let get = |id: &str| alice.ws.get("todo", &[Value::Text(id.into())]);
    let cell = |row: &Option<Vec<(String, Value)>>, col: &str| {
        row.as_ref().and_then(|r| r.iter().find(|(c, _)| c == col).map(|(_, v)| v.clone()))
    };
    let t1 = get("t1")?;
    let t2 = get("t2")?;
    let t3 = get("t3")?;
    let mut ok = identical;
    let mut explain = |out: &mut super::out::Out,
                       what: &str,
                       lines: &[String],
                       holds: bool|
     -> Result<()> {
        ok &= holds;
        out.line(format!("   {what}"))?;
        for l in lines {
            out.line(format!("      {l}"))?;
        }
        if !holds {
            out.line("      (but the converged table says otherwise: this is a bug)")?;
        }
        out.emit("resolution", json!({ "conflict": what, "explanation": lines, "holds": holds }))?;
        Ok(())
    };
    let title = cell(&t1, "title");
    explain(
        out,
        "t1.title: edited on two devices",
        &[
            format!(
                "bob wrote \"buy oat milk\" at {}, carol \"buy almond milk\" at {}",
                at(bob_t1.hlc),
                at(carol_t1.hlc)
            ),
            format!(
                "-> {}: last writer wins, and carol's timestamp is later",
                title.as_ref().map_or("NULL".into(), value_quoted)
            ),
        ],
        title == Some(text("buy almond milk")?),
    )?;
    let votes = cell(&t1, "votes");
    explain(
        out,
        "t1.votes: a counter incremented on three devices",
        &[
            "alice +1, bob +2, carol +3, all concurrent".to_owned(),
            format!(
                "-> {}: increments add up, none is lost",
                votes.as_ref().map_or("NULL".into(), value_text)
            ),
        ],
        votes == Some(Value::Integer(6)),
    )?;
    let progress = cell(&t1, "progress");
    explain(
        out,
        "t1.progress: a max column",
        &[
            format!("bob wrote 40 at {}, carol 25 later at {}", at(bob_t1.hlc), at(carol_t1.hlc)),
            format!(
                "-> {}: a max column keeps the greatest value, whoever wrote last",
                progress.as_ref().map_or("NULL".into(), value_text)
            ),
        ],
        progress == Some(Value::Integer(40)),
    )?;
    explain(
        out,
        "t2: deleted on one device, edited on another at the same moment",
        &[
            format!(
                "alice deleted it at {}, bob edited its title at {}",
                at(del_t2.hlc),
                at(edit_t2.hlc)
            ),
            if del_t2.hlc == edit_t2.hlc {
                "-> deleted: the timestamps are equal, and a delete wins a tie".to_owned()
            } else {
                "-> deleted: the delete is not older than the edit".to_owned()
            },
        ],
        t2.is_none() && del_t2.hlc >= edit_t2.hlc,
    )?;
    explain(
        out,
        "t3: deleted, then written again later",
        &[
            format!(
                "carol deleted it at {}, alice set done = 1 at {}",
                at(del_t3.hlc),
                at(alice_late.hlc)
            ),
            format!(
                "-> back, as {}:",
                t3.as_ref().map_or("nothing".into(), |r| r
                    .iter()
                    .map(|(c, v)| format!("{c}={}", value_quoted(v)))
                    .collect::<Vec<_>>()
                    .join(" "))
            ),
            "   a later write revives a row, with only the cells written after the delete"
                .to_owned(),
            "   (the title written before the delete is gone)".to_owned(),
        ],
        cell(&t3, "done") == Some(Value::Integer(1)) && cell(&t3, "title") == Some(Value::Null),
    )?;

    let entries: u64 = alice.ws.replica().durable_cursors()?.iter().map(|(_, n)| n).sum();
    let secs = started.elapsed().as_secs_f64();
    out.emit(
        "converged",
        json!({ "devices": ["alice", "bob", "carol"], "identical": identical, "explained": ok, "entries": entries, "seconds": secs }),
    )?;
    out.line("")?;
    if !ok {
        bail!("demo: the devices did not converge as explained (see above)");
    }
    out.line(format!(
        "Converged: alice, bob and carol hold the same {entries} entries and show the same table ({secs:.1} s)."
    ))?;
    if a.keep.is_some() {
        out.line(format!(
            "Look around: shoal log -w {} --table todo --row t1",
            dir.join("alice.shoal").display()
        ))?;
    }
    Ok(Outcome::Ok)
}

/// One transaction on `d`, returning where it landed.
fn write(d: &Device, f: impl FnOnce(&mut shoal::Transaction<'_>) -> Result<()>) -> Result<Commit> {
    let mut tx = d.ws.transaction()?;
    f(&mut tx)?;
    tx.commit()?.ok_or_else(|| anyhow::anyhow!("demo: {} wrote nothing", d.name))
}

fn show_table(out: &mut super::out::Out, ws: &Workspace, indent: &str) -> Result<()> {
    let r = ws.query(QUERY, &[])?;
    let header: Vec<String> = r.columns.iter().map(|c| format!("{indent}{c}")).collect();
    let header: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, h)| if i == 0 { h.as_str() } else { &r.columns[i] })
        .collect();
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .map(
                    |(i, v)| {
                        if i == 0 { format!("{indent}{}", value_text(v)) } else { value_text(v) }
                    },
                )
                .collect()
        })
        .collect();
    out.table(&header, &rows)?;
    Ok(())
}
