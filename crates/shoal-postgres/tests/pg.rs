//! PgLogStore against a real PostgreSQL server started from the installed binaries
//! (`shoal_postgres::testing`): the LogStore conformance suite, two relay nodes over one
//! database, migrations, the schema's sharding property, bad rows, and a server restart.
//!
//! One cluster serves the whole file (a fresh database per test); the restart test has a
//! cluster of its own.

#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::WorkspaceId;
use shoal_core::store::LogStore;
use shoal_core::store::conformance::{self, Device, append, next_event, read_all};
use shoal_postgres::PgLogStore;
use shoal_postgres::testing::TestCluster;

fn cluster() -> &'static TestCluster {
    TestCluster::shared().unwrap_or_else(|e| panic!("no PostgreSQL server for the tests: {e}"))
}

async fn fresh_url() -> String {
    cluster().fresh_database().await.unwrap_or_else(|e| panic!("{e}"))
}

async fn fresh() -> Arc<dyn LogStore> {
    Arc::new(PgLogStore::connect(&fresh_url().await).await.unwrap())
}

shoal_core::logstore_conformance!(fresh());

/// A plain client on `url`, for looking behind the store's back.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_through_one_node_reaches_the_others_feed_and_reads() {
    let url = fresh_url().await;
    let (one, two) =
        (PgLogStore::connect(&url).await.unwrap(), PgLogStore::connect(&url).await.unwrap());
    let (mut a, genesis) = Device::founder(1, 1);
    let ws = a.workspace;
    let mut feed = two.subscribe();
    append(&one, ws, genesis.clone()).await;
    let ev = next_event(&mut feed).await;
    assert_eq!((ev.workspace, ev.origin, ev.next, ev.control), (ws, a.origin(), 1, true));
    let data = a.data(3, 10);
    append(&one, ws, data.clone()).await;
    let ev = next_event(&mut feed).await;
    assert_eq!((ev.next, ev.control), (4, false));
    assert_eq!(read_all(&two, ws, a.origin(), 0).await, [genesis, data].concat());
    assert_eq!(two.heads(ws).await.unwrap(), one.heads(ws).await.unwrap());
    assert_eq!(two.control_count(ws).await.unwrap(), 1);
    // And the other way round.
    let mut back = one.subscribe();
    append(&two, ws, a.control()).await;
    assert_eq!(next_event(&mut back).await.next, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_one_origin_through_two_nodes() {
    let url = fresh_url().await;
    let one: Arc<dyn LogStore> = Arc::new(PgLogStore::connect(&url).await.unwrap());
    let two: Arc<dyn LogStore> = Arc::new(PgLogStore::connect(&url).await.unwrap());
    conformance::concurrent_writers_on(one, two).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_once_when_nodes_start_together_and_again_harmlessly() {
    let url = fresh_url().await;
    let starts: Vec<_> = (0..6).map(|_| PgLogStore::connect(&url)).collect();
    let stores: Vec<PgLogStore> =
        futures::future::join_all(starts).await.into_iter().map(|s| s.unwrap()).collect();
    let again = PgLogStore::connect(&url).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), shoal_postgres::MIGRATIONS.len() as i32);
    let c = raw(&url).await;
    let n: i64 = c.query_one("SELECT count(*) FROM shoal_migrations", &[]).await.unwrap().get(0);
    assert_eq!(n, shoal_postgres::MIGRATIONS.len() as i64);
    drop(stores);

    // A schema newer than this build: refused, naming the database, never half-used.
    c.execute("INSERT INTO shoal_migrations (version) VALUES (999)", &[]).await.unwrap();
    let err = PgLogStore::connect(&url).await.unwrap_err().to_string();
    assert!(err.contains(&again.describe()) && err.contains("999"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_table_and_index_leads_with_the_workspace() {
    let url = fresh_url().await;
    let store = PgLogStore::connect(&url).await.unwrap();
    let c = raw(&url).await;
    let tables = c
        .query(
            "SELECT t.relname::text, (SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                 ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = t.oid AND i.indisprimary) \
             FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relkind IN ('r', 'p') \
               AND t.relname NOT IN ('shoal_migrations', 'relay_meta') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let tables: Vec<(String, Option<String>)> =
        tables.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        tables,
        [("relay_entries", Some("workspace")), ("relay_heads", Some("workspace"))]
            .map(|(t, k)| (t.to_owned(), k.map(str::to_owned)))
    );
    let indexes = c
        .query(
            "SELECT i.indexrelid::regclass::text, a.attname::text FROM pg_index i \
             JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace \
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE n.nspname = current_schema() AND t.relname NOT IN ('shoal_migrations', 'relay_meta') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    assert!(indexes.len() >= 3, "{indexes:?}");
    for r in &indexes {
        let (name, first): (String, Option<String>) = (r.get(0), r.get(1));
        assert_eq!(
            first.as_deref(),
            Some("workspace"),
            "index {name} does not lead with workspace"
        );
    }
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_in_the_database_are_errors_naming_it() {
    let url = fresh_url().await;
    let store = PgLogStore::connect(&url).await.unwrap();
    let ws = WorkspaceId::from_bytes([2; 16]);
    let mut d = Device::new(1, ws);
    append(&store, ws, d.data(3, 5)).await;
    append(&store, ws, d.control()).await;
    let c = raw(&url).await;
    let name = store.describe();
    let check = |e: shoal_core::SyncError| assert!(e.to_string().contains(&name), "{e}");
    c.execute("UPDATE relay_entries SET bytes = '\\xff00' WHERE idx = 1", &[]).await.unwrap();
    let err = store.read(ws, d.origin(), 0, usize::MAX).await.unwrap_err();
    assert!(err.to_string().contains(&format!("{}#1", d.origin())), "{err}");
    check(err);
    c.execute("DELETE FROM relay_entries WHERE idx = 1", &[]).await.unwrap();
    check(store.read(ws, d.origin(), 0, usize::MAX).await.unwrap_err());
    c.execute("UPDATE relay_entries SET bytes = '\\x00' WHERE control", &[]).await.unwrap();
    check(store.control_entries(ws).await.unwrap_err());
    c.execute("UPDATE relay_heads SET chain = '\\x01'", &[]).await.unwrap();
    check(store.head(ws, d.origin()).await.unwrap_err());
    check(store.heads(ws).await.unwrap_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_fails_calls_naming_the_database_then_they_and_the_feed_resume() {
    let own = TestCluster::start().unwrap_or_else(|e| panic!("no PostgreSQL server: {e}"));
    let url = own.fresh_database().await.unwrap();
    let store = PgLogStore::connect(&url).await.unwrap();
    let ws = WorkspaceId::from_bytes([3; 16]);
    let mut d = Device::new(1, ws);
    let mut feed = store.subscribe();
    let first = d.data(2, 5);
    append(&store, ws, first.clone()).await;
    assert_eq!(next_event(&mut feed).await.next, 2);

    own.stop().unwrap();
    let err = store.heads(ws).await.unwrap_err();
    assert!(err.to_string().contains(&store.describe()), "{err}");
    own.resume().unwrap();

    // The next calls reconnect (a pooled connection the restart closed may fail one call).
    let deadline = Instant::now() + Duration::from_secs(20);
    let heads = loop {
        match store.heads(ws).await {
            Ok(h) => break h,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains(&store.describe()), "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not reconnect: {e}"),
        }
    };
    assert_eq!(heads, vec![(d.origin(), ChainPositionOf::of(&first, ws))]);
    // The feed listens again (and counts the gap), then reports new appends.
    while store.feed_gaps() == 0 {
        assert!(Instant::now() < deadline, "the feed did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.feed_gaps(), 1);
    let second = d.data(1, 5);
    let run = conformance::verified(&store, ws, second.clone()).await;
    assert_eq!(store.append(ws, &run).await.unwrap(), shoal_core::store::Appended::Stored);
    assert_eq!(next_event(&mut feed).await.next, 3);
    assert_eq!(read_all(&store, ws, d.origin(), 0).await, [first, second].concat());
}

/// The chain position after a device's first entries.
struct ChainPositionOf;

impl ChainPositionOf {
    fn of(entries: &[shoal_core::Entry], ws: WorkspaceId) -> shoal_core::ChainPosition {
        let origin = entries[0].origin;
        let start = shoal_core::ChainPosition::start(&ws, &origin);
        let chain = shoal_core::chain_through(start, entries).unwrap();
        shoal_core::ChainPosition { next: entries.len() as u64, chain }
    }
}
