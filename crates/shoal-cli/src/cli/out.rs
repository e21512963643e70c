//! Output: human text or JSON Lines on stdout, messages on stderr, and how values, times
//! and tables are shown.
//!
//! Every JSON line is one envelope `{"type": "<type>", "data": {...}}` (types listed in
//! `docs/CLI.md`). Values in JSON: NULL is `null`, INTEGER a number, REAL a number with a
//! fraction or exponent (`{"real": "NaN" | "inf" | "-inf"}` when not finite), TEXT a
//! string, BLOB `{"hex": "..."}`.
//!
//! Never: panics on a closed pipe. Write errors are returned, and `main` ends quietly on
//! a broken pipe.

use std::io::{self, IsTerminal, Write};

use serde_json::{Map, Value as Json, json};
use shoal::Value;

/// Where command output goes.
pub struct Out {
    json: bool,
    stdout: io::Stdout,
}

impl Out {
    /// Output in JSON Lines when `json`, else for people.
    pub fn new(json: bool) -> Out {
        Out { json, stdout: io::stdout() }
    }

    /// Whether output is JSON Lines.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Writes one envelope (JSON mode only; ignored otherwise).
    pub fn emit(&mut self, kind: &str, data: Json) -> io::Result<()> {
        if !self.json {
            return Ok(());
        }
        let line = json!({ "type": kind, "data": data });
        let mut lock = self.stdout.lock();
        writeln!(lock, "{line}")?;
        lock.flush()
    }

    /// Writes one line of human output (human mode only; ignored in JSON mode). Control
    /// characters are escaped as in values ([`name_text`]): names and messages from other
    /// devices cannot drive the terminal.
    pub fn line(&mut self, text: impl std::fmt::Display) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let text = escape_controls(&text.to_string());
        let mut lock = self.stdout.lock();
        writeln!(lock, "{text}")?;
        lock.flush()
    }

    /// Writes lines of a text table (human mode only).
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        for line in render_table(header, rows) {
            self.line(line)?;
        }
        Ok(())
    }
}

/// A message on stderr, prefixed with the program name. Failing to write it is ignored:
/// there is nowhere left to report that.
/// Control characters other than line breaks (usage help spans lines) are escaped.
pub fn warn(message: impl std::fmt::Display) {
    let message: String =
        message.to_string().split('\n').map(escape_controls).collect::<Vec<_>>().join("\n");
    let _ = writeln!(io::stderr().lock(), "shoal: {message}");
}

/// Whether progress bars may be drawn: only when both stdout and stderr are terminals.
pub fn interactive() -> bool {
    io::stdout().is_terminal() && io::stderr().is_terminal()
}

/// A progress bar with `len` steps of `what`, drawn on stderr only when [`interactive`].
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if !interactive() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    // The template is a constant known to be valid; fall back to the default style if not.
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} {msg} {wide_bar} {human_pos}/{human_len} ({per_sec}, {eta} left)",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// A value as JSON (see the module doc).
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => json!(i),
        Value::Real(f) if f.is_finite() => json!(f),
        Value::Real(f) => json!({ "real": real_text(*f) }),
        Value::Text(s) => json!(s),
        Value::Blob(b) => json!({ "hex": hex(b) }),
    }
}

/// Column names and values as a JSON object, in column order. A repeated name (possible
/// in SQL results) gets `:2`, `:3`… appended.
pub fn row_json(columns: &[String], values: &[Value]) -> Json {
    let mut map = Map::new();
    for (name, v) in columns.iter().zip(values) {
        let mut key = name.clone();
        let mut n = 2;
        while map.contains_key(&key) {
            key = format!("{name}:{n}");
            n += 1;
        }
        map.insert(key, value_json(v));
    }
    Json::Object(map)
}

/// A value for people: NULL, numbers (reals always with a fraction or exponent), text as
/// is (control characters escaped), blobs as `x'<hex>'`.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(f) => real_text(*f),
        Value::Text(s) => escape_controls(s),
        Value::Blob(b) => format!("x'{}'", hex(b)),
    }
}

/// A value for people, quoted when it is text (in sentences and key lists).
pub fn value_quoted(v: &Value) -> String {
    match v {
        Value::Text(s) => format!("{:?}", s),
        other => value_text(other),
    }
}

/// Key values for people: `t1`, or `(1, "a")` for composite keys.
pub fn key_text(key: &[Value]) -> String {
    match key {
        [one] => value_text(one),
        many => format!("({})", many.iter().map(value_quoted).collect::<Vec<_>>().join(", ")),
    }
}

fn real_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        // Debug keeps a fraction (`1.0`), so a REAL never reads as an INTEGER.
        format!("{f:?}")
    }
}

/// A name (of a table, a column, a device's choosing) for people: control characters
/// escaped as in values, so that a name from another device cannot drive the terminal.
pub fn name_text(s: &str) -> String {
    escape_controls(s)
}

fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() })
        .collect()
}

/// An HLC as JSON: `{"millis": .., "counter": .., "raw": "<u64 as a decimal string>"}`
/// (the raw value exceeds the integers JSON readers keep exactly, hence the string).
pub fn hlc_json(h: shoal::core::Hlc) -> Json {
    json!({ "millis": h.millis(), "counter": h.counter(), "raw": h.as_u64().to_string() })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Unix milliseconds as an RFC 3339 UTC time with milliseconds,
/// e.g. `2026-11-02T09:00:00.000Z`.
pub fn time_text(millis: u64) -> String {
    let secs = millis / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        millis % 1000
    )
}

/// The proleptic Gregorian date of a day number since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Lines of a left-aligned text table with a header row.
pub fn render_table(header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(cell);
            let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
            out.extend(std::iter::repeat_n(' ', pad));
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(&mut header.iter().copied())];
    for row in rows {
        out.push(line(&mut row.iter().map(String::as_str)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time_text(1_793_610_000_123), "2026-11-02T09:00:00.123Z");
        assert_eq!(time_text(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn values_keep_their_type_when_shown() {
        assert_eq!(value_text(&Value::real(1.0)), "1.0");
        assert_eq!(value_text(&Value::Integer(1)), "1");
        assert_eq!(value_text(&Value::Blob(vec![0xab, 1])), "x'ab01'");
        assert_eq!(value_text(&Value::Text("a\nb".into())), "a\\nb");
        assert_eq!(value_json(&Value::real(f64::NAN)), json!({"real": "NaN"}));
        assert_eq!(value_json(&Value::real(2.5)), json!(2.5));
        let cols = vec!["id".to_owned(), "id".to_owned()];
        let row = row_json(&cols, &[Value::Integer(1), Value::Integer(2)]);
        assert_eq!(row, json!({"id": 1, "id:2": 2}));
    }

    #[test]
    fn tables_align() {
        let rows = vec![vec!["t1".into(), "buy milk".into()], vec!["t22".into(), "x".into()]];
        assert_eq!(
            render_table(&["id", "title"], &rows),
            ["id   title", "t1   buy milk", "t22  x"]
        );
    }
}
