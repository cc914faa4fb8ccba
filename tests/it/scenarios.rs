//! Every file in `scenarios/` runs, from the workspace root, with the outcome written for it in
//! [`EXPECTED`]. A scenario file without an entry (or an entry without a file) fails the test:
//! whoever adds a scenario says here what it must do.
use std::{
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
};

use fij_tests::{Fij, FijOutput, TempDir, numbered_lines, pid_of, read_lines, workspace_root};

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
];

/// The shell is killed on its 5th write; its file holds lines 1-4.
fn demo(run: &Run) {
    let out = &run.out;
    out.assert_exit(0);
    let shell = out.log.target_pid("writer");
    out.log.assert_injections("write", "SIGKILL", &[(5, shell)]);
    assert_eq!(out.log.exit_status(shell), "signal SIGKILL", "{out}");
    assert_eq!(out.log.end()["reason"], "targets_exited", "{out}");
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
