//! `cargo xtask bench [--quick]`: fij's costs measured side by side with their peers in one run,
//! reported as ratios, in `bench/results.md` (a markdown table for the README) and
//! `bench/results.json`; `--quick` runs a tiny configuration (for a smoke test) and writes to
//! `<target>/bench-quick/` instead, leaving `bench/` alone.
//!
//! Runs setup and a release build first. Every syscall figure comes from `fij-syscall-loop`
//! (`tests/src/bin/fij-syscall-loop.rs`), pinned to the last CPU: N `getppid` calls timed in 100
//! chunks; the figure is the fastest chunk's ns/syscall, the cost least disturbed by other load
//! on the machine. What is compared:
//!
//! 1. A non-target's syscall cost, over the baseline (nothing attached to `sys_enter`), with:
//!    the floor (`fij-floor` attaching `fij_floor`, an empty program on the same raw tracepoint);
//!    `fij run` on a scenario whose target is another process (`sleep`); bpftrace with the
//!    equivalent filter for another pid. They are measured in turn in each round, each between
//!    two baselines (nothing attached) whose mean it is compared with, so that changes of the
//!    machine's speed cancel out unless they happen within seconds.
//! 2. An armed target's syscall cost (the loop is the target of a `getppid` fault that never
//!    fires) against `strace -e inject=...` of the same loop.
//! 3. Kill latency: `injection` to `exit` record (`ktime_ns`) in fij's log, over many runs, with
//!    fij pinned to another CPU than the target and to the target's CPU (where fij's own wake-up
//!    for the injection event can preempt the dying target); bpftrace's `signal("KILL")` on the
//!    same hit beside it.
//! 4. Start to armed: spawning `fij run` to its target running (the target prints when it
//!    started), against spawning bpftrace to its "Attaching 1 probe..." line.
//! 5. Peak RSS (VmHWM) of fij during a campaign, against bpftrace's.
//! 6. Scale: non-target and armed-target cost with 10,000 entries in the target set (fake pids
//!    above `pid_max`, written with `bpftool batch`) and 1,000 faults in the scenario, against
//!    1 × 1; armed-target cost with 16 faults counting the same syscall.
//! 7. What context switches cost with fij on: pipe round trips between two processes on one
//!    CPU (each switch makes the next syscall a different task's, which `fij_sys_enter` looks
//!    up again). Beside it, the floor of another design: an empty bpftrace program on one
//!    syscall's tracepoint (`syscalls:sys_enter_openat`, which neither the loop nor the pipe
//!    calls; then `sys_enter_getppid`, the loop's own), i.e. the kernel's syscall-tracing path
//!    without any program on `sys_enter`.
//! 8. A call fij can fail on a spawned target (`action = "error"` on `getppid`, through the
//!    seccomp user-notification path, with a fault that never fires) against
//!    `strace --inject=getppid:error=EPERM:when=…` of the same loop (`--only errno` runs this
//!    part alone and prints its rows, writing no results file).
//!
//! A measurement is repeated (up to 3 times) when `bpftool perf` shows a program on `sys_enter`
//! that the bench did not start (say a test running at the same time); such disturbances are
//! counted in the results. No figure is asserted on: `met?` is information, not a test.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use fij_common::log::{Record, monotonic_ns};
use fij_tests::{
    Ended, Fij, FijOutput, Log, RunningFij, map_of_process, maps, send_signal,
    systems::require_tool,
};
use libc::{SIGINT, SIGKILL, SIGTERM};
use serde::{Serialize, Serializer};

use crate::cmd;

mod redis;
pub mod stap;
pub mod stap_module;

/// The sizes of one run.
struct Config {
    quick: bool,
    /// Rounds of each comparison; every figure is the median over them.
    reps: usize,
    /// `getppid` calls per loop without strace.
    loop_calls: u64,
    /// `getppid` calls per loop under strace (~100× slower); with the warm-up, below strace's
    /// `when` limit of 65535 so the injection never happens.
    strace_calls: u64,
    /// fij runs that kill the loop, for the latency percentiles (for each CPU placement of fij).
    kill_runs: usize,
    /// The big scale configuration: target-set entries × faults in the scenario (against 1 × 1).
    scale_targets: usize,
    scale_faults: usize,
    /// Pipe round trips of the context-switch measurement.
    round_trips: u64,
    /// fij runs with a time-triggered kill.
    time_runs: usize,
    /// The CPU the loop is pinned to.
    cpu: usize,
}

impl Config {
    fn new(quick: bool) -> Self {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let cpu = cpus - 1;
        if quick {
            Self {
                quick,
                reps: 3,
                loop_calls: 100_000,
                strace_calls: 2_000,
                kill_runs: 4,
                scale_targets: 1_000,
                scale_faults: 100,
                round_trips: 2_000,
                time_runs: 3,
                cpu,
            }
        } else {
            Self {
                quick,
                reps: 11,
                loop_calls: 2_000_000,
                strace_calls: 20_000,
                kill_runs: 100,
                scale_targets: 10_000,
                scale_faults: 1_000,
                round_trips: 100_000,
                time_runs: 30,
                cpu,
            }
        }
    }
}

/// The syscalls of `n` faults on the loop: the first on `getppid`, the others on syscalls the
/// loop does not make in its timed part, at most [`FAULTS_PER_HOOK`] on each.
fn scale_syscalls(n: usize) -> Vec<&'static str> {
    let others: Vec<&str> = OTHER_SYSCALLS.split_whitespace().collect();
    (0..n)
        .map(|i| match i {
            0 => "getppid",
            i => others[(i - 1) / FAULTS_PER_HOOK % others.len()],
        })
        .collect()
}

/// `nth` of the faults that must never fire.
const NEVER: u64 = 4_000_000_000;
/// Fake pids for the scale rows start here: above any `pid_max` (at most 4194304), so they can
/// never be a real process.
const FAKE_PID_BASE: u32 = 4_194_305;
/// Most faults fij evaluates on one (target, syscall) hook (`fij_common::MAX_FAULTS_PER_HOOK`).
const FAULTS_PER_HOOK: usize = 16;
/// Syscalls that exist on x86_64 and aarch64 and that the loop does not make in its timed part:
/// the faults of the 1000-fault scenario beyond the first 16 go there.
const OTHER_SYSCALLS: &str = "\
    read write close fstat lseek mmap mprotect munmap brk rt_sigaction rt_sigprocmask ioctl \
    pread64 pwrite64 readv writev sched_yield mremap msync mincore madvise dup dup3 nanosleep \
    getitimer setitimer getpid socket connect accept sendto recvfrom sendmsg recvmsg shutdown \
    bind listen getsockname getpeername socketpair setsockopt getsockopt execve exit wait4 \
    kill uname fcntl flock fsync fdatasync truncate ftruncate getcwd chdir fchdir fchmod \
    fchown umask gettimeofday getrlimit getrusage sysinfo times getuid getgid geteuid getegid \
    setpgid getpgid setsid getsid";

/// The longest one `fij run` of the bench may take: more than any campaign's `duration`, so only
/// a hung fij is killed (and the bench fails).
const FIJ_RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    crate::setup::run()?;
    crate::build(true)?;
    let started = Instant::now();
    let cfg = Config::new(quick);
    let mut bench = Bench::new(cfg)?;
    if let Some(part) = only {
        ensure!(part == "errno", "--only knows `errno`, not `{part}`");
        let mut r = Results::default();
        let result = bench.errno(&mut r);
        let _ = fs::remove_dir_all(&bench.dir);
        result?;
        println!();
        for row in r.errno_rows() {
            println!(
                "{}: fij {} | {}: {} | {}",
                row.measurement,
                row.cell(&row.fij),
                row.peer_name,
                row.peer.as_ref().map_or("—".into(), |p| row.cell(p)),
                row.ratio
                    .as_ref()
                    .map_or(String::new(), |(label, v)| format!("{label} {v:.1}"))
            );
        }
        println!("(only part 8 ran; bench/ is left alone)");
        return Ok(());
    }
    let result = bench.measure_all();
    let _ = fs::remove_dir_all(&bench.dir);
    let results = result?;
    let out_dir = if quick {
        crate::target_dir().join("bench-quick")
    } else {
        crate::workspace_root().join("bench")
    };
    let took = started.elapsed();
    let report = results.markdown(&bench, took);
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let md = out_dir.join("results.md");
    let json = out_dir.join("results.json");
    fs::write(&md, &report).with_context(|| format!("cannot write {}", md.display()))?;
    fs::write(&json, results.json(&bench, took)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    println!();
    print!("{report}");
    println!();
    println!("wrote {} and {}", md.display(), json.display());
    Ok(())
}

/// Figures of one measurement over the rounds.
#[derive(Clone, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, x: f64) {
        self.0.push(x);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// Nearest-rank percentile (`p` in 0..=100).
    fn percentile(&self, p: f64) -> f64 {
        let v = self.sorted();
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        v[rank.min(v.len()) - 1]
    }

    fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// One line of `fij-syscall-loop`'s output.
struct LoopRun {
    /// Mean ns/syscall of the whole loop.
    mean: f64,
    /// ns/syscall of the fastest chunk: the figure the bench uses.
    best: f64,
    /// CLOCK_MONOTONIC when the loop's `main` began.
    start_ns: u64,
}

fn parse_loop(output: &str) -> Result<LoopRun> {
    let line = output
        .lines()
        .find(|l| l.contains("best_chunk_ns_per_syscall="))
        .with_context(|| format!("no fij-syscall-loop result line in:\n{output}"))?;
    let field = |name: &str| -> Result<&str> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("no {name}= in `{line}`"))
    };
    Ok(LoopRun {
        mean: field("ns_per_syscall")?.parse()?,
        best: field("best_chunk_ns_per_syscall")?.parse()?,
        start_ns: field("start_monotonic_ns")?.parse()?,
    })
}

/// A background process the bench started: stopped with a signal, killed if still there when
/// dropped (also on errors).
struct Daemon {
    name: &'static str,
    child: Child,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `sig` and waits up to `timeout`, then SIGKILL.
    fn stop(mut self, sig: i32, timeout: Duration) -> Result<ExitStatus> {
        if self.exited().is_none() {
            send_signal(self.pid(), sig);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "{} (pid {}) did not stop within {timeout:?}; killed it",
            self.name,
            self.pid()
        )
    }
}

/// Peak resident set size of process `pid` so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // fij first gets the chance to end its targets.
            send_signal(self.pid(), SIGTERM);
            for _ in 0..2500 {
                if self.exited().is_some() {
                    return;
                }
                thread::sleep(Duration::from_millis(2));
            }
            send_signal(self.pid(), SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Waits until `ready` holds, `daemon` exits (an error, with `log` shown) or `timeout` passes.
fn wait_ready(
    daemon: &mut Daemon,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready()? {
            return Ok(());
        }
        if let Some(status) = daemon.exited() {
            let text = fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{} exited ({status}) before it was ready:\n{text}",
                daemon.name
            );
        }
        if Instant::now() > deadline {
            bail!("{} was not ready within {timeout:?}", daemon.name);
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// The processes with a program on `sys_enter`.
fn sys_enter_owners() -> Result<Vec<u32>> {
    tracepoint_owners("sys_enter")
}

/// The processes with a program on `tracepoint`, from `bpftool perf show` (which lists raw
/// tracepoint links and perf-event tracepoints, with the pid holding each).
fn tracepoint_owners(tracepoint: &str) -> Result<Vec<u32>> {
    let out = cmd::query(Command::new("bpftool").args(["perf", "show"]))?
        .context("`bpftool perf show` failed")?;
    Ok(out
        .lines()
        .filter(|l| l.split_whitespace().last() == Some(tracepoint))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect())
}

struct Bench {
    cfg: Config,
    /// Scenarios, logs and outputs of this run (removed at the end).
    dir: PathBuf,
    fij: PathBuf,
    syscall_loop: PathBuf,
    floor: PathBuf,
    bpftrace: PathBuf,
    strace: PathBuf,
    /// Measurements repeated because another program was on `sys_enter`.
    disturbed: usize,
    /// Measurements taken although another program stayed on `sys_enter`.
    unclean: usize,
    /// Syscall measurements taken with `kernel.bpf_stats_enabled` on (it adds two clock reads
    /// to every program run, so it raises fij's, the floor's and bpftrace's cost alike), of all.
    stats_on: usize,
    measurements: usize,
    load_before: String,
    files: usize,
}

/// Everything measured, by name (see [`Results::rows`]).
#[derive(Default)]
struct Results {
    /// ns/syscall per configuration, one sample per round (baselines: every one measured).
    abs: BTreeMap<&'static str, Samples>,
    /// ns/syscall over the mean of the baselines measured right before and after, per round.
    over: BTreeMap<&'static str, Samples>,
    /// Kill latency with fij pinned to another CPU than the target, and to the target's.
    kill_other_us: Samples,
    kill_same_us: Samples,
    /// The same kill by bpftrace's `signal()`, bpftrace on another CPU.
    kill_bpftrace_us: Samples,
    /// Time-triggered kills of a CPU-bound target: scheduled time → exit, ms.
    time_kill_ms: Samples,
    fij_start_ms: Samples,
    bpftrace_start_ms: Samples,
    fij_rss_mib: Samples,
    bpftrace_rss_mib: Samples,
    /// redis-benchmark requests/s, by "layout:configuration" (see `redis.rs`).
    redis_rps: BTreeMap<String, Samples>,
    load_after: String,
}

impl Bench {
    fn new(cfg: Config) -> Result<Self> {
        let bin = crate::bin_dir(true);
        // The peers fij is compared with, and bpftool (the target-set filling).
        let bpftrace = require_tool("bpftrace", "bpftrace");
        let strace = require_tool("strace", "strace");
        require_tool("bpftool", "bpftool");
        let dir = std::env::temp_dir().join(format!("fij-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let bench = Self {
            fij: crate::fij_bin(true),
            syscall_loop: bin.join("fij-syscall-loop"),
            floor: bin.join("fij-floor"),
            bpftrace,
            strace,
            dir,
            cfg,
            disturbed: 0,
            unclean: 0,
            stats_on: 0,
            measurements: 0,
            load_before: loadavg(),
            files: 0,
        };
        for bin in [&bench.fij, &bench.syscall_loop, &bench.floor] {
            ensure!(bin.is_file(), "{} was not built", bin.display());
        }
        Ok(bench)
    }

    /// A new file name in the bench's directory.
    fn file(&mut self, name: &str) -> PathBuf {
        self.files += 1;
        self.dir.join(format!("{}-{name}", self.files))
    }

    fn loop_args(&self, calls: u64) -> Vec<String> {
        vec!["--cpu".into(), self.cfg.cpu.to_string(), calls.to_string()]
    }

    /// Runs `measure` once no program that the bench did not start (`ours`) is on `sys_enter`,
    /// and again (up to 3 times) if one appeared meanwhile.
    fn clean<T>(
        &mut self,
        ours: &[u32],
        mut measure: impl FnMut(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let foreign =
            || -> Result<bool> { Ok(sys_enter_owners()?.iter().any(|pid| !ours.contains(pid))) };
        for attempt in 0..4 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while foreign()? && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(100));
            }
            let before = foreign()?;
            let stats = bpf_stats() == "1";
            let value = measure(self)?;
            self.measurements += 1;
            self.stats_on += usize::from(stats && bpf_stats() == "1");
            if !before && !foreign()? {
                return Ok(value);
            }
            if attempt == 3 {
                self.unclean += 1;
                println!("warning: another program stayed on sys_enter; keeping this measurement");
                return Ok(value);
            }
            self.disturbed += 1;
            println!("note: another program was on sys_enter; repeating the measurement");
        }
        unreachable!()
    }

    /// The loop, not traced by anything of ours.
    fn plain_loop(&mut self, calls: u64) -> Result<LoopRun> {
        let out = Command::new(&self.syscall_loop)
            .args(self.loop_args(calls))
            .stdin(Stdio::null())
            .output()
            .context("running fij-syscall-loop")?;
        ensure!(
            out.status.success(),
            "fij-syscall-loop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        parse_loop(&String::from_utf8_lossy(&out.stdout))
    }

    fn measure_loop(&mut self, ours: &[u32]) -> Result<f64> {
        let calls = self.cfg.loop_calls;
        Ok(self.clean(ours, |b| b.plain_loop(calls))?.best)
    }

    /// ns per pipe round trip between two processes on the loop's CPU (two context switches).
    fn measure_round_trip(&mut self, ours: &[u32]) -> Result<f64> {
        let trips = self.cfg.round_trips;
        Ok(self
            .clean(ours, |b| {
                let out = Command::new(&b.syscall_loop)
                    .arg("--pingpong")
                    .args(b.loop_args(trips))
                    .stdin(Stdio::null())
                    .output()
                    .context("running fij-syscall-loop --pingpong")?;
                ensure!(
                    out.status.success(),
                    "fij-syscall-loop --pingpong failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                parse_loop(&String::from_utf8_lossy(&out.stdout))
            })?
            .best)
    }

    fn write_scenario(&mut self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.file(&format!("{name}.toml"));
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// `fij run SCENARIO` (the release build), its log a new file of the bench's directory.
    fn fij_run(&mut self, scenario: &Path) -> Fij {
        Fij::run_logging_to(scenario, self.file("fij.jsonl"))
            .bin(&self.fij)
            .timeout(FIJ_RUN_LIMIT)
    }

    /// `fij run SCENARIO` in the background, returned once the `start` record is in the log
    /// (programs attached, rules loaded, targets armed).
    fn start_fij(&mut self, scenario: &Path) -> RunningFij {
        let mut fij = self.fij_run(scenario).spawn();
        fij.wait_armed();
        fij
    }

    /// Runs `fij run SCENARIO` to its end, pinned to a CPU with `taskset` if `pin` is given;
    /// fails unless fij exits 0.
    fn run_fij(&mut self, pin: Option<(&Path, usize)>, scenario: &Path) -> Result<FijOutput> {
        let mut fij = self.fij_run(scenario);
        if let Some((taskset, cpu)) = pin {
            fij = fij.through(taskset, ["-c".to_string(), cpu.to_string()]);
        }
        exited_0(fij.spawn().finish())
    }

    fn start_floor(&mut self) -> Result<Daemon> {
        let child = Command::new(&self.floor)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting fij-floor")?;
        let mut floor = Daemon {
            name: "fij-floor",
            child,
        };
        let mut line = String::new();
        BufReader::new(floor.child.stdout.take().unwrap()).read_line(&mut line)?;
        if !line.contains("attached") {
            let mut err = String::new();
            if let Some(mut e) = floor.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("fij-floor did not attach: {line}{err}");
        }
        Ok(floor)
    }

    /// bpftrace counting the `sys_enter`s of `pid` (not the loop); returned once its program is
    /// attached, with the time from spawning it to its "Attaching 1 probe..." line.
    fn start_bpftrace(&mut self, pid: u32) -> Result<(Daemon, Duration)> {
        let script = format!("tracepoint:raw_syscalls:sys_enter /pid == {pid}/ {{ @ = count(); }}");
        self.start_bpftrace_script(&script, "sys_enter")
    }

    /// bpftrace running `script`, returned once its program is on `tracepoint` (a name as
    /// `bpftool perf show` prints it), with the time from spawning it to "Attaching…".
    fn start_bpftrace_script(
        &mut self,
        script: &str,
        tracepoint: &str,
    ) -> Result<(Daemon, Duration)> {
        let err = self.file("bpftrace.err");
        let t0 = Instant::now();
        let child = Command::new(&self.bpftrace)
            .args(["-e", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&err)?)
            .spawn()
            .context("starting bpftrace")?;
        let mut bpftrace = Daemon {
            name: "bpftrace",
            child,
        };
        let mut out = BufReader::new(bpftrace.child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("Attaching") {
            line.clear();
            if out.read_line(&mut line)? == 0 {
                let _ = bpftrace.child.wait();
                let text = fs::read_to_string(&err).unwrap_or_default();
                bail!("bpftrace exited before attaching:\n{text}");
            }
        }
        let attaching = t0.elapsed();
        thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let bpftrace_pid = bpftrace.pid();
        wait_ready(&mut bpftrace, &err, Duration::from_secs(30), || {
            Ok(tracepoint_owners(tracepoint)?.contains(&bpftrace_pid))
        })?;
        Ok((bpftrace, attaching))
    }

    /// Adds `count` fake pids to (or, with `delete`, removes them from) the TARGETS map of the
    /// fij process `fij_pid`.
    fn fill_targets(&mut self, fij_pid: u32, count: usize, delete: bool) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let (id, value_size) = targets_map(fij_pid)?;
        let mut batch = String::new();
        for i in 0..count {
            let key = (FAKE_PID_BASE + i as u32).to_le_bytes();
            let key = key.map(|b| format!("{b:02x}")).join(" ");
            if delete {
                writeln!(batch, "map delete id {id} key hex {key}")?;
            } else {
                let value = vec!["00"; value_size].join(" ");
                writeln!(batch, "map update id {id} key hex {key} value hex {value}")?;
            }
        }
        let file = self.file("targets.batch");
        fs::write(&file, batch)?;
        let out = Command::new("bpftool")
            .arg("batch")
            .arg("file")
            .arg(&file)
            .stdin(Stdio::null())
            .output()?;
        ensure!(
            out.status.success(),
            "`bpftool batch file {}` failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    fn measure_all(&mut self) -> Result<Results> {
        let mut r = Results::default();
        let cfg = &self.cfg;
        println!(
            "bench: {} rounds; loops of {} getppid calls pinned to CPU {} ({} under strace); \
             {} kill runs",
            cfg.reps, cfg.loop_calls, cfg.cpu, cfg.strace_calls, cfg.kill_runs
        );
        self.non_target(&mut r)?;
        self.armed(&mut r)?;
        self.kill_latency(&mut r)?;
        self.start_to_armed(&mut r)?;
        self.redis(&mut r)?;
        self.errno(&mut r)?;
        r.load_after = loadavg();
        Ok(r)
    }

    /// Part 1 (and the non-target scale row, the context-switch row, RSS, bpftrace's start
    /// time).
    fn non_target(&mut self, r: &mut Results) -> Result<()> {
        let sleeper = Daemon {
            name: "sleep",
            child: Command::new("sleep")
                .arg("100000")
                .spawn()
                .context("starting sleep")?,
        };
        let other = |faults: usize| {
            let mut text = "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"other\"\n\
                            command = [\"sleep\", \"100000\"]\n"
                .to_string();
            for (i, syscall) in scale_syscalls(faults).into_iter().enumerate() {
                text.push('\n');
                text.push_str(&fault(&format!("never-{i}"), "other", syscall, NEVER));
            }
            text
        };
        let (targets, faults) = (self.cfg.scale_targets, self.cfg.scale_faults);
        let small = self.write_scenario("other", &other(1))?;
        let big = self.write_scenario("other-big", &other(faults))?;
        println!(
            "\n== 1. non-target syscall overhead: baseline / fij-floor / `fij run` (target: a \
             sleep; 1 × 1, then {targets} targets × {faults} faults) / bpftrace (pid == {}); \
             pipe round trips without and with fij ==",
            sleeper.pid()
        );
        for round in 0..self.cfg.reps {
            // A baseline right before and after each configuration: the overhead is taken
            // against their mean, so that the machine's speed changes only count when they
            // happen within seconds.
            let b0 = self.measure_loop(&[])?;

            let floor = self.start_floor()?;
            let floor_ns = self.measure_loop(&[floor.pid()])?;
            // The hook's own cost on a path with context switches (the floor of the pipe row).
            let floor_rt = self.measure_round_trip(&[floor.pid()])?;
            floor.stop(SIGTERM, Duration::from_secs(10))?;
            let b1 = self.measure_loop(&[])?;
            let p1 = self.measure_round_trip(&[])?;

            let fij = self.start_fij(&small);
            let fij_ns = self.measure_loop(&[fij.pid()])?;
            let fij_rt = self.measure_round_trip(&[fij.pid()])?;
            r.fij_rss_mib.push(peak_rss_kib(fij.pid())? as f64 / 1024.0);
            terminate(fij)?;

            let fij = self.start_fij(&big);
            self.fill_targets(fij.pid(), targets - 1, false)?;
            let big_ns = self.measure_loop(&[fij.pid()])?;
            terminate(fij)?;
            let b2 = self.measure_loop(&[])?;
            let p2 = self.measure_round_trip(&[])?;

            let (bpftrace, attaching) = self.start_bpftrace(sleeper.pid())?;
            r.bpftrace_start_ms.push(attaching.as_secs_f64() * 1e3);
            let bpftrace_ns = self.measure_loop(&[bpftrace.pid()])?;
            r.bpftrace_rss_mib
                .push(peak_rss_kib(bpftrace.pid())? as f64 / 1024.0);
            bpftrace.stop(SIGINT, Duration::from_secs(30))?;
            let b3 = self.measure_loop(&[])?;

            // What the kernel's syscall tracing costs before any program runs: the floor of a
            // design with one tracepoint per hooked syscall instead of one on `sys_enter`. An
            // empty program on another syscall's tracepoint (the loop's and the pipe's calls
            // only take the tracing path and a bitmap test), then on the loop's own syscall.
            let (tp_other, _) = self.start_bpftrace_script(
                "tracepoint:syscalls:sys_enter_openat { }",
                "sys_enter_openat",
            )?;
            let tp_other_ns = self.measure_loop(&[])?;
            let tp_other_rt = self.measure_round_trip(&[])?;
            tp_other.stop(SIGINT, Duration::from_secs(30))?;
            let (tp_own, _) = self.start_bpftrace_script(
                "tracepoint:syscalls:sys_enter_getppid { }",
                "sys_enter_getppid",
            )?;
            let tp_own_ns = self.measure_loop(&[])?;
            tp_own.stop(SIGINT, Duration::from_secs(30))?;
            let b4 = self.measure_loop(&[])?;

            for b in [b0, b1, b2, b3, b4] {
                r.abs.entry("baseline").or_default().push(b);
            }
            for (name, ns, base) in [
                ("floor", floor_ns, (b0 + b1) / 2.0),
                ("fij_non_target", fij_ns, (b1 + b2) / 2.0),
                ("fij_non_target_big", big_ns, (b1 + b2) / 2.0),
                ("bpftrace_non_target", bpftrace_ns, (b2 + b3) / 2.0),
                ("tracepoint_other_syscall", tp_other_ns, (b3 + b4) / 2.0),
                ("tracepoint_own_syscall", tp_own_ns, (b3 + b4) / 2.0),
            ] {
                r.abs.entry(name).or_default().push(ns);
                r.over.entry(name).or_default().push(ns - base);
            }
            r.abs
                .entry("round_trip_baseline")
                .or_default()
                .push((p1 + p2) / 2.0);
            r.abs.entry("round_trip_fij").or_default().push(fij_rt);
            r.abs.entry("round_trip_floor").or_default().push(floor_rt);
            r.abs
                .entry("round_trip_tracepoint_other_syscall")
                .or_default()
                .push(tp_other_rt);
            println!(
                "round {}/{}: ns/syscall baseline {b0:.1}, floor {floor_ns:.1}, baseline \
                 {b1:.1}, fij {fij_ns:.1} ({targets} × {faults}: {big_ns:.1}), baseline {b2:.1}, \
                 bpftrace {bpftrace_ns:.1}, baseline {b3:.1}, sys_enter_openat \
                 {tp_other_ns:.1}, sys_enter_getppid {tp_own_ns:.1}, baseline {b4:.1}; ns/round \
                 trip floor {floor_rt:.0}, {p1:.0}, fij {fij_rt:.0}, {p2:.0}, sys_enter_openat \
                 {tp_other_rt:.0}",
                round + 1,
                self.cfg.reps
            );
        }
        drop(sleeper);
        Ok(())
    }

    /// Part 2 (and the armed scale rows).
    fn armed(&mut self, r: &mut Results) -> Result<()> {
        let loop_cmd = |b: &Self, extra: &[String], calls| {
            let mut argv = vec![b.syscall_loop.display().to_string()];
            argv.extend(extra.iter().cloned());
            argv.extend(b.loop_args(calls));
            argv.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let scenario = |command: String, syscalls: Vec<&str>| {
            let mut text = format!(
                "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"loop\"\n\
                 command = [{command}]\n"
            );
            for (i, syscall) in syscalls.into_iter().enumerate() {
                text.push('\n');
                text.push_str(&fault(&format!("never-{i}"), "loop", syscall, NEVER));
            }
            text
        };
        let (targets, faults) = (self.cfg.scale_targets, self.cfg.scale_faults);
        let calls = self.cfg.loop_calls;
        let one = scenario(loop_cmd(self, &[], calls), scale_syscalls(1));
        let one = self.write_scenario("armed-1", &one)?;
        // 16 faults counting every getppid: ~3× slower per call, so a quarter of the calls
        // keeps the loop's time (the span its fastest chunk is picked from) close to the others'.
        let hook = scenario(
            loop_cmd(self, &[], calls / 4),
            vec!["getppid"; FAULTS_PER_HOOK],
        );
        let hook = self.write_scenario("armed-hook", &hook)?;
        // The big one: the loop waits for the gate file while the bench fills the target set.
        let gate = self.file("gate");
        let gated = ["--wait-for".to_string(), gate.display().to_string()];
        let big = scenario(loop_cmd(self, &gated, calls), scale_syscalls(faults));
        let big = self.write_scenario("armed-big", &big)?;
        let strace_args: Vec<String> = ["-f", "-e", "inject=getppid:error=EPERM:when=65535"]
            .into_iter()
            .map(String::from)
            .chain([
                "-o".into(),
                "/dev/null".into(),
                self.syscall_loop.display().to_string(),
            ])
            .chain(self.loop_args(self.cfg.strace_calls))
            .collect();
        println!(
            "\n== 2. armed-target syscall overhead: `fij run` (the loop is the target of a getppid \
             fault with nth = {NEVER}; then of {FAULTS_PER_HOOK} such faults; then of 1 of \
             {faults} faults, among {targets} targets) / {} ==",
            cmd::display(Command::new(&self.strace).args(&strace_args))
        );
        for round in 0..self.cfg.reps {
            // As in part 1: a baseline right before and after each configuration.
            let mut bases = vec![self.measure_loop(&[])?];
            let mut armed = Vec::new();
            for scenario in [&one, &hook] {
                let fij = self.clean(&[], |b| b.run_fij(None, scenario))?;
                armed.push(parse_loop(&fij.stdout)?.best);
                bases.push(self.measure_loop(&[])?);
            }
            let out = self.clean(&[], |b| b.run_gated_fij(&big, &gate, targets - 1))?;
            armed.push(parse_loop(&out)?.best);
            bases.push(self.measure_loop(&[])?);
            let strace = self.clean(&[], |b| {
                let out = Command::new(&b.strace)
                    .args(&strace_args)
                    .stdin(Stdio::null())
                    .output()
                    .context("running strace")?;
                ensure!(
                    out.status.success(),
                    "strace failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                parse_loop(&String::from_utf8_lossy(&out.stdout))
            })?;
            bases.push(self.measure_loop(&[])?);
            for &b in &bases {
                r.abs.entry("armed_baseline").or_default().push(b);
            }
            let around = |i: usize| (bases[i] + bases[i + 1]) / 2.0;
            for (name, ns, base) in [
                ("fij_armed", armed[0], around(0)),
                ("fij_armed_hook", armed[1], around(1)),
                ("fij_armed_big", armed[2], around(2)),
                ("strace_armed", strace.best, around(3)),
            ] {
                r.abs.entry(name).or_default().push(ns);
                r.over.entry(name).or_default().push(ns - base);
            }
            r.abs
                .entry("strace_armed_mean")
                .or_default()
                .push(strace.mean);
            println!(
                "round {}/{}: ns/syscall baseline {:.1}, fij {:.1}, baseline {:.1}, \
                 {FAULTS_PER_HOOK} faults on getppid {:.1}, baseline {:.1}, {targets} × {faults} \
                 {:.1}, baseline {:.1}, strace {:.0}, baseline {:.1}",
                round + 1,
                self.cfg.reps,
                bases[0],
                armed[0],
                bases[1],
                armed[1],
                bases[2],
                armed[2],
                bases[3],
                strace.best,
                bases[4]
            );
        }
        Ok(())
    }

    /// `fij run SCENARIO` whose target waits for `gate`: fills the target set with `fake` more
    /// entries once fij is armed, opens the gate, and returns fij's stdout (its target's) when
    /// the campaign ends.
    /// Part 8: an armed target's cost per call of a syscall an `error` fault names, through the
    /// seccomp path (a round trip to fij per call), against strace's inject on the same loop.
    fn errno(&mut self, r: &mut Results) -> Result<()> {
        let calls = self.cfg.strace_calls;
        let mut argv = vec![self.syscall_loop.display().to_string()];
        argv.extend(self.loop_args(calls));
        let command = argv
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let scenario = format!(
            "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"loop\"\n\
             command = [{command}]\n\n[[fault]]\nname = \"never\"\ntarget = \"loop\"\n\
             action = \"error\"\nerrno = \"EPERM\"\ntrigger = {{ syscall = \"getppid\" }}\n\
             nth = {NEVER}\n"
        );
        let scenario = self.write_scenario("errno-seccomp", &scenario)?;
        let strace_args: Vec<String> = ["-f", "-e", "inject=getppid:error=EPERM:when=65535"]
            .into_iter()
            .map(String::from)
            .chain([
                "-o".into(),
                "/dev/null".into(),
                self.syscall_loop.display().to_string(),
            ])
            .chain(self.loop_args(calls))
            .collect();
        println!(
            "\n== 8. a call fij can fail, on an armed spawned target: `fij run` (error on getppid \
             through seccomp user notification, nth = {NEVER}) / {} ==",
            cmd::display(Command::new(&self.strace).args(&strace_args))
        );
        for round in 0..self.cfg.reps {
            let base = self.measure_loop(&[])?;
            let fij = self.clean(&[], |b| b.run_fij(None, &scenario))?;
            let seccomp = parse_loop(&fij.stdout)?.best;
            let middle = self.measure_loop(&[])?;
            let strace = self.clean(&[], |b| {
                let out = Command::new(&b.strace)
                    .args(&strace_args)
                    .stdin(Stdio::null())
                    .output()
                    .context("running strace")?;
                ensure!(
                    out.status.success(),
                    "strace failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                parse_loop(&String::from_utf8_lossy(&out.stdout))
            })?;
            let after = self.measure_loop(&[])?;
            r.over
                .entry("fij_errno_seccomp")
                .or_default()
                .push(seccomp - (base + middle) / 2.0);
            r.over
                .entry("strace_errno")
                .or_default()
                .push(strace.best - (middle + after) / 2.0);
            println!(
                "round {}/{}: ns/syscall baseline {base:.1}, fij seccomp {seccomp:.0}, baseline \
                 {middle:.1}, strace {:.0}, baseline {after:.1}",
                round + 1,
                self.cfg.reps,
                strace.best
            );
        }
        self.errno_hooks_on_non_targets(r)
    }

    /// Part 8b: what the cgroup `error` hooks cost a process that is not a target: a loop of
    /// UDP `connect`s (each passes the `connect4` hook) without fij, then while fij runs a
    /// campaign with an `error` fault on `connect` of an idle target (the hook attached to the
    /// cgroup-v2 root, the loop not in the target set).
    fn errno_hooks_on_non_targets(&mut self, r: &mut Results) -> Result<()> {
        let calls = self.cfg.loop_calls;
        let connects = |b: &mut Self| -> Result<f64> {
            let out = Command::new(&b.syscall_loop)
                .args(["--connect", "9"])
                .args(b.loop_args(calls))
                .stdin(Stdio::null())
                .output()
                .context("running fij-syscall-loop --connect")?;
            ensure!(
                out.status.success(),
                "fij-syscall-loop --connect failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(parse_loop(&String::from_utf8_lossy(&out.stdout))?.best)
        };
        let scenario = format!(
            "seed = 1\nduration = \"10m\"\n\n[[target]]\nname = \"idle\"\n\
             command = [\"/bin/sleep\", \"600\"]\n\n[[fault]]\nname = \"never\"\n\
             target = \"idle\"\naction = \"error\"\nerrno = \"ECONNREFUSED\"\n\
             trigger = {{ syscall = \"connect\" }}\nnth = {NEVER}\n"
        );
        let scenario = self.write_scenario("errno-hooks", &scenario)?;
        println!(
            "\n== 8b. a non-target's UDP connect loop ({calls} calls), without fij / with fij's \
             cgroup `error` hooks attached (fault on connect of an idle target) =="
        );
        for round in 0..self.cfg.reps {
            let base = self.clean(&[], connects)?;
            let fij = self.start_fij(&scenario);
            let ours = [fij.pid()];
            let hooked = self.clean(&ours, connects);
            terminate(fij)?;
            let hooked = hooked?;
            let after = self.clean(&[], connects)?;
            r.over
                .entry("fij_errno_hooks_non_target")
                .or_default()
                .push(hooked - (base + after) / 2.0);
            r.abs
                .entry("connect_no_hooks")
                .or_default()
                .push((base + after) / 2.0);
            println!(
                "round {}/{}: ns/connect without fij {base:.1}, with the hooks {hooked:.1}, \
                 without {after:.1}",
                round + 1,
                self.cfg.reps
            );
        }
        Ok(())
    }

    fn run_gated_fij(&mut self, scenario: &Path, gate: &Path, fake: usize) -> Result<String> {
        let _ = fs::remove_file(gate);
        let mut fij = self.start_fij(scenario);
        self.fill_targets(fij.pid(), fake, false)?;
        fs::write(gate, "").with_context(|| format!("cannot create {}", gate.display()))?;
        // The fake targets never exit, so the campaign does not end by itself: it is ended once
        // the loop's exit is in the log.
        fij.wait_for_typed_record("the loop's exit", Duration::from_secs(600), |r| {
            matches!(r, Record::Exit { .. })
        });
        Ok(terminate(fij)?.stdout)
    }

    /// Part 3.
    fn kill_latency(&mut self, r: &mut Results) -> Result<()> {
        let mut argv = vec![self.syscall_loop.display().to_string()];
        argv.extend(self.loop_args(self.cfg.loop_calls.max(100_000)));
        let command = argv
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let scenario = self.write_scenario(
            "kill",
            &format!(
                "seed = 1\nduration = \"1m\"\n\n[[target]]\nname = \"loop\"\n\
                 command = [{command}]\n\n{}",
                fault("kill-1000th", "loop", "getppid", 1000)
            ),
        )?;
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let other_cpu = (self.cfg.cpu + 1) % cpus;
        println!(
            "\n== 3. kill latency: `fij run` killing the loop (on CPU {}) on its 1000th getppid, \
             injection → exit record; {} runs with fij pinned to CPU {other_cpu}, {} with fij \
             pinned to the loop's CPU ==",
            self.cfg.cpu, self.cfg.kill_runs, self.cfg.kill_runs
        );
        let taskset = require_tool("taskset", "util-linux");
        if other_cpu != self.cfg.cpu {
            r.kill_other_us = self.kill_runs(&scenario, &taskset, other_cpu)?;
        }
        r.kill_same_us = self.kill_runs(&scenario, &taskset, self.cfg.cpu)?;
        r.kill_bpftrace_us = self.bpftrace_kill_runs(&taskset, other_cpu)?;
        r.time_kill_ms = self.time_kill_runs()?;
        Ok(())
    }

    /// A time trigger on a CPU-bound target (`fij-workload spin`, no syscalls: the victim
    /// claims the due fault at its 1 ms task-clock tick): scheduled time → exit record, in ms.
    fn time_kill_runs(&mut self) -> Result<Samples> {
        let workload = crate::bin_dir(true).join("fij-workload");
        let scenario = self.write_scenario(
            "time",
            &format!(
                "seed = 1\nduration = \"1m\"\n\n[[target]]\nname = \"spin\"\n\
                 command = [{:?}, \"spin\", \"10000\"]\n\n[[fault]]\nname = \"at\"\n\
                 target = \"spin\"\naction = \"kill\"\ntrigger = {{ at = \"200ms\" }}\n",
                workload.display().to_string()
            ),
        )?;
        let mut samples = Samples::default();
        for _ in 0..self.cfg.time_runs {
            let fij = self.run_fij(None, &scenario)?;
            samples.push(time_kill_ns(&fij.log)? as f64 / 1e6);
        }
        println!(
            "time trigger, CPU-bound target: scheduled → exit ms: p50 {:.2}, p99 {:.2}, max {:.2}",
            samples.percentile(50.0),
            samples.percentile(99.0),
            samples.max()
        );
        Ok(samples)
    }

    /// The same kill by bpftrace's `signal("KILL")` on the loop's 1000th getppid (the same
    /// helper from the same kind of hook), hit → exit in µs, bpftrace pinned to `cpu`.
    fn bpftrace_kill_runs(&mut self, taskset: &Path, cpu: usize) -> Result<Samples> {
        let script = "tracepoint:raw_syscalls:sys_enter /pid == cpid && args->id == 110/ { \
                      @n = @n + 1; if (@n == 1000) { @hit = nsecs; signal(\"KILL\"); } }\n\
                      tracepoint:sched:sched_process_exit /pid == cpid && @hit != 0/ { \
                      printf(\"kill_latency_ns=%llu\\n\", nsecs - @hit); exit(); }\n";
        let mut command = vec![self.syscall_loop.display().to_string()];
        command.extend(self.loop_args(self.cfg.loop_calls.max(100_000)));
        let mut samples = Samples::default();
        for _ in 0..self.cfg.kill_runs {
            let out = Command::new(taskset)
                .arg("-c")
                .arg(cpu.to_string())
                .arg(&self.bpftrace)
                .args(["--unsafe", "-c", &command.join(" "), "-e", script])
                .stdin(Stdio::null())
                .output()
                .context("running bpftrace")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let ns: u64 = text
                .lines()
                .find_map(|l| l.strip_prefix("kill_latency_ns="))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| {
                    format!(
                        "bpftrace did not report a kill ({}):\n{text}\n{}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            samples.push(ns as f64 / 1e3);
        }
        println!(
            "bpftrace signal(): kill latency µs: p50 {:.1}, p99 {:.1}, max {:.1}",
            samples.percentile(50.0),
            samples.percentile(99.0),
            samples.max()
        );
        Ok(samples)
    }

    /// Kill latencies in µs of `kill_runs` runs of `taskset -c CPU fij run SCENARIO`.
    fn kill_runs(&mut self, scenario: &Path, taskset: &Path, cpu: usize) -> Result<Samples> {
        let mut samples = Samples::default();
        for _ in 0..self.cfg.kill_runs {
            let fij = self.run_fij(Some((taskset, cpu)), scenario)?;
            samples.push(kill_latency_ns(&fij.log)? as f64 / 1e3);
        }
        println!(
            "fij on CPU {cpu}: kill latency µs: p50 {:.1}, p99 {:.1}, max {:.1}",
            samples.percentile(50.0),
            samples.percentile(99.0),
            samples.max()
        );
        Ok(samples)
    }

    /// Part 4 (bpftrace's figure was taken in part 1).
    fn start_to_armed(&mut self, r: &mut Results) -> Result<()> {
        let scenario = self.write_scenario(
            "stamp",
            &format!(
                "seed = 1\nduration = \"1m\"\n\n[[target]]\nname = \"stamp\"\n\
                 command = [{:?}, \"0\"]\n\n{}",
                self.syscall_loop.display().to_string(),
                fault("never", "stamp", "getppid", NEVER)
            ),
        )?;
        println!(
            "\n== 4. start to armed: spawning `fij run` → its target starts (bpftrace: spawning \
             it → \"Attaching 1 probe...\", measured in part 1) =="
        );
        for _ in 0..self.cfg.reps {
            let t0 = monotonic_ns();
            let fij = self.run_fij(None, &scenario)?;
            let started = parse_loop(&fij.stdout)?.start_ns;
            r.fij_start_ms.push(started.saturating_sub(t0) as f64 / 1e6);
        }
        println!(
            "fij: median {:.1} ms; bpftrace: median {:.1} ms",
            r.fij_start_ms.median(),
            r.bpftrace_start_ms.median()
        );
        Ok(())
    }
}

/// A `[[fault]]` table: kill on hit `nth` of `syscall`.
fn fault(name: &str, target: &str, syscall: &str, nth: u64) -> String {
    format!(
        "[[fault]]\nname = \"{name}\"\ntarget = \"{target}\"\naction = \"kill\"\n\
         trigger = {{ syscall = \"{syscall}\" }}\nnth = {nth}\n"
    )
}

/// A finished fij run, if it exited 0.
fn exited_0(fij: FijOutput) -> Result<FijOutput> {
    ensure!(fij.ended == Ended::Code(0), "{fij}");
    Ok(fij)
}

/// Ends a campaign with SIGTERM (if it has not ended) and waits for fij, which must exit 0.
fn terminate(mut fij: RunningFij) -> Result<FijOutput> {
    if fij.running() {
        send_signal(fij.pid(), SIGTERM);
    }
    exited_0(fij.finish())
}

/// A kill's latency: from the first injection's `ktime_ns` to the first exit's, which must be the
/// killed process's.
pub(super) fn kill_latency_ns(log: &Log) -> Result<u64> {
    let (
        Some(Record::Injection {
            ktime_ns: injected,
            pid,
            ..
        }),
        Some(Record::Exit {
            ktime_ns: exited,
            pid: exited_pid,
            ..
        }),
    ) = (log.first("injection"), log.first("exit"))
    else {
        bail!("no injection and exit records in the log:\n{log}");
    };
    ensure!(
        pid == exited_pid,
        "the exit record is not the killed process's:\n{log}"
    );
    Ok(exited.saturating_sub(*injected))
}

/// A time-triggered kill's lateness: from the first injection's scheduled time to the first exit
/// (both `t_ns`).
fn time_kill_ns(log: &Log) -> Result<u64> {
    let (
        Some(Record::Injection {
            scheduled_t_ns: Some(scheduled),
            ..
        }),
        Some(Record::Exit { t_ns: exited, .. }),
    ) = (log.first("injection"), log.first("exit"))
    else {
        bail!("no time-triggered injection and exit records in the log:\n{log}");
    };
    Ok(exited.saturating_sub(*scheduled))
}

/// The id and value size of fij's TARGETS map: the map named TARGETS that fij (`fij_pid`) holds.
fn targets_map(fij_pid: u32) -> Result<(u64, usize)> {
    let id = map_of_process(fij_pid, "TARGETS");
    let value_size = maps()
        .iter()
        .find(|m| m["id"] == id)
        .and_then(|m| m["bytes_value"].as_u64())
        .with_context(|| format!("no value size of map {id} in `bpftool map show`"))?;
    Ok((id, value_size as usize))
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line of the results table.
struct Row {
    measurement: String,
    unit: &'static str,
    fij: Samples,
    peer_name: String,
    peer: Option<Samples>,
    /// (label, value)
    ratio: Option<(String, f64)>,
    /// (text, holds)
    target: Option<(String, bool)>,
    /// Show p99 (p50, max) instead of median (min–max).
    percentiles: bool,
    /// The same ratio from each side's fastest round (syscall rows): what the target is checked
    /// against, as it is the one the machine's speed states do not blur (see `markdown`).
    fastest: Option<f64>,
}

impl Row {
    fn new(measurement: impl Into<String>, unit: &'static str, fij: &Samples) -> Self {
        Self {
            measurement: measurement.into(),
            unit,
            fij: fij.clone(),
            peer_name: String::new(),
            peer: None,
            ratio: None,
            target: None,
            percentiles: false,
            fastest: None,
        }
    }

    fn fastest(mut self, ratio: f64) -> Self {
        self.fastest = Some(ratio);
        self
    }

    /// The peer (or floor) column, and the ratio fij/peer of the medians.
    fn vs(mut self, name: &str, peer: &Samples) -> Self {
        self.ratio = Some((format!("fij/{name}"), self.fij.median() / peer.median()));
        self.peer_name = name.into();
        self.peer = Some(peer.clone());
        self
    }

    /// Names the measured side in the ratio's label, for rows where it is not fij (after `vs`).
    fn of(mut self, subject: &str) -> Self {
        if let Some((label, _)) = &mut self.ratio
            && let Some(peer) = label.strip_prefix("fij/")
        {
            *label = format!("{subject}/{peer}");
        }
        self
    }

    /// The ratio peer/fij instead.
    fn inverse(mut self) -> Self {
        if let (Some(peer), Some((label, _))) = (&self.peer, &self.ratio) {
            let label = label.split('/').rev().collect::<Vec<_>>().join("/");
            self.ratio = Some((label, peer.median() / self.fij.median()));
        }
        self
    }

    /// The ratio a target is checked against: the fastest rounds' where there is one.
    fn ratio(&self) -> f64 {
        self.fastest
            .unwrap_or_else(|| self.ratio.as_ref().map_or(f64::NAN, |(_, r)| *r))
    }

    fn target(mut self, text: &str, holds: impl FnOnce(&Self) -> bool) -> Self {
        let holds = holds(&self);
        self.target = Some((text.into(), holds));
        self
    }

    fn percentiles(mut self) -> Self {
        self.percentiles = true;
        self
    }

    fn cell(&self, s: &Samples) -> String {
        if self.percentiles {
            format!(
                "p99 {:.1} {} (p50 {:.1}, max {:.1})",
                s.percentile(99.0),
                self.unit,
                s.percentile(50.0),
                s.max()
            )
        } else {
            format!(
                "{:.1} {} ({:.1}–{:.1})",
                s.median(),
                self.unit,
                s.min(),
                s.max()
            )
        }
    }
}

impl Results {
    fn abs(&self, name: &str) -> Samples {
        self.abs.get(name).cloned().unwrap_or_default()
    }

    fn over(&self, name: &str) -> Samples {
        self.over.get(name).cloned().unwrap_or_default()
    }

    /// Part 8's row (none when it did not run).
    fn errno_rows(&self) -> Vec<Row> {
        let seccomp = self.over("fij_errno_seccomp");
        if seccomp.0.is_empty() {
            return Vec::new();
        }
        vec![
            Row::new(
                "Armed spawned target, a call an `error` fault names (seccomp user notification; \
                 fault never fires), overhead vs strace inject",
                "ns",
                &seccomp,
            )
            .vs("strace", &self.over("strace_errno"))
            .inverse(),
            Row::new(
                "Non-target UDP connect, cgroup `error` hooks attached (fault on connect of \
                 another process), overhead",
                "ns",
                &self.over("fij_errno_hooks_non_target"),
            )
            .vs("connect without fij", &self.abs("connect_no_hooks")),
        ]
    }

    fn rows(&self, cfg: &Config) -> Vec<Row> {
        let floor = self.over("floor");
        let fij = self.over("fij_non_target");
        let bpftrace = self.over("bpftrace_non_target");
        let armed = self.over("fij_armed");
        let strace = self.over("strace_armed");
        let (targets, faults) = (cfg.scale_targets, cfg.scale_faults);
        // Overheads of the fastest rounds: each configuration's minimum minus the minimum of
        // the baselines of its part.
        let fastest = |name: &str, base: &str| self.abs(name).min() - self.abs(base).min();
        let fastest_fij = fastest("fij_non_target", "baseline");
        let fastest_armed = fastest("fij_armed", "armed_baseline");
        let big = self.over("fij_non_target_big");
        let a_hook = self.over("fij_armed_hook");
        let a_big = self.over("fij_armed_big");
        let kill = |fij_cpu: &str, samples: &Samples| {
            Row::new(
                format!(
                    "Kill latency, fij on {fij_cpu} ({} runs, injection → exit record)",
                    samples.0.len()
                ),
                "µs",
                samples,
            )
            .percentiles()
            .target("p99 ≤ 50 µs", |r| r.fij.percentile(99.0) <= 50.0)
        };
        let mut kill_other = kill("another CPU than the target", &self.kill_other_us);
        if !self.kill_bpftrace_us.0.is_empty() {
            kill_other = kill_other.vs("bpftrace signal()", &self.kill_bpftrace_us);
        }
        [
            Row::new(
                "Non-target syscall overhead, vs floor (empty program on sys_enter)",
                "ns",
                &fij,
            )
            .vs("floor", &floor)
            .fastest(fastest_fij / fastest("floor", "baseline"))
            .target("≤ 1.1", |r| r.ratio() <= 1.1),
            Row::new(
                "Non-target syscall overhead, vs bpftrace (same pid filter)",
                "ns",
                &fij,
            )
            .vs("bpftrace", &bpftrace)
            .fastest(fastest_fij / fastest("bpftrace_non_target", "baseline"))
            .target("≤ 0.8", |r| r.ratio() <= 0.8),
            Row::new(
                "Armed-target syscall overhead (fault never fires), vs strace inject",
                "ns",
                &armed,
            )
            .vs("strace", &strace)
            .inverse()
            .fastest(fastest("strace_armed", "armed_baseline") / fastest_armed)
            .target("≥ 500", |r| r.ratio() >= 500.0),
            // Issue 16: an armed target's syscall within twice the hook floor.
            Row::new(
                "Armed-target syscall overhead (fault never fires), vs floor",
                "ns",
                &armed,
            )
            .vs("floor", &floor)
            .fastest(fastest_armed / fastest("floor", "baseline"))
            .target("≤ 2", |r| r.ratio() <= 2.0),
            kill_other,
            kill("the target's CPU", &self.kill_same_us),
            Row::new(
                format!(
                    "Time-triggered kill of a CPU-bound target ({} runs, scheduled time → exit \
                     record)",
                    self.time_kill_ms.0.len()
                ),
                "ms",
                &self.time_kill_ms,
            )
            .percentiles()
            .target("p99 ≤ 5 ms", |r| r.fij.percentile(99.0) <= 5.0),
            Row::new(
                "Pipe round trip between two non-targets on one CPU (2 context switches, 4 \
                 syscalls)",
                "ns",
                &self.abs("round_trip_fij"),
            )
            .vs("nothing attached", &self.abs("round_trip_baseline"))
            .target("≤ 1.05", |r| r.ratio() <= 1.05),
            // What any program on sys_enter costs there: the row above's target is under it.
            Row::new(
                "Pipe round trip between two non-targets on one CPU, vs the floor (empty program \
                 on sys_enter)",
                "ns",
                &self.abs("round_trip_fij"),
            )
            .vs("floor", &self.abs("round_trip_floor"))
            .target("≤ 1.05", |r| r.ratio() <= 1.05),
            Row::new(
                "Pipe round trip: the floor program vs nothing attached",
                "ns",
                &self.abs("round_trip_floor"),
            )
            .vs("nothing attached", &self.abs("round_trip_baseline"))
            .of("floor"),
            // The floor of a design with one tracepoint per hooked syscall: the kernel's syscall
            // tracing path alone (docs/performance.md).
            Row::new(
                "Pipe round trip: an empty program on another syscall's tracepoint \
                 (`syscalls:sys_enter_openat`, bpftrace) vs nothing attached",
                "ns",
                &self.abs("round_trip_tracepoint_other_syscall"),
            )
            .vs("nothing attached", &self.abs("round_trip_baseline"))
            .of("tracepoint"),
            Row::new(
                "Syscall overhead of an empty program on another syscall's tracepoint \
                 (`syscalls:sys_enter_openat`, bpftrace), vs floor",
                "ns",
                &self.over("tracepoint_other_syscall"),
            )
            .vs("floor", &floor)
            .of("tracepoint")
            .fastest(
                fastest("tracepoint_other_syscall", "baseline") / fastest("floor", "baseline"),
            ),
            Row::new(
                "Syscall overhead of an empty program on the loop's own syscall's tracepoint \
                 (`syscalls:sys_enter_getppid`, bpftrace), vs floor",
                "ns",
                &self.over("tracepoint_own_syscall"),
            )
            .vs("floor", &floor)
            .of("tracepoint")
            .fastest(fastest("tracepoint_own_syscall", "baseline") / fastest("floor", "baseline")),
            Row::new(
                "Start to armed (fij: spawn → target runs; bpftrace: spawn → \"Attaching\")",
                "ms",
                &self.fij_start_ms,
            )
            .vs("bpftrace", &self.bpftrace_start_ms)
            .target("fij ≤ 30 ms", |r| r.fij.median() <= 30.0),
            Row::new(
                "Peak RSS (VmHWM) during a campaign",
                "MiB",
                &self.fij_rss_mib,
            )
            .vs("bpftrace", &self.bpftrace_rss_mib),
            Row::new(
                format!("Scale: non-target overhead, {targets} targets × {faults} faults"),
                "ns",
                &big,
            )
            .vs("1 × 1", &fij)
            .fastest(fastest("fij_non_target_big", "baseline") / fastest_fij)
            .target("≤ 1.1", |r| r.ratio() <= 1.1),
            Row::new(
                format!(
                    "Scale: armed-target overhead, {targets} targets × {faults} faults (1 on \
                     its syscall)"
                ),
                "ns",
                &a_big,
            )
            .vs("1 × 1", &armed)
            .fastest(fastest("fij_armed_big", "armed_baseline") / fastest_armed)
            .target("≤ 1.1", |r| r.ratio() <= 1.1),
            Row::new(
                format!("Scale: armed-target overhead, {FAULTS_PER_HOOK} faults on its syscall"),
                "ns",
                &a_hook,
            )
            .vs("1 fault", &armed)
            .fastest(fastest("fij_armed_hook", "armed_baseline") / fastest_armed),
        ]
        .into_iter()
        .chain(self.redis_rows())
        .chain(self.errno_rows())
        // The kill latency with fij on another CPU is not measured on a 1-CPU machine.
        .filter(|row| !row.fij.0.is_empty())
        .collect()
    }

    fn absolute_rows(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("baseline", "nothing attached (part 1 baselines)"),
            ("floor", "fij-floor attached"),
            ("fij_non_target", "`fij run` on another process"),
            ("fij_non_target_big", "… with the big scale configuration"),
            ("bpftrace_non_target", "bpftrace, filter on another pid"),
            (
                "tracepoint_other_syscall",
                "empty program on `syscalls:sys_enter_openat`",
            ),
            (
                "tracepoint_own_syscall",
                "empty program on `syscalls:sys_enter_getppid`",
            ),
            ("armed_baseline", "nothing attached (part 2 baselines)"),
            ("fij_armed", "the loop as fij's armed target, 1 fault"),
            ("fij_armed_hook", "… 16 faults on getppid"),
            ("fij_armed_big", "… the big scale configuration"),
            ("strace_armed", "under strace inject (fastest chunk)"),
            ("strace_armed_mean", "under strace inject (whole-loop mean)"),
        ]
    }

    fn markdown(&self, bench: &Bench, took: Duration) -> String {
        let cfg = &bench.cfg;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Machine: {}; kernel {}; {}; command `cargo xtask bench{}` (measurements took {:.0} \
             s, after setup and the release build).",
            machine(),
            kernel(),
            date(),
            if cfg.quick { " --quick" } else { "" },
            took.as_secs_f64()
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| measurement | fij | peer/floor | ratio | target | met? |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for row in self.rows(cfg) {
            let fij = row.cell(&row.fij);
            let peer = match &row.peer {
                Some(p) => format!("{}: {}", row.peer_name, row.cell(p)),
                None => "—".into(),
            };
            let ratio = match (&row.ratio, row.fastest) {
                (Some((label, v)), Some(fastest)) => {
                    format!("**{fastest:.2}** fastest rounds, {v:.2} medians ({label})")
                }
                (Some((label, v)), None) => format!("{v:.2} ({label})"),
                _ => "—".into(),
            };
            let (target, met) = match &row.target {
                Some((t, ok)) => (t.clone(), if *ok { "yes" } else { "**no**" }.to_string()),
                None => ("—".into(), "—".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {fij} | {peer} | {ratio} | {target} | {met} |",
                row.measurement
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Syscall figures: ns per `getppid` of `fij-syscall-loop` (pinned to CPU {}), the \
             fastest of 100 chunks of a {}-call loop ({} under strace, a quarter for the \
             16-fault row); overhead = that minus the mean of the baselines measured right \
             before and after it; median (min–max) over {} rounds. \
             Scale rows: the target set is filled with fake pids (above `pid_max`) before the \
             loop starts; the faults beyond the first are on syscalls the loop does not make. \
             Pipe round trips: the fastest of 100 chunks, with nothing, the floor program, an \
             empty bpftrace program on `syscalls:sys_enter_openat` (which neither side calls), \
             or fij running a campaign on another process (its sys_enter program attached). Kill latency: {} runs \
             per row, nearest-rank percentiles; the loop is pinned to CPU {}, fij (with \
             `taskset`) to another CPU or to the same one: there, fij's own wake-up for the \
             injection event competes with the dying target; bpftrace's `signal(\"KILL\")` on \
             the same 1000th getppid, from its hit's `nsecs` to the exit's. Load average before / \
             after: {} / {}; `kernel.bpf_stats_enabled` was on during {} of {} syscall measurements. \
             Measurements repeated because \
             another program was on sys_enter: {}; kept despite one: {}.",
            cfg.cpu,
            cfg.loop_calls,
            cfg.strace_calls,
            cfg.reps,
            cfg.kill_runs,
            cfg.cpu,
            bench.load_before,
            self.load_after,
            bench.stats_on,
            bench.measurements,
            bench.disturbed,
            bench.unclean
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Ratios of the syscall rows: **in bold, from each configuration's fastest round** (its \
             minimum minus the minimum of its part's baselines), which the targets are checked \
             against; beside it, the ratio of the medians of the per-round overheads. This VM's \
             syscall speed switches between two states for seconds at a time (the baseline \
             alone spans the range below), more often than a round takes, so a round's overhead \
             can mix states and the medians move by ±30 % between runs of the same code; every \
             configuration's fastest round is measured in the fast state."
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "| absolute ns/syscall | median | min | max |");
        let _ = writeln!(s, "|---|---|---|---|");
        for (name, what) in self.absolute_rows() {
            let v = self.abs(name);
            let _ = writeln!(
                s,
                "| {what} | {:.1} | {:.1} | {:.1} |",
                v.median(),
                v.min(),
                v.max()
            );
        }
        s
    }

    /// bench/results.json: everything of the markdown report, with every sample.
    fn json(&self, bench: &Bench, took: Duration) -> Result<String> {
        let cfg = &bench.cfg;
        let rows = self
            .rows(cfg)
            .iter()
            .map(|row| RowJson {
                measurement: row.measurement.clone(),
                unit: row.unit,
                fij: SamplesJson::of(&row.fij),
                p50: row.percentiles.then(|| rounded(row.fij.percentile(50.0))),
                p99: row.percentiles.then(|| rounded(row.fij.percentile(99.0))),
                peer_name: row.peer.as_ref().map(|_| row.peer_name.clone()),
                peer: row.peer.as_ref().map(SamplesJson::of),
                ratio_label: row.ratio.as_ref().map(|(label, _)| label.clone()),
                ratio: row.ratio.as_ref().map(|(_, v)| rounded(*v)),
                ratio_of_fastest_rounds: row.fastest.map(rounded),
                target: row.target.as_ref().map(|(t, _)| t.clone()),
                met: row.target.as_ref().map(|(_, ok)| *ok),
            })
            .collect();
        let results = ResultsJson {
            machine: machine(),
            kernel: kernel(),
            date: date(),
            command: format!(
                "cargo xtask bench{}",
                if cfg.quick { " --quick" } else { "" }
            ),
            seconds: rounded(took.as_secs_f64()),
            config: ConfigJson {
                rounds: cfg.reps,
                loop_calls: cfg.loop_calls,
                strace_calls: cfg.strace_calls,
                kill_runs: cfg.kill_runs,
                cpu: cfg.cpu,
                scale_targets: cfg.scale_targets,
                scale_faults: cfg.scale_faults,
                round_trips: cfg.round_trips,
            },
            load_before: bench.load_before.clone(),
            load_after: self.load_after.clone(),
            measurements_with_bpf_stats_enabled: bench.stats_on,
            syscall_measurements: bench.measurements,
            repeated_measurements: bench.disturbed,
            unclean_measurements: bench.unclean,
            rows,
            absolute_ns_per_syscall: InOrder(
                self.absolute_rows()
                    .into_iter()
                    .map(|(name, _)| (name, SamplesJson::of(&self.abs(name))))
                    .collect(),
            ),
            kill_latency_us: KillLatencyJson {
                fij_on_another_cpu: SamplesJson::of(&self.kill_other_us),
                fij_on_the_targets_cpu: SamplesJson::of(&self.kill_same_us),
                bpftrace_signal: SamplesJson::of(&self.kill_bpftrace_us),
                time_trigger_ms: SamplesJson::of(&self.time_kill_ms),
            },
        };
        Ok(serde_json::to_string_pretty(&results)? + "\n")
    }
}

/// bench/results.json. Figures are rounded to 3 decimals; one that could not be measured (NaN)
/// is `null`.
#[derive(Serialize)]
struct ResultsJson {
    machine: String,
    kernel: String,
    date: String,
    command: String,
    /// How long the measurements took.
    seconds: f64,
    config: ConfigJson,
    load_before: String,
    load_after: String,
    measurements_with_bpf_stats_enabled: usize,
    syscall_measurements: usize,
    repeated_measurements: usize,
    unclean_measurements: usize,
    rows: Vec<RowJson>,
    absolute_ns_per_syscall: InOrder<SamplesJson>,
    kill_latency_us: KillLatencyJson,
}

/// The sizes of the run ([`Config`]).
#[derive(Serialize)]
struct ConfigJson {
    rounds: usize,
    loop_calls: u64,
    strace_calls: u64,
    kill_runs: usize,
    cpu: usize,
    scale_targets: usize,
    scale_faults: usize,
    round_trips: u64,
}

/// One line of the results table ([`Row`]).
#[derive(Serialize)]
struct RowJson {
    measurement: String,
    unit: &'static str,
    fij: SamplesJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<SamplesJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio_of_fastest_rounds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    met: Option<bool>,
}

#[derive(Serialize)]
struct KillLatencyJson {
    fij_on_another_cpu: SamplesJson,
    fij_on_the_targets_cpu: SamplesJson,
    bpftrace_signal: SamplesJson,
    time_trigger_ms: SamplesJson,
}

/// A measurement's figures over the rounds.
#[derive(Serialize)]
struct SamplesJson {
    median: f64,
    min: f64,
    max: f64,
    samples: Vec<f64>,
}

impl SamplesJson {
    fn of(s: &Samples) -> Self {
        Self {
            median: rounded(s.median()),
            min: rounded(s.min()),
            max: rounded(s.max()),
            samples: s.0.iter().copied().map(rounded).collect(),
        }
    }
}

/// A JSON object with its keys in the order given.
struct InOrder<V>(Vec<(&'static str, V)>);

impl<V: Serialize> Serialize for InOrder<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, value)))
    }
}

/// `x` rounded to 3 decimals (NaN stays NaN, written `null`).
fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(crate) fn machine() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let hypervisor = cpuinfo.contains(" hypervisor");
    format!(
        "{model}, {cpus} CPUs{}",
        if hypervisor { " (virtual machine)" } else { "" }
    )
}

pub(crate) fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn bpf_stats() -> String {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn date() -> String {
    cmd::query(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .ok()
        .flatten()
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown date".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics() {
        let s = Samples(vec![5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.median(), 3.0);
        assert_eq!((s.min(), s.max()), (1.0, 5.0));
        assert_eq!(s.percentile(50.0), 3.0);
        assert_eq!(s.percentile(99.0), 5.0);
        assert_eq!(Samples(vec![1.0, 2.0]).median(), 1.5);
    }

    #[test]
    fn parses_the_loop_line() {
        let run = parse_loop(
            "start_monotonic_ns=42 ns_per_syscall=250.5 best_chunk_ns_per_syscall=200.25 \
             calls=10 total_ns=2505\n",
        )
        .unwrap();
        assert_eq!((run.mean, run.best, run.start_ns), (250.5, 200.25, 42));
    }

    /// A log as fij writes it: a kill on the 1000th getppid.
    const KILL_LOG: &str = concat!(
        r#"{"event":"start","seed":1,"scenario":"/tmp/kill.toml","start_ktime_ns":100,"targets":[{"name":"loop","instance":0,"pid":7,"spawned":true}]}"#,
        "\n",
        r#"{"event":"injection","t_ns":5,"ktime_ns":1000,"fault":"kill-1000th","target":"loop","pid":7,"tid":7,"instance":0,"hit":1000,"syscall":"getppid","trigger":"getppid","signal":"SIGKILL","by":"kernel","delivered":true}"#,
        "\n",
        r#"{"event":"exit","t_ns":9,"ktime_ns":3500,"target":"loop","pid":7,"signal":"SIGKILL"}"#,
        "\n",
        r#"{"event":"end","t_ns":10,"reason":"targets_exited","injections":1,"failed_injections":0,"exits":1,"events_lost":0}"#,
        "\n",
    );

    #[test]
    fn kill_latency_is_injection_to_exit_of_the_same_pid() {
        assert_eq!(kill_latency_ns(&Log::parse(KILL_LOG)).unwrap(), 2500);
        let other_pid = KILL_LOG.replace(r#""pid":7,"signal""#, r#""pid":8,"signal""#);
        assert!(kill_latency_ns(&Log::parse(&other_pid)).is_err());
        let no_exit: String = KILL_LOG.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert!(kill_latency_ns(&Log::parse(&no_exit)).is_err());
    }

    #[test]
    fn time_kill_is_scheduled_time_to_exit() {
        let timed = KILL_LOG.replace(
            r#""delivered":true"#,
            r#""scheduled_t_ns":4,"late_ns":1,"delivered":true"#,
        );
        assert_eq!(time_kill_ns(&Log::parse(&timed)).unwrap(), 5);
        // A counted trigger has no scheduled time.
        assert!(time_kill_ns(&Log::parse(KILL_LOG)).is_err());
    }

    #[test]
    fn results_json_keeps_its_keys_in_order_and_writes_nan_as_null() {
        let object = InOrder(vec![
            ("b", SamplesJson::of(&Samples(vec![1.23456, 2.0]))),
            ("a", SamplesJson::of(&Samples::default())),
        ]);
        assert_eq!(
            serde_json::to_string(&object).unwrap(),
            r#"{"b":{"median":1.617,"min":1.235,"max":2.0,"samples":[1.235,2.0]},"a":{"median":null,"min":null,"max":null,"samples":[]}}"#
        );
    }
}
