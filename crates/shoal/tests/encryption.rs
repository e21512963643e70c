//! End-to-end encryption from the outside (DESIGN §8): an encrypted workspace's folder holds
//! no plaintext of what was written; a device joining with an invite reads history while
//! every admin is offline; a removal rotates the key and the removed device cannot read
//! the new epoch; and what a hostile member or outsider can send (plaintext data, data
//! under a wrong or unknown key, ciphertext replayed at another index, keys of its own)
//! changes nothing on the other replicas.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::io::Read;
use std::path::{Path, PathBuf};

use shoal::core::control::{ControlOp, Role};
use shoal::core::encryption::{EpochKey, Keyring, wrap_key};
use shoal::core::{ChainPosition, Domain, Entry, EntryBody, OwnLog, Payload, PeerId, SyncError};
use shoal::*;

const CANARY: &str = "CANARY-7f3a91-plaintext";

fn spec() -> TableSpec {
    TableSpec::new("diary").key("id", ColumnType::Text).column("secret_note", ColumnType::Text)
}

fn put(ws: &Workspace, id: &str, note: &str) -> Result<Option<Commit>> {
    let mut tx = ws.transaction()?;
    tx.put(
        "diary",
        &[("id", Value::text(id).unwrap()), ("secret_note", Value::text(note).unwrap())],
    )?;
    tx.commit()
}

fn ids(ws: &Workspace) -> Vec<String> {
    let Ok(r) = ws.query("SELECT id FROM diary ORDER BY id", &[]) else { return vec![] };
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

impl World {
    async fn new(encrypted: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("shared");
        std::fs::create_dir(&folder).unwrap();
        let options = WorkspaceOptions { members_only: true, encrypted, ..Default::default() };
        let admin = Workspace::create(dir.path().join("admin.shoal"), options).unwrap();
        admin.declare(&spec()).unwrap();
        put(&admin, "a1", &format!("{CANARY} by the admin")).unwrap();
        admin.sync_folder(&folder).await.unwrap();
        World { dir, folder, admin }
    }

    async fn sync(&self, ws: &Workspace) {
        ws.sync_folder(&self.folder).await.unwrap();
    }

    async fn join(&self, name: &str, code: &shoal::core::invite::InviteCode) -> Workspace {
        let ws = Workspace::join_with_code(self.dir.path().join(name), code, Default::default())
            .unwrap();
        self.sync(&ws).await;
        ws
    }

    /// Every byte the folder holds, with every zstd frame in it decompressed too.
    fn folder_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        collect(&self.folder, &mut out);
        out
    }
}

fn collect(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for at in 0..bytes.len().saturating_sub(4) {
            if bytes[at..at + 4] == [0x28, 0xb5, 0x2f, 0xfd] {
                let mut frame = Vec::new();
                if let Ok(d) = zstd::stream::read::Decoder::new(&bytes[at..]) {
                    let _ = d.single_frame().read_to_end(&mut frame);
                }
                out.extend_from_slice(&frame);
            }
        }
        out.extend_from_slice(&bytes);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn the_folder_holds_no_plaintext_and_an_invited_device_reads_everything() {
    // The same run in a plaintext workspace finds the canary: the search sees through
    // compression, so not finding it below means something.
    let plain = World::new(false).await;
    assert!(contains(&plain.folder_bytes(), CANARY));
    assert!(contains(&plain.folder_bytes(), "secret_note"));

    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 2, "shared").unwrap();
    assert!(code.encrypted, "the code says the workspace is encrypted");
    w.sync(&w.admin).await; // the admin goes offline
    let b = w.join("b.shoal", &code).await;
    assert_eq!(ids(&b), ["a1"], "the joiner reads history with its invite's keys");
    put(&b, "b1", &format!("{CANARY} by b")).unwrap();
    w.sync(&b).await;
    let c = w.join("c.shoal", &code).await;
    assert_eq!(ids(&c), ["a1", "b1"]);
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "b1"]);
    let bytes = w.folder_bytes();
    for needle in [CANARY, "secret_note", "diary"] {
        assert!(!contains(&bytes, needle), "{needle} is readable in the folder");
    }
    // The materialized state is exactly what the (encrypted) log rebuilds to.
    for ws in [&w.admin, &b, &c] {
        let check = ws.verify_state(|_| {}).unwrap();
        assert!(check.differences.is_empty(), "{:?}", check.differences);
    }
    // Each device holds only epoch 0.
    let held = w.admin.replica().keyring().unwrap();
    assert_eq!(held.epochs().collect::<Vec<_>>(), [0]);
}

#[tokio::test]
async fn a_joiner_writes_nothing_before_it_holds_a_key() {
    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 1, "").unwrap();
    // Not synced yet: the invite (and its keys) are not in the folder.
    let b =
        Workspace::join_with_code(w.dir.path().join("b.shoal"), &code, Default::default()).unwrap();
    b.declare(&spec()).unwrap_err();
    w.sync(&b).await;
    w.sync(&w.admin).await;
    w.sync(&b).await;
    put(&b, "b1", "now it can").unwrap();
    w.sync(&b).await;
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "b1"]);
}

#[tokio::test]
async fn a_removal_rotates_the_key_and_the_removed_device_cannot_read_what_follows() {
    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 2, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    let c = w.join("c.shoal", &code).await;
    w.sync(&w.admin).await;
    w.admin.remove_device(c.device().unwrap()).unwrap();
    put(&w.admin, "a2", "after the removal").unwrap();
    w.sync(&w.admin).await;
    w.sync(&b).await;
    assert_eq!(ids(&b), ["a1", "a2"]);
    // b saw the rotation: it writes under the new epoch.
    assert_eq!(b.replica().keyring().unwrap().newest().unwrap().0, 1);
    put(&b, "b1", "new epoch").unwrap();
    w.sync(&b).await;
    w.sync(&c).await;
    assert_eq!(ids(&c), ["a1"], "the removed device cannot read the new epoch");
    assert_eq!(c.replica().keyring().unwrap().epochs().collect::<Vec<_>>(), [0]);
    let status = c.status().unwrap();
    let on_admin = status.origins.iter().find(|o| Some(o.origin) == w.admin.device()).unwrap();
    assert!(on_admin.pending.as_deref().unwrap_or("").contains("key of epoch 1"), "{on_admin:?}");
    assert!(on_admin.stalled.is_none(), "a missing key is pending, not a stall");
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "a2", "b1"]);
}

#[tokio::test]
async fn a_device_admitted_by_request_gets_the_keys_from_an_admin() {
    let w = World::new(true).await;
    let x =
        Workspace::join(w.dir.path().join("x.shoal"), w.admin.id(), Default::default()).unwrap();
    w.sync(&x).await;
    let err = x.declare(&spec()).unwrap_err();
    assert!(matches!(err, Error::NoKey), "{err}");
    w.sync(&w.admin).await;
    w.admin.admit(x.device().unwrap(), Role::Member).unwrap();
    w.sync(&w.admin).await; // the admission; the admin hands x the key on its next pass
    w.sync(&w.admin).await;
    w.sync(&x).await;
    assert_eq!(ids(&x), ["a1"]);
    put(&x, "x1", "admitted").unwrap();
    w.sync(&x).await;
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "x1"]);
}

/// Entries that `device` signs but builds by hand, continuing its stored log on `at`.
fn forge(at: &Workspace, device: &Workspace, bodies: Vec<EntryBody>) -> Vec<Entry> {
    let ws = at.id();
    let origin = device.device().unwrap();
    let stored = device.replica().history(Some(origin), 0, usize::MAX).unwrap();
    let position = ChainPosition {
        next: stored.len() as u64,
        chain: shoal::core::chain_through(ChainPosition::start(&ws, &origin), &stored).unwrap(),
    };
    let mut log = OwnLog::resume(device.replica().device_key().unwrap().clone(), ws, position);
    bodies.into_iter().map(|body| log.append_body(body).0).collect()
}

fn stall_of(ws: &Workspace, origin: PeerId) -> Option<String> {
    let status = ws.status().unwrap();
    status.origins.iter().find(|o| o.origin == origin).and_then(|o| o.stalled.clone())
}

#[tokio::test]
async fn plaintext_or_badly_keyed_data_from_a_member_is_refused_and_changes_nothing() {
    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 1, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    put(&b, "b1", "honest").unwrap();
    w.sync(&b).await;
    w.sync(&w.admin).await;
    assert_eq!(ids(&w.admin), ["a1", "b1"]);
    let origin = b.device().unwrap();
    let before = w.admin.query("SELECT * FROM diary ORDER BY id", &[]).unwrap().rows;

    // A plaintext data entry, signed by the member.
    let plain_op = shoal::core::Op { domain: Domain::TABLES, kind: 1, body: vec![0; 8] };
    let hlc = shoal::core::Hlc::from_millis(1_700_000_000_000);
    let plain = Payload { hlc, author: None, ops: vec![plain_op] };
    let forged = forge(&w.admin, &b, vec![EntryBody::Live(plain.clone())]);
    w.admin.replica().apply_entries(origin, forged).unwrap();
    let why = stall_of(&w.admin, origin).unwrap();
    assert!(why.contains("plaintext data entry in an encrypted workspace"), "{why}");
    assert_eq!(w.admin.query("SELECT * FROM diary ORDER BY id", &[]).unwrap().rows, before);

    // On a fresh replica of the admin's: data under a key nobody shares, of a new epoch
    // (pending: the key may come) and of epoch 0 (stalls: it never opens).
    for (epoch, expect_pending) in [(7, true), (0, false)] {
        let dir = tempfile::tempdir().unwrap();
        let fresh =
            Workspace::join_with_code(dir.path().join("f.shoal"), &code, Default::default())
                .unwrap();
        w.sync(&fresh).await;
        assert_eq!(ids(&fresh), ["a1", "b1"]);
        let mut rogue = Keyring::new(w.admin.id());
        rogue.insert(epoch, EpochKey::from_bytes([0x66; 32]));
        let stored = b.replica().history(Some(origin), 0, usize::MAX).unwrap();
        let prev = shoal::core::chain_through(ChainPosition::start(&fresh.id(), &origin), &stored)
            .unwrap();
        let sealed = rogue.seal(&origin, stored.len() as u64, &prev, &plain).unwrap();
        let entries = forge(&fresh, &b, vec![EntryBody::Encrypted(sealed)]);
        fresh.replica().apply_entries(origin, entries).unwrap();
        let status = fresh.status().unwrap();
        let o = status.origins.iter().find(|o| o.origin == origin).unwrap();
        if expect_pending {
            assert!(o.pending.as_deref().unwrap().contains("key of epoch 7"), "{o:?}");
            assert!(o.stalled.is_none());
        } else {
            assert!(o.stalled.as_deref().unwrap().contains("does not open"), "{o:?}");
        }
        assert_eq!(ids(&fresh), ["a1", "b1"]);
    }
}

#[tokio::test]
async fn ciphertext_replayed_at_another_index_or_tampered_does_not_apply() {
    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 1, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    put(&b, "b1", "once").unwrap();
    w.sync(&b).await;
    w.sync(&w.admin).await;
    let origin = b.device().unwrap();
    let stored = b.replica().history(Some(origin), 0, usize::MAX).unwrap();
    let old = stored.iter().rev().find(|e| matches!(e.body, EntryBody::Encrypted(_))).unwrap();
    // The member replays its own ciphertext at the next index, signed anew.
    let replayed = forge(&w.admin, &b, vec![old.body.clone()]);
    w.admin.replica().apply_entries(origin, replayed.clone()).unwrap();
    let why = stall_of(&w.admin, origin).unwrap();
    assert!(why.contains("does not open"), "{why}");
    assert_eq!(ids(&w.admin), ["a1", "b1"]);

    // Anyone who flips a ciphertext bit breaks the signed chain: rejected, naming b.
    let dir = tempfile::tempdir().unwrap();
    let fresh =
        Workspace::join_with_code(dir.path().join("f.shoal"), &code, Default::default()).unwrap();
    w.sync(&fresh).await;
    let mut tampered = stored.clone();
    let last = tampered.iter_mut().rev().find(|e| matches!(e.body, EntryBody::Encrypted(_)));
    if let Some(Entry { body: EntryBody::Encrypted(c), .. }) = last {
        c.ciphertext[0] ^= 1;
    }
    let dir2 = tempfile::tempdir().unwrap();
    let empty =
        Workspace::join_with_code(dir2.path().join("e.shoal"), &code, Default::default()).unwrap();
    let err = empty.replica().apply_entries(origin, tampered).unwrap_err();
    assert!(matches!(err, SyncError::Rejected { origin: o, .. } if o == origin), "{err}");
}

#[tokio::test]
async fn keys_from_a_non_admin_are_never_used() {
    let w = World::new(true).await;
    // An outsider who can write the folder hands the admin a key it made (epoch 9): if the
    // admin took it, it would write under a key the outsider knows.
    let x =
        Workspace::join(w.dir.path().join("x.shoal"), w.admin.id(), Default::default()).unwrap();
    w.sync(&x).await;
    let mine = EpochKey::from_bytes([0x42; 32]);
    let roster = w.admin.replica().roster().unwrap();
    let admin_exchange = roster.device(&w.admin.device().unwrap()).unwrap().exchange.unwrap();
    let wrap = wrap_key(&w.admin.id(), 9, &mine, &admin_exchange).unwrap();
    let op = ControlOp::EpochKeys { epoch: 9, wraps: vec![(w.admin.device().unwrap(), wrap)] };
    x.replica()
        .append_local(vec![shoal::sqlite::LocalTx { ops: vec![op.to_op()], author: None }])
        .unwrap();
    w.sync(&x).await;
    w.sync(&w.admin).await;
    assert_eq!(w.admin.replica().keyring().unwrap().epochs().collect::<Vec<_>>(), [0]);
    let commit = put(&w.admin, "a2", "still epoch 0").unwrap().unwrap();
    let written = w.admin.replica().history(w.admin.device(), commit.index, 1).unwrap().remove(0);
    assert!(matches!(written.body, EntryBody::Encrypted(ref c) if c.epoch == 0));
}

#[tokio::test]
async fn a_device_that_recovers_its_clock_keeps_its_keys_and_its_stuck_writes_are_read() {
    use std::sync::Arc;
    const NOW: u64 = 1_800_000_000_000;
    const YEAR_2100: u64 = 4_102_444_800_000;
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("shared");
    std::fs::create_dir(&folder).unwrap();
    let clock = shoal::core::ManualClock::new(NOW);
    let options =
        WorkspaceOptions { clock: Arc::new(clock.clone()), members_only: true, encrypted: true };
    let admin = Workspace::create(dir.path().join("a.shoal"), options.clone()).unwrap();
    admin.declare(&spec()).unwrap();
    put(&admin, "a1", "before").unwrap();
    let code = admin.invite(Role::Member, None, 2, "").unwrap();
    admin.sync_folder(&folder).await.unwrap();
    let b = Workspace::join_with_code(dir.path().join("b.shoal"), &code, options.clone()).unwrap();
    b.sync_folder(&folder).await.unwrap();
    assert_eq!(ids(&b), ["a1"]);

    clock.set(YEAR_2100);
    put(&admin, "stuck", "written in 2100").unwrap();
    clock.set(NOW + 1_000);
    admin.sync_folder(&folder).await.unwrap();
    let (admin, rec) = admin.recover_clock().unwrap();
    assert_eq!(rec.succession.reissued, 1);
    admin.sync_folder(&folder).await.unwrap();
    b.sync_folder(&folder).await.unwrap();
    assert_eq!(ids(&b), ["a1", "stuck"], "the re-issued write is encrypted and readable");
    assert_eq!(admin.replica().keyring().unwrap().epochs().collect::<Vec<_>>(), [0]);
    // The successor is an admin with keys: a device it invites reads everything, and a
    // removal it makes rotates the key for the members it knows.
    let code = admin.invite(Role::Member, None, 1, "").unwrap();
    admin.sync_folder(&folder).await.unwrap();
    let c = Workspace::join_with_code(dir.path().join("c.shoal"), &code, options).unwrap();
    c.sync_folder(&folder).await.unwrap();
    assert_eq!(ids(&c), ["a1", "stuck"]);
    admin.sync_folder(&folder).await.unwrap();
    admin.remove_device(c.device().unwrap()).unwrap();
    put(&admin, "a2", "new epoch").unwrap();
    admin.sync_folder(&folder).await.unwrap();
    b.sync_folder(&folder).await.unwrap();
    c.sync_folder(&folder).await.unwrap();
    assert_eq!(ids(&b), ["a1", "a2", "stuck"]);
    assert_eq!(ids(&c), ["a1", "stuck"]);
}

/// A member that published an X25519 key no key can be wrapped for (a low-order point; it
/// holds the invite code, so its join is valid) must not stop an admin's removal of
/// someone else, nor its syncs.
#[tokio::test]
async fn a_member_with_an_unusable_exchange_key_blocks_nothing() {
    use shoal::core::ExchangeKey;
    let w = World::new(true).await;
    let code = w.admin.invite(Role::Member, None, 3, "").unwrap();
    w.sync(&w.admin).await;
    let b = w.join("b.shoal", &code).await;
    // The hostile joiner builds its join by hand: the proof signs workspace, origin and
    // an all-zero exchange key (FORMAT §3.4).
    let key = shoal::core::DeviceKey::from_secret_bytes(&[0x77; 32]);
    let ws = w.admin.id();
    let origin = key.peer_id(&ws);
    let zero = ExchangeKey([0; 32]);
    let mut message = b"shoal 2026-11 join v1\0".to_vec();
    message.extend_from_slice(ws.as_bytes());
    message.extend_from_slice(origin.as_bytes());
    message.extend_from_slice(&zero.0);
    let join = ControlOp::Join {
        invite_key: code.key().public_key(),
        exchange: zero,
        proof: code.key().sign(&message),
    };
    let path = w.dir.path().join("x.shoal");
    let x = shoal::sqlite::SqliteReplica::create(&path, ws, Some(key), Default::default()).unwrap();
    x.append_local(vec![shoal::sqlite::LocalTx { ops: vec![join.to_op()], author: None }]).unwrap();
    let entries = x.read_page(origin, 0).unwrap();
    w.admin.replica().apply_entries(origin, entries).unwrap();
    let roster = w.admin.replica().roster().unwrap();
    assert!(roster.device(&origin).unwrap().role.is_some(), "its join is valid");
    // The admin removes b: the new epoch is wrapped for every other member it can reach.
    w.sync(&w.admin).await;
    w.admin.remove_device(b.device().unwrap()).unwrap();
    put(&w.admin, "a2", "after").unwrap();
    w.sync(&w.admin).await;
    assert_eq!(w.admin.replica().keyring().unwrap().newest().unwrap().0, 1);
}
