//! Convergence over one shared folder: devices writing concurrently, each with its own
//! mirror running continuously, end with identical logs; a device that starts late catches
//! up. (DESIGN §11: same set of entries, whatever the order, gives the same state.)

mod common;

use std::time::Duration;

use common::*;
use shoal_core::*;
use shoal_filelog::Config;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Identical dumps and identical cursors, with `total` entries. (A replica publishes its
/// cursors just after it applies, so both are compared in one wait.)
async fn converged(devices: &[&Device], total: u64) -> bool {
    // Seals are transport data: the writer seals each transaction, the folder keeps one per
    // block, so replicas of one log may hold different seals of it. Compare the entries.
    let dumps: Vec<Vec<Entry>> = devices.iter().map(|d| d.replica.contents()).collect();
    let mut cursors = Vec::new();
    for d in devices {
        cursors.push(d.cursors().await);
    }
    dumps.iter().all(|d| d.len() as u64 == total)
        && dumps.windows(2).all(|w| w[0] == w[1])
        && cursors.windows(2).all(|w| w[0] == w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_converge_and_a_late_fourth_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path();
    // Compaction on with a small fanout, so readers meet merges and overlaps while they
    // pull.
    let config = Config { compaction_fanout: 3, ..Config::for_tests() };
    let devices: Vec<Device> = (1..=3).map(|n| Device::new(folder, n, config.clone())).collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = |d: &Device| {
        let mirror = d.mirror.clone();
        let mut rx = stopped.clone();
        tokio::spawn(async move {
            mirror
                .run(async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let mut mirrors: Vec<_> = devices.iter().map(run).collect();

    // Concurrent random transactions of 1–3 entries, with random pauses.
    let writers: Vec<_> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let replica = d.replica.clone();
            tokio::spawn(async move {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                let mut n = 0u64;
                for _ in 0..40 {
                    let size = 1 + rng.below(3);
                    let batch: Vec<Payload> = (0..size).map(|k| payload(n + k)).collect();
                    n += size;
                    replica.append_local(batch).unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.below(6))).await;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }

    let all: Vec<&Device> = devices.iter().collect();
    wait_until(Duration::from_secs(20), "the three devices converge", || converged(&all, total))
        .await;
    let cursors = devices[0].cursors().await;
    assert_eq!(cursors.len(), 3);
    assert_eq!(cursors.total(), total);

    // A fourth device starts late and catches up from the folder alone.
    let late = Device::new(folder, 4, config.clone());
    mirrors.push(run(&late));
    let with_late: Vec<&Device> = devices.iter().chain([&late]).collect();
    wait_until(Duration::from_secs(20), "the late device catches up", || {
        converged(&with_late, total)
    })
    .await;
    assert_eq!(late.cursors().await, cursors);

    // Compaction kept each busy origin to a handful of files.
    for d in &devices {
        let files = segment_files(folder, &d.origin).len();
        assert!(files <= 12, "{} has {files} segment files", d.origin);
    }
    wait_until(Duration::from_secs(5), "every mirror reports being in sync", || async {
        with_late.iter().all(|d| d.mirror.status().in_sync())
    })
    .await;

    stop.send(true).unwrap();
    for m in mirrors {
        m.await.unwrap().unwrap();
    }
}
