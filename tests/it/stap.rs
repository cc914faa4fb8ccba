//! `fij stap`: every file in `scenarios/` either becomes a module-runtime SystemTap script that
//! SystemTap elaborates (`stap -g -p2`: probe points, tracepoint fields, tapset functions,
//! guru-only calls) against the installed kernel headers, or is refused (exit 2) at a scenario
//! position with a reason — as [`EXPECTED`] says for each file. Two scenarios written here cover
//! the rest of the mapping (selectors, pid targets, port, stop, select, after, time triggers,
//! uprobes), one for each runtime.
//!
//! Nothing is loaded or run: `-p2` stops before building a module. The first elaboration on a
//! machine builds stap's tracepoint query modules (50-80 s, more on a busy machine); stap
//! caches them in ~/.systemtap, later ones take about a second. Needs `stap` and the headers
//! of a kernel (`cargo xtask setup` installs systemtap and linux-headers-amd64); their absence
//! fails the test, since CI has them.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use fij_tests::{TempDir, fij_bin, workspace_root};

/// What `fij stap` must do with a scenario file.
enum Outcome {
    /// A script that `stap -p2` elaborates.
    Elaborated,
    /// Exit 2, nothing printed on stdout, and on stderr `FILE:LINE:COL: ` followed by a message
    /// containing each of these.
    Refused(&'static [&'static str]),
}

use Outcome::*;

const CRASH: &[&str] = &[
    "SystemTap cannot express `crash`",
    "that is fij's `kill`",
    "stap cannot drop packets",
];

/// File name in `scenarios/` → what `fij stap` makes of it (module runtime).
const EXPECTED: &[(&str, Outcome)] = &[
    ("demo.toml", Elaborated),
    ("signal-every-3rd-write.toml", Elaborated),
    ("kill-forked-child.toml", Elaborated),
    ("crash-vs-kill-crash.toml", Refused(CRASH)),
    ("crash-vs-kill-kill.toml", Elaborated),
    ("probabilistic-write-kill.toml", Elaborated),
    ("mtbf-exponential-group.toml", Elaborated),
    ("two-consecutive-failures.toml", Elaborated),
    ("redis-primary-kill.toml", Elaborated),
    ("redis-primary-crash.toml", Refused(CRASH)),
    ("kill-on-2nd-fork-tracepoint.toml", Elaborated),
    ("kill-before-2nd-fork-uprobe.toml", Elaborated),
];

/// The release of installed kernel headers stap can build against (`/lib/modules/R/build`): the
/// running kernel's if it has them, else the newest. Debian's linux-headers-amd64 is 6.1 while
/// this machine's kernel is not, hence `-r`.
fn headers_release() -> String {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut releases: Vec<String> = std::fs::read_dir("/lib/modules")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().join("build/.config").is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    releases.sort();
    if releases.iter().any(|r| r == running.trim()) {
        return running.trim().to_string();
    }
    releases.pop().expect(
        "no kernel headers in /lib/modules/*/build: install linux-headers-amd64 \
         (`cargo xtask setup` does)",
    )
}

fn fij_stap(scenario: &Path, extra: &[&str]) -> Output {
    Command::new(fij_bin())
        .arg("stap")
        .arg(scenario)
        .args(extra)
        .output()
        .expect("running fij stap")
}

/// `stap -p2` on `script`; `extra` are the runtime's flags. Panics with stap's output if it
/// does not elaborate.
fn elaborate(script: &Path, extra: &[&str]) {
    let release = headers_release();
    let out = Command::new("stap")
        .args(["-g", "-p2", "-r", &release])
        .args(extra)
        .arg(script)
        .output()
        .expect("stap must be installed (`cargo xtask setup` installs systemtap)");
    assert!(
        out.status.success(),
        "stap -p2 -r {release} {} failed:\n{}\n--- script:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(script).unwrap_or_default()
    );
}

/// Writes `fij stap`'s script for `scenario` to `dir` and elaborates it.
fn generate_and_elaborate(dir: &TempDir, scenario: &Path, runtime: &str, stap_flags: &[&str]) {
    let out = fij_stap(scenario, &["--runtime", runtime]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fij stap {} --runtime {runtime} failed:\n{stderr}",
        scenario.display()
    );
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("fij-stap injection fault=%d"),
        "the script prints no injection line:\n{script}"
    );
    let name = scenario.file_stem().unwrap().to_string_lossy();
    let path = dir.write(&format!("{name}-{runtime}.stp"), &script);
    elaborate(&path, stap_flags);
}

#[test]
fn every_scenario_is_elaborated_by_stap_or_refused_at_a_position() {
    let root = workspace_root();
    let files: BTreeSet<String> = std::fs::read_dir(root.join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".toml"))
        .collect();
    let listed: BTreeSet<String> = EXPECTED.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(
        files, listed,
        "every scenario file needs an entry in EXPECTED (and every entry a file)"
    );
    let dir = TempDir::new("stap-scenarios");
    for (file, outcome) in EXPECTED {
        let path = PathBuf::from("scenarios").join(file);
        let scenario = root.join(&path);
        match outcome {
            Elaborated => generate_and_elaborate(&dir, &scenario, "module", &[]),
            Refused(reasons) => {
                let out = fij_stap(&scenario, &[]);
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
                assert!(
                    out.stdout.is_empty(),
                    "{file}: a refused scenario prints no script"
                );
                let prefix = format!("{}:", scenario.display());
                let position = stderr
                    .strip_prefix(&prefix)
                    .and_then(|rest| {
                        let mut parts = rest.splitn(3, ':');
                        let line: usize = parts.next()?.parse().ok()?;
                        let col: usize = parts.next()?.parse().ok()?;
                        Some((line, col))
                    })
                    .unwrap_or_else(|| panic!("{file}: no FILE:LINE:COL position in: {stderr}"));
                assert!(position.0 > 1 && position.1 >= 1, "{file}: {stderr}");
                // The stap mapping's reason on any kernel: `fij stap` does not ask this kernel
                // for tcx (its script may be for another one).
                for reason in *reasons {
                    assert!(
                        stderr.contains(reason),
                        "{file}: `{reason}` missing in: {stderr}"
                    );
                }
            }
        }
    }
}

/// The keys no file in `scenarios/` has: targets by pid and by every selector stap can
/// express, `port`, `stop` with and without `resume_after`, `select`, `after`, `nth` with
/// `every`, `per`, `probability`, time triggers and a uprobe.
const MODULE_MAPPING: &str = r#"
seed = 5
duration = "30s"

[[target]]
name = "app"
command = ["sh", "-c", "echo 'it''s'; sleep 1"]
cwd = "/tmp"
env = { A = "b c" }
instances = 3

[[target]]
name = "db"
pid = 4242

[[target]]
name = "etcd"
comm = "etcd"

[[target]]
name = "bin"
exe = "/usr/bin/true"

[[target]]
name = "user"
uid = 1000

[[fault]]
name = "connect-2379"
target = "app"
action = "signal"
signal = "SIGUSR1"
trigger = { syscall = "connect", port = 2379 }
select = { fixed = 2 }
after = "1s"
nth = 2
every = 3
count = 2
per = "target"

[[fault]]
name = "stop-on-fork"
target = "db"
action = "stop"
resume_after = "2s"
trigger = { tracepoint = "sched:sched_process_fork" }

[[fault]]
name = "malloc"
target = "etcd"
action = "kill"
trigger = { uprobe = "libc:malloc" }
probability = 0.3

[[fault]]
name = "sendto-53"
target = "bin"
action = "kill"
trigger = { syscall = "sendto", port = 53 }

[[fault]]
name = "stop-every-2nd-write"
target = "user"
action = "stop"
trigger = { syscall = "write" }
every = 2

[[fault]]
name = "stop-one-at-1.5s"
target = "app"
action = "stop"
resume_after = "100ms"
trigger = { at = "1.5s" }
select = "one"
"#;

#[test]
fn the_whole_mapping_elaborates_in_the_module_runtime() {
    let dir = TempDir::new("stap-mapping");
    let scenario = dir.write("mapping.toml", MODULE_MAPPING);
    generate_and_elaborate(&dir, &scenario, "module", &[]);
}

/// What the BPF runtime can express (no probability, port, stop or time triggers: those are
/// refused, see the unit tests of `stap::refuse`).
const BPF_MAPPING: &str = r#"
seed = 5
duration = "30s"

[[target]]
name = "app"
command = ["sh", "-c", "echo 'it''s'; sleep 1"]
instances = 2

[[target]]
name = "db"
pid = 4242

[[target]]
name = "etcd"
comm = "etcd"

[[target]]
name = "bin"
exe = "/usr/bin/true"

[[fault]]
name = "w"
target = "app"
action = "signal"
signal = "SIGUSR1"
trigger = { syscall = "write" }
select = { fixed = 1 }
after = "1s"
nth = 2
every = 3
count = 2
per = "target"

[[fault]]
name = "fork"
target = "db"
action = "kill"
trigger = { tracepoint = "sched:sched_process_fork" }

[[fault]]
name = "malloc"
target = "etcd"
action = "kill"
trigger = { uprobe = "libc:malloc" }

[[fault]]
name = "exe-write"
target = "bin"
action = "kill"
trigger = { syscall = "write" }
"#;

/// `--compatible=4.1`: stap 4.8's BPF tracepoints otherwise need the kernel's symbol table,
/// which the headers package lacks (docs/stap.md).
#[test]
fn the_bpf_runtime_script_elaborates_with_the_4_1_tracepoint_behaviour() {
    let dir = TempDir::new("stap-bpf");
    let scenario = dir.write("mapping.toml", BPF_MAPPING);
    generate_and_elaborate(
        &dir,
        &scenario,
        "bpf",
        &["--runtime=bpf", "--compatible=4.1"],
    );
}
