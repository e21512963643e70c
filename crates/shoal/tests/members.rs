//! Membership from the outside (DESIGN §8): in a members-only workspace, a device joins
//! with an invite while its admin is offline; a device without an invite, and a removed
//! device's later writes, are stored and forwarded but never applied, on every replica, and
//! shown as pending; an admission applies what was pending.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::path::{Path, PathBuf};

use shoal::core::control::Role;
use shoal::core::invite::InviteCode;
use shoal::core::membership::DeviceState;
use shoal::*;

fn spec() -> TableSpec {
    TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text)
}

fn put(ws: &Workspace, id: &str, title: &str) {
    let mut tx = ws.transaction().unwrap();
    tx.put("todo", &[("id", Value::text(id).unwrap()), ("title", Value::text(title).unwrap())])
        .unwrap();
    tx.commit().unwrap();
}

fn ids(ws: &Workspace) -> Vec<String> {
    let Ok(r) = ws.query("SELECT id FROM todo ORDER BY id", &[]) else { return vec![] };
    r.rows
        .into_iter()
        .map(|row| match &row[0] {
            Value::Text(t) => t.to_string(),
            v => format!("{v:?}"),
        })
        .collect()
}

struct World {
    dir: tempfile::TempDir,
    folder: PathBuf,
    admin: Workspace,
}

fn members_only() -> WorkspaceOptions {
    WorkspaceOptions { members_only: true, ..Default::default() }
}

impl World {
    async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("shared");
        std::fs::create_dir(&folder).unwrap();
        let admin = Workspace::create(dir.path().join("admin.shoal"), members_only()).unwrap();
        admin.declare(&spec()).unwrap();
        put(&admin, "a1", "by the admin");
        admin.sync_folder(&folder).await.unwrap();
        World { dir, folder, admin }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn sync(&self, ws: &Workspace) {
        ws.sync_folder(&self.folder).await.unwrap();
    }

    async fn join(&self, name: &str, code: &InviteCode) -> Workspace {
        let ws =
            Workspace::join_with_code(self.path(name), code, WorkspaceOptions::default()).unwrap();
        self.sync(&ws).await;
        ws
    }
}

fn member<'a>(m: &'a Members, ws: &Workspace) -> &'a Member {
    m.devices.iter().find(|d| Some(d.device) == ws.device()).unwrap()
}

#[tokio::test]
async fn an_invited_device_joins_while_its_admin_is_offline_and_everyone_applies_it() {
    let w = World::new().await;
    let code = w.admin.invite(Role::Member, None, 2, "shared").unwrap();
    w.sync(&w.admin).await; // the invite is published; the admin goes offline
    let text = code.encode();
    let b = w.join("b.shoal", &InviteCode::parse(&text).unwrap()).await;
    put(&b, "b1", "by b");
    w.sync(&b).await;
    let c = w.join("c.shoal", &code).await;
    assert_eq!(ids(&c), ["a1", "b1"], "a third device applies the joiner's writes");
    // The admin comes back and applies them too.
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "b1"]);
    let m = w.admin.members().unwrap();
    assert!(!m.open);
    let mb = member(&m, &b);
    assert_eq!((mb.role, mb.admitted_by, mb.pending), (Some(Role::Member), w.admin.device(), 0));
    assert_eq!(mb.state, DeviceState::Active);
    // A member cannot invite, admit or remove.
    let err = b.invite(Role::Admin, None, 1, "").unwrap_err();
    assert!(err.to_string().contains("not an active admin"), "{err}");
}

#[tokio::test]
async fn an_uninvited_device_stays_pending_everywhere_until_an_admin_admits_it() {
    let w = World::new().await;
    let code = w.admin.invite(Role::Member, None, 1, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    // The outsider of the issue: it can write the folder and joins by the workspace id.
    let x = Workspace::join(w.path("x.shoal"), w.admin.id(), WorkspaceOptions::default()).unwrap();
    w.sync(&x).await;
    put(&x, "x1", "defaced");
    x.declare(&TableSpec::new("shadow").key("k", ColumnType::Text)).unwrap();
    w.sync(&x).await;
    for ws in [&w.admin, &b] {
        w.sync(ws).await;
        assert_eq!(ids(ws), ["a1"], "a non-member's writes are not applied");
        assert!(ws.schema().unwrap().table("shadow").is_none());
        let m = ws.members().unwrap();
        let mx = member(&m, &x);
        assert!(matches!(mx.state, DeviceState::Pending(_)), "{mx:?}");
        assert_eq!(mx.pending, mx.stored);
        assert!(mx.pending >= 3, "{mx:?}");
        let status = ws.status().unwrap();
        let held = status.origins.iter().find(|o| Some(o.origin) == x.device()).unwrap();
        assert!(held.pending.as_deref().unwrap().contains("not a member"), "{held:?}");
        assert!(held.stalled.is_none(), "held by membership is pending, not a stall");
    }
    // The device sees its own writes; they are pending for everyone else.
    assert_eq!(ids(&x), ["a1", "x1"]);
    // A second join with the one-use invite loses, whatever its peer id: the admin saw b
    // admitted and acknowledged it (it acks every new device it stores), and publishes
    // that with its next sync.
    w.sync(&w.admin).await;
    let late = w.join("late.shoal", &code).await;
    put(&late, "l1", "late");
    w.sync(&late).await;
    w.sync(&b).await;
    assert_eq!(ids(&b), ["a1"]);
    // The admin admits x: what was pending applies, on every replica.
    w.admin.admit(x.device().unwrap(), Role::Member).unwrap();
    w.sync(&w.admin).await;
    w.sync(&b).await;
    assert_eq!(ids(&w.admin), ["a1", "x1"]);
    assert_eq!(ids(&b), ["a1", "x1"]);
    assert!(b.schema().unwrap().table("shadow").is_some());
    assert_eq!(member(&b.members().unwrap(), &x).pending, 0);
}

#[tokio::test]
async fn a_removed_device_keeps_what_it_wrote_before_and_nothing_after() {
    let w = World::new().await;
    let code = w.admin.invite(Role::Member, None, 2, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    let c = w.join("c.shoal", &code).await;
    put(&b, "b1", "before");
    w.sync(&b).await;
    w.sync(&w.admin).await;
    w.sync(&c).await;
    assert_eq!(ids(&c), ["a1", "b1"]);
    w.admin.remove_device(b.device().unwrap()).unwrap();
    w.sync(&w.admin).await;
    // b has not seen its removal and keeps writing.
    put(&b, "b2", "after");
    w.sync(&b).await;
    w.sync(&c).await;
    w.sync(&w.admin).await;
    for ws in [&w.admin, &c] {
        assert_eq!(ids(ws), ["a1", "b1"], "writes past the cut are never applied");
        let mb = member(&ws.members().unwrap(), &b).clone();
        assert!(matches!(mb.state, DeviceState::Removed { .. }), "{mb:?}");
        // b2, and any ack b wrote after the cut.
        assert!(mb.pending >= 1, "{mb:?}");
    }
    // Removing oneself is refused; leaving is how a device goes.
    let err = c.remove_device(c.device().unwrap()).unwrap_err();
    assert!(err.to_string().contains("leave"), "{err}");
    c.leave().unwrap();
    put(&c, "c1", "after leaving");
    w.sync(&c).await;
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "b1"]);
    assert!(matches!(member(&w.admin.members().unwrap(), &c).state, DeviceState::Left { .. }));
}

#[tokio::test]
async fn a_workspace_created_without_membership_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let folder: &Path = &dir.path().join("f");
    std::fs::create_dir(folder).unwrap();
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    a.declare(&spec()).unwrap();
    a.sync_folder(folder).await.unwrap();
    let b =
        Workspace::join(dir.path().join("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    b.sync_folder(folder).await.unwrap();
    put(&b, "b1", "open");
    b.sync_folder(folder).await.unwrap();
    a.sync_folder(folder).await.unwrap();
    assert_eq!(ids(&a), ["b1"]);
    assert!(a.members().unwrap().open);
    let err = a.invite(Role::Member, None, 1, "").unwrap_err();
    assert!(err.to_string().contains("created open"), "{err}");
}

/// The outsider: it can write the folder and runs `init --join <id>`, then deletes
/// every row, defaces values, sets a counter to −999, renames and drops columns and
/// tables, and shadows a table with one of its own. None of it is applied anywhere; the
/// owner's later writes land in the owner's table.
#[tokio::test]
async fn every_edit_of_an_outsider_changes_nothing_on_the_members() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let admin = Workspace::create(dir.path().join("a.shoal"), members_only()).unwrap();
    let todo = TableSpec::new("todo")
        .key("id", ColumnType::Text)
        .column("title", ColumnType::Text)
        .counter("votes");
    admin.declare(&todo).unwrap();
    admin.declare(&TableSpec::new("notes").key("k", ColumnType::Text)).unwrap();
    for (id, title) in [("t1", "milk"), ("t2", "bread")] {
        let mut tx = admin.transaction().unwrap();
        tx.put("todo", &[("id", Value::text(id).unwrap()), ("title", Value::text(title).unwrap())])
            .unwrap();
        tx.increment("todo", &[Value::text(id).unwrap()], "votes", 3).unwrap();
        tx.commit().unwrap();
    }
    let code = admin.invite(Role::Member, None, 1, "").unwrap();
    admin.sync_folder(&folder).await.unwrap();
    let member =
        Workspace::join_with_code(dir.path().join("m.shoal"), &code, members_only()).unwrap();
    member.sync_folder(&folder).await.unwrap();
    let snapshot = |ws: &Workspace| {
        let rows = ws.query("SELECT id, title, votes FROM todo ORDER BY id", &[]).unwrap().rows;
        let tables: Vec<String> = ws
            .schema()
            .unwrap()
            .tables
            .iter()
            .map(|t| {
                let cols: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
                format!("{}({})", t.name, cols.join(","))
            })
            .collect();
        format!("{rows:?} {tables:?}")
    };
    let before = snapshot(&admin);
    assert_eq!(snapshot(&member), before);

    let x = Workspace::join(dir.path().join("x.shoal"), admin.id(), WorkspaceOptions::default())
        .unwrap();
    x.sync_folder(&folder).await.unwrap();
    let key = |id: &str| vec![Value::text(id).unwrap()];
    {
        let mut tx = x.transaction().unwrap();
        tx.delete("todo", &key("t1")).unwrap();
        tx.put(
            "todo",
            &[("id", Value::text("t2").unwrap()), ("title", Value::text("DEFACED").unwrap())],
        )
        .unwrap();
        tx.increment("todo", &key("t2"), "votes", -999).unwrap();
        tx.commit().unwrap();
    }
    x.rename_column("todo", "title", "pwned").unwrap();
    x.drop_column("todo", "votes").unwrap();
    x.rename_table("notes", "gone").unwrap();
    // Shadow: drop the owner's table and declare one of its own under the same name.
    x.drop_table("todo").unwrap();
    x.declare(
        &TableSpec::new("todo").key("id", ColumnType::Text).column("title", ColumnType::Text),
    )
    .unwrap();
    x.sync_folder(&folder).await.unwrap();

    for ws in [&admin, &member] {
        ws.sync_folder(&folder).await.unwrap();
        assert_eq!(snapshot(ws), before, "nothing of the outsider is applied");
        let mx = member_of(ws, &x);
        assert!(matches!(mx.state, DeviceState::Pending(_)), "{mx:?}");
        assert_eq!(mx.pending, mx.stored);
    }
    // The owner's later writes land in the owner's table, on every member.
    let mut tx = admin.transaction().unwrap();
    tx.put("todo", &[("id", Value::text("t3").unwrap()), ("title", Value::text("eggs").unwrap())])
        .unwrap();
    tx.commit().unwrap();
    admin.sync_folder(&folder).await.unwrap();
    member.sync_folder(&folder).await.unwrap();
    assert_eq!(snapshot(&member), snapshot(&admin));
    assert_eq!(ids(&member), ["t1", "t2", "t3"]);
}

fn member_of(ws: &Workspace, of: &Workspace) -> Member {
    member(&ws.members().unwrap(), of).clone()
}
