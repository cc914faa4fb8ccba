//! `fij run --backend stap` side by side with `--backend ebpf`: the same scenario and seed give
//! the same injections (fault, target, instance, hit, signal, draw) and the same ends of the
//! target processes, through stap's BPF runtime on this kernel (docs/stap.md). One scenario
//! holds one fault per trigger condition — `nth`, `every`, `after`, `count`, a seeded
//! `probability`, a kill whose exit signal is checked — each on a target of its own, on the
//! `write` syscall, plus a uprobe fault (`libc:write`); it runs with two seeds. One scenario per
//! seed because every stap run compiles its script (minutes on a busy 2-CPU machine: stap's BPF
//! runtime rebuilds its tracepoint queries every time).
//!
//! Also: what cannot start is refused with exit 2 and nothing left running (no `stapbpf`).
//! Needs `stap`, `stapbpf` and kernel headers (`cargo xtask setup` installs systemtap and
//! linux-headers-amd64); their absence fails the test, since CI has them.
use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use fij_tests::{
    Fij, FijOutput, Log, TempDir, Workload, alive, bpf_fds_of, bpftool_json, kill_spawned_target,
    read_lines, send_signal, toml_array, toml_str,
};
use serde_json::Value;

/// A stap run compiles its script first: minutes here.
const STAP_TIMEOUT: Duration = Duration::from_secs(900);

/// How many lines (one `write` each) the plain targets write.
const LINES: u64 = 40;

/// The scenario: one target per fault, named as its fault.
fn scenario(dir: &TempDir) -> String {
    let workload = Workload::new(env!("CARGO_BIN_EXE_fij-workload"));
    let lines = LINES.to_string();
    let target = |name: &str, args: &[&str]| {
        let out = dir.join(&format!("{name}.txt"));
        let mut argv: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"write-lines", &out];
        for a in args {
            argv.push(a);
        }
        format!(
            "[[target]]\nname = {}\ncommand = {}\n\n",
            toml_str(name),
            toml_array(&workload.argv(&argv))
        )
    };
    // SIGURG is ignored by default: the targets make every write, and every hit is decided.
    let fault = |name: &str, trigger: &str, keys: &str| {
        format!(
            "[[fault]]\nname = {n}\ntarget = {n}\naction = \"signal\"\nsignal = \"SIGURG\"\n\
             trigger = {trigger}\n{keys}\n",
            n = toml_str(name)
        )
    };
    let write = "{ syscall = \"write\" }";
    let mut text = String::new();
    for (name, args) in [
        ("nth", vec![lines.as_str()]),
        ("every", vec![lines.as_str()]),
        // 5 writes at once, then 3.5 s of pause: `after = 2500ms` counts from the 6th write.
        // 2.5e9 ns is above what stap's BPF code generator holds (2^31 - 1): the script
        // compares microseconds.
        (
            "after",
            vec!["12", "--pause-after", "5", "--pause-ms", "3500"],
        ),
        ("count", vec![lines.as_str()]),
        ("chance", vec![lines.as_str()]),
        ("kill", vec![lines.as_str()]),
        ("uprobe", vec![lines.as_str()]),
    ] {
        text.push_str(&target(name, &args));
    }
    text.push_str(&fault("nth", write, "nth = 3"));
    text.push_str(&fault("every", write, "every = 4\ncount = 100"));
    text.push_str(&fault("after", write, "after = \"2500ms\"\nnth = 2"));
    text.push_str(&fault("count", write, "every = 2\ncount = 3"));
    text.push_str(&fault("chance", write, "probability = 0.3\ncount = 1000"));
    text.push_str(
        "[[fault]]\nname = \"kill\"\ntarget = \"kill\"\naction = \"kill\"\n\
         trigger = { syscall = \"write\" }\nnth = 5\n\n",
    );
    text.push_str(&fault(
        "uprobe",
        "{ uprobe = \"libc:write\" }",
        "every = 5\ncount = 100",
    ));
    text
}

fn run(dir: &TempDir, scenario: &Path, seed: u64, backend: &str) -> FijOutput {
    let log = dir.join(&format!("{backend}-{seed}.jsonl"));
    let out = Fij::run_logging_to(scenario, log)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--backend")
        .arg(backend)
        .timeout(STAP_TIMEOUT)
        .spawn()
        .wait();
    out.assert_exit(0);
    out
}

/// Fault name → its injections as (target, instance, hit, signal, draw, delivered, by).
fn decided(log: &Log) -> BTreeMap<String, Vec<String>> {
    let mut by_fault: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in log.injections() {
        by_fault
            .entry(r["fault"].as_str().unwrap().to_string())
            .or_default()
            .push(format!(
                "target={} instance={} hit={} signal={} draw={} delivered={} by={} trigger={}",
                r["target"],
                r["instance"],
                r["hit"],
                r["signal"],
                r.get("draw").unwrap_or(&Value::Null),
                r["delivered"],
                r["by"],
                r["trigger"],
            ));
    }
    for hits in by_fault.values_mut() {
        hits.sort();
    }
    by_fault
}

/// Target name → how its root process ended ("code 0", "signal SIGKILL").
fn ends(log: &Log) -> BTreeMap<String, String> {
    log.targets()
        .iter()
        .map(|t| (t.name.clone(), log.exit_status(t.pid)))
        .collect()
}

fn hits(log: &Log, fault: &str) -> Vec<u64> {
    let mut hits: Vec<u64> = log
        .injections()
        .into_iter()
        .filter(|r| r["fault"] == fault)
        .map(|r| r["hit"].as_u64().unwrap())
        .collect();
    hits.sort();
    hits
}

fn stapbpf_processes() -> Vec<u32> {
    fij_tests::processes_named("stapbpf")
}

#[test]
fn both_backends_inject_on_the_same_hits_for_every_condition_and_seed() {
    let dir = TempDir::new("stap-side-by-side");
    let scenario = dir.write("side-by-side.toml", &scenario(&dir));
    for seed in [11, 12] {
        let ebpf = run(&dir, &scenario, seed, "ebpf");
        let kill_lines_ebpf = read_lines(&dir.join("kill.txt"));
        let stap = run(&dir, &scenario, seed, "stap");
        let kill_lines_stap = read_lines(&dir.join("kill.txt"));
        let (e, s) = (&ebpf.log, &stap.log);
        // The exact hits, not only equal ones.
        for log in [e, s] {
            assert_eq!(hits(log, "nth"), [3], "{log}");
            assert_eq!(
                hits(log, "every"),
                (1..=LINES / 4).map(|k| 4 * k).collect::<Vec<_>>()
            );
            assert_eq!(hits(log, "after"), [2], "{log}");
            assert_eq!(hits(log, "count"), [2, 4, 6], "{log}");
            assert_eq!(hits(log, "kill"), [5], "{log}");
            assert_eq!(
                hits(log, "uprobe"),
                (1..=LINES / 5).map(|k| 5 * k).collect::<Vec<_>>(),
                "{log}"
            );
            assert!(!hits(log, "chance").is_empty(), "{log}");
        }
        assert_eq!(
            decided(e),
            decided(s),
            "seed {seed}\n--- ebpf:\n{e}\n--- stap:\n{s}"
        );
        // The kill ended its target by SIGKILL on its 5th write (4 lines written), every other
        // target made all its writes and exited 0: the same in both.
        let expected_ends: BTreeMap<String, String> =
            ["nth", "every", "after", "count", "chance", "kill", "uprobe"]
                .iter()
                .map(|&n| {
                    let end = if n == "kill" {
                        "signal SIGKILL"
                    } else {
                        "code 0"
                    };
                    (n.to_string(), end.to_string())
                })
                .collect();
        assert_eq!(ends(e), expected_ends, "{e}");
        assert_eq!(ends(s), expected_ends, "{s}");
        assert_eq!(kill_lines_ebpf, fij_tests::numbered_lines(4));
        assert_eq!(kill_lines_stap, fij_tests::numbered_lines(4));
        // The stap run armed the targets before their first write: the `after` target's
        // early writes were all before the threshold, every hit is numbered from the first.
        assert!(stap.stderr.contains("campaign armed (stap)"), "{stap}");
    }
    assert_eq!(
        stapbpf_processes(),
        Vec::<u32>::new(),
        "stapbpf left running"
    );
}

/// What stap's BPF runtime cannot express is refused before anything starts, at its key.
#[test]
fn a_refused_scenario_exits_2_at_its_key_and_starts_nothing() {
    let dir = TempDir::new("stap-refused");
    let out_file = dir.join("out.txt");
    let scenario = dir.write(
        "refused.toml",
        &format!(
            "[[target]]\nname = \"t\"\ncommand = [\"sh\", \"-c\", {}]\n\n\
             [[fault]]\nname = \"c\"\ntarget = \"t\"\naction = \"crash\"\n\
             trigger = {{ syscall = \"write\" }}\n",
            toml_str(&format!("echo started > {}", out_file.display()))
        ),
    );
    let out = Fij::run(&dir, &scenario)
        .arg("--backend")
        .arg("stap")
        .spawn()
        .wait();
    out.assert_exit(2);
    assert!(
        out.stderr.contains(&format!(
            "{}:5:1: fault `c`: SystemTap cannot express `crash`",
            scenario.display()
        )),
        "{out}"
    );
    assert!(!out_file.exists(), "the target ran");
    assert!(out.log.is_empty(), "{out}");
    assert_eq!(stapbpf_processes(), Vec::<u32>::new());
}

/// Without stap on PATH: exit 2, saying what is missing, and the target never runs.
#[test]
fn without_stap_the_run_exits_2_and_starts_nothing() {
    let dir = TempDir::new("stap-missing");
    let out_file = dir.join("out.txt");
    let scenario = dir.write(
        "demo.toml",
        &format!(
            "[[target]]\nname = \"t\"\ncommand = [\"/bin/sh\", \"-c\", {}]\n\n\
             [[fault]]\nname = \"k\"\ntarget = \"t\"\naction = \"kill\"\n\
             trigger = {{ syscall = \"write\" }}\n",
            toml_str(&format!("echo started > {}", out_file.display()))
        ),
    );
    let out = Fij::run(&dir, &scenario)
        .arg("--backend")
        .arg("stap")
        .env("PATH", dir.path())
        .spawn()
        .wait();
    out.assert_exit(2);
    assert!(out.stderr.contains("stap not found in PATH"), "{out}");
    assert!(!out_file.exists(), "the target ran");
}

/// fij's work directories (`$TMPDIR/fij-stap-*`: the script and stap's compiled program).
fn stap_work_dirs() -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .expect("the temporary directory")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("fij-stap-"))
        .collect();
    dirs.sort();
    dirs
}

/// The ids of every loaded BPF program.
fn program_ids() -> Vec<u64> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .expect("bpftool prog show: an array")
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// SIGKILL fij in the middle of a stap run: nothing stays behind — not its work directory (the
/// guardian removes it once fij is gone), not stapbpf (SIGTERM with fij's death: it detaches and
/// exits) nor the BPF programs it loaded, not the spawned target (it dies with fij), and no
/// process is left stopped.
#[test]
fn nothing_remains_after_fij_is_sigkilled_mid_run() {
    let dir = TempDir::new("stap-sigkill");
    let workload = Workload::new(env!("CARGO_BIN_EXE_fij-workload"));
    let scenario = dir.write(
        "s.toml",
        &format!(
            "[[target]]\nname = \"w\"\ncommand = {}\n\n[[fault]]\nname = \"f\"\n\
             target = \"w\"\naction = \"kill\"\ntrigger = {{ syscall = \"write\" }}\nnth = 1000\n",
            toml_array(&workload.argv(&[&"sleep", &"60000"]))
        ),
    );
    let dirs_before = stap_work_dirs();
    let mut fij = Fij::run(&dir, &scenario)
        .arg("--backend")
        .arg("stap")
        .timeout(STAP_TIMEOUT)
        .spawn();
    fij.wait_for_record("the start record", STAP_TIMEOUT, |r| r["event"] == "start");
    let target = fij.log().target_pid("w");
    let stapbpf = stapbpf_processes();
    assert_eq!(stapbpf.len(), 1, "one stapbpf running: {stapbpf:?}");
    let stapbpf_programs = bpf_fds_of(stapbpf[0]).progs;
    assert!(!stapbpf_programs.is_empty(), "stapbpf holds its programs");
    let work_dirs: Vec<String> = stap_work_dirs()
        .into_iter()
        .filter(|d| !dirs_before.contains(d))
        .collect();
    assert_eq!(work_dirs.len(), 1, "fij's work directory: {work_dirs:?}");

    send_signal(fij.pid(), libc::SIGKILL);
    let out = fij.finish();
    assert_eq!(out.ended, fij_tests::Ended::Signal(libc::SIGKILL), "{out}");
    // stapbpf detaches (its uprobe and tracepoint events) before it exits: seconds, not ms.
    let what_is_left = || {
        let mut left = Vec::new();
        left.extend(
            stap_work_dirs()
                .into_iter()
                .filter(|d| work_dirs.contains(d))
                .map(|d| format!("directory {d}")),
        );
        left.extend(
            stapbpf_processes()
                .into_iter()
                .map(|p| format!("stapbpf pid {p}")),
        );
        left.extend(
            program_ids()
                .into_iter()
                .filter(|id| stapbpf_programs.contains(id))
                .map(|id| format!("stapbpf's program {id}")),
        );
        if alive(target) {
            left.push(format!("target pid {target}"));
        }
        left.extend(fij_tests::leftovers::stopped_processes(&[target]));
        left
    };
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut left = what_is_left();
    while !left.is_empty() && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(50));
        left = what_is_left();
    }
    kill_spawned_target(target);
    assert_eq!(
        left,
        Vec::<String>::new(),
        "left behind by a SIGKILLed fij\n{out}"
    );
}
