//! fij against real distributed systems: a Redis primary/replica pair, a 3-member etcd cluster and
//! an Open MPI job, started by the tests on 127.0.0.1 (tests/src/systems.rs). Each test fails one
//! process of the system with `kill` or `crash` and measures, from the injection's `ktime_ns`
//! (CLOCK_MONOTONIC), how long the rest of the system takes to notice, then asserts the contrast:
//! a kill is noticed at once (the OS closes the victim's connections), a crash only by the
//! peers' own timeouts (nothing the victim owned speaks again).
//!
//! The victim is adopted by `pid` in a scenario the test writes into its temp dir (its pid and
//! ports exist only at run time); scenarios/redis-*.toml are the self-contained versions. Each
//! test prints what it measured (`--nocapture`); docs/real-systems.md has the numbers.
//!
//! Needs redis-server, redis-tools, etcd-server, etcd-client, openmpi-bin and libopenmpi-dev
//! (`cargo xtask setup`); a missing one is a failure, not a skip.
use std::time::Duration;

use fij_common::log::EndReason;
use fij_tests::{
    Fij, FijOutput, Log, RunningFij, TempDir, pid_of, send_signal, systems::elapsed_between,
    toml_str,
};

#[path = "real_systems/etcd.rs"]
mod etcd;
#[path = "real_systems/mpi.rs"]
mod mpi;
#[path = "real_systems/redis.rs"]
mod redis;

/// A scenario adopting each `(name, pid)` of `targets`, with one fault `fail` on `victim`:
/// `action`, then the TOML lines `trigger` (the trigger and its keys). `duration` bounds the
/// campaign if the test never ends it.
fn adopting_scenario(
    targets: &[(&str, u32)],
    victim: &str,
    action: &str,
    trigger: &str,
    duration: &str,
) -> String {
    let mut s = format!("seed = 1\nduration = {}\n", toml_str(duration));
    for (name, pid) in targets {
        s += &format!("\n[[target]]\nname = {}\npid = {pid}\n", toml_str(name));
    }
    s += &format!(
        "\n[[fault]]\nname = \"fail\"\ntarget = {}\naction = {}\n{trigger}\n",
        toml_str(victim),
        toml_str(action)
    );
    s
}

/// Starts `fij run` on `scenario` (in `dir`) and waits until the campaign is armed, printing how
/// long that took (under the kernel lab's emulation it is the slow part of these tests).
fn start_fij(dir: &TempDir, scenario: &str) -> RunningFij {
    let path = dir.write("scenario.toml", scenario);
    let spawned = std::time::Instant::now();
    let mut fij = Fij::run(dir, &path).spawn();
    fij.wait_armed();
    println!(
        "  fij armed {:.1} s after its spawn",
        spawned.elapsed().as_secs_f64()
    );
    fij
}

/// Waits for the one injection of the campaign and returns its record (printing, for a time
/// trigger, who fired it and how late).
fn wait_injection(fij: &mut RunningFij, timeout: Duration) -> serde_json::Value {
    let record = fij.wait_for_record("the injection", timeout, |r| r["event"] == "injection");
    if let Some(late) = record.get("late_ns").and_then(|l| l.as_u64()) {
        println!(
            "  the time trigger fired by {}, {:.1} ms late",
            record["by"],
            late as f64 / 1e6
        );
    }
    record
}

/// Ends the campaign (SIGINT if it still runs: a crash keeps it going until `duration`), checks
/// that fij exited 0 and left nothing in the kernel, and returns its output.
fn end_fij(mut fij: RunningFij) -> FijOutput {
    if fij.running() {
        send_signal(fij.pid(), libc::SIGINT);
    }
    let out = fij.wait();
    out.assert_exit(0);
    out
}

/// The log's one injection: on `pid`, SIGKILL, delivered; and `pid` died of SIGKILL.
fn assert_killed(log: &Log, pid: u32) -> u64 {
    let injections = log.injections();
    assert_eq!(injections.len(), 1, "one injection expected:\n{log}");
    let injection = injections[0];
    assert_eq!(pid_of(injection), pid, "{injection}");
    assert_eq!(injection["signal"], "SIGKILL", "{injection}");
    assert_eq!(injection["delivered"], true, "{injection}");
    assert_eq!(log.exit_status(pid), "signal SIGKILL", "{log}");
    ktime(injection)
}

/// The `ktime_ns` of a record.
fn ktime(record: &serde_json::Value) -> u64 {
    record["ktime_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ktime_ns in {record}"))
}

/// `t` (monotonic ns) as a duration since the injection at `t0`.
fn since(t0: u64, t: u64) -> Duration {
    elapsed_between(t0, t)
}

/// Milliseconds, for the printed measurements.
fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
