//! The column budget: local check at the limit and one past it, and the model's view cut
//! in view order, the same whatever the arrival order.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use shoal_core::Hlc;
use shoal_tables::*;

#[test]
fn the_local_check_accepts_the_budget_and_refuses_one_more() {
    assert!(check_column_budget("t", 1, MAX_COLUMNS_PER_TABLE - 1).is_ok());
    assert!(check_column_budget("t", MAX_COLUMNS_PER_TABLE, 0).is_ok());
    let err = check_column_budget("t", MAX_COLUMNS_PER_TABLE, 1).unwrap_err();
    assert_eq!(
        err,
        ValidationError::TooManyColumns { table: "t".into(), columns: 1001, limit: 1000 }
    );
    assert!(err.to_string().contains("at most 1000"), "{err}");
}

#[test]
fn columns_past_the_budget_are_conflicts_in_view_order_whatever_the_order() {
    let t = TableId::from_name("t");
    let create = TableOp::CreateTable {
        table: t,
        name: "t".into(),
        primary_key: vec![PkColumn::new(t, "id", ColumnType::Text)],
    };
    let mut ops = vec![(Hlc::from_millis(1), create)];
    for i in 0..5u64 {
        let op = TableOp::add_column(t, &format!("c{i}"), ColumnType::Any, MergeKind::Lww);
        ops.push((Hlc::from_millis(10 - i), op)); // c4 declared first
    }
    let key = RowKey::from_values(&[Value::text("r").unwrap()]).unwrap();
    let cells = (0..5)
        .map(|i| (ColumnId::from_name(t, &format!("c{i}")), CellWrite::Set(Value::Integer(i))))
        .collect();
    ops.push((Hlc::from_millis(20), TableOp::Put { table: t, key, cells }));
    let run = |order: &mut dyn Iterator<Item = &(Hlc, TableOp)>| {
        let mut m = TablesModel::with_column_budget(4);
        for (h, op) in order {
            m.apply(*h, op).unwrap();
        }
        m
    };
    let forward = run(&mut ops.iter());
    let backward = run(&mut ops.iter().rev());
    assert_eq!(forward.dump(), backward.dump());
    assert_eq!(forward.conflicts(), backward.conflicts());
    assert_eq!(forward.hidden_dump(), backward.hidden_dump());
    let view = &forward.dump().tables[0];
    let names: Vec<&str> = view.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "c4", "c3", "c2"]);
    assert_eq!(view.rows[0].values[1], Value::Integer(4));
    let over: Vec<(ConflictKind, Option<ColumnId>)> =
        forward.conflicts().iter().map(|c| (c.kind, c.column)).collect();
    let mut want = vec![
        (ConflictKind::TooManyColumns, Some(ColumnId::from_name(t, "c0"))),
        (ConflictKind::TooManyColumns, Some(ColumnId::from_name(t, "c1"))),
    ];
    want.sort();
    assert_eq!(over, want);
    assert_eq!(TablesModel::new().column_budget(), MAX_COLUMNS_PER_TABLE);
}

#[test]
fn a_table_already_over_the_budget_may_take_a_change_that_adds_nothing() {
    // Devices that declared columns concurrently can exceed the budget together; a local
    // change that adds no column (a rename) is not refused for it.
    assert!(check_column_budget("t", MAX_COLUMNS_PER_TABLE + 1, 0).is_ok());
    assert!(check_column_budget("t", MAX_COLUMNS_PER_TABLE + 1, 1).is_err());
    assert!(check_column_budget("t", 0, MAX_COLUMNS_PER_TABLE).is_ok());
    assert!(check_column_budget("t", 0, MAX_COLUMNS_PER_TABLE + 1).is_err());
    assert_eq!(
        check_column_budget("t", usize::MAX, 1),
        Err(ValidationError::TooManyColumns {
            table: "t".into(),
            columns: usize::MAX,
            limit: 1000
        })
    );
    assert_eq!(MAX_CELLS_PER_PUT, 2000);
}
