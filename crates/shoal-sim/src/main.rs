//! `shoal-sim`: runs the deterministic simulation for one seed or a range of seeds and
//! prints a summary; a failing seed prints the command that replays it.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use shoal_sim::{SimOptions, run};

/// Deterministic simulation of Shoal devices syncing through faulty cloud folders.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Run this one seed (prints its report).
    #[arg(long, conflicts_with_all = ["from", "count"])]
    seed: Option<u64>,
    /// First seed of a range.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// How many seeds from `--from`.
    #[arg(long, default_value_t = 200)]
    count: u64,
    /// Devices per run (default: 3 to 8, drawn from the seed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=16))]
    devices: Option<u64>,
    /// Steps per run before healing.
    #[arg(long, default_value_t = SimOptions::default().steps)]
    steps: usize,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Every run members-only, every device joining with an invite (default: odd seeds).
    #[arg(long, conflicts_with = "open")]
    members_only: bool,
    /// Every run in an open workspace (default: even seeds).
    #[arg(long)]
    open: bool,
    /// Every run end-to-end encrypted (members-only; default: seeds 3 modulo 4).
    #[arg(long, conflicts_with_all = ["open", "plaintext"])]
    encrypted: bool,
    /// No run encrypted.
    #[arg(long)]
    plaintext: bool,
    /// Every run also syncs through a relay (default: seeds divisible by 3).
    #[arg(long, conflicts_with = "no_relay")]
    relay: bool,
    /// No run uses a relay.
    #[arg(long)]
    no_relay: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let members_only = match (args.members_only, args.open) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let encrypted = match (args.encrypted, args.plaintext) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let options = SimOptions {
        devices: args.devices.map(|d| d as usize),
        steps: args.steps,
        members_only,
        encrypted,
        relay: match (args.relay, args.no_relay) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
    };
    if let Some(seed) = args.seed {
        return match run(seed, &options) {
            Ok(report) => {
                println!("{report:#?}");
                ExitCode::SUCCESS
            }
            Err(failure) => {
                eprintln!("{failure}");
                ExitCode::FAILURE
            }
        };
    }
    let started = Instant::now();
    let (mut failed, mut acknowledged, mut crashes, mut faults) = (Vec::new(), 0, 0, 0);
    let (mut removals, mut recoveries, mut encrypted) = (0, 0, 0);
    let (mut relay_runs, mut relay_syncs, mut relay_restarts, mut link_faults) = (0, 0, 0, 0);
    let mut carried = 0;
    for seed in args.from..args.from.saturating_add(args.count) {
        if seed > args.from && (seed - args.from) % 100 == 0 {
            eprintln!(
                "{} seeds done in {:.0} s, {} failed",
                seed - args.from,
                started.elapsed().as_secs_f64(),
                failed.len()
            );
        }
        match run(seed, &options) {
            Ok(r) => {
                acknowledged += r.acknowledged;
                crashes += r.crashes;
                faults += r.faults;
                removals += r.removals;
                recoveries += r.fork_recoveries;
                encrypted += u64::from(r.encrypted);
                relay_runs += u64::from(r.relay);
                relay_syncs += r.relay_syncs;
                relay_restarts += r.relay_restarts;
                link_faults += r.link_faults;
                carried += r.carried;
            }
            Err(failure) => {
                eprintln!("{failure}");
                failed.push(seed);
                if args.fail_fast {
                    break;
                }
            }
        }
    }
    println!(
        "{} seeds from {} in {:.1} s: {} failed {:?}; {acknowledged} writes acknowledged, {crashes} crashes, {faults} folder faults, {encrypted} encrypted runs, {removals} removals, {recoveries} fork recoveries; {relay_runs} runs with a relay: {relay_syncs} relay syncs, {relay_restarts} relay restarts, {link_faults} link faults, {carried} entries carried into folders",
        args.count,
        args.from,
        started.elapsed().as_secs_f64(),
        failed.len(),
        failed
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
