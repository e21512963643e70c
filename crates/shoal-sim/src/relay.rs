//! The relay in the simulation: the real relay server (`shoal_relay::server::Relay`, its
//! session state machine and the one ingest pipeline) over the in-memory store, reached by
//! devices over in-memory links that drop, duplicate, reorder, delay and cut frames, and
//! restarted now and then (every connection lost, the store kept, as a process restart
//! over its database).
//!
//! Owns: [`SimRelay`]: the relay, its store, its links' fault generator, and its counts.
//!
//! Invariants: every draw comes from the relay's own generator (seeded from the run's
//! seed), so adding the relay left every other draw of a seed as it was. A link's faults
//! are drawn per frame, in the order frames pass, on the run's one thread.
//!
//! Never: reaches into the relay's state; devices see it only through frames.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use shoal::Workspace;
use shoal::relay::client::{ConnectOptions, Link, RemoteReplica};
use shoal::relay::frame::RelayId;
use shoal::relay::server::{Relay, RelayConfig};
use shoal_core::store::MemoryLogStore;

/// How long a device waits for the relay's answer in the simulation (frames are dropped:
/// a lost request must fail its pass soon, not after a minute).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

/// Per-frame fault rates of an armed link.
#[derive(Debug, Clone, Copy)]
struct LinkFaults {
    drop: f64,
    duplicate: f64,
    reorder: f64,
    delay: f64,
    cut: f64,
}

const ARMED: LinkFaults =
    LinkFaults { drop: 0.02, duplicate: 0.03, reorder: 0.03, delay: 0.05, cut: 0.01 };

/// The simulated relay (see the module doc).
pub(crate) struct SimRelay {
    store: Arc<MemoryLogStore>,
    relay: Arc<Relay>,
    rng: StdRng,
    /// Relay restarts so far.
    pub restarts: u64,
    /// Connections made.
    pub connections: u64,
    /// Faults injected on links (frames dropped, duplicated, reordered, delayed; cuts).
    pub faults: Arc<std::sync::atomic::AtomicU64>,
}

fn config() -> RelayConfig {
    let mut c = RelayConfig::new(RelayId([0x51; 32]));
    // A simulated device reconnects often; its old connections may linger a moment.
    c.max_connections_per_device = 64;
    c
}

impl SimRelay {
    pub(crate) fn new(seed: u64) -> SimRelay {
        let store = Arc::new(MemoryLogStore::new());
        let relay = Relay::new(store.clone(), config());
        SimRelay {
            store,
            relay,
            rng: StdRng::seed_from_u64(seed ^ 0x7265_6c61_7921_2121),
            restarts: 0,
            connections: 0,
            faults: Arc::default(),
        }
    }

    /// Whether to sync this pass through the relay rather than the folder.
    pub(crate) fn chosen(&mut self) -> bool {
        self.rng.random_bool(0.4)
    }

    /// Whether the relay restarts at this step.
    pub(crate) fn restart_now(&mut self) -> bool {
        self.rng.random_bool(0.01)
    }

    /// Restarts the relay: every connection is refused with `Shutdown`; the store stays.
    pub(crate) fn restart(&mut self) {
        self.restarts += 1;
        self.relay.stop();
        self.relay = Relay::new(self.store.clone(), config());
    }

    /// A new connection of `ws`'s device to the relay, over a link with faults if `armed`.
    pub(crate) async fn connect(
        &mut self,
        ws: &Workspace,
        name: String,
        armed: bool,
    ) -> Result<RemoteReplica, String> {
        self.connections += 1;
        let key = ws.replica().device_key().cloned().ok_or("a device without a key")?;
        let (device_end, link_a) = Link::pair(16);
        let (link_b, relay_end) = Link::pair(16);
        let relay = self.relay.clone();
        tokio::spawn(async move { relay.serve_link(relay_end, name).await });
        let faults = armed.then_some(ARMED);
        let rng = StdRng::seed_from_u64(self.rng.random());
        tokio::spawn(carry(link_a, link_b, faults, rng, self.faults.clone()));
        let options =
            ConnectOptions { request_timeout: Some(REQUEST_TIMEOUT), ..Default::default() };
        let connect = RemoteReplica::over_link(device_end, "sim relay", ws.id(), &key, &options);
        match tokio::time::timeout(Duration::from_secs(1), connect).await {
            Ok(Ok(remote)) => Ok(remote),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the relay did not answer within 1 s".into()),
        }
    }
}

/// Carries frames between a device's side (`a`) and the relay's (`b`), both ways, with
/// `faults` drawn from `rng`; ends (closing both sides) when either side does or a cut is
/// drawn.
async fn carry(
    a: Link,
    b: Link,
    faults: Option<LinkFaults>,
    mut rng: StdRng,
    count: Arc<std::sync::atomic::AtomicU64>,
) {
    let (Link { tx: to_device, rx: mut from_device }, Link { tx: to_relay, rx: mut from_relay }) =
        (a, b);
    // A frame held back, to be sent after the next one of the same direction.
    let mut held_up: Option<Vec<u8>> = None;
    let mut held_down: Option<Vec<u8>> = None;
    loop {
        let (frame, up) = tokio::select! {
            f = from_device.recv() => match f { Some(f) => (f, true), None => break },
            f = from_relay.recv() => match f { Some(f) => (f, false), None => break },
        };
        let (tx, held) = if up { (&to_relay, &mut held_up) } else { (&to_device, &mut held_down) };
        let Some(f) = faults else {
            if tx.send(frame).await.is_err() {
                break;
            }
            continue;
        };
        let fault = || count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if rng.random_bool(f.cut) {
            fault();
            break;
        }
        if rng.random_bool(f.drop) {
            fault();
            continue;
        }
        if rng.random_bool(f.delay) {
            fault();
            tokio::time::sleep(Duration::from_millis(rng.random_range(1..20))).await;
        }
        if held.is_none() && rng.random_bool(f.reorder) {
            fault();
            *held = Some(frame);
            continue;
        }
        let twice = rng.random_bool(f.duplicate);
        let mut out = vec![frame.clone()];
        if twice {
            fault();
            out.push(frame);
        }
        out.extend(held.take());
        for f in out {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    }
}
