//! `cargo xtask demo`: shows what fij does on one scenario, `scenarios/demo.toml`.
//!
//! Runs setup and the build, then `fij run scenarios/demo.toml --log <tmpdir>/demo.jsonl` from
//! the workspace root, with the build's binary directory (which holds the test workload,
//! `fij-workload`) first on PATH, then prints the JSON log and explains it.
use std::{env, fs, path::Path, process::Command};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The scenario, relative to the workspace root.
const SCENARIO: &str = "scenarios/demo.toml";

const EXPLANATION: &str = "\
What happened: fij loaded its eBPF programs, made the shell a target before its first \
instruction, and counted its write(2) calls in the kernel. On entry to the 5th write the kernel \
program sent SIGKILL with bpf_send_signal, in the shell's own context: the `injection` record \
says which fault fired, on which hit, into which pid; the `exit` record shows that pid dying by \
SIGKILL microseconds later (compare the ktime_ns fields). The file holds lines 1-4 only: the 5th \
write never copied its data. `fork`/`exit` records for the `sleep` children show descendants \
joining and leaving the target set. When the run ended fij detached everything.";

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    if !root.join(SCENARIO).is_file() {
        bail!(
            "the demo scenario {} does not exist; `cargo xtask demo` runs that file",
            root.join(SCENARIO).display()
        );
    }
    crate::setup::run()?;
    crate::build(false)?;

    let dir = env::temp_dir().join(format!("fij-demo-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let log = dir.join("demo.jsonl");
    let path = env::join_paths(
        std::iter::once(crate::bin_dir(false))
            .chain(env::split_paths(&env::var_os("PATH").unwrap_or_default())),
    )?;
    let output = dir.join("writer.txt");
    let mut fij = Command::new(crate::fij_bin(false));
    fij.current_dir(&root)
        .env("FIJ_DEMO_OUT", &output)
        .env("PATH", path)
        .args(["run", SCENARIO, "--log"])
        .arg(&log);
    let status = cmd::status(&mut fij)?;

    let printed = print_log(&log)?;
    if !status.success() {
        return Err(cmd::Failed {
            command: cmd::display(&fij),
            status,
        }
        .into());
    }
    if printed == 0 {
        bail!("fij succeeded but wrote nothing to {}", log.display());
    }
    let written = fs::read_to_string(&output).unwrap_or_default();
    println!();
    println!("--- what the target wrote to {} ---", output.display());
    print!("{written}");
    println!("--- end ---");
    println!();
    println!("{EXPLANATION}");
    Ok(())
}

/// Prints the log's lines and returns how many there were (0 if fij wrote no log).
fn print_log(log: &Path) -> Result<usize> {
    if !log.exists() {
        println!("fij wrote no log at {}", log.display());
        return Ok(0);
    }
    let text = fs::read_to_string(log).with_context(|| format!("cannot read {}", log.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    println!();
    println!("--- JSON log {} ({} lines) ---", log.display(), lines.len());
    for line in &lines {
        println!("{line}");
    }
    println!("--- end of log ---");
    Ok(lines.len())
}
