//! Fork evidence in a shared folder: how every device learns that an origin's log forked
//! (a copied device file, a restored backup that had written), with proof.
//!
//! Owns: [`ForkEvidence`] — two heads of one origin at the same index, `next`, over two
//! different chains, both signed by the origin's key — its byte form (`docs/FORMAT.md` §4.8),
//! and where it lives: `<folder>/<workspace>/<origin>/fork-<next:020>.evidence`, written by
//! the device that found its own log forked.
//!
//! Invariants: evidence is accepted only if the key derives the origin and both signatures
//! verify over different chains at the same index: a key cannot disown what it signed, so
//! accepted evidence proves that the origin wrote two logs. Nobody without the key can make
//! it.
//!
//! Never: decides which of the two logs is right (recovery re-joins under a new key), or
//! trusts a file it could not verify (it is ignored and reported by name).

use std::path::{Path, PathBuf};

use shoal_core::codec::Reader;
use shoal_core::{ChainHash, DeviceKey, PeerId, PublicKey, SignedHead, WorkspaceId};

use crate::fsutil::write_file_atomically;

const MAGIC: &[u8; 8] = b"SHOALFRK";
const VERSION: u8 = 1;
/// The exact length of an evidence file.
pub const EVIDENCE_LEN: usize = 8 + 1 + 16 + 16 + 32 + 8 + 2 * (32 + 64);

/// Two signed heads of one origin at one index over different chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkEvidence {
    /// The origin that forked.
    pub origin: PeerId,
    /// The index both heads cover (entries `0..next`).
    pub next: u64,
    /// The two heads.
    pub heads: [SignedHead; 2],
}

impl ForkEvidence {
    /// Evidence signed by the origin's own `key`: its log reached `next` with chain `a` in
    /// one copy and `b` in the other.
    pub fn sign(
        key: &DeviceKey,
        workspace: WorkspaceId,
        next: u64,
        a: ChainHash,
        b: ChainHash,
    ) -> ForkEvidence {
        ForkEvidence {
            origin: key.peer_id(&workspace),
            next,
            heads: [
                SignedHead::sign(key, workspace, next, a),
                SignedHead::sign(key, workspace, next, b),
            ],
        }
    }

    /// The file name of this evidence.
    pub fn file_name(&self) -> String {
        format!("fork-{:020}.evidence", self.next)
    }

    /// The byte form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(EVIDENCE_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(self.heads[0].workspace.as_bytes());
        out.extend_from_slice(self.origin.as_bytes());
        out.extend_from_slice(self.heads[0].seal.key.as_bytes());
        out.extend_from_slice(&self.next.to_le_bytes());
        for h in &self.heads {
            out.extend_from_slice(&h.chain.0);
            out.extend_from_slice(&h.seal.signature);
        }
        out
    }

    /// Decodes and verifies evidence found in the directory of `origin` in `workspace`.
    pub fn decode(
        bytes: &[u8],
        workspace: &WorkspaceId,
        origin: &PeerId,
    ) -> Result<ForkEvidence, String> {
        let mut r = Reader::new(bytes);
        let bad = |e: shoal_core::codec::DecodeError| e.to_string();
        if r.array::<8>("magic").map_err(bad)? != *MAGIC {
            return Err("not fork evidence (bad magic)".into());
        }
        let version = r.u8("version").map_err(bad)?;
        if version != VERSION {
            return Err(format!("fork evidence version {version} is not known to this Shoal"));
        }
        let ws = WorkspaceId::from_bytes(r.array("workspace").map_err(bad)?);
        let or = PeerId::from_bytes(r.array("origin").map_err(bad)?);
        if ws != *workspace || or != *origin {
            return Err("evidence of another workspace or origin".into());
        }
        let key = PublicKey::from_bytes(&r.array("key").map_err(bad)?)
            .map_err(|_| "the key is not an Ed25519 public key".to_string())?;
        let next = r.u64_le("next").map_err(bad)?;
        let mut heads = Vec::with_capacity(2);
        for _ in 0..2 {
            let chain = ChainHash(r.array("chain").map_err(bad)?);
            let signature = r.array("signature").map_err(bad)?;
            let head = SignedHead {
                workspace: ws,
                origin: or,
                next,
                chain,
                seal: shoal_core::Seal { key, signature },
            };
            head.verify().map_err(|e| format!("a head does not verify: {e}"))?;
            heads.push(head);
        }
        r.finish().map_err(bad)?;
        if heads[0].chain == heads[1].chain {
            return Err("the two heads agree: no fork".into());
        }
        Ok(ForkEvidence { origin: or, next, heads: [heads[0], heads[1]] })
    }

    /// Writes the evidence into the origin's directory `dir`, atomically.
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        let name = self.file_name();
        write_file_atomically(
            dir,
            &name,
            |random| {
                format!(
                    ".{name}.{}.tmp",
                    random.iter().map(|b| format!("{b:02x}")).collect::<String>()
                )
            },
            &self.encode(),
            &crate::faults::Faults::default(),
        )
    }
}

/// What [`read_evidence`] found in one origin's directory.
pub type FoundEvidence = (Vec<(PathBuf, ForkEvidence)>, Vec<(PathBuf, String)>);

/// The fork evidence in the origin directory `dir`: each verified one, and each file that
/// looked like evidence but did not verify (with why).
pub fn read_evidence(dir: &Path, workspace: &WorkspaceId, origin: &PeerId) -> FoundEvidence {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else { return (good, bad) };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let canonical = name
            .strip_prefix("fork-")
            .and_then(|r| r.strip_suffix(".evidence"))
            .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()));
        if !canonical || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() == EVIDENCE_LEN => b,
            Ok(b) => {
                bad.push((path, format!("{} bytes, not {EVIDENCE_LEN}", b.len())));
                continue;
            }
            Err(e) => {
                bad.push((path, e.to_string()));
                continue;
            }
        };
        match ForkEvidence::decode(&bytes, workspace, origin) {
            Ok(ev) => good.push((path, ev)),
            Err(why) => bad.push((path, why)),
        }
    }
    good.sort_by_key(|(p, _)| p.clone());
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_round_trips_and_only_a_real_fork_verifies() {
        let key = DeviceKey::from_secret_bytes(&[5; 32]);
        let ws = WorkspaceId::from_bytes([1; 16]);
        let origin = key.peer_id(&ws);
        let ev = ForkEvidence::sign(&key, ws, 7, ChainHash([1; 32]), ChainHash([2; 32]));
        let bytes = ev.encode();
        assert_eq!(bytes.len(), EVIDENCE_LEN);
        assert_eq!(ForkEvidence::decode(&bytes, &ws, &origin), Ok(ev.clone()));
        // Tampered, transplanted, forged or not a fork: refused.
        let mut t = bytes.clone();
        t[EVIDENCE_LEN - 1] ^= 1;
        assert!(ForkEvidence::decode(&t, &ws, &origin).is_err());
        let other = key.peer_id(&WorkspaceId::from_bytes([2; 16]));
        assert!(ForkEvidence::decode(&bytes, &ws, &other).is_err());
        let forger = DeviceKey::from_secret_bytes(&[6; 32]);
        let forged = ForkEvidence::sign(&forger, ws, 7, ChainHash([1; 32]), ChainHash([2; 32]));
        assert!(ForkEvidence::decode(&forged.encode(), &ws, &origin).is_err());
        let same = ForkEvidence::sign(&key, ws, 7, ChainHash([1; 32]), ChainHash([1; 32]));
        assert!(ForkEvidence::decode(&same.encode(), &ws, &origin).is_err());
        assert!(ForkEvidence::decode(&bytes[..10], &ws, &origin).is_err());
    }
}
