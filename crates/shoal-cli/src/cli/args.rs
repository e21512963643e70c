//! What the user typed: every command and flag of `shoal`, defined once (clap derive), with
//! its help text and examples. This layer only parses and validates syntax; it never opens
//! a file. The commands in the sibling modules turn it into actions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  shoal demo                                   three devices, conflicts, convergence
  shoal init -w laptop.shoal                   create a workspace
  shoal table create -w laptop.shoal todo --key id:text --column title:text --counter votes
  shoal put -w laptop.shoal todo id=t1 title=\"buy milk\" votes+=1
  shoal sync -w laptop.shoal --folder ~/Dropbox/shoal
  shoal invite -w laptop.shoal --folder ~/Dropbox/shoal  prints an invite code
  shoal join -w phone.shoal CODE                 a second device joins with it
  shoal sql -w phone.shoal \"SELECT * FROM todo\"

Exit codes: 0 ok, 1 nothing found (get), 2 error. Errors go to stderr as `shoal: ...`.
With --json, output is JSON Lines: {\"type\": ..., \"data\": ...} (see docs/CLI.md).";

/// Conflict-free sync of app data (SQLite rows) between devices, over a shared folder.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// The workspace file (one per device).
    #[arg(
        short = 'w',
        long,
        global = true,
        env = "SHOAL_WORKSPACE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub workspace: Option<PathBuf>,

    /// Print JSON Lines, one {"type": ..., "data": ...} object per line (docs/CLI.md).
    #[arg(long, global = true)]
    pub json: bool,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a workspace file: a new workspace, or a new device of an existing one.
    #[command(after_help = "\
Examples:
  shoal init -w laptop.shoal                      a new workspace; prints its id
  shoal init -w phone.shoal --folder shared       ask to join the workspace in a folder
  shoal init -w phone.shoal --join 5d1c...e07a    ask to join by id (then `shoal sync`)
  shoal init -w lab.shoal --open                  any device may write (no invites)

A new workspace admits members only: devices join with an invite (`shoal invite`, then
`shoal join CODE`). A device that joins with `init --join`/`--folder` only asks to join:
its writes stay pending until an admin runs `shoal admit`.")]
    Init(InitArgs),

    /// Create, change or list tables.
    #[command(subcommand)]
    Table(TableCommand),

    /// Write one row: `col=value` sets a column, `col+=N` / `col-=N` changes a counter.
    #[command(after_help = "\
Examples:
  shoal put todo id=t1 title=\"buy milk\" done=0
  shoal put todo id=t1 votes+=2                  add 2 to the counter votes
  shoal put todo id=t1 title=null                NULL
  shoal put todo id=t2 photo=x'89504e47'         a BLOB, in hex
  shoal put todo --row '{\"id\": \"t3\", \"title\": \"from JSON\", \"done\": 1}'

Values are read by the column's declared type: INTEGER, REAL, TEXT as is, BLOB as
x'<hex>', ANY as an integer, else a real, else text. `null` is NULL in any column.
All assignments of one command are one transaction.")]
    Put(PutArgs),

    /// Print one row, by its key values in key order. Exit code 1 if there is none.
    #[command(after_help = "\
Examples:
  shoal get todo t1
  shoal get --json todo t1")]
    Get(KeyArgs),

    /// Delete one row, by its key values in key order.
    #[command(after_help = "\
Examples:
  shoal delete todo t1

A later write (on any device) revives the row, with only the cells written after the delete.")]
    Delete(KeyArgs),

    /// Run read-only SQL. Tables are views named after them.
    #[command(after_help = "\
Examples:
  shoal sql \"SELECT * FROM todo ORDER BY id\"
  shoal sql \"SELECT title FROM todo WHERE votes > ?1\" 2
  shoal sql --json \"SELECT count(*) AS n FROM todo\"")]
    Sql(SqlArgs),

    /// Print changes to a table as they happen, from any process (Ctrl-C ends).
    #[command(after_help = "\
Examples:
  shoal watch todo
  shoal watch --json todo --count 1             stop after one change")]
    Watch(WatchArgs),

    /// Sync with a shared folder or a relay: once, or continuously with --watch.
    #[command(after_help = "\
Examples:
  shoal sync --folder ~/Dropbox/shoal             one pass: publish, pull, report
  shoal sync --folder ~/Dropbox/shoal --watch     keep syncing until Ctrl-C
  shoal sync --server ws://relay.example:7070     one pass with a relay
  shoal sync --server ws://relay:7070 --wait      return once the relay stored everything
  shoal sync --server ws://relay:7070 --watch     real-time sync until Ctrl-C
  shoal sync --folder backup --pull-only          a read-only mirror: never publishes
  shoal sync --server ws://relay:7070 --dry-run   what would move; moves nothing
  shoal sync --folder shared --server ws://relay:7070 --watch   both at once

Exit code 2 if a file in the folder is damaged or an origin is stalled (after syncing
everything else).")]
    Sync(SyncArgs),

    /// Run a relay: real-time sync for devices that share no folder (no workspace needed).
    #[command(after_help = "\
Examples:
  shoal serve                                         ws://127.0.0.1:7070, SQLite file shoal-relay.db
  shoal serve --listen 0.0.0.0:7070 --db sqlite:/var/lib/shoal/relay.db
  shoal serve --listen 0.0.0.0:443 --tls-cert cert.pem --tls-key key.pem
  shoal serve --db postgres://shoal@db.internal/shoal  one of many nodes over PostgreSQL
  shoal serve --new-workspaces refuse                 serve only workspaces already here

Devices connect with `shoal sync --server ws://HOST:PORT` (wss:// with TLS). The relay
serves only members of each workspace (from the workspace's own membership log), stores
encrypted workspaces as ciphertext, and needs no data keys. Endpoints: /v1/sync (the
protocol, docs/PROTOCOL.md), /healthz, /metrics (Prometheus). Logs go to stderr with
SHOAL_LOG=shoal_relay=info (refusals, stalls; =debug for every connection). Ctrl-C or
SIGTERM stops it gracefully. See docs/DEPLOY.md.")]
    Serve(ServeArgs),

    /// Show the workspace, every origin's progress, stalls, the last sync and conflicts.
    #[command(after_help = "\
Examples:
  shoal status
  shoal status --folder ~/Dropbox/shoal          also how far behind the folder each origin is")]
    Status(StatusArgs),

    /// Show the history: entries with their device, index, time and ops.
    #[command(after_help = "\
Examples:
  shoal log                                       the whole workspace, oldest first
  shoal log --table todo --limit 10               the 10 latest entries touching todo
  shoal log --table todo --row t1                 the history of one row
  shoal log --json --origin 1a2b3c4d5e6f...       everything about one device's entries")]
    Log(LogArgs),

    /// Check every stored entry's hash chain and signatures, and the folder's segments.
    #[command(after_help = "\
Examples:
  shoal verify
  shoal verify --folder ~/Dropbox/shoal

Exit code 2 if anything fails; every bad file is reported.")]
    Verify(VerifyArgs),

    /// After this device found its own log forked (its file was copied and both copies
    /// wrote, or a backup that had written was restored): hand over to a new device key and
    /// re-issue the writes of its forked branch.
    #[command(after_help = "\
Examples:
  shoal recover-fork --folder ~/Dropbox/shoal    recover, then sync
  shoal recover-fork --server ws://relay:7070    the fork was found at a relay

The other copy keeps its key and its writes; every device applies both copies' writes once.
Refused if this device's log is not forked.")]
    RecoverFork(RecoverForkArgs),

    /// After this device wrote with a clock far ahead (and the machine's clock is right
    /// again): hand its log to a new device key and re-issue the stuck writes.
    #[command(after_help = "\
Examples:
  shoal recover-clock --folder ~/Dropbox/shoal    sync, recover, sync again

Every other device then stops waiting for the writes stamped in the future and applies
their re-issued copies; nothing is lost or applied twice. Refused if the clock is not ahead.")]
    RecoverClock(RecoverClockArgs),

    /// Create an invite code for a new device (members-only workspaces; admins only).
    #[command(after_help = "\
Examples:
  shoal invite --folder ~/Dropbox/shoal                  one member, never expires
  shoal invite --role admin --expires 7d --uses 3 --folder ~/Dropbox/shoal

Give the printed code to the person over a channel you trust: whoever holds it can join
(up to --uses devices, until --expires). With --folder the invite is published at once
and the code names the folder, so the new device joins while you are offline.")]
    Invite(InviteArgs),

    /// Join a workspace with an invite code: creates the workspace file and syncs once.
    #[command(after_help = "\
Examples:
  shoal join -w phone.shoal 'shoal-invite:AR2f...'       the folder named in the code
  shoal join -w phone.shoal 'shoal-invite:AR2f...' --folder ~/Dropbox/shoal")]
    Join(JoinArgs),

    /// List the workspace's devices: role, who admitted each, when, state, pending entries.
    #[command(after_help = "\
Examples:
  shoal members
  shoal members --json")]
    Members,

    /// Admit a device that joined without an invite, or make a member an admin (admins).
    #[command(after_help = "\
Examples:
  shoal admit 1a2b3c4d --folder ~/Dropbox/shoal          the device id or a unique prefix
  shoal admit 1a2b3c4d --role admin")]
    Admit(AdmitArgs),

    /// Remove a device (admins): nothing it writes past what this device holds of it is
    /// applied anywhere.
    #[command(after_help = "\
Examples:
  shoal remove 1a2b3c4d --folder ~/Dropbox/shoal")]
    Remove(DeviceArgs),

    /// Leave the workspace: nothing this device writes afterwards is applied elsewhere.
    #[command(after_help = "\
Examples:
  shoal leave --folder ~/Dropbox/shoal")]
    Leave(FolderArg),

    /// Three devices edit offline, conflict, sync through a folder and converge.
    #[command(after_help = "\
Examples:
  shoal demo
  shoal demo --keep demo-files                   keep the workspaces to look at them")]
    Demo(DemoArgs),
}

/// `shoal init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Join the existing workspace with this id (32 hex digits, as `shoal init` and `shoal
    /// status` print it) instead of creating a new one.
    #[arg(long, value_name = "WORKSPACE_ID")]
    pub join: Option<String>,

    /// Join the workspace found in this sync folder (without --join: the only one there),
    /// and sync with it once.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,

    /// Create an open workspace: any device that can write its folder may write (no
    /// invites, no roles). By default a new workspace admits only devices with an invite
    /// (`shoal invite`) or admitted by an admin (`shoal admit`). Fixed for life.
    #[arg(long, conflicts_with_all = ["join", "folder"])]
    pub open: bool,

    /// Create an end-to-end encrypted workspace: table rows and schema are ciphertext in
    /// every folder (and relay); only members' devices hold the keys, and removing a device
    /// rotates them. Members-only. Fixed for life.
    #[arg(long, conflicts_with_all = ["join", "folder", "open"])]
    pub encrypt: bool,
}

/// `shoal invite`.
#[derive(Debug, Args)]
pub struct InviteArgs {
    /// The role of a device that joins with it.
    #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
    pub role: String,

    /// How long the invite can be used (e.g. `7d`, `12h`, `30m`); never expires if absent.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,

    /// How many devices can join with it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: u32,

    /// The sync folder: the invite is published there at once, and the code names it.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub folder: Option<PathBuf>,

    /// A relay (ws:// or wss://): the invite is published there at once, and the code
    /// names it, so `shoal join CODE` syncs with it.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// `shoal join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The invite code (`shoal-invite:...`).
    pub code: String,

    /// The sync folder (default: the one named in the code).
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub folder: Option<PathBuf>,

    /// The relay (default: the one named in the code, if it names a relay).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// `shoal admit`.
#[derive(Debug, Args)]
pub struct AdmitArgs {
    /// The device id (32 hex digits) or a unique prefix of at least 8.
    pub device: String,

    /// Its role.
    #[arg(long, default_value = "member", value_parser = ["member", "admin"])]
    pub role: String,

    /// Sync with this folder before (to see the device) and after (to publish).
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// `shoal remove`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// The device id (32 hex digits) or a unique prefix of at least 8.
    pub device: String,

    /// Sync with this folder before and after.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// A command's optional sync folder.
#[derive(Debug, Args)]
pub struct FolderArg {
    /// Sync with this folder before and after.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// `shoal table ...`.
#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Create a table (or add the columns it lacks; declaring is idempotent).
    #[command(after_help = "\
Examples:
  shoal table create todo --key id:text --column title:text --column done:integer
  shoal table create todo --key id:text --counter votes --max best:integer
  shoal table create pairs --key a:integer --key b:integer --column note:any

Types: text, integer, real, blob, any. Merge kinds: --column (last writer wins),
--counter (INTEGER; concurrent increments add up), --max (the greatest value wins).
Columns appear in the order given.")]
    Create(TableCreateArgs),

    /// Change a table: add, rename or drop columns; rename or drop the table.
    #[command(after_help = "\
Examples:
  shoal table alter todo --column notes:text --counter likes
  shoal table alter todo --rename-column title=name --drop-column notes
  shoal table alter todo --rename tasks
  shoal table alter tasks --drop

Each change is one entry of this device's log; renames are last-writer-wins.")]
    Alter(TableAlterArgs),

    /// List tables with their columns (type, merge kind) and schema conflicts.
    #[command(after_help = "\
Examples:
  shoal table list
  shoal table list --json")]
    List,
}

/// `shoal table create`.
#[derive(Debug, Args)]
pub struct TableCreateArgs {
    /// The table's name.
    pub name: String,

    /// A primary-key column, NAME:TYPE (repeat for a composite key, in key order).
    #[arg(long, value_name = "NAME:TYPE", required = true)]
    pub key: Vec<String>,

    #[command(flatten)]
    pub columns: ColumnArgs,
}

/// Columns to add, shared by `table create` and `table alter`.
#[derive(Debug, Args)]
pub struct ColumnArgs {
    /// A last-writer-wins column, NAME:TYPE.
    #[arg(long, value_name = "NAME:TYPE")]
    pub column: Vec<String>,

    /// A counter column (INTEGER): concurrent increments add up.
    #[arg(long, value_name = "NAME")]
    pub counter: Vec<String>,

    /// A max column, NAME:TYPE: the greatest value written wins.
    #[arg(long, value_name = "NAME:TYPE")]
    pub max: Vec<String>,
}

/// `shoal table alter`.
#[derive(Debug, Args)]
pub struct TableAlterArgs {
    /// The table.
    pub name: String,

    #[command(flatten)]
    pub columns: ColumnArgs,

    /// Rename a column, OLD=NEW.
    #[arg(long, value_name = "OLD=NEW")]
    pub rename_column: Vec<String>,

    /// Drop a column (not a primary-key column).
    #[arg(long, value_name = "NAME")]
    pub drop_column: Vec<String>,

    /// Rename the table.
    #[arg(long, value_name = "NEW")]
    pub rename: Option<String>,

    /// Drop the table and its rows.
    #[arg(long, conflicts_with_all = ["column", "counter", "max", "rename_column", "drop_column", "rename"])]
    pub drop: bool,
}

/// `shoal put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The table.
    pub table: String,

    /// `col=value`, `col+=N` or `col-=N`.
    #[arg(value_name = "COL=VALUE")]
    pub assignments: Vec<String>,

    /// The row as a JSON object ({"col": value, ...}); merged with the assignments.
    #[arg(long, value_name = "JSON")]
    pub row: Option<String>,
}

/// `shoal get` and `shoal delete`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The table.
    pub table: String,

    /// The key values, in key order.
    #[arg(value_name = "KEY", required = true, allow_hyphen_values = true)]
    pub key: Vec<String>,
}

/// `shoal sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// A read-only statement.
    pub sql: String,

    /// Values for ?1, ?2, ... (an integer, else a real, else text; `null` is NULL).
    #[arg(value_name = "PARAM", allow_hyphen_values = true)]
    pub params: Vec<String>,
}

/// `shoal watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The table.
    pub table: String,

    /// Stop after this many changed rows.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `shoal sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The shared folder (Dropbox, iCloud Drive, Syncthing, a network share...). It must
    /// exist: Shoal never creates it.
    #[arg(long, value_name = "DIR", required_unless_present = "server")]
    pub folder: Option<PathBuf>,

    /// A relay (`shoal serve`): ws://host:port or wss://host:port. With --folder too, the
    /// device syncs with both (and carries the folder's entries to the relay).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,

    /// Keep syncing (on local commits, remote changes and every few seconds) until Ctrl-C
    /// or SIGTERM.
    #[arg(long, conflicts_with_all = ["wait", "dry_run"])]
    pub watch: bool,

    /// Return only once the relay has durably stored every entry this device holds (exit
    /// code 2 if it has not within --timeout).
    #[arg(long, requires = "server")]
    pub wait: bool,

    /// How long --wait waits (e.g. 10s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, requires = "wait")]
    pub timeout: std::time::Duration,

    /// Only take entries in; never publish or push (a read-only mirror or backup).
    #[arg(long, conflicts_with = "push_only")]
    pub pull_only: bool,

    /// Only publish or push; take nothing in.
    #[arg(long)]
    pub push_only: bool,

    /// Say what would move; move nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Whether a relay takes workspaces it does not hold yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NewWorkspacesArg {
    /// A device may bring a workspace (its genesis) to the relay.
    Accept,
    /// Only workspaces the relay already holds are served.
    Refuse,
}

/// `shoal serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,

    /// Where the relay stores entries: sqlite:PATH (one relay process) or
    /// postgres://USER@HOST/DB (any number of relay nodes).
    #[arg(
        long,
        value_name = "URL",
        default_value = "sqlite:shoal-relay.db",
        env = "SHOAL_RELAY_DB",
        hide_env_values = true
    )]
    pub db: String,

    /// TLS certificate chain (PEM); devices then connect with wss://.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Whether a device may bring a workspace the relay does not hold yet.
    #[arg(long, value_enum, default_value = "accept")]
    pub new_workspaces: NewWorkspacesArg,

    /// Connections one device may hold at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_connections_per_device: usize,

    /// Connections one workspace may hold at once.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_connections_per_workspace: usize,

    /// Connections the relay holds at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_connections: usize,

    /// The largest frame (message) a device may send, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub max_frame: usize,
}

/// `shoal status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also compare with this sync folder: how far behind each origin is, and bad files.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// `shoal log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Only entries that touch this table (its schema or its rows).
    #[arg(long, value_name = "TABLE")]
    pub table: Option<String>,

    /// Only entries that touch this row of --table (key values in key order).
    #[arg(long, value_name = "KEY", num_args = 1.., allow_hyphen_values = true, requires = "table")]
    pub row: Vec<String>,

    /// Only entries of this device (its id, or a prefix of it).
    #[arg(long, value_name = "ID")]
    pub origin: Option<String>,

    /// Only the N latest entries.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `shoal verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also verify every segment file of this workspace in the sync folder.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// `shoal recover-clock` and `shoal recover-fork`.
#[derive(Debug, Args)]
pub struct RecoverClockArgs {
    /// Sync with this folder: `recover-clock` before (publishing the old log) and after
    /// (publishing the re-issued writes); `recover-fork` recovers against it (the folder
    /// the fork was found in; the last synced folder if absent) and syncs after.
    #[arg(long, value_name = "DIR")]
    pub folder: Option<PathBuf>,
}

/// `shoal recover-fork`.
#[derive(Debug, Args)]
pub struct RecoverForkArgs {
    /// The sync folder the fork was found in (the last synced folder if neither this nor
    /// --server is given); synced after.
    #[arg(long, value_name = "DIR", conflicts_with = "server")]
    pub folder: Option<PathBuf>,

    /// The relay the fork was found at; synced after.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

/// `shoal demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the devices' workspace files and the sync folder in this new directory instead
    /// of a temporary one.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
