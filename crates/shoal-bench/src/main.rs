//! Shoal's benchmarks: each prints its figure next to a baseline measured in the same run on
//! the same machine, so the ratio holds on a noisy machine. `BENCHMARKS.md` keeps the
//! latest figures and the command that produced them.
//!
//! Run: `cargo run --release -p shoal-bench -- <bench> [options]` (see `--help`).

mod encrypted;
mod folder;
// The same allocator cap as the `shoal` binary: one file, two binaries.
#[path = "../../shoal-cli/src/malloc.rs"]
mod malloc;
mod oplog;
mod rows;
mod tables;
mod util;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Shoal benchmarks (each next to a same-run baseline)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Local append of 1-op entries committed in batches, vs plain SQLite INSERTs of the
    /// same bytes.
    Append {
        /// Entries to append.
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
        /// Entries per committed transaction.
        #[arg(long, default_value_t = 1_000)]
        batch: u64,
    },
    /// Pull of N entries from one SQLite replica into another, vs a plain SQLite
    /// SELECT+INSERT copy of the same rows; with peak RSS during the pull.
    Pull {
        /// Entries in the source log.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
    },
    /// Local transactions of 100 cell writes vs plain SQLite upserts of the same rows.
    TablesLocal {
        /// Transactions.
        #[arg(long, default_value_t = 5_000)]
        transactions: usize,
    },
    /// Remote apply of N cell changes from another replica vs plain upserts; bookkeeping
    /// bytes per cell.
    TablesRemote {
        /// Cell changes.
        #[arg(long, default_value_t = 1_000_000)]
        cells: usize,
    },
    /// A new device catches up from a folder holding N cell changes from several origins;
    /// bytes per cell change on disk.
    FolderCatchup {
        /// Cell changes in the folder.
        #[arg(long, default_value_t = 1_000_000)]
        cells: usize,
        /// Devices that wrote them.
        #[arg(long, default_value_t = 3)]
        origins: usize,
    },
    /// (internal) The catch-up process of `folder-catchup`.
    #[command(hide = true)]
    FolderCatchupChild {
        #[arg(long)]
        folder: std::path::PathBuf,
        #[arg(long)]
        workspace_id: String,
        #[arg(long)]
        file: std::path::PathBuf,
        /// An invite code (members-only workspaces).
        #[arg(long)]
        code: Option<String>,
    },
    /// A new device catches up from a folder holding N entries of one row each (a key and
    /// 4 LWW cells), vs plain SQLite upserts of the same rows; bytes per entry on disk.
    CatchupRows {
        /// Entries (rows) in the folder.
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
    },
    /// (internal) The catch-up process of `catchup-rows`.
    #[command(hide = true)]
    CatchupRowsChild {
        #[arg(long)]
        folder: std::path::PathBuf,
        #[arg(long)]
        workspace_id: String,
        #[arg(long)]
        file: std::path::PathBuf,
        #[arg(long)]
        entries: u64,
        /// An invite code (members-only workspaces).
        #[arg(long)]
        code: Option<String>,
    },
    /// A new device catches up an encrypted workspace, as a ratio to the same catch-up of
    /// the same workload in a members-only unencrypted one (pairs of runs, each catch-up in
    /// its own process).
    CatchupEncrypted {
        /// The workload: `multi` (as `folder-catchup`) or `rows` (as `catchup-rows`).
        #[arg(long, value_enum)]
        kind: encrypted::Kind,
        /// Cell changes (`multi`) or entries (`rows`).
        #[arg(long)]
        size: u64,
        /// Devices that write (`multi`; `rows` has one).
        #[arg(long, default_value_t = 3)]
        origins: usize,
        /// Pairs of catch-ups (plain and encrypted, alternating which goes first).
        #[arg(long, default_value_t = 3)]
        pairs: usize,
    },
    /// Durable single-row commits through the Workspace API vs plain SQLite single-row
    /// upsert transactions (same durability); WAL pages each commit writes.
    CommitRows {
        /// Commits timed on each side.
        #[arg(long, default_value_t = 2_000)]
        transactions: u64,
    },
    /// Commit on device A to visible on device B through a local folder (p50, p99).
    FolderLatency {
        /// Commits timed.
        #[arg(long, default_value_t = 200)]
        samples: usize,
    },
}

fn main() -> anyhow::Result<()> {
    malloc::limit_malloc_arenas();
    match Cli::parse().bench {
        Bench::Append { entries, batch } => oplog::append(entries, batch),
        Bench::Pull { entries } => oplog::pull(entries),
        Bench::TablesLocal { transactions } => tables::local(transactions),
        Bench::TablesRemote { cells } => tables::remote(cells),
        Bench::FolderCatchup { cells, origins } => folder::catchup(cells, origins),
        Bench::FolderLatency { samples } => folder::latency(samples),
        Bench::FolderCatchupChild { folder, workspace_id, file, code } => {
            folder::catchup_child(&folder, &workspace_id, &file, code.as_deref())
        }
        Bench::CatchupRows { entries } => rows::catchup(entries),
        Bench::CatchupRowsChild { folder, workspace_id, file, entries, code } => {
            rows::catchup_child(&folder, &workspace_id, &file, entries, code.as_deref())
        }
        Bench::CatchupEncrypted { kind, size, origins, pairs } => {
            encrypted::catchup(kind, size, origins, pairs)
        }
        Bench::CommitRows { transactions } => rows::commit(transactions),
    }
}
