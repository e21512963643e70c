//! A simulated cloud folder tool (Dropbox, iCloud Drive, Syncthing…) between the devices'
//! local folders.
//!
//! Owns: [`Cloud`] — the server's copy of every device's own directory, the transfers in
//! flight to each device's local folder, and how they misbehave: uploads happen when the
//! simulation says so (late), downloads arrive one at a time in any order, some first as a
//! partial file under the final name (completed later), some twice, some beside a
//! conflict copy, and a device's whole folder can vanish for a while and come back.
//!
//! Invariants: a device's own directory in its local folder is written only by the device
//! (Shoal's single-writer rule; the cloud never writes there); every transfer queued is
//! eventually delivered by [`Cloud::deliver_all`] unless a later change of the same file
//! replaced it; hidden files (names starting with `.`, the writers' temporary files) are
//! not uploaded, as many cloud clients do.
//!
//! Never: reads or changes file contents other than copying them, or touches the devices'
//! workspace files.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use rand::RngExt;
use rand::rngs::StdRng;

/// A file's path relative to a folder root: `<workspace>/<origin>/<name>`.
type Rel = String;

#[derive(Debug, Clone)]
struct Transfer {
    to: usize,
    rel: Rel,
    /// The new content; `None` deletes the file.
    content: Option<Vec<u8>>,
}

/// The folder tool (see the module doc).
#[derive(Debug)]
pub(crate) struct Cloud {
    /// Each device's local folder root.
    roots: Vec<PathBuf>,
    /// Folders that are away (renamed aside), with where they are.
    away: BTreeMap<usize, PathBuf>,
    /// The server's copy of every file uploaded.
    server: BTreeMap<Rel, Vec<u8>>,
    /// Transfers not delivered yet.
    in_flight: Vec<Transfer>,
    /// Counters, for the report.
    pub(crate) stats: CloudStats,
}

/// What the cloud did during a run.
#[derive(Debug, Default, Clone, Copy)]
pub struct CloudStats {
    /// Files uploaded (new or changed) and deletions.
    pub uploads: u64,
    /// Transfers delivered.
    pub deliveries: u64,
    /// Deliveries that first wrote a partial file.
    pub partial: u64,
    /// Deliveries repeated.
    pub duplicated: u64,
    /// Conflict copies made.
    pub conflict_copies: u64,
    /// Times a folder went away.
    pub vanished: u64,
}

fn io_err(what: &str, path: &Path, e: io::Error) -> String {
    format!("cloud: {what} {}: {e}", path.display())
}

impl Cloud {
    pub(crate) fn new(roots: Vec<PathBuf>) -> Self {
        Cloud {
            roots,
            away: BTreeMap::new(),
            server: BTreeMap::new(),
            in_flight: Vec::new(),
            stats: CloudStats::default(),
        }
    }

    /// True if the device's folder is there now.
    pub(crate) fn present(&self, device: usize) -> bool {
        !self.away.contains_key(&device)
    }

    /// Uploads what changed in `device`'s own directory `<ws>/<origin>` of its local
    /// folder since the last upload, queueing a transfer to every other device.
    pub(crate) fn upload(&mut self, device: usize, own_dir: &str) -> Result<(), String> {
        if !self.present(device) {
            return Ok(());
        }
        let dir = self.roots[device].join(own_dir);
        let mut here: BTreeMap<Rel, Vec<u8>> = BTreeMap::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| io_err("listing", &dir, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') {
                        continue;
                    }
                    let path = entry.path();
                    let bytes = match std::fs::read(&path) {
                        Ok(b) => b,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("reading", &path, e)),
                    };
                    here.insert(format!("{own_dir}/{name}"), bytes);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("listing", &dir, e)),
        }
        let prefix = format!("{own_dir}/");
        let gone: Vec<Rel> = self
            .server
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !here.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for rel in gone {
            self.server.remove(&rel);
            self.queue(device, rel, None);
        }
        for (rel, bytes) in here {
            if self.server.get(&rel) != Some(&bytes) {
                self.server.insert(rel.clone(), bytes.clone());
                self.queue(device, rel, Some(bytes));
            }
        }
        Ok(())
    }

    fn queue(&mut self, from: usize, rel: Rel, content: Option<Vec<u8>>) {
        self.stats.uploads += 1;
        for to in 0..self.roots.len() {
            if to != from {
                // A newer change of the same file replaces the one still in flight.
                self.in_flight.retain(|t| !(t.to == to && t.rel == rel));
                self.in_flight.push(Transfer { to, rel: rel.clone(), content: content.clone() });
            }
        }
    }

    /// Delivers one transfer in flight, chosen at random, possibly misbehaving.
    pub(crate) fn deliver_one(&mut self, rng: &mut StdRng) -> Result<(), String> {
        let ready: Vec<usize> =
            (0..self.in_flight.len()).filter(|&i| self.present(self.in_flight[i].to)).collect();
        if ready.is_empty() {
            return Ok(());
        }
        let i = ready[rng.random_range(0..ready.len())];
        let t = self.in_flight.swap_remove(i);
        let roll: f64 = rng.random();
        match &t.content {
            Some(bytes) if roll < 0.15 && bytes.len() > 1 => {
                // A partial file under the final name; the rest comes later.
                let cut = rng.random_range(1..bytes.len());
                self.write(t.to, &t.rel, &bytes[..cut])?;
                self.stats.partial += 1;
                self.in_flight.push(t);
            }
            Some(bytes) if roll < 0.25 => {
                self.write(t.to, &t.rel, bytes)?;
                self.stats.duplicated += 1;
                self.stats.deliveries += 1;
                self.in_flight.push(t);
            }
            Some(bytes) if roll < 0.32 => {
                self.write(t.to, &t.rel, bytes)?;
                let n = self.stats.conflict_copies;
                let copy = match t.rel.rsplit_once('.') {
                    Some((stem, ext)) => format!("{stem} (conflicted copy {n}).{ext}"),
                    None => format!("{} (conflicted copy {n})", t.rel),
                };
                // A conflict copy with other bytes: a reader must ignore it by its name.
                let mut junk = bytes.clone();
                if let Some(b) = junk.last_mut() {
                    *b ^= 0x5a;
                }
                self.write(t.to, &copy, &junk)?;
                self.stats.conflict_copies += 1;
                self.stats.deliveries += 1;
            }
            Some(bytes) => {
                self.write(t.to, &t.rel, bytes)?;
                self.stats.deliveries += 1;
            }
            None => {
                self.remove(t.to, &t.rel)?;
                self.stats.deliveries += 1;
            }
        }
        Ok(())
    }

    fn write(&self, to: usize, rel: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.roots[to].join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
        }
        // Written in place, as cloud clients often do: a reader can see it half-written.
        std::fs::write(&path, bytes).map_err(|e| io_err("writing", &path, e))
    }

    fn remove(&self, to: usize, rel: &str) -> Result<(), String> {
        let path = self.roots[to].join(rel);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &path, e)),
        }
    }

    /// Delivers everything in flight, completely, in queue order (bringing folders back).
    pub(crate) fn deliver_all(&mut self) -> Result<(), String> {
        self.bring_back_all()?;
        for t in std::mem::take(&mut self.in_flight) {
            match &t.content {
                Some(bytes) => self.write(t.to, &t.rel, bytes)?,
                None => self.remove(t.to, &t.rel)?,
            }
            self.stats.deliveries += 1;
        }
        Ok(())
    }

    /// True if nothing is in flight.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight.is_empty() && self.away.is_empty()
    }

    /// Renames `device`'s folder aside (an unmounted share, a cloud client resyncing).
    pub(crate) fn vanish(&mut self, device: usize) -> Result<(), String> {
        if !self.present(device) {
            return Ok(());
        }
        let root = &self.roots[device];
        let aside = root.with_extension("away");
        std::fs::rename(root, &aside).map_err(|e| io_err("moving aside", root, e))?;
        self.away.insert(device, aside);
        self.stats.vanished += 1;
        Ok(())
    }

    /// Brings every vanished folder back.
    pub(crate) fn bring_back_all(&mut self) -> Result<(), String> {
        for (device, aside) in std::mem::take(&mut self.away) {
            let root = &self.roots[device];
            std::fs::rename(&aside, root).map_err(|e| io_err("bringing back", root, e))?;
        }
        Ok(())
    }
}
