//! Shoal over a real file-sync tool: two folders kept in sync by two real Syncthing
//! instances (loopback only, started by this test), one device on each side, concurrent
//! writes on both, continuous mirrors — the devices must converge.
//!
//! Needs the `syncthing` binary (Debian package `syncthing`; `scripts/setup` installs it
//! when run as root). Without it the test fails and says so, unless
//! `SHOAL_SKIP_SYNCTHING=1` is set deliberately.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed assertion

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal::filelog::Config;
use shoal::*;

/// A Syncthing process, killed when dropped.
struct Syncthing(Child);

impl Drop for Syncthing {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn device_id(home: &Path) -> String {
    let out = Command::new("syncthing")
        .args(["serve", "--device-id"])
        .arg(format!("--home={}", home.display()))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[allow(clippy::too_many_arguments)]
fn write_config(
    home: &Path,
    folder: &Path,
    me: &str,
    peer: &str,
    port: u16,
    peer_port: u16,
    gui: u16,
) {
    let config = format!(
        r#"<configuration version="36">
    <folder id="shoal" label="shoal" path="{folder}" type="sendreceive" rescanIntervalS="2" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false" autoNormalize="true">
        <filesystemType>basic</filesystemType>
        <device id="{me}"></device>
        <device id="{peer}"></device>
        <minDiskFree unit="%">0</minDiskFree>
    </folder>
    <device id="{me}" name="me" compression="metadata"><address>dynamic</address></device>
    <device id="{peer}" name="peer" compression="metadata"><address>tcp://127.0.0.1:{peer_port}</address></device>
    <gui enabled="true" tls="false"><address>127.0.0.1:{gui}</address><apikey>shoal-test</apikey></gui>
    <options>
        <listenAddress>tcp://127.0.0.1:{port}</listenAddress>
        <globalAnnounceEnabled>false</globalAnnounceEnabled>
        <localAnnounceEnabled>false</localAnnounceEnabled>
        <relaysEnabled>false</relaysEnabled>
        <natEnabled>false</natEnabled>
        <urAccepted>-1</urAccepted>
        <startBrowser>false</startBrowser>
        <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
        <crashReportingEnabled>false</crashReportingEnabled>
        <minHomeDiskFree unit="%">0</minHomeDiskFree>
        <reconnectionIntervalS>1</reconnectionIntervalS>
    </options>
</configuration>
"#,
        folder = folder.display()
    );
    std::fs::write(home.join("config.xml"), config).unwrap();
}

fn start(home: &Path, log: &Path) -> Syncthing {
    let child = Command::new("syncthing")
        .args(["serve", "--no-browser", "--no-restart", "--no-upgrade"])
        .arg(format!("--home={}", home.display()))
        .stdout(Stdio::from(std::fs::File::create(log).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .expect("start syncthing");
    Syncthing(child)
}

fn dump(ws: &Workspace) -> Vec<Vec<Value>> {
    ws.query("SELECT * FROM notes ORDER BY id", &[]).map(|r| r.rows).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_converge_through_two_syncthing_instances() {
    if Command::new("syncthing").arg("--version").output().is_err() {
        if std::env::var_os("SHOAL_SKIP_SYNCTHING").is_some() {
            eprintln!("syncthing is not installed; skipped because SHOAL_SKIP_SYNCTHING is set");
            return;
        }
        panic!(
            "syncthing is not installed: run `bash scripts/setup` as root (Debian package syncthing)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (homes, folders): (Vec<PathBuf>, Vec<PathBuf>) = (0..2)
        .map(|i| (dir.path().join(format!("home{i}")), dir.path().join(format!("folder{i}"))))
        .unzip();
    for (home, folder) in homes.iter().zip(&folders) {
        let out = Command::new("syncthing")
            .args(["generate", "--no-default-folder", "--skip-port-probing"])
            .arg(format!("--home={}", home.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "syncthing generate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Syncthing refuses a folder without its marker directory.
        std::fs::create_dir_all(folder.join(".stfolder")).unwrap();
    }
    let ids: Vec<String> = homes.iter().map(|h| device_id(h)).collect();
    let ports = [free_port(), free_port()];
    let guis = [free_port(), free_port()];
    for i in 0..2 {
        write_config(&homes[i], &folders[i], &ids[i], &ids[1 - i], ports[i], ports[1 - i], guis[i]);
    }
    let _syncthing: Vec<Syncthing> =
        (0..2).map(|i| start(&homes[i], &dir.path().join(format!("syncthing{i}.log")))).collect();

    // One device on each side, each mirroring its own folder continuously.
    let a = Workspace::create(dir.path().join("a.shoal"), WorkspaceOptions::default()).unwrap();
    let b =
        Workspace::join(dir.path().join("b.shoal"), a.id(), WorkspaceOptions::default()).unwrap();
    let spec = TableSpec::new("notes")
        .key("id", ColumnType::Text)
        .column("text", ColumnType::Text)
        .counter("hits");
    a.declare(&spec).unwrap();
    b.declare(&spec).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for (ws, folder) in [(&a, &folders[0]), (&b, &folders[1])] {
        let lock = ws.try_lock_sync().unwrap().unwrap();
        let mirror = ws.folder_mirror(folder, Config::default(), &lock).unwrap();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            mirror
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        }));
    }

    // Concurrent writes on both sides: own rows, one shared row edited by both, and a
    // shared counter.
    for round in 0..10 {
        for (name, ws) in [("a", &a), ("b", &b)] {
            let mut tx = ws.transaction().unwrap();
            tx.put(
                "notes",
                &[
                    ("id", Value::text(format!("{name}{round}")).unwrap()),
                    ("text", Value::text(name).unwrap()),
                ],
            )
            .unwrap();
            tx.put(
                "notes",
                &[
                    ("id", Value::text("shared").unwrap()),
                    ("text", Value::text(format!("{name} {round}")).unwrap()),
                ],
            )
            .unwrap();
            tx.increment("notes", &[Value::text("shared").unwrap()], "hits", 1).unwrap();
            tx.commit().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (da, db) = (dump(&a), dump(&b));
        let hits = a
            .query("SELECT hits FROM notes WHERE id = 'shared'", &[])
            .map(|r| r.rows)
            .unwrap_or_default();
        if da == db && da.len() == 21 && hits == vec![vec![Value::Integer(20)]] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence through Syncthing within 90 s: a has {} rows, b has {}; see the logs in {}",
            da.len(),
            db.len(),
            dir.path().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop_tx.send(true).unwrap();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
}
