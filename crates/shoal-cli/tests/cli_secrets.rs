//! Through the CLI, as the failure was seen: the device key is one query away no more.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use cli_util::Sandbox;

#[test]
fn no_command_prints_the_device_key() {
    let s = Sandbox::new();
    s.workspace_with_todo("a.shoal");
    s.ok(&["put", "-w", "a.shoal", "todo", "id=1", "title=x"]);
    let key = std::fs::read(s.path("a.shoal.key")).unwrap();
    // The secret is the last 32 bytes of the key file (docs/FORMAT.md).
    let secret_hex = hex(&key[key.len() - 32..]);
    for sql in [
        "select hex(value) from shoal_meta",
        "select * from shoal_meta",
        "select * from sqlite_master",
        "with recursive x(n) as (select 1 union all select n + 1 from x where n < 3) \
         select (select group_concat(hex(value)) from shoal_meta) from x",
    ] {
        let out = s.run(&["sql", "-w", "a.shoal", sql]);
        assert_eq!(out.status.code(), Some(2), "{sql}: {out:?}");
        let all = format!("{}{}", cli_util::text(&out.stdout), cli_util::text(&out.stderr));
        assert!(!all.to_lowercase().contains(&secret_hex), "{sql} printed the key");
    }
    let out = s.run(&["get", "-w", "a.shoal", "shoal_meta", "device_key"]);
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    // Normal SQL still works.
    assert!(s.ok(&["sql", "-w", "a.shoal", "select title from todo"]).contains('x'));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
