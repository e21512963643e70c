//! Catch-up in an encrypted workspace as a ratio to the same run unencrypted (issue 11,
//! item 8: target <= 1.3x the time).
//!
//! One run writes the same workload twice, into a members-only workspace (`plain`) and an
//! encrypted one (`encrypted`, members-only too, so encryption is the only difference), each
//! with the code of the bench it reuses: `folder-catchup` (entries of 100 cells from
//! several origins; the writers beyond the creator join with an invite) or `catchup-rows`
//! (one-row entries from one origin). Then `--pairs` pairs of catch-ups, each a new device
//! that joins with an invite and syncs once **in its own process** from a fresh copy of
//! its folder (so no catch-up sees another's join), the pair's order alternating. Each
//! catch-up prints its time, entries/s and peak RSS; each pair its ratio encrypted/plain.

use std::ffi::OsString;
use std::path::Path;

use crate::util::{CatchupRun, Privacy, Published, copy_dir, dir_size, run_catchup};
use crate::{folder, rows};

/// Which catch-up workload.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// Entries of 10 rows x 10 cells from several origins (`folder-catchup`).
    Multi,
    /// Entries of one row each from one origin (`catchup-rows`).
    Rows,
}

/// One workspace's folder and the figures of its catch-ups.
struct Side {
    privacy: Privacy,
    source: Published,
    bytes: u64,
    runs: Vec<CatchupRun>,
}

/// Writes the workload of `kind` twice (plain, encrypted) and times `pairs` pairs of
/// catch-ups. For `multi`, `size` is cell changes from `origins` devices; for `rows`, it is
/// entries.
pub fn catchup(kind: Kind, size: u64, origins: usize, pairs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(pairs > 0, "--pairs must be at least 1");
    let dir = tempfile::tempdir()?;
    let (entries, what) = match kind {
        Kind::Multi => {
            let per_origin = folder::per_origin(usize::try_from(size)?, origins);
            anyhow::ensure!(per_origin > 0, "--size is too small for --origins");
            let entries = (per_origin * origins) as u64;
            let cells = entries * folder::CELLS_PER_ENTRY as u64;
            (
                entries,
                format!(
                    "{cells} cell changes in {entries} entries of {} cells from {origins} origins",
                    folder::CELLS_PER_ENTRY
                ),
            )
        }
        Kind::Rows => (size, format!("{size} entries of one row each from one origin")),
    };
    println!(
        "catchup-encrypted --kind {}: {what}; the same workload in a members-only workspace (plain) and an encrypted one; {pairs} pairs of catch-ups, each in its own process",
        format!("{kind:?}").to_lowercase()
    );
    let mut sides = Vec::new();
    for privacy in [Privacy::MembersOnly, Privacy::Encrypted] {
        let at = dir.path().join(privacy.name());
        std::fs::create_dir(&at)?;
        let source = match kind {
            Kind::Multi => folder::publish(&at, entries as usize / origins, origins, privacy)?,
            Kind::Rows => rows::publish(&at, entries, privacy)?,
        };
        let bytes = dir_size(&source.folder);
        sides.push(Side { privacy, source, bytes, runs: Vec::new() });
    }
    if std::env::var_os("SHOAL_BENCH_KEEP").is_some() {
        // Each folder kept, with the command of one catch-up from it (it changes the
        // folder: copy it first to run it again).
        for side in &sides {
            let late = side.source.folder.with_file_name("late.shoal");
            let args: Vec<String> = child_args(kind, &side.source, &late, entries)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            println!("kept ({}): {}", side.privacy.name(), args.join(" "));
        }
        std::mem::forget(dir);
        return Ok(());
    }
    for pair in 0..pairs {
        let order = if pair % 2 == 0 { [0, 1] } else { [1, 0] };
        for s in order {
            let side = &mut sides[s];
            let run_dir = dir.path().join(format!("run-{pair}-{}", side.privacy.name()));
            copy_dir(&side.source.folder, &run_dir.join("shared"))?;
            let copy = side.source.moved_to(run_dir.join("shared"));
            let late = run_dir.join("late.shoal");
            let run = run_catchup(child_args(kind, &copy, &late, entries), &copy)?;
            println!(
                "pair {} {:<9} {:>8.2} s {:>10.0} entries/s  peak RSS {:>6.1} MiB  pulled {}",
                pair + 1,
                side.privacy.name(),
                run.seconds,
                entries as f64 / run.seconds,
                run.peak_rss_mib,
                run.pulled
            );
            side.runs.push(run);
            std::fs::remove_dir_all(&run_dir)?;
        }
        println!(
            "pair {} ratio encrypted/plain time: {:.2}x",
            pair + 1,
            sides[1].runs[pair].seconds / sides[0].runs[pair].seconds
        );
    }
    let ratios: Vec<f64> =
        (0..pairs).map(|p| sides[1].runs[p].seconds / sides[0].runs[p].seconds).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    for side in &sides {
        let secs: Vec<f64> = side.runs.iter().map(|r| r.seconds).collect();
        let peak = side.runs.iter().map(|r| r.peak_rss_mib).fold(0.0, f64::max);
        println!(
            "{:<9}: mean {:.2} s ({:.2}-{:.2}) = {:.0} entries/s; peak RSS at most {peak:.1} MiB; folder {} bytes = {:.1} bytes per entry",
            side.privacy.name(),
            mean(&secs),
            secs.iter().copied().fold(f64::INFINITY, f64::min),
            secs.iter().copied().fold(0.0, f64::max),
            entries as f64 / mean(&secs),
            side.bytes,
            side.bytes as f64 / entries as f64
        );
    }
    println!(
        "ratio encrypted/plain time: mean {:.2}x over {pairs} pairs ({}); target <= 1.3x: {}",
        mean(&ratios),
        ratios.iter().map(|r| format!("{r:.2}x")).collect::<Vec<_>>().join(", "),
        if mean(&ratios) <= 1.3 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// The arguments of the catch-up process of `kind` from `source` into `file`.
fn child_args(kind: Kind, source: &Published, file: &Path, entries: u64) -> Vec<OsString> {
    match kind {
        Kind::Multi => source.child_args("folder-catchup-child", file),
        Kind::Rows => rows::child_args(source, file, entries),
    }
}
