//! The SQLite authorizer on the connections that run app SQL (`Workspace::query`, `get`,
//! the CLI's `sql`).
//!
//! Owns: [`AppReader`] (a read-only connection with the authorizer installed for its whole
//! life) and the policy of what app SQL may do.
//!
//! Policy (default deny):
//! - `SELECT`, recursive CTEs and function calls are allowed, except `load_extension` and
//!   `fts3_tokenizer`.
//! - Reading a table whose name starts with `shoal_` or `sqlite_` (any case) is allowed only
//!   where one of the views in the file reads it: SQLite reports those reads with the view's
//!   name as the accessor, and the set each view reads is learned by preparing
//!   `SELECT * FROM <view>` in trusted mode after every schema change. Everything else —
//!   `shoal_meta`, `shoal_oplog`, `shoal_origins`, `sqlite_master`, `dbstat` — is refused,
//!   however it is named (subquery alias, CTE, join).
//! - A CTE may take a view's name, and SQLite then reports its reads with that name as the
//!   accessor, exactly as for the view. So the authorizer alone would let
//!   `WITH todo AS (SELECT * FROM shoal_t_…) …` read a view's hidden row table; what closes
//!   it is [`check_app_sql`], run on app SQL before it is prepared: no table or column an
//!   app can see starts with `shoal_` (the prefix is reserved), so a statement that names
//!   any identifier with that prefix is refused. (The device key is not in the file at all;
//!   see `keyfile`.)
//! - `ATTACH`, `DETACH`, transactions, savepoints, every write and DDL action, and pragmas
//!   other than a few informational ones are refused.
//!
//! Invariants: the authorizer is installed before the connection runs any app SQL and is
//! never removed; Shoal's own statements on it run in trusted mode, which is switched off
//! again when they end (also on error or panic).
//!
//! Never: lets app SQL read a `shoal_*`/`sqlite_*` table no view reads, or (with
//! [`check_app_sql`]) name a `shoal_*` table at all.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

/// Refuses app SQL that names an identifier starting with `shoal_` (any case, quoted or
/// not): only Shoal's hidden tables and their columns have such names, since no visible
/// table or column may (`shoal_tables::is_reserved_name`). String literals and comments are
/// skipped; so a string value `'shoal_x'` is fine, while `"shoal_x"` (an identifier in
/// SQL, even where SQLite would fall back to reading it as a string) is refused. The error
/// is the identifier found.
///
/// This is what stops a CTE that takes a view's name from reading the hidden table behind
/// the view (see the module doc); the authorizer covers everything else.
pub fn check_app_sql(sql: &str) -> Result<(), String> {
    let b = sql.as_bytes();
    let mut i = 0;
    let reserved_ident = |name: &str| -> Result<(), String> {
        if name.len() >= 6 && name.as_bytes()[..6].eq_ignore_ascii_case(b"shoal_") {
            Err(name.to_owned())
        } else {
            Ok(())
        }
    };
    // Returns the end of a quoted run starting at `start` (after the closing quote), where a
    // doubled closing quote is an escaped one; the text runs to the end if unclosed.
    let quoted = |start: usize, close: u8, doubles: bool| -> (usize, String) {
        let mut j = start + 1;
        let mut text = Vec::new();
        while j < b.len() {
            if b[j] == close {
                if doubles && b.get(j + 1) == Some(&close) {
                    text.push(close);
                    j += 2;
                    continue;
                }
                return (j + 1, String::from_utf8_lossy(&text).into_owned());
            }
            text.push(b[j]);
            j += 1;
        }
        (j, String::from_utf8_lossy(&text).into_owned())
    };
    while i < b.len() {
        match b[i] {
            b'\'' => i = quoted(i, b'\'', true).0,
            b'"' | b'`' => {
                let (end, name) = quoted(i, b[i], true);
                reserved_ident(&name)?;
                i = end;
            }
            b'[' => {
                let (end, name) = quoted(i, b']', false);
                reserved_ident(&name)?;
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 2;
            }
            c if c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i] == b'_'
                        || b[i] == b'$'
                        || b[i].is_ascii_alphanumeric()
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                reserved_ident(&String::from_utf8_lossy(&b[start..i]))?;
            }
            c if c.is_ascii_digit() => {
                // A number (possibly `1e5` or `0x1f`): its letters are not an identifier.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// A read-only connection for app SQL, with the authorizer installed.
pub(crate) struct AppReader {
    conn: Connection,
    state: Arc<Mutex<GuardState>>,
}

#[derive(Default)]
struct GuardState {
    mode: Mode,
    /// The schema cookie the view map was learned at.
    schema_version: Option<i64>,
    /// Per view (lower-cased name): the reserved tables (lower-cased) it reads.
    views: BTreeMap<String, BTreeSet<String>>,
    /// Reserved tables that views read with no accessor reported (SQLite reports the read
    /// of an empty view's table that way).
    top_level: BTreeSet<String>,
}

#[derive(Default, Clone, PartialEq, Eq)]
enum Mode {
    /// App SQL: the policy applies.
    #[default]
    App,
    /// Shoal's own statement: everything is allowed.
    Trusted,
    /// Preparing `SELECT * FROM <view>`: record the reserved tables it reads.
    Learning(String),
}

/// True for the names SQLite and Shoal keep for themselves.
fn reserved(name: &str) -> bool {
    shoal_tables::is_reserved_name(name)
}

/// Pragmas app SQL may run (they read schema information, never rows).
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "collation_list",
    "function_list",
    "pragma_list",
    "compile_options",
    "data_version",
];

fn lock(state: &Mutex<GuardState>) -> MutexGuard<'_, GuardState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn authorize(state: &Mutex<GuardState>, ctx: &AuthContext<'_>) -> Authorization {
    let mut s = lock(state);
    match &s.mode {
        Mode::Trusted => return Authorization::Allow,
        Mode::Learning(view) => {
            if let AuthAction::Read { table_name, .. } = ctx.action
                && reserved(table_name)
            {
                let table = table_name.to_ascii_lowercase();
                match ctx.accessor {
                    None => s.top_level.insert(table),
                    Some(_) => {
                        let view = view.clone();
                        s.views.entry(view).or_default().insert(table)
                    }
                };
            }
            return Authorization::Allow;
        }
        Mode::App => {}
    }
    let allowed = match ctx.action {
        AuthAction::Select | AuthAction::Recursive => true,
        AuthAction::Function { function_name } => !["load_extension", "fts3_tokenizer"]
            .iter()
            .any(|f| function_name.eq_ignore_ascii_case(f)),
        AuthAction::Read { table_name, .. } => {
            // Another schema (temp) or page-level internals (`dbstat`): never app data.
            if ctx.database_name.is_some_and(|db| db != "main")
                || table_name.eq_ignore_ascii_case("dbstat")
            {
                false
            } else if !reserved(table_name) {
                true
            } else {
                let table = table_name.to_ascii_lowercase();
                match ctx.accessor {
                    None => s.top_level.contains(&table),
                    Some(view) => s
                        .views
                        .get(&view.to_ascii_lowercase())
                        .is_some_and(|tables| tables.contains(&table)),
                }
            }
        }
        AuthAction::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            READ_PRAGMAS.contains(&name.as_str())
                && pragma_value.is_none_or(|table| !reserved(table.trim_matches(['"', '\''])))
        }
        _ => false,
    };
    if allowed { Authorization::Allow } else { Authorization::Deny }
}

/// Switches a connection to trusted mode until dropped.
struct Trusted<'a>(&'a Mutex<GuardState>);

impl<'a> Trusted<'a> {
    fn new(state: &'a Mutex<GuardState>, mode: Mode) -> Self {
        lock(state).mode = mode;
        Trusted(state)
    }
}

impl Drop for Trusted<'_> {
    fn drop(&mut self) {
        lock(self.0).mode = Mode::App;
    }
}

impl AppReader {
    /// Installs the authorizer on `conn` (a read-only connection to a workspace file).
    pub(crate) fn new(mut conn: Connection) -> rusqlite::Result<AppReader> {
        let state = Arc::new(Mutex::new(GuardState::default()));
        let hook = state.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&hook, &ctx)))?;
        Ok(AppReader { conn, state })
    }

    /// Brings the connection's schema and the view map up to date, then hands the
    /// connection out for app SQL.
    pub(crate) fn prepare_for_app(&self) -> rusqlite::Result<&Connection> {
        let _trusted = Trusted::new(&self.state, Mode::Trusted);
        // Reading sqlite_master makes the connection reload a schema another connection
        // changed (SQLite notices a new schema only in a statement that reads the file),
        // so `SELECT *` below and in app SQL expands to the current views.
        let views: Vec<String> = self
            .conn
            .prepare_cached("SELECT name FROM sqlite_master WHERE type = 'view'")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let version: i64 = self.conn.query_row("PRAGMA schema_version", [], |r| r.get(0))?;
        if lock(&self.state).schema_version == Some(version) {
            return Ok(&self.conn);
        }
        {
            let mut s = lock(&self.state);
            s.views.clear();
            s.top_level.clear();
            s.schema_version = None;
        }
        for view in views {
            let _learning = Trusted::new(&self.state, Mode::Learning(view.to_ascii_lowercase()));
            let sql = format!("SELECT * FROM \"{}\"", view.replace('"', "\"\""));
            self.conn.prepare(&sql)?;
        }
        lock(&self.state).schema_version = Some(version);
        Ok(&self.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::check_app_sql;
    use proptest::prelude::*;

    #[test]
    fn names_with_the_reserved_prefix_are_refused_however_quoted() {
        for sql in [
            "SELECT * FROM shoal_meta",
            "select * from SHOAL_T_01",
            "SELECT * FROM \"Shoal_t\"",
            "SELECT * FROM \"a\"\"b\", \"shoal_x\"",
            "SELECT * FROM [shoal_x]",
            "SELECT * FROM `shoal_x`",
            "SELECT * FROM main.shoal_x",
            "SELECT 1 /* unclosed comment */ FROM shoal_x",
            "SELECT :shoal_p",
            "SELECT * FROM \"shoal_unclosed",
        ] {
            assert!(check_app_sql(sql).is_err(), "{sql}");
        }
        for sql in [
            "SELECT * FROM todo WHERE t = 'shoal_x'",
            "SELECT 'it''s shoal_x' -- shoal_meta",
            "SELECT 1 /* shoal_meta */",
            "SELECT x'00', 1e5, 0x1f, sqlite_version(), my_shoal_col FROM todo",
            "SELECT * FROM \"todo\" AS [t]",
        ] {
            assert_eq!(check_app_sql(sql), Ok(()), "{sql}");
        }
    }

    proptest! {
        /// Whatever a string literal holds, it never makes a statement refused.
        #[test]
        fn string_literals_never_refuse(content in ".*") {
            let sql = format!("SELECT * FROM todo WHERE t = '{}'", content.replace('\'', "''"));
            prop_assert_eq!(check_app_sql(&sql), Ok(()));
        }

        /// A `shoal_` identifier is found after any prefix of literals and comments.
        #[test]
        fn a_reserved_identifier_is_found_after_anything(content in "[^*]*", quote in 0..4usize) {
            let name = ["shoal_t", "\"shoal_t\"", "[shoal_t]", "`shoal_t`"][quote];
            let sql = format!(
                "SELECT '{}' /* {} */ FROM {name}",
                content.replace('\'', "''"),
                content.replace('/', " ")
            );
            prop_assert!(check_app_sql(&sql).is_err());
        }
    }
}
