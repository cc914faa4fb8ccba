//! The soak run (issue 18): seeded, randomized campaigns, each checked exactly. One
//! implementation for `cargo xtask soak` (minutes, writes `bench/soak.md`) and the short
//! privileged test `tests/it/soak.rs` (a few campaigns).
//!
//! Each campaign is one or two targets of `fij-workload` (`write-lines`, with or without a bound
//! UDP socket, or `fork`; spawned with 1–4 instances, or adopted by pid) with one fault each on
//! `write`: `kill`, `crash`, `stop`, `partition`, `signal` SIGWINCH (ignored by default, so a
//! process can take many) or SIGTERM; `nth`, `every`, `probability`, `count`, per process or per
//! target. While it runs, bystanders run beside it: short-lived `/bin/true` and shells (`exit 3`)
//! one after the other, and a long-lived `fij-workload` writer. One campaign in five has fij
//! SIGKILLed, one in five SIGTERMed, at a random moment from 0 to 400 ms after it was spawned
//! (during its start or its run).
//!
//! What is checked:
//!
//! - every injection against `fij plan --json` for the campaign's seed: its hit is one the plan
//!   fires on, with the plan's draw and signal, delivered. For campaigns that end by themselves
//!   the injections are checked exactly: the hits of each process (per process) or of the target
//!   (per target) are those the plan fires on among the writes that happened, and each target
//!   process's exit is the fault's signal if it took a lethal injection, code 0 otherwise;
//! - every bystander's exit status (`/bin/true` 0, the shell 3, the writer 0 with all its lines);
//! - after every fij exit, what fij may leave behind ([`crate::leftovers`]): `fij_*` programs,
//!   their links, tc/tcx filters and cgroup programs, silenced tuples, new entries in bpffs and in
//!   `/run/fij` beyond the layout cache (polled for [`cleanup_timeout`], since the kernel frees
//!   programs asynchronously), and processes of the campaign that are stopped or hold BPF file
//!   descriptors. The campaign's processes are found by an environment entry fij is started with
//!   (`FIJ_SOAK_CAMPAIGN=…`), which the children it forks and its targets inherit.
//!
//! After the check, the soak ends whatever the campaign left (SIGCONT and SIGKILL to its
//! processes) so one campaign's leftovers do not count again in the next.
//!
//! Pid reuse: [`PidMaxLowered`] lowers `/proc/sys/kernel/pid_max` for the soak's duration (and
//! restores it when dropped, also on a panic, and on SIGINT, SIGTERM or SIGHUP), so that pids
//! come round quickly; the report counts the bystanders that got the pid of a target that had
//! exited earlier.
use std::{
    collections::{BTreeMap, HashMap},
    fmt::{self, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use fij_common::log::{EndReason, Record, monotonic_ns};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde_json::Value;

use crate::{
    Ended, Fij, FijOutput, Log, TempDir, cleanup_timeout, leftovers, leftovers::Snapshot,
    numbered_lines, process_state, read_lines, toml_array, wait_child,
};

/// The environment entry's name that marks the processes of one campaign.
const MARKER: &str = "FIJ_SOAK_CAMPAIGN";

/// What one soak run does.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// Seed of the soak's own stream (scenarios, fij seeds, kill moments).
    pub seed: u64,
    /// The `fij` binary.
    pub fij: PathBuf,
    /// The `fij-workload` binary of the tests crate.
    pub workload: PathBuf,
    /// No campaign starts after this long.
    pub run_for: Duration,
    /// No campaign starts after this many.
    pub max_campaigns: usize,
    /// The value `pid_max` is lowered to for the soak, if any.
    pub pid_max: Option<u32>,
}

/// One finding, in the campaign it was found.
#[derive(Clone, Debug)]
pub struct Finding {
    pub campaign: usize,
    /// The kind, as counted in [`SoakReport::findings`].
    pub kind: String,
    pub what: String,
}

/// The counts of a soak run.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub seed: u64,
    pub campaigns: usize,
    /// Campaigns per way fij ended: "ended by itself", "SIGKILLed", "SIGTERMed".
    pub fij_ends: BTreeMap<String, usize>,
    /// Campaigns per action of their faults (a campaign with two faults counts twice).
    pub faults_by_action: BTreeMap<String, usize>,
    /// Faults counted per process / per target.
    pub faults_per_process: usize,
    pub faults_per_target: usize,
    /// Target processes in the logs (spawned, adopted, forked).
    pub target_processes: usize,
    /// Injections checked exactly (campaigns that ended by themselves) and checked against the
    /// plan's hits only (campaigns whose fij was killed).
    pub injections_exact: usize,
    pub injections_in_plan: usize,
    /// Injections per action.
    pub injections_by_action: BTreeMap<String, usize>,
    /// Bystanders per kind, and how many ended as expected.
    pub bystanders: BTreeMap<String, (usize, usize)>,
    /// Bystanders whose pid had been a target's (that had exited) before they started.
    pub bystanders_on_recycled_target_pids: usize,
    /// How far pids came round: the pid_max in force (None: not lowered).
    pub pid_max: Option<u32>,
    /// Every leftover and every failed check, by kind.
    pub findings: Vec<Finding>,
    pub elapsed: Duration,
    /// Where the files of the campaigns with findings are kept (scenario, log, bystander's
    /// file), if any had findings.
    pub kept: Option<PathBuf>,
    /// How fij ended in each campaign with findings (with the soak's signal and its moment).
    pub fij_end_of: BTreeMap<usize, String>,
}

impl SoakReport {
    pub fn injections_checked(&self) -> usize {
        self.injections_exact + self.injections_in_plan
    }

    /// Findings per kind.
    pub fn findings_by_kind(&self) -> BTreeMap<&str, usize> {
        let mut kinds = BTreeMap::new();
        for f in &self.findings {
            *kinds.entry(f.kind.as_str()).or_default() += 1;
        }
        kinds
    }

    /// Whether every check passed and nothing was left behind.
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The report as markdown: the counts table, then every finding.
    pub fn markdown(&self, command: &str, machine: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Soak run\n");
        let _ = writeln!(
            s,
            "Command `{command}`; {machine}; seed {}; {} campaigns in {:.0} s.\n",
            self.seed,
            self.campaigns,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(s, "| what | count |\n|---|---|");
        let _ = writeln!(
            s,
            "| injections checked against `fij plan --json` | **{}** |",
            self.injections_checked()
        );
        let _ = writeln!(
            s,
            "| … exactly (campaign ended by itself: every process's hits = the plan's) | {} |",
            self.injections_exact
        );
        let _ = writeln!(
            s,
            "| … hit and draw in the plan (fij SIGKILLed or SIGTERMed) | {} |",
            self.injections_in_plan
        );
        for (action, n) in &self.injections_by_action {
            let _ = writeln!(s, "| injections by `{action}` | {n} |");
        }
        let _ = writeln!(s, "| campaigns | {} |", self.campaigns);
        for (end, n) in &self.fij_ends {
            let _ = writeln!(s, "| campaigns where fij {end} | {n} |");
        }
        for (action, n) in &self.faults_by_action {
            let _ = writeln!(s, "| faults with action `{action}` | {n} |");
        }
        let _ = writeln!(
            s,
            "| faults counted per process / per target | {} / {} |",
            self.faults_per_process, self.faults_per_target
        );
        let _ = writeln!(
            s,
            "| target processes (spawned, adopted, forked) | {} |",
            self.target_processes
        );
        for (kind, (n, ok)) in &self.bystanders {
            let _ = writeln!(s, "| bystanders: {kind} (ended as expected) | {n} ({ok}) |");
        }
        let _ = writeln!(
            s,
            "| bystanders that got the pid of a target that had exited | {} |",
            self.bystanders_on_recycled_target_pids
        );
        let _ = writeln!(
            s,
            "| pid_max during the soak | {} |",
            self.pid_max
                .map_or("not lowered".to_owned(), |p| p.to_string())
        );
        let by_kind = self.findings_by_kind();
        let _ = writeln!(
            s,
            "| **leftovers and failed checks found** | **{}** |",
            self.findings.len()
        );
        for kind in leftovers::KINDS.iter().chain(CHECK_KINDS.iter()) {
            let _ = writeln!(
                s,
                "| … {kind} | {} |",
                by_kind.get(kind).copied().unwrap_or(0)
            );
        }
        if !self.findings.is_empty() {
            let _ = writeln!(s, "\n## Campaigns with findings\n");
            let _ = writeln!(
                s,
                "| campaign | how fij ended | findings by kind |\n|---|---|---|"
            );
            let mut campaigns: BTreeMap<usize, BTreeMap<&str, usize>> = BTreeMap::new();
            for f in &self.findings {
                *campaigns
                    .entry(f.campaign)
                    .or_default()
                    .entry(f.kind.as_str())
                    .or_default() += 1;
            }
            for (campaign, kinds) in campaigns {
                let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
                let how = self.fij_end_of.get(&campaign).map_or("?", String::as_str);
                let _ = writeln!(s, "| {campaign} | {how} | {} |", kinds.join("; "));
            }
            let _ = writeln!(s, "\n## Findings\n");
            if let Some(dir) = &self.kept {
                let _ = writeln!(
                    s,
                    "The files of these campaigns (scenario, log) were kept in {}.\n",
                    dir.display()
                );
            }
            for f in &self.findings {
                let _ = writeln!(s, "- campaign {}: {}: {}", f.campaign, f.kind, f.what);
            }
        }
        s
    }
}

/// The kinds of findings other than leftover kernel objects and files ([`leftovers::KINDS`]).
pub const CHECK_KINDS: [&str; 7] = [
    "stopped campaign processes after fij exited",
    "campaign processes holding BPF fds after fij exited",
    "injections that differ from the plan",
    "target exits that differ from the injections",
    "bystanders hit or ended otherwise",
    "log problems (events lost, failed injections, end reason)",
    "fij runs that did not end (SIGKILLed by the soak)",
];

/// How long a campaign's fij may run before the soak counts it as hung and SIGKILLs it: far
/// more than any campaign takes (well under a second of writes, 5 ms actions).
const FIJ_LIMIT: Duration = Duration::from_secs(30);

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.markdown("soak", "this machine"))
    }
}

// ---------------------------------------------------------------------------------------------
// pid_max.

/// `/proc/sys/kernel/pid_max`, lowered for as long as this lives.
pub struct PidMaxLowered {
    saved: u32,
    previous_handlers: Vec<(i32, libc::sighandler_t)>,
}

const PID_MAX: &str = "/proc/sys/kernel/pid_max";

/// The saved value as text, for the signal handler (which may not allocate).
static SAVED_TEXT: Mutex<[u8; 16]> = Mutex::new([0; 16]);
static SAVED_BYTES: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn read_pid_max() -> u32 {
    std::fs::read_to_string(PID_MAX)
        .unwrap_or_else(|e| panic!("reading {PID_MAX}: {e}"))
        .trim()
        .parse()
        .expect("pid_max is a number")
}

fn write_pid_max(value: u32) {
    std::fs::write(PID_MAX, value.to_string())
        .unwrap_or_else(|e| panic!("writing {value} to {PID_MAX}: {e}"));
}

/// Restores the saved pid_max (open/write/close only: async-signal-safe), then dies of `sig`.
extern "C" fn restore_and_reraise(sig: libc::c_int) {
    let len = SAVED_BYTES[0].load(Ordering::SeqCst);
    let ptr = SAVED_BYTES[1].load(Ordering::SeqCst) as *const u8;
    // SAFETY: ptr/len describe the static buffer written before the handler was installed;
    // open, write, close, signal and raise are async-signal-safe.
    unsafe {
        let fd = libc::open(c"/proc/sys/kernel/pid_max".as_ptr(), libc::O_WRONLY);
        if fd >= 0 {
            libc::write(fd, ptr.cast(), len);
            libc::close(fd);
        }
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

impl PidMaxLowered {
    /// Lowers pid_max to `to` (if it is higher) until dropped.
    pub fn lower(to: u32) -> PidMaxLowered {
        let saved = read_pid_max();
        {
            let mut text = SAVED_TEXT.lock().unwrap();
            let s = saved.to_string();
            text[..s.len()].copy_from_slice(s.as_bytes());
            SAVED_BYTES[0].store(s.len(), Ordering::SeqCst);
            SAVED_BYTES[1].store(text.as_ptr() as usize, Ordering::SeqCst);
        }
        let previous_handlers = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .into_iter()
            .map(|sig| {
                // SAFETY: installing a handler that only makes async-signal-safe calls.
                let old = unsafe {
                    libc::signal(
                        sig,
                        restore_and_reraise as extern "C" fn(libc::c_int) as libc::sighandler_t,
                    )
                };
                (sig, old)
            })
            .collect();
        if to < saved {
            write_pid_max(to);
        }
        PidMaxLowered {
            saved,
            previous_handlers,
        }
    }

    pub fn saved(&self) -> u32 {
        self.saved
    }
}

impl Drop for PidMaxLowered {
    fn drop(&mut self) {
        write_pid_max(self.saved);
        for &(sig, old) in &self.previous_handlers {
            // SAFETY: putting back the handler that was there before.
            unsafe { libc::signal(sig, old) };
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Campaign generation.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Kill,
    Crash,
    Stop,
    Partition,
    Winch,
    Term,
}

impl Action {
    /// Whether the process dies of it.
    fn lethal(self) -> bool {
        matches!(self, Action::Kill | Action::Crash | Action::Term)
    }

    fn name(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Crash => "crash",
            Action::Stop => "stop",
            Action::Partition => "partition",
            Action::Winch => "signal SIGWINCH",
            Action::Term => "signal SIGTERM",
        }
    }

    /// The fault's action keys.
    fn toml(self) -> &'static str {
        match self {
            Action::Kill => "action = \"kill\"",
            Action::Crash => "action = \"crash\"\nrecover_after = \"5ms\"",
            Action::Stop => "action = \"stop\"\nresume_after = \"5ms\"",
            Action::Partition => "action = \"partition\"\nduration = \"5ms\"",
            Action::Winch => "action = \"signal\"\nsignal = \"SIGWINCH\"",
            Action::Term => "action = \"signal\"\nsignal = \"SIGTERM\"",
        }
    }
}

#[derive(Clone, Debug)]
enum Program {
    /// `write-lines /dev/null N [--sleep-ms 1] [--udp]`: N writes.
    Lines { n: u64, sleep: bool, udp: bool },
    /// `fork /dev/null /dev/null`: 2 writes, then a child that makes 2 writes.
    Fork,
}

impl Program {
    /// Writes of one instance (all its processes), if no injection kills one.
    fn writes_per_instance(&self) -> u64 {
        match self {
            Program::Lines { n, .. } => *n,
            Program::Fork => 4,
        }
    }

    /// Writes of each process.
    fn writes_per_process(&self) -> u64 {
        match self {
            Program::Lines { n, .. } => *n,
            Program::Fork => 2,
        }
    }

    fn args(&self, adopted_go: Option<&Path>) -> Vec<String> {
        match self {
            Program::Lines { n, sleep, udp } => {
                let mut a = vec!["write-lines".into(), "/dev/null".into(), n.to_string()];
                if *sleep {
                    a.extend(["--sleep-ms".into(), "1".into()]);
                }
                if *udp {
                    a.push("--udp".into());
                }
                if let Some(go) = adopted_go {
                    a.extend(["--wait-for".into(), go.display().to_string()]);
                }
                a
            }
            Program::Fork => vec!["fork".into(), "/dev/null".into(), "/dev/null".into()],
        }
    }
}

#[derive(Clone, Debug)]
struct FaultSpec {
    action: Action,
    nth: Option<u64>,
    every: Option<u64>,
    probability: Option<f64>,
    count: u64,
    per_target: bool,
}

#[derive(Clone, Debug)]
struct TargetSpec {
    name: String,
    program: Program,
    /// None: adopted by pid.
    instances: Option<u32>,
    fault: FaultSpec,
}

impl TargetSpec {
    fn instances(&self) -> u64 {
        self.instances.unwrap_or(1) as u64
    }
}

/// How the soak ends fij.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FijEnd {
    ByItself,
    Signal(i32, Duration),
}

/// `action`, or on a kernel without tcx (before 6.6), which refuses `crash` and `partition`,
/// `kill` for a crash and `stop` for a partition: the soak checks fij on the kernel it has. Each
/// pair takes the same branches of the generator, so a seed draws the same campaigns otherwise.
fn on_this_kernel(action: Action) -> Action {
    static TOLD: std::sync::Once = std::sync::Once::new();
    if !matches!(action, Action::Crash | Action::Partition) || crate::tcx::kernel_has_tcx() {
        return action;
    }
    TOLD.call_once(|| {
        println!(
            "soak: this kernel has no tcx (needed by crash and partition): kill and stop in              their place"
        )
    });
    match action {
        Action::Crash => Action::Kill,
        _ => Action::Stop,
    }
}

fn generate_target(rng: &mut ChaCha20Rng, index: usize, adopted: bool) -> TargetSpec {
    let program = if adopted || rng.random_bool(0.75) {
        Program::Lines {
            n: rng.random_range(20..=400),
            sleep: rng.random_bool(0.3),
            udp: rng.random_bool(0.4),
        }
    } else {
        Program::Fork
    };
    let instances = (!adopted).then(|| rng.random_range(1..=4u32));
    let action = match rng.random_range(0..100) {
        0..40 => Action::Winch,
        40..54 => Action::Kill,
        54..64 => Action::Crash,
        64..74 => Action::Stop,
        74..86 => Action::Partition,
        _ => Action::Term,
    };
    let action = on_this_kernel(action);
    let per_target = rng.random_bool(0.3);
    let writes = program.writes_per_process();
    let (nth, every) = if action.lethal() && per_target {
        // One eligible hit only: which process takes it does not change which hits happen.
        (
            Some(rng.random_range(1..=writes * instances.unwrap_or(1) as u64)),
            None,
        )
    } else if matches!(action, Action::Stop | Action::Partition) {
        // Each takes ~5 ms and a /proc read: a few per process.
        (
            Some(rng.random_range(1..=writes)),
            Some(rng.random_range(10..=40)),
        )
    } else {
        (
            rng.random_bool(0.5).then(|| rng.random_range(1..=writes)),
            rng.random_bool(0.5).then(|| rng.random_range(1..=20)),
        )
    };
    let probability = rng
        .random_bool(0.4)
        .then(|| [0.02, 0.1, 0.3, 0.5, 0.9, 1.0][rng.random_range(0..6)]);
    TargetSpec {
        name: format!("t{index}"),
        program,
        instances,
        fault: FaultSpec {
            action,
            nth,
            every,
            probability,
            count: 1, // set once the plan is known (the plan's fires do not depend on it)
            per_target,
        },
    }
}

fn scenario_text(
    seed: u64,
    targets: &[TargetSpec],
    workload: &Path,
    adopted_pid: Option<u32>,
) -> String {
    let mut s = format!("seed = {seed}\n");
    for t in targets {
        let _ = writeln!(s, "\n[[target]]\nname = \"{}\"", t.name);
        match t.instances {
            Some(n) => {
                let mut argv = vec![workload.display().to_string()];
                argv.extend(t.program.args(None));
                let _ = writeln!(s, "command = {}\ninstances = {n}", toml_array(&argv));
            }
            None => {
                let _ = writeln!(s, "pid = {}", adopted_pid.expect("an adopted pid"));
            }
        }
    }
    for t in targets {
        let f = &t.fault;
        let _ = writeln!(
            s,
            "\n[[fault]]\nname = \"f-{}\"\ntarget = \"{}\"\n{}\ntrigger = {{ syscall = \"write\" }}\ncount = {}\nper = \"{}\"",
            t.name,
            t.name,
            f.action.toml(),
            f.count,
            if f.per_target { "target" } else { "process" }
        );
        if let Some(n) = f.nth {
            let _ = writeln!(s, "nth = {n}");
        }
        if let Some(n) = f.every {
            let _ = writeln!(s, "every = {n}");
        }
        if let Some(p) = f.probability {
            let _ = writeln!(s, "probability = {p:?}");
        }
    }
    s
}

/// The plan of one fault: the hits it fires on (uncapped), with their draws, and its signal.
#[derive(Clone, Debug, Default)]
struct PlannedFault {
    fires: Vec<(u64, Option<u64>)>,
    signal: String,
}

impl PlannedFault {
    fn hits_up_to(&self, last: u64) -> Vec<u64> {
        self.fires
            .iter()
            .map(|&(h, _)| h)
            .filter(|&h| h <= last)
            .collect()
    }
}

fn plan(fij: &Path, scenario: &Path, seed: u64, hits: u64) -> BTreeMap<String, PlannedFault> {
    let out = Fij::new_command(&[
        &"plan",
        &scenario,
        &"--seed",
        &seed.to_string(),
        &"--json",
        &"--hits",
        &hits.to_string(),
    ])
    .bin(fij)
    .command()
    .output()
    .expect("running fij plan");
    assert!(
        out.status.success(),
        "fij plan {} failed: {}",
        scenario.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).expect("fij plan --json prints JSON");
    plan["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .map(|f| {
            let fires = f["fires"]
                .as_array()
                .expect("fires")
                .iter()
                .map(|h| (h["hit"].as_u64().expect("hit"), h["draw"].as_u64()))
                .collect();
            (
                f["fault"].as_str().expect("fault").to_owned(),
                PlannedFault {
                    fires,
                    signal: f["signal"].as_str().expect("signal").to_owned(),
                },
            )
        })
        .collect()
}

/// The injections a fault makes in a campaign that runs to its end, uncapped: per process, the
/// hits of each process (`per = "process"`; all processes of a target run the same program),
/// or the hits of the target's one counter.
fn expected_uncapped(t: &TargetSpec, planned: &PlannedFault) -> (Vec<u64>, u64) {
    let f = &t.fault;
    let instances = t.instances();
    if f.per_target {
        let hits = planned.hits_up_to(instances * t.program.writes_per_instance());
        let hits = if f.action.lethal() {
            hits.into_iter().take(1).collect()
        } else {
            hits
        };
        let n = hits.len() as u64;
        (hits, n)
    } else {
        let hits = planned.hits_up_to(t.program.writes_per_process());
        let hits: Vec<u64> = if f.action.lethal() {
            hits.into_iter().take(1).collect()
        } else {
            hits
        };
        // Processes: each instance's, plus its child for `fork` unless the parent died first.
        let processes = match t.program {
            Program::Fork if f.action.lethal() && !hits.is_empty() => instances,
            Program::Fork => 2 * instances,
            Program::Lines { .. } => instances,
        };
        let n = hits.len() as u64 * processes;
        (hits, n)
    }
}

// ---------------------------------------------------------------------------------------------
// Bystanders.

#[derive(Default)]
struct Bystanders {
    /// kind → (started, ended as expected)
    counts: BTreeMap<String, (usize, usize)>,
    /// (pid, monotonic ns at spawn)
    pids: Vec<(u32, u64)>,
    failures: Vec<String>,
}

impl Bystanders {
    fn record(&mut self, kind: &str, pid: u32, spawned_ns: u64, ok: Result<(), String>) {
        let entry = self.counts.entry(kind.to_owned()).or_default();
        entry.0 += 1;
        self.pids.push((pid, spawned_ns));
        match ok {
            Ok(()) => entry.1 += 1,
            Err(e) => self.failures.push(format!("{kind} pid {pid}: {e}")),
        }
    }
}

/// Runs short-lived bystanders one after the other until `stop` is set.
fn short_lived_bystanders(stop: Arc<AtomicBool>, out: Arc<Mutex<Bystanders>>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let (kind, mut command, expected) = if i.is_multiple_of(4) {
            let mut c = Command::new("/bin/sh");
            c.args([
                "-c",
                "i=0; while [ $i -lt 3 ]; do echo $i >/dev/null; i=$((i+1)); done; exit 3",
            ]);
            ("shell `exit 3`", c, Ended::Code(3))
        } else {
            ("/bin/true", Command::new("/bin/true"), Ended::Code(0))
        };
        let spawned_ns = monotonic_ns();
        let mut child = match command.stdin(Stdio::null()).env_remove(MARKER).spawn() {
            Ok(child) => child,
            Err(e) => {
                out.lock()
                    .unwrap()
                    .failures
                    .push(format!("{kind}: cannot spawn: {e}"));
                continue;
            }
        };
        let pid = child.id();
        let ended = wait_child(&mut child, Duration::from_secs(30), kind);
        let ok = (ended == expected)
            .then_some(())
            .ok_or_else(|| format!("ended {ended:?}, expected {expected:?}"));
        out.lock().unwrap().record(kind, pid, spawned_ns, ok);
        thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Soak {
    cfg: SoakConfig,
    rng: ChaCha20Rng,
    report: SoakReport,
    dir: TempDir,
    /// The snapshot of the machine before the soak: what was there is not fij's.
    baseline: Snapshot,
    /// pid → monotonic ns of the latest exit of a target with that pid.
    target_exits: HashMap<u32, u64>,
}

/// Runs the soak and returns its counts; findings are in the report, not panics (a panic means
/// the soak itself could not go on: fij hung past its timeout, a tool is missing).
pub fn run(cfg: SoakConfig) -> SoakReport {
    let started = Instant::now();
    let pid_max = cfg.pid_max.map(PidMaxLowered::lower);
    let mut soak = Soak {
        rng: ChaCha20Rng::seed_from_u64(cfg.seed),
        report: SoakReport {
            seed: cfg.seed,
            pid_max: cfg
                .pid_max
                .map(|p| p.min(pid_max.as_ref().map_or(p, PidMaxLowered::saved))),
            ..SoakReport::default()
        },
        dir: TempDir::new("soak"),
        baseline: Snapshot::take(),
        target_exits: HashMap::new(),
        cfg,
    };
    while soak.report.campaigns < soak.cfg.max_campaigns && started.elapsed() < soak.cfg.run_for {
        soak.campaign(soak.report.campaigns);
        soak.report.campaigns += 1;
        if soak.report.campaigns.is_multiple_of(25) {
            eprintln!(
                "soak: {} campaigns, {} injections checked, {} findings, {:.0} s",
                soak.report.campaigns,
                soak.report.injections_checked(),
                soak.report.findings.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    drop(pid_max);
    soak.report.elapsed = started.elapsed();
    let Soak {
        dir, mut report, ..
    } = soak;
    if !report.findings.is_empty() {
        report.kept = Some(dir.keep());
    }
    report
}

impl Soak {
    fn finding(&mut self, campaign: usize, kind: &str, what: impl Into<String>) {
        let what = what.into();
        eprintln!("soak: campaign {campaign}: {kind}: {what}");
        self.report.findings.push(Finding {
            campaign,
            kind: kind.to_owned(),
            what,
        });
    }

    fn campaign(&mut self, index: usize) {
        let rng = &mut self.rng;
        let n_targets = if rng.random_bool(0.3) { 2 } else { 1 };
        let adopted_slot = rng.random_bool(0.2).then(|| rng.random_range(0..n_targets));
        let mut targets: Vec<TargetSpec> = (0..n_targets)
            .map(|i| generate_target(rng, i, adopted_slot == Some(i)))
            .collect();
        let fij_seed = rng.random_range(0..i64::MAX as u64);
        let end = match index % 5 {
            1 => FijEnd::Signal(
                libc::SIGKILL,
                Duration::from_millis(rng.random_range(0..=400)),
            ),
            3 => FijEnd::Signal(
                libc::SIGTERM,
                Duration::from_millis(rng.random_range(0..=400)),
            ),
            _ => FijEnd::ByItself,
        };
        let writer_lines: u64 = rng.random_range(50..=150);

        let dir = self.dir.path().join(format!("c{index}"));
        std::fs::create_dir_all(&dir).expect("campaign dir");
        let go = dir.join("go");
        let marker = format!("{MARKER}={}-{index}", std::process::id());

        // The adopted target, started by the soak (marked like fij's processes).
        let workload = self.cfg.workload.clone();
        let adopted: Option<Child> = targets.iter().find(|t| t.instances.is_none()).map(|t| {
            Command::new(&workload)
                .args(t.program.args(Some(&go)))
                .env(MARKER, marker.split_once('=').unwrap().1)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawning the adopted target")
        });
        let adopted_pid = adopted.as_ref().map(Child::id);
        // Reaped as soon as it exits, as a shell would: an unreaped zombie keeps its task (and
        // a crash mark fij waits for) alive.
        let adopted_reaper = adopted.map(|mut child| {
            thread::spawn(move || {
                Ended::from(child.wait().expect("waiting for the adopted target"))
            })
        });

        // The plan, with counts that the scenario's processes cannot exceed (a single process:
        // any count, so the cap is checked too).
        let scenario = dir.join("s.toml");
        let max_hits = targets
            .iter()
            .map(|t| t.instances() * t.program.writes_per_instance())
            .max()
            .unwrap_or(1);
        std::fs::write(
            &scenario,
            scenario_text(fij_seed, &targets, &workload, adopted_pid),
        )
        .unwrap();
        let planned = plan(&self.cfg.fij, &scenario, fij_seed, max_hits);
        for t in &mut targets {
            let (_, uncapped) = expected_uncapped(t, &planned[&format!("f-{}", t.name)]);
            let single_process = t.instances() == 1 && matches!(t.program, Program::Lines { .. });
            t.fault.count = if single_process && !t.fault.per_target {
                self.rng.random_range(1..=uncapped + 1)
            } else {
                uncapped.max(1) + self.rng.random_range(0..=2)
            };
        }
        std::fs::write(
            &scenario,
            scenario_text(fij_seed, &targets, &workload, adopted_pid),
        )
        .unwrap();
        let planned = plan(&self.cfg.fij, &scenario, fij_seed, max_hits);

        for t in &targets {
            *self
                .report
                .faults_by_action
                .entry(t.fault.action.name().to_owned())
                .or_default() += 1;
            if t.fault.per_target {
                self.report.faults_per_target += 1;
            } else {
                self.report.faults_per_process += 1;
            }
        }

        // Bystanders: a long-lived writer, and short-lived ones until fij has exited.
        let writer_file = dir.join("bystander-writer.txt");
        let writer_spawned_ns = monotonic_ns();
        let mut writer = Command::new(&workload)
            .args([
                "write-lines".as_ref(),
                writer_file.as_os_str(),
                writer_lines.to_string().as_ref(),
                "--sleep-ms".as_ref(),
                "2".as_ref(),
            ])
            .env_remove(MARKER)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning the bystander writer");
        let stop = Arc::new(AtomicBool::new(false));
        let bystanders = Arc::new(Mutex::new(Bystanders::default()));
        let short_lived = {
            let (stop, out) = (stop.clone(), bystanders.clone());
            thread::spawn(move || short_lived_bystanders(stop, out))
        };

        let before = Snapshot::take();
        let mut fij = Fij::run_logging_to(&scenario, dir.join("log.jsonl"))
            .bin(&self.cfg.fij)
            .env(MARKER, marker.split_once('=').unwrap().1)
            .timeout(FIJ_LIMIT + Duration::from_secs(30))
            .spawn();
        let spawned = Instant::now();
        let mut go_made = false;
        let mut signalled = false;
        let mut hung = false;
        while fij.running() {
            if spawned.elapsed() > FIJ_LIMIT && !hung {
                // SAFETY: kill on our own child, still unreaped.
                unsafe { libc::kill(fij.pid() as i32, libc::SIGKILL) };
                hung = true;
            }
            if !go_made && adopted_pid.is_some() && fij.log().first("start").is_some() {
                std::fs::write(&go, "").unwrap();
                go_made = true;
            }
            if let FijEnd::Signal(sig, at) = end
                && !signalled
                && spawned.elapsed() >= at
            {
                // SAFETY: kill on our own child, still unreaped.
                unsafe { libc::kill(fij.pid() as i32, sig) };
                signalled = true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let out = fij.finish();
        let findings_before = self.report.findings.len();
        if hung {
            self.finding(
                index,
                CHECK_KINDS[6],
                format!(
                    "fij still running {FIJ_LIMIT:?} after it was spawned: SIGKILLed by the soak"
                ),
            );
        }
        // What fij left: polled while the kernel frees what it held.
        let campaign_pids = leftovers::processes_with_env(&marker);
        let give_up = Instant::now() + cleanup_timeout();
        let left = loop {
            let left = Snapshot::take().new_since(&before);
            if left.is_empty() || Instant::now() > give_up {
                break left;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stopped = leftovers::stopped_processes(&campaign_pids);
        let holders = leftovers::bpf_holders(&campaign_pids);
        let how = match end {
            FijEnd::Signal(libc::SIGKILL, _) if signalled => "was SIGKILLed",
            FijEnd::Signal(_, _) if signalled => "was sent SIGTERM",
            FijEnd::Signal(_, _) => "ended by itself before the soak's signal",
            FijEnd::ByItself => "ended by itself",
        };
        *self.report.fij_ends.entry(how.to_owned()).or_default() += 1;
        let context = match end {
            FijEnd::Signal(_, at) => format!("fij {how}, {} ms after its spawn", at.as_millis()),
            FijEnd::ByItself => format!("fij {how}"),
        };
        for (kind, objects) in left {
            for o in objects {
                self.finding(index, kind, format!("{o} [{context}]"));
            }
        }
        for s in stopped {
            self.finding(index, CHECK_KINDS[0], format!("{s} [{context}]"));
        }
        for h in holders {
            self.finding(index, CHECK_KINDS[1], format!("{h} [{context}]"));
        }

        // End what the campaign left, so the next campaign starts clean.
        if !go_made {
            let _ = std::fs::write(&go, "");
        }
        end_processes(&leftovers::processes_with_env(&marker));
        let give_up = Instant::now() + cleanup_timeout();
        let persisting = loop {
            let left = Snapshot::take().new_since(&self.baseline);
            if left.is_empty() || Instant::now() > give_up {
                break left;
            }
            thread::sleep(Duration::from_millis(20));
        };
        for (kind, objects) in persisting {
            for o in objects {
                self.finding(
                    index,
                    kind,
                    format!("{o}: still there after the soak killed every process of the campaign"),
                );
            }
        }
        let adopted_end = adopted_reaper.map(|r| r.join().expect("the adopted target's reaper"));

        // Bystanders' ends.
        stop.store(true, Ordering::SeqCst);
        short_lived.join().expect("the bystander thread");
        let writer_end = wait_child(&mut writer, Duration::from_secs(60), "the bystander writer");
        let writer_ok = if writer_end != Ended::Code(0) {
            Err(format!("ended {writer_end:?}"))
        } else if read_lines(&writer_file) != numbered_lines(writer_lines) {
            Err(format!("its file does not have lines 1..={writer_lines}"))
        } else {
            Ok(())
        };
        let mut bystanders = std::mem::take(&mut *bystanders.lock().unwrap());
        bystanders.record(
            "fij-workload writer",
            writer.id(),
            writer_spawned_ns,
            writer_ok,
        );

        self.check_log(
            index,
            &targets,
            &planned,
            &out,
            signalled,
            adopted_pid,
            adopted_end,
        );

        // Pid reuse: bystanders started on the pid of a target that had exited.
        for &(pid, spawned_ns) in &bystanders.pids {
            if self
                .target_exits
                .get(&pid)
                .is_some_and(|&exit| exit < spawned_ns)
            {
                self.report.bystanders_on_recycled_target_pids += 1;
            }
        }
        for (kind, (n, ok)) in &bystanders.counts {
            let e = self.report.bystanders.entry(kind.clone()).or_default();
            e.0 += n;
            e.1 += ok;
        }
        for f in std::mem::take(&mut bystanders.failures) {
            self.finding(index, CHECK_KINDS[4], f);
        }
        if self.report.findings.len() != findings_before {
            self.report.fij_end_of.insert(index, context);
        }
        if self.report.findings.len() == findings_before {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            let kept = format!("files: {}", dir.display());
            self.report.findings[findings_before..]
                .iter_mut()
                .for_each(|f| f.what = format!("{} ({kept})", f.what));
        }
    }

    /// Checks the campaign's log against the plan: every injection (hit, draw, signal,
    /// delivered), and for a campaign that ended by itself, exactly the expected injections and
    /// exits.
    #[allow(clippy::too_many_arguments)]
    fn check_log(
        &mut self,
        index: usize,
        targets: &[TargetSpec],
        planned: &BTreeMap<String, PlannedFault>,
        out: &FijOutput,
        fij_signalled: bool,
        adopted_pid: Option<u32>,
        adopted_end: Option<Ended>,
    ) {
        let log: &Log = &out.log;
        let mut problems = Vec::new();
        // Target processes and their exits.
        let mut processes: BTreeMap<u32, String> = BTreeMap::new();
        let mut exits: BTreeMap<u32, (Option<i32>, Option<String>, u64)> = BTreeMap::new();
        // fault → pid → hits
        let mut injected: BTreeMap<String, BTreeMap<u32, Vec<u64>>> = BTreeMap::new();
        let mut lethal_hits: BTreeMap<u32, String> = BTreeMap::new();
        let mut end_record = None;
        for r in log.typed() {
            match r {
                Record::Start { targets: ts, .. } => {
                    for t in ts {
                        processes.insert(t.pid, t.name.clone());
                    }
                }
                Record::Fork { target, pid, .. } => {
                    processes.insert(*pid, target.clone());
                }
                Record::Exit {
                    pid,
                    code,
                    signal,
                    ktime_ns,
                    ..
                } => {
                    exits.insert(*pid, (*code, signal.clone(), *ktime_ns));
                }
                Record::Injection {
                    fault,
                    pid,
                    hit,
                    draw,
                    signal,
                    delivered,
                    error,
                    ..
                } => {
                    let Some(plan) = planned.get(fault) else {
                        problems.push(format!(
                            "injection of a fault not in the plan: {}",
                            r.to_line()
                        ));
                        continue;
                    };
                    let in_plan = plan.fires.iter().any(|&(h, d)| h == *hit && d == *draw);
                    if !in_plan || signal != &plan.signal || !delivered || error.is_some() {
                        problems.push(format!(
                            "not as planned (plan fires on {:?}, signal {}): {}",
                            plan.hits_up_to(u64::MAX)
                                .into_iter()
                                .take(20)
                                .collect::<Vec<_>>(),
                            plan.signal,
                            r.to_line()
                        ));
                    }
                    injected
                        .entry(fault.clone())
                        .or_default()
                        .entry(*pid)
                        .or_default()
                        .push(*hit);
                    let t = targets.iter().find(|t| format!("f-{}", t.name) == *fault);
                    if t.is_some_and(|t| t.fault.action.lethal()) {
                        lethal_hits.insert(*pid, plan.signal.clone());
                    }
                    let action = t.map_or("?", |t| t.fault.action.name());
                    *self
                        .report
                        .injections_by_action
                        .entry(action.to_owned())
                        .or_default() += 1;
                    if fij_signalled {
                        self.report.injections_in_plan += 1;
                    } else {
                        self.report.injections_exact += 1;
                    }
                }
                Record::End { .. } => end_record = Some(r.clone()),
                _ => {}
            }
        }
        self.report.target_processes += processes.len();
        for (&pid, &(_, _, ktime)) in &exits {
            let e = self.target_exits.entry(pid).or_insert(0);
            *e = (*e).max(ktime);
        }
        for p in problems {
            self.finding(index, CHECK_KINDS[2], p);
        }
        if fij_signalled {
            return;
        }

        // Ended by itself: the end record, then the exact injections and exits.
        match end_record {
            Some(Record::End {
                reason,
                injections,
                failed_injections,
                events_lost,
                ..
            }) => {
                let logged: usize = injected
                    .values()
                    .flat_map(|p| p.values())
                    .map(Vec::len)
                    .sum();
                if reason != EndReason::TargetsExited
                    || injections != logged as u64
                    || failed_injections != 0
                    || events_lost != 0
                    || out.ended != Ended::Code(0)
                {
                    self.finding(
                        index,
                        CHECK_KINDS[5],
                        format!(
                            "fij ended {:?}; end record {:?} with {logged} injections logged",
                            out.ended, end_record
                        ),
                    );
                }
            }
            _ => {
                self.finding(
                    index,
                    CHECK_KINDS[5],
                    format!(
                        "no end record; fij ended {:?}; stderr: {}",
                        out.ended, out.stderr
                    ),
                );
                return;
            }
        }
        for t in targets {
            let fault = format!("f-{}", t.name);
            let plan = &planned[&fault];
            let got = injected.remove(&fault).unwrap_or_default();
            let procs: Vec<u32> = processes
                .iter()
                .filter(|(_, n)| **n == t.name)
                .map(|(&p, _)| p)
                .collect();
            let (hits, uncapped) = expected_uncapped(t, plan);
            let count = t.fault.count;
            if t.fault.per_target {
                let mut all: Vec<u64> = got.values().flatten().copied().collect();
                all.sort_unstable();
                let expected: Vec<u64> = hits.iter().copied().take(count as usize).collect();
                if all != expected {
                    self.finding(
                        index,
                        CHECK_KINDS[2],
                        format!(
                            "target {} (per target, {:?}, count {count}): {}",
                            t.name,
                            t.fault,
                            hits_differ(&all, &expected)
                        ),
                    );
                }
            } else if uncapped <= count {
                for &pid in &procs {
                    let mut got_hits = got.get(&pid).cloned().unwrap_or_default();
                    got_hits.sort_unstable();
                    if got_hits != hits {
                        self.finding(
                            index,
                            CHECK_KINDS[2],
                            format!(
                                "target {} pid {pid} (per process, {:?}): {}",
                                t.name,
                                t.fault,
                                hits_differ(&got_hits, &hits)
                            ),
                        );
                    }
                }
                let expected_procs = uncapped / (hits.len().max(1) as u64);
                if !hits.is_empty() && procs.len() as u64 != expected_procs {
                    self.finding(
                        index,
                        CHECK_KINDS[2],
                        format!(
                            "target {}: {} processes in the log, expected {expected_procs}",
                            t.name,
                            procs.len()
                        ),
                    );
                }
            } else {
                // A single process and a binding count: its first `count` planned hits.
                let expected: Vec<u64> = hits.iter().copied().take(count as usize).collect();
                let mut all: Vec<u64> = got.values().flatten().copied().collect();
                all.sort_unstable();
                if all != expected {
                    self.finding(
                        index,
                        CHECK_KINDS[2],
                        format!(
                            "target {} (one process, {:?}, count {count}): {}",
                            t.name,
                            t.fault,
                            hits_differ(&all, &expected)
                        ),
                    );
                }
            }
            for &pid in &procs {
                let expected = match lethal_hits.get(&pid) {
                    Some(signal) => (None, Some(signal.clone())),
                    None => (Some(0), None),
                };
                let exit = exits.get(&pid).map(|(c, s, _)| (*c, s.clone()));
                if exit.as_ref() != Some(&expected) {
                    self.finding(index, CHECK_KINDS[3], format!("target {} pid {pid}: exit {exit:?}, expected {expected:?} (injected: {:?})", t.name, got.get(&pid)));
                }
                if Some(pid) == adopted_pid {
                    let ours = match &expected {
                        (_, Some(sig)) if sig == "SIGKILL" => Ended::Signal(libc::SIGKILL),
                        (_, Some(_)) => Ended::Signal(libc::SIGTERM),
                        _ => Ended::Code(0),
                    };
                    if adopted_end != Some(ours) {
                        self.finding(index, CHECK_KINDS[3], format!("adopted target pid {pid}: the soak reaped {adopted_end:?}, expected {ours:?}"));
                    }
                }
            }
        }
    }
}

/// How the hits injected differ from the hits planned (both sorted): the counts, and the hits
/// in one and not the other.
fn hits_differ(got: &[u64], planned: &[u64]) -> String {
    let missing: Vec<u64> = planned
        .iter()
        .filter(|h| !got.contains(h))
        .copied()
        .collect();
    let extra: Vec<u64> = got
        .iter()
        .filter(|h| !planned.contains(h))
        .copied()
        .collect();
    format!(
        "{} injections, {} planned (hits {}..={}); planned, not injected: {missing:?}; injected, not planned: {extra:?}",
        got.len(),
        planned.len(),
        planned.first().copied().unwrap_or(0),
        planned.last().copied().unwrap_or(0),
    )
}

/// SIGCONT and SIGKILL to each of `pids`, then waits (at most [`cleanup_timeout`]) until none is
/// alive (zombies of the soak's own children are reaped by their owners).
fn end_processes(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: signalling processes of the campaign, found by their environment marker.
        unsafe {
            libc::kill(pid as i32, libc::SIGCONT);
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    let give_up = Instant::now() + cleanup_timeout();
    while pids
        .iter()
        .any(|&p| matches!(process_state(p), Some(s) if s != 'Z' && s != 'X'))
        && Instant::now() < give_up
    {
        thread::sleep(Duration::from_millis(10));
    }
}
