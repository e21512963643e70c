//! A device whose clock ran ahead: the warning, and the recovery (`docs/ARCHITECTURE.md`
//! "Wrong clocks").
//!
//! Owns: [`Workspace::clock_ahead`] (is this device's clock state past the bound receivers
//! use?), [`Workspace::recover_clock`] (hand the device's log over to a fresh key once the
//! wall clock is right, re-issuing the stuck writes) and [`ClockRecovery`].
//!
//! Invariants: the warning uses the receivers' own bound ([`MAX_FORWARD_SKEW_MS`]): a
//! device warns exactly when its next entries would stall on a receiver whose wall clock
//! reads the same as its own. A recovery loses no write: every entry of the predecessor
//! from the cut on has its ops re-issued under the successor in the same transaction that
//! supersedes it.
//!
//! Never: moves a clock back by itself (only the owner's explicit recovery does, by handing
//! over to a new origin), or recovers a device whose clock state is within the bound.

use shoal_core::{ClockSkew, DeviceKey, Entry, EntryBody, Hlc, MAX_FORWARD_SKEW_MS, clock_ahead};
use shoal_sqlite::Succession;

use crate::error::{Error, Result};
use crate::workspace::{Workspace, WorkspaceOptions};

/// What a clock recovery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockRecovery {
    /// How far ahead the clock state was before.
    pub was_ahead: ClockSkew,
    /// The hand-over: old and new origin, the cut, how many entries were re-issued.
    pub succession: Succession,
}

impl Workspace {
    /// How far this device's clock state (the greatest timestamp it issued or observed) is
    /// ahead of its wall clock, if by more than [`MAX_FORWARD_SKEW_MS`]: then every entry
    /// it writes stalls on the other devices until their clocks get there. Fix the clock,
    /// then run [`Workspace::recover_clock`].
    pub fn clock_ahead(&self) -> Result<Option<ClockSkew>> {
        let state = self.replica().clock_state()?;
        Ok(clock_ahead(state, self.replica().wall_clock().now_millis()))
    }

    /// Gets a device whose clock state ran ahead writing again: finds the first entry of
    /// its log stamped past the bound (the cut), makes a new device key, and hands the log
    /// over to it ([`shoal_sqlite::SqliteReplica::succeed`]): the new origin starts with a
    /// successor op signed by the old key, then re-issues the ops of every entry from the
    /// cut on with timestamps of the (now right) wall clock. Every replica that applies the
    /// successor op stops waiting for the old origin's entries from the cut on (they are
    /// superseded, never applied) and applies the re-issued ones: nothing is lost, nothing
    /// applies twice.
    ///
    /// Fails if the clock state is not ahead (the wall clock is still wrong, or nothing is
    /// wrong). Publish this device's log first (sync): entries of the old origin that no
    /// other replica holds stay in this file only. Returns the workspace reopened under the
    /// new key; other handles of this file (in this or another process) refuse to write
    /// until reopened.
    pub fn recover_clock(self) -> Result<(Workspace, ClockRecovery)> {
        self.replica().check_writable()?;
        let Some(was_ahead) = self.clock_ahead()? else {
            return Err(Error::ClockNotAhead { path: self.path().to_owned() });
        };
        let own = self.device().ok_or_else(|| Error::Path {
            path: self.path().to_owned(),
            reason: "this workspace file has no device key".into(),
        })?;
        let wall = self.replica().wall_clock().now_millis();
        let limit = wall.saturating_add(MAX_FORWARD_SKEW_MS);
        let cut = self.first_entry_past(own, limit)?;
        let key = DeviceKey::generate()
            .map_err(|e| Error::Path { path: self.path().to_owned(), reason: e.to_string() })?;
        let succession = self.replica().succeed(key, cut)?;
        let path = self.path().to_owned();
        let options =
            WorkspaceOptions { clock: self.replica().wall_clock().clone(), ..Default::default() };
        drop(self);
        let reopened = Workspace::open(&path, options)?;
        Ok((reopened, ClockRecovery { was_ahead, succession }))
    }

    /// The first index of `origin` whose last op is stamped past `limit` milliseconds (its
    /// log's end if none: then only the observed clock is ahead, and nothing is re-issued).
    fn first_entry_past(&self, origin: shoal_core::PeerId, limit: u64) -> Result<u64> {
        let past = |e: &Entry| match &e.body {
            EntryBody::Expunged(_) => false,
            body => body.last_hlc().is_some_and(|h: Hlc| h.millis() > limit),
        };
        let end = self.replica().durable_cursors()?.get(&origin);
        let mut from = 0;
        while from < end {
            let page = self.replica().read_page(origin, from)?;
            let Some(last) = page.last() else { break };
            if let Some(e) = page.iter().find(|e| past(e)) {
                return Ok(e.index);
            }
            from = last.index + 1;
        }
        Ok(end)
    }
}
