//! Input that fij must refuse before it loads or runs anything: invalid scenario files (exit 2,
//! every error at its exact `file:line:col`) and pids it must never adopt.
use std::{path::Path, time::Duration};

use fij_tests::{
    Ended, Fij, FijOutput, TempDir, bpf_fds_of, process_state, toml_array, wait_until,
};

/// Runs `fij run` on `scenario`, watching fij's file descriptors while it runs; returns the
/// output and whether fij ever held a BPF program or map (it must load nothing).
fn run_watching_programs(dir: &TempDir, scenario: &Path) -> (FijOutput, bool) {
    watching_programs(Fij::run(dir, scenario))
}

/// Runs `fij`, watching its file descriptors while it runs: the output, and whether it ever
/// held a BPF program or map.
fn watching_programs(fij: Fij) -> (FijOutput, bool) {
    let mut fij = fij.spawn();
    let pid = fij.pid();
    let mut loaded = false;
    while fij.running() {
        let held = bpf_fds_of(pid);
        loaded |= !held.progs.is_empty() || !held.maps.is_empty();
        std::thread::sleep(Duration::from_millis(1));
    }
    (fij.wait(), loaded)
}

fn adopt(label: &str, pid: u32) -> (FijOutput, bool) {
    let dir = TempDir::new(label);
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"t\"\npid = {pid}\n\n[[fault]]\nname = \"f\"\ntarget = \"t\"\n\
             action = \"signal\"\nsignal = \"SIGUSR1\"\ntrigger = {{ syscall = \"write\" }}\n"
        ),
    );
    run_watching_programs(&dir, &scenario)
}

/// Test 10: the test process is an ancestor of the fij it starts: fij refuses to adopt it (exit
/// 2, saying why), loads nothing, and the test is of course not signalled (SIGUSR1 would end it).
#[test]
fn adopting_an_ancestor_of_fij_is_refused() {
    let (run, loaded) = adopt("adopt-ancestor", std::process::id());
    run.assert_exit(2);
    assert!(run.stderr.contains("never signals"), "{run}");
    assert!(run.stderr.contains("ancestor"), "{run}");
    assert!(!loaded, "fij loaded programs before refusing the scenario");
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

#[test]
fn adopting_pid_1_is_refused() {
    let (run, loaded) = adopt("adopt-init", 1);
    run.assert_exit(2);
    // Refused by the scenario check (`pid` must be greater than 1) or by the adoption check.
    assert!(
        run.stderr.contains("greater than 1") || run.stderr.contains("pid 1 is never a target"),
        "{run}"
    );
    assert!(!loaded);
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

#[test]
fn adopting_a_kernel_thread_is_refused() {
    // kthreadd is pid 2 on every Linux system.
    let (run, loaded) = adopt("adopt-kthread", 2);
    run.assert_exit(2);
    assert!(run.stderr.contains("kernel thread"), "{run}");
    assert!(!loaded);
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

#[test]
fn adopting_a_nonexistent_pid_is_refused() {
    // Above pid_max (so nothing has it) but within what the scenario format accepts.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (pid_max..=4_194_304).find(|p| !Path::new(&format!("/proc/{p}")).exists());
    let pid = pid.expect("a pid no process has");
    let (run, loaded) = adopt("adopt-none", pid);
    run.assert_exit(2);
    assert!(run.stderr.contains("does not exist"), "{run}");
    assert!(!loaded);
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

/// A zombie has exited: it runs no code and no exit event will ever come for it, so a campaign
/// on it would never end. Refused like a pid that does not exist.
#[test]
fn adopting_a_zombie_is_refused() {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawning true");
    let pid = child.id();
    wait_until(Duration::from_secs(10), "`true` to become a zombie", || {
        (process_state(pid) == Some('Z')).then_some(())
    });
    let (run, loaded) = adopt("adopt-zombie", pid);
    let _ = child.wait();
    run.assert_exit(2);
    assert!(run.stderr.contains("has exited"), "{run}");
    assert!(!loaded);
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

/// A valid scenario (lines 1-10) whose target would create `marker`, edited by `edit` into one
/// with a single error.
fn scenario_with(marker: &Path, edit: impl Fn(&str) -> String) -> String {
    let command = toml_array(&["sh", "-c", &format!("touch {}", marker.display())]);
    let valid = format!(
        "[[target]]\n\
         name = \"w\"\n\
         command = {command}\n\
         \n\
         [[fault]]\n\
         name = \"f\"\n\
         target = \"w\"\n\
         action = \"kill\"\n\
         trigger = {{ syscall = \"write\" }}\n\
         nth = 1\n"
    );
    edit(&valid)
}

/// Turns the valid scenario into one with an error.
type Edit = &'static dyn Fn(&str) -> String;

/// Test 11: one error per class; `fij validate` and `fij run` both exit 2, print the error at
/// its exact position, and nothing runs (the target would create a marker file).
#[test]
fn invalid_scenarios_are_refused_at_the_exact_position() {
    // (class, edit, line, col, message fragment)
    let cases: &[(&str, Edit, usize, usize, &str)] = &[
        (
            "unknown-key",
            &|s| s.replace("nth = 1", "nht = 1"),
            10,
            1,
            "unknown key `nht` in [[fault]]",
        ),
        (
            "wrong-type",
            &|s| s.replace("nth = 1", "nth = \"1\""),
            10,
            7,
            "`nth`: expected an integer, found a string",
        ),
        (
            "unknown-syscall",
            &|s| s.replace("syscall = \"write\"", "syscall = \"wrte\""),
            9,
            23,
            "unknown syscall `wrte`",
        ),
        (
            "undefined-target",
            &|s| s.replace("target = \"w\"", "target = \"nope\""),
            7,
            10,
            "undefined target `nope` (defined targets: `w`)",
        ),
        (
            "nth-zero",
            &|s| s.replace("nth = 1", "nth = 0"),
            10,
            7,
            "nth is 1-based",
        ),
        (
            "missing-key",
            &|s| s.replace("action = \"kill\"\n", ""),
            5,
            1,
            "missing required key `action` in [[fault]]",
        ),
        (
            "toml-syntax",
            &|s| s.replace("[[fault]]", "[[fault]"),
            5,
            8,
            "TOML syntax error",
        ),
        (
            "uprobe-symbol",
            &|s| {
                s.replace(
                    "{ syscall = \"write\" }",
                    "{ uprobe = \"/bin/sh:no_such_symbol_fij\" }",
                )
            },
            9,
            22,
            "`trigger.uprobe`: no symbol `no_such_symbol_fij` in /bin/sh",
        ),
        (
            "unknown-user",
            &|s| {
                s.replace(
                    "name = \"w\"\n",
                    "name = \"w\"\nuser = \"no-such-user-fij\"\n",
                )
            },
            3,
            8,
            "unknown user `no-such-user-fij`: not in this system's passwd database",
        ),
        (
            "zero-duration",
            &|s| format!("duration = \"0s\"\n{s}"),
            1,
            12,
            "`duration` must be greater than 0",
        ),
    ];
    let mut failures = Vec::new();
    for (class, edit, line, col, fragment) in cases {
        let dir = TempDir::new(&format!("invalid-{class}"));
        let marker = dir.join("marker");
        let scenario = dir.write("s.toml", &scenario_with(&marker, edit));
        let expected = format!("{}:{line}:{col}: ", scenario.display());
        for run in [
            Fij::validate(&scenario).output(),
            Fij::run(&dir, &scenario).output(),
        ] {
            let first = run.stderr.lines().find(|l| l.starts_with(&expected));
            let ok = run.ended == Ended::Code(2)
                && first.is_some_and(|l| l.contains(fragment))
                && run.log.is_empty()
                && !marker.exists();
            if !ok {
                failures.push(format!(
                    "[{class}] expected exit 2 and `{expected}…{fragment}…`, nothing run (marker absent: {})\n{run}",
                    !marker.exists()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The same errors are reported with the path as given on the command line (here relative).
#[test]
fn error_positions_name_the_file_as_given() {
    let dir = TempDir::new("relative-path");
    let marker = dir.join("marker");
    dir.write(
        "s.toml",
        &scenario_with(&marker, |s| s.replace("nth = 1", "nth = 0")),
    );
    let run = Fij::validate(Path::new("s.toml"))
        .current_dir(dir.path())
        .output();
    run.assert_exit(2);
    assert!(
        run.stderr.lines().any(|l| l.starts_with("s.toml:10:7: ")),
        "{run}"
    );
}

// ---------------------------------------------------------------------------------------------
// Limits of the kernel's tables, checked by the compile stage before anything is loaded.

/// The 1-based line and column of the `nth` (0-based) occurrence of `needle` in `text`.
fn position_of(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let at = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("`{needle}` occurs fewer than {} times", nth + 1))
        .0;
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// `fij validate` and `fij run` both refuse `text` with exit 2 and exactly `expected` (one
/// `file:line:col: message` line, the position of the key that crosses the limit); `run` loads
/// no program and writes no log record.
fn assert_limit_refused(label: &str, text: &str, (line, col): (usize, usize), message: &str) {
    let dir = TempDir::new(label);
    let scenario = dir.write("s.toml", text);
    let expected = format!("{}:{line}:{col}: {message}", scenario.display());
    let validate = Fij::validate(&scenario).output();
    validate.assert_exit(2);
    assert_eq!(validate.stderr.trim_end(), expected, "{validate}");
    let (run, loaded) = run_watching_programs(&dir, &scenario);
    run.assert_exit(2);
    assert_eq!(run.stderr.trim_end(), expected, "{run}");
    assert!(!loaded, "fij loaded programs before refusing the scenario");
    assert!(run.log.is_empty(), "nothing may run:\n{run}");
}

fn command_targets(count: usize, instances: u32) -> String {
    (0..count)
        .map(|i| {
            format!("[[target]]\nname = \"t{i}\"\ncommand = [\"true\"]\ninstances = {instances}\n")
        })
        .collect()
}

fn fault_on(name: &str, target: &str, trigger: &str, extra: &str) -> String {
    format!(
        "[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\naction = \"kill\"\n\
         trigger = {trigger}\n{extra}"
    )
}

#[test]
fn more_faults_on_one_hook_than_the_kernel_evaluates_are_refused_at_the_trigger() {
    let faults: String = (0..17)
        .map(|i| fault_on(&format!("f{i}"), "t0", "{ syscall = \"write\" }", ""))
        .collect();
    let text = command_targets(1, 1) + &faults;
    assert_limit_refused(
        "limit-per-hook",
        &text,
        position_of(&text, "{ syscall", 16),
        "fault `f16`: more than 16 faults on one trigger (write) of target `t0`: the kernel \
         evaluates at most 16 per hook",
    );
}

#[test]
fn a_ninth_distinct_tracepoint_is_refused_at_its_trigger() {
    let tracepoints = [
        "sched_process_fork",
        "sched_process_exec",
        "sched_process_exit",
        "sched_wakeup",
        "sched_switch",
        "sched_waking",
        "sched_migrate_task",
        "sched_process_free",
        "sched_process_wait",
    ];
    let faults: String = tracepoints
        .iter()
        .enumerate()
        .map(|(i, tp)| {
            fault_on(
                &format!("f{i}"),
                "t0",
                &format!("{{ tracepoint = \"sched:{tp}\" }}"),
                "",
            )
        })
        .collect();
    let text = command_targets(1, 1) + &faults;
    assert_limit_refused(
        "limit-tracepoints",
        &text,
        position_of(&text, "{ tracepoint", 8),
        "fault `f8`: a scenario may use at most 8 distinct tracepoints (fij's tracepoint program \
         slots); this is the 9th",
    );
}

#[test]
fn more_faults_than_the_rule_table_holds_are_refused_at_the_first_one_too_many() {
    // 65 targets × 16 faults: no hook holds more than it may, but 1040 > 1024 faults.
    let faults: String = (0..1040)
        .map(|i| {
            fault_on(
                &format!("f{i}"),
                &format!("t{}", i / 16),
                "{ syscall = \"write\" }",
                "",
            )
        })
        .collect();
    let text = command_targets(65, 1) + &faults;
    assert_limit_refused(
        "limit-faults",
        &text,
        position_of(&text, "[[fault]]", 1024),
        "too many faults: a scenario may have at most 1024 (the kernel's rule table)",
    );
}

#[test]
fn instances_beyond_the_target_set_are_refused_at_the_target() {
    let text = command_targets(65, 1024);
    assert_limit_refused(
        "limit-instances",
        &text,
        position_of(&text, "[[target]]", 64),
        "target `t64`: the targets' instances add up to more than 65536 processes (the kernel's \
         target set)",
    );
}

#[test]
fn selector_targets_beyond_their_table_are_refused_at_the_target() {
    let text: String = (0..65)
        .map(|i| format!("[[target]]\nname = \"c{i}\"\ncomm = \"fij-none-{i}\"\n"))
        .collect();
    assert_limit_refused(
        "limit-selectors",
        &text,
        position_of(&text, "[[target]]", 64),
        "target `c64`: at most 64 targets may select by `comm`",
    );
}

#[test]
fn selections_beyond_the_selection_table_are_refused_at_the_fault() {
    let faults: String = (0..5)
        .map(|i| {
            fault_on(
                &format!("f{i}"),
                &format!("t{i}"),
                "{ syscall = \"write\" }",
                "select = { percent = 100 }\n",
            )
        })
        .collect();
    let text = command_targets(5, 1024) + &faults;
    assert_limit_refused(
        "limit-selections",
        &text,
        position_of(&text, "[[fault]]", 4),
        "fault `f4`: the faults with `select` pick more than 4096 (fault, instance) pairs in all \
         (the kernel's selection table)",
    );
}

#[test]
fn time_triggers_beyond_the_due_table_are_refused_at_the_trigger() {
    let faults: String = (0..5)
        .map(|i| fault_on(&format!("f{i}"), &format!("t{i}"), "{ at = \"1h\" }", ""))
        .collect();
    let text = command_targets(5, 1024) + &faults;
    assert_limit_refused(
        "limit-due",
        &text,
        position_of(&text, "{ at", 4),
        "fault `f4`: time triggers fail more than 4096 instances in all (the kernel's due table)",
    );
}

/// Issue 18, item 5: fij reads at most 1 MiB of a scenario file, also from a file that never
/// ends: `/dev/zero` and a 2 MiB file are refused at once (exit 2, at 1:1), never read whole.
#[test]
fn a_scenario_file_over_1_mib_is_refused_without_reading_it_whole() {
    let dir = TempDir::new("too-big");
    let big = dir.write("big.toml", &"# padding\n".repeat(200_000));
    for path in [Path::new("/dev/zero"), big.as_path()] {
        let out = Fij::validate(path).output();
        out.assert_exit(2);
        assert!(
            out.stderr.contains(&format!(
                "{}:1:1: the scenario file is larger than",
                path.display()
            )),
            "{out}"
        );
    }
    // Just under the limit is read (and then judged on its content).
    let fits = dir.write("fits.toml", &"#\n".repeat(500_000));
    let out = Fij::validate(&fits).output();
    assert!(!out.stderr.contains("larger than"), "{out}");
}

/// Issue 18, item 5: `fij plan --hits` is bounded: an unsigned -1 is refused (exit 2, naming
/// the limit) instead of computing forever.
#[test]
fn plan_refuses_more_hits_than_it_can_compute() {
    let dir = TempDir::new("plan-hits");
    let scenario = dir.write(
        "s.toml",
        "seed = 1\n[[target]]\nname = \"t\"\ncommand = [\"true\"]\n\n[[fault]]\nname = \"f\"\n\
         target = \"t\"\naction = \"kill\"\ntrigger = { syscall = \"write\" }\nprobability = 0.5\n",
    );
    let out = std::process::Command::new(fij_tests::fij_bin())
        .arg("plan")
        .arg(&scenario)
        .args(["--hits", "18446744073709551615"])
        .output()
        .expect("running fij plan");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is not in 1..=1000000"), "{stderr}");
}

/// Issue 18, item 7: `--log` never writes through a symbolic link (one planted in a
/// world-writable directory would have root overwrite whatever it points to): refused, exit 2,
/// the file it points to untouched, nothing loaded or run.
#[test]
fn a_log_path_that_is_a_symlink_is_refused() {
    let dir = TempDir::new("log-symlink");
    let marker = dir.join("marker");
    let scenario = dir.write("s.toml", &scenario_with(&marker, |s| s.to_owned()));
    let precious = dir.write("precious", "keep me\n");
    let link = dir.join("planted.jsonl");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let (out, loaded) = watching_programs(Fij::new_command(&[&"run", &scenario, &"--log", &link]));
    out.assert_exit(2);
    assert!(out.stderr.contains("is a symbolic link"), "{out}");
    assert!(!loaded, "fij loaded BPF objects");
    assert!(!marker.exists(), "the target ran");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
}

/// Issue 18, item 6: root with capabilities dropped (here from the bounding set, by `setpriv`)
/// is told which ones the campaign needs, before anything is loaded: exit 2, naming them.
#[test]
fn missing_capabilities_are_named_before_anything_is_loaded() {
    let dir = TempDir::new("caps");
    let marker = dir.join("marker");
    // An `error` on connect needs CAP_NET_ADMIN (its cgroup hook) on every kernel this runs on;
    // `crash` would too, but kernels without tcx (6.1) refuse it before capabilities are asked.
    let connect_error = |s: &str| {
        s.replace(
            "action = \"kill\"\ntrigger = { syscall = \"write\" }",
            "action = \"error\"\nerrno = \"ECONNREFUSED\"\ntrigger = { syscall = \"connect\" }",
        )
    };
    let scenario = dir.write("s.toml", &scenario_with(&marker, connect_error));
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "-bpf,-perfmon,-sys_admin",
            &["CAP_BPF (", "CAP_PERFMON ("],
            &["CAP_NET_ADMIN"],
        ),
        (
            "-net_admin",
            &["CAP_NET_ADMIN ("],
            &["CAP_BPF", "CAP_PERFMON"],
        ),
    ];
    for (drop, named, not_named) in cases {
        // setpriv execs fij: the watched pid is fij's.
        let (out, loaded) = watching_programs(
            Fij::new_command(&[&"run", &scenario])
                .through("setpriv", [format!("--bounding-set={drop}"), "--".into()]),
        );
        let stderr = &out.stderr;
        assert_eq!(out.ended, Ended::Code(2), "dropping {drop}: {out}");
        assert!(
            stderr.contains("without capabilities this campaign needs"),
            "{stderr}"
        );
        for cap in *named {
            assert!(
                stderr.contains(cap),
                "dropping {drop}: {cap} not named: {stderr}"
            );
        }
        for cap in *not_named {
            assert!(
                !stderr.contains(cap),
                "dropping {drop}: {cap} named: {stderr}"
            );
        }
        assert!(!loaded, "fij loaded BPF objects");
        assert!(!marker.exists(), "the target ran");
    }
}
