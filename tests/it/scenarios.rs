//! Every file in `scenarios/` runs, from the workspace root, with the outcome written for it in
//! [`EXPECTED`]. A scenario file without an entry (or an entry without a file) fails the test:
//! whoever adds a scenario says here what it must do.
use std::{
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
};

use fij_common::log::EndReason;
use fij_tests::{
    Fij, FijOutput, TempDir, numbered_lines, pid_of, read_lines, tcx::kernel_has_tcx,
    workspace_root,
};

/// A finished run of one scenario file.
struct Run {
    out: FijOutput,
    /// Where `$FIJ_DEMO_OUT` points.
    demo_out: std::path::PathBuf,
    /// The run's temp dir, removed with the `Run` (kept if a check fails).
    _dir: TempDir,
}

/// The checks of a scenario's run (they panic on a mismatch).
type Check = fn(&Run);

/// File name in `scenarios/` → the checks of its run.
const EXPECTED: &[(&str, Check)] = &[
    ("demo.toml", demo),
    ("signal-every-3rd-write.toml", signal_every_3rd_write),
    ("kill-forked-child.toml", kill_forked_child),
    ("crash-vs-kill-crash.toml", crash_vs_kill_crash),
    ("crash-vs-kill-kill.toml", crash_vs_kill_kill),
    ("probabilistic-write-kill.toml", probabilistic_write_kill),
    ("mtbf-exponential-group.toml", mtbf_exponential_group),
    ("two-consecutive-failures.toml", two_consecutive_failures),
    ("redis-primary-kill.toml", redis_primary_kill),
    ("redis-primary-crash.toml", redis_primary_crash),
    (
        "kill-on-2nd-fork-tracepoint.toml",
        kill_on_2nd_fork_tracepoint,
    ),
    (
        "kill-before-2nd-fork-uprobe.toml",
        kill_before_2nd_fork_uprobe,
    ),
];

/// The shell is killed on its 5th write; its file holds lines 1-4.
fn demo(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("writer");
    out.log.assert_injections("write", "SIGKILL", &[(5, shell)]);
    assert_eq!(out.log.exit_status(shell), "signal SIGKILL", "{out}");
    assert_eq!(out.log.end_reason(), EndReason::TargetsExited, "{out}");
    assert_eq!(read_lines(&run.demo_out), numbered_lines(4));
}

/// SIGUSR1 on writes 3, 6, 9 of the trapping shell (its trap's own `echo` is a write too); it
/// exits 0, and its trap ran three times (its stderr is fij's).
fn signal_every_3rd_write(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("trapper");
    out.log
        .assert_injections("write", "SIGUSR1", &[(3, shell), (6, shell), (9, shell)]);
    assert_eq!(out.log.exit_status(shell), "code 0", "{out}");
    assert_eq!(
        out.stderr.lines().filter(|l| *l == "usr1").count(),
        3,
        "{out}"
    );
}

/// The target's 4th write is the second subshell's first: that subshell is killed, the first
/// subshell and the parent shell exit 0.
fn kill_forked_child(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("workers");
    let forks = out.log.forks();
    assert_eq!(forks.len(), 2, "two subshells expected:\n{out}");
    assert!(forks.iter().all(|f| f["parent_pid"] == shell), "{out}");
    let (first, second) = (pid_of(forks[0]), pid_of(forks[1]));
    out.log
        .assert_injections("write", "SIGKILL", &[(4, second)]);
    assert_eq!(out.log.exit_status(second), "signal SIGKILL", "{out}");
    assert_eq!(out.log.exit_status(first), "code 0", "{out}");
    assert_eq!(out.log.exit_status(shell), "code 0", "{out}");
}

/// The crash-vs-kill pair: the server dies on its first clock_nanosleep, and its client wrote
/// what it saw in the next 2 s to `$FIJ_DEMO_OUT`.
fn crash_vs_kill<'a>(run: &'a Run, seen: &str) -> (u32, &'a FijOutput) {
    let out = &run.out;
    out.assert_exit(0);
    let server = out.log.target_pid("server");
    out.log
        .assert_injections("clock_nanosleep", "SIGKILL", &[(1, server)]);
    assert_eq!(out.log.exit_status(server), "signal SIGKILL", "{out}");
    let client = out.log.target_pid("client");
    assert_eq!(out.log.exit_status(client), "code 0", "{out}");
    assert_eq!(out.log.end_reason(), EndReason::TargetsExited, "{out}");
    assert_eq!(read_lines(&run.demo_out), [seen], "{out}");
    (server, out)
}

/// Crash: the client hears nothing (`silence`); the server's listener and connection were
/// silenced, and spoke again at `recover_after`, when the campaign ended.
fn crash_vs_kill_crash(run: &Run) {
    if crash_refused_without_tcx(run, "crash-vs-kill-crash.toml") {
        return;
    }
    let (server, out) = crash_vs_kill(run, "silence");
    let mut silenced: Vec<(u64, bool)> = out
        .log
        .records("silenced")
        .iter()
        .map(|r| (r["local_port"].as_u64().unwrap(), r["remote_port"] == 0))
        .collect();
    silenced.sort();
    assert_eq!(silenced, [(47931, false), (47931, true)], "{out}");
    let recovered = out.log.one("recovered");
    assert_eq!(recovered["pid"], server, "{out}");
    assert_eq!(recovered["tuples"], 2, "{out}");
}

/// Kill: the client sees EOF at once (`eof`); nothing is silenced.
fn crash_vs_kill_kill(run: &Run) {
    let (_, out) = crash_vs_kill(run, "eof");
    assert!(out.log.records("silenced").is_empty(), "{out}");
}

/// Seed 7, p = 0.2: the plan's first firing hit is the shell's 8th write (draw
/// 80071570323394754 < ⌊0.2·2^64⌋); it dies there, and its file holds lines 1-7.
fn probabilistic_write_kill(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("writer");
    out.log.assert_injections("write", "SIGKILL", &[(8, shell)]);
    assert_eq!(
        out.log.injections()[0]["draw"],
        80_071_570_323_394_754_u64,
        "{out}"
    );
    assert_eq!(out.log.exit_status(shell), "signal SIGKILL", "{out}");
    assert_eq!(read_lines(&run.demo_out), numbered_lines(7));
}

/// Seed 2, exponential(mean 500 ms) per instance: each of the four sleeping workers is killed
/// once, by fij (they sleep), at its planned time, in due order.
fn mtbf_exponential_group(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    // (instance, scheduled_t_ns) as `fij plan --seed 2` prints them (0.067 s, 0.463 s, …).
    let planned = [
        (1, 66_957_597_u64),
        (2, 463_270_139),
        (3, 787_345_622),
        (0, 1_035_270_621),
    ];
    let injections = out.log.injections();
    let fired: Vec<(u64, u64)> = injections
        .iter()
        .map(|r| {
            (
                r["instance"].as_u64().unwrap(),
                r["scheduled_t_ns"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(fired, planned, "{out}");
    let targets = out.log.start()["targets"].as_array().unwrap().clone();
    for record in injections {
        let root = targets
            .iter()
            .find(|t| t["instance"] == record["instance"])
            .expect("the instance's root");
        assert_eq!(record["pid"], root["pid"], "{out}");
        assert_eq!(record["signal"], "SIGKILL", "{out}");
        assert_eq!(record["by"], "fij", "{out}");
        // 50 ms on a real machine; scaled under the kernel lab's emulated CPUs, where
        // releasing the four instances alone takes ~100 ms (docs/kernel-lab-findings.md).
        let bound = 50e6 * fij_tests::slowdown();
        assert!(
            (record["late_ns"].as_u64().unwrap() as f64) < bound,
            "later than {:.0} ms: {out}",
            bound / 1e6
        );
        assert_eq!(
            out.log.exit_status(pid_of(record)),
            "signal SIGKILL",
            "{out}"
        );
    }
    assert_eq!(out.log.end_reason(), EndReason::TargetsExited, "{out}");
}

/// Worker 1 dies on hit 3, the supervisor's "Killed" is hit 4, worker 2 dies on hit 6 (its 2nd
/// write); worker 3 and the supervisor exit 0.
fn two_consecutive_failures(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let supervisor = out.log.target_pid("supervisor");
    let workers: Vec<u32> = out.log.forks().iter().map(|f| pid_of(f)).collect();
    assert_eq!(workers.len(), 3, "three workers expected:\n{out}");
    assert!(
        out.log
            .forks()
            .iter()
            .all(|f| f["parent_pid"] == supervisor),
        "{out}"
    );
    out.log
        .assert_injections("write", "SIGKILL", &[(3, workers[0]), (6, workers[1])]);
    assert_eq!(out.log.exit_status(workers[0]), "signal SIGKILL", "{out}");
    assert_eq!(out.log.exit_status(workers[1]), "signal SIGKILL", "{out}");
    assert_eq!(out.log.exit_status(workers[2]), "code 0", "{out}");
    assert_eq!(out.log.exit_status(supervisor), "code 0", "{out}");
    let expected: Vec<String> = ["worker 1 line 1", "worker 1 line 2", "worker 2 line 1"]
        .into_iter()
        .map(String::from)
        .chain((1..=5).map(|i| format!("worker 3 line {i}")))
        .collect();
    assert_eq!(read_lines(&run.demo_out), expected, "{out}");
    assert_eq!(
        out.stderr.lines().filter(|l| l.trim() == "Killed").count(),
        2,
        "{out}"
    );
}

/// The shell dies on its 2nd fork, after that fork made the 2nd subshell: both subshells exit
/// 0 and wrote their line; the third never ran.
fn kill_on_2nd_fork_tracepoint(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("forker");
    let forks = out.log.forks();
    assert_eq!(forks.len(), 2, "two subshells expected:\n{out}");
    assert!(forks.iter().all(|f| f["parent_pid"] == shell), "{out}");
    let injection = out.log.one("injection");
    assert_eq!(injection["trigger"], "sched:sched_process_fork", "{out}");
    assert_eq!(
        (injection["hit"].as_u64(), pid_of(injection)),
        (Some(2), shell),
        "{out}"
    );
    assert_eq!(injection["delivered"], true, "{out}");
    assert_eq!(out.log.exit_status(shell), "signal SIGKILL", "{out}");
    for fork in forks {
        assert_eq!(out.log.exit_status(pid_of(fork)), "code 0", "{out}");
    }
    assert_eq!(out.log.end_reason(), EndReason::TargetsExited, "{out}");
    assert_eq!(read_lines(&run.demo_out), ["one", "two"], "{out}");
}

/// The shell dies entering its 2nd fork(): one subshell only, which wrote "one".
fn kill_before_2nd_fork_uprobe(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("forker");
    let forks = out.log.forks();
    assert_eq!(forks.len(), 1, "one subshell expected:\n{out}");
    assert_eq!(forks[0]["parent_pid"], shell, "{out}");
    let injection = out.log.one("injection");
    assert_eq!(injection["trigger"], "uprobe libc:fork", "{out}");
    assert_eq!(
        (injection["hit"].as_u64(), pid_of(injection)),
        (Some(2), shell),
        "{out}"
    );
    assert_eq!(injection["delivered"], true, "{out}");
    assert_eq!(out.log.exit_status(shell), "signal SIGKILL", "{out}");
    assert_eq!(out.log.exit_status(pid_of(forks[0])), "code 0", "{out}");
    assert_eq!(out.log.end_reason(), EndReason::TargetsExited, "{out}");
    assert_eq!(read_lines(&run.demo_out), ["one"], "{out}");
}

/// On a kernel without tcx (before 6.6: Debian 12's 6.1 in the kernel lab), a scenario with a
/// `crash` is refused at the action's key (exit 2) and nothing runs: true then, and the file's
/// other checks do not apply.
fn crash_refused_without_tcx(run: &Run, file: &str) -> bool {
    if kernel_has_tcx() {
        return false;
    }
    let out = &run.out;
    out.assert_exit(2);
    let message = "`crash` needs tcx (kernel 6.6 or later) to silence the process's packets";
    assert!(
        out.stderr.starts_with(&format!("scenarios/{file}:")) && out.stderr.contains(message),
        "{out}"
    );
    assert!(out.log.is_empty(), "{out}");
    assert!(!run.demo_out.exists(), "a refused campaign runs nothing");
    eprintln!("scenarios/{file}: `crash` refused as it must be: the kernel has no tcx");
    true
}

fn run_scenario(file: &str) -> Run {
    let dir = TempDir::new(&format!("scenario-{}", file.trim_end_matches(".toml")));
    let demo_out = dir.join("demo-out.txt");
    let out = Fij::run(&dir, Path::new("scenarios").join(file).as_path())
        .current_dir(workspace_root())
        .env("FIJ_DEMO_OUT", &demo_out)
        .output();
    Run {
        out,
        demo_out,
        _dir: dir,
    }
}

#[test]
fn every_scenario_file_runs_with_its_expected_outcome() {
    let dir = workspace_root().join("scenarios");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    let table: BTreeSet<String> = EXPECTED.iter().map(|(f, _)| f.to_string()).collect();
    let mut failures: Vec<String> = Vec::new();
    for missing in files.difference(&table) {
        failures.push(format!(
            "scenarios/{missing} has no expected outcome in tests/it/scenarios.rs"
        ));
    }
    for gone in table.difference(&files) {
        failures.push(format!(
            "tests/it/scenarios.rs expects scenarios/{gone}, which does not exist"
        ));
    }
    for (file, check) in EXPECTED.iter().filter(|(f, _)| files.contains(*f)) {
        let result = catch_unwind(AssertUnwindSafe(|| check(&run_scenario(file))));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("scenarios/{file}: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The Redis scenarios: fij spawns a primary and a replica (both log to fij's stdout) and fails
/// the primary at 2 s. Checks the injection and returns the replica's log lines with the time
/// from its "sync: Finished with success" to its "Connection with master lost" (Redis's own
/// millisecond timestamps).
fn redis_primary_failed(run: &Run) -> (Vec<String>, u64) {
    let out = &run.out;
    out.assert_exit(0);
    let primary = out.log.target_pid("primary");
    let replica = out.log.target_pid("replica");
    let injections = out.log.injections();
    assert_eq!(injections.len(), 1, "{out}");
    assert_eq!(pid_of(injections[0]), primary, "{out}");
    assert_eq!(injections[0]["signal"], "SIGKILL", "{out}");
    assert_eq!(injections[0]["delivered"], true, "{out}");
    assert_eq!(out.log.exit_status(primary), "signal SIGKILL", "{out}");
    assert_eq!(out.log.end_reason(), EndReason::Duration, "{out}");
    // `PID:S 25 Nov 2026 13:08:03.735 # MASTER timeout: ...`
    let prefix = format!("{replica}:");
    let lines: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect();
    let time_of = |needle: &str| -> u64 {
        let line = lines
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no replica line with {needle:?}:\n{}", lines.join("\n")));
        let hms = line.split_whitespace().nth(4).expect("a time field");
        let parts: Vec<f64> = hms
            .split(':')
            .map(|p| p.parse().expect("h:m:s.ms"))
            .collect();
        ((parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]) * 1000.0).round() as u64
    };
    let synced = time_of("sync: Finished with success");
    let lost = time_of("Connection with master lost");
    let day = 24 * 3600 * 1000;
    (lines, (lost + day - synced) % day)
}

/// kill at 2 s: the replica loses the link at once (less than 2.5 s after its first sync, which
/// is after the campaign start), by the connection closing, not by its timeout.
fn redis_primary_kill(run: &Run) {
    let (lines, gap_ms) = redis_primary_failed(run);
    assert!(
        gap_ms < 2500,
        "link lost {gap_ms} ms after the sync:\n{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("MASTER timeout")),
        "{}",
        lines.join("\n")
    );
    assert!(run.out.log.records("silenced").is_empty(), "{}", run.out);
}

/// crash at 2 s: the replica loses the link only by its 3 s repl-timeout: at least 3 s after its
/// first sync (which is at most about 1 s after the campaign start).
fn redis_primary_crash(run: &Run) {
    if crash_refused_without_tcx(run, "redis-primary-crash.toml") {
        return;
    }
    let (lines, gap_ms) = redis_primary_failed(run);
    assert!(
        gap_ms >= 3000,
        "link lost {gap_ms} ms after the sync:\n{}",
        lines.join("\n")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("MASTER timeout: no data nor PING received")),
        "{}",
        lines.join("\n")
    );
    assert!(!run.out.log.records("silenced").is_empty(), "{}", run.out);
}
