//! The fuzz smoke run of the test suite (`docs/FUZZING.md`): every kept corpus input and
//! every seed through its target, then a deterministic mutation loop (bit flips, byte
//! overwrites, truncations, insertions, deletions, splices of corpus inputs) through each
//! target. A target that panics fails the test, which names the target and prints the input
//! in hex, ready to be saved into `fuzz/corpus/<target>/` and replayed with
//! `cargo fuzz run <target> <file>`.
//!
//! Not a substitute for the fuzzer (no coverage feedback); it keeps the corpora replaying
//! and catches a decoder change that breaks on inputs near the known ones. Fixed seed, so a
//! failure replays exactly; a few thousand inputs per target, a few seconds in debug.
//!
//! `SHOAL_WRITE_FUZZ_SEEDS=1 cargo test -p shoal-fuzz --test smoke` writes the seeds of
//! `shoal_fuzz::seeds` into the corpus directories (`seed-<n>`), for a new target or after
//! a format change.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use shoal_fuzz::{TARGETS, Target, seeds::seeds};

/// Mutated inputs per target.
const MUTATIONS: usize = 4_000;
/// The fixed seed of the mutation loop.
const SEED: u64 = 0x5eed_f022_0000_0001;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| match std::fs::read(p) {
            Ok(bytes) => Some(bytes),
            // A fuzzer running on this corpus replaces inputs by smaller ones as it goes.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot read {}: {e}", p.display()),
        })
        .collect()
}

/// xorshift64*: small, fixed, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// One to four random edits of `base`, possibly splicing in part of `other`.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x2d];
    let mut d = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let n = rng.below(d.len() + 1);
                d.truncate(n);
            }
            3 => {
                let i = rng.below(d.len() + 1);
                d.insert(i, rng.next() as u8);
            }
            4 if !d.is_empty() => {
                let i = rng.below(d.len());
                let n = 1 + rng.below((d.len() - i).min(16));
                d.drain(i..i + n);
            }
            5 => {
                let cut = rng.below(d.len() + 1);
                let from = rng.below(other.len() + 1);
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ if !d.is_empty() => {
                let i = rng.below(d.len());
                let n = 1 + rng.below((d.len() - i).min(8));
                let chunk = d[i..i + n].to_vec();
                let at = rng.below(d.len() + 1);
                d.splice(at..at, chunk);
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d
}

/// Runs `target` on `input`; on a panic, the report line for it.
fn run(name: &str, target: Target, input: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| target(input)))
        .err()
        .map(|_| format!("target {name} panicked on input {}", hex(input)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn seeds_are_accepted_by_their_decoders() {
    // A seed the decoder refuses would leave the target's re-encoding check unexercised.
    use shoal_core::codec::Encode as _;
    for (name, _) in TARGETS {
        assert!(!seeds(name).is_empty(), "target {name} has no seeds");
    }
    for s in seeds("entry") {
        shoal_core::Entry::decode(&s).unwrap();
    }
    for s in seeds("entry_body") {
        shoal_core::EntryBody::decode_stored(&s).unwrap();
    }
    for s in seeds("payload") {
        assert_eq!(shoal_core::Payload::decode(&s).unwrap().to_bytes(), s);
    }
    for s in seeds("value") {
        shoal_tables::Value::decode(&s).unwrap();
    }
    for s in seeds("row_key") {
        shoal_tables::RowKey::from_bytes(s).unwrap();
    }
    for s in seeds("table_op") {
        shoal_tables::TableOp::decode_body(s[0].into(), &s[1..]).unwrap();
    }
    for s in seeds("control_op") {
        let op = shoal_core::Op {
            domain: shoal_core::Domain::CONTROL,
            kind: s[1].into(),
            body: s[2..].to_vec(),
        };
        shoal_core::control::ControlOp::decode(&op).unwrap();
    }
    let mut opened = 0;
    for s in seeds("key_wrap") {
        let mut r = shoal_core::codec::Reader::new(&s);
        let keys = shoal_core::encryption::read_invite_keys(&mut r).unwrap();
        r.finish().unwrap();
        let (key, ws) = (shoal_fuzz::vector_key(), shoal_fuzz::vector_workspace());
        for (epoch, wrap) in &keys {
            let real = shoal_fuzz::seeds::vector_wrap(*epoch);
            let got = shoal_core::encryption::unwrap_key(&ws, *epoch, wrap, &key);
            // A real wrap opens under its own epoch only.
            assert_eq!(got.is_some(), *epoch <= 1 && *wrap == real);
            opened += usize::from(got.is_some());
        }
    }
    assert!(opened >= 3, "the key_wrap seeds reach unwrap_key's success path");
    for s in seeds("encrypted_entry") {
        // The harness seals the plaintext (after the op count) and the keyring opens it.
        let ws = shoal_fuzz::vector_workspace();
        let origin = shoal_fuzz::vector_key().peer_id(&ws);
        let mut ring = shoal_core::encryption::Keyring::new(ws);
        ring.insert(0, shoal_core::encryption::EpochKey::from_bytes(shoal_fuzz::FUZZ_EPOCH_KEY));
        let sealed = shoal_fuzz::seal_for_fuzzing(&ws, &origin, s[0].into(), &s[1..]);
        ring.open(&origin, shoal_fuzz::FUZZ_INDEX, &shoal_fuzz::FUZZ_PREV, &sealed).unwrap();
    }
    let mut reached_access_check = false;
    for s in seeds("relay_frame") {
        let frame = shoal_relay::frame::Frame::decode(&s).unwrap();
        assert_eq!(frame.to_bytes(), s);
        reached_access_check |= frame == shoal_fuzz::relay_auth_frame();
    }
    assert!(reached_access_check, "a relay_frame seed authenticates (the session opens)");
    for s in seeds("segment_name") {
        shoal_filelog::layout::SegmentName::parse(std::str::from_utf8(&s).unwrap()).unwrap();
    }
    for s in seeds("id_dir") {
        shoal_filelog::layout::parse_id_dir(std::str::from_utf8(&s).unwrap()).unwrap();
    }
    let ws = shoal_fuzz::vector_workspace();
    let origin = shoal_fuzz::vector_key().peer_id(&ws);
    for s in seeds("fork_evidence") {
        shoal_filelog::fork::ForkEvidence::decode(&s, &ws, &origin).unwrap();
    }
    for s in seeds("segment") {
        let expected = shoal_filelog::segment::Expected { workspace: ws, origin, name: None };
        shoal_filelog::segment::Segment::decode(&s, &expected).unwrap();
    }
}

#[test]
fn corpora_and_mutations_never_panic() {
    if std::env::var_os("SHOAL_WRITE_FUZZ_SEEDS").is_some() {
        for (name, _) in TARGETS {
            let dir = corpus_dir(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (i, s) in seeds(name).iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
            }
        }
    }
    let mut failures = Vec::new();
    let mut rng = Rng(SEED);
    for &(name, target) in TARGETS {
        let mut inputs = corpus(name);
        assert!(!inputs.is_empty(), "the corpus of {name} is empty");
        inputs.extend(seeds(name));
        for input in &inputs {
            failures.extend(run(name, target, input));
        }
        for _ in 0..MUTATIONS {
            let base = &inputs[rng.below(inputs.len())];
            let other = &inputs[rng.below(inputs.len())];
            let input = mutate(&mut rng, base, other);
            failures.extend(run(name, target, &input));
        }
    }
    assert!(failures.is_empty(), "{} panics:\n{}", failures.len(), failures.join("\n"));
}
