//! SystemTap's module runtime side by side with fij, in the kernel lab's Debian 12 and 13 guests:
//! `cargo xtask vm --kernel debian12 --kernel debian13 --test stap_module`. Before the guest
//! boots, xtask compiles `fij stap --runtime module` of each scenario in `stap_module/` into a
//! kernel module with trixie's stap 5.1 against the guest kernel's headers (6.1's from bookworm),
//! in a trixie root on the host (xtask/src/vm/stap_chroot.rs), and tells this test where
//! (`FIJ_STAP_CHROOT`, and the module's path in that root: `FIJ_STAP_MODULE`,
//! `FIJ_STAP_KPROBE_MODULE`). Each test runs its scenario with fij's eBPF backend, then loads the
//! module with that root's `staprun -c CMD` on the same workload, and checks that both inject on
//! the same hits of the same process:
//!
//! - `scenario.toml` (syscall triggers): every 4th write, a seeded probability (ChaCha20 in the
//!   module's embedded C against fij's kernel draws) and a kill on the 25th write;
//! - `kprobe.toml` (kprobe and kretprobe triggers on `ksys_write`; the module's `kprobe.function`
//!   probes need the kernel's symbol table, which xtask takes from one boot's /proc/kallsyms):
//!   every 3rd entry, the 10th return, and a kill on the 20th entry.
//!
//! Skips (with the reason) only on a kernel that cannot load modules; elsewhere it needs the
//! modules xtask built, and fails without them.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use fij_tests::{Fij, FijOutput, TempDir, read_lines, stap_record};

/// A scenario of `stap_module/` and what the test needs to know of it.
struct Campaign {
    /// The scenario file.
    scenario: &'static str,
    /// Where its workload writes, in whichever root it runs.
    out: &'static str,
    /// Its faults, in file order: the module's lines name them by index.
    faults: &'static [&'static str],
    /// The variable that holds its module's path in the root.
    module_variable: &'static str,
}

const SYSCALLS: Campaign = Campaign {
    scenario: concat!(env!("CARGO_MANIFEST_DIR"), "/it/stap_module/scenario.toml"),
    out: "/tmp/fij-stap-module.txt",
    faults: &["every", "chance", "kill"],
    module_variable: "FIJ_STAP_MODULE",
};

const KPROBES: Campaign = Campaign {
    scenario: concat!(env!("CARGO_MANIFEST_DIR"), "/it/stap_module/kprobe.toml"),
    out: "/tmp/fij-stap-kprobe.txt",
    faults: &["entry", "return", "kill"],
    module_variable: "FIJ_STAP_KPROBE_MODULE",
};

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
fn target_command(scenario: &str) -> String {
    let text = std::fs::read_to_string(scenario).expect("the scenario");
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
/// /sys and debugfs, which stap's transport uses), `module` being a path in the root: the
/// module's `fij-stap` lines.
fn run_module(root: &str, module: &str, command: &str) -> (Vec<String>, Duration) {
    let output = Path::new(module).with_extension("output.txt");
    let output = output.to_str().expect("a UTF-8 path");
    let started = std::time::Instant::now();
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount --make-rprivate / && mount --bind /dev {root}/dev && \
             mount -t proc proc {root}/proc && mount -t sysfs sys {root}/sys && \
             mount -t debugfs debugfs {root}/sys/kernel/debug && \
             exec chroot {root} staprun -o {output} -c \"$0\" {module}"
        ))
        .arg(command)
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
    let lines = read_lines(&PathBuf::from(format!("{root}{output}")));
    (lines, elapsed)
}

/// The module's `fij-stap injection …` lines as [`Injections`].
fn module_injections(lines: &[String], faults: &[&str]) -> Injections {
    let mut found = Injections::new();
    for line in lines {
        let Some(fields) = stap_record(line, "injection") else {
            continue;
        };
        let fault: usize = fields["fault"].parse().unwrap();
        found.entry(faults[fault].to_owned()).or_default().push((
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

/// fij's injections in its log as [`Injections`].
fn fij_injections(ebpf: &FijOutput) -> Injections {
    let mut found = Injections::new();
    for r in ebpf.log.injections() {
        let signal = match r["signal"].as_str().unwrap() {
            "SIGKILL" => "SIGKILL",
            "SIGURG" => "SIGURG",
            other => panic!("{other} is not in the scenario"),
        };
        found
            .entry(r["fault"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                r["hit"].as_u64().unwrap(),
                signal,
                r.get("draw").and_then(|d| d.as_u64()).unwrap_or(0),
            ));
    }
    for hits in found.values_mut() {
        hits.sort();
    }
    found
}

/// What one campaign did through each backend.
struct SideBySide {
    fij: Injections,
    stap: Injections,
    /// fij's run, for messages.
    ebpf: FijOutput,
    /// The module's own lines.
    module_lines: Vec<String>,
    /// The lines the workload wrote under fij and under the module.
    fij_written: Vec<String>,
    stap_written: Vec<String>,
}

/// Runs `campaign` through fij, then through its module; `None` (the test skips, saying why)
/// on a kernel without loadable modules.
fn side_by_side(campaign: &Campaign) -> Option<SideBySide> {
    if !Path::new("/proc/modules").exists() {
        fij_tests::tell(
            "skipping the stap module runtime: this kernel cannot load modules (no /proc/modules)",
        );
        return None;
    }
    let (Ok(root), Ok(module)) = (
        std::env::var("FIJ_STAP_CHROOT"),
        std::env::var(campaign.module_variable),
    ) else {
        panic!(
            "FIJ_STAP_CHROOT and {} are unset: run this test with \
             `cargo xtask vm --kernel debian12|debian13 --test stap_module`, which builds the \
             modules for that kernel",
            campaign.module_variable
        );
    };
    let dir = TempDir::new("stap-module");
    let ebpf = Fij::run(&dir, Path::new(campaign.scenario)).spawn().wait();
    ebpf.assert_exit(0);
    let fij_written = read_lines(Path::new(campaign.out));
    let fij = fij_injections(&ebpf);

    let (module_lines, took) = run_module(&root, &module, &target_command(campaign.scenario));
    // What the module itself saw: from `armed` (end of `probe begin`) to `end`.
    let ktime = |record: &str| -> Option<u64> {
        let line = module_lines.iter().find(|l| l.starts_with(record))?;
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
    assert!(
        module_lines.iter().any(|l| l.starts_with("fij-stap exit ")),
        "{}",
        module_lines.join("\n")
    );
    Some(SideBySide {
        stap: module_injections(&module_lines, campaign.faults),
        fij,
        ebpf,
        stap_written: read_lines(&PathBuf::from(format!("{root}{}", campaign.out))),
        fij_written,
        module_lines,
    })
}

impl SideBySide {
    /// fij's injections of `fault` (none is a failure, with fij's output).
    fn fij_hits(&self, fault: &str) -> &[(u64, &'static str, u64)] {
        self.fij
            .get(fault)
            .unwrap_or_else(|| panic!("fij injected nothing for `{fault}`:\n{}", self.ebpf))
    }

    /// Both backends injected alike, and the workload wrote the same lines, `lines` of them.
    fn assert_same(&self, lines: usize) {
        assert_eq!(
            self.stap,
            self.fij,
            "module's lines:\n{}\n--- fij:\n{}",
            self.module_lines.join("\n"),
            self.ebpf
        );
        assert_eq!(self.fij_written.len(), lines, "{}", self.ebpf);
        assert_eq!(self.stap_written, self.fij_written);
    }
}

#[test]
fn a_stap_module_and_fij_inject_on_the_same_hits() {
    let Some(run) = side_by_side(&SYSCALLS) else {
        return;
    };
    let ebpf = &run.ebpf;
    // The exact hits, not only equal ones: every 4th write until the kill on the 25th.
    let every: Vec<_> = (1..=6).map(|k| (4 * k, "SIGURG", 0)).collect();
    assert_eq!(run.fij_hits("every"), every, "{ebpf}");
    assert_eq!(run.fij_hits("kill"), [(25, "SIGKILL", 0)], "{ebpf}");
    assert!(!run.fij_hits("chance").is_empty(), "{ebpf}");
    // Both killed the shell on its 25th write, before it wrote: 24 lines.
    run.assert_same(24);
}

#[test]
fn a_stap_module_and_fij_inject_on_the_same_kprobe_and_kretprobe_hits() {
    let Some(run) = side_by_side(&KPROBES) else {
        return;
    };
    let ebpf = &run.ebpf;
    // Every 3rd entry into ksys_write until the kill on the 20th entry; the 10th return.
    let entry: Vec<_> = (1..=6).map(|k| (3 * k, "SIGURG", 0)).collect();
    assert_eq!(run.fij_hits("entry"), entry, "{ebpf}");
    assert_eq!(run.fij_hits("return"), [(10, "SIGURG", 0)], "{ebpf}");
    assert_eq!(run.fij_hits("kill"), [(20, "SIGKILL", 0)], "{ebpf}");
    // Killed on entry into its 20th write (a pending SIGKILL stops the write before it copies):
    // 19 lines.
    run.assert_same(19);
}
