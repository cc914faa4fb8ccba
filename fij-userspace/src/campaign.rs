//! `fij run`: scenario → rules in maps → targets armed → events streamed → clean end.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use fij_common::{
    CrashMark, EVENT_EXIT, EVENT_FORK, EVENT_INJECTION, EVENT_JOINED, EVENT_SILENCED, Event,
    FaultRule, RULE_CRASH, RULE_PER_TARGET, RULE_PORT, RULE_PROBABILITY, RULE_SELECT, SilenceEntry,
    TargetProcess, random,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::{Instant, sleep, sleep_until},
};
use tracing::{info, warn};

use crate::{
    hooks,
    kernel::{Kernel, monotonic_ns},
    layout,
    log::{EndReason, EventLog, Record, TargetRecord},
    scenario::{Action, Per, Scenario, Select, TargetSource, Trigger},
    schedule, selectors, sockets,
    targets::{self, GatedChild},
};

/// An error in what the user asked for (exit status 2); anything else is a runtime failure (1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

pub struct RunOptions {
    pub seed: Option<u64>,
    pub log: Option<PathBuf>,
}

/// What happened, for the exit status.
pub struct Report {
    pub reason: EndReason,
    pub injections: u64,
    pub failed_injections: u64,
}

/// How long spawned targets get between SIGTERM and SIGKILL when the campaign ends early.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);

/// One instance of a target as armed: its root process, and whether fij spawned it (then fij
/// also ends it).
struct ArmedTarget {
    target_idx: usize,
    instance: u32,
    pid: u32,
    spawned: bool,
}

/// How long a due time-triggered fault waits for its victim to claim it in kernel (next syscall,
/// or next 1 ms CPU tick) before fij fires it itself: the victim is asleep then.
const CLAIM_GRACE: Duration = Duration::from_millis(3);
/// How soon a due fault tries again while another fault is still due for the same process.
const DUE_RETRY: Duration = Duration::from_millis(1);

/// The kernel rule of each fault (fault id = index in `scenario.faults`); where each one is
/// evaluated is `hooks::plan_hooks`'s business.
pub fn compile_rules(scenario: &Scenario) -> Vec<FaultRule> {
    let flag = |on: bool, flag: u32| if on { flag } else { 0 };
    scenario
        .faults
        .iter()
        .map(|fault| (fault, port_filter(&fault.trigger)))
        .map(|(fault, port)| FaultRule {
            nth: fault.nth.unwrap_or(0),
            every: fault.every.unwrap_or(0),
            after_ns: fault.after.map_or(0, |d| d.as_nanos() as u64),
            count: fault.count,
            probability: fault.probability.map_or(0, random::probability_threshold),
            signal: fault.action.signal() as u32,
            port: port.map_or(0, |(port, _)| port),
            port_arg: port.map_or(0, |(_, arg)| arg),
            flags: flag(port.is_some(), RULE_PORT)
                | flag(fault.per == Per::Target, RULE_PER_TARGET)
                | flag(matches!(fault.action, Action::Crash { .. }), RULE_CRASH)
                | flag(fault.probability.is_some(), RULE_PROBABILITY)
                | flag(fault.select != Select::All, RULE_SELECT),
        })
        .collect()
}

/// The `port` filter of a syscall trigger: (port, the argument that holds the sockaddr).
fn port_filter(trigger: &Trigger) -> Option<(u32, u32)> {
    let Trigger::Syscall {
        name,
        port: Some(port),
        ..
    } = trigger
    else {
        return None;
    };
    let (_, arg) = crate::scenario::PORT_SYSCALLS
        .iter()
        .find(|(n, _)| n == name)?;
    Some((*port as u32, *arg))
}

pub async fn run(scenario: &Scenario, opts: &RunOptions) -> Result<Report> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(anyhow!(
            "fij run needs root: it loads eBPF programs and signals processes from the kernel (try sudo)"
        ));
    }
    let mut protected = targets::self_and_ancestors();

    // Everything that can be wrong with the input is checked before anything is loaded.
    let sources = prepare(scenario, &protected)?;
    let mut log = EventLog::create(opts.log.as_deref())?;
    let seed = opts.seed.or(scenario.seed).unwrap_or_else(random_seed);
    let hooks = hooks::plan_hooks(scenario)?;
    crate::caps::check(scenario)?; // issue 18: name a missing capability before loading
    let mut guardian = crate::guardian::Guardian::start()?; // issue 18: resumes stops if fij dies
    protected.push(guardian.pid()); // issue 18
    let mut kernel = load(scenario, &sources, &hooks, &protected, seed)?;
    guardian.watch(kernel.stopped_map())?; // issue 18

    let start_ns = monotonic_ns();
    let start = Instant::now();
    kernel.arm(start_ns, seed)?;
    let (armed, running) = arm_targets(&mut kernel, scenario, &sources, hooks.timed, &protected)?;
    let selector_targets = sources.iter().any(|s| matches!(s, Source::Select(_)));

    // Absolute, so `fij run --replay LOG` finds the scenario from any directory.
    let scenario_path =
        std::fs::canonicalize(&scenario.path).unwrap_or_else(|_| scenario.path.clone());
    let scenario_path = scenario_path.display().to_string();
    log.write(&Record::Start {
        seed,
        scenario: &scenario_path,
        start_ktime_ns: start_ns,
        targets: armed
            .iter()
            .map(|a| TargetRecord {
                name: &scenario.targets[a.target_idx].name,
                instance: a.instance,
                pid: a.pid,
                spawned: a.spawned,
            })
            .collect(),
    })?;
    for (pid, target_idx, by) in running {
        let target = scenario.target_name(target_idx as u32);
        log.write(&Record::Joined {
            t_ns: 0,
            target,
            pid,
            by,
        })?;
    }
    info!(seed, scenario = %scenario_path, "campaign armed");

    let ring = kernel.take_events().context("event ring already taken")?;
    // SAFETY: the ring owns its fd and keeps it open for as long as the AsyncFd holds it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow!("polling the event ring: {e}"))?;
    let mut ctx = EventContext {
        scenario,
        start_ns,
        log,
        tally: Tally::default(),
        later: Later::default(),
        protected: &protected,
        due_ktime: Default::default(),
    };
    ctx.schedule_time_faults(seed, &armed, start);
    let reason = event_loop(
        &mut ctx,
        &mut kernel,
        &mut events,
        &armed,
        start,
        selector_targets,
    )
    .await?;
    let report = finish(ctx, kernel, events, &armed, reason).await?;
    guardian.dismiss(); // issue 18: stops were resumed by finish
    Ok(report)
}

/// A running process a selector matched at the start: (pid, target index, selector kind).
type RunningMatch = (u32, usize, &'static str);

/// How each target is brought in, found before anything is loaded.
enum Source {
    /// A command, resolved like execvp would.
    Spawn(std::path::PathBuf),
    /// A running process, checked adoptable.
    Adopt(u32),
    /// A selector, resolved (cgroup path → id).
    Select(selectors::Resolved),
}

/// Checks everything about the input that can be wrong before anything is loaded.
fn prepare(scenario: &Scenario, protected: &[u32]) -> Result<Vec<Source>> {
    let sources = scenario
        .targets
        .iter()
        .map(|target| {
            let invalid =
                |e: anyhow::Error| InvalidInput(format!("target `{}`: {e:#}", target.name));
            Ok(match &target.source {
                TargetSource::Command { argv, cwd, .. } => Source::Spawn(
                    targets::resolve_program(&argv[0], cwd.as_deref()).map_err(invalid)?,
                ),
                TargetSource::Pid(pid) => {
                    targets::check_adoptable(*pid, protected).map_err(invalid)?;
                    Source::Adopt(*pid)
                }
                TargetSource::Selector(selector) => {
                    Source::Select(selectors::resolve(selector).map_err(invalid)?)
                }
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for fault in &scenario.faults {
        if matches!(fault.trigger, Trigger::Time(_))
            && matches!(sources[fault.target], Source::Select(_))
        {
            return Err(InvalidInput(format!(
                "fault `{}`: a time trigger needs a `command` or `pid` target (whose instances it fails)",
                fault.name
            ))
            .into());
        }
    }
    Ok(sources)
}

/// Loads the programs the scenario needs, attaches them, and writes rules, hooks, selections
/// and the protected set. Nothing is armed yet.
fn load(
    scenario: &Scenario,
    sources: &[Source],
    hooks: &hooks::HookPlan,
    protected: &[u32],
    seed: u64,
) -> Result<Kernel> {
    let layout = layout::discover()?;
    let mut kernel = Kernel::load(&layout)?;
    kernel.attach_lifecycle()?;
    if hooks.syscalls {
        kernel.attach_syscalls()?;
    }
    kernel.attach_tracepoints(&hooks.tracepoints)?;
    // A symbol or library that cannot be found is the scenario's fault, not fij's.
    kernel
        .attach_probes(&hooks.probes)
        .map_err(|e| InvalidInput(format!("{e:#}")))?;
    for (target_idx, source) in sources.iter().enumerate() {
        if let Source::Select(selector) = source {
            kernel.add_selector(selector, target_idx as u32)?;
        }
    }
    if sources.iter().any(|s| matches!(s, Source::Select(_))) {
        kernel.attach_exec()?;
    }
    let crashes = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, Action::Crash { .. }));
    let partitions = scenario
        .faults
        .iter()
        .any(|f| matches!(f.action, Action::Partition { .. }));
    if crashes {
        kernel
            .attach_crash(&layout)
            .context("setting up crash (fij doctor tells what is missing)")?;
    }
    if crashes || partitions {
        let interfaces = kernel
            .attach_silencer()
            .context("setting up the silencer (fij doctor tells what is missing)")?;
        info!(interfaces = %interfaces.join(","), "silencer attached");
    }
    for pid in protected {
        kernel.protect(*pid)?;
    }
    for (id, rule) in compile_rules(scenario).iter().enumerate() {
        kernel.set_rule(id as u32, rule)?;
    }
    kernel.set_hooks(&hooks.table)?;
    for (id, fault) in scenario
        .faults
        .iter()
        .enumerate()
        .filter(|(_, f)| f.select != Select::All)
    {
        let instances = scenario.targets[fault.target].source.instances();
        for instance in schedule::selected_instances(seed, id as u32, fault.select, instances) {
            kernel.select(id as u32, instance)?;
        }
    }
    Ok(kernel)
}

/// Brings every target into the armed kernel: spawns commands (each instance a target before
/// its first instruction), adopts pids with their descendants, adds running processes that
/// match selectors. Returns the instances' root processes, and the running processes that
/// joined by matching a selector (pid, target, selector kind).
fn arm_targets(
    kernel: &mut Kernel,
    scenario: &Scenario,
    sources: &[Source],
    timed: bool,
    protected: &[u32],
) -> Result<(Vec<ArmedTarget>, Vec<RunningMatch>)> {
    let mut armed = Vec::new();
    let mut running = Vec::new();
    // Spawned instances wait at their gate until fij is wholly armed: attaching a program
    // patches kernel text on every CPU, which would slow a target that already runs.
    let mut gated = Vec::new();
    for (target_idx, (target, source)) in scenario.targets.iter().zip(sources).enumerate() {
        let entry = |instance, generation| TargetProcess {
            target_idx: target_idx as u32,
            instance,
            generation,
        };
        match (&target.source, source) {
            (
                TargetSource::Command {
                    argv,
                    cwd,
                    env,
                    instances,
                    user,  // issue 18
                    group, // issue 18
                },
                Source::Spawn(program),
            ) => {
                for instance in 0..*instances {
                    let child = GatedChild::spawn(
                        program,
                        argv,
                        cwd.as_deref(),
                        env,
                        (*user, *group),
                    ) // issue 18
                    .with_context(|| format!("target `{}`", target.name))?;
                    kernel.add_target(child.pid, entry(instance, monotonic_ns()))?;
                    if timed {
                        kernel.attach_tick(child.pid)?;
                    }
                    armed.push(ArmedTarget {
                        target_idx,
                        instance,
                        pid: child.pid,
                        spawned: true,
                    });
                    gated.push((child, target, instance, argv));
                }
            }
            (_, Source::Adopt(pid)) => {
                for pid in targets::process_tree(*pid) {
                    kernel.add_target(pid, entry(0, monotonic_ns()))?;
                }
                if timed {
                    kernel.attach_tick(*pid)?;
                }
                // It may have exited between the check and the insert: then no exit event comes.
                if targets::has_exited(*pid) {
                    return Err(anyhow!(
                        "target `{}`: pid {pid} exited before it was armed",
                        target.name
                    ));
                }
                info!(target = %target.name, pid, "adopted");
                armed.push(ArmedTarget {
                    target_idx,
                    instance: 0,
                    pid: *pid,
                    spawned: false,
                });
            }
            (_, Source::Select(selector)) => {
                let matching: Vec<u32> = targets::processes()
                    .filter(|&pid| targets::check_adoptable(pid, protected).is_ok())
                    .filter(|&pid| selectors::matches(pid, selector))
                    .collect();
                for pid in matching.iter().flat_map(|&pid| targets::process_tree(pid)) {
                    kernel.add_target(pid, entry(0, monotonic_ns()))?;
                    running.push((pid, target_idx, selector.kind()));
                }
                info!(target = %target.name, running = matching.len(), "selector armed: {selector:?}");
            }
            (_, Source::Spawn(_)) => unreachable!("only command targets are spawned"),
        }
    }
    // Every target userspace adds is in the set now.
    kernel.attach_syscall_prefilter()?;
    for (mut child, target, instance, argv) in gated {
        child
            .release()
            .with_context(|| format!("target `{}`", target.name))?;
        info!(target = %target.name, instance, pid = child.pid, "spawned {}", argv.join(" "));
    }
    Ok((armed, running))
}

/// Waits for events, due actions, the deadline or a signal; returns why the campaign ends.
async fn event_loop(
    ctx: &mut EventContext<'_>,
    kernel: &mut Kernel,
    events: &mut AsyncFd<RingBuf<MapData>>,
    armed: &[ArmedTarget],
    start: Instant,
    selector_targets: bool,
) -> Result<EndReason> {
    let deadline = ctx.scenario.duration.map(|d| start + d);
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut waiting_told = false;
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                ctx.drain(kernel, guard.get_inner_mut())?;
                guard.clear_ready();
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => return Ok(EndReason::Duration),
            _ = sleep_until(ctx.later.next_at().unwrap_or_else(Instant::now)), if ctx.later.next_at().is_some() => {
                for action in ctx.later.take_due(Instant::now()) {
                    ctx.perform(kernel, action)?;
                }
            }
            _ = sigint.recv() => return Ok(EndReason::Interrupted),
            _ = sigterm.recv() => return Ok(EndReason::Interrupted),
            // Exits are seen as events; this is the backstop for a target that died unseen. It
            // also drains injections the kernel emits without a wakeup (a signalled victim that
            // survives, e.g. SIGSTOP or a handled signal, sends no exit event to wake fij).
            _ = sleep(Duration::from_millis(100)) => ctx.drain(kernel, events.get_mut())?,
        }
        reap(armed);
        // Selector targets may gain processes at any time: only duration or Ctrl-C ends those.
        if !kernel.target_processes().is_empty() || selector_targets {
            continue;
        }
        // A crashed host stays silent until recover_after, duration or Ctrl-C, even when every
        // target is gone: ending now would "reboot" it at once. A crashed process reports its
        // exit before it releases its sockets; its mark stays until the task is freed, so wait
        // for that before deciding whether silence holds.
        if kernel.crashed().is_empty() && !kernel.silence_active() {
            return Ok(EndReason::TargetsExited);
        }
        if !waiting_told {
            info!(
                "every target exited; crashed sockets stay silent until recover_after, duration or Ctrl-C"
            );
            waiting_told = true;
        }
    }
}

/// Stops injecting, resumes what fij stopped, ends what it spawned (unless they all exited),
/// logs the last events and the totals, and detaches everything.
async fn finish(
    mut ctx: EventContext<'_>,
    mut kernel: Kernel,
    mut events: AsyncFd<RingBuf<MapData>>,
    armed: &[ArmedTarget],
    reason: EndReason,
) -> Result<Report> {
    kernel.disarm()?;
    // Crashed processes' orphaned sockets would send their FIN once fij's programs are gone.
    let crashed_tuples: Vec<_> = kernel
        .silenced()
        .into_iter()
        .filter(|(_, e)| {
            matches!(
                ctx.scenario
                    .faults
                    .get(e.fault_id as usize)
                    .map(|f| &f.action),
                Some(Action::Crash { .. })
            )
        })
        .map(|(key, _)| key)
        .collect();
    sockets::destroy_orphans(&crashed_tuples)?;
    // A process fij stopped is not left stopped: resume what is still pending.
    for action in ctx.later.take_all() {
        if action.kind == LaterKind::Resume {
            ctx.perform(&mut kernel, action)?;
        }
    }
    if reason != EndReason::TargetsExited {
        terminate_spawned(&kernel, ctx.scenario, ctx.protected).await;
    }
    // Exits of the terminated targets, and anything still in the ring.
    ctx.drain(&mut kernel, events.get_mut())?;
    reap(armed);
    let events_lost = kernel.events_lost();
    if events_lost > 0 {
        warn!(
            events_lost,
            "the kernel dropped events: the ring buffer was full"
        );
    }
    let tally = &ctx.tally;
    ctx.log.write(&Record::End {
        t_ns: monotonic_ns().saturating_sub(ctx.start_ns),
        reason,
        injections: tally.injections,
        failed_injections: tally.failed_injections,
        exits: tally.exits,
        events_lost,
    })?;
    info!(
        ?reason,
        injections = tally.injections,
        failed = tally.failed_injections,
        "campaign ended"
    );
    drop(kernel); // detaches every program
    Ok(Report {
        reason,
        injections: tally.injections,
        failed_injections: tally.failed_injections,
    })
}

impl EventContext<'_> {
    /// Time-triggered faults: each selected instance's due time, drawn from the seed.
    fn schedule_time_faults(&mut self, seed: u64, armed: &[ArmedTarget], start: Instant) {
        let scenario = self.scenario;
        let start_ns = self.start_ns;
        let ctx = self;
        for (id, fault) in scenario.faults.iter().enumerate() {
            let Trigger::Time(schedule_of) = &fault.trigger else {
                continue;
            };
            let instances = scenario.targets[fault.target].source.instances();
            for instance in schedule::selected_instances(seed, id as u32, fault.select, instances) {
                let after = schedule::due_after(seed, id as u32, instance, schedule_of);
                let root = armed
                    .iter()
                    .find(|a| a.target_idx == fault.target && a.instance == instance);
                if let Some(root) = root {
                    ctx.due_ktime
                        .insert((id as u32, root.pid), start_ns + after.as_nanos() as u64);
                    ctx.later.schedule(
                        start + after,
                        LaterKind::Due {
                            fault_id: id as u32,
                        },
                        root.pid,
                    );
                    info!(fault = %fault.name, instance, pid = root.pid, "due {:.3} s after the start", after.as_secs_f64());
                }
            }
        }
    }
}

/// Ends what fij spawned: SIGTERM to every live process of a spawned target, SIGKILL after a grace.
async fn terminate_spawned(kernel: &Kernel, scenario: &Scenario, protected: &[u32]) {
    let spawned = |tp: &TargetProcess| {
        matches!(
            scenario.targets[tp.target_idx as usize].source,
            TargetSource::Command { .. }
        )
    };
    let live = || {
        kernel
            .target_processes()
            .into_iter()
            .filter(|(pid, tp)| spawned(tp) && !protected.contains(pid))
            .map(|(pid, _)| pid)
    };
    for pid in live() {
        info!(pid, "campaign over: terminating");
        targets::signal_target(pid, libc::SIGTERM, protected);
    }
    let give_up = Instant::now() + TERMINATE_GRACE;
    while live().next().is_some() && Instant::now() < give_up {
        sleep(Duration::from_millis(20)).await;
    }
    for pid in live() {
        warn!(pid, "still running after SIGTERM: SIGKILL");
        targets::signal_target(pid, libc::SIGKILL, protected);
    }
    let give_up = Instant::now() + TERMINATE_GRACE;
    while live().next().is_some() && Instant::now() < give_up {
        sleep(Duration::from_millis(20)).await;
    }
}

fn reap(armed: &[ArmedTarget]) {
    for target in armed.iter().filter(|t| t.spawned) {
        targets::try_reap(target.pid);
    }
}

fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: getrandom fills the buffer we own.
    unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    u64::from_ne_bytes(seed)
}

/// Actions fij takes some time after an injection: the end of a crash's silence, the SIGCONT
/// after a stop.
#[derive(Default)]
struct Later {
    pending: Vec<LaterAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LaterKind {
    /// End of a crash's silence (`recover_after`).
    Recover,
    /// End of a partition (its `duration`).
    Heal,
    /// SIGCONT for a stopped process (`resume_after`, or the campaign's end).
    Resume,
    /// A time-triggered fault falls due for an instance's root process.
    Due { fault_id: u32 },
    /// The claim grace is over: fire the fault from userspace if the victim did not claim it.
    Claim { fault_id: u32 },
}

#[derive(Clone, Copy, Debug)]
struct LaterAction {
    at: Instant,
    kind: LaterKind,
    pid: u32,
}

impl Later {
    fn schedule(&mut self, at: Instant, kind: LaterKind, pid: u32) {
        self.pending.push(LaterAction { at, kind, pid });
    }

    fn next_at(&self) -> Option<Instant> {
        self.pending.iter().map(|a| a.at).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<LaterAction> {
        let (due, rest) = self.pending.iter().partition(|a| a.at <= now);
        self.pending = rest;
        due
    }

    fn take_all(&mut self) -> Vec<LaterAction> {
        std::mem::take(&mut self.pending)
    }
}

#[derive(Default)]
struct Tally {
    /// Injections seen (delivered or not), from the events: one per injection record.
    injections: u64,
    failed_injections: u64,
    exits: u64,
}

/// Turns kernel events into log records and human-readable lines.
struct EventContext<'a> {
    scenario: &'a Scenario,
    start_ns: u64,
    log: EventLog,
    tally: Tally,
    later: Later,
    /// fij and its ancestors: never signalled from userspace either.
    protected: &'a [u32],
    /// (fault, root pid) → kernel time the time-triggered fault was due, for the log.
    due_ktime: std::collections::HashMap<(u32, u32), u64>,
}

impl EventContext<'_> {
    fn perform(&mut self, kernel: &mut Kernel, action: LaterAction) -> Result<()> {
        let t_ns = monotonic_ns().saturating_sub(self.start_ns);
        match action.kind {
            LaterKind::Recover => {
                // The host comes back with no state: its orphaned sockets go before the silence.
                sockets::destroy_orphans(&kernel.silenced_of(action.pid))?;
                let tuples = kernel.recover(action.pid)?;
                info!(
                    pid = action.pid,
                    tuples, "recovered: the crashed process's tuples speak again"
                );
                self.log.write(&Record::Recovered {
                    t_ns,
                    pid: action.pid,
                    tuples,
                })
            }
            LaterKind::Heal => {
                let tuples = kernel.recover(action.pid)?;
                info!(pid = action.pid, tuples, "partition healed");
                self.log.write(&Record::Healed {
                    t_ns,
                    pid: action.pid,
                    tuples,
                })
            }
            LaterKind::Due { fault_id } => {
                let live = kernel
                    .target_processes()
                    .iter()
                    .any(|(pid, _)| *pid == action.pid);
                if !live {
                    info!(
                        pid = action.pid,
                        "due fault not injected: the instance already exited"
                    );
                } else if kernel.is_due(action.pid) {
                    // One due fault per process at a time: this one waits for the other's claim.
                    self.later
                        .schedule(Instant::now() + DUE_RETRY, action.kind, action.pid);
                } else {
                    kernel.set_due(action.pid, fault_id)?;
                    self.later.schedule(
                        Instant::now() + CLAIM_GRACE,
                        LaterKind::Claim { fault_id },
                        action.pid,
                    );
                }
                Ok(())
            }
            LaterKind::Claim { fault_id } => self.fire_unclaimed(kernel, fault_id, action.pid),
            LaterKind::Resume => {
                // Only a process that is still a target: never a recycled pid.
                if kernel
                    .target_processes()
                    .iter()
                    .any(|(pid, _)| *pid == action.pid)
                    && targets::signal_target(action.pid, libc::SIGCONT, self.protected)
                {
                    info!(pid = action.pid, "resumed (SIGCONT)");
                    self.log.write(&Record::Resumed {
                        t_ns,
                        pid: action.pid,
                    })?;
                }
                Ok(())
            }
        }
    }

    /// The victim of a due fault did not claim it in kernel within the grace: it is asleep and
    /// runs no code, so fij fires the fault itself (the log says `by: "fij"`).
    fn fire_unclaimed(&mut self, kernel: &mut Kernel, fault_id: u32, pid: u32) -> Result<()> {
        if !kernel.claim_due(pid)? {
            return Ok(()); // claimed in kernel: its injection event is on its way
        }
        let Some((_, process)) = kernel
            .target_processes()
            .into_iter()
            .find(|(p, _)| *p == pid)
        else {
            info!(pid, "due fault not injected: the instance exited meanwhile");
            return Ok(());
        };
        let fault = &self.scenario.faults[fault_id as usize];
        let now = monotonic_ns();
        let signal = fault.action.signal();
        let allowed = pid > 1 && !self.protected.contains(&pid);
        if allowed && matches!(fault.action, Action::Crash { .. }) {
            let mark = CrashMark {
                fault_id,
                target_idx: process.target_idx,
                ktime_ns: now,
            };
            kernel.mark_crashed(pid, mark)?;
        }
        let result = match (allowed, signal) {
            (false, _) => fij_common::SIGNAL_REFUSED,
            (true, 0) => 0,
            (true, sig) if targets::signal_target(pid, sig, self.protected) => 0,
            (true, _) => -std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::ESRCH),
        };
        let event = Event {
            kind: EVENT_INJECTION,
            fault_id,
            ktime_ns: now,
            tgid: pid,
            tid: pid,
            signal: signal as u32,
            result,
            target_idx: process.target_idx,
            instance: process.instance,
            ..Event::default()
        };
        self.injection(kernel, &event, "fij")
    }

    /// An injection, fired in kernel (`by = "kernel"`) or by fij for a sleeping victim of a
    /// time trigger (`by = "fij"`): its follow-ups (silence, recovery, resume) and its record.
    fn injection(&mut self, kernel: &mut Kernel, e: &Event, by: &'static str) -> Result<()> {
        let t_ns = e.ktime_ns.saturating_sub(self.start_ns);
        let target = self.scenario.target_name(e.target_idx);
        let fault = &self.scenario.faults[e.fault_id as usize];
        let syscall = match &fault.trigger {
            Trigger::Syscall { name, .. } => Some(name.as_str()),
            _ => None,
        };
        let due = self.due_ktime.get(&(e.fault_id, e.tgid)).copied();
        let signal = match e.signal {
            0 => "none".to_string(),
            sig => targets::signal_name(sig as i32),
        };
        let delivered = e.result == 0;
        let error = (!delivered).then(|| injection_error(e.result));
        // When it happened (not when fij read it: injection events may wait for fij's tick).
        let at = Instant::now() - Duration::from_nanos(monotonic_ns().saturating_sub(e.ktime_ns));
        match &fault.action {
            Action::Partition { duration, ports } if delivered => {
                let keys = sockets::process_sockets(e.tgid, ports).unwrap_or_else(|err| {
                    warn!(pid = e.tgid, "partition: cannot read its sockets: {err:#}");
                    Vec::new()
                });
                let entry = SilenceEntry {
                    tgid: e.tgid,
                    fault_id: e.fault_id,
                    ktime_ns: e.ktime_ns,
                };
                kernel.silence(&keys, entry)?;
                info!(pid = e.tgid, tuples = keys.len(), "partitioned");
                self.log.write(&Record::Partitioned {
                    t_ns,
                    pid: e.tgid,
                    fault: &fault.name,
                    tuples: keys.len(),
                })?;
                if let Some(d) = duration {
                    self.later.schedule(at + *d, LaterKind::Heal, e.tgid);
                }
            }
            Action::Crash {
                recover_after: Some(d),
            } if delivered => self.later.schedule(at + *d, LaterKind::Recover, e.tgid),
            Action::Stop { resume_after } if delivered => {
                // Without resume_after the process stays stopped until the campaign ends.
                let at = resume_after.map_or(at + Duration::from_secs(u32::MAX as u64), |d| at + d);
                self.later.schedule(at, LaterKind::Resume, e.tgid)
            }
            _ => {}
        }
        let what = match &fault.trigger {
            Trigger::Time(_) => format!("its due time ({by})"),
            trigger => format!("{} #{}", trigger.describe(), e.hit),
        };
        self.tally.injections += 1;
        if let Some(error) = &error {
            self.tally.failed_injections += 1;
            warn!(fault = %fault.name, target, pid = e.tgid, "{signal} on {what} not sent: {error}");
        } else {
            info!(fault = %fault.name, target, pid = e.tgid, tid = e.tid, "{signal} on {what}");
        }
        self.log.write(&Record::Injection {
            t_ns,
            ktime_ns: e.ktime_ns,
            fault: &fault.name,
            target,
            pid: e.tgid,
            tid: e.tid,
            instance: e.instance,
            hit: e.hit,
            syscall,
            trigger: fault.trigger.describe(),
            signal,
            by,
            scheduled_t_ns: due.map(|d| d.saturating_sub(self.start_ns)),
            late_ns: due.map(|d| e.ktime_ns.saturating_sub(d)),
            draw: fault.probability.map(|_| e.draw),
            delivered,
            error,
        })
    }

    fn drain(&mut self, kernel: &mut Kernel, ring: &mut RingBuf<MapData>) -> Result<()> {
        while let Some(item) = ring.next() {
            if item.len() < size_of::<Event>() {
                warn!(len = item.len(), "short event record ignored");
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (same repr(C) definition, same build).
            let event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            self.handle(kernel, &event)?;
        }
        Ok(())
    }

    fn handle(&mut self, kernel: &mut Kernel, e: &Event) -> Result<()> {
        let t_ns = e.ktime_ns.saturating_sub(self.start_ns);
        let target = self.scenario.target_name(e.target_idx);
        match e.kind {
            EVENT_INJECTION => self.injection(kernel, e, "kernel"),
            EVENT_EXIT => {
                self.tally.exits += 1;
                let (code, signal) = if e.result < 0 {
                    (None, None)
                } else {
                    targets::describe_status(e.result)
                };
                let signal = signal.map(targets::signal_name);
                info!(
                    target,
                    pid = e.tgid,
                    ?code,
                    signal = signal.as_deref().unwrap_or("-"),
                    "exited"
                );
                self.log.write(&Record::Exit {
                    t_ns,
                    ktime_ns: e.ktime_ns,
                    target,
                    pid: e.tgid,
                    code,
                    signal,
                    hits_after_injection: crate::kernel::hits_after_injection(self.scenario, e), // issue 18
                })
            }
            EVENT_SILENCED => {
                let fault = self
                    .scenario
                    .faults
                    .get(e.fault_id as usize)
                    .map_or("?", |f| f.name.as_str());
                let protocol = if e.detail >> 32 == 6 { "tcp" } else { "udp" };
                let (local_port, remote_port) = ((e.detail >> 16) as u16, e.detail as u16);
                info!(
                    target,
                    pid = e.tgid,
                    protocol,
                    local_port,
                    remote_port,
                    "silenced"
                );
                self.log.write(&Record::Silenced {
                    t_ns,
                    target,
                    pid: e.tgid,
                    fault,
                    protocol,
                    local_port,
                    remote_port,
                })
            }
            EVENT_JOINED => {
                let by = match e.detail {
                    fij_common::SELECTOR_COMM => "comm",
                    fij_common::SELECTOR_EXE => "exe",
                    fij_common::SELECTOR_UID => "uid",
                    _ => "cgroup",
                };
                info!(target, pid = e.tgid, by, "joined");
                self.log.write(&Record::Joined {
                    t_ns,
                    target,
                    pid: e.tgid,
                    by,
                })
            }
            EVENT_FORK => {
                info!(target, parent = e.tgid, pid = e.detail, "forked");
                self.log.write(&Record::Fork {
                    t_ns,
                    target,
                    parent_pid: e.tgid,
                    pid: e.detail as u32,
                })
            }
            other => {
                warn!(kind = other, "unknown event kind");
                Ok(())
            }
        }
    }
}

fn injection_error(result: i32) -> String {
    if result == fij_common::SIGNAL_REFUSED {
        "refused: the process is protected (pid 1, a kernel thread, fij or its ancestor)".into()
    } else if result == fij_common::COUNTER_TABLE_FULL {
        crate::kernel::counter_table_full_error() // issue 18: hit counts never lie
    } else {
        format!(
            "bpf_send_signal failed: {}",
            std::io::Error::from_raw_os_error(-result)
        )
    }
}
