//! Every command shown in README.md runs, for real, in a fresh directory: the tutorial's
//! shell blocks in order as one script (with the binary under test on `PATH`), and every
//! `text` block of expected output must appear in what they print. Shell blocks outside
//! the tutorial must be the two top-level commands, which are checked here too. A command
//! added to the README without a way to run it here fails this test.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed assertion

mod cli_util;

use std::path::Path;
use std::process::Command;

use cli_util::{BIN, Sandbox, text};

const TUTORIAL: &str = "## Five-minute tutorial";
/// The tutorial's build step; here the binary under test stands in for it.
const BUILD: &str =
    r#"cargo build --release -p shoal-cli && export PATH="$PWD/target/release:$PATH""#;
const DEMO: &str = "cargo run --release -p shoal-cli -- demo";
const TESTS: &str = "bash scripts/test";

struct Block {
    lang: String,
    body: String,
    in_tutorial: bool,
}

fn blocks(readme: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<(String, String)> = None;
    for line in readme.lines() {
        match &mut open {
            None if line.starts_with("```") => {
                open = Some((line.trim_start_matches('`').to_owned(), String::new()));
            }
            None => {
                if line.starts_with("## ") {
                    section = line.to_owned();
                }
            }
            Some((lang, body)) => {
                if line.starts_with("```") {
                    out.push(Block {
                        lang: std::mem::take(lang),
                        body: std::mem::take(body),
                        in_tutorial: section.starts_with(TUTORIAL),
                    });
                    open = None;
                } else {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "unclosed code block in README.md");
    out
}

fn shell(b: &&Block) -> bool {
    b.lang == "sh" || b.lang == "bash" || b.lang == "shell"
}

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn every_readme_command_runs() {
    let blocks = blocks(&readme());

    // Outside the tutorial: exactly the two commands of the first screen.
    let top: Vec<&str> =
        blocks.iter().filter(shell).filter(|b| !b.in_tutorial).map(|b| b.body.trim()).collect();
    assert_eq!(top, [DEMO, TESTS], "README shell blocks outside the tutorial");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(root.join("scripts/test").is_file());
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(ci.lines().any(|l| l.trim() == TESTS), ".ci/run runs the README's test command");
    // The demo command, with the binary under test (its output is checked by cli.rs).
    let s = Sandbox::new();
    assert!(s.ok(&["demo"]).contains("Converged: alice, bob and carol"));

    // The tutorial, in order, as one script.
    let tutorial: Vec<&Block> = blocks.iter().filter(|b| b.in_tutorial).collect();
    let mut script = String::from("set -euxo pipefail\n");
    let mut saw_build = false;
    for b in tutorial.iter().copied().filter(shell) {
        for line in b.body.lines() {
            if line.trim() == BUILD {
                saw_build = true;
                let dir = Path::new(BIN).parent().unwrap();
                script.push_str(&format!("export PATH=\"{}:$PATH\"\n", dir.display()));
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or("");
            assert!(
                ["shoal", "mkdir"].contains(&first),
                "README tutorial line {line:?}: only `shoal` and `mkdir` commands can run here"
            );
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(saw_build, "the tutorial starts by building the tool");
    assert!(script.matches("\nshoal ").count() >= 12, "{script}");
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(s.dir())
        .env_remove("SHOAL_WORKSPACE")
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "the tutorial failed:\n{stdout}\n{stderr}");
    // Only the trace of the commands on stderr: no warning, no error.
    for line in stderr.lines() {
        assert!(line.starts_with('+'), "unexpected message: {line}\n{stderr}");
    }
    // Every expected output shown appears, verbatim.
    for b in tutorial.iter().filter(|b| b.lang == "text") {
        assert!(stdout.contains(&b.body), "README output\n{}\nnot in\n{stdout}", b.body);
    }
}
