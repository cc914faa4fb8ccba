//! `cargo xtask vm`: the kernel lab. fij's integration tests (all, or filtered) run under Debian
//! kernels booted with qemu, against the binaries built on the host: the guest's root file system
//! is the host's own, shared read-only over 9p with a tmpfs overlay on top (see `init.sh`), so
//! the test executables, `target/debug/fij`, the static `target/dist/fij` and every tool the
//! tests run (installed by `cargo xtask setup`) are there at their host paths, with the host's
//! glibc. Only the kernel differs: the Debian package's, booted from an initramfs that this
//! module builds and caches under `<target>/vm/<kernel>/`. The guest has no network device.
//!
//! `--kernel host` runs the same tests on the running kernel, holding the privileged-tests lock.
mod kernels;
pub mod stap_chroot;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::io::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use crate::{cmd, setup};

pub use kernels::{DEBIAN13, DebianKernel};

/// A kernel of the lab's matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kernel {
    /// Debian 12's linux-image-amd64 (6.1).
    Debian12,
    /// Debian 13's linux-image-amd64 (6.12).
    Debian13,
    /// The running kernel, without a VM (the tests run directly, holding
    /// /tmp/fij-privileged.lock).
    Host,
}

impl Kernel {
    pub const ALL: [Kernel; 3] = [Kernel::Debian12, Kernel::Debian13, Kernel::Host];

    fn debian(self) -> Option<DebianKernel> {
        match self {
            Kernel::Debian12 => Some(kernels::DEBIAN12),
            Kernel::Debian13 => Some(kernels::DEBIAN13),
            Kernel::Host => None,
        }
    }

    fn name(self) -> &'static str {
        self.debian().map_or("host", |k| k.name)
    }
}

/// One run of the lab: these tests under this kernel.
#[derive(Clone, Debug)]
pub struct Selection {
    pub kernel: Kernel,
    /// Test files (`tests/it/<name>.rs`) to run; all of them when empty.
    pub tests: Vec<String>,
    /// Arguments for each test executable (libtest's filter and options).
    pub test_args: Vec<String>,
}

/// What `cargo xtask vm` was asked to run.
pub struct Request {
    pub selections: Vec<Selection>,
    /// Fetch the kernel packages and rebuild the initramfs even when cached.
    pub refresh: bool,
    /// The guest is killed (and the run fails) after this long.
    pub timeout: Duration,
    /// Each test executable runs this many times in a row (in one boot): how often a test
    /// fails, or the guest dies, under a kernel is a measurement, not one run's luck.
    pub repeat: u32,
}

/// The lab's part of `cargo xtask test`, bounded so that CI stays well within its time (see
/// docs/kernel-lab.md for the measured times): on Debian 12 (6.1) and Debian 13 (6.12) the
/// static binary's tests (`fij doctor`, a kill, crash refused on 6.1 and run on 6.12), and on
/// Debian 13 the kprobe and kretprobe triggers firing. The host kernel is the rest of `test`.
pub fn ci_subset() -> Vec<Selection> {
    let selection = |kernel, tests: &[&str], args: &[&str]| Selection {
        kernel,
        tests: tests.iter().map(|t| t.to_string()).collect(),
        test_args: args.iter().map(|a| a.to_string()).collect(),
    };
    vec![
        selection(Kernel::Debian12, &["dist"], &[]),
        selection(Kernel::Debian13, &["dist"], &[]),
        selection(Kernel::Debian13, &["triggers_targets"], &["kprobe"]),
    ]
}

/// Guest memory: the tests' files live in the guest's tmpfs overlay.
const GUEST_MEMORY_MIB: u32 = 3072;
/// Held while a guest runs, so that VMs on this machine boot one at a time (TCG is CPU-heavy).
const VM_LOCK: &str = "/tmp/fij-vm.lock";
/// The lock the privileged tests on the host kernel hold (they check the whole kernel for fij's
/// programs, so two runs at once break each other).
const PRIVILEGED_LOCK: &str = "/tmp/fij-privileged.lock";

/// Runs setup (with the lab's packages), builds fij, its static dist binary and the test
/// executables, then each selection. Fails if any selection failed, after all of them ran.
pub fn run(request: &Request) -> Result<()> {
    setup::run_vm()?;
    crate::build(false)?;
    let dist_bin = crate::dist()?;
    run_built(request, &dist_bin)
}

/// [`run`] once fij and its dist binary are built (`cargo xtask test` has done that).
pub fn run_built(request: &Request, dist_bin: &Path) -> Result<()> {
    setup::run_vm()?;
    let all_tests = test_executables()?;
    let vm_dir = crate::target_dir().join("vm");
    fs::create_dir_all(&vm_dir)?;

    let mut failed = Vec::new();
    for selection in &request.selections {
        let name = selection.kernel.name();
        let shown = format!(
            "{name} ({}{})",
            if selection.tests.is_empty() {
                if selection.kernel == Kernel::Host {
                    "all test files".to_owned()
                } else {
                    format!(
                        "all test files but {}",
                        GUEST_RUNS_ONLY_WHEN_NAMED.join(" and ")
                    )
                }
            } else {
                selection.tests.join(", ")
            },
            if selection.test_args.is_empty() {
                String::new()
            } else {
                format!(" -- {}", selection.test_args.join(" "))
            }
        );
        let started = Instant::now();
        let outcome =
            select_tests(&all_tests, &selection.tests, selection.kernel).and_then(|tests| {
                let run = Run {
                    fij_bin: crate::fij_bin(false),
                    dist_bin: dist_bin.to_path_buf(),
                    tests,
                    test_args: selection.test_args.clone(),
                    env: Vec::new(),
                    repeat: request.repeat,
                    host_cpu_us: None,
                };
                match selection.kernel.debian() {
                    Some(debian) => run_in_vm(&vm_dir, debian, &run, request),
                    None => run_on_host(&vm_dir, &run),
                }
            });
        let seconds = started.elapsed().as_secs_f64();
        match &outcome {
            Ok(()) => println!("vm: {shown}: passed in {seconds:.0} s"),
            Err(e) => {
                println!("vm: {shown}: FAILED in {seconds:.0} s: {e:#}");
                failed.push(shown);
            }
        }
    }
    if !failed.is_empty() {
        bail!("the tests failed under: {}", failed.join("; "));
    }
    Ok(())
}

/// The binaries a run uses, all built on the host.
#[derive(Clone)]
struct Run {
    fij_bin: PathBuf,
    dist_bin: PathBuf,
    /// (test file name, executable).
    tests: Vec<(String, PathBuf)>,
    test_args: Vec<String>,
    /// More environment for the tests (what was built for them before the boot).
    env: Vec<(String, String)>,
    /// Runs of each test executable (1: once).
    repeat: u32,
    /// In a VM: how long [`CPU_CALIBRATION`] took on the host (µs). The guest runs it again
    /// and gives the tests the ratio as `FIJ_TEST_SLOWDOWN`.
    host_cpu_us: Option<u64>,
}

/// A fixed piece of CPU-bound work (300,000 turns of a shell loop, ~0.5 s on this machine's
/// host) timed by the shell, in µs: how much slower the guest's emulated CPUs are. Run on the
/// host before a boot and in the guest at its start. (200 `execve`s were tried too: 33× slower
/// in a 6.1 guest, the 9p root and TCG's page faults, where fij's lateness is 1.7× its bound.)
const CPU_CALIBRATION: &str = "s=$(date +%s%N); i=0; while [ $i -lt 300000 ]; do \
                               i=$((i + 1)); done; echo $((($(date +%s%N) - s) / 1000))";

/// [`CPU_CALIBRATION`] on the host: the median of three runs, in µs.
fn host_cpu_us() -> Result<u64> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let out = Command::new("sh").args(["-c", CPU_CALIBRATION]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        runs.push(
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("the CPU calibration printed {text:?}"))?,
        );
    }
    runs.sort();
    Ok(runs[1].max(1))
}

impl Run {
    /// The shell script that runs in the guest (or on the host): `fij doctor` of the static
    /// binary into `<out>/doctor.txt`, then each test executable one test at a time. Exits 1 if
    /// any test executable failed.
    fn script(&self, out: &Path) -> String {
        let q = |p: &Path| cmd::quote(&p.to_string_lossy());
        let args: Vec<String> = std::iter::once("--test-threads=1".to_owned())
            .chain(self.test_args.iter().cloned())
            .map(|a| cmd::quote(&a))
            .collect();
        let mut s = String::from(
            "# Written by `cargo xtask vm`.\n\
             export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             export HOME=/root\n\
             # busybox init's TERM=linux has padding that libtest would print.\n\
             export TERM=dumb\n",
        );
        s += &format!(
            "export FIJ_BIN={} FIJ_DIST_BIN={}\n",
            q(&self.fij_bin),
            q(&self.dist_bin)
        );
        s += &format!(
            "echo \"== kernel $(uname -r)\"\n\
             \"$FIJ_DIST_BIN\" doctor > {doctor} 2>&1; echo \"== fij doctor (exit $?)\"; cat {doctor}\n\
             failed=\n",
            doctor = q(&out.join("doctor.txt"))
        );
        for (key, value) in &self.env {
            s += &format!("export {key}={}\n", cmd::quote(value));
        }
        if let Some(host_us) = self.host_cpu_us {
            // Tests scale their bounds on lateness by this (tests/src/lib.rs: `slowdown`); in
            // tenths, at least 1.0: the guest is never taken for faster than the host. The same
            // shell as on the host (`sh`, dash), not run.sh's bash.
            s += &format!(
                "guest_us=$(sh -c {calibration})\n\
                 tenths=$((guest_us * 10 / {host_us})); [ $tenths -lt 10 ] && tenths=10\n\
                 export FIJ_TEST_SLOWDOWN=$((tenths / 10)).$((tenths % 10))\n\
                 echo \"== CPU calibration: $guest_us µs here, {host_us} µs on the host: \
                 FIJ_TEST_SLOWDOWN=$FIJ_TEST_SLOWDOWN\"\n",
                calibration = cmd::quote(CPU_CALIBRATION)
            );
        }
        for (name, exe) in &self.tests {
            let run = format!("{} {} || failed=\"$failed {name}\"", q(exe), args.join(" "));
            if self.repeat <= 1 {
                s += &format!("echo '== tests/it/{name}.rs'\n{run}\n");
            } else {
                s += &format!(
                    "for round in $(seq {n}); do\n\
                     echo \"== tests/it/{name}.rs (run $round of {n})\"\n{run}\ndone\n",
                    n = self.repeat
                );
            }
        }
        s += "if [ -n \"$failed\" ]; then echo \"== failed:$failed\"; exit 1; fi\n\
              echo '== all passed'\n";
        s
    }
}

/// `cargo test -p fij-tests --no-run --message-format=json`: the integration test executables
/// (test file name, executable), sorted by name.
fn test_executables() -> Result<Vec<(String, PathBuf)>> {
    let mut c = crate::cargo_command();
    c.args([
        "test",
        "--package",
        "fij-tests",
        "--tests",
        "--no-run",
        "--message-format=json",
    ])
    .stderr(Stdio::inherit());
    println!("+ {}", cmd::display(&c));
    let out = c.output().context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("`{}` failed ({})", cmd::display(&c), out.status);
    }
    let mut tests = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            tests.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    tests.sort();
    Ok(tests)
}

/// Test files a guest runs only when `--test` names them. Their time is SystemTap's translator:
/// `stap` elaborates scripts with the host's stap against the host's 6.1 headers (what the
/// guest's kernel is plays no part), and `stap_run` compiles a BPF-runtime script per campaign;
/// under TCG that is most of an hour per kernel, for the host's stap rather than the guest's
/// kernel. They run on the host in `cargo xtask test` (and under `--kernel host`); SystemTap
/// against the lab's kernels is `stap_module` (the module runtime, built for each kernel).
const GUEST_RUNS_ONLY_WHEN_NAMED: &[&str] = &["stap", "stap_run"];

/// The test executables named in `only`, or when it is empty every one (under a VM kernel, all
/// but [`GUEST_RUNS_ONLY_WHEN_NAMED`]); an unknown name is an error.
fn select_tests(
    all: &[(String, PathBuf)],
    only: &[String],
    kernel: Kernel,
) -> Result<Vec<(String, PathBuf)>> {
    if let Some(unknown) = only.iter().find(|n| !all.iter().any(|(t, _)| t == *n)) {
        let names: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
        bail!(
            "no test file tests/it/{unknown}.rs (there are: {})",
            names.join(", ")
        );
    }
    let in_guest_by_default =
        |t: &str| kernel == Kernel::Host || !GUEST_RUNS_ONLY_WHEN_NAMED.contains(&t);
    let selected: Vec<(String, PathBuf)> = all
        .iter()
        .filter(|(t, _)| {
            if only.is_empty() {
                in_guest_by_default(t)
            } else {
                only.contains(t)
            }
        })
        .cloned()
        .collect();
    if only.is_empty() && kernel != Kernel::Host {
        println!(
            "vm: {} not run under {} (the host's stap; name them with --test to run them)",
            GUEST_RUNS_ONLY_WHEN_NAMED.join(" and "),
            kernel.name()
        );
    }
    Ok(selected)
}

/// The tests on the running kernel, under /tmp/fij-privileged.lock.
fn run_on_host(vm_dir: &Path, run: &Run) -> Result<()> {
    let out = vm_dir.join("host");
    fs::create_dir_all(&out)?;
    let script = out.join("run.sh");
    fs::write(&script, run.script(&out))?;
    let _lock = Lock::exclusive(PRIVILEGED_LOCK)?;
    cmd::run(Command::new("bash").arg(&script))
}

/// Prepares the kernel and boots it with the run's script; the guest's exit status is the run's.
fn run_in_vm(vm_dir: &Path, debian: DebianKernel, run: &Run, request: &Request) -> Result<()> {
    let kernel = debian.prepare(vm_dir, request.refresh)?;
    let mut run = with_stap_module(vm_dir, debian, &kernel, run)?;
    run.host_cpu_us = Some(host_cpu_us()?);
    boot_script(
        vm_dir,
        &kernel,
        "run",
        |out| run.script(out),
        request.timeout,
    )
    .map(drop)
}

/// Boots `kernel` with the script `script(out)` as its run.sh, where `out` is
/// `<vm_dir>/<kernel>/<name>/` (emptied first; the guest's one writable host directory, where
/// the script may leave files). Fails if the script does not exit 0 (or the guest runs past
/// `timeout`); returns `out`.
pub fn boot_script(
    vm_dir: &Path,
    kernel: &kernels::Prepared,
    name: &str,
    script: impl FnOnce(&Path) -> String,
    timeout: Duration,
) -> Result<PathBuf> {
    // Locked before `out` is emptied: another run of the same kernel may still be using it.
    let _lock = Lock::exclusive(VM_LOCK)?;
    let out = kernel
        .root
        .parent()
        .expect("<vm>/<kernel>/kernel")
        .join(name);
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    // The guest mounts it at this path in its own root: a symbolic link on the way (a `target`
    // linked elsewhere) would point nowhere there.
    let out = fs::canonicalize(&out)?;
    fs::write(out.join("run.sh"), script(&out))?;
    let accel = accelerator(vm_dir, kernel)?;
    let console = out.join("console.log");
    boot(kernel, accel, &out, &console, timeout)?;
    let status = fs::read_to_string(out.join("status")).with_context(|| {
        format!(
            "the guest wrote no exit status (it did not reach the end of run.sh): see {}",
            console.display()
        )
    })?;
    match status.trim() {
        "0" => Ok(out),
        s => bail!(
            "run.sh exited with {s} under {} (console: {})",
            kernel.release,
            console.display()
        ),
    }
}

/// The stap modules of tests/it/stap_module.rs, when that test runs (under Debian 12 or 13):
/// each scenario's `fij stap --runtime module` script compiled for the guest's kernel in the
/// trixie root ([`stap_chroot`]), on the host before the boot (the guest has no compiler for it
/// and TCG would make it ~10x slower); the kprobe scenario's after the kernel's symbol table is
/// in the root (one extra boot, the first time). The test finds the root and the modules (paths
/// in the root) through `FIJ_STAP_CHROOT` and the variables below.
fn with_stap_module(
    vm_dir: &Path,
    debian: DebianKernel,
    kernel: &kernels::Prepared,
    run: &Run,
) -> Result<Run> {
    const TEST: &str = "stap_module";
    /// (scenario in tests/it/stap_module/, module, the test's variable, has kprobes).
    const MODULES: [(&str, &str, &str, bool); 2] = [
        ("scenario.toml", "fij_side", "FIJ_STAP_MODULE", false),
        ("kprobe.toml", "fij_kprobe", "FIJ_STAP_KPROBE_MODULE", true),
    ];
    if !run.tests.iter().any(|(name, _)| name == TEST) {
        return Ok(run.clone());
    }
    let chroot = stap_chroot::prepare(vm_dir, &kernel.release, debian.suite)?;
    let mut run = run.clone();
    run.env.push((
        "FIJ_STAP_CHROOT".to_owned(),
        chroot.root.to_string_lossy().into_owned(),
    ));
    for (scenario, module, variable, kprobes) in MODULES {
        if kprobes {
            chroot.kernel_symbols(vm_dir, kernel)?;
        }
        let script = format!("{module}.stp");
        let scenario = crate::workspace_root()
            .join("tests/it/stap_module")
            .join(scenario);
        cmd::run(
            Command::new(&run.fij_bin)
                .arg("stap")
                .arg(&scenario)
                .args(["--runtime", "module", "-o"])
                .arg(chroot.work_path(&script)),
        )?;
        let (ko, took) = chroot.compile(&script, module, &[])?;
        println!(
            "stap-chroot: {} compiled in {:.1} s (stap -p4 against {})",
            ko.display(),
            took.as_secs_f64(),
            chroot.release
        );
        run.env.push((
            variable.to_owned(),
            format!("{}/{module}.ko", chroot.work_dir()),
        ));
    }
    Ok(run)
}

/// How qemu runs the guest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Accel {
    Kvm,
    Tcg,
}

/// KVM if it boots a guest here, else TCG (software emulation). Nested KVM can fail in ways that
/// hang the guest rather than stop qemu, so it is tried once, with a short boot that must reach
/// the end of its script, and the answer is kept in `<target>/vm/accel`. `FIJ_VM_ACCEL=kvm|tcg`
/// decides without trying.
fn accelerator(vm_dir: &Path, kernel: &kernels::Prepared) -> Result<Accel> {
    let parse = |s: &str| match s.trim() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    };
    if let Ok(forced) = std::env::var("FIJ_VM_ACCEL") {
        return parse(&forced).with_context(|| format!("FIJ_VM_ACCEL={forced}: kvm or tcg"));
    }
    let cached = vm_dir.join("accel");
    if let Some(accel) = fs::read_to_string(&cached).ok().as_deref().and_then(parse) {
        return Ok(accel);
    }
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = if usable {
        println!("vm: trying KVM (a short boot, at most 30 s)");
        let probe = vm_dir.join("kvm-probe");
        if probe.exists() {
            fs::remove_dir_all(&probe)?;
        }
        fs::create_dir_all(&probe)?;
        fs::write(probe.join("run.sh"), "exit 0\n")?;
        let booted = boot(
            kernel,
            Accel::Kvm,
            &probe,
            &probe.join("console.log"),
            Duration::from_secs(30),
        )
        .is_ok()
            && fs::read_to_string(probe.join("status")).is_ok_and(|s| s.trim() == "0");
        if booted { Accel::Kvm } else { Accel::Tcg }
    } else {
        Accel::Tcg
    };
    let name = if accel == Accel::Kvm { "kvm" } else { "tcg" };
    println!(
        "vm: using {name} (kept in {}; delete it to try again)",
        cached.display()
    );
    fs::write(&cached, name)?;
    Ok(accel)
}

/// Boots the kernel with 9p shares `hostroot` (/, read-only), `kernel` (the package) and `out`
/// (the run directory, where /init finds run.sh and writes `status`), no network device, the
/// serial console copied to our stdout and to `console`. Fails if qemu fails or the guest runs
/// past `timeout` (then qemu is killed).
fn boot(
    kernel: &kernels::Prepared,
    accel: Accel,
    out: &Path,
    console: &Path,
    timeout: Duration,
) -> Result<()> {
    let share = |path: &Path, tag: &str, readonly: bool| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{}",
            path.display(),
            if readonly { ",readonly=on" } else { "" }
        )
    };
    let mut c = Command::new("qemu-system-x86_64");
    match accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => c.args(["-accel", &tcg_accel()?]).args(icount()?),
    };
    c.args([
        "-m",
        &GUEST_MEMORY_MIB.to_string(),
        "-smp",
        &vcpus()?.to_string(),
    ])
    .args(["-nodefaults", "-no-reboot", "-display", "none"])
    .args(["-serial", "stdio", "-nic", "none"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&kernel.initramfs)
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet panic=-1 fij.out={}",
        out.display()
    ))
    .arg("-virtfs")
    .arg(share(Path::new("/"), "hostroot", true))
    .arg("-virtfs")
    .arg(share(&kernel.root, "kernel", true))
    .arg("-virtfs")
    .arg(share(out, "out", false))
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    println!("+ {}", cmd::display(&c));
    let started = Instant::now();
    let mut child = c.spawn().context("starting qemu-system-x86_64")?;
    let pid = child.id();
    let finished = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (finished, timed_out) = (finished.clone(), timed_out.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                if started.elapsed() > timeout {
                    timed_out.store(true, Ordering::Relaxed);
                    // SAFETY: kill(2) on the pid of our own qemu child, not yet reaped (we
                    // reap it only after setting `finished`, which stops this loop).
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let mut log = fs::File::create(console)?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    while reader.read_until(b'\n', &mut line)? > 0 {
        let text = printable(&line);
        log.write_all(text.as_bytes())?;
        print!("{text}");
        std::io::stdout().flush()?;
        line.clear();
    }
    let status = child.wait()?;
    finished.store(true, Ordering::Relaxed);
    watchdog.join().ok();
    println!(
        "vm: qemu ({}) ran {:.1} s",
        if accel == Accel::Kvm { "kvm" } else { "tcg" },
        started.elapsed().as_secs_f64()
    );
    if timed_out.load(Ordering::Relaxed) {
        bail!(
            "the guest ran longer than {} s and was killed (console: {})",
            timeout.as_secs(),
            console.display()
        );
    }
    if !status.success() {
        bail!("qemu-system-x86_64 failed ({status})");
    }
    Ok(())
}

/// TCG's threading: one host thread for both vCPUs (`thread=single`), unless
/// `FIJ_VM_TCG_THREAD=multi` (qemu's default, a host thread per vCPU). Under multi-threaded TCG
/// the guest kernel died of an `int3` oops while it patched its text (attaching and detaching
/// fij's programs, with the other vCPU running through the patched code: qemu 7.2's cross-modifying
/// code): once in 2 runs of `nth_hit_is_exact_under_load` here, and in `fij doctor` of another run;
/// never in 7 runs single-threaded. That costs ~1.7× in wall time (docs/kernel-lab.md).
fn tcg_accel() -> Result<String> {
    match std::env::var("FIJ_VM_TCG_THREAD").ok().as_deref() {
        None => Ok("tcg,thread=single".into()),
        Some(t @ ("single" | "multi")) => Ok(format!("tcg,thread={t}")),
        Some(t) => bail!("FIJ_VM_TCG_THREAD={t}: single or multi"),
    }
}

/// The guest's vCPUs: `FIJ_VM_SMP=N`, else 2.
fn vcpus() -> Result<u32> {
    match std::env::var("FIJ_VM_SMP") {
        Err(_) => Ok(2),
        Ok(n) => n
            .parse()
            .ok()
            .filter(|&n| n >= 1)
            .with_context(|| format!("FIJ_VM_SMP={n}: a number of vCPUs (1 or more)")),
    }
}

/// TCG's guest clock, on request (`FIJ_VM_ICOUNT=N`). By default it is the host's: the guest's
/// CPU runs 5–10× slower than the host's (TCG translates every instruction), so every time the
/// tests measure in the guest (a time trigger's lateness, a peer's timeout) stretches by as much.
/// With `-icount shift=N,sleep=on` the guest's clock follows the instructions it executes (2^N ns
/// each) and, when it is idle, the host's: the guest sees a slow but real machine. Not the
/// default, because qemu 7.2 (Debian 12's) is not reliable with it: 6.12 guests double-faulted
/// right after SLUB's `cmpxchg16b` with corrupted flags (2 of 4 runs), and a 6.1 guest hung
/// before its first console line; so the CPU is given no `cmpxchg16b` (`-cx16`) then, untried.
fn icount() -> Result<Vec<String>> {
    let Some(shift) = std::env::var("FIJ_VM_ICOUNT").ok() else {
        return Ok(Vec::new());
    };
    let shift: u32 = shift
        .parse()
        .with_context(|| format!("FIJ_VM_ICOUNT={shift}: a shift (0–10)"))?;
    Ok(vec![
        "-icount".into(),
        format!("shift={shift},sleep=on"),
        "-cpu".into(),
        "qemu64,-cx16".into(),
    ])
}

/// A console line without carriage returns and terminal escape sequences (the firmware clears
/// the screen).
fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // ESC [ parameters final-byte, or ESC and one more character.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// An exclusive flock(2) on a file, held until dropped.
pub(crate) struct Lock(
    #[allow(dead_code, reason = "held for its flock, released on close")] fs::File,
);

impl Lock {
    /// Waits for the lock on `path` (created if missing).
    pub(crate) fn exclusive(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        println!("vm: waiting for {}", path.display());
        // SAFETY: flock(2) on a file descriptor we own for as long as the Lock lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_runs_the_stap_files_only_when_named_and_the_host_always() {
        let all: Vec<(String, PathBuf)> = ["dist", "stap", "stap_run"]
            .iter()
            .map(|t| (t.to_string(), PathBuf::from(format!("/t/{t}"))))
            .collect();
        let names = |kernel, only: &[&str]| -> Vec<String> {
            let only: Vec<String> = only.iter().map(|t| t.to_string()).collect();
            select_tests(&all, &only, kernel)
                .unwrap()
                .into_iter()
                .map(|(t, _)| t)
                .collect()
        };
        assert_eq!(names(Kernel::Debian12, &[]), ["dist"]);
        assert_eq!(names(Kernel::Host, &[]), ["dist", "stap", "stap_run"]);
        assert_eq!(names(Kernel::Debian13, &["stap_run"]), ["stap_run"]);
        assert!(select_tests(&all, &["nope".into()], Kernel::Host).is_err());
    }

    #[test]
    fn console_lines_lose_escapes_and_carriage_returns() {
        assert_eq!(
            printable(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n"),
            "SeaBIOS\n".to_owned()
        );
    }

    #[test]
    fn the_script_runs_doctor_then_each_test_with_quoted_arguments() {
        let run = Run {
            fij_bin: "/t/debug/fij".into(),
            dist_bin: "/t/dist/fij".into(),
            tests: vec![("dist".into(), "/t/debug/deps/dist-1".into())],
            test_args: vec!["kprobe".into(), "it's".into()],
            env: vec![],
            repeat: 1,
            host_cpu_us: None,
        };
        let script = run.script(Path::new("/t/vm/x/run"));
        assert!(script.contains("\"$FIJ_DIST_BIN\" doctor > /t/vm/x/run/doctor.txt"));
        assert!(script.contains(
            "/t/debug/deps/dist-1 --test-threads=1 kprobe 'it'\\''s' || failed=\"$failed dist\""
        ));
    }

    #[test]
    fn in_a_vm_the_script_measures_the_slowdown_before_the_tests_and_repeats_them() {
        let run = Run {
            fij_bin: "/t/debug/fij".into(),
            dist_bin: "/t/dist/fij".into(),
            tests: vec![("dist".into(), "/t/debug/deps/dist-1".into())],
            test_args: vec![],
            env: vec![],
            repeat: 3,
            host_cpu_us: Some(470_000),
        };
        let script = run.script(Path::new("/t/vm/x/run"));
        let calibration = script
            .find("guest_us=$(sh -c 's=$(date")
            .expect("calibrated");
        let tests = script.find("/t/debug/deps/dist-1").expect("the tests");
        assert!(calibration < tests, "{script}");
        assert!(
            script.contains("tenths=$((guest_us * 10 / 470000))"),
            "{script}"
        );
        assert!(script.contains("export FIJ_TEST_SLOWDOWN="), "{script}");
        assert!(script.contains("for round in $(seq 3); do"), "{script}");
    }
}
