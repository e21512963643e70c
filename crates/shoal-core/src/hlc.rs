//! Hybrid logical clock.
//!
//! Owns: [`Hlc`] (a `u64`: 48 bits of Unix milliseconds, 16 bits of counter), the
//! [`WallClock`] abstraction (injectable for tests), and [`HlcClock`], the per-device clock
//! state.
//!
//! Invariants: plain integer comparison of [`Hlc`] is causal order. Every timestamp handed
//! out by [`HlcClock::tick`] is strictly greater than every timestamp the clock handed out or
//! observed before, whatever the wall clock does (stalls and backward steps are absorbed by
//! the counter, and a full counter carries into the millisecond field). A remote timestamp
//! more than [`MAX_FORWARD_SKEW_MS`] ahead of the local wall clock is refused by
//! [`HlcClock::observe`] and leaves the clock unchanged.
//!
//! Never: persists itself. The replica stores [`HlcClock::last`] in the same transaction as
//! the write it stamped (DESIGN §5), and restores it with [`HlcClock::resume`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How far (milliseconds) a remote timestamp may be ahead of the local wall clock.
pub const MAX_FORWARD_SKEW_MS: u64 = 60_000;

/// A hybrid logical clock timestamp: `millis << 16 | counter`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hlc(u64);

impl Hlc {
    /// The smallest timestamp; no real write carries it.
    pub const ZERO: Hlc = Hlc(0);

    /// Wraps a raw value.
    pub const fn from_u64(raw: u64) -> Self {
        Hlc(raw)
    }

    /// The raw value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The timestamp at the start of wall-clock millisecond `millis`.
    pub const fn from_millis(millis: u64) -> Self {
        Hlc(millis << 16)
    }

    /// The wall-clock millisecond part.
    pub const fn millis(self) -> u64 {
        self.0 >> 16
    }

    /// The counter part.
    pub const fn counter(self) -> u16 {
        self.0 as u16
    }

    /// The timestamp `n` steps later (op `n` of an entry stamped `self`), saturating.
    pub const fn plus(self, n: u64) -> Self {
        Hlc(self.0.saturating_add(n))
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.millis(), self.counter())
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:05}", self.millis(), self.counter())
    }
}

/// A source of wall-clock time in Unix milliseconds.
pub trait WallClock: Send + Sync + fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_millis(&self) -> u64;
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_millis(&self) -> u64 {
        // A clock before 1970 is treated as 1970: the HLC counter still keeps order.
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock reading `millis`.
    pub fn new(millis: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(millis)))
    }

    /// Sets the time (backwards is allowed).
    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }

    /// Moves the time by `delta` milliseconds (negative moves it back).
    pub fn advance(&self, delta: i64) {
        let now = self.0.load(Ordering::SeqCst);
        self.set(now.saturating_add_signed(delta));
    }
}

impl WallClock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A remote timestamp was too far ahead of the local clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "clock ahead by {}: stamped {remote}, {ahead_ms} ms ahead of the local clock (limit {MAX_FORWARD_SKEW_MS} ms); \
     its device must fix its clock and recover (`shoal recover-clock`)",
    human_duration(*ahead_ms)
)]
pub struct ClockSkew {
    /// The refused timestamp.
    pub remote: Hlc,
    /// How far ahead of the local wall clock it was.
    pub ahead_ms: u64,
}

/// A device's clock state: the greatest timestamp issued or observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A fresh clock that has issued nothing.
    pub const fn new() -> Self {
        HlcClock { last: Hlc::ZERO }
    }

    /// Restores a clock from its persisted `last` value.
    pub const fn resume(last: Hlc) -> Self {
        HlcClock { last }
    }

    /// The greatest timestamp issued or observed.
    pub const fn last(&self) -> Hlc {
        self.last
    }

    /// Stamps an entry of `ops` operations (at least one timestamp is reserved even for an
    /// empty entry). Returns the entry's timestamp `h`; its ops are `h, h+1, …`, and the clock
    /// moves to the last of them.
    pub fn tick(&mut self, wall_millis: u64, ops: usize) -> Hlc {
        let physical = Hlc::from_millis(wall_millis.min(Hlc::MAX_MILLIS));
        let h = physical.max(self.last.plus(1));
        self.last = h.plus(ops.max(1) as u64 - 1);
        h
    }

    /// Observes the timestamp of the last op of a remote entry: refuses it if it is more than
    /// [`MAX_FORWARD_SKEW_MS`] ahead of `wall_millis`, otherwise moves the clock to at least
    /// it.
    pub fn observe(&mut self, remote: Hlc, wall_millis: u64) -> Result<(), ClockSkew> {
        check_skew(remote, wall_millis)?;
        self.last = self.last.max(remote);
        Ok(())
    }
}

impl Default for HlcClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Hlc {
    /// The largest millisecond value the 48-bit field holds (year 10889).
    pub const MAX_MILLIS: u64 = (1 << 48) - 1;
}

/// Fails if `remote` is more than [`MAX_FORWARD_SKEW_MS`] ahead of `wall_millis`.
pub fn check_skew(remote: Hlc, wall_millis: u64) -> Result<(), ClockSkew> {
    let limit = wall_millis.saturating_add(MAX_FORWARD_SKEW_MS);
    if remote.millis() > limit {
        return Err(ClockSkew { remote, ahead_ms: remote.millis() - wall_millis });
    }
    Ok(())
}

/// How far `clock` (a device's clock state) is ahead of `wall_millis`, if it is more than
/// [`MAX_FORWARD_SKEW_MS`] ahead: the bound receivers use to refuse an entry
/// ([`check_skew`]), so a device whose clock state is past it knows its next entries will
/// stall on every other device.
pub fn clock_ahead(clock: Hlc, wall_millis: u64) -> Option<ClockSkew> {
    check_skew(clock, wall_millis).err()
}

/// A duration in milliseconds for people: the largest unit that fits, one decimal
/// (`"74.1 years"`, `"3.0 days"`, `"2.5 min"`, `"61.0 s"`, `"900 ms"`).
pub fn human_duration(ms: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (365 * 24 * 3_600_000 + 6 * 3_600_000, "years"),
        (24 * 3_600_000, "days"),
        (3_600_000, "h"),
        (60_000, "min"),
        (1_000, "s"),
    ];
    for (size, name) in UNITS {
        if ms >= size {
            return format!("{:.1} {name}", ms as f64 / size as f64);
        }
    }
    format!("{ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_48_bits_of_millis_and_16_of_counter() {
        let h = Hlc::from_millis(5).plus(3);
        assert_eq!(h.as_u64(), (5 << 16) | 3);
        assert_eq!(h.millis(), 5);
        assert_eq!(h.counter(), 3);
    }

    #[test]
    fn ops_of_an_entry_get_consecutive_timestamps() {
        let mut c = HlcClock::new();
        let h = c.tick(1000, 3);
        assert_eq!(h, Hlc::from_millis(1000));
        assert_eq!(c.last(), h.plus(2));
        assert_eq!(c.tick(1000, 1), h.plus(3));
    }

    #[test]
    fn counter_overflow_carries_into_millis() {
        let mut c = HlcClock::resume(Hlc::from_millis(7).plus(0xffff));
        let h = c.tick(7, 1);
        assert_eq!(h, Hlc::from_millis(8));
    }

    #[test]
    fn clock_ahead_uses_the_receivers_bound_and_says_how_far_in_words() {
        let wall = 1_800_000_000_000;
        assert_eq!(clock_ahead(Hlc::from_millis(wall + MAX_FORWARD_SKEW_MS), wall), None);
        let far = clock_ahead(Hlc::from_millis(wall + MAX_FORWARD_SKEW_MS + 1), wall).unwrap();
        assert_eq!(far.ahead_ms, MAX_FORWARD_SKEW_MS + 1);
        assert!(far.to_string().starts_with("clock ahead by 1.0 min"), "{far}");
        assert_eq!(human_duration(900), "900 ms");
        assert_eq!(human_duration(2 * 86_400_000), "2.0 days");
        assert_eq!(human_duration(74 * (365 * 86_400_000 + 21_600_000)), "74.0 years");
    }

    #[test]
    fn skew_over_sixty_seconds_is_refused_and_changes_nothing() {
        let mut c = HlcClock::resume(Hlc::from_millis(10_000));
        let far = Hlc::from_millis(10_000 + MAX_FORWARD_SKEW_MS + 1);
        let err = c.observe(far, 10_000).unwrap_err();
        assert_eq!(err.ahead_ms, MAX_FORWARD_SKEW_MS + 1);
        assert_eq!(c.last(), Hlc::from_millis(10_000));
        let edge = Hlc::from_millis(10_000 + MAX_FORWARD_SKEW_MS).plus(0xffff);
        c.observe(edge, 10_000).unwrap();
        assert_eq!(c.last(), edge);
        assert!(c.tick(10_000, 1) > edge);
    }

    proptest! {
        /// Under any sequence of wall-clock readings (stalls, backward jumps) and observed
        /// remote timestamps, every tick is strictly greater than everything before it.
        #[test]
        fn ticks_are_strictly_monotonic(
            steps in proptest::collection::vec((0u64..200_000, 0usize..5, proptest::option::of(0u64..300_000)), 1..200)
        ) {
            let mut c = HlcClock::new();
            let mut greatest = Hlc::ZERO;
            for (wall, ops, remote) in steps {
                if let Some(r) = remote {
                    let r = Hlc::from_millis(r);
                    if c.observe(r, wall).is_ok() {
                        greatest = greatest.max(r);
                    }
                }
                let h = c.tick(wall, ops);
                prop_assert!(h > greatest, "tick {h:?} not after {greatest:?}");
                prop_assert!(h >= Hlc::from_millis(wall));
                greatest = h.plus(ops.max(1) as u64 - 1);
                prop_assert_eq!(c.last(), greatest);
            }
        }
    }
}
