//! `cargo xtask soak [--quick] [--seed N] [--minutes M]`: the soak run of issue 18, the
//! harness's `fij_tests::soak` (the same code as the privileged test `tests/it/soak.rs`) for
//! minutes instead of ten campaigns. Writes `bench/soak.md`, or with `--quick` (ten campaigns)
//! `<target>/soak-quick/soak.md`, leaving `bench/` alone.
//!
//! Runs setup and the debug build first (the one `cargo xtask test` uses). It loads BPF programs
//! and lowers `pid_max` for its duration: run it as root, alone (on a shared machine under the
//! same lock as the privileged tests: `flock /tmp/fij-privileged.lock cargo xtask soak`).
use std::{fs, time::Duration};

use anyhow::{Context, Result};
use fij_tests::soak::{self, SoakConfig};

use crate::bench::{date, kernel, machine};

/// `pid_max` during the soak: low enough that pids come round every few dozen campaigns, high
/// enough for the rest of the machine (a build running beside it).
const SOAK_PID_MAX: u32 = 4096;

/// Campaigns of `--quick`, as many as the privileged test runs.
const QUICK_CAMPAIGNS: usize = 10;

pub fn run(quick: bool, seed: u64, minutes: f64) -> Result<()> {
    crate::setup::run()?;
    crate::build(false)?;
    let command = format!(
        "cargo xtask soak{} --seed {seed}{}",
        if quick { " --quick" } else { "" },
        if quick {
            String::new()
        } else {
            format!(" --minutes {minutes}")
        }
    );
    let cfg = SoakConfig {
        seed,
        fij: crate::fij_bin(false),
        workload: crate::bin_dir(false).join("fij-workload"),
        run_for: if quick {
            Duration::from_secs(600)
        } else {
            Duration::from_secs_f64(minutes * 60.0)
        },
        max_campaigns: if quick { QUICK_CAMPAIGNS } else { usize::MAX },
        pid_max: Some(SOAK_PID_MAX),
    };
    println!("+ soak: {command}");
    let report = soak::run(cfg);
    let machine = format!("{}; kernel {}; {}", machine(), kernel(), date());
    let text = report.markdown(&command, &machine);
    let dir = if quick {
        crate::target_dir().join("soak-quick")
    } else {
        crate::workspace_root().join("bench")
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("soak.md");
    fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("\n{text}\nwrote {}", path.display());
    anyhow::ensure!(
        report.clean(),
        "the soak found {} leftovers or failed checks (listed in {})",
        report.findings.len(),
        path.display()
    );
    Ok(())
}
