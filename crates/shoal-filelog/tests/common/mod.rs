//! Helpers shared by the integration tests: devices (a `MemoryReplica` with its key and
//! mirror), payloads, waiting for a condition, and reading the folder's layout.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::*;
use shoal_filelog::{Config, FolderReplica, Mirror};

pub fn workspace() -> WorkspaceId {
    WorkspaceId::derive(&key(1).public_key(), &[0; 16])
}

pub fn key(n: u8) -> DeviceKey {
    DeviceKey::from_secret_bytes(&[n; 32])
}

pub fn payload(n: u64) -> Payload {
    Payload {
        hlc: Hlc::from_millis(1_700_000_000_000 + n),
        author: None,
        ops: vec![Op { domain: Domain::TABLES, kind: 1, body: n.to_le_bytes().to_vec() }],
    }
}

/// One device: its key, its in-memory replica, and a mirror on `folder`.
pub struct Device {
    pub key: DeviceKey,
    pub origin: PeerId,
    pub replica: Arc<MemoryReplica>,
    pub mirror: Arc<Mirror>,
}

impl Device {
    pub fn new(folder: &Path, n: u8, config: Config) -> Device {
        let key = key(n);
        let replica = Arc::new(MemoryReplica::new(workspace(), Some(key.clone())));
        Device::with_replica(folder, key, replica, config)
    }

    /// A device (re)started on an existing replica: a new mirror, as after a restart.
    pub fn with_replica(
        folder: &Path,
        key: DeviceKey,
        replica: Arc<MemoryReplica>,
        config: Config,
    ) -> Device {
        let folder_replica = FolderReplica::new(folder, workspace(), key.clone(), config);
        let local: Arc<dyn Replica<Entry>> = replica.clone();
        let mirror = Arc::new(Mirror::new(folder_replica, local));
        Device { origin: key.peer_id(&workspace()), key, replica, mirror }
    }

    /// Appends `count` one-entry transactions numbered from `start`.
    pub fn append(&self, start: u64, count: u64) {
        for n in start..start + count {
            self.replica.append_local(vec![payload(n)]).expect("the replica has a key");
        }
    }

    pub async fn cursors(&self) -> PeerCursors {
        self.replica.cursors().await.expect("memory replicas do not fail")
    }
}

/// Polls `check` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The directory of `origin` in `folder`.
pub fn origin_dir(folder: &Path, origin: &PeerId) -> PathBuf {
    folder.join(workspace().to_hex()).join(origin.to_hex())
}

/// The canonical segment files of `origin`, sorted.
pub fn segment_files(folder: &Path, origin: &PeerId) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(origin_dir(folder, origin))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    out.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(shoal_filelog::layout::SegmentName::parse)
            .is_some()
    });
    out.sort();
    out
}

/// A config for tests with compaction off, so a test controls which files exist.
pub fn no_compaction() -> Config {
    Config { compaction_fanout: 0, ..Config::for_tests() }
}
