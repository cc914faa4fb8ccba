//! The soak run's short version (`cargo xtask soak` runs the same code for minutes and writes
//! bench/soak.md): ten seeded campaigns — kill, crash, stop, partition, signals; per process and
//! per target; forking, spawned and adopted targets; bystanders; fij SIGKILLed in two of them
//! and SIGTERMed in two — with pid_max lowered to 4096 (restored when the test ends). Every
//! injection is checked against `fij plan`, every bystander's exit status, and after every fij
//! exit nothing may be left behind.
//!
//! On the main of 2026-12-04 this fails now and then (1 of the 15 runs made while writing it),
//! on what the long soak finds in about 1 % of its campaigns (bench/soak.md): a target's write
//! counter ending one or two hits short, a stop left in effect when fij is SIGTERMed or
//! SIGKILLed, programs kept by gated children when fij dies during its start. The failure lists
//! them.
use std::time::Duration;

use fij_tests::{
    fij_bin,
    soak::{self, SoakConfig},
};

#[test]
fn ten_randomized_campaigns_match_the_plan_and_leave_nothing_behind() {
    let report = soak::run(SoakConfig {
        seed: 18,
        fij: fij_bin(),
        workload: env!("CARGO_BIN_EXE_fij-workload").into(),
        run_for: Duration::from_secs(120),
        max_campaigns: 10,
        pid_max: Some(4096),
    });
    eprintln!("{report}");
    assert_eq!(report.campaigns, 10, "{report}");
    assert!(report.injections_checked() > 0, "{report}");
    assert!(
        report.clean(),
        "the soak found leftovers or failed checks:\n{report}"
    );
}
