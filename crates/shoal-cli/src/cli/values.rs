//! Values typed on the command line: `col=value` assignments read by the column's declared
//! type, key values, SQL parameters, and JSON rows.
//!
//! Rules (docs/CLI.md): `null` is NULL in any column; INTEGER is an i64; REAL an f64
//! (`1` is read as 1.0); TEXT is taken as is; BLOB is `x'<hex>'`; ANY is an integer if it
//! reads as one, else a real, else text. Every error names the table, the column and the
//! text that could not be read.

use anyhow::{Context, Result, anyhow, bail};
use shoal::tables::{ColumnView, TableView};
use shoal::{ColumnType, MergeKind, Value};

/// One `col=value` / `col+=N` / `col-=N` argument of `shoal put`.
#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// Set a column (LWW or max).
    Set(String, Value),
    /// Add to a counter column.
    Add(String, i64),
}

/// Reads one assignment against the table's columns.
pub fn parse_assignment(table: &TableView, arg: &str) -> Result<Assignment> {
    let Some((lhs, text)) = arg.split_once('=') else {
        bail!("{arg:?} is not an assignment: write COLUMN=VALUE, or COLUMN+=N for a counter");
    };
    if let Some(name) = lhs.strip_suffix('+').or_else(|| lhs.strip_suffix('-')) {
        let negative = lhs.ends_with('-');
        let c = column(table, name)?;
        if c.merge != Some(MergeKind::Counter) {
            bail!(
                "column {}.{} is not a counter: set it with {}=VALUE",
                table.name,
                c.name,
                c.name
            );
        }
        let n: i64 = text.trim().parse().map_err(|_| {
            anyhow!("counter {}.{}: {text:?} is not an integer", table.name, c.name)
        })?;
        let n = if negative {
            n.checked_neg()
                .ok_or_else(|| anyhow!("counter {}.{}: -({n}) overflows", table.name, c.name))?
        } else {
            n
        };
        return Ok(Assignment::Add(c.name.clone(), n));
    }
    let c = column(table, lhs)?;
    if c.merge == Some(MergeKind::Counter) {
        bail!(
            "column {}.{} is a counter: change it with {}+=N (or {}-=N)",
            table.name,
            c.name,
            c.name,
            c.name
        );
    }
    Ok(Assignment::Set(c.name.clone(), parse_typed(text, c.ty, &table.name, &c.name)?))
}

fn column<'t>(table: &'t TableView, name: &str) -> Result<&'t ColumnView> {
    table
        .columns
        .iter()
        .find(|c| c.name == name)
        .or_else(|| table.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
        .ok_or_else(|| {
            let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
            anyhow!(
                "table {:?} has no column named {name:?} (its columns: {})",
                table.name,
                names.join(", ")
            )
        })
}

/// Key values typed in key order, read by the key columns' types.
pub fn parse_key(table: &TableView, texts: &[String]) -> Result<Vec<Value>> {
    let keys: Vec<&ColumnView> = table.columns.iter().filter(|c| c.merge.is_none()).collect();
    if keys.len() != texts.len() {
        let names: Vec<&str> = keys.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "table {:?} has {} key column{} ({}); got {} key value{}",
            table.name,
            keys.len(),
            if keys.len() == 1 { "" } else { "s" },
            names.join(", "),
            texts.len(),
            if texts.len() == 1 { "" } else { "s" },
        );
    }
    keys.iter().zip(texts).map(|(c, t)| parse_typed(t, c.ty, &table.name, &c.name)).collect()
}

/// A value read by a declared column type (see the module doc).
pub fn parse_typed(text: &str, ty: ColumnType, table: &str, column: &str) -> Result<Value> {
    if text == "null" {
        return Ok(Value::Null);
    }
    let bad = |what: &str| anyhow!("column {table}.{column} is {ty}: {text:?} is not {what}");
    match ty {
        ColumnType::Integer => {
            text.trim().parse().map(Value::Integer).map_err(|_| bad("an integer"))
        }
        ColumnType::Real => text.trim().parse().map(Value::real).map_err(|_| bad("a number")),
        ColumnType::Text => Value::text(text).with_context(|| format!("column {table}.{column}")),
        ColumnType::Blob => {
            parse_blob(text).ok_or_else(|| bad("a blob (write it as x'<hex digits>')"))
        }
        ColumnType::Any => Ok(parse_any(text)?),
    }
}

/// A value of unknown type: an integer if it reads as one, else a real, else text
/// (`null` is NULL).
pub fn parse_any(text: &str) -> Result<Value> {
    if text == "null" {
        return Ok(Value::Null);
    }
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Value::Integer(i));
    }
    if let Ok(f) = text.parse::<f64>() {
        return Ok(Value::real(f));
    }
    Value::text(text).map_err(|e| anyhow!("{text:?}: {e}"))
}

fn parse_blob(text: &str) -> Option<Value> {
    let hex = text.strip_prefix("x'").or_else(|| text.strip_prefix("X'"))?.strip_suffix('\'')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    Value::blob(bytes?).ok()
}

/// The assignments of a JSON object `{"col": value, ...}`: numbers and strings by the
/// column's type (a whole number in a REAL column is a real; a string in a BLOB column is
/// `x'<hex>'`), `{"hex": "..."}` a blob, `null` NULL, `true`/`false` 1/0; a number in a
/// counter column is an increment.
pub fn parse_json_row(table: &TableView, text: &str) -> Result<Vec<Assignment>> {
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow!("--row is not valid JSON: {e}"))?;
    let serde_json::Value::Object(map) = parsed else {
        bail!("--row must be a JSON object like {{\"id\": \"t1\", \"title\": \"buy milk\"}}");
    };
    let mut out = Vec::new();
    for (name, v) in map {
        let c = column(table, &name)?;
        let wrong =
            |what: &str| anyhow!("column {}.{} is {}: {v} is not {what}", table.name, c.name, c.ty);
        if c.merge == Some(MergeKind::Counter) {
            let n = v.as_i64().ok_or_else(|| wrong("an integer increment"))?;
            out.push(Assignment::Add(c.name.clone(), n));
            continue;
        }
        let value = match &v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Integer(i64::from(*b)),
            serde_json::Value::Number(n) => match (c.ty, n.as_i64()) {
                (ColumnType::Real, _) | (_, None) => {
                    Value::real(n.as_f64().ok_or_else(|| wrong("a number"))?)
                }
                (_, Some(i)) => Value::Integer(i),
            },
            serde_json::Value::String(s) if c.ty == ColumnType::Blob => {
                parse_blob(s).ok_or_else(|| wrong("a blob (write it as \"x'<hex>'\")"))?
            }
            serde_json::Value::String(s) => Value::text(s.as_str())
                .with_context(|| format!("column {}.{}", table.name, c.name))?,
            serde_json::Value::Object(o) if o.len() == 1 && o.contains_key("hex") => {
                let hex = o.get("hex").and_then(|h| h.as_str()).unwrap_or_default();
                parse_blob(&format!("x'{hex}'")).ok_or_else(|| wrong("a blob"))?
            }
            _ => return Err(wrong("a value (null, a number, a string or {\"hex\": \"...\"})")),
        };
        out.push(Assignment::Set(c.name.clone(), value));
    }
    Ok(out)
}

/// A column type by name (`text`, `integer`/`int`, `real`/`float`, `blob`, `any`;
/// case-insensitive).
pub fn parse_type(text: &str) -> Result<ColumnType> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "text" => ColumnType::Text,
        "integer" | "int" => ColumnType::Integer,
        "real" | "float" => ColumnType::Real,
        "blob" => ColumnType::Blob,
        "any" => ColumnType::Any,
        _ => bail!("unknown column type {text:?}: use text, integer, real, blob or any"),
    })
}

/// `NAME:TYPE` of `table create` / `alter`.
pub fn parse_column_spec(text: &str, flag: &str) -> Result<(String, ColumnType)> {
    let (name, ty) = text
        .split_once(':')
        .ok_or_else(|| anyhow!("--{flag} {text:?}: write NAME:TYPE, e.g. title:text"))?;
    Ok((name.to_owned(), parse_type(ty).with_context(|| format!("--{flag} {text:?}"))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal::tables::{ColumnId, TableId};

    fn table() -> TableView {
        let col = |name: &str, ty, merge| ColumnView {
            id: ColumnId::from_name(TableId(1), name),
            name: name.into(),
            ty,
            merge,
        };
        TableView {
            id: TableId(1),
            name: "todo".into(),
            columns: vec![
                col("id", ColumnType::Text, None),
                col("done", ColumnType::Integer, Some(MergeKind::Lww)),
                col("score", ColumnType::Real, Some(MergeKind::Lww)),
                col("photo", ColumnType::Blob, Some(MergeKind::Lww)),
                col("misc", ColumnType::Any, Some(MergeKind::Lww)),
                col("votes", ColumnType::Integer, Some(MergeKind::Counter)),
            ],
            rows: vec![],
        }
    }

    fn set(name: &str, v: Value) -> Assignment {
        Assignment::Set(name.into(), v)
    }

    #[test]
    fn assignments_read_by_type() {
        let t = table();
        let p = |s: &str| parse_assignment(&t, s).unwrap();
        assert_eq!(p("id=t1"), set("id", Value::text("t1").unwrap()));
        assert_eq!(p("id=a=b"), set("id", Value::text("a=b").unwrap()));
        assert_eq!(p("done=-3"), set("done", Value::Integer(-3)));
        assert_eq!(p("score=1"), set("score", Value::real(1.0)));
        assert_eq!(p("photo=x'0aFF'"), set("photo", Value::Blob(vec![10, 255])));
        assert_eq!(p("misc=7"), set("misc", Value::Integer(7)));
        assert_eq!(p("misc=7.5"), set("misc", Value::real(7.5)));
        assert_eq!(p("misc=seven"), set("misc", Value::text("seven").unwrap()));
        assert_eq!(p("done=null"), set("done", Value::Null));
        assert_eq!(p("votes+=2"), Assignment::Add("votes".into(), 2));
        assert_eq!(p("VOTES-=2"), Assignment::Add("votes".into(), -2));
    }

    #[test]
    fn bad_assignments_name_table_column_and_text() {
        let t = table();
        let e = |s: &str| parse_assignment(&t, s).unwrap_err().to_string();
        assert_eq!(e("done=abc"), "column todo.done is INTEGER: \"abc\" is not an integer");
        assert_eq!(e("score=x"), "column todo.score is REAL: \"x\" is not a number");
        assert!(e("photo=zz").contains("is not a blob"));
        assert!(e("colour=red").starts_with("table \"todo\" has no column named \"colour\""));
        assert!(e("votes=3").contains("is a counter"));
        assert!(e("done+=1").contains("is not a counter"));
        assert!(e("votes+=x").contains("\"x\" is not an integer"));
        assert!(e("title").contains("is not an assignment"));
    }

    #[test]
    fn keys_and_json_rows() {
        let t = table();
        assert_eq!(parse_key(&t, &["t1".into()]).unwrap(), vec![Value::text("t1").unwrap()]);
        let e = parse_key(&t, &[]).unwrap_err().to_string();
        assert_eq!(e, "table \"todo\" has 1 key column (id); got 0 key values");
        let row = parse_json_row(
            &t,
            r#"{"id": "t1", "done": true, "score": 2, "photo": {"hex": "00"}, "votes": 3}"#,
        )
        .unwrap();
        assert_eq!(
            row,
            vec![
                set("id", Value::text("t1").unwrap()),
                set("done", Value::Integer(1)),
                set("score", Value::real(2.0)),
                set("photo", Value::Blob(vec![0])),
                Assignment::Add("votes".into(), 3),
            ]
        );
        assert!(parse_json_row(&t, "[1]").is_err());
        assert!(parse_json_row(&t, "{").unwrap_err().to_string().contains("not valid JSON"));
    }
}
