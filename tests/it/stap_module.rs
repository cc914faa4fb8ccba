//! SystemTap's module runtime side by side with fij, in the kernel lab's Debian 12 and 13 guests:
//! `cargo xtask vm --kernel debian12 --kernel debian13 --test stap_module`. Before the guest
//! boots, xtask compiles `fij stap --runtime module` of `stap_module/scenario.toml` into a kernel
//! module with trixie's stap 5.1 against the guest kernel's headers (6.1's from bookworm), in a
//! trixie root on the host
//! (xtask/src/vm/stap_chroot.rs), and tells this test where (`FIJ_STAP_CHROOT`,
//! `FIJ_STAP_MODULE`). The test runs the scenario with fij's eBPF backend, then loads the module
//! with that root's `staprun -c CMD` on the same workload, and checks that both inject on the
//! same hits of the same process: every 4th write, a seeded probability (ChaCha20 in the module's
//! embedded C against fij's kernel draws) and a kill on the 25th write.
//!
//! Skips (with the reason) only on a kernel that cannot load modules; elsewhere it needs the
//! module xtask built, and fails without it.
use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use fij_tests::{Fij, TempDir, read_lines};

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/it/stap_module/scenario.toml");
/// Where the workload writes, in whichever root it runs.
const OUT: &str = "/tmp/fij-stap-module.txt";
/// The scenario's faults, in file order: the module's lines name them by index.
const FAULTS: [&str; 3] = ["every", "chance", "kill"];

/// Fault name → the hits it injected on, with the signal and the seeded draw (0 without
/// `probability`) each time.
type Injections = BTreeMap<String, Vec<(u64, &'static str, u64)>>;

/// The module prints signal numbers, fij's log names.
fn signal_name(number: i32) -> &'static str {
    match number {
        libc::SIGKILL => "SIGKILL",
        libc::SIGURG => "SIGURG",
        other => panic!("signal {other} is not in the scenario"),
    }
}

/// The `-c` command of the scenario's target, as the script's header gives it to stap.
fn target_command() -> String {
    let text = std::fs::read_to_string(SCENARIO).expect("the scenario");
    // The one `command = [...]`: an array of basic strings, which JSON reads alike.
    let array = text
        .lines()
        .find_map(|l| l.strip_prefix("command = "))
        .expect("a command line");
    let argv: Vec<String> = serde_json::from_str(array).expect("the command as a JSON array");
    argv.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `staprun -o OUT -c CMD MODULE` in the trixie root (its own mount namespace, with /dev, /proc,
/// /sys and debugfs, which stap's transport uses): the module's `fij-stap` lines.
fn run_module(root: &str, module: &str) -> (Vec<String>, Duration) {
    let started = std::time::Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --make-rprivate / && mount --bind /dev {root}/dev && \
             mount -t proc proc {root}/proc && mount -t sysfs sys {root}/sys && \
             mount -t debugfs debugfs {root}/sys/kernel/debug && \
             exec chroot {root} staprun -o /work/module-output.txt -c \"$0\" /work/{module}"
        ))
        .arg(target_command())
        .output()
        .expect("running unshare … staprun");
    let elapsed = started.elapsed();
    // stapio exits 1 when `-c`'s command dies of a signal ("WARNING: Child process exited with
    // signal 9 (Killed)"), which is the scenario's kill: its status says nothing of the module.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ERROR") && stderr.contains("signal 9"),
        "staprun ({}): did the module load and the kill happen?\n{}\n{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
    );
    let lines = read_lines(&PathBuf::from(format!("{root}/work/module-output.txt")));
    (lines, elapsed)
}

/// The module's `fij-stap injection …` lines as [`Injections`].
fn module_injections(lines: &[String]) -> Injections {
    let mut found = Injections::new();
    for line in lines {
        let Some(rest) = line.strip_prefix("fij-stap injection ") else {
            continue;
        };
        let fields: BTreeMap<&str, &str> = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let fault: usize = fields["fault"].parse().unwrap();
        found.entry(FAULTS[fault].to_owned()).or_default().push((
            fields["hit"].parse().unwrap(),
            signal_name(fields["signal"].parse().unwrap()),
            fields["draw"].parse().unwrap(),
        ));
    }
    for hits in found.values_mut() {
        hits.sort();
    }
    found
}

#[test]
fn a_stap_module_and_fij_inject_on_the_same_hits() {
    if !std::path::Path::new("/proc/modules").exists() {
        println!("skipped: this kernel cannot load modules (no /proc/modules)");
        return;
    }
    let (Ok(root), Ok(module)) = (
        std::env::var("FIJ_STAP_CHROOT"),
        std::env::var("FIJ_STAP_MODULE"),
    ) else {
        panic!(
            "FIJ_STAP_CHROOT and FIJ_STAP_MODULE are unset: run this test with \
             `cargo xtask vm --kernel debian12|debian13 --test stap_module`, which builds the \
             module for that kernel"
        );
    };
    let dir = TempDir::new("stap-module");
    let ebpf = Fij::run(&dir, std::path::Path::new(SCENARIO))
        .spawn()
        .wait();
    ebpf.assert_exit(0);
    let ebpf_lines = read_lines(std::path::Path::new(OUT));
    let mut fij = Injections::new();
    for r in ebpf.log.injections() {
        let signal = r["signal"].as_str().unwrap();
        fij.entry(r["fault"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                r["hit"].as_u64().unwrap(),
                match signal {
                    "SIGKILL" => "SIGKILL",
                    "SIGURG" => "SIGURG",
                    other => panic!("{other} is not in the scenario"),
                },
                r.get("draw").and_then(|d| d.as_u64()).unwrap_or(0),
            ));
    }
    for hits in fij.values_mut() {
        hits.sort();
    }

    let (lines, took) = run_module(&root, &module);
    // What the module itself saw: from `armed` (end of `probe begin`) to `end`.
    let ktime = |record: &str| -> Option<u64> {
        let line = lines.iter().find(|l| l.starts_with(record))?;
        line.rsplit_once("ktime_ns=")?.1.parse().ok()
    };
    let armed_to_end = ktime("fij-stap armed ")
        .zip(ktime("fij-stap end "))
        .map(|(armed, end)| end.saturating_sub(armed));
    println!(
        "staprun: {:.3} s in all (insmod, run, rmmod); armed to end in the module: {:?} ms",
        took.as_secs_f64(),
        armed_to_end.map(|ns| ns as f64 / 1e6)
    );
    let stap = module_injections(&lines);
    let stap_lines = read_lines(&PathBuf::from(format!("{root}{OUT}")));

    // The exact hits, not only equal ones: every 4th write until the kill on the 25th.
    let every: Vec<_> = (1..=6).map(|k| (4 * k, "SIGURG", 0)).collect();
    assert_eq!(fij["every"], every, "{ebpf}");
    assert_eq!(fij["kill"], [(25, "SIGKILL", 0)], "{ebpf}");
    assert!(!fij["chance"].is_empty(), "{ebpf}");
    assert_eq!(
        stap,
        fij,
        "module's lines:\n{}\n--- fij:\n{ebpf}",
        lines.join("\n")
    );
    // Both killed the shell on its 25th write: 24 lines written.
    assert_eq!(ebpf_lines.len(), 24);
    assert_eq!(stap_lines, ebpf_lines);
    assert!(
        lines.iter().any(|l| l.starts_with("fij-stap exit ")),
        "{}",
        lines.join("\n")
    );
}
